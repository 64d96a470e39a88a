/* fb_wire: codec for the UDP fast-path datagrams, protocol version 4 (docs/PROTOCOL.md).
 *
 * A datagram is a header (authenticated, in clear), a type-specific body (sealed), and a
 * 16-byte AEAD tag. Every type but DATA has the 28-byte long header:
 *
 *   +------+------+-------+----------+----------------+---------------+---------------+--------+
 *   | 0xF4 | type | flags | reserved | session id(16) | packet nr(u64)| body (sealed) | tag 16 |
 *   +------+------+-------+----------+----------------+---------------+---------------+--------+
 *
 * DATA, nearly every datagram of a transfer, has an 11-byte short header: the slot index alone
 * (the AEAD key already names the association) and the low 32 bits of the packet number (the
 * receiver restores the rest from its replay window), and its send timestamp is 32 bits:
 *
 *   +------+------+-------+-----------------+-----------------+-----------------------+--------+
 *   | 0xF4 | 0x03 | flags | slot index (u32)| packet nr (low32)| body (sealed)        | tag 16 |
 *   +------+------+-------+-----------------+-----------------+-----------------------+--------+
 *
 * Pure code (bytes in, bytes out, time passed in by the caller): no I/O, no clock, no
 * allocation. Every length is checked before use; anything wrong is dropped with a reason the
 * caller counts. Receiving is two steps: fb_wire_peek_header (no key: yields the session id to
 * find the session and its keys) then fb_wire_open (authenticates, checks replay, parses).
 * Multi-byte integers are big-endian on the wire; the structs below hold host values. */
#ifndef FB_WIRE_H
#define FB_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "fb_aead.h"
#include "fb_err.h"
#include "fb_range.h"
#include "fb_replay.h"

#define FB_WIRE_VERSION 4
#define FB_WIRE_MAGIC 0xF0u                                    /* high nibble of byte 0 */
#define FB_WIRE_VERSION_BYTE (FB_WIRE_MAGIC | FB_WIRE_VERSION) /* 0xF4 */

#define FB_WIRE_SID_LEN 16     /* u32 slot index (big-endian) + 12 random bytes */
#define FB_WIRE_SID_HEX_LEN 32 /* the HTTP session id: "%08x" index + 24 hex */
#define FB_WIRE_HEADER_LEN 28      /* the long header: every type but DATA */
#define FB_WIRE_DATA_HEADER_LEN 11 /* DATA's short header */
#define FB_WIRE_TAG_LEN FB_AEAD_TAG_LEN
#define FB_WIRE_OVERHEAD (FB_WIRE_HEADER_LEN + FB_WIRE_TAG_LEN) /* 44 */

#define FB_WIRE_MAX_DATAGRAM 65507u    /* largest UDP payload over IPv4 */
#define FB_WIRE_MIN_DATAGRAM 1200u     /* every path must carry this; HELLO is padded to it */
#define FB_WIRE_DEFAULT_DATAGRAM 1452u /* fits MTU 1500 under IPv6 (40) + UDP (8) headers */
#define FB_WIRE_DEFAULT_DATAGRAM_IPV4 1472u /* fits MTU 1500 under IPv4 (20) + UDP (8) headers */

/* DATA: short header, offset (u64), send timestamp (low 32 bits of the sender's us clock),
 * payload, tag. */
#define FB_WIRE_DATA_FIXED 12u
#define FB_WIRE_DATA_PAYLOAD_OFF (FB_WIRE_DATA_HEADER_LEN + FB_WIRE_DATA_FIXED)               /* 23 */
#define FB_WIRE_DATA_OVERHEAD (FB_WIRE_DATA_HEADER_LEN + FB_WIRE_DATA_FIXED + FB_WIRE_TAG_LEN) /* 39 */
#define FB_WIRE_DEFAULT_PAYLOAD (FB_WIRE_DEFAULT_DATAGRAM - FB_WIRE_DATA_OVERHEAD)            /* 1413 */
#define FB_WIRE_MAX_PAYLOAD (FB_WIRE_MAX_DATAGRAM - FB_WIRE_DATA_OVERHEAD)                    /* 65468 */

