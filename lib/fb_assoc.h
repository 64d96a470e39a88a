/* fb_assoc: the UDP association handshake (docs/PROTOCOL.md section 7), both ends, as pure code.
 *
 * Client: builds the HELLO (fresh client nonce and random packet number per attempt, padded to the
 * datagram size asked for), says when to retransmit it (250 ms, doubling), and accepts the
 * server's HELLO_ACK only when it authenticates under the handshake keys and echoes the pending
 * nonce; then it derives the data keys (key confirmation: only a server holding the session key
 * could have sealed that answer) or reports the refusal. How long to keep trying is the caller's
 * decision (fbcp_switch).
 *
 * Server: one fb_assoc_srv per session holds the handshake keys, the running association and a
 * pending one. A HELLO is looked up through the caller's callback, opened, checked against the
 * client nonces answered before (a repeat from the same address gets the same answer again; from
 * elsewhere, or a nonce already superseded, it is a replay), negotiated (cipher, policy, rates,
 * datagram size, then the caller's own admission check) and answered with one HELLO_ACK that is
 * never larger than the HELLO: no amplification. The pending association becomes the running one
 * only when a data-phase packet from its address authenticates under its keys (the client proved
 * it got the answer there); until then the running one goes on, and nothing but HELLO_ACKs is
 * sent towards the new address.
 *
 * Like fb_wire and fb_xfer (ngtcp2's model): datagrams in, datagrams to send out, the current
 * time passed in; no I/O, no clock, no global state. Randomness comes from the caller's callback
 * (fb_random_bytes in the programs, a seeded generator in tests). Not thread-safe.
 *
 * Server caller's loop, per received datagram:
 *
 *     ev = fb_assoc_server_input(srv, &out, buf, len, &from, now);
 *     switch (ev) {
 *     case FB_ASSOC_HELLO_PENDING: case FB_ASSOC_HELLO_AGAIN: case FB_ASSOC_HELLO_REFUSED:
 *         send(out.dgram, out.len, &from); break;
 *     case FB_ASSOC_VALIDATED: end the running association's work; fb_assoc_srv_promote(out.srv);
 *         // fall through
 *     case FB_ASSOC_PACKET: handle out.pkt on out.srv->cur; break;
 *     default: count the drop;
 *     }
 */
#ifndef FB_ASSOC_H
#define FB_ASSOC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "fb_aead.h"
#include "fb_err.h"
#include "fb_replay.h"
#include "fb_wire.h"

#define FB_ASSOC_HELLO_RTO_US 250000ull   /* first HELLO retransmission; doubles each time */
#define FB_ASSOC_IDLE_US (5ull * 1000000) /* server: nothing authenticated this long: forgotten */
#define FB_ASSOC_NONCE_MEMORY 16          /* server: client nonces answered before, per session */
#define FB_ASSOC_ACK_LEN (FB_WIRE_OVERHEAD + FB_WIRE_HELLO_ACK_FIXED) /* 132 */

/* Fills BUF with LEN random bytes; FB_OK or an error (nothing is then sent). */
typedef fb_err (*fb_assoc_random_fn)(void *ctx, uint8_t *buf, size_t len);
/* The programs' generator: fb_random_bytes (OpenSSL's CSPRNG); CTX unused. */
fb_err fb_assoc_random_os(void *ctx, uint8_t *buf, size_t len);

/* A peer's address, normalised by fb_assoc_addr_set (family, address, port, IPv6 scope; every
 * other byte zero) so that two addresses are the same peer exactly when fb_assoc_addr_equal. */
typedef struct fb_assoc_addr {
    struct sockaddr_storage ss;
    socklen_t len;
} fb_assoc_addr;

void fb_assoc_addr_set(fb_assoc_addr *a, const struct sockaddr *sa, socklen_t len);
int fb_assoc_addr_equal(const fb_assoc_addr *a, const fb_assoc_addr *b);

/* ---- client ----------------------------------------------------------------------------------- */

typedef struct fb_assoc_client_params {
    uint8_t sid[FB_WIRE_SID_LEN];
    unsigned cipher, policy;   /* one fb_cipher and one fb_policy bit asked for */
    uint64_t target_rate;      /* bytes/s, 0 = the server's default */
    uint64_t min_rate;         /* bytes/s */
    uint16_t max_datagram;     /* asked for, and the HELLO's size (checks the path at it) */
    fb_assoc_random_fn random; /* nonces and handshake packet numbers */
    void *random_ctx;
} fb_assoc_client_params;

