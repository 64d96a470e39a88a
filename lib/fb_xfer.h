/* fb_xfer: the transfer engines of the UDP fast path, shared by udpd and fbcp.
 *
 * Two engines turn a file into DATA datagrams and back, on top of the wire codec (fb_wire),
 * packet protection (fb_aead) and the rate controller (fb_rate):
 *
 *   fb_xfer_sender    reads the ranges still needed through a callback, paces DATA at the
 *                     controller's rate, learns from FEEDBACK what arrived and what was lost,
 *                     and resends each lost range about once per round trip (fb_retx).
 *   fb_xfer_receiver  takes opened DATA, writes only the bytes it did not have through a
 *                     callback, keeps which byte ranges it holds (a bounded range set) and how
 *                     many bytes of each chunk, reports every chunk once when it completes, and
 *                     produces FEEDBACK at a regular interval.
 *
 * Like the codec they do no I/O of their own and read no clock (ngtcp2's model): the caller
 * passes the current time in microseconds of one monotonic clock, hands in opened datagrams and
 * sends the ones the engines encode. So they are deterministic and run in unit tests through a
 * simulated channel in virtual time. Not thread-safe: one engine per thread at a time.
 *
 * Packet numbers: DATA, FEEDBACK, CLOSE and PROBE share one packet-number space per direction
 * (fb_aead nonces), so the caller owns the counter: every encoding call takes the number to use
 * and says whether it used it (a non-zero length), after which the caller increments it.
 *
 * What travels in a FEEDBACK (see fb_wire_feedback): everything below cum_offset is held; in
 * [cum_offset, high_offset) the listed ranges are missing and the rest is held, except that with
 * FB_WIRE_F_FEEDBACK_MORE only the listed part is known (bytes after the last listed range are of
 * unknown state); nothing at or above high_offset is held. Bytes the receiver got another way
 * (over HTTP, from a checkpoint: fb_xfer_receiver_mark_received) count as held, so a sender never
 * sends them again. recv_bytes counts the distinct DATA payload bytes of this engine only.
 *
 * Loss detection (sender): data is first sent in increasing offset order, and the sender keeps
 * a short log of which offset it had reached at which time. A missing byte is taken as lost once
 * something sent after it has arrived (the FEEDBACK's echoed send time) or once it was sent more
 * than two smoothed RTTs plus two feedback intervals ago (the tail of a transfer). When
 * everything has been sent and no FEEDBACK comes, the sender resends the first missing piece
 * after that timeout (doubling up to a second) so a receiver whose FEEDBACK was lost answers.
 *
 * Timestamps: DATA carries now_us as its send time and 0 means "no echo", so the clock must
 * never read 0 (CLOCK_MONOTONIC in microseconds is fine). A session that changes association
 * (new HELLO: new keys, packet numbers from 0) keeps its engines: fb_xfer_*_set_aead.
 *
 * Download start (PROTOCOL.md 8): the client's receiver sends its first FEEDBACK at once (it is
 * due immediately), describing what it already holds; the server creates its sender then and
 * feeds it that FEEDBACK. Upload start: the client's sender starts from the session's "missing"
 * list (HTTP answer); the server's receiver, seeded with the shared bitmap, corrects it with its
 * first FEEDBACK.
 *
 * Typical sender loop (caller):
 *
 *     while (!fb_xfer_sender_done(s)) {
 *         now = clock();
 *         while (fb_xfer_sender_next_time(s, now) <= now) {
 *             fb_xfer_sender_next(s, buf, sizeof(buf), &len, pn, now);  // reads and seals
 *             if (len == 0) break;
 *             pn++; send(buf, len);
 *         }
 *         wait for a datagram or until fb_xfer_sender_next_time(s, now);
 *         on FEEDBACK: fb_wire_open(...); fb_xfer_sender_on_feedback(s, &pkt.hdr, &pkt.u.feedback, now);
 *     }
 */
#ifndef FB_XFER_H
#define FB_XFER_H

#include <stddef.h>
#include <stdint.h>

#include "fb_aead.h"
#include "fb_err.h"
#include "fb_range.h"
#include "fb_rate.h"
#include "fb_wire.h"

#define FB_XFER_DEFAULT_MAX_RANGES 65536u     /* range set capacity (16 bytes each) */
#define FB_XFER_DEFAULT_FEEDBACK_PACKETS 64u  /* FEEDBACK after this many DATA at most */
#define FB_XFER_FEEDBACK_MIN_US 2000u         /* ...but never more often than this */
#define FB_XFER_IDLE_FEEDBACK_MAX_US 1000000u /* idle FEEDBACK backs off to once a second */
#define FB_XFER_RATE_SPAN_MIN_US 1000u        /* receive rate measured over >= 1 ms of arrivals */
#define FB_XFER_RATE_WINDOW_US 20000u         /* ... and over about 20 ms when there are that many */
#define FB_XFER_RATE_MARKS 16u                /* earlier FEEDBACK points kept for that window */
#define FB_XFER_RETX_QUEUE 1024u              /* retransmission ranges waiting to be sent */

