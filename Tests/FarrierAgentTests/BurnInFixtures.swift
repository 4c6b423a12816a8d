// Fixtures for BurnInTests. Those marked "captured" are this host's tools' own output (Debian 12:
// stress-ng 0.15.06, memtester 4.6.0, smartctl 7.3), as written; the others are HAND-MADE: no ATA,
// SCSI or NVMe drive is here, so they follow the key names of smartctl 7.3's source (ataprint.cpp,
// scsiprint.cpp, nvmeprint.cpp) and memtester's and stress-ng's own message formats, and are not
// checked against real drives or failures.

enum BurnInFixtures {
    /// Captured: `stress-ng --cpu 1 --cpu-method all --verify --timeout 1s --metrics-brief --yaml F`, exit 0.
    static let stressNGCPU = """
        ---
        system-info:
              stress-ng-version: 0.15.06
              run-by: root
              date-yyyy-mm-dd: 2026:12:06
              time-hh-mm-ss: 12:07:22
              epoch-secs: 1796558842
              hostname: vm
              sysname: Linux
              nodename: vm
              release: 6.18.44-fc-v1300
              version: '#1 SMP PREEMPT_DYNAMIC @0'
              machine: x86_64
              compiler: 'gcc 12.2.0'
              uptime: 182
              totalram: 25276182528
              freeram: 23857635328
              sharedram: 12840960
              bufferram: 26251264
              totalswap: 0
              freeswap: 0
              pagesize: 4096
              cpus: 2
              cpus-online: 2
              ticks-per-second: 100

        metrics:
            - stressor: cpu
              bogo-ops: 1475
              bogo-ops-per-second-usr-sys-time: 1474.604806
              bogo-ops-per-second-real-time: 1474.856885
              wall-clock-time: 1.000097
              user-time: 1.000268
              system-time: 0.000000
              cpu-usage-per-instance: 100.017095
              max-rss: 6492

        ...
        """

    /// Captured: `stress-ng --vm 1 --vm-bytes 5% --vm-method all --verify --timeout 2s --metrics-brief --yaml F`,
    /// exit 0 (no bogo ops in 2 s: `all` methods take longer).
    static let stressNGVM = """
        ---
        system-info:
              stress-ng-version: 0.15.06
              run-by: root
              date-yyyy-mm-dd: 2026:12:06
              time-hh-mm-ss: 12:07:18
              epoch-secs: 1796558838
              hostname: vm
              sysname: Linux
              nodename: vm
              release: 6.18.44-fc-v1300
              version: '#1 SMP PREEMPT_DYNAMIC @0'
              machine: x86_64
              compiler: 'gcc 12.2.0'
              uptime: 178
              totalram: 25276182528
              freeram: 23787884544
              sharedram: 12845056
              bufferram: 29782016
              totalswap: 0
              freeswap: 0
              pagesize: 4096
              cpus: 2
              cpus-online: 2
              ticks-per-second: 100

        metrics:
            - stressor: vm
              bogo-ops: 0
              bogo-ops-per-second-usr-sys-time: 0.000000
              bogo-ops-per-second-real-time: 0.000000
              wall-clock-time: 4.500657
              user-time: 0.065706
              system-time: 3.976498
              cpu-usage-per-instance: 89.813651
              max-rss: 1164044

        ...
        """

    /// Hand-made: a failed verification as stress-ng logs it (exit 2); no YAML metrics.
    static let stressNGFailure = """
        stress-ng: info:  [4021] setting to a 2 second run per stressor
        stress-ng: info:  [4021] dispatching hogs: 2 cpu
        stress-ng: fail:  [4023] cpu: matrixprod: verification failed: result 0x3f2a, expected 0x3f2b
        stress-ng: error: [4021] cpu: [4023] terminated with an error, exit status=2 (stressor failed)
        stress-ng: info:  [4021] unsuccessful run completed in 2.01s
        """