/* Fixed body sizes (before padding / ranges / payload). */
#define FB_WIRE_HELLO_FIXED 52u
#define FB_WIRE_HELLO_ACK_FIXED 88u
#define FB_WIRE_FEEDBACK_FIXED 56u
#define FB_WIRE_RANGE_LEN 16u
#define FB_WIRE_MAX_RANGES 64u /* a FEEDBACK with every range still fits FB_WIRE_MIN_DATAGRAM */
#define FB_WIRE_CLOSE_FIXED 8u
#define FB_WIRE_PROBE_FIXED 24u

typedef enum fb_wire_type {
    FB_WIRE_HELLO = 1,     /* client -> server, handshake keys */
    FB_WIRE_HELLO_ACK = 2, /* server -> client, handshake keys */
    FB_WIRE_DATA = 3,      /* sender -> receiver, data keys */
    FB_WIRE_FEEDBACK = 4,  /* receiver -> sender, data keys */
    FB_WIRE_CLOSE = 5,     /* either way, data keys */
    FB_WIRE_PROBE = 6,     /* either way, data keys */
} fb_wire_type;

/* Header flags, per type; any other bit set is malformed. */
#define FB_WIRE_F_DATA_RETRANSMIT 0x01u   /* payload was sent before (not a delay sample) */
#define FB_WIRE_F_DATA_LAST 0x02u         /* payload ends at the end of the file */
#define FB_WIRE_F_FEEDBACK_MORE 0x01u     /* more missing ranges exist than are listed */
#define FB_WIRE_F_FEEDBACK_COMPLETE 0x02u /* the receiver has the whole file */
#define FB_WIRE_F_FEEDBACK_FROM 0x04u     /* the ranges start at from_offset, not at cum (6.4) */
#define FB_WIRE_F_PROBE_REPLY 0x01u       /* an answer to a PROBE (never larger than it) */
#define FB_WIRE_F_CLOSE_UNCHANGED 0x01u   /* download sender's answer to the receiver's CLOSE(0): the
                                           * file is still the one the session began with, and the
                                           * session is ended (8.5) */

/* Why a datagram was dropped: one counter each (udpd's statistics, fbcp --json). */
typedef enum fb_wire_reason {
    FB_WIRE_R_NONE = 0,
    FB_WIRE_R_TRUNCATED,       /* shorter than its type requires */
    FB_WIRE_R_OVERSIZED,       /* longer than its type or a UDP datagram allows */
    FB_WIRE_R_BAD_VERSION,     /* not our magic, or a protocol version we do not speak */
    FB_WIRE_R_BAD_TYPE,        /* unknown packet type */
    FB_WIRE_R_MALFORMED,       /* bad flags, reserved bits, or field values */
    FB_WIRE_R_AUTH_FAILED,     /* AEAD tag did not verify (wrong key, tampered, truncated) */
    FB_WIRE_R_REPLAYED,        /* packet number already seen or older than the window */
    FB_WIRE_R_NO_KEYS,         /* data-phase packet before the handshake set data keys */
    FB_WIRE_R_UNKNOWN_SESSION, /* for the caller: no live session has this id */
    FB_WIRE_R_INTERNAL,        /* OpenSSL failure; not the packet's fault */
    FB_WIRE_R__COUNT
} fb_wire_reason;

typedef struct fb_wire_hdr {
    uint8_t type;  /* fb_wire_type */
    uint8_t flags; /* FB_WIRE_F_* of that type */
    /* DATA carries only the slot index: decoded, the other 12 bytes are zero (the encoder
     * ignores them); use fb_wire_sid_slot, or compare the whole id for other types only */
    uint8_t sid[FB_WIRE_SID_LEN];
    /* packet number: data phase 0,1,2... per direction; handshake: random. DATA carries its
     * low 32 bits: fb_wire_peek_header gives those, fb_wire_open the whole number, restored
     * from the replay window (the nearest to the highest accepted + 1) */
    uint64_t pn;
} fb_wire_hdr;

typedef struct fb_wire_hello {
    uint8_t client_nonce[FB_AEAD_HELLO_NONCE_LEN]; /* random, fresh per association */
    uint32_t cipher;                               /* one fb_cipher bit requested */
    uint32_t policy;                               /* one fb_policy bit requested */
    uint64_t target_rate;                          /* bytes/s; 0 = server's default */
    uint64_t min_rate;                             /* bytes/s */
    uint64_t client_ts_us;                         /* client clock, echoed in HELLO_ACK */
    uint16_t max_datagram; /* largest datagram the client accepts, >= FB_WIRE_MIN_DATAGRAM */
    size_t pad_to;         /* encode: total datagram size (raised to FB_WIRE_MIN_DATAGRAM) */
} fb_wire_hello;