typedef struct fb_assoc_client {
    fb_assoc_client_params p;
    fb_aead_ctx *aead; /* the caller's (client role): handshake keys; data keys set on acceptance */
    int pending;       /* a HELLO with cnonce is out, unanswered */
    uint8_t cnonce[FB_AEAD_HELLO_NONCE_LEN];
    uint64_t hello_pn, sent_us, rto_us;
    /* the accepted answer (after FB_ASSOC_C_ACCEPTED) */
    fb_wire_hello_ack ack;
    uint16_t max_dgram; /* min(the client's, the server's) */
    uint64_t rtt_us;    /* HELLO to HELLO_ACK less the server's hold */
    fb_err refused;     /* the status of a refusal (FB_ASSOC_C_REFUSED) */
} fb_assoc_client;

typedef enum fb_assoc_client_event {
    FB_ASSOC_C_DROP = 0,   /* not ours, not authentic, not answering the pending HELLO */
    FB_ASSOC_C_DATA_PHASE, /* a data-phase type naming the session: the caller opens it */
    FB_ASSOC_C_ACCEPTED,   /* data keys set; c->ack, max_dgram, rtt_us */
    FB_ASSOC_C_REFUSED,    /* c->refused says why (the client falls back to HTTP(S)) */
} fb_assoc_client_event;

/* AEAD is borrowed (it must outlive C, and is the one the data-phase engines use). */
void fb_assoc_client_init(fb_assoc_client *c, const fb_assoc_client_params *p, fb_aead_ctx *aead);
/* Writes a HELLO into BUF (CAP >= p.max_datagram). FRESH: a new attempt (new nonce, packet number
 * and timer; a refusal seen before is forgotten); else the retransmission of the pending one (the
 * same nonce, the next packet number, the timer doubled). FB_ERR_SESSION_STATE when not FRESH
 * and none is pending. */
fb_err fb_assoc_client_hello(fb_assoc_client *c, uint8_t *buf, size_t cap, size_t *plen, uint64_t now_us,
                             int fresh);
/* When the pending HELLO is due again; UINT64_MAX when none is pending. */
uint64_t fb_assoc_client_next_time(const fb_assoc_client *c);
/* Forgets the pending HELLO (an answer to it is then dropped). */
void fb_assoc_client_cancel(fb_assoc_client *c);
/* One received datagram (BUF is decrypted in place when it is a HELLO_ACK). */
fb_assoc_client_event fb_assoc_client_input(fb_assoc_client *c, uint8_t *buf, size_t len, uint64_t now_us);

/* ---- server ----------------------------------------------------------------------------------- */

/* One association: the keys of one HELLO, the address it came from, the data-phase state. */
typedef struct fb_assoc_link {
    int live;
    fb_aead_ctx *aead; /* handshake and this association's data keys (owned) */
    fb_assoc_addr peer;
    uint8_t cnonce[FB_AEAD_HELLO_NONCE_LEN], snonce[FB_AEAD_HELLO_NONCE_LEN];
    fb_replay replay; /* what the peer sent */
    uint64_t pn_out;  /* the next packet number to send (the caller increments it) */
    unsigned cipher, policy;
    uint64_t target_rate, min_rate;
    uint16_t max_dgram;
    uint64_t last_rx_us; /* the last authenticated datagram (the HELLO, while pending) */
} fb_assoc_link;

/* The handshake state of one session. */
typedef struct fb_assoc_srv {
    uint8_t sid[FB_WIRE_SID_LEN];
    uint8_t key[FB_AEAD_SESSION_KEY_LEN];
    unsigned slot_cipher; /* the cipher the session fixed, 0 = the client's choice */
    fb_aead_ctx *hs;      /* handshake keys: opens HELLOs, seals refusals */
    fb_assoc_link cur;    /* the running association */
    fb_assoc_link pend;   /* a new one waiting for its first authenticated data-phase packet */
    uint8_t seen[FB_ASSOC_NONCE_MEMORY][FB_AEAD_HELLO_NONCE_LEN]; /* client nonces answered */
    unsigned nseen, seen_next;
    void *user; /* the caller's session */
} fb_assoc_srv;

fb_err fb_assoc_srv_init(fb_assoc_srv *s, const uint8_t sid[FB_WIRE_SID_LEN],
                         const uint8_t key[FB_AEAD_SESSION_KEY_LEN], unsigned slot_cipher, void *user);
