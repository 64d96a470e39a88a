/* udpd_sess.h: the per-session context of udpd, shared by the files that work on it.
 *
 *   udpd_session.c  contexts and their life cycle, the handshake glue (fb_assoc), input
 *                   dispatch, timers, reporting
 *   udpd_files.c    the session's files: opening them, the upload's write buffer, chunk
 *                   publication and checkpoints, the download's read-ahead and end check
 *   udpd_data.c     the data phase: DATA, FEEDBACK, PROBE and CLOSE on a running association */
#ifndef UDPD_SESS_H
#define UDPD_SESS_H

#include "udpd.h"

#include "fb_assoc.h"
#include "fb_xfer.h"

#define SESSION_IDLE_US (300ull * 1000000) /* context without association: freed */
#define CKPT_BYTES (64ull << 20)
#define CKPT_INTERVAL_US (2ull * 1000000)
#define CKPT_IDLE_US (1000000ull)
#define HOUSEKEEP_US 100000ull
#define WBUF_SIZE (1u << 20)
#define RBUF_SIZE (1u << 20)
#define SEND_QUANTUM 64 /* DATA per session per round, so sessions share the batch */
/* Sleep at least this long between pacing wakes: the pacer's 2 ms burst credit keeps the rate,
 * and each wake sends a batch (at 100 Mbit/s about 8 datagrams; with 250 us one or two, at twice
 * the CPU per GiB: 13.4 against 6.2-7.3 s on the benchmark's link). */
#define PACING_QUANTUM_US 1000

typedef struct sess sess;

struct sess {
    udpd_sessions *ss;
    uint32_t index, generation;
    uint8_t sid[FB_WIRE_SID_LEN];
    char id[FB_WIRE_SID_HEX_LEN + 1];
    fb_slot *slot;
    uint32_t direction;
    uint64_t size;
    uint32_t chunk_size;
    uint64_t nchunks;
    uint32_t ckpt_flags; /* FB_CHECKPOINT_FLAG_SHA256 when the session has an expected digest */
    uint8_t expected_sha256[32];
    uint64_t source_mtime_ns; /* with FB_CHECKPOINT_FLAG_SOURCE_MTIME in ckpt_flags */
    uint8_t source_id[32];    /* an upload's source identity, for its checkpoints */
    char relpath[FB_RELPATH_MAX];
    char docroot[FB_DOCROOT_MAX];
    uint64_t last_seen_us; /* any datagram for this session that authenticated */

    /* The handshake (fb_assoc): the session key, the running association (as.cur) and a new one
     * waiting for its first authenticated data-phase packet (as.pend, PROTOCOL.md 7.4, 7.5). */
    fb_assoc_srv as;
    udpd_addr peer;    /* as.cur's address, as the socket layer takes it */
    char peer_str[64]; /* ... and for the log */
    int force_feedback;

    /* files (opened at the first association) */
    int files_open;
    int part_fd, parent_fd, file_fd;
    char ckpt_base[FB_RELPATH_MAX + 32];

    /* upload */
    fb_xfer_receiver *rcv;
    uint8_t *wbuf;
    uint64_t woff;
    size_t wlen;
    uint64_t *pend_chunks; /* chunks complete in the write buffer, published after the flush */
    size_t npend, pend_cap;
    uint64_t *known; /* chunks known complete (ours or seen in the shared bitmap) */
    uint64_t known_count;
    uint64_t since_ckpt_bytes, last_ckpt_us, last_data_us;
    int ckpt_dirty;
    fb_err write_error;
    int touched;
    sess *next_touched;

    /* download */
    uint64_t created_ns; /* the session's creation (CLOCK_REALTIME), when the client had just
                          * checked the file's ETag against its HEAD */
    uint64_t file_dev, file_ino, file_mtime_ns, file_ctime_ns; /* the file then (the slot's) */
    int file_verifiable; /* the file opened is that one, unchanged since shortly before */
    fb_xfer_sender *snd;
    uint8_t *rbuf;
    uint64_t roff;
    size_t rlen;
    int snd_done_logged;
    uint64_t trace_t0_us; /* UDPD_RATE_TRACE: when this session's trace began */