typedef struct fb_wire_hello_ack {
    uint8_t client_nonce[FB_AEAD_HELLO_NONCE_LEN]; /* echo: binds the answer to the HELLO */
    uint8_t server_nonce[FB_AEAD_HELLO_NONCE_LEN];
    uint32_t status;      /* fb_err: FB_OK = accepted, else why refused (fall back to HTTP) */
    uint32_t cipher;      /* accepted (one fb_cipher bit; 0 when refused) */
    uint32_t policy;      /* accepted (one fb_policy bit; 0 when refused) */
    uint64_t target_rate; /* bytes/s after the server's caps */
    uint64_t min_rate;
    uint64_t echo_ts_us;   /* the HELLO's client_ts_us */
    uint32_t hold_us;      /* time between the HELLO's arrival and this answer */
    uint16_t max_datagram; /* the server's limit; DATA in both directions fits min of both */
    uint64_t server_ts_us; /* server clock */
} fb_wire_hello_ack;

typedef struct fb_wire_data {
    uint64_t offset;        /* file offset of payload[0] */
    uint64_t send_ts_us;    /* sender clock when sealed; only its low 32 bits travel (decoded:
                             * those), and come back as FEEDBACK's echo: fb_wire_ts_unwrap */
    const uint8_t *payload; /* decode: points into the datagram buffer (decrypted in place) */
    size_t len;             /* 1 .. FB_WIRE_MAX_PAYLOAD */
} fb_wire_data;

typedef struct fb_wire_feedback {
    uint64_t cum_offset;                 /* every byte below this has been received */
    uint64_t high_offset;                /* end of the highest byte received (>= cum_offset) */
    uint64_t recv_bytes;                 /* distinct payload bytes received so far */
    uint64_t recv_rate;                  /* bytes/s the receiver measured over its last interval */
    uint64_t echo_ts_us;                 /* send_ts_us of the newest DATA received (0 = none yet) */
    uint64_t echo_recv_ts_us;            /* receiver clock when that DATA arrived (one-way delay sample) */
    uint32_t hold_us;                    /* from that arrival to sending this feedback */
    uint16_t delay_lag_us;               /* that DATA's one-way delay minus the smallest one of
                                          * the first transmissions that arrived since the
                                          * previous FEEDBACK (saturates at 65535; 0 = none) */
    uint16_t nranges;                    /* missing ranges listed, <= FB_WIRE_MAX_RANGES */
    uint64_t from_offset;                /* with FB_WIRE_F_FEEDBACK_FROM: where the listing starts
                                          * (cum < from < high; [cum, from) not described);
                                          * without: ignored by the encoder, set to cum_offset
                                          * by the decoder */
    fb_range ranges[FB_WIRE_MAX_RANGES]; /* sorted, disjoint, inside [from, high), first at from */
} fb_wire_feedback;

typedef struct fb_wire_close {
    uint32_t reason; /* fb_err: FB_OK = finished normally */
} fb_wire_close;

typedef struct fb_wire_probe {
    uint64_t probe_id; /* chosen by the prober, echoed */
    uint64_t ts_us;    /* prober clock; echoed in the reply */
    uint32_t hold_us;  /* reply only: time between the probe's arrival and the reply */
    size_t pad_to;     /* encode: total datagram size (path MTU probing); 0 = minimal */
} fb_wire_probe;

typedef struct fb_wire_pkt {
    fb_wire_hdr hdr;
    size_t datagram_len; /* decode: bytes on the wire (answers must not exceed a HELLO/PROBE) */
    union {
        fb_wire_hello hello;
        fb_wire_hello_ack hello_ack;
        fb_wire_data data;
        fb_wire_feedback feedback;
        fb_wire_close close;
        fb_wire_probe probe;
    } u;
} fb_wire_pkt;

/* Stable counter name of REASON ("auth_failed"); "unknown" when out of range. */
const char *fb_wire_reason_name(fb_wire_reason reason);
/* "HELLO", "DATA", ...; "unknown" otherwise. */
const char *fb_wire_type_name(unsigned type);

/* Key phase a packet type is sealed under. */
fb_aead_phase fb_wire_type_phase(fb_wire_type type);

/* Checks everything that can be checked without the key (size, version, type, flags,
 * reserved byte, per-type length) and fills *HDR. FB_ERR_PROTOCOL with *REASON otherwise. */