/* Wipes every key (both associations too). */
void fb_assoc_srv_clear(fb_assoc_srv *s);
/* Ends the running association (its keys are wiped). */
void fb_assoc_srv_end(fb_assoc_srv *s);
/* The pending association becomes the running one (after FB_ASSOC_VALIDATED, once the caller has
 * ended the running one's work: its keys are wiped here). */
void fb_assoc_srv_promote(fb_assoc_srv *s);
/* Forgets a pending association that heard nothing for FB_ASSOC_IDLE_US. Returns 1 when the
 * running one is idle that long (the caller ends it: fb_assoc_srv_end). */
int fb_assoc_srv_expire(fb_assoc_srv *s, uint64_t now_us);

/* What the server grants (its configuration; may change between HELLOs). */
typedef struct fb_assoc_policy {
    unsigned allowed_ciphers, allowed_policies; /* fb_cipher / fb_policy bits */
    uint64_t target_rate_cap, min_rate_cap;     /* bytes/s, 0 = no cap */
    uint64_t default_rate;                      /* bytes/s when neither client nor cap says */
    uint16_t max_datagram;                      /* the server's limit (>= FB_WIRE_MIN_DATAGRAM) */
} fb_assoc_policy;

typedef struct fb_assoc_server_params {
    fb_assoc_policy policy;
    fb_assoc_random_fn random; /* server nonces, handshake packet numbers */
    /* The session HDR names (its slot), or NULL with *WHY (unknown_session, or no_keys for a
     * data-phase packet of an active session no HELLO reached yet). May create the session's
     * state for a HELLO. */
    fb_assoc_srv *(*lookup)(void *ctx, const fb_wire_hdr *hdr, uint64_t now_us, fb_wire_reason *why);
    /* The caller's own conditions for accepting an otherwise acceptable HELLO (files, memory):
     * FB_OK, or why not with a *DETAIL for its log. NULL: none. */
    fb_err (*admit)(void *ctx, fb_assoc_srv *s, uint64_t now_us, const char **detail);
    void *ctx; /* for the three callbacks */
} fb_assoc_server_params;

typedef struct fb_assoc_server fb_assoc_server;

fb_err fb_assoc_server_new(fb_assoc_server **psrv, const fb_assoc_server_params *p);
void fb_assoc_server_free(fb_assoc_server *srv);
/* Applies to the HELLOs that follow (a reloaded configuration). */
void fb_assoc_server_set_policy(fb_assoc_server *srv, const fb_assoc_policy *policy);

typedef enum fb_assoc_event {
    FB_ASSOC_DROP = 0,        /* out.reason: the codec's, unknown_session or no_keys */
    FB_ASSOC_DROP_UNEXPECTED, /* a server-to-client type (HELLO_ACK) */
    FB_ASSOC_DROP_ADDRESS,    /* data phase from an address without an association */
    FB_ASSOC_HELLO_REPLAYED,  /* an authenticated HELLO answered before, or from elsewhere */
    FB_ASSOC_HELLO_AGAIN,     /* the same HELLO again: the same answer in out.dgram */
    FB_ASSOC_HELLO_REFUSED,   /* a refusal in out.dgram; out.status, out.detail */
    FB_ASSOC_HELLO_FAILED,    /* no data keys (OpenSSL or randomness): nothing to send */
    FB_ASSOC_HELLO_PENDING,   /* a new pending association; its answer in out.dgram */
    FB_ASSOC_PACKET,          /* a data-phase packet of the running association: out.pkt */
    FB_ASSOC_VALIDATED,       /* one that validated the pending association: promote first */
} fb_assoc_event;

typedef struct fb_assoc_out {
    fb_assoc_srv *srv;               /* the session (NULL for drops before the lookup found one) */
    fb_wire_reason reason;           /* FB_ASSOC_DROP */
    fb_err status;                   /* FB_ASSOC_HELLO_REFUSED */
    const char *detail;              /* FB_ASSOC_HELLO_REFUSED: why, for the log */
    uint8_t dgram[FB_ASSOC_ACK_LEN]; /* the answer to send back to the HELLO's address */
    size_t len;                      /* 0: nothing to send */
    fb_wire_pkt pkt;                 /* FB_ASSOC_PACKET, FB_ASSOC_VALIDATED (payload inside BUF) */
} fb_assoc_out;

/* One received datagram from FROM (BUF is decrypted in place). */
fb_assoc_event fb_assoc_server_input(fb_assoc_server *srv, fb_assoc_out *out, uint8_t *buf, size_t len,
                                     const fb_assoc_addr *from, uint64_t now_us);

#endif
