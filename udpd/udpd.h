/* udpd.h: private declarations shared by the udpd source files.
 *
 *   udpd_main.c     options, configuration, socket, privileges, signals, the event loop
 *   udpd_session.c  per-session state, the handshake (fb_assoc), dispatch, timers (udpd_sess.h)
 *   udpd_files.c    a session's files, write buffer, checkpoints, read-ahead
 *   udpd_data.c     the data phase: DATA, FEEDBACK, PROBE, CLOSE
 *   udpd_ckpt.c     the checkpoint worker thread (fdatasync off the event loop)
 *   udpd_log.c      tagged logging and the drop counters
 *   udpd_io.h       udpd's names for the shared UDP socket layer (lib/fb_udp.h) */
#ifndef UDPD_H
#define UDPD_H

#include <stdarg.h>
#include <stdint.h>

#include "fb_config.h"
#include "fb_table.h"
#include "fb_wire.h"
#include "udpd_io.h"

/* ---- logging ---------------------------------------------------------------------------------- */

typedef enum udpd_level { UDPD_ERROR = 0, UDPD_WARN = 1, UDPD_INFO = 2, UDPD_DEBUG = 3 } udpd_level;

extern udpd_level udpd_log_level;

/* One line on stderr: "[time] LEVEL UDnnnnn: message" (no time under systemd, whose journal
 * adds it). TAG is the unique "UDnnnnn". Keys are never passed here. */