    /// Captured: `memtester 8M 1` (exit 0), its progress runs (drawn with backspaces) shortened to
    /// two steps each; rendered, every line is as memtester's terminal shows it.
    static let memtesterPass = """
        memtester version 4.6.0 (64-bit)
        Copyright (C) 2001-2020 Charles Cazabon.
        Licensed under the GNU General Public License version 2 (only).

        pagesize is 4096
        pagesizemask is 0xfffffffffffff000
        want 8MB (8388608 bytes)
        got  8MB (8388608 bytes), trying mlock ...locked.
        Loop 1/1:
          Stuck Address       :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          Random Value        :  \u{8}\\\u{8}|\u{8}/\u{8}-\u{8}|\u{8} \u{8}ok
          Compare XOR         : ok
          Compare SUB         : ok
          Compare MUL         : ok
          Compare DIV         : ok
          Compare OR          : ok
          Compare AND         : ok
          Sequential Increment: ok
          Solid Bits          :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          Block Sequential    :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          Checkerboard        :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          Bit Spread          :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          Bit Flip            :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          Walking Ones        :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          Walking Zeroes      :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          8-bit Writes        :  \u{8}\\\u{8}|\u{8}/\u{8}-\u{8}-\u{8} \u{8}ok
          16-bit Writes       :  \u{8}\\\u{8}|\u{8}/\u{8}-\u{8}-\u{8} \u{8}ok

        Done.

        """

    /// Hand-made from the captured run: memtester's own `FAILURE:` lines (its format strings), a
    /// stuck address line and two compare errors: three errors, exit status 0x06.
    static let memtesterFail = """
        memtester version 4.6.0 (64-bit)
        Copyright (C) 2001-2020 Charles Cazabon.
        Licensed under the GNU General Public License version 2 (only).

        pagesize is 4096
        pagesizemask is 0xfffffffffffff000
        want 8MB (8388608 bytes)
        got  8MB (8388608 bytes), trying mlock ...locked.
        Loop 1/1:
          Stuck Address       :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1FAILURE: possible bad address line at offset 0x0000000000012a40.
        Skipping to next test...
          Random Value        : FAILURE: 0x4a3f0c8d12e9b6a1 != 0x4a3f0c8d12e9b6a3 at offset 0x0000000000033108.
          Compare XOR         : FAILURE: 0x5e0b7d2c8a1f3e90 != 0x5e0b7d2c8a1f3e92 at offset 0x0000000000033108.
          Compare SUB         : ok
          Compare MUL         : ok
          Compare DIV         : ok
          Compare OR          : ok
          Compare AND         : ok
          Sequential Increment: ok
          Solid Bits          :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          Block Sequential    :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          Checkerboard        :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          Bit Spread          :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          Bit Flip            :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          Walking Ones        :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          Walking Zeroes      :            \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   0\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}setting   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}testing   1\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}           \u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}\u{8}ok
          8-bit Writes        :  \u{8}\\\u{8}|\u{8}/\u{8}-\u{8}-\u{8} \u{8}ok
          16-bit Writes       :  \u{8}\\\u{8}|\u{8}/\u{8}-\u{8}-\u{8} \u{8}ok

        Done.

        """

    /// Captured: `smartctl -j -H -A -i` on a 1 MiB file, exit 1.
    static let smartctlFile = """
        {
          "json_format_version": [
            1,
            0
          ],
          "smartctl": {
            "version": [
              7,
              3
            ],
            "svn_revision": "5338",
            "platform_info": "x86_64-linux-6.18.44-fc-v1300",
            "build_info": "(local build)",
            "argv": [
              "smartctl",
              "-j",
              "-H",
              "-A",
              "-i",
              "/tmp/burnin-disk.img"
            ],
            "messages": [
              {
                "string": "/tmp/burnin-disk.img: Unable to detect device type",
                "severity": "error"
              }
            ],
            "exit_status": 1
          },
          "local_time": {
            "time_t": 1796559553,
            "asctime": "Sun Dec  6 12:19:13 2026 UTC"
          }
        }
        """

