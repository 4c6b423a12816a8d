import FarrierCore
import Testing

/// Root device hints (issue 18 point 5): the text form, matching, and the choice of disk.
struct RootDeviceTests {
    typealias Disk = Inventory.Disk
    static let gib: Int64 = 1 << 30
    /// A server's disks: a 1 GiB SATADOM that sorts first, two SSDs and a spinning disk.
    static let disks = [
        Disk(name: "sda", sizeBytes: 1 * gib, model: "SATADOM-ML 3ME", serial: "DOM1", rotational: false),
        Disk(
            name: "sdb",
            sizeBytes: 960 * gib,
            model: "SAMSUNG MZ7LH960",
            serial: "S45NNA0M123",
            rotational: false,
            wwn: "naa.5002538e40a1b2c3"
        ),
        Disk(name: "sdc", sizeBytes: 480 * gib, model: "INTEL SSDSC2KB48", serial: "BTYF0001", rotational: false),
        Disk(name: "sdd", sizeBytes: 4000 * gib, model: "ST4000NM0035", serial: "ZC11AAAA", rotational: true),
    ]

    func chosen(_ hints: [String], image: Int64 = 0, disks: [Disk] = Self.disks) throws -> String {
        let h = try RootDeviceHints.parse(hints)
        switch RootDeviceHints.choose(disks, hints: h, imageBytes: image) {
        case .success(let d): return d.name
        case .failure(let e): return "error: \(e.description)"
        }
    }