void udpd_log(udpd_level level, const char *tag, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Parses "error", "warn", "info", "debug"; -1 if unknown. */
int udpd_level_parse(const char *name);

/* ---- counters --------------------------------------------------------------------------------- */

/* Why udpd dropped a datagram beyond the codec's own reasons (fb_wire_reason, which udpd also
 * uses for its lookups as PROTOCOL.md section 11 says: unknown_session, no_keys for a
 * data-phase packet without an association, malformed for DATA beyond the session size). */
typedef enum udpd_drop {
    UDPD_DROP_WRONG_ADDRESS = 0, /* from another address than the association's (new HELLO needed) */
    UDPD_DROP_WRONG_DIRECTION,   /* DATA to a download, FEEDBACK to an upload */
    UDPD_DROP_RANGE_SET_FULL,    /* receiver could not record more holes */
    UDPD_DROP_HELLO_REPLAYED,    /* HELLO nonce seen before, or from another address */
    UDPD_DROP_SESSION_INACTIVE,  /* slot no longer active, or a write failed */
    UDPD_DROP_UNEXPECTED,        /* server-to-client types (HELLO_ACK, PROBE reply) */
    UDPD_DROP__COUNT
} udpd_drop;

typedef struct udpd_counters {
    uint64_t rx_dgrams, rx_bytes, tx_dgrams, tx_bytes;
    uint64_t rx_reads; /* wake-ups that found datagrams to read (rx_dgrams / rx_reads: the batching) */
    uint64_t tx_sends; /* sendmmsg calls (tx_dgrams / tx_sends: datagrams per pacing wake-up) */
    uint64_t wire[FB_WIRE_R__COUNT]; /* codec reasons; unknown_session counted here too */
    uint64_t drop[UDPD_DROP__COUNT];
    uint64_t hellos, hello_refused, associations, closes, probes;
    uint64_t downloads_confirmed; /* downloads ended by CLOSE(unchanged) */
    uint64_t data_bytes_new, data_bytes_dup, data_bytes_sent, feedbacks_sent, feedbacks_rx;
    uint64_t chunks_completed, checkpoints, checkpoint_errors, write_errors;
} udpd_counters;

extern udpd_counters udpd_ctr;

const char *udpd_drop_name(udpd_drop d);
/* Writes every counter as "name=value" pairs on a few log lines (tag UD00050). */
void udpd_counters_log(udpd_level level, const char *why);
/* Total of datagrams dropped, all reasons. */
uint64_t udpd_counters_dropped(void);

/* ---- the daemon ------------------------------------------------------------------------------- */

#define UDPD_MAX_DATAGRAM FB_WIRE_MAX_DATAGRAM /* what udpd accepts; clients ask smaller */
#define UDPD_DEFAULT_RATE 125000000ull         /* 1 Gbit/s when neither client nor config says */

typedef struct udpd udpd;

/* What udpd_main.c provides to the protocol code. */
const fb_config *udpd_cfg(const udpd *d);
fb_table *udpd_table(const udpd *d);
/* Queue room for one datagram to send (NULL: the batch is full; flush later). */
uint8_t *udpd_send_reserve(udpd *d, size_t maxlen);
void udpd_send_commit(udpd *d, size_t len, const udpd_addr *to);
/* 1 while the socket buffer is full (waiting for EPOLLOUT): producing more is pointless. */
int udpd_send_blocked(const udpd *d);
/* Monotonic microseconds (the engines' clock). */
uint64_t udpd_now_us(void);

/* ---- sessions (udpd_session.c) ---------------------------------------------------------------- */

typedef struct udpd_sessions udpd_sessions;

fb_err udpd_sessions_new(udpd_sessions **pss, udpd *d, uint32_t nslots);
/* Checkpoints every upload (synchronously) and frees everything. */
void udpd_sessions_free(udpd_sessions *ss);
/* One received datagram (BUF is modified: decrypted in place), read at NOW_US, received by the
 * kernel at ARRIVED_US (udpd_rx_dgram.arrived_us). */
void udpd_sessions_input(udpd_sessions *ss, uint8_t *buf, size_t len, const udpd_addr *from, uint64_t now_us,
                         uint64_t arrived_us);
/* After a batch of input: write what was buffered, publish completed chunks, answer FEEDBACK
 * due by packet count. */
void udpd_sessions_after_batch(udpd_sessions *ss, uint64_t now_us);
/* Timers: DATA due by the pacer, FEEDBACK due by time, checkpoints, idle associations, slots
 * that are no longer active. Returns the next time (us) anything is due. */
uint64_t udpd_sessions_run(udpd_sessions *ss, uint64_t now_us);
/* Log a line per live session (SIGUSR1). */
void udpd_sessions_log(udpd_sessions *ss);
/* Number of sessions with a live UDP association. */
unsigned udpd_sessions_active(const udpd_sessions *ss);

/* ---- checkpoints (udpd_ckpt.c) ---------------------------------------------------------------- */

typedef struct udpd_ckpt_job {
    int part_fd;                    /* dup of the partial file (flock, fdatasync) */
    int parent_fd;                  /* dup of its directory */
    char base[FB_RELPATH_MAX + 32]; /* checkpoint name inside the directory */
    fb_slot *slot;
    uint32_t generation;
    uint64_t size;
    uint32_t chunk_size;
    uint32_t flags;              /* FB_CHECKPOINT_FLAG_* from the session */
    uint8_t expected_sha256[32]; /* the session's, with FB_CHECKPOINT_FLAG_SHA256 */
    uint64_t source_mtime_ns;    /* the session's, with FB_CHECKPOINT_FLAG_SOURCE_MTIME */
    uint8_t source_id[32];       /* the session's source identity (all 0: none) */
    int digest_only;             /* only fold the file into the running digest: no checkpoint */
} udpd_ckpt_job;

fb_err udpd_ckpt_start(void);
/* Queues a job (takes ownership of its descriptors). When the queue is full, or SYNC, the
 * job runs on the calling thread. */
void udpd_ckpt_submit(udpd_ckpt_job *job, int sync);
/* Waits for queued jobs, then stops the thread. */
void udpd_ckpt_stop(void);
/* Runs one job now (the worker's body; closes the descriptors). */
fb_err udpd_ckpt_run(udpd_ckpt_job *job);

#endif