    /// Hand-made: a healthy SATA SSD, `-j -H -A -i`, exit 0.
    static let smartctlATAPass = """
        {
          "json_format_version": [
            1,
            0
          ],
          "smartctl": {
            "version": [
              7,
              3
            ],
            "svn_revision": "5338",
            "platform_info": "x86_64-linux-6.1.0-28-amd64",
            "build_info": "(local build)",
            "argv": [
              "smartctl",
              "-j",
              "-H",
              "-A",
              "-i",
              "/dev/sda"
            ],
            "exit_status": 0
          },
          "device": {
            "name": "/dev/sda",
            "info_name": "/dev/sda [SAT]",
            "type": "sat",
            "protocol": "ATA"
          },
          "model_name": "EXAMPLE SSD 1TB",
          "serial_number": "FARRIER0001",
          "firmware_version": "1.0",
          "user_capacity": {
            "blocks": 1953525168,
            "bytes": 1000204886016
          },
          "logical_block_size": 512,
          "rotation_rate": 0,
          "smart_support": {
            "available": true,
            "enabled": true
          },
          "smart_status": {
            "passed": true
          },
          "ata_smart_attributes": {
            "revision": 1,
            "table": [
              {
                "id": 5,
                "name": "Reallocated_Sector_Ct",
                "value": 100,
                "worst": 100,
                "thresh": 10,
                "when_failed": "",
                "flags": {
                  "value": 51,
                  "string": "PO--CK ",
                  "prefailure": true,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": true,
                  "auto_keep": true
                },
                "raw": {
                  "value": 0,
                  "string": "0"
                }
              },
              {
                "id": 9,
                "name": "Power_On_Hours",
                "value": 97,
                "worst": 97,
                "thresh": 0,
                "when_failed": "",
                "flags": {
                  "value": 50,
                  "string": "-O--CK ",
                  "prefailure": false,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": true,
                  "auto_keep": true
                },
                "raw": {
                  "value": 12873,
                  "string": "12873"
                }
              },
              {
                "id": 194,
                "name": "Temperature_Celsius",
                "value": 67,
                "worst": 52,
                "thresh": 0,
                "when_failed": "",
                "flags": {
                  "value": 50,
                  "string": "-O--CK ",
                  "prefailure": false,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": true,
                  "auto_keep": true
                },
                "raw": {
                  "value": 33,
                  "string": "33"
                }
              },
              {
                "id": 197,
                "name": "Current_Pending_Sector",
                "value": 100,
                "worst": 100,
                "thresh": 0,
                "when_failed": "",
                "flags": {
                  "value": 50,
                  "string": "-O--CK ",
                  "prefailure": false,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": true,
                  "auto_keep": true
                },
                "raw": {
                  "value": 0,
                  "string": "0"
                }
              },
              {
                "id": 198,
                "name": "Offline_Uncorrectable",
                "value": 100,
                "worst": 100,
                "thresh": 0,
                "when_failed": "",
                "flags": {
                  "value": 50,
                  "string": "-O--CK ",
                  "prefailure": false,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": true,
                  "auto_keep": true
                },
                "raw": {
                  "value": 0,
                  "string": "0"
                }
              }
            ]
          },
          "power_on_time": {
            "hours": 12873
          },
          "power_cycle_count": 211,
          "temperature": {
            "current": 33
          }
        }
        """

    /// Hand-made: a failing SATA disk (reallocated sectors past the threshold), exit 0x18.
    static let smartctlATAFail = """
        {
          "json_format_version": [
            1,
            0
          ],
          "smartctl": {
            "version": [
              7,
              3
            ],
            "svn_revision": "5338",
            "platform_info": "x86_64-linux-6.1.0-28-amd64",
            "build_info": "(local build)",
            "argv": [
              "smartctl",
              "-j",
              "-H",
              "-A",
              "-i",
              "/dev/sda"
            ],
            "exit_status": 24
          },
          "device": {
            "name": "/dev/sda",
            "info_name": "/dev/sda [SAT]",
            "type": "sat",
            "protocol": "ATA"
          },
          "model_name": "EXAMPLE SSD 1TB",
          "serial_number": "FARRIER0001",
          "firmware_version": "1.0",
          "user_capacity": {
            "blocks": 1953525168,
            "bytes": 1000204886016
          },
          "logical_block_size": 512,
          "rotation_rate": 0,
          "smart_support": {
            "available": true,
            "enabled": true
          },
          "smart_status": {
            "passed": false
          },
          "ata_smart_attributes": {
            "revision": 1,
            "table": [
              {
                "id": 5,
                "name": "Reallocated_Sector_Ct",
                "value": 3,
                "worst": 3,
                "thresh": 10,
                "when_failed": "now",
                "flags": {
                  "value": 51,
                  "string": "PO--CK ",
                  "prefailure": true,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": true,
                  "auto_keep": true
                },
                "raw": {
                  "value": 1200,
                  "string": "1200"
                }
              },
              {
                "id": 9,
                "name": "Power_On_Hours",
                "value": 97,
                "worst": 97,
                "thresh": 0,
                "when_failed": "",
                "flags": {
                  "value": 50,
                  "string": "-O--CK ",
                  "prefailure": false,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": true,
                  "auto_keep": true
                },
                "raw": {
                  "value": 12873,
                  "string": "12873"
                }
              },
              {
                "id": 194,
                "name": "Temperature_Celsius",
                "value": 67,
                "worst": 52,
                "thresh": 0,
                "when_failed": "",
                "flags": {
                  "value": 50,
                  "string": "-O--CK ",
                  "prefailure": false,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": true,
                  "auto_keep": true
                },
                "raw": {
                  "value": 33,
                  "string": "33"
                }
              },
              {
                "id": 197,
                "name": "Current_Pending_Sector",
                "value": 100,
                "worst": 100,
                "thresh": 0,
                "when_failed": "",
                "flags": {
                  "value": 50,
                  "string": "-O--CK ",
                  "prefailure": false,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": true,
                  "auto_keep": true
                },
                "raw": {
                  "value": 16,
                  "string": "16"
                }
              },
              {
                "id": 198,
                "name": "Offline_Uncorrectable",
                "value": 100,
                "worst": 100,
                "thresh": 0,
                "when_failed": "",
                "flags": {
                  "value": 50,
                  "string": "-O--CK ",
                  "prefailure": false,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": true,
                  "auto_keep": true
                },
                "raw": {
                  "value": 8,
                  "string": "8"
                }
              }
            ]
          },
          "power_on_time": {
            "hours": 12873
          },
          "power_cycle_count": 211,
          "temperature": {
            "current": 33
          }
        }
        """

