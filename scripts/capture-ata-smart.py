#!/usr/bin/env python3
"""Captures smartctl's JSON for a real ATA device: QEMU's emulated SATA disk (ide-hd on AHCI),
read by smartctl 7.3 in the Farrier ramdisk with burnin.img, booted under TCG with no network
(the agent finds no server and the console becomes a shell). Writes info.json (-H -A -i),
cap.json (-c, after a short self-test) and log.json (-l selftest) into OUT-DIR; the fixtures
qemuATA* in Tests/FarrierAgentTests/BurnInFixtures.swift are these files.

    python3 scripts/capture-ata-smart.py [OUT-DIR]     (after scripts/build-ramdisk.sh)
"""
import subprocess, time, os, sys, select, json
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ramdisk = root + "/.build/ramdisk"
img = sys.argv[1] if len(sys.argv) > 1 else "/tmp/ata-capture"
os.makedirs(img, exist_ok=True)
subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img + "/sata.qcow2", "256M"], check=True)
with open(img + "/initrd", "wb") as out:
    for f in [ramdisk + "/initrd.img", ramdisk + "/burnin.img"]:
        out.write(open(f, "rb").read())
p = subprocess.Popen(
    ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "Nehalem", "-m", "1024", "-nographic", "-monitor", "none",
     "-kernel", ramdisk + "/vmlinuz", "-initrd", img + "/initrd", "-append", "console=ttyS0",
     "-net", "none", "-device", "ahci,id=ahci", "-drive", f"file={img}/sata.qcow2,if=none,id=s0,format=qcow2",
     "-device", "ide-hd,drive=s0,bus=ahci.0,serial=FARRIER-SATA,model=QEMU SATA"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
buf = b""
def until(marker, timeout):
    global buf
    end = time.time() + timeout
    while time.time() < end:
        r, _, _ = select.select([p.stdout], [], [], 1)
        if r:
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk: break
            buf += chunk
            if marker in buf: return True
    return False
try:
    if not until(b"the console is a shell", 240):
        sys.exit("the ramdisk gave no shell in 240 s")
    results = {}
    cmds = [
        ("info", "smartctl -j -H -A -i /dev/sda"),
        ("start", "smartctl -j -t short /dev/sda"),
        ("cap", "sleep 5; smartctl -j -c /dev/sda"),
        ("log", "smartctl -j -l selftest /dev/sda"),
    ]
    for name, cmd in cmds:
        buf = b""
        marker = f"END-{name}-MARK"
        p.stdin.write(f"{cmd}; echo; echo {marker.replace('-MARK','')}-$?-MARK\n".encode()); p.stdin.flush()
        # wait for the echo of the marker's output (not the typed command): the line starts with END-
        until(f"\nEND-{name}-".encode(), 120)
        until(b"-MARK", 5)
        text = buf.decode("utf-8", "replace").replace("\r", "")
        results[name] = text
        if name != "start":
            start = text.index("\n{") + 1
            body = text[start : text.index("\n}\n", start) + 2]
            json.loads(body)
            open(f"{img}/{name}.json", "w").write(body)
        print(name, len(text), file=sys.stderr)
finally:
    p.kill()
    p.wait()
    for f in ["initrd", "sata.qcow2"]:
        if os.path.exists(f"{img}/{f}"):
            os.remove(f"{img}/{f}")
