/* fb_udp: the UDP socket layer of udpd and fbcp: socket setup, batched sends with GSO, batched
 * receives with GRO, kernel arrival times, and one policy for what each errno means.
 *
 * Sockets: fb_udp_sock_open binds (udpd, a server answering many peers), fb_udp_sock_connect
 * connects to one peer (fbcp). Both are non-blocking, ask for large buffers (SO_*BUFFORCE
 * first, which works as root, then the plain options, capped by net.core.[rw]mem_max), turn
 * UDP_GRO on and probe UDP_SEGMENT when asked to use offload, and ask for SO_TIMESTAMPNS so a
 * receiver measures when the kernel got each datagram (fb_util.h), not when it was read.
 *
 * Receiving: recvmmsg batches into buffers of 64 KiB; with UDP_GRO (Linux 5.0+) the kernel hands
 * several datagrams of one flow as one buffer plus a segment size, which this layer splits
 * again, so callers always see single datagrams. A segment size is used only when its control
 * message is whole and the size is above 0 and below the buffer's length; anything else (a
 * short cmsg, 0, negative, or a size that covers the whole buffer) means one datagram. A
 * datagram larger than the buffer (MSG_TRUNC) is dropped and counted, never half-delivered.
 *
 * Sending: datagrams are appended to one contiguous buffer; a flush sends them with sendmmsg,
 * each run of equal-sized datagrams to one peer (the last of a run may be shorter, as GSO
 * allows) as a single UDP_SEGMENT message (Linux 4.18+), at most 64 segments and 65000 bytes.
 *
 * The errno policy (fb_udp_send_policy; the receive side below):
 * - EINTR: try again.
 * - EAGAIN/EWOULDBLOCK: the socket buffer is full. The rest stays queued, flush returns 1 and
 *   the caller waits until the socket is writable (EPOLLOUT/POLLOUT), then flushes again.
 * - EIO, EINVAL or EOPNOTSUPP on a GSO message: the kernel or the device cannot segment (no
 *   checksum offload, SO_NO_CHECK, an xfrm path; EOPNOTSUPP from some drivers and older
 *   kernels). GSO is off for good on this socket and the same datagrams go again as plain ones,
 *   none lost. (udpd used to ignore EOPNOTSUPP and dropped such a batch each time.)
 * - ENOBUFS: dropped and counted, like the errors below. On Linux a UDP socket without
 *   IP_RECVERR (ours) never sees the device queue's ENOBUFS: the kernel itself drops the
 *   datagram and reports success. What remains is a failed buffer allocation under memory
 *   pressure, during which the socket still polls writable: waiting for EPOLLOUT, as udpd used
 *   to, spins a core until memory frees, while a drop costs a retransmission that the
 *   transfer engines make anyway (fbcp's choice, now both).
 * - Anything else (EMSGSIZE, ECONNREFUSED from an earlier datagram's ICMP error, ENETUNREACH,
 *   EPERM from a firewall, ...): that message is dropped and counted, the next ones go.
 * Receiving: EAGAIN means nothing is waiting; an ICMP error the kernel reports on a connected
 * socket (ECONNREFUSED, EHOSTUNREACH, ENETUNREACH) is counted and also means nothing to read
 * now (the transport's timeouts decide, not one ICMP message); EINTR is retried; anything else
 * is returned as -1 with errno. */
#ifndef FB_UDP_H
#define FB_UDP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "fb_err.h"

#define FB_UDP_RX_BATCH 32        /* messages one recvmmsg reads */
#define FB_UDP_RX_BUF 65536       /* one message buffer: a whole GRO super-datagram */
#define FB_UDP_RX_MAX_DGRAMS 2048 /* datagrams one receive call may yield (GRO split) */
#define FB_UDP_TX_MAX_DGRAMS 1024 /* sendmmsg's limit (UIO_MAXIOV) */
#define FB_UDP_TX_BUF (4u << 20)  /* default send batch buffer */
#define FB_UDP_GSO_MAX_SEGS 64
#define FB_UDP_GSO_MAX_BYTES 65000
#define FB_UDP_MAX_DGRAM 65527 /* the largest UDP payload (IPv6; IPv4's is 65507) */

typedef struct fb_udp_addr {
    struct sockaddr_storage ss;
    socklen_t len;
} fb_udp_addr;

/* 1 if A and B are the same family, address and port. */
int fb_udp_addr_equal(const fb_udp_addr *a, const fb_udp_addr *b);
/* "[2001:db8::1]:33001" or "192.0.2.1:33001". */
void fb_udp_addr_format(char *out, size_t outlen, const fb_udp_addr *a);
/* Parses a numeric IPv4 or IPv6 address (no brackets; NULL or "": "::") and PORT. */
fb_err fb_udp_addr_parse(fb_udp_addr *out, const char *host, int port);

typedef struct fb_udp_stats {
    uint64_t rx_calls, rx_dgrams, rx_gro_msgs, rx_truncated, rx_icmp;
    uint64_t tx_calls, tx_dgrams, tx_gso_msgs, tx_dropped, tx_eagain;
} fb_udp_stats;