    /// Hand-made: a healthy NVMe namespace (QEMU's names), exit 0.
    static let smartctlNVMePass = """
        {
          "json_format_version": [
            1,
            0
          ],
          "smartctl": {
            "version": [
              7,
              3
            ],
            "svn_revision": "5338",
            "platform_info": "x86_64-linux-6.1.0-28-amd64",
            "build_info": "(local build)",
            "argv": [
              "smartctl",
              "-j",
              "-H",
              "-A",
              "-i",
              "/dev/nvme0n1"
            ],
            "exit_status": 0
          },
          "device": {
            "name": "/dev/nvme0n1",
            "info_name": "/dev/nvme0n1",
            "type": "nvme",
            "protocol": "NVMe"
          },
          "model_name": "QEMU NVMe Ctrl",
          "serial_number": "lab-1-nvme",
          "firmware_version": "7.2.19",
          "nvme_pci_vendor": {
            "id": 6900,
            "subsystem_id": 6900
          },
          "nvme_total_capacity": 1073741824,
          "smart_support": {
            "available": true,
            "enabled": true
          },
          "smart_status": {
            "passed": true,
            "nvme": {
              "value": 0
            }
          },
          "nvme_smart_health_information_log": {
            "critical_warning": 0,
            "temperature": 41,
            "available_spare": 100,
            "available_spare_threshold": 10,
            "percentage_used": 3,
            "data_units_read": 1234,
            "data_units_written": 5678,
            "host_reads": 12345,
            "host_writes": 67890,
            "controller_busy_time": 12,
            "power_cycles": 40,
            "power_on_hours": 1250,
            "unsafe_shutdowns": 3,
            "media_errors": 0,
            "num_err_log_entries": 0,
            "warning_temp_time": 0,
            "critical_comp_time": 0
          },
          "temperature": {
            "current": 41
          },
          "power_cycle_count": 40,
          "power_on_time": {
            "hours": 1250
          }
        }
        """

