#if defined(__linux__)
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <arpa/inet.h>
#include <errno.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netpacket/packet.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
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

int farrier_lldp_open(const char *ifname) {
    unsigned int index = if_nametoindex(ifname);
    if (index == 0) return -1;
    // Protocol 0 receives nothing until bind names the protocol and the interface: a socket
    // made with 0x88cc would take frames from every interface until then.
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(0x88cc);
    sll.sll_ifindex = (int)index;
    struct packet_mreq mr;
    memset(&mr, 0, sizeof mr);
    mr.mr_ifindex = (int)index;
    mr.mr_type = PACKET_MR_MULTICAST;
    mr.mr_alen = 6;
    static const unsigned char group[6] = {0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e};
    memcpy(mr.mr_address, group, 6);
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int farrier_nic_firmware(const char *ifname, char *out, unsigned long len) {
    if (len == 0) return -1;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct ethtool_drvinfo info;
    memset(&info, 0, sizeof info);
    info.cmd = ETHTOOL_GDRVINFO;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    ifr.ifr_data = (char *)&info;
    int r = ioctl(fd, SIOCETHTOOL, &ifr);
    int saved = errno;
    close(fd);
    if (r < 0) {
        errno = saved;
        return -1;
    }
    info.fw_version[sizeof info.fw_version - 1] = 0;
    snprintf(out, len, "%s", info.fw_version);
    return 0;
}
#endif
