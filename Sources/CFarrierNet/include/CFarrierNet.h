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

#endif