typedef struct fb_udp_sock {
    int fd;
    int family;
    int gso;            /* UDP_SEGMENT usable */
    int gro;            /* UDP_GRO enabled */
    int gso_errno;      /* the errno with which a send refused GSO (then gso is 0), or 0 */
    int rcvbuf, sndbuf; /* what the kernel granted (bytes) */
    fb_udp_stats st;
} fb_udp_sock;

/* Opens a UDP socket bound to HOST:PORT (HOST NULL or "::": dual-stack IPv6 with IPV6_V6ONLY
 * off; an IPv4 literal: IPv4 only; PORT 0: ephemeral). BUFSIZE (0: the kernel's default) is
 * asked for both socket buffers; USE_OFFLOAD turns GRO on and probes GSO. Errors, with the
 * reason in ERRBUF: FB_ERR_CONFIG for a bad address, FB_ERR_IO otherwise. */
fb_err fb_udp_sock_open(fb_udp_sock *s, const char *host, int port, size_t bufsize, int use_offload,
                        char *errbuf, size_t errlen);
/* Opens a UDP socket connected to HOST:PORT (a name or a literal, IPv6 with or without
 * brackets; each address getaddrinfo gives is tried in turn), set up as fb_udp_sock_open does.
 * Errors, with the reason in ERRBUF: FB_ERR_CONFIG when HOST does not resolve or PORT is out of
 * range, FB_ERR_IO when no address takes a socket. */
fb_err fb_udp_sock_connect(fb_udp_sock *s, const char *host, int port, size_t bufsize, int use_offload,
                           char *errbuf, size_t errlen);
void fb_udp_sock_close(fb_udp_sock *s);

/* ---- receiving ---- */

typedef struct fb_udp_dgram {
    uint8_t *buf; /* inside the batch's buffers: valid until the next fb_udp_rx_recv */
    size_t len;
    fb_udp_addr *from;
    uint64_t arrived_us; /* the kernel's receive time (monotonic), or when it was read */
} fb_udp_dgram;

typedef struct fb_udp_rx fb_udp_rx;

/* BUFSIZE per message (0: FB_UDP_RX_BUF; a smaller one is for tests: a GRO buffer or a
 * datagram larger than it is dropped as truncated). */
fb_err fb_udp_rx_new(fb_udp_rx **prx, size_t bufsize);
void fb_udp_rx_free(fb_udp_rx *rx);
/* One recvmmsg: fills *PDG with the datagrams received (GRO super-datagrams split) and returns
 * their count; 0 when nothing usable is waiting; -1 on an error the policy above does not
 * absorb (errno set). */
int fb_udp_rx_recv(fb_udp_sock *s, fb_udp_rx *rx, fb_udp_dgram **pdg);
/* Messages the last fb_udp_rx_recv read (FB_UDP_RX_BATCH: more may be waiting). */
unsigned fb_udp_rx_msgs(const fb_udp_rx *rx);
/* The size to split a received message of LEN bytes at: its UDP_GRO segment size when the
 * control messages in H carry a valid one, else LEN (one datagram). */
size_t fb_udp_gro_segment(const struct msghdr *h, size_t len);

/* ---- sending ---- */

typedef struct fb_udp_tx fb_udp_tx;

/* A send batch of at most MAX_DGRAMS datagrams (0 or above FB_UDP_TX_MAX_DGRAMS: that) in
 * BUFSIZE bytes (0: FB_UDP_TX_BUF). */
fb_err fb_udp_tx_new(fb_udp_tx **ptx, size_t max_dgrams, size_t bufsize);
void fb_udp_tx_free(fb_udp_tx *tx);
/* Room for one datagram of up to MAXLEN bytes (1..FB_UDP_MAX_DGRAM), or NULL when the batch is
 * full (flush first) or MAXLEN is out of range. */
uint8_t *fb_udp_tx_reserve(fb_udp_tx *tx, size_t maxlen);
/* Queues the datagram just written into the reserved room for TO (NULL: a connected socket's
 * peer). FB_ERR_INTERNAL, and nothing queued, when nothing was reserved or LEN is 0 or larger
 * than what was. */
fb_err fb_udp_tx_commit(fb_udp_tx *tx, size_t len, const fb_udp_addr *to);
/* Datagrams queued and not yet sent. */
size_t fb_udp_tx_pending(const fb_udp_tx *tx);
/* Forgets what is queued. */
void fb_udp_tx_discard(fb_udp_tx *tx);
/* Sends what is queued under the policy above. Returns 0 when everything went (or was dropped
 * for good: counted in st.tx_dropped), 1 when the socket buffer is full (the rest stays
 * queued; wait until the socket is writable and flush again). */
int fb_udp_tx_flush(fb_udp_sock *s, fb_udp_tx *tx);

typedef enum fb_udp_send_action {
    FB_UDP_SEND_RETRY, /* at once */
    FB_UDP_SEND_WAIT,  /* until writable; keep the rest */
    FB_UDP_SEND_PLAIN, /* GSO off for good; send the same datagrams plain */
    FB_UDP_SEND_DROP,  /* drop this message, go on with the next */
} fb_udp_send_action;

/* What a send that failed with ERR does; GSO_MSG: the message carried UDP_SEGMENT. */
fb_udp_send_action fb_udp_send_policy(int err, int gso_msg);

#endif
