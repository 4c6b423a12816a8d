/// Every metric family Farrier exports, with its help text, and the histograms' buckets.
/// Names follow Prometheus's conventions: base units, `_total` on counters, `_seconds` and
/// `_bytes`; no label holds a MAC, an address or a machine's name.
public enum MetricFamilies {
    public static let help: [String: String] = [
        // The boot path (read from its atomics at scrape time).
        "farrier_discovery_refused_total": "New MACs not recorded: discovered machines at discovery.max-machines",
        "farrier_dhcp_packets_received_total": "DHCP datagrams received",
        "farrier_dhcp_packets_malformed_total": "DHCP datagrams dropped as malformed",
        "farrier_dhcp_packets_dropped_total": "DHCP requests not answered",
        "farrier_dhcp_requests_total": "DHCP requests decoded, by message type",
        "farrier_dhcp_offers_total": "DHCPOFFERs sent",
        "farrier_dhcp_acks_total": "DHCPACKs sent",
        "farrier_dhcp_naks_total": "DHCPNAKs sent",
        "farrier_dhcp_lease_commit_failures_total": "Lease commits that failed (ACK withheld)",
        "farrier_dhcp_send_errors_total": "DHCP replies the kernel refused to send",
        "farrier_dhcp_pool_exhausted_total": "DHCPDISCOVERs unanswered: their subnet's pool had no free address",
        "farrier_dhcp_pool_addresses": "Addresses in the subnet's pool",
        "farrier_dhcp_pool_leased_addresses": "Addresses of the subnet's pool held by an unexpired lease",
        "farrier_tftp_requests_total": "TFTP read requests",
        "farrier_tftp_packets_malformed_total": "TFTP datagrams dropped as malformed",
        "farrier_tftp_transfers_completed_total": "TFTP transfers completed",
        "farrier_tftp_transfers_failed_total": "TFTP transfers that timed out or were aborted",
        "farrier_tftp_requests_refused_total": "TFTP requests answered with an error",
        "farrier_tftp_retransmissions_total": "TFTP packets retransmitted on timeout",
        "farrier_tftp_transfers_active": "TFTP transfers in progress",
        "farrier_tftp_refused_per_client_total":
            "TFTP requests refused: their client address had its share of transfers",
        "farrier_tftp_bytes_sent_total": "TFTP payload bytes sent",
        "farrier_tftp_poll_hits_total": "TFTP waits whose packet arrived while polling",
        "farrier_tftp_poll_misses_total": "TFTP waits that polled, then slept",
        "farrier_http_image_transfers_total": "Images (or ranges of them) sent to their end over the agent channel",
        "farrier_http_boot_transfers_total": "Boot files (iPXE, kernel, initrd) answered over HTTP under /tftp",
        "farrier_http_boot_bytes_total":
            "Bytes of the boot files answered over HTTP under /tftp (their bodies' lengths)",
        "farrier_http_image_bytes_sent_total": "Image bytes sent over the agent channel",
        // The process.
        "process_resident_memory_bytes": "Resident memory size in bytes",
        "farrier_process_resident_memory_peak_bytes": "Peak resident memory size in bytes",
        "farrier_heap_in_use_bytes": "Bytes malloc has handed out and not had back",
        "farrier_heap_arena_bytes": "Bytes malloc's arenas span, in use or free",
        "process_open_fds": "Number of open file descriptors",
        "process_max_fds": "Maximum number of open file descriptors",
        "process_cpu_seconds_total": "Total user and system CPU time spent in seconds",
        // The fleet and its lifecycle.
        "farrier_machines": "Machines, by state, site, zone and project (empty: none)",
        "farrier_lifecycle_step_failures_total": "Lifecycle steps that failed, by step and class of failure",
        "farrier_lifecycle_step_duration_seconds":
            "Lifecycle steps from their start to their end, by step and outcome (succeeded, failed)",
        "farrier_reconciler_queued_steps": "Steps waiting for a slot (phase queued), by step",
        "farrier_reconciler_oldest_queued_step_seconds": "How long the oldest step still queued has waited, by step",
        "farrier_reconciler_steps": "Machines in a step, by step and phase",
        "farrier_reconciler_workers_active": "BMC workers running on this replica",
        "farrier_agent_deploy_throughput_bytes_per_second":
            "Image bytes an agent wrote a second over its whole task (download, write, verify), when its work succeeded",
        "farrier_agent_deploy_bytes_total": "Image bytes agents wrote in deploys whose agent work succeeded",
        // BMCs.
        "farrier_bmc_operation_duration_seconds": "BMC operations, by driver and operation, whatever their result",
        "farrier_bmc_operation_errors_total": "BMC operations that failed, by driver and operation",
        "farrier_power_sync_reads_total": "BMC power reads by the power sync, by result",
        "farrier_power_sync_machines":
            "Machines the power sync reads (enrolled with a BMC, not in maintenance or a step)",
        "farrier_power_drift_machines": "Machines whose power differs from what their state expects, as last read",
        "farrier_power_drift_total": "Times a machine was found with power its state does not expect",
        "farrier_bmc_unreachable_machines": "Machines whose BMC did not answer the power sync's last read",
        // The API.
        "grpc_server_handled_total": "gRPC calls completed on the server, by service, method and status code",
        "grpc_server_handling_seconds": "gRPC calls from their start to their status, by service and method",
    ]

    static let defaultDurationBuckets: [Duration] = [
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10),
    ]
    static let defaultValueBuckets: [Double] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]

    static let durationBuckets: [String: [Duration]] = [
        // A commission takes minutes, a deploy tens of minutes, a wipe up to a day.
        "farrier_lifecycle_step_duration_seconds": [
            5, 15, 30, 60, 120, 180, 300, 450, 600, 900, 1200, 1800, 2700, 3600, 7200, 14400, 43200, 86400,
        ].map { .seconds($0) },
        "farrier_bmc_operation_duration_seconds": [
            .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
            .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10), .seconds(20), .seconds(60),
        ],
        "grpc_server_handling_seconds": defaultDurationBuckets + [.seconds(30), .seconds(60), .seconds(300)],
    ]
    static let valueBuckets: [String: [Double]] = [
        "farrier_agent_deploy_throughput_bytes_per_second": [
            1, 5, 10, 25, 50, 100, 200, 400, 800, 1600, 3200,
        ].map { $0 * 1_048_576 }
    ]
}