fb_err fb_wire_peek_header(fb_wire_hdr *hdr, fb_wire_reason *reason, const uint8_t *buf, size_t len);

/* Fully decodes BUF: header checks as fb_wire_peek_header, then, for data-phase packets, the
 * replay window (REPLAY may be NULL to skip; handshake packets never use it), then AEAD open
 * IN PLACE (BUF's body is overwritten with plaintext), then field validation, then the window
 * update. On success *PKT is filled (a DATA payload points into BUF). On failure *PKT is zeroed,
 * *REASON says why, and the result is FB_ERR_PROTOCOL (FB_ERR_INTERNAL for OpenSSL faults). */
fb_err fb_wire_open(fb_wire_pkt *pkt, fb_wire_reason *reason, uint8_t *buf, size_t len,
                    const fb_aead_ctx *ctx, fb_replay *replay);

/* Encoders: write the sealed datagram into BUF (CAP bytes) and its size into *PLEN. The type in
 * HDR is ignored (set by the function); HDR's flags must be valid for the type. Fields are
 * validated as the decoder would (FB_ERR_INTERNAL for a caller bug); FB_ERR_TOO_LARGE when CAP
 * is too small or the datagram would exceed FB_WIRE_MAX_DATAGRAM. */
fb_err fb_wire_encode_hello(uint8_t *buf, size_t cap, size_t *plen, const fb_wire_hdr *hdr,
                            const fb_wire_hello *m, const fb_aead_ctx *ctx);
fb_err fb_wire_encode_hello_ack(uint8_t *buf, size_t cap, size_t *plen, const fb_wire_hdr *hdr,
                                const fb_wire_hello_ack *m, const fb_aead_ctx *ctx);
/* The payload may already sit at BUF + FB_WIRE_DATA_PAYLOAD_OFF (read the file straight there:
 * no copy is made); otherwise it is copied. */
fb_err fb_wire_encode_data(uint8_t *buf, size_t cap, size_t *plen, const fb_wire_hdr *hdr,
                           const fb_wire_data *m, const fb_aead_ctx *ctx);
fb_err fb_wire_encode_feedback(uint8_t *buf, size_t cap, size_t *plen, const fb_wire_hdr *hdr,
                               const fb_wire_feedback *m, const fb_aead_ctx *ctx);
fb_err fb_wire_encode_close(uint8_t *buf, size_t cap, size_t *plen, const fb_wire_hdr *hdr,
                            const fb_wire_close *m, const fb_aead_ctx *ctx);
fb_err fb_wire_encode_probe(uint8_t *buf, size_t cap, size_t *plen, const fb_wire_hdr *hdr,
                            const fb_wire_probe *m, const fb_aead_ctx *ctx);
/* Dispatches on PKT->hdr.type. */
fb_err fb_wire_encode(uint8_t *buf, size_t cap, size_t *plen, const fb_wire_pkt *pkt, const fb_aead_ctx *ctx);

/* Session id: the 16 wire bytes are exactly the hex-decoded 32-character HTTP session id. */
fb_err fb_wire_sid_from_string(uint8_t sid[FB_WIRE_SID_LEN], const char *id);
void fb_wire_sid_to_string(char out[FB_WIRE_SID_HEX_LEN + 1], const uint8_t sid[FB_WIRE_SID_LEN]);
/* The slot index in a session id (the table lookup key). */
uint32_t fb_wire_sid_slot(const uint8_t sid[FB_WIRE_SID_LEN]);

/* Whether HDR (from fb_wire_peek_header) names session SID: the whole id in the long header,
 * the slot alone in DATA's short one (the association's key is the rest of that check).
 * Constant time in the id's random part. */
int fb_wire_names_session(const fb_wire_hdr *hdr, const uint8_t sid[FB_WIRE_SID_LEN]);

/* A time of this clock, NOW_US or up to 71 minutes before, known by its low 32 bits TS (DATA's
 * send timestamp, as FEEDBACK echoes it): the full value. A full value that recent comes back
 * unchanged. */
uint64_t fb_wire_ts_unwrap(uint64_t now_us, uint64_t ts);

/* The whole packet number whose low 32 bits are LOW32, nearest to the one after TOP (the highest
 * accepted; ANY = 0 before the first): RFC 9000, appendix A.3, with 32-bit packet numbers. */
uint64_t fb_wire_pn_restore(uint64_t top, int any, uint32_t low32);

#endif
