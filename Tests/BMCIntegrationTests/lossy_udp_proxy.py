"""A UDP relay that drops a share of datagrams in each direction: a lossy link between an IPMI
client and a BMC, for kernels without sch_netem (this machine's has none).

Usage: lossy_udp_proxy.py LISTEN_PORT TARGET_PORT LOSS SEED COUNTERS_FILE   (all on 127.0.0.1)
COUNTERS_FILE gets "forwarded dropped" after every datagram, for the test to check."""
import os, random, select, socket, sys

listen_port, target_port, loss, seed, counters = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rng = random.Random(seed)
front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
front.bind(("127.0.0.1", listen_port))
back = {}  # client address -> socket towards the BMC
forwarded = dropped = 0

def count(ok):
    global forwarded, dropped
    if ok:
        forwarded += 1
    else:
        dropped += 1
    # Replaced whole, never truncated in place: the test may read it at any moment.
    with open(counters + ".tmp", "w") as f:
        f.write(f"{forwarded} {dropped}\n")
    os.replace(counters + ".tmp", counters)

while True:
    ready, _, _ = select.select([front] + list(back.values()), [], [])
    for s in ready:
        if s is front:
            data, client = front.recvfrom(65535)
            if client not in back:
                b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                b.bind(("127.0.0.1", 0))
                back[client] = b
            if rng.random() < loss:
                count(False)
                continue
            back[client].sendto(data, ("127.0.0.1", target_port))
            count(True)
        else:
            data, _ = s.recvfrom(65535)
            client = next(c for c, b in back.items() if b is s)
            if rng.random() < loss:
                count(False)
                continue
            front.sendto(data, client)
            count(True)