    /// Hand-made: an NVMe namespace with critical warnings 0x05 (spare under its
    /// threshold, reliability degraded), exit 0x08.
    static let smartctlNVMeFail = """
        {
          "json_format_version": [
            1,
            0
          ],
          "smartctl": {
            "version": [
              7,
              3
            ],
            "svn_revision": "5338",
            "platform_info": "x86_64-linux-6.1.0-28-amd64",
            "build_info": "(local build)",
            "argv": [
              "smartctl",
              "-j",
              "-H",
              "-A",
              "-i",
              "/dev/nvme0n1"
            ],
            "exit_status": 8
          },
          "device": {
            "name": "/dev/nvme0n1",
            "info_name": "/dev/nvme0n1",
            "type": "nvme",
            "protocol": "NVMe"
          },
          "model_name": "QEMU NVMe Ctrl",
          "serial_number": "lab-1-nvme",
          "firmware_version": "7.2.19",
          "nvme_pci_vendor": {
            "id": 6900,
            "subsystem_id": 6900
          },
          "nvme_total_capacity": 1073741824,
          "smart_support": {
            "available": true,
            "enabled": true
          },
          "smart_status": {
            "passed": false,
            "nvme": {
              "value": 5,
              "spare_below_threshold": true,
              "temperature_above_or_below_threshold": false,
              "reliability_degraded": true,
              "media_read_only": false,
              "volatile_memory_backup_failed": false,
              "persistent_memory_region_unreliable": false,
              "other": 0
            }
          },
          "nvme_smart_health_information_log": {
            "critical_warning": 5,
            "temperature": 41,
            "available_spare": 4,
            "available_spare_threshold": 10,
            "percentage_used": 104,
            "data_units_read": 1234,
            "data_units_written": 5678,
            "host_reads": 12345,
            "host_writes": 67890,
            "controller_busy_time": 12,
            "power_cycles": 40,
            "power_on_hours": 1250,
            "unsafe_shutdowns": 3,
            "media_errors": 17,
            "num_err_log_entries": 17,
            "warning_temp_time": 0,
            "critical_comp_time": 0
          },
          "temperature": {
            "current": 41
          },
          "power_cycle_count": 40,
          "power_on_time": {
            "hours": 1250
          }
        }
        """

    /// Hand-made: `-j -c` while a short self-test runs (status 0xF9: 90% remaining).
    static let smartctlSelfTestRunning = """
        {
          "json_format_version": [
            1,
            0
          ],
          "smartctl": {
            "version": [
              7,
              3
            ],
            "svn_revision": "5338",
            "platform_info": "x86_64-linux-6.1.0-28-amd64",
            "build_info": "(local build)",
            "argv": [
              "smartctl",
              "-j",
              "-c",
              "/dev/sda"
            ],
            "exit_status": 0
          },
          "device": {
            "name": "/dev/sda",
            "info_name": "/dev/sda [SAT]",
            "type": "sat",
            "protocol": "ATA"
          },
          "ata_smart_data": {
            "offline_data_collection": {
              "status": {
                "value": 0,
                "string": "was never started"
              },
              "completion_seconds": 0
            },
            "self_test": {
              "status": {
                "value": 249,
                "string": "in progress, 90% remaining",
                "remaining_percent": 90
              },
              "polling_minutes": {
                "short": 2,
                "extended": 85
              }
            },
            "capabilities": {
              "values": [
                83,
                3
              ],
              "exec_offline_immediate_supported": true,
              "offline_is_aborted_upon_new_cmd": false,
              "offline_surface_scan_supported": false,
              "self_tests_supported": true,
              "conveyance_self_test_supported": false,
              "selective_self_test_supported": true,
              "attribute_autosave_enabled": true,
              "error_logging_supported": true,
              "gp_logging_supported": true
            }
          }
        }
        """

    /// Hand-made: `-j -c` after the self-test (status 0: completed without error).
    static let smartctlSelfTestDone = """
        {
          "json_format_version": [
            1,
            0
          ],
          "smartctl": {
            "version": [
              7,
              3
            ],
            "svn_revision": "5338",
            "platform_info": "x86_64-linux-6.1.0-28-amd64",
            "build_info": "(local build)",
            "argv": [
              "smartctl",
              "-j",
              "-c",
              "/dev/sda"
            ],
            "exit_status": 0
          },
          "device": {
            "name": "/dev/sda",
            "info_name": "/dev/sda [SAT]",
            "type": "sat",
            "protocol": "ATA"
          },
          "ata_smart_data": {
            "offline_data_collection": {
              "status": {
                "value": 0,
                "string": "was never started"
              },
              "completion_seconds": 0
            },
            "self_test": {
              "status": {
                "value": 0,
                "string": "completed without error",
                "passed": true
              },
              "polling_minutes": {
                "short": 2,
                "extended": 85
              }
            },
            "capabilities": {
              "values": [
                83,
                3
              ],
              "exec_offline_immediate_supported": true,
              "offline_is_aborted_upon_new_cmd": false,
              "offline_surface_scan_supported": false,
              "self_tests_supported": true,
              "conveyance_self_test_supported": false,
              "selective_self_test_supported": true,
              "attribute_autosave_enabled": true,
              "error_logging_supported": true,
              "gp_logging_supported": true
            }
          }
        }
        """

