#ifndef C_FARRIER_NET_H
#define C_FARRIER_NET_H

#include <sys/socket.h>

// recvmmsg(2) and sendmmsg(2) are GNU extensions: Swift's Glibc module is built without
// _GNU_SOURCE, so it sees neither them nor struct mmsghdr. This header gives Swift a struct
// with mmsghdr's layout (glibc ABI; CFarrierNet.c asserts it) and thin wrappers.
typedef struct {
    struct msghdr msg_hdr;
    unsigned int msg_len;
} farrier_mmsghdr;

// recvmmsg with MSG_WAITFORONE: blocks (up to SO_RCVTIMEO) for the first datagram, then takes
// whatever else is already queued, up to vlen, without waiting.
int farrier_recvmmsg_waitforone(int fd, farrier_mmsghdr *msgvec, unsigned int vlen);
// recvmmsg with MSG_DONTWAIT: whatever is queued, up to vlen; -1 with EAGAIN when nothing is.
int farrier_recvmmsg_nowait(int fd, farrier_mmsghdr *msgvec, unsigned int vlen);

int farrier_sendmmsg(int fd, farrier_mmsghdr *msgvec, unsigned int vlen);

// An AF_PACKET socket receiving the LLDP frames (EtherType 0x88cc) that arrive on one
// interface, whole, with LLDP's nearest-bridge group address joined (the agent's inventory).
// -1 with errno on failure. Swift's Glibc module has neither sockaddr_ll nor packet_mreq.
int farrier_lldp_open(const char *ifname);

// The NIC's firmware version as its driver reports it to ethtool (ETHTOOL_GDRVINFO's
// fw_version), NUL-terminated in out. 0, or -1 with errno.
int farrier_nic_firmware(const char *ifname, char *out, unsigned long len);

#endif
