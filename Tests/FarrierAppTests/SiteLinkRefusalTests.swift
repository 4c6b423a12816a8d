import Crypto
import FarrierAPI
import FarrierBMC
import FarrierCore
import FarrierSite
import FarrierStore
import Foundation
import GRPCCore
import SwiftProtobuf
import Testing

/// Every call on the site link, over real mutual TLS to the region's listener: answered for the
/// site's current certificate, and refused (PermissionDenied, nothing written) once the site
/// joined again with another key, whichever call it is.
@Suite struct SiteLinkRefusalTests {
    @Test func everyLinkCallRefusesAReplacedCertificate() async throws {
        let f = try SiteLinkFixture("link")
        defer { f.remove() }
        let (dir, siteDir, store, t) = (f.dir, f.siteDir, f.store, f.t)
        func join(_ token: String) async throws { try await f.join(token) }
        try await join("aa")
        let mac = MACAddress([0x52, 0x54, 0, 9, 0, 1])
        let machine = try await store.enroll(
            name: "m1",
            mac: mac,
            bmc: try BMCReference(url: "ipmi://admin@127.0.0.1"),
            sealedPassword: [1],
            at: t
        )
        func place(_ site: String?) async throws { try await f.place(machine.id, at: site) }
        try await place("site-1")
        // The first key and certificate, kept aside: joining again replaces those in `siteDir`.
        try FileManager.default.copyItem(atPath: siteDir, toPath: dir + "/old")
        let old = try SiteCredentials(dataDir: dir + "/old")

        // A boot root with a ramdisk kernel, and a file beside it that is no boot file.
        try FileManager.default.createDirectory(atPath: dir + "/boot/ramdisk", withIntermediateDirectories: true)
        let kernel = Data("a kernel".utf8)
        try kernel.write(to: URL(fileURLWithPath: dir + "/boot/ramdisk/vmlinuz"))
        let secret = Data("not for sites".utf8)
        try secret.write(to: URL(fileURLWithPath: dir + "/boot/secret.txt"))
        @Sendable func sha256(_ d: Data) -> String { SHA256.hash(data: d).map { String(format: "%02x", $0) }.joined() }
        let port = Int.random(in: 27000..<28000)
        let listener = try f.listener(port: port, bootRoot: dir + "/boot", bmcRelay: SiteBMCRelay())
        let serving = Task { try await listener.run() }
        defer { serving.cancel() }

        var lease = Farrier_V1_SiteLease()
        lease.mac = mac.description
        lease.address = "10.9.0.10"
        lease.expires = Google_Protobuf_Timestamp(date: t.addingTimeInterval(600))
        let leases = Farrier_V1_ReportLeasesRequest.with { $0.leases = [lease] }
        var event = Farrier_V1_SiteTimelineEvent()
        event.id = 1
        event.mac = mac.description
        event.time = Google_Protobuf_Timestamp(date: t)
        event.stage = "dhcp"
        event.event = "ACK"
        let events = Farrier_V1_ReportEventsRequest.with { $0.events = [event] }

        // The current certificate: each call is answered.
        try await withSiteLink(region: "127.0.0.1:\(port)", credentials: old) { link in
            // Polled: the listener binds in its own task.
            let deadline = ContinuousClock.now + .seconds(20)
            while true {
                do {
                    _ = try await link.heartbeat(Farrier_V1_HeartbeatRequest())
                    break
                } catch  where ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
            #expect(try await link.siteMachines(Farrier_V1_SiteMachinesRequest()).machines.map(\.name) == ["m1"])
            // One machine as the region has it now; any other MAC is not found.
            let one = try await link.siteMachineBoot(.with { $0.mac = mac.description })
            #expect(one.name == "m1" && one.nextBoot == "wait", "\(one)")
            // Another site's machine gets the same answer as a MAC nobody enrolled.
            try await store.createSite(Site(name: "site-2", created: t, joinTokenSHA256: "zz"))
            let theirs = try await store.enroll(
                name: "m2",
                mac: MACAddress([0x52, 0x54, 0, 9, 0, 2]),
                bmc: try BMCReference(url: "ipmi://admin@127.0.0.1"),
                sealedPassword: [1],
                at: t
            )
            _ = try await store.update(machineID: theirs.id, fence: nil) { m in
                m.site = "site-2"
                return []
            }
            for other in ["52:54:00:09:00:09", "52:54:00:09:00:02"] {
                do {
                    _ = try await link.siteMachineBoot(.with { $0.mac = other })
                    Issue.record("\(other) was answered")
                } catch let e as RPCError {
                    #expect(e.code == .notFound && e.message.contains("no machine of site site-1"), "\(e)")
                }
            }
            #expect(try await link.reportLeases(leases).kept == 1)
            #expect(try await link.reportEvents(events).mark == 1)
            // Boot files: listed, and fetched by digest; a file beside them, and a digest the
            // region has nothing for, are not found.
            let listed = try await link.siteMachines(Farrier_V1_SiteMachinesRequest()).bootFiles
            #expect(listed.map(\.path) == ["ramdisk/vmlinuz"] && listed.first?.sha256 == sha256(kernel))
            func fetch(_ digest: String) async throws -> Data {
                try await link.fetchFile(Farrier_V1_FetchFileRequest.with { $0.sha256 = digest }) { response in
                    var got = Data()
                    for try await chunk in response.messages { got += chunk.data }
                    return got
                }
            }
            #expect(try await fetch(sha256(kernel)) == kernel)
            // A console stream for a console nobody asked this site to open.
            do {
                try await link.bmcConsole(
                    request: StreamingClientRequest { try await $0.write(.with { $0.session = 999 }) }
                ) { response in
                    for try await _ in response.messages {}
                }
                Issue.record("a console stream nobody asked for was taken")
            } catch let e as RPCError {
                #expect(e.code == .notFound, "\(e)")
            }
            for digest in [sha256(secret), String(repeating: "0", count: 64)] {
                do {
                    _ = try await fetch(digest)
                    Issue.record("\(digest) was fetched")
                } catch let e as RPCError {
                    #expect(e.code == .notFound, "\(e)")
                }
            }
        }
        #expect(try await store.siteLeases(macs: [mac]).map(\.address.description) == ["10.9.0.10"])

        // Removed and joined again with another key: the old certificate still chains to the
        // CA, and every call with it is refused.
        try await place(nil)
        #expect(try await store.deleteSite(name: "site-1"))
        try await join("bb")
        try await place("site-1")
        #expect(try SiteCredentials(dataDir: siteDir).serial != old.serial)
        try await withSiteLink(region: "127.0.0.1:\(port)", credentials: old) { link in
            func refused(_ name: String, _ call: () async throws -> Void) async {
                do {
                    try await call()
                    Issue.record("\(name) was answered for a replaced certificate")
                } catch let e as RPCError {
                    #expect(e.code == .permissionDenied, "\(name): \(e)")
                    #expect(e.message.contains("not its current one"), "\(name): \(e.message)")
                } catch {
                    Issue.record("\(name): \(error)")
                }
            }
            await refused("Heartbeat") { _ = try await link.heartbeat(Farrier_V1_HeartbeatRequest()) }
            await refused("SiteMachines") { _ = try await link.siteMachines(Farrier_V1_SiteMachinesRequest()) }
            await refused("SiteMachineBoot") {
                _ = try await link.siteMachineBoot(.with { $0.mac = mac.description })
            }
            await refused("ReportLeases") { _ = try await link.reportLeases(leases) }
            await refused("ReportEvents") { _ = try await link.reportEvents(events) }
            var access = Farrier_V1_ImageAccessRequest()
            access.mac = mac.description
            access.sha256 = String(repeating: "ab", count: 32)
            access.token = "t"
            await refused("ImageAccess") { _ = try await link.imageAccess(access) }
            var call = Farrier_V1_AgentCallRequest()
            call.call = "hello"
            call.mac = mac.description
            call.body = Data("{}".utf8)
            await refused("AgentCall") { _ = try await link.agentCall(call) }
            var fetch = Farrier_V1_FetchFileRequest()
            fetch.sha256 = String(repeating: "ab", count: 32)
            await refused("FetchFile") {
                try await link.fetchFile(fetch) { response in
                    for try await _ in response.messages {}
                }
            }
            await refused("BMCConsole") {
                try await link.bmcConsole(request: StreamingClientRequest { try await $0.write(.init()) }) { response in
                    for try await _ in response.messages {}
                }
            }
            await refused("BMCWork") {
                try await link.bmcWork(request: StreamingClientRequest { _ in }) { response in
                    for try await _ in response.messages {}
                }
            }
        }
        // Nothing the refused calls carried was written.
        #expect(try await store.siteLeases(macs: [mac]).isEmpty)
        #expect(try await store.timeline(mac: mac, limit: 10).map(\.event) == ["ACK"])
    }
}