    @Test func theDefaultIsTheSmallestDiskOfAtLeast4GiBThatHoldsTheImage() throws {
        // Not sda (1 GiB, first by name): the smallest of at least 4 GiB.
        #expect(try chosen([]) == "sdc")
        // A raw image bigger than sdc goes to the next size up.
        #expect(try chosen([], image: 500 * Self.gib) == "sdb")
        #expect(try chosen([], image: 5000 * Self.gib).hasPrefix("error: no disk holds"))
        // Only small disks: none, and the error says a hint can name one.
        let small = [Self.disks[0]]
        let e = try chosen([], disks: small)
        #expect(
            e.contains("disks under 4 GiB are taken only by a name, serial, WWN or size hint")
                && e.contains("sda 1073741824 bytes (1 GiB) model=SATADOM-ML 3ME serial=DOM1"),
            "\(e)"
        )
        // A tie in size goes to the first by name.
        let twins = [
            Disk(name: "nvme1n1", sizeBytes: 8 * Self.gib, model: "m", serial: "b", rotational: false),
            Disk(name: "nvme0n1", sizeBytes: 8 * Self.gib, model: "m", serial: "a", rotational: false),
        ]
        #expect(try chosen([], disks: twins) == "nvme0n1")
    }

    @Test func hintsPickTheSmallestMatchingDiskThatHoldsTheImage() throws {
        #expect(try chosen(["serial=dom1"]) == "sda")  // below the default's floor: named, so taken
        #expect(try chosen(["model=  Samsung MZ7LH960 "]) == "sdb")
        #expect(try chosen(["rotational=true"]) == "sdd")
        // Hints that pin no disk (rotational, model) keep the default's 4 GiB floor: not sda.
        #expect(try chosen(["rotational=false"]) == "sdc")
        #expect(
            try chosen(["model=SATADOM-ML 3ME"]).hasPrefix(
                "error: no disk matching model=SATADOM-ML 3ME holds 4294967296 bytes (disks under 4 GiB"
            )
        )
        #expect(try chosen(["rotational=false", "size>=100"]) == "sdc")
        #expect(try chosen(["size>=500"]) == "sdb")
        #expect(try chosen(["size>900"]) == "sdb")
        // A size that a disk of 4 GiB or more meets keeps the floor; one only a smaller disk meets pins it.
        #expect(try chosen(["size<=500"]) == "sdc")
        #expect(try chosen(["size<=3"]) == "sda" && chosen(["size<4"]) == "sda" && chosen(["size=1"]) == "sda")
        #expect(RootDeviceHints(size: .init(.below, gib: 5)).pinsADisk == false)
        #expect(RootDeviceHints(rotational: false).pinsADisk == false && RootDeviceHints(serial: "x").pinsADisk)
        // The floor is named only when it mattered: not for an image no disk holds.
        #expect(
            try chosen([], image: 5000 * Self.gib) == "error: no disk holds 5368709120000 bytes (disks: \(Self.all))"
        )
        #expect(try chosen(["size=480"]) == "sdc")
        #expect(try chosen(["size==480"]) == "sdc")
        #expect(try chosen(["size<2"]) == "sda")
        #expect(try chosen(["name=/dev/sdd"]) == "sdd")
        #expect(try chosen(["name=sdd"]) == "sdd")
        for wwn in ["naa.5002538e40a1b2c3", "0x5002538E40A1B2C3", "5002538e40a1b2c3"] {
            #expect(try chosen(["wwn=\(wwn)"]) == "sdb", "\(wwn)")
        }
        // Matching but too small for the image.
        let e = try chosen(["serial=DOM1"], image: 2 * Self.gib)
        #expect(e == "error: no disk matching serial=DOM1 holds 2147483648 bytes (disks: \(Self.all))", "\(e)")
        // Nothing matching: the hints and every disk named.
        let none = try chosen(["model=nope", "rotational=true"])
        #expect(none == "error: no disk matches the root device hints model=nope rotational=true (disks: \(Self.all))")
        #expect(try chosen(["wwn=5002538e40a1b2c3"], disks: [Self.disks[2]]).hasPrefix("error: no disk matches"))
    }

    static var all: String { disks.map(RootDeviceHints.describe).joined(separator: "; ") }

    @Test func theTextFormRoundTripsAndBadHintsAreNamed() throws {
        let h = try RootDeviceHints.parse([
            "size>=100", "serial=S45", "rotational=no", "name=/dev/sdb", "wwn=0x5", "model=A B",
        ])
        #expect(h.items == ["name=sdb", "model=A B", "serial=S45", "wwn=0x5", "rotational=false", "size>=100"])
        #expect(try RootDeviceHints.parse(h.items) == h)
        #expect(try RootDeviceHints.parse([]).isEmpty)
        #expect(try RootDeviceHints.parse(["size=100GiB"]).size == .init(.equal, gib: 100))
        let bad: [(String, String)] = [
            ("color=red", "root device hint 'color=red': unknown key 'color'"),
            ("serial", "root device hint 'serial': expected KEY=VALUE"),
            ("serial=", "root device hint 'serial=': no value"),
            ("serial>=5", "root device hint 'serial>=5': only size compares with >="),
            ("size>=lots", "root device hint 'size>=lots': size is a whole number of GiB"),
            ("size!=5", "root device hint 'size!=5': expected KEY=VALUE"),
            ("size=>5", "root device hint 'size=>5': expected KEY=VALUE"),
            ("rotational=maybe", "root device hint 'rotational=maybe': rotational is true or false"),
            ("name=/dev/disk/by-path/pci-0000:00:1f.2-ata-1", "/dev/disk/by-* links are not hints"),
            ("model=a\u{7}b", "values are at most 256 printable characters"),
            ("model=" + String(repeating: "x", count: 257), "values are at most 256 printable characters"),
        ]
        for (text, message) in bad {
            #expect(throws: RootDeviceHints.ParseError.self, "\(text)") { try RootDeviceHints.parse([text]) }
            do {
                _ = try RootDeviceHints.parse([text])
            } catch {
                #expect(error.description.contains(message), "\(text): \(error.description)")
            }
        }
        let twice = #expect(throws: RootDeviceHints.ParseError.self) {
            try RootDeviceHints.parse(["serial=a", "serial=b"])
        }
        #expect(twice?.description == "root device hint 'serial=b': serial is given twice")
        let many = #expect(throws: RootDeviceHints.ParseError.self) {
            try RootDeviceHints.parse([
                "name=a", "model=b", "serial=c", "wwn=d", "rotational=true", "size>=1", "size<=9",
            ])
        }
        #expect(many?.description == "at most 6 root device hints, one per key")
    }
}