/* ---- range set ------------------------------------------------------------------------------
 * A set of byte offsets as sorted, disjoint, non-adjacent half-open intervals in one array of at
 * most MAX entries (bounded memory). Used by both engines; also handy for callers (turning a
 * "missing" list into what to send). */
typedef struct fb_xfer_span {
    uint64_t start, end; /* [start, end), start < end */
} fb_xfer_span;

typedef struct fb_xfer_rset {
    fb_xfer_span *v;
    size_t n, cap, max;
    uint64_t total; /* bytes in the set */
} fb_xfer_rset;

/* Empty set that may grow to MAX intervals (0 = FB_XFER_DEFAULT_MAX_RANGES). */
void fb_xfer_rset_init(fb_xfer_rset *s, size_t max);
void fb_xfer_rset_free(fb_xfer_rset *s);
void fb_xfer_rset_clear(fb_xfer_rset *s);
/* Adds [START, END). FB_ERR_TOO_LARGE (set unchanged) when it would need more than MAX
 * intervals; FB_ERR_NOMEM when allocation fails; START >= END is a no-op. */
fb_err fb_xfer_rset_add(fb_xfer_rset *s, uint64_t start, uint64_t end);
/* Removes [START, END). Splitting an interval may need one more entry: FB_ERR_TOO_LARGE (set
 * unchanged) when that exceeds MAX. */
fb_err fb_xfer_rset_remove(fb_xfer_rset *s, uint64_t start, uint64_t end);
/* 1 if every byte of [START, END) is in the set. */
int fb_xfer_rset_contains(const fb_xfer_rset *s, uint64_t start, uint64_t end);
/* Index of the first interval whose end is above OFFSET (n if none). */
size_t fb_xfer_rset_find(const fb_xfer_rset *s, uint64_t offset);
/* Writes into OUT (capacity CAP) the parts of [START, END) NOT in the set, in order; returns how
 * many there are in all (may exceed CAP: only CAP are written). */
size_t fb_xfer_rset_gaps(const fb_xfer_rset *s, uint64_t start, uint64_t end, fb_xfer_span *out, size_t cap);

/* ---- sender -------------------------------------------------------------------------------- */

/* Reads LEN bytes at OFFSET into BUF; anything but FB_OK stops the transfer with that code
 * (a short file is the callback's to report, e.g. FB_ERR_CHANGED). */
typedef fb_err (*fb_xfer_read_fn)(void *ctx, uint64_t offset, uint8_t *buf, size_t len);

typedef struct fb_xfer_sender_params {
    uint64_t size;          /* file size */
    const fb_range *ranges; /* what to send (sorted or not, may overlap); NULL = all */
    size_t nranges;
    size_t max_payload;      /* file bytes per DATA, 1..FB_WIRE_MAX_PAYLOAD; 0 = default */
    uint32_t chunk_size;     /* the session's: no DATA crosses a chunk boundary; 0 = no limit */
    fb_rate_params rate;     /* the controller's parameters (after the server's caps) */
    const fb_aead_ctx *aead; /* with data keys; only borrowed */
    uint8_t sid[FB_WIRE_SID_LEN];
    fb_xfer_read_fn read;
    void *read_ctx;
    uint32_t feedback_interval_us; /* the receiver's interval; 0 = FB_RATE_FEEDBACK_INTERVAL_US */
    size_t max_ranges;             /* range set capacity; 0 = FB_XFER_DEFAULT_MAX_RANGES */
} fb_xfer_sender_params;

typedef struct fb_xfer_sender_stats {
    uint64_t packets;         /* DATA sent */
    uint64_t bytes;           /* payload bytes sent, retransmissions included */
    uint64_t bytes_new;       /* payload bytes sent for the first time */
    uint64_t bytes_retx;      /* payload bytes sent again */
    uint64_t feedbacks;       /* FEEDBACK processed */
    uint64_t stale_feedbacks; /* FEEDBACK older than one already processed (ignored) */
    uint64_t lost_bytes;      /* bytes judged lost (each hole counted once) */
    uint64_t acked_bytes;     /* recv_bytes of the latest FEEDBACK */
    uint64_t need_bytes;      /* bytes not yet known to be received */
    uint64_t rate;            /* current pacing rate, bytes/s */
    uint64_t srtt_us;
    uint64_t queue_delay_us;  /* the rate controller's latest queueing-delay estimate */
    uint64_t recv_rate;       /* receive rate in the latest FEEDBACK, bytes/s */
    uint64_t recv_avg;        /* the controller's smoothed receive rate (random losses as arrived) */
    uint64_t send_avg;        /* smoothed rate at which the datagrams actually left, bytes/s */
    int quick_start;          /* the rate controller is still ramping up */
} fb_xfer_sender_stats;