    /// Hand-made: `-j -l selftest`, the newest entry passed (an older one failed: exit 0x80).
    static let smartctlLogPassed = """
        {
          "json_format_version": [
            1,
            0
          ],
          "smartctl": {
            "version": [
              7,
              3
            ],
            "svn_revision": "5338",
            "platform_info": "x86_64-linux-6.1.0-28-amd64",
            "build_info": "(local build)",
            "argv": [
              "smartctl",
              "-j",
              "-l",
              "selftest",
              "/dev/sda"
            ],
            "exit_status": 128
          },
          "device": {
            "name": "/dev/sda",
            "info_name": "/dev/sda [SAT]",
            "type": "sat",
            "protocol": "ATA"
          },
          "ata_smart_self_test_log": {
            "standard": {
              "revision": 1,
              "table": [
                {
                  "type": {
                    "value": 1,
                    "string": "Short offline"
                  },
                  "status": {
                    "value": 0,
                    "string": "Completed without error",
                    "passed": true
                  },
                  "lifetime_hours": 12874
                },
                {
                  "type": {
                    "value": 2,
                    "string": "Extended offline"
                  },
                  "status": {
                    "value": 121,
                    "string": "Completed: read failure",
                    "remaining_percent": 90,
                    "passed": false
                  },
                  "lifetime_hours": 11020,
                  "lba": 123456
                }
              ],
              "count": 2,
              "error_count_total": 1,
              "error_count_outdated": 0
            }
          }
        }
        """

    /// Hand-made: `-j -l selftest`, the newest entry a read failure, exit 0x80.
    static let smartctlLogFailed = """
        {
          "json_format_version": [
            1,
            0
          ],
          "smartctl": {
            "version": [
              7,
              3
            ],
            "svn_revision": "5338",
            "platform_info": "x86_64-linux-6.1.0-28-amd64",
            "build_info": "(local build)",
            "argv": [
              "smartctl",
              "-j",
              "-l",
              "selftest",
              "/dev/sda"
            ],
            "exit_status": 128
          },
          "device": {
            "name": "/dev/sda",
            "info_name": "/dev/sda [SAT]",
            "type": "sat",
            "protocol": "ATA"
          },
          "ata_smart_self_test_log": {
            "standard": {
              "revision": 1,
              "table": [
                {
                  "type": {
                    "value": 1,
                    "string": "Short offline"
                  },
                  "status": {
                    "value": 121,
                    "string": "Completed: read failure",
                    "remaining_percent": 90,
                    "passed": false
                  },
                  "lifetime_hours": 12874,
                  "lba": 2048
                },
                {
                  "type": {
                    "value": 2,
                    "string": "Extended offline"
                  },
                  "status": {
                    "value": 121,
                    "string": "Completed: read failure",
                    "remaining_percent": 90,
                    "passed": false
                  },
                  "lifetime_hours": 11020,
                  "lba": 123456
                }
              ],
              "count": 2,
              "error_count_total": 2,
              "error_count_outdated": 0
            }
          }
        }
        """

    /// Hand-made: a SCSI disk's `-j -l selftest` while its short self-test runs.
    static let smartctlSCSIRunning = """
        {
          "json_format_version": [
            1,
            0
          ],
          "smartctl": {
            "version": [
              7,
              3
            ],
            "svn_revision": "5338",
            "platform_info": "x86_64-linux-6.1.0-28-amd64",
            "build_info": "(local build)",
            "argv": [
              "smartctl",
              "-j",
              "-l",
              "selftest",
              "/dev/sdb"
            ],
            "exit_status": 0
          },
          "device": {
            "name": "/dev/sdb",
            "info_name": "/dev/sdb",
            "type": "scsi",
            "protocol": "SCSI"
          },
          "scsi_self_test_0": {
            "code": {
              "value": 1,
              "string": "Background short"
            },
            "result": {
              "value": 15,
              "string": "Self test in progress ..."
            },
            "self_test_in_progress": true
          }
        }
        """

