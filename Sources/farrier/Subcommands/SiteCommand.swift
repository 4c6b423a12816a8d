import ArgumentParser
import FarrierAPI
import FarrierSite
import Foundation
import SwiftProtobuf
import SystemSupport
import Yams

/// `farrier site`: sites (issue 16). An admin adds a site and hands its one-time join token to
/// whoever runs it; the site joins with it (its key made there and kept there) and gets its
/// certificate, which is how the region knows it from then on.
struct SiteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "site",
        abstract: "Sites: boot services near the racks (admin: add, list, remove; at the site: join).",
        subcommands: [Add.self, List.self, Remove.self, Join.self]
    )

    struct SiteView: Codable {
        var name: String
        var status: String
        var created: Date
        var joinExpires: Date?
        var joined: Date?
        var certificateSerial: String?
        var certificateNotAfter: Date?
        init(_ s: Farrier_V1_Site) {
            name = s.name
            status = s.status
            created = s.created.date
            joinExpires = s.hasJoinExpires ? s.joinExpires.date : nil
            joined = s.hasJoined ? s.joined.date : nil
            certificateSerial = s.certificateSerial.isEmpty ? nil : s.certificateSerial
            certificateNotAfter = s.hasCertificateNotAfter ? s.certificateNotAfter.date : nil
        }
    }

    static let columns: [Column<SiteView>] = [
        Column("NAME") { $0.name }, Column("STATUS") { $0.status },
        Column("JOINED") { $0.joined.map(iso) ?? "-" },
        Column("JOIN-EXPIRES") { $0.joinExpires.map(iso) ?? "-" },
        Column("CERT-EXPIRES") { $0.certificateNotAfter.map(iso) ?? "-" },
    ]

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a site; prints its one-time join token once.",
            discussion: """
                Run `farrier site join --token TOKEN` at the site before the token expires. The table \
                output (the default) and -o name print the token alone, on stdout.
                """
        )
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        @Option(help: "Seconds the join token works (1 to 604800).") var joinTTL: Int64 = 3600
        @Argument(help: "The site's name (a-z, 0-9, '-').") var name: String

        func run() async throws {
            var req = Farrier_V1_AddSiteRequest()
            req.name = name
            req.joinTtlSeconds = joinTTL
            let request = req
            let r = try await rpc(client) { try await $0.sites.addSite(request) }
            struct Added: Codable {
                var site: SiteView
                var joinToken: String
            }
            switch output.output {
            case .table, .name:
                FileHandle.standardError.write(
                    Data(
                        "site \(r.site.name) added; its join token (shown once, works until \(iso(r.site.joinExpires.date))):\n"
                            .utf8
                    )
                )
                print(r.joinToken)
            case .json: print(try json(Added(site: SiteView(r.site), joinToken: r.joinToken)))
            case .yaml:
                print(try YAMLEncoder().encode(Added(site: SiteView(r.site), joinToken: r.joinToken)), terminator: "")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List sites.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var output: OutputOptions
        func run() async throws {
            let printer = try output.printer(SiteCommand.columns, name: \.name)
            try printer.list(
                try await rpc(client, idempotent: true) {
                    try await $0.sites.listSites(Farrier_V1_ListSitesRequest())
                }.sites.map(SiteView.init)
            )
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove a site: its certificate is refused from then on."
        )
        @OptionGroup var client: ClientOptions
        @Argument(help: "The site's name.") var name: String
        func run() async throws {
            var req = Farrier_V1_RemoveSiteRequest()
            req.name = name
            let request = req
            _ = try await rpc(client) { try await $0.sites.removeSite(request) }
            print("site \(name) removed")
        }
    }

    struct Join: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "At the site: join the region with a join token (no API token needed).",
            discussion: """
                Makes the site's key in DATA-DIR (site.key, mode 0600; it never leaves the site), sends \
                a signing request for it with the join token, and keeps what the region answers: the \
                site's certificate (site.crt) and the region's site CA (region-ca.crt). The token \
                works once.
                """
        )
        @OptionGroup var client: ClientOptions
        @Option(help: "The join token `farrier site add` printed.") var joinToken: String
        @Option(help: "The site's name, as added.") var name: String
        @Option(help: "Where the site keeps its key and certificates.") var dataDir = "/var/lib/farrier-site"

        func run() async throws {
            let fm = FileManager.default
            try fm.createDirectory(atPath: dataDir, withIntermediateDirectories: true)
            let keyPath = dataDir + "/site.key"
            guard !fm.fileExists(atPath: keyPath) else {
                throw CLIError("\(keyPath) exists: this data directory has joined already (remove it to join again)")
            }
            let (keyPEM, csrPEM) = try SiteAuthority.makeKeyAndRequest(site: name)
            var req = Farrier_V1_JoinSiteRequest()
            req.joinToken = joinToken
            req.csrPem = csrPEM
            let request = req
            // Not retried on another replica by a probe first (the probe needs an API token,
            // which a joining site has not): a join sent twice finds its token spent.
            let r = try await rpc(client, idempotent: true) { try await $0.sites.joinSite(request) }
            do {
                try SecretFile.replace(keyPath, Array((keyPEM + "\n").utf8), mode: 0o600)
                try SecretFile.replace(dataDir + "/site.crt", Array(r.certificatePem.utf8), mode: 0o644)
                try SecretFile.replace(dataDir + "/region-ca.crt", Array(r.caPem.utf8), mode: 0o644)
            } catch {
                throw CLIError("writing the site's key and certificates to \(dataDir): \(error)")
            }
            print("site \(r.site.name) joined; its certificate (serial \(r.site.certificateSerial)) is in \(dataDir)")
        }
    }
}
