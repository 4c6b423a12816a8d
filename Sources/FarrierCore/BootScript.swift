/// Renders iPXE scripts. Pure functions of their inputs.
public enum BootScript {
    /// The script for a machine Farrier has nothing to do with yet.
    ///
    /// It holds the machine in a safe wait: it never falls through to a local disk (no `exit`,
    /// no `sanboot`) and never re-runs DHCP; it re-fetches its own script over HTTP every
    /// `pollSeconds`, so the machine moves on as soon as Farrier has work for it. A failed
    /// fetch is retried at the same pace: the loop has no exit by design, as the machine must
    /// not boot anything else until told to.
    public static func wait(scriptURL: String, mac: MACAddress, reason: String, pollSeconds: Int = 30) -> String {
        """
        #!ipxe
        # Farrier: \(mac) is \(reason); waiting for instructions.
        echo Farrier: ${mac} is \(reason). Waiting for instructions (checking every \(pollSeconds) s).
        :wait
        sleep \(pollSeconds)
        chain --replace --autofree \(scriptURL) || goto wait
        goto wait

        """
    }

    /// Boots the Farrier ramdisk (the agent, or rescue with SSH). The kernel command line
    /// carries the agent channel's HTTPS URL and the SHA-256 fingerprint of its certificate,
    /// which the agent pins: no credential (the agent gets its token at its first hello). When
    /// the ramdisk cannot be loaded the script retries through itself, never falling through
    /// to a local disk. `overlays`: more archives of the ramdisk directory loaded after the
    /// initrd (`burnin.img`, the commissioning tests' tools); Linux unpacks each over the last.
    public static func ramdisk(
        serverURL: String,
        scriptURL: String,
        machine: String,
        agentURL: String,
        certificateSHA256: String,
        mode: String,
        consoleArgs: String = "console=tty0 console=ttyS0,115200n8",
        overlays: [String] = []
    ) -> String {
        let names = (["initrd.img"] + overlays).map { "initrd=\($0)" }.joined(separator: " ")
        let loads = (["initrd.img"] + overlays).map {
            "initrd --name \($0) \(serverURL)/tftp/ramdisk/\($0) || goto fail"
        }.joined(separator: "\n")
        return """
            #!ipxe
            echo Farrier: ${mac} (\(machine)) boots the Farrier ramdisk (\(mode)).
            :load
            kernel \(serverURL)/tftp/ramdisk/vmlinuz \(names) farrier.url=\(agentURL) farrier.cert=sha256:\(certificateSHA256) farrier.mode=\(mode) \(consoleArgs) || goto fail
            \(loads)
            boot || goto fail
            :fail
            echo Farrier: could not boot the ramdisk; trying again in 10 s.
            sleep 10
            chain --replace --autofree \(scriptURL) || goto fail
            goto fail

            """
    }

    /// Boots the local disk: BIOS through INT 13h drive 0x80, UEFI by handing control back to
    /// the firmware, which tries its next boot entry (the disk).
    public static func localDisk(machine: String, firmware: Firmware) -> String {
        switch firmware {
        case .uefi:
            """
            #!ipxe
            echo Farrier: ${mac} (\(machine)) boots its local disk.
            exit

            """
        default:
            """
            #!ipxe
            echo Farrier: ${mac} (\(machine)) boots its local disk.
            sanboot --no-describe --drive 0x80 || exit

            """
        }
    }
}
