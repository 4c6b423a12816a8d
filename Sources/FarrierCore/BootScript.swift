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
}