typedef struct fb_xfer_sender fb_xfer_sender;

/* Formats one line (ending in a newline) of the sender's state for a rate trace: seconds
 * since T0_US, pacing rate and receive rate (bytes/s), smoothed RTT and queueing delay (us),
 * quick start (0/1), bytes sent new, resent, acknowledged, judged lost, then the controller's
 * smoothed receive rate (random losses counted as arrived) and send rate (bytes/s). The same
 * columns in fbcp (FBCP_RATE_TRACE) and udpd (UDPD_RATE_TRACE); see docs/benchmarks.md. */
void fb_xfer_sender_trace_line(char *buf, size_t len, const fb_xfer_sender *s, uint64_t t0_us, uint64_t now_us);

/* Sets up a sender at NOW_US. FB_ERR_INTERNAL for bad parameters (no read callback, no AEAD,
 * a range beyond SIZE, a payload size out of bounds); FB_ERR_NOMEM; FB_ERR_TOO_LARGE if the
 * ranges need more than max_ranges intervals. */
fb_err fb_xfer_sender_new(fb_xfer_sender **ps, const fb_xfer_sender_params *p, uint64_t now_us);
void fb_xfer_sender_free(fb_xfer_sender *s);

/* When the next DATA may leave: <= NOW_US means now; UINT64_MAX when there is nothing to send
 * until a FEEDBACK arrives (everything sent and not yet judged lost) or when done. */
uint64_t fb_xfer_sender_next_time(const fb_xfer_sender *s, uint64_t now_us);

/* If a DATA is due at NOW_US, reads its payload straight into BUF (capacity CAP, at least
 * max_payload + FB_WIRE_DATA_OVERHEAD), seals it with packet number PN and sets *PLEN; else
 * *PLEN = 0 and FB_OK. Retransmissions go before new data. Errors: the read callback's code,
 * FB_ERR_TOO_LARGE if CAP is too small, FB_ERR_INTERNAL from the codec. */
fb_err fb_xfer_sender_next(fb_xfer_sender *s, uint8_t *buf, size_t cap, size_t *plen, uint64_t pn,
                           uint64_t now_us);

/* Processes an opened FEEDBACK (HDR and FB from fb_wire_open). FB_ERR_PROTOCOL (state
 * unchanged) if it claims bytes beyond the file. */
fb_err fb_xfer_sender_on_feedback(fb_xfer_sender *s, const fb_wire_hdr *hdr, const fb_wire_feedback *fb,
                                  uint64_t now_us);

/* 1 once every byte to send is known to be received. */
int fb_xfer_sender_done(const fb_xfer_sender *s);
void fb_xfer_sender_stats_get(fb_xfer_sender_stats *out, const fb_xfer_sender *s);
/* The controller, e.g. for fb_rate_set_limits when the caps change. */
fb_rate *fb_xfer_sender_rate(fb_xfer_sender *s);
/* A new association (new data keys) continues the same transfer: seal with AEAD from now on. */
void fb_xfer_sender_set_aead(fb_xfer_sender *s, const fb_aead_ctx *aead);

/* ---- receiver ------------------------------------------------------------------------------ */

/* Writes LEN bytes at OFFSET (bytes the receiver did not hold); anything but FB_OK leaves them
 * not received and is returned by fb_xfer_receiver_on_data. */
typedef fb_err (*fb_xfer_write_fn)(void *ctx, uint64_t offset, const uint8_t *buf, size_t len);
/* Chunk INDEX has just become complete through DATA (called once per chunk, after its last
 * bytes were written). */
typedef void (*fb_xfer_chunk_fn)(void *ctx, uint64_t index);

typedef struct fb_xfer_receiver_params {
    uint64_t size;
    uint32_t chunk_size;     /* > 0 */
    const fb_aead_ctx *aead; /* with data keys; only borrowed */
    uint8_t sid[FB_WIRE_SID_LEN];
    fb_xfer_write_fn write;
    fb_xfer_chunk_fn on_chunk_complete; /* may be NULL */
    void *ctx;                          /* for both callbacks */
    uint32_t feedback_interval_us;      /* 0 = FB_RATE_FEEDBACK_INTERVAL_US */
    uint32_t feedback_packets;          /* 0 = FB_XFER_DEFAULT_FEEDBACK_PACKETS */
    uint32_t feedback_min_us;           /* 0 = FB_XFER_FEEDBACK_MIN_US */
    size_t max_ranges;                  /* 0 = FB_XFER_DEFAULT_MAX_RANGES */
} fb_xfer_receiver_params;