    /// Hand-made: a SCSI disk's `-j -l selftest` after it, completed without error.
    static let smartctlSCSIDone = """
        {
          "json_format_version": [
            1,
            0
          ],
          "smartctl": {
            "version": [
              7,
              3
            ],
            "svn_revision": "5338",
            "platform_info": "x86_64-linux-6.1.0-28-amd64",
            "build_info": "(local build)",
            "argv": [
              "smartctl",
              "-j",
              "-l",
              "selftest",
              "/dev/sdb"
            ],
            "exit_status": 0
          },
          "device": {
            "name": "/dev/sdb",
            "info_name": "/dev/sdb",
            "type": "scsi",
            "protocol": "SCSI"
          },
          "scsi_self_test_0": {
            "code": {
              "value": 1,
              "string": "Background short"
            },
            "result": {
              "value": 0,
              "string": "Completed"
            },
            "power_on_time": {
              "hours": 5021,
              "aka": "accumulated_power_on_hours"
            }
          }
        }
        """

    // Captured from QEMU 7.2's ATA emulation (an ide-hd on AHCI), by smartctl 7.3 in the Farrier
    // ramdisk with burnin.img (scripts/build-ramdisk.sh), booted under TCG: a real SAT device,
    // its health, and a short self-test it ran and logged.
    static let qemuATAInfo = """
        {
          "json_format_version": [
            1,
            0
          ],
          "smartctl": {
            "version": [
              7,
              3
            ],
            "svn_revision": "5338",
            "platform_info": "x86_64-linux-6.1.0-57-amd64",
            "build_info": "(local build)",
            "argv": [
              "smartctl",
              "-j",
              "-H",
              "-A",
              "-i",
              "/dev/sda"
            ],
            "drive_database_version": {
              "string": "7.3/5319"
            },
            "exit_status": 0
          },
          "local_time": {
            "time_t": 1796564817,
            "asctime": "Sun Dec  6 13:46:57 2026 UTC"
          },
          "device": {
            "name": "/dev/sda",
            "info_name": "/dev/sda [SAT]",
            "type": "sat",
            "protocol": "ATA"
          },
          "model_name": "QEMU SATA",
          "serial_number": "FARRIER-SATA",
          "firmware_version": "2.5+",
          "user_capacity": {
            "blocks": 524288,
            "bytes": 268435456
          },
          "logical_block_size": 512,
          "physical_block_size": 512,
          "trim": {
            "supported": true,
            "deterministic": true,
            "zeroed": false
          },
          "in_smartctl_database": false,
          "ata_version": {
            "string": "ATA/ATAPI-7, ATA/ATAPI-5 published, ANSI NCITS 340-2000",
            "major_value": 240,
            "minor_value": 22
          },
          "smart_support": {
            "available": true,
            "enabled": true
          },
          "smart_status": {
            "passed": true
          },
          "ata_smart_attributes": {
            "revision": 1,
            "table": [
              {
                "id": 1,
                "name": "Raw_Read_Error_Rate",
                "value": 100,
                "worst": 100,
                "thresh": 6,
                "when_failed": "",
                "flags": {
                  "value": 3,
                  "string": "PO---- ",
                  "prefailure": true,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": false,
                  "auto_keep": false
                },
                "raw": {
                  "value": 0,
                  "string": "0"
                }
              },
              {
                "id": 3,
                "name": "Spin_Up_Time",
                "value": 100,
                "worst": 100,
                "thresh": 0,
                "when_failed": "",
                "flags": {
                  "value": 3,
                  "string": "PO---- ",
                  "prefailure": true,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": false,
                  "auto_keep": false
                },
                "raw": {
                  "value": 16,
                  "string": "16"
                }
              },
              {
                "id": 4,
                "name": "Start_Stop_Count",
                "value": 100,
                "worst": 100,
                "thresh": 20,
                "when_failed": "",
                "flags": {
                  "value": 2,
                  "string": "-O---- ",
                  "prefailure": false,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": false,
                  "auto_keep": false
                },
                "raw": {
                  "value": 100,
                  "string": "100"
                }
              },
              {
                "id": 5,
                "name": "Reallocated_Sector_Ct",
                "value": 100,
                "worst": 100,
                "thresh": 36,
                "when_failed": "",
                "flags": {
                  "value": 3,
                  "string": "PO---- ",
                  "prefailure": true,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": false,
                  "auto_keep": false
                },
                "raw": {
                  "value": 0,
                  "string": "0"
                }
              },
              {
                "id": 9,
                "name": "Power_On_Hours",
                "value": 100,
                "worst": 100,
                "thresh": 0,
                "when_failed": "",
                "flags": {
                  "value": 3,
                  "string": "PO---- ",
                  "prefailure": true,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": false,
                  "auto_keep": false
                },
                "raw": {
                  "value": 1,
                  "string": "1"
                }
              },
              {
                "id": 12,
                "name": "Power_Cycle_Count",
                "value": 100,
                "worst": 100,
                "thresh": 0,
                "when_failed": "",
                "flags": {
                  "value": 3,
                  "string": "PO---- ",
                  "prefailure": true,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": false,
                  "auto_keep": false
                },
                "raw": {
                  "value": 0,
                  "string": "0"
                }
              },
              {
                "id": 190,
                "name": "Airflow_Temperature_Cel",
                "value": 69,
                "worst": 69,
                "thresh": 50,
                "when_failed": "",
                "flags": {
                  "value": 3,
                  "string": "PO---- ",
                  "prefailure": true,
                  "updated_online": true,
                  "performance": false,
                  "error_rate": false,
                  "event_count": false,
                  "auto_keep": false
                },
                "raw": {
                  "value": 522125343,
                  "string": "31 (Min/Max 31/31)"
                }
              }
            ]
          },
          "power_on_time": {
            "hours": 1
          },
          "power_cycle_count": 0,
          "temperature": {
            "current": 31
          }
        }
        """
    static let qemuATACapabilities = """
        {
          "json_format_version": [
            1,
            0
          ],
          "smartctl": {
            "version": [
              7,
              3
            ],
            "svn_revision": "5338",
            "platform_info": "x86_64-linux-6.1.0-57-amd64",
            "build_info": "(local build)",
            "argv": [
              "smartctl",
              "-j",
              "-c",
              "/dev/sda"
            ],
            "drive_database_version": {
              "string": "7.3/5319"
            },
            "exit_status": 0
          },
          "local_time": {
            "time_t": 1796564823,
            "asctime": "Sun Dec  6 13:47:03 2026 UTC"
          },
          "device": {
            "name": "/dev/sda",
            "info_name": "/dev/sda [SAT]",
            "type": "sat",
            "protocol": "ATA"
          },
          "ata_smart_data": {
            "offline_data_collection": {
              "status": {
                "value": 130,
                "string": "was completed without error",
                "passed": true
              },
              "completion_seconds": 288
            },
            "self_test": {
              "status": {
                "value": 0,
                "string": "completed without error",
                "passed": true
              },
              "polling_minutes": {
                "short": 2,
                "extended": 54
              }
            },
            "capabilities": {
              "values": [
                25,
                3
              ],
              "exec_offline_immediate_supported": true,
              "offline_is_aborted_upon_new_cmd": false,
              "offline_surface_scan_supported": true,
              "self_tests_supported": true,
              "conveyance_self_test_supported": false,
              "selective_self_test_supported": false,
              "attribute_autosave_enabled": true,
              "error_logging_supported": true,
              "gp_logging_supported": false
            }
          }
        }
        """
    static let qemuATASelfTestLog = """
        {
          "json_format_version": [
            1,
            0
          ],
          "smartctl": {
            "version": [
              7,
              3
            ],
            "svn_revision": "5338",
            "platform_info": "x86_64-linux-6.1.0-57-amd64",
            "build_info": "(local build)",
            "argv": [
              "smartctl",
              "-j",
              "-l",
              "selftest",
              "/dev/sda"
            ],
            "drive_database_version": {
              "string": "7.3/5319"
            },
            "exit_status": 0
          },
          "local_time": {
            "time_t": 1796564823,
            "asctime": "Sun Dec  6 13:47:03 2026 UTC"
          },
          "device": {
            "name": "/dev/sda",
            "info_name": "/dev/sda [SAT]",
            "type": "sat",
            "protocol": "ATA"
          },
          "ata_smart_self_test_log": {
            "standard": {
              "revision": 1,
              "table": [
                {
                  "type": {
                    "value": 1,
                    "string": "Short offline"
                  },
                  "status": {
                    "value": 0,
                    "string": "Completed without error",
                    "passed": true
                  },
                  "lifetime_hours": 4660
                }
              ],
              "count": 1,
              "error_count_total": 0,
              "error_count_outdated": 0
            }
          }
        }
        """
}
