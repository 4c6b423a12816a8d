#if defined(__linux__)
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/socket.h>
#include "CFarrierNet.h"

_Static_assert(sizeof(farrier_mmsghdr) == sizeof(struct mmsghdr), "farrier_mmsghdr must match struct mmsghdr");
_Static_assert(offsetof(farrier_mmsghdr, msg_len) == offsetof(struct mmsghdr, msg_len),
               "farrier_mmsghdr.msg_len must match struct mmsghdr");

int farrier_recvmmsg_nowait(int fd, farrier_mmsghdr *msgvec, unsigned int vlen) {
    return recvmmsg(fd, (struct mmsghdr *)msgvec, vlen, MSG_DONTWAIT, NULL);
}

int farrier_recvmmsg_waitforone(int fd, farrier_mmsghdr *msgvec, unsigned int vlen) {
    return recvmmsg(fd, (struct mmsghdr *)msgvec, vlen, MSG_WAITFORONE, NULL);
}

int farrier_sendmmsg(int fd, farrier_mmsghdr *msgvec, unsigned int vlen) {
    return sendmmsg(fd, (struct mmsghdr *)msgvec, vlen, 0);
}
#endif