typedef struct fb_xfer_receiver_stats {
    uint64_t packets;          /* DATA accepted (new or duplicate) */
    uint64_t bytes_new;        /* distinct payload bytes written */
    uint64_t bytes_dup;        /* payload bytes already held */
    uint64_t packets_dup;      /* DATA with nothing new */
    uint64_t refused;          /* DATA refused: beyond the file or range set full */
    uint64_t feedbacks;        /* FEEDBACK produced */
    uint64_t chunks_completed; /* on_chunk_complete calls */
    uint64_t held_bytes;       /* bytes held, marked ones included */
} fb_xfer_receiver_stats;

typedef struct fb_xfer_receiver fb_xfer_receiver;

/* FB_ERR_INTERNAL for bad parameters (chunk_size 0, no write callback or AEAD); FB_ERR_NOMEM.
 * Memory: 4 bytes per chunk plus the range set. */
fb_err fb_xfer_receiver_new(fb_xfer_receiver **pr, const fb_xfer_receiver_params *p, uint64_t now_us);
void fb_xfer_receiver_free(fb_xfer_receiver *r);

/* Marks [OFFSET, OFFSET + LEN) as already held (received over HTTP, a checkpoint, an earlier
 * association): reported as received, never written, and chunks it completes are not passed to
 * on_chunk_complete (the caller knows them). Clamped to the file. FB_ERR_TOO_LARGE if the range
 * set is full. */
fb_err fb_xfer_receiver_mark_received(fb_xfer_receiver *r, uint64_t offset, uint64_t len);

/* Takes one opened DATA (HDR and D from fb_wire_open) arriving at NOW_US (best the kernel's
 * receive time, fb_time_rx_arrival_us: the receive rate and the delay echo are then measured
 * on arrival times, unaffected by how late the process read the datagram): writes the bytes not
 * yet held, records them, counts them per chunk and calls on_chunk_complete for each chunk that
 * became complete. *PNEW (may be NULL) receives the count of new bytes (0 for a duplicate).
 * FB_ERR_BAD_RANGE if the payload reaches beyond the file, FB_ERR_TOO_LARGE if recording it
 * would overflow the range set (the datagram is dropped unwritten: the sender resends it), or
 * the write callback's error (nothing recorded). */
fb_err fb_xfer_receiver_on_data(fb_xfer_receiver *r, const fb_wire_hdr *hdr, const fb_wire_data *d,
                                uint64_t now_us, size_t *pnew);

/* When the next FEEDBACK is due (docs/PROTOCOL.md 8.3): before the first FEEDBACK, at once;
 * after FEEDBACK_PACKETS DATA, or when a DATA opened a new hole, at once but not sooner than
 * feedback_min_us after the previous one; one interval after the previous one when DATA arrived
 * since; while incomplete and nothing arrives, after an idle interval that doubles up to
 * FB_XFER_IDLE_FEEDBACK_MAX_US; UINT64_MAX once complete and nothing new arrived. (The
 * receiver cannot see the RTT, so "RTT/4 if longer" is the sender's to ask for through
 * feedback_interval_us.) */
uint64_t fb_xfer_receiver_next_feedback(const fb_xfer_receiver *r, uint64_t now_us);

/* Encodes a FEEDBACK with packet number PN into BUF (CAP >= FB_WIRE_MIN_DATAGRAM is always
 * enough) if one is due at NOW_US or FORCE is set; else *PLEN = 0. Its receive rate is the
 * datagram bytes that arrived over the span of their arrival times, about the last
 * FB_XFER_RATE_WINDOW_US (0, unknown, when the span is under FB_XFER_RATE_SPAN_MIN_US). */
fb_err fb_xfer_receiver_feedback(fb_xfer_receiver *r, uint8_t *buf, size_t cap, size_t *plen, uint64_t pn,
                                 uint64_t now_us, int force);

/* 1 when every byte of the file is held. */
int fb_xfer_receiver_complete(const fb_xfer_receiver *r);
/* A new association (new data keys) continues the same transfer: seal FEEDBACK with AEAD from
 * now on; the next FEEDBACK is due at once (the new peer learns what is held). */
void fb_xfer_receiver_set_aead(fb_xfer_receiver *r, const fb_aead_ctx *aead);
void fb_xfer_receiver_stats_get(fb_xfer_receiver_stats *out, const fb_xfer_receiver *r);
/* The received ranges (read-only view; valid until the next call that changes the receiver). */
const fb_xfer_rset *fb_xfer_receiver_held(const fb_xfer_receiver *r);

#endif