    sess *next_assoc, *prev_assoc;
};

struct udpd_sessions {
    udpd *d;
    uint32_t nslots;
    sess **by_index;
    sess *assoc; /* associated sessions (doubly linked) */
    unsigned nassoc;
    sess *touched;
    uint64_t last_housekeep_us;
    uint64_t *scratch;          /* bitmap copy */
    fb_assoc_server *hs;        /* the handshake of every session */
    const fb_config *policy_of; /* the configuration its policy was taken from */
};

static inline void count_wire(fb_wire_reason why)
{
    if ((unsigned)why < FB_WIRE_R__COUNT)
        udpd_ctr.wire[why]++;
}

static inline void count_drop(udpd_drop why)
{
    udpd_ctr.drop[why]++;
}

static inline int slot_still_ours(const sess *s)
{
    return atomic_load(&s->slot->generation) == s->generation &&
           atomic_load(&s->slot->state) == FB_SLOT_ACTIVE;
}

/* Whether the session was refused by the administrator (fbctl cancel: FAILED with server_refused,
 * same generation): its client is told so in the CLOSE, the seed's "Server refused request". */
static inline int slot_refused(const sess *s)
{
    return atomic_load(&s->slot->generation) == s->generation &&
           atomic_load(&s->slot->state) == FB_SLOT_FAILED &&
           atomic_load(&s->slot->error_code) == (uint32_t)FB_ERR_SERVER_REFUSED;
}

/* ---- udpd_session.c ---- */

/* Puts S on the list of sessions whose buffered data is written after this receive batch. */
void sess_touch(sess *s);
/* CLOSE(REASON) with header FLAGS (FB_WIRE_F_CLOSE_*) on the running association. */
void sess_send_close(sess *s, fb_err reason, uint8_t flags);
/* Ends the running association (the context stays for a new HELLO). */
void sess_assoc_end(sess *s, uint64_t now, const char *why);
/* A write failed or the session went away under the upload: tell the client, stop. */
void sess_upload_fail(sess *s, fb_err e, uint64_t now);

/* ---- udpd_files.c ---- */

/* Whether the download's file is still the one the session was created for (PROTOCOL.md 8.5). */
int sess_file_unchanged(const sess *s);
/* Whether DOCROOT is one of CFG's. */
int sess_docroot_allowed(const fb_config *cfg, const char *docroot);
/* Opens the session's files (download: the file; upload: the partial file and its directory). */
fb_err sess_open_files(sess *s);
/* Closes whatever of them is open. */
void sess_close_files(sess *s);
/* The upload receiver's callbacks: new bytes into the write buffer, a chunk completed. */
fb_err sess_write_cb(void *ctx, uint64_t offset, const uint8_t *buf, size_t len);
void sess_chunk_cb(void *ctx, uint64_t index);
/* The download sender's callback: file bytes through the read-ahead buffer. */
fb_err sess_read_cb(void *ctx, uint64_t offset, uint8_t *buf, size_t len);
/* Merges chunks completed by others (HTTP) into the receiver, so FEEDBACK reports them. */
void sess_sync_bitmap(sess *s);
/* Writes buffered data, then publishes the chunks it completed. */
fb_err sess_publish(sess *s);
/* Queues a checkpoint of the upload (SYNC: runs it now). */
void sess_checkpoint(sess *s, uint64_t now, int sync);
/* The checkpoint when a client closes its association. */
void sess_checkpoint_at_close(sess *s, uint64_t now);

/* ---- udpd_data.c ---- */

void sess_on_data(sess *s, const fb_wire_pkt *pkt, uint64_t now, uint64_t arrived);
void sess_on_feedback(sess *s, const fb_wire_pkt *pkt, uint64_t now);
void sess_on_probe(sess *s, const fb_wire_pkt *pkt, uint64_t now, uint64_t arrived);
void sess_on_close(sess *s, const fb_wire_pkt *pkt, uint64_t now);

#endif
