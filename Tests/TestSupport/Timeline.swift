import Foundation

extension Harness {
    /// A machine's boot timeline in a Farrier SQLite file (a site's `site.sqlite` or a
    /// region's), as `stage|event|detail` lines in order. `taggedAs`: append ` site=NAME` to each
    /// detail, as the region records a site's events, so that a site's timeline compares equal
    /// to the region's copy of it.
    public func sqliteTimeline(_ database: String, mac: String, taggedAs site: String? = nil) throws -> [String] {
        let script = """
            import sqlite3,sys
            c=sqlite3.connect(sys.argv[1])
            for s,e,d in c.execute("select stage,event,detail from timelineEvent where mac=? order by id", (sys.argv[2],)):
                if sys.argv[3]: d = (d + " " if d else "") + "site=" + sys.argv[3]
                print(s, e, d, sep="|")
            """
        return try run(["python3", "-c", script, database, mac, site ?? ""]).stdout.split(separator: "\n")
            .map(String.init)
    }
}
