/* fbcp_udp.h: the UDP transport's internals shared by fbcp_udp.c (the association: socket,
 * handshake, receiving) and fbcp_udp_leg.c (the legs that move a file's data). Private to
 * client/; the rest of fbcp sees fbcp_udp through fbcp.h. */
#ifndef FBCP_UDP_H
#define FBCP_UDP_H

#include "fbcp.h"

#include <stdint.h>
#include <stdio.h>

#include "fb_aead.h"
#include "fb_assoc.h"
#include "fb_replay.h"
#include "fb_udp.h"
#include "fb_wire.h"
#include "fb_xfer.h"

#define FBCP_UDP_SOCKBUF (16u << 20)
#define FBCP_UDP_TX_SLOTS 128 /* datagrams a send batch holds */
#define FBCP_UDP_READ_AHEAD (1u << 20)
#define FBCP_UDP_WRITE_BEHIND (1u << 20)
#define FBCP_UDP_KEEPALIVE_US 1000000ull
#define FBCP_UDP_CLOSE_WAIT_MAX_US 1000000ull  /* round trip counted for udpd's CLOSE, at most */
#define FBCP_UDP_CLOSE_WAIT_EXTRA_US 100000ull /* beyond two round trips */
#define FBCP_UDP_TICK_US 100000ull             /* the loop wakes at least this often (progress, timers) */
/* Shorter gaps are slept this long: the pacer's credit (2 ms) lets the datagrams due meanwhile go
 * out as one batch (one GSO message). At 100 Mbit/s that is about 8 datagrams a wake-up instead
 * of one or two with 150 us, and a third of the CPU per GiB (17.4 to 6.5 s on the benchmark's
 * link), at the same goodput. */
#define FBCP_UDP_MIN_SLEEP_US 1000
#define FBCP_UDP_RX_POLL_US 1000 /* without a readable socket, look anyway this often */
/* After a read that found datagrams, the next ones are left to gather in the socket this long
 * (unless something is due sooner) instead of waking for each: at 500 Mbit/s one wake-up per
 * few datagrams became one per ~20, and the arrival times come from the kernel anyway.
 * FBCP_UDP_RX_GATHER_US=N (0..10000) overrides it, for tuning and tests. */
#define FBCP_UDP_RX_GATHER_US 500
#define FBCP_UDP_RX_GATHER_MAX_US 10000
struct fbcp_udp {
    const fbcp_opts *o;
    fb_udp_sock sock;
    char peer[128]; /* "host:port" for messages */
    size_t dgram;   /* the datagram size asked for (HELLO max_datagram and padding) */

    /* session */
    int have_session;
    unsigned gen;
    uint8_t sid[FB_WIRE_SID_LEN];
    fb_aead_ctx *aead;

    /* association */
    fb_assoc_client hs; /* the handshake: HELLO, its retransmissions, the answer */
    int associated;
    fb_wire_hello_ack ack;
    size_t max_dgram; /* negotiated */
    fb_replay replay;
    uint64_t pn;
    uint64_t last_keepalive_us;
    fb_err refused; /* status of a refusing HELLO_ACK (FB_OK: none) */
    int peer_closed;
    fb_err close_reason;
    int close_unchanged;   /* udpd's CLOSE carried FB_WIRE_F_CLOSE_UNCHANGED */
    uint64_t hello_rtt_us; /* HELLO to HELLO_ACK, less udpd's hold: the path's round trip */

    /* the leg's engine (one of the two) and its file */
    fbcp_xfer *x;
    fb_xfer_sender *snd;
    fb_xfer_receiver *rcv;
    uint8_t *ra; /* upload read-ahead */
    uint64_t ra_off;
    size_t ra_len;
    uint8_t *wb; /* download write-behind */
    uint64_t wb_off;
    size_t wb_len;
    uint64_t *pend; /* download: chunks complete in the write-behind buffer */
    size_t npend, pend_cap;
    int io_errno;
    const char *io_what;

    fb_udp_rx *rx;
    fb_udp_tx *tx;
    size_t stride; /* the largest datagram now: the size asked for, then the negotiated one */

    int readable;           /* the last wait saw a datagram waiting */
    uint64_t last_rx_us;    /* last receive call */
    uint64_t rx_gather_us;  /* after a read that found datagrams, let the next gather this long */
    uint64_t gather_end_us; /* ... until then (0: not gathering) */
    uint64_t rx_dgrams, rx_dropped;
    uint64_t rx_reads; /* receive calls that found datagrams (rx_dgrams / rx_reads: the batching) */

    /* FBCP_RATE_TRACE=FILE: the sender's rate controller every 10 ms (for bench/ and tuning) */
    FILE *rate_trace;
    uint64_t rate_trace_t0, rate_trace_next;
};

/* fbcp_udp.c */
/* One line per 10 ms of an upload (the columns: fb_xfer_sender_trace_line). */
void fbcp_udp_rate_trace(fbcp_udp *u, uint64_t now);
uint64_t fbcp_now_us(void);
/* Room for one datagram of at most STRIDE bytes, NULL when the batch is full. */
uint8_t *fbcp_udp_reserve(fbcp_udp *u);
void fbcp_udp_commit(fbcp_udp *u, size_t len);
/* Sends the batch: 0 all went, 1 the socket buffer is full, the rest stays queued. */
int fbcp_udp_flush(fbcp_udp *u);
/* Queues one datagram built in BUF (at most STRIDE bytes) and sends the batch at once. */
void fbcp_udp_send_now(fbcp_udp *u, const uint8_t *buf, size_t len);
/* Takes X's session id and key (again when the session was created anew). */
fb_err fbcp_udp_sync_session(fbcp_udp *u, const fbcp_xfer *x);
/* HELLO: a fresh attempt when FRESH, else the pending one again (fb_assoc). */
void fbcp_udp_hello(fbcp_udp *u, uint64_t now, int fresh);
/* The end of a complete download: CLOSE(0), then up to about two round trips for udpd's answer;
 * 1 when udpd's CLOSE said the file is unchanged and the session ended. */
int fbcp_udp_close_download(fbcp_udp *u);
void fbcp_udp_close(fbcp_udp *u, fb_err reason);
/* Reads everything waiting (bounded); tells SW (may be NULL) what was heard. Returns the number
 * of authenticated datagrams. */
unsigned fbcp_udp_receive(fbcp_udp *u, fbcp_switch *sw, uint64_t *pnow, int *prefused, int *panswered);
/* Sleeps until UNTIL (us) or a datagram arrives (or, with WANT_OUT, the socket can send). */
void fbcp_udp_wait(fbcp_udp *u, uint64_t now, uint64_t until, int want_out);

#endif
