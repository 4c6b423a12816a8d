import FarrierAPI
import FarrierCore
import Foundation
import SwiftProtobuf

/// The console's pages: server-rendered HTML, escaped at every value, with one stylesheet and
/// one script of the console's own (no inline script or style: the pages' Content Security
/// Policy forbids them).
enum Pages {
    /// Text safe in an element or a quoted attribute.
    static func h(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.count)
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(c)
            }
        }
        return out
    }

    /// A path segment (a machine name is letters, digits and dashes, but the URL is built safe
    /// whatever it holds).
    static func path(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: unreserved) ?? ""
    }

    /// RFC 3986's unreserved characters, ASCII only.
    static let unreserved = CharacterSet(
        charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    )

    static let states = [
        "discovered", "enrolled", "commissioning", "ready", "deploying", "deployed", "releasing", "rescuing", "rescue",
        "exiting-rescue", "failed",
    ]

    static func layout(title: String, who: String?, csrf: String?, body: String) -> String {
        var nav = ""
        if let who, let csrf {
            nav = """
                <nav><a href="/">Fleet</a> <a href="/failed">Failed</a>
                <span class="who">\(h(who))</span>
                <form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="\(h(csrf))">
                <button type="submit">Log out</button></form></nav>
                """
        }
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><title>\(h(title)) · Farrier</title>
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <link rel="stylesheet" href="/static/console.css"><script src="/static/console.js" defer></script></head>
            <body><header><span class="brand">Farrier</span>\(nav)</header><main>
            \(body)
            </main></body></html>
            """
    }

    static func login(error: String?) -> String {
        layout(
            title: "Log in",
            who: nil,
            csrf: nil,
            body: """
                <h1>Log in</h1>
                \(error.map { "<p class=\"error\" id=\"error\">\(h($0))</p>" } ?? "")
                <form method="post" action="/login" id="login">
                <label for="token">API token</label>
                <input type="password" name="token" id="token" autocomplete="off" required>
                <button type="submit">Log in</button>
                </form>
                <p class="hint">A Farrier API token (<code>farrier token create</code>; the first admin token is in DATA-DIR/admin.token). It stays on the server: the browser gets a session cookie.</p>
                """
        )
    }

    /// The fleet: counts by state, then each site's zones and racks as a grid of machines
    /// coloured by state. `filter` is what the filter box held.
    static func fleet(
        _ machines: [Farrier_V1_Machine],
        filter: String,
        error: String?,
        session: ConsoleSessions.Session
    )
        -> String
    {
        var counts: [String: Int] = [:]
        for m in machines { counts[m.state, default: 0] += 1 }
        // Every state, so a state the live events bring has its count too.
        let countRow = states.map {
            "<span class=\"count s-\($0)\" data-state=\"\($0)\">\($0) <b>\(counts[$0] ?? 0)</b></span>"
        }.joined(separator: " ")
        // site → zone → rack → machines
        var tree: [String: [String: [String: [Farrier_V1_Machine]]]] = [:]
        for m in machines {
            let site = m.site.isEmpty ? "(no site)" : m.site
            let zone = m.zone.isEmpty ? "(no zone)" : m.zone
            let rack = m.rack.isEmpty ? "(no rack)" : m.rack
            tree[site, default: [:]][zone, default: [:]][rack, default: []].append(m)
        }
        var grid = ""
        for site in tree.keys.sorted() {
            grid += "<section class=\"site\"><h2>\(h(site))</h2>"
            for zone in tree[site]!.keys.sorted() {
                grid += "<div class=\"zone\"><h3>\(h(zone))</h3>"
                for rack in tree[site]![zone]!.keys.sorted() {
                    grid += "<div class=\"rack\"><h4>\(h(rack))</h4><div class=\"cells\">"
                    for m in tree[site]![zone]![rack]!.sorted(by: { $0.name < $1.name }) {
                        grid += cell(m)
                    }
                    grid += "</div></div>"
                }
                grid += "</div>"
            }
            grid += "</section>"
        }
        let body = """
            <h1>Fleet</h1>
            <form method="get" action="/" class="filter"><input type="search" name="q" id="filter" value="\(h(filter))"
            placeholder="state=ready zone=z1 site=s1 project=p tag=K=V name"><button type="submit">Filter</button></form>
            \(error.map { "<p class=\"error\" id=\"error\">\(h($0))</p>" } ?? "")
            <p class="counts" id="counts">\(machines.count) machines: \(countRow)</p>
            <div id="fleet" data-live="fleet">\(machines.isEmpty ? "<p>No machines.</p>" : grid)</div>
            """
        return layout(title: "Fleet", who: who(session), csrf: session.csrf, body: body)
    }

    static func cell(_ m: Farrier_V1_Machine) -> String {
        let line = m.state + (m.phase.isEmpty ? "" : "/" + m.phase)
        return
            "<a class=\"cell s-\(h(m.state))\" id=\"m-\(h(m.name))\" data-machine=\"\(h(m.name))\" href=\"/machines/\(path(m.name))\" title=\"\(h(m.name)): \(h(line))\">\(h(m.name))</a>"
    }

    static func who(_ s: ConsoleSessions.Session) -> String {
        s.admin ? "\(s.name) (admin)" : "\(s.name) (project \(s.project ?? "-"))"
    }

    static func failed(_ machines: [Farrier_V1_Machine], session: ConsoleSessions.Session) -> String {
        let rows = machines.map { m in
            """
            <tr id="f-\(h(m.name))"><td><a href="/machines/\(path(m.name))">\(h(m.name))</a></td><td>\(h(m.failedStep))</td><td>\(h(m.reason))</td>
            <td>\(actionButton(m.name, "retry", "Retry", session))\(actionButton(m.name, "abort", "Abort", session))</td></tr>
            """
        }.joined()
        let body = """
            <h1>Failed machines</h1>
            \(machines.isEmpty ? "<p id=\"none\">No machine has failed.</p>" : "<table id=\"failed\"><tr><th>Machine</th><th>Step</th><th>Reason</th><th></th></tr>\(rows)</table>")
            """
        return layout(title: "Failed", who: who(session), csrf: session.csrf, body: body)
    }

    static func actionButton(_ name: String, _ action: String, _ label: String, _ s: ConsoleSessions.Session) -> String
    {
        """
        <form method="post" action="/machines/\(path(name))/actions" class="inline action" data-confirm="\(h(label)) \(h(name))?">
        <input type="hidden" name="csrf" value="\(h(s.csrf))"><input type="hidden" name="action" value="\(h(action))">
        <button type="submit" id="do-\(h(action))">\(h(label))</button></form>
        """
    }

    static func machine(
        _ m: Farrier_V1_Machine,
        images: [String],
        notice: String?,
        error: String?,
        session: ConsoleSessions.Session
    ) -> String {
        var facts: [(String, String)] = [
            ("State", m.state + (m.phase.isEmpty ? "" : " / " + m.phase)), ("MAC", m.mac),
            ("Firmware", m.firmware), ("Architecture", m.architecture),
        ]
        if !m.reason.isEmpty { facts.append(("Reason", m.reason)) }
        if !m.failedStep.isEmpty { facts.append(("Failed step", m.failedStep)) }
        if !m.project.isEmpty { facts.append(("Project", m.project)) }
        if !m.site.isEmpty { facts.append(("Site", m.site)) }
        if !m.zone.isEmpty || !m.rack.isEmpty { facts.append(("Zone / rack", "\(m.zone) / \(m.rack)")) }
        if m.hasPower, !m.power.state.isEmpty {
            var p = m.power.state
            if m.power.hasRead { p += ", read \(iso(m.power.read.date))" }
            if !m.power.expected.isEmpty { p += " (its state expects \(m.power.expected))" }
            if m.power.hasFailingSince { p += " · BMC not answering since \(iso(m.power.failingSince.date))" }
            facts.append(("Power", p))
        }
        if m.hasDeployment, !m.deployment.image.isEmpty {
            var d = m.deployment.image
            if m.deployment.osTracked {
                d +=
                    m.deployment.hasOsReported
                    ? " · OS reported in at \(iso(m.deployment.osReported.date))" : " · waiting for the OS to report in"
            }
            facts.append(("Deployment", d))
        }
        if m.hasMaintenance, !m.maintenance.reason.isEmpty { facts.append(("Maintenance", m.maintenance.reason)) }
        if m.hasInventory {
            let i = m.inventory
            let disks = i.disks.map { "\($0.name) \(ByteCount.text($0.sizeBytes))" }.joined(separator: ", ")
            var summary =
                "\(i.cpuModel), \(i.cores) cores / \(i.threads) threads, \(ByteCount.text(i.memoryBytes)) memory, "
            summary += "\(i.disks.count) disks (\(disks)), \(i.nics.count) NICs"
            if !i.gpus.isEmpty { summary += ", GPUs: \(i.gpus.joined(separator: ", "))" }
            facts.append(("Inventory", summary))
            if !i.vendor.isEmpty || !i.product.isEmpty {
                facts.append(("System", "\(i.vendor) \(i.product) \(i.serial)"))
            }
        }
        let dl = facts.map {
            "<dt>\(h($0.0))</dt><dd id=\"fact-\(h($0.0.lowercased().replacingOccurrences(of: " ", with: "-")))\">\(h($0.1))</dd>"
        }
        .joined()
        var progress = ""
        if m.hasProgress, !m.progress.stage.isEmpty {
            let p = m.progress
            let pct = p.bytesTotal > 0 ? Int(Double(p.bytesDone) * 100 / Double(p.bytesTotal)) : 0
            progress =
                "\(p.stage)"
                + (p.bytesTotal > 0
                    ? " \(ByteCount.text(p.bytesDone)) / \(ByteCount.text(p.bytesTotal)) (\(pct)%)" : "")
        }
        let body = """
            <h1>\(h(m.name))</h1>
            \(notice.map { "<p class=\"notice\" id=\"notice\">\(h($0))</p>" } ?? "")
            \(error.map { "<p class=\"error\" id=\"error\">\(h($0))</p>" } ?? "")
            <dl class="facts" id="facts" data-live="machine" data-machine="\(h(m.name))" data-after="\(m.lastEventID)">\(dl)</dl>
            <p class="progress">Progress: <span id="progress">\(h(progress.isEmpty ? "-" : progress))</span></p>
            <h2>Actions</h2>
            <div class="actions">\(actions(m, images: images, session: session))</div>
            <h2>Last boot</h2>
            \(waterfall(m))
            <h2>Events</h2>
            <table id="events"><tr><th>Time</th><th>State</th><th>Kind</th><th>Message</th></tr></table>
            """
        return layout(title: m.name, who: who(session), csrf: session.csrf, body: body)
    }

    /// The actions the machine's state allows; each an API call, refused there as the CLI's is.
    static func actions(_ m: Farrier_V1_Machine, images: [String], session s: ConsoleSessions.Session) -> String {
        var out = [
            actionButton(m.name, "power-on", "Power on", s), actionButton(m.name, "power-off", "Power off", s),
            actionButton(m.name, "power-cycle", "Power cycle", s),
        ]
        switch m.state {
        case "ready":
            let options = images.map { "<option value=\"\(h($0))\">\(h($0))</option>" }.joined()
            out.append(
                """
                <form method="post" action="/machines/\(path(m.name))/actions" class="inline action" data-confirm="Deploy onto \(h(m.name))?">
                <input type="hidden" name="csrf" value="\(h(s.csrf))"><input type="hidden" name="action" value="deploy">
                <select name="image" id="image">\(options)</select>
                \(s.admin ? "<input name=\"project\" id=\"project\" placeholder=\"project\">" : "")
                <button type="submit" id="do-deploy">Deploy</button></form>
                """
            )
        case "deployed":
            out += [
                actionButton(m.name, "restart", "Restart", s), actionButton(m.name, "rescue", "Rescue", s),
                actionButton(m.name, "release", "Release", s),
            ]
        case "rescue":
            out += [
                actionButton(m.name, "exit-rescue", "Exit rescue", s), actionButton(m.name, "release", "Release", s),
            ]
        case "failed":
            out += [actionButton(m.name, "retry", "Retry", s), actionButton(m.name, "abort", "Abort", s)]
        default: break
        }
        return out.joined()
    }

    /// The last boot as an SVG waterfall (`Waterfall.lastStep`: with a step's earlier boots, so a
    /// deployed machine shows its ramdisk boot, agent phases and disk boot): one row per timeline
    /// event (DHCP, TFTP, HTTP, the agent's phases), a bar from it to the next on the boot's time
    /// scale, with its duration; while the agent works, its current stage as the last bar.
    static func waterfall(_ m: Farrier_V1_Machine) -> String {
        struct Row {
            var time: Date
            var stage: String
            var label: String
        }
        var rows = Waterfall.lastStep(m.timeline, time: \.time.date, stage: \.stage, event: \.event, detail: \.detail)
            .map { Row(time: $0.time.date, stage: $0.stage, label: "\($0.stage) \($0.event)") }
        // The agent's current stage, while it works (its phases are in the timeline once it is done).
        if m.hasProgress, !m.progress.stage.isEmpty, let last = rows.last, last.stage != "agent",
            m.progress.updated.date > last.time
        {
            rows.append(Row(time: m.progress.updated.date, stage: "agent", label: "agent \(m.progress.stage)"))
        }
        guard let first = rows.first?.time, let end = rows.last?.time else {
            return "<p id=\"waterfall\" class=\"hint\">No boot recorded yet.</p>"
        }
        let span = max(end.timeIntervalSince(first), 0.001)
        let (labelWidth, barWidth, rowHeight) = (230.0, 520.0, 18.0)
        let height = Double(rows.count) * rowHeight + 24
        var svg = """
            <svg id="waterfall" class="waterfall" xmlns="http://www.w3.org/2000/svg" width="\(Int(labelWidth + barWidth + 90))" height="\(Int(height))" role="img" aria-label="Boot timeline, \(String(format: "%.3f", span)) s">
            """
        for (i, r) in rows.enumerated() {
            let y = Double(i) * rowHeight + 4
            let next = i + 1 < rows.count ? rows[i + 1].time : r.time
            let x0 = labelWidth + r.time.timeIntervalSince(first) / span * barWidth
            let w = max(2, next.timeIntervalSince(r.time) / span * barWidth)
            let took = i + 1 < rows.count ? String(format: "%.3f s", next.timeIntervalSince(r.time)) : "end"
            svg += """
                <g class="row stage-\(h(r.stage))"><text x="0" y="\(y + 12)">\(h(String(r.label.prefix(34))))</text>
                <rect x="\(String(format: "%.1f", x0))" y="\(y + 2)" width="\(String(format: "%.1f", w))" height="\(rowHeight - 5)"><title>\(h(r.label)): \(took)</title></rect>
                <text x="\(String(format: "%.1f", min(x0 + w + 4, labelWidth + barWidth + 4)))" y="\(y + 12)" class="took">\(took)</text></g>
                """
        }
        svg += "<text x=\"\(labelWidth)\" y=\"\(height - 4)\" class=\"axis\">0 s</text>"
        svg +=
            "<text x=\"\(labelWidth + barWidth - 40)\" y=\"\(height - 4)\" class=\"axis\">\(String(format: "%.3f s", span))</text>"
        return svg + "</svg>"
    }

    static func iso(_ d: Date) -> String { d.formatted(.iso8601) }
}
