/* udpd_io: batched UDP socket I/O for udpd (and the UDP test driver).
 *
 * Receiving: recvmmsg batches into 64 KiB buffers; with UDP_GRO (Linux 5.0+) the kernel hands
 * several datagrams of one flow as one buffer plus a segment size, which this layer splits
 * again, so callers always see single datagrams. Sending: datagrams are appended to one
 * contiguous buffer; a flush sends them with sendmmsg, each run of equal-sized datagrams to one
 * peer as a single UDP_SEGMENT (GSO, Linux 4.18+) message. Where the kernel or the device
 * refuses GRO/GSO (setsockopt fails, or a send fails with EIO/EINVAL) the layer falls back to
 * plain datagrams for good, without losing what it was sending. */
#ifndef UDPD_IO_H
#define UDPD_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "fb_err.h"

#define UDPD_IO_RX_BATCH 32
#define UDPD_IO_RX_BUF 65536       /* one message buffer: a whole GRO super-datagram */
#define UDPD_IO_RX_MAX_DGRAMS 2048 /* datagrams one receive call may yield (GRO split) */
#define UDPD_IO_TX_MAX_DGRAMS 1024
#define UDPD_IO_TX_BUF (4u << 20)
#define UDPD_IO_GSO_MAX_SEGS 64
#define UDPD_IO_GSO_MAX_BYTES 65000

typedef struct udpd_addr {
    struct sockaddr_storage ss;
    socklen_t len;
} udpd_addr;

/* 1 if A and B are the same family, address and port. */
int udpd_addr_equal(const udpd_addr *a, const udpd_addr *b);
/* "[2001:db8::1]:33001" or "192.0.2.1:33001". */
void udpd_addr_format(char *out, size_t outlen, const udpd_addr *a);
/* Parses a numeric IPv4 or IPv6 address (no brackets) and PORT. */
fb_err udpd_addr_parse(udpd_addr *out, const char *host, int port);

typedef struct udpd_io_stats {
    uint64_t rx_calls, rx_dgrams, rx_gro_msgs, rx_truncated;
    uint64_t tx_calls, tx_dgrams, tx_gso_msgs, tx_dropped, tx_eagain;
} udpd_io_stats;

typedef struct udpd_sock {
    int fd;
    int family;
    int gso;            /* UDP_SEGMENT usable */
    int gro;            /* UDP_GRO enabled */
    int rcvbuf, sndbuf; /* what the kernel granted (bytes) */
    udpd_io_stats st;
} udpd_sock;

/* Opens a non-blocking UDP socket bound to HOST:PORT (HOST NULL or "::": dual-stack IPv6 with
 * IPV6_V6ONLY off; an IPv4 literal: IPv4 only; PORT 0: ephemeral). BUFSIZE is asked for both
 * socket buffers (SO_RCVBUFFORCE/SO_SNDBUFFORCE first, which work as root, then the plain
 * options, which the kernel caps at net.core.rmem_max/wmem_max). Turns GRO on and probes GSO
 * when USE_OFFLOAD. Errors (with the reason in ERRBUF) are FB_ERR_CONFIG for a bad address,
 * FB_ERR_IO otherwise. */
fb_err udpd_sock_open(udpd_sock *s, const char *host, int port, size_t bufsize, int use_offload, char *errbuf,
                      size_t errlen);
void udpd_sock_close(udpd_sock *s);

/* ---- receiving ---- */

typedef struct udpd_rx_dgram {
    uint8_t *buf; /* inside the batch's buffers: valid until the next udpd_rx_recv */
    size_t len;
    udpd_addr *from;
    uint64_t arrived_us; /* the kernel's receive time (monotonic), or when it was read */
} udpd_rx_dgram;

typedef struct udpd_rx udpd_rx;

fb_err udpd_rx_new(udpd_rx **prx);
void udpd_rx_free(udpd_rx *rx);
/* One recvmmsg: fills *PDG with the datagrams received (GRO super-datagrams split) and returns
 * their count, 0 when nothing is waiting, -1 on an error other than EAGAIN/EINTR (errno set). */
int udpd_rx_recv(udpd_sock *s, udpd_rx *rx, udpd_rx_dgram **pdg);

/* ---- sending ---- */

typedef struct udpd_tx udpd_tx;

fb_err udpd_tx_new(udpd_tx **ptx);
void udpd_tx_free(udpd_tx *tx);
/* Room for one datagram of up to MAXLEN bytes, or NULL when the batch is full (flush first). */
uint8_t *udpd_tx_reserve(udpd_tx *tx, size_t maxlen);
/* Queues the datagram just written into the reserved room (LEN <= MAXLEN) for TO. */
void udpd_tx_commit(udpd_tx *tx, size_t len, const udpd_addr *to);
/* Datagrams queued and not yet sent. */
size_t udpd_tx_pending(const udpd_tx *tx);
/* Sends what is queued. Returns 0 when everything went (datagrams the kernel refuses for good,
 * e.g. EMSGSIZE or an unreachable network, are dropped and counted), 1 when the socket buffer
 * is full (EAGAIN: the rest stays queued; wait for EPOLLOUT and flush again). */
int udpd_tx_flush(udpd_sock *s, udpd_tx *tx);

#endif
