/* fb_wire: encoder and decoder of protocol-version-3 datagrams (docs/PROTOCOL.md).
 *
 * The byte layouts are written once, as structs of byte arrays whose offsets are pinned by
 * _Static_assert, and read/written with explicit big-endian helpers (no casts of the buffer to
 * wider types, so alignment and endianness never matter). The decoder never trusts a length it
 * has not compared with the datagram size first, and never returns unauthenticated fields
 * other than the header. */
#include "fb_wire.h"

#include <stddef.h>
#include <string.h>

#include "fb_config.h"
#include "fb_util.h"

/* ---- layouts ---------------------------------------------------------------------------- */

typedef struct wire_hdr {
    uint8_t version; /* FB_WIRE_VERSION_BYTE */
    uint8_t type;
    uint8_t flags;
    uint8_t reserved; /* 0 */
    uint8_t sid[FB_WIRE_SID_LEN];
    uint8_t pn[8];
} wire_hdr;
_Static_assert(sizeof(wire_hdr) == FB_WIRE_HEADER_LEN, "header is 28 bytes");
_Static_assert(offsetof(wire_hdr, sid) == 4 && offsetof(wire_hdr, pn) == 20, "header layout");

typedef struct wire_hello {
    uint8_t client_nonce[16];
    uint8_t cipher[4];
    uint8_t policy[4];
    uint8_t target_rate[8];
    uint8_t min_rate[8];
    uint8_t client_ts[8];
    uint8_t max_datagram[2];
    uint8_t reserved[2];
    /* zero padding up to the datagram size */
} wire_hello;
_Static_assert(sizeof(wire_hello) == FB_WIRE_HELLO_FIXED, "HELLO body layout");
_Static_assert(offsetof(wire_hello, target_rate) == 24 && offsetof(wire_hello, max_datagram) == 48,
               "HELLO body offsets");

typedef struct wire_hello_ack {
    uint8_t client_nonce[16];
    uint8_t server_nonce[16];
    uint8_t status[4];
    uint8_t cipher[4];
    uint8_t policy[4];
    uint8_t reserved[4];
    uint8_t target_rate[8];
    uint8_t min_rate[8];
    uint8_t echo_ts[8];
    uint8_t hold[4];
    uint8_t max_datagram[2];
    uint8_t reserved2[2];
    uint8_t server_ts[8];
} wire_hello_ack;
_Static_assert(sizeof(wire_hello_ack) == FB_WIRE_HELLO_ACK_FIXED, "HELLO_ACK body layout");
_Static_assert(offsetof(wire_hello_ack, target_rate) == 48 && offsetof(wire_hello_ack, server_ts) == 80,
               "HELLO_ACK body offsets");

typedef struct wire_data_hdr { /* DATA's short header */
    uint8_t version;               /* FB_WIRE_VERSION_BYTE */
    uint8_t type;                  /* FB_WIRE_DATA */
    uint8_t flags;
    uint8_t slot[4];               /* the session id's first 4 bytes */
    uint8_t pn[4];                 /* low 32 bits of the packet number */
} wire_data_hdr;
_Static_assert(sizeof(wire_data_hdr) == FB_WIRE_DATA_HEADER_LEN, "DATA header is 11 bytes");
_Static_assert(offsetof(wire_data_hdr, type) == offsetof(wire_hdr, type) &&
                   offsetof(wire_data_hdr, flags) == offsetof(wire_hdr, flags),
               "both headers start alike: version, type, flags");

typedef struct wire_data {
    uint8_t offset[8];
    uint8_t send_ts[4]; /* low 32 bits */
    /* payload */
} wire_data;
_Static_assert(sizeof(wire_data) == FB_WIRE_DATA_FIXED, "DATA body layout");

typedef struct wire_feedback {
    uint8_t cum_offset[8];
    uint8_t high_offset[8];
    uint8_t recv_bytes[8];
    uint8_t recv_rate[8];
    uint8_t echo_ts[8];
    uint8_t echo_recv_ts[8];
    uint8_t hold[4];
    uint8_t nranges[2];
    uint8_t delay_lag[2];
    /* nranges x wire_range */
} wire_feedback;
_Static_assert(sizeof(wire_feedback) == FB_WIRE_FEEDBACK_FIXED, "FEEDBACK body layout");
_Static_assert(offsetof(wire_feedback, hold) == 48, "FEEDBACK body offsets");

typedef struct wire_from { /* FEEDBACK with FB_WIRE_F_FEEDBACK_FROM: before the ranges */
    uint8_t from_offset[8];
    uint8_t reserved[8];
} wire_from;
_Static_assert(sizeof(wire_from) == FB_WIRE_RANGE_LEN, "FROM block layout");

typedef struct wire_range {
    uint8_t offset[8];
    uint8_t length[8];
} wire_range;
_Static_assert(sizeof(wire_range) == FB_WIRE_RANGE_LEN, "range layout");

typedef struct wire_close {
    uint8_t reason[4];
    uint8_t reserved[4];
} wire_close;
_Static_assert(sizeof(wire_close) == FB_WIRE_CLOSE_FIXED, "CLOSE body layout");

typedef struct wire_probe {
    uint8_t probe_id[8];
    uint8_t ts[8];
    uint8_t hold[4];
    uint8_t reserved[4];
    /* zero padding up to the datagram size */
} wire_probe;
_Static_assert(sizeof(wire_probe) == FB_WIRE_PROBE_FIXED, "PROBE body layout");

_Static_assert(FB_WIRE_OVERHEAD + FB_WIRE_FEEDBACK_FIXED + (FB_WIRE_MAX_RANGES + 1) * FB_WIRE_RANGE_LEN <=
                   FB_WIRE_MIN_DATAGRAM,
               "a full FEEDBACK fits the minimum datagram");
_Static_assert(FB_WIRE_OVERHEAD + FB_WIRE_HELLO_ACK_FIXED <= FB_WIRE_MIN_DATAGRAM,
               "HELLO_ACK is smaller than any HELLO (anti-amplification)");
_Static_assert(FB_WIRE_DEFAULT_PAYLOAD == 1413 && FB_WIRE_MAX_PAYLOAD == 65468, "payload sizes");

#define CIPHER_MASK (FB_CIPHER_NONE | FB_CIPHER_AES128_GCM | FB_CIPHER_AES256_GCM)
#define POLICY_MASK (FB_POLICY_FIXED | FB_POLICY_HIGH | FB_POLICY_FAIR | FB_POLICY_LOW)

/* ---- byte helpers ----------------------------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;

    for (int i = 0; i < 4; i++)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static int all_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;

    for (size_t i = 0; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

static int one_known_bit(uint32_t v, uint32_t mask)
{
    return v != 0 && (v & (v - 1)) == 0 && (v & ~mask) == 0;
}

/* ---- names and per-type rules ---------------------------------------------------------- */

const char *fb_wire_reason_name(fb_wire_reason reason)
{
    static const char *const names[FB_WIRE_R__COUNT] = {
        [FB_WIRE_R_NONE] = "none",
        [FB_WIRE_R_TRUNCATED] = "truncated",
        [FB_WIRE_R_OVERSIZED] = "oversized",
        [FB_WIRE_R_BAD_VERSION] = "bad_version",
        [FB_WIRE_R_BAD_TYPE] = "bad_type",
        [FB_WIRE_R_MALFORMED] = "malformed",
        [FB_WIRE_R_AUTH_FAILED] = "auth_failed",
        [FB_WIRE_R_REPLAYED] = "replayed",
        [FB_WIRE_R_NO_KEYS] = "no_keys",
        [FB_WIRE_R_UNKNOWN_SESSION] = "unknown_session",
        [FB_WIRE_R_INTERNAL] = "internal",
    };

    if ((unsigned)reason >= FB_WIRE_R__COUNT)
        return "unknown";
    return names[reason];
}

const char *fb_wire_type_name(unsigned type)
{
    switch (type) {
    case FB_WIRE_HELLO:
        return "HELLO";
    case FB_WIRE_HELLO_ACK:
        return "HELLO_ACK";
    case FB_WIRE_DATA:
        return "DATA";
    case FB_WIRE_FEEDBACK:
        return "FEEDBACK";
    case FB_WIRE_CLOSE:
        return "CLOSE";
    case FB_WIRE_PROBE:
        return "PROBE";
    default:
        return "unknown";
    }
}

fb_aead_phase fb_wire_type_phase(fb_wire_type type)
{
    return type == FB_WIRE_HELLO || type == FB_WIRE_HELLO_ACK ? FB_AEAD_HANDSHAKE : FB_AEAD_DATA;
}

typedef struct type_rule {
    size_t min_len; /* whole datagram */
    size_t max_len;
    uint8_t flags; /* allowed header flags */
} type_rule;

static const type_rule *rule_for(unsigned type)
{
    static const type_rule rules[] = {
        [FB_WIRE_HELLO] = {FB_WIRE_MIN_DATAGRAM, FB_WIRE_MAX_DATAGRAM, 0},
        [FB_WIRE_HELLO_ACK] = {FB_WIRE_OVERHEAD + FB_WIRE_HELLO_ACK_FIXED,
                               FB_WIRE_OVERHEAD + FB_WIRE_HELLO_ACK_FIXED, 0},
        [FB_WIRE_DATA] = {FB_WIRE_DATA_OVERHEAD + 1, FB_WIRE_MAX_DATAGRAM, /* short header */
                          FB_WIRE_F_DATA_RETRANSMIT | FB_WIRE_F_DATA_LAST},
        [FB_WIRE_FEEDBACK] = {FB_WIRE_OVERHEAD + FB_WIRE_FEEDBACK_FIXED,
                              FB_WIRE_OVERHEAD + FB_WIRE_FEEDBACK_FIXED +
                                  (FB_WIRE_MAX_RANGES + 1) * FB_WIRE_RANGE_LEN, /* + FROM block */
                              FB_WIRE_F_FEEDBACK_MORE | FB_WIRE_F_FEEDBACK_COMPLETE | FB_WIRE_F_FEEDBACK_FROM},
        [FB_WIRE_CLOSE] = {FB_WIRE_OVERHEAD + FB_WIRE_CLOSE_FIXED, FB_WIRE_OVERHEAD + FB_WIRE_CLOSE_FIXED,
                           FB_WIRE_F_CLOSE_UNCHANGED},
        [FB_WIRE_PROBE] = {FB_WIRE_OVERHEAD + FB_WIRE_PROBE_FIXED, FB_WIRE_MAX_DATAGRAM,
                           FB_WIRE_F_PROBE_REPLY},
    };

    if (type < FB_WIRE_HELLO || type > FB_WIRE_PROBE)
        return NULL;
    return &rules[type];
}

/* DATA has the short header, every other type the long one. */
static size_t header_len(unsigned type)
{
    return type == FB_WIRE_DATA ? FB_WIRE_DATA_HEADER_LEN : FB_WIRE_HEADER_LEN;
}

/* ---- header ----------------------------------------------------------------------------- */

static fb_err drop(fb_wire_reason *reason, fb_wire_reason why)
{
    *reason = why;
    return why == FB_WIRE_R_INTERNAL ? FB_ERR_INTERNAL : FB_ERR_PROTOCOL;
}

fb_err fb_wire_peek_header(fb_wire_hdr *hdr, fb_wire_reason *reason, const uint8_t *buf, size_t len)
{
    const wire_hdr *w = (const wire_hdr *)buf;
    const type_rule *rule;

    memset(hdr, 0, sizeof(*hdr));
    *reason = FB_WIRE_R_NONE;
    if (len > FB_WIRE_MAX_DATAGRAM)
        return drop(reason, FB_WIRE_R_OVERSIZED);
    if (buf == NULL || len < 1)
        return drop(reason, FB_WIRE_R_TRUNCATED);
    /* The version byte comes first so stray traffic is counted as foreign, not as damaged. */
    if (buf[0] != FB_WIRE_VERSION_BYTE)
        return drop(reason, FB_WIRE_R_BAD_VERSION);
    if (len < 3)
        return drop(reason, FB_WIRE_R_TRUNCATED);
    rule = rule_for(w->type);
    if (rule == NULL)
        return drop(reason, FB_WIRE_R_BAD_TYPE);
    if (w->type == FB_WIRE_DATA) {
        const wire_data_hdr *d = (const wire_data_hdr *)buf;

        if ((d->flags & ~rule->flags) != 0)
            return drop(reason, FB_WIRE_R_MALFORMED);
        if (len < rule->min_len)
            return drop(reason, FB_WIRE_R_TRUNCATED);
        hdr->type = d->type;
        hdr->flags = d->flags;
        memcpy(hdr->sid, d->slot, sizeof(d->slot));
        hdr->pn = get32(d->pn);
        return FB_OK;
    }
    if (len < FB_WIRE_OVERHEAD)
        return drop(reason, FB_WIRE_R_TRUNCATED);
    if (w->reserved != 0 || (w->flags & ~rule->flags) != 0)
        return drop(reason, FB_WIRE_R_MALFORMED);
    if (w->type == FB_WIRE_FEEDBACK && (w->flags & FB_WIRE_F_FEEDBACK_MORE) &&
        (w->flags & FB_WIRE_F_FEEDBACK_COMPLETE))
        return drop(reason, FB_WIRE_R_MALFORMED);
    if (len < rule->min_len)
        return drop(reason, FB_WIRE_R_TRUNCATED);
    if (len > rule->max_len)
        return drop(reason, FB_WIRE_R_OVERSIZED);
    if (w->type == FB_WIRE_FEEDBACK && !(w->flags & FB_WIRE_F_FEEDBACK_FROM) &&
        len > rule->max_len - FB_WIRE_RANGE_LEN)
        return drop(reason, FB_WIRE_R_OVERSIZED); /* the last 16 bytes are the FROM block's */
    if (w->type == FB_WIRE_FEEDBACK && (len - rule->min_len) % FB_WIRE_RANGE_LEN != 0)
        return drop(reason, FB_WIRE_R_TRUNCATED);
    hdr->type = w->type;
    hdr->flags = w->flags;
    memcpy(hdr->sid, w->sid, FB_WIRE_SID_LEN);
    hdr->pn = get64(w->pn);
    return FB_OK;
}

/* ---- field validation (shared by encoder and decoder) ------------------------------------ */

static int hello_valid(const fb_wire_hello *m)
{
    return one_known_bit(m->cipher, CIPHER_MASK) && one_known_bit(m->policy, POLICY_MASK) &&
           m->max_datagram >= FB_WIRE_MIN_DATAGRAM && (m->target_rate == 0 || m->min_rate <= m->target_rate);
}

static int hello_ack_valid(const fb_wire_hello_ack *m)
{
    if (m->status >= (uint32_t)FB_ERR__COUNT)
        return 0;
    if (m->status != FB_OK)
        return 1; /* a refusal carries no parameters worth checking */
    return one_known_bit(m->cipher, CIPHER_MASK) && one_known_bit(m->policy, POLICY_MASK) &&
           m->max_datagram >= FB_WIRE_MIN_DATAGRAM && (m->target_rate == 0 || m->min_rate <= m->target_rate);
}

static int feedback_valid(const fb_wire_feedback *m, uint8_t flags)
{
    uint64_t prev_end = 0;

    if (m->cum_offset > m->high_offset || m->nranges > FB_WIRE_MAX_RANGES)
        return 0;
    if ((flags & FB_WIRE_F_FEEDBACK_COMPLETE) && (m->nranges != 0 || m->cum_offset != m->high_offset))
        return 0;
    if (m->cum_offset == m->high_offset)
        return m->nranges == 0 && !(flags & (FB_WIRE_F_FEEDBACK_MORE | FB_WIRE_F_FEEDBACK_FROM));
    /* Bytes [cum, high) hold a hole at cum (else cum would be larger) and a received byte at
     * high - 1 (else high would be smaller); holes are listed in order, separated by data. With
     * FROM the listing starts at a later hole, strictly inside (cum, high). */
    if ((flags & FB_WIRE_F_FEEDBACK_FROM) && (m->from_offset <= m->cum_offset || m->from_offset >= m->high_offset))
        return 0;
    if (m->nranges == 0 ||
        m->ranges[0].offset != ((flags & FB_WIRE_F_FEEDBACK_FROM) ? m->from_offset : m->cum_offset))
        return 0;
    for (unsigned i = 0; i < m->nranges; i++) {
        const fb_range *r = &m->ranges[i];

        if (r->length == 0 || r->offset > m->high_offset || r->length > m->high_offset - r->offset)
            return 0;
        if (r->offset + r->length == m->high_offset)
            return 0;
        if (i > 0 && r->offset <= prev_end)
            return 0;
        prev_end = r->offset + r->length;
    }
    return 1;
}

/* ---- encoding --------------------------------------------------------------------------- */

static void write_header(uint8_t *buf, const fb_wire_hdr *hdr, fb_wire_type type)
{
    wire_hdr *w = (wire_hdr *)buf;

    if (type == FB_WIRE_DATA) {
        wire_data_hdr *d = (wire_data_hdr *)buf;

        d->version = FB_WIRE_VERSION_BYTE;
        d->type = (uint8_t)type;
        d->flags = hdr->flags;
        memcpy(d->slot, hdr->sid, sizeof(d->slot));
        put32(d->pn, (uint32_t)hdr->pn);
        return;
    }
    w->version = FB_WIRE_VERSION_BYTE;
    w->type = (uint8_t)type;
    w->flags = hdr->flags;
    w->reserved = 0;
    memcpy(w->sid, hdr->sid, FB_WIRE_SID_LEN);
    put64(w->pn, hdr->pn);
}

/* Checks the size and flags before anything is written; the body follows the header. */
static fb_err encode_check(uint8_t *buf, size_t cap, size_t total, const fb_wire_hdr *hdr, fb_wire_type type,
                           const fb_aead_ctx *ctx)
{
    const type_rule *rule = rule_for(type);

    if (buf == NULL || hdr == NULL || ctx == NULL || (hdr->flags & ~rule->flags) != 0)
        return FB_ERR_INTERNAL;
    if (total > FB_WIRE_MAX_DATAGRAM || total > rule->max_len || total > cap)
        return FB_ERR_TOO_LARGE;
    if (total < rule->min_len)
        return FB_ERR_INTERNAL;
    return FB_OK;
}

static fb_err encode_seal(uint8_t *buf, size_t total, size_t *plen, const fb_wire_hdr *hdr, fb_wire_type type,
                          const fb_aead_ctx *ctx)
{
    size_t hl = header_len(type);
    uint8_t *body = buf + hl;
    fb_err rc = fb_aead_seal(ctx, fb_wire_type_phase(type), hdr->pn, buf, hl, body, body, total - hl - FB_WIRE_TAG_LEN);

    if (rc != FB_OK)
        return rc == FB_ERR_SESSION_STATE ? FB_ERR_SESSION_STATE : FB_ERR_INTERNAL;
    *plen = total;
    return FB_OK;
}

fb_err fb_wire_encode_hello(uint8_t *buf, size_t cap, size_t *plen, const fb_wire_hdr *hdr,
                            const fb_wire_hello *m, const fb_aead_ctx *ctx)
{
    size_t total = m->pad_to < FB_WIRE_MIN_DATAGRAM ? FB_WIRE_MIN_DATAGRAM : m->pad_to;
    wire_hello *w = (wire_hello *)(buf + FB_WIRE_HEADER_LEN);
    fb_err rc;

    *plen = 0;
    if (!hello_valid(m))
        return FB_ERR_INTERNAL;
    rc = encode_check(buf, cap, total, hdr, FB_WIRE_HELLO, ctx);
    if (rc != FB_OK)
        return rc;
    write_header(buf, hdr, FB_WIRE_HELLO);
    memset(w, 0, total - FB_WIRE_OVERHEAD);
    memcpy(w->client_nonce, m->client_nonce, sizeof(w->client_nonce));
    put32(w->cipher, m->cipher);
    put32(w->policy, m->policy);
    put64(w->target_rate, m->target_rate);
    put64(w->min_rate, m->min_rate);
    put64(w->client_ts, m->client_ts_us);
    put16(w->max_datagram, m->max_datagram);
    return encode_seal(buf, total, plen, hdr, FB_WIRE_HELLO, ctx);
}

fb_err fb_wire_encode_hello_ack(uint8_t *buf, size_t cap, size_t *plen, const fb_wire_hdr *hdr,
                                const fb_wire_hello_ack *m, const fb_aead_ctx *ctx)
{
    size_t total = FB_WIRE_OVERHEAD + FB_WIRE_HELLO_ACK_FIXED;
    wire_hello_ack *w = (wire_hello_ack *)(buf + FB_WIRE_HEADER_LEN);
    fb_err rc;

    *plen = 0;
    if (!hello_ack_valid(m))
        return FB_ERR_INTERNAL;
    rc = encode_check(buf, cap, total, hdr, FB_WIRE_HELLO_ACK, ctx);
    if (rc != FB_OK)
        return rc;
    write_header(buf, hdr, FB_WIRE_HELLO_ACK);
    memset(w, 0, sizeof(*w));
    memcpy(w->client_nonce, m->client_nonce, sizeof(w->client_nonce));
    memcpy(w->server_nonce, m->server_nonce, sizeof(w->server_nonce));
    put32(w->status, m->status);
    put32(w->cipher, m->cipher);
    put32(w->policy, m->policy);
    put64(w->target_rate, m->target_rate);
    put64(w->min_rate, m->min_rate);
    put64(w->echo_ts, m->echo_ts_us);
    put32(w->hold, m->hold_us);
    put16(w->max_datagram, m->max_datagram);
    put64(w->server_ts, m->server_ts_us);
    return encode_seal(buf, total, plen, hdr, FB_WIRE_HELLO_ACK, ctx);
}

fb_err fb_wire_encode_data(uint8_t *buf, size_t cap, size_t *plen, const fb_wire_hdr *hdr,
                           const fb_wire_data *m, const fb_aead_ctx *ctx)
{
    wire_data *w = (wire_data *)(buf + FB_WIRE_DATA_HEADER_LEN);
    uint8_t *payload = buf + FB_WIRE_DATA_PAYLOAD_OFF;
    size_t total;
    fb_err rc;

    *plen = 0;
    if (m->len == 0 || m->payload == NULL || m->offset > UINT64_MAX - m->len)
        return FB_ERR_INTERNAL;
    if (m->len > FB_WIRE_MAX_PAYLOAD)
        return FB_ERR_TOO_LARGE;
    total = FB_WIRE_DATA_OVERHEAD + m->len;
    rc = encode_check(buf, cap, total, hdr, FB_WIRE_DATA, ctx);
    if (rc != FB_OK)
        return rc;
    /* The payload first: it may overlap the header area of BUF (memmove copes), and may
     * already be in place (the sender read the file straight into the datagram). */
    if (m->payload != payload)
        memmove(payload, m->payload, m->len);
    write_header(buf, hdr, FB_WIRE_DATA);
    put64(w->offset, m->offset);
    put32(w->send_ts, (uint32_t)m->send_ts_us);
    return encode_seal(buf, total, plen, hdr, FB_WIRE_DATA, ctx);
}

fb_err fb_wire_encode_feedback(uint8_t *buf, size_t cap, size_t *plen, const fb_wire_hdr *hdr,
                               const fb_wire_feedback *m, const fb_aead_ctx *ctx)
{
    wire_feedback *w = (wire_feedback *)(buf + FB_WIRE_HEADER_LEN);
    size_t total, from;
    fb_err rc;

    *plen = 0;
    if (hdr == NULL || !feedback_valid(m, hdr->flags))
        return FB_ERR_INTERNAL;
    from = (hdr->flags & FB_WIRE_F_FEEDBACK_FROM) ? FB_WIRE_RANGE_LEN : 0;
    total = FB_WIRE_OVERHEAD + FB_WIRE_FEEDBACK_FIXED + from + (size_t)m->nranges * FB_WIRE_RANGE_LEN;
    rc = encode_check(buf, cap, total, hdr, FB_WIRE_FEEDBACK, ctx);
    if (rc != FB_OK)
        return rc;
    write_header(buf, hdr, FB_WIRE_FEEDBACK);
    memset(w, 0, sizeof(*w));
    put64(w->cum_offset, m->cum_offset);
    put64(w->high_offset, m->high_offset);
    put64(w->recv_bytes, m->recv_bytes);
    put64(w->recv_rate, m->recv_rate);
    put64(w->echo_ts, m->echo_ts_us);
    put64(w->echo_recv_ts, m->echo_recv_ts_us);
    put32(w->hold, m->hold_us);
    put16(w->nranges, m->nranges);
    put16(w->delay_lag, m->delay_lag_us);
    if (from) {
        wire_from *f = (wire_from *)(buf + FB_WIRE_HEADER_LEN + FB_WIRE_FEEDBACK_FIXED);

        memset(f, 0, sizeof(*f));
        put64(f->from_offset, m->from_offset);
    }
    for (unsigned i = 0; i < m->nranges; i++) {
        wire_range *r = (wire_range *)(buf + FB_WIRE_HEADER_LEN + FB_WIRE_FEEDBACK_FIXED + from +
                                       i * FB_WIRE_RANGE_LEN);

        put64(r->offset, m->ranges[i].offset);
        put64(r->length, m->ranges[i].length);
    }
    return encode_seal(buf, total, plen, hdr, FB_WIRE_FEEDBACK, ctx);
}

fb_err fb_wire_encode_close(uint8_t *buf, size_t cap, size_t *plen, const fb_wire_hdr *hdr,
                            const fb_wire_close *m, const fb_aead_ctx *ctx)
{
    size_t total = FB_WIRE_OVERHEAD + FB_WIRE_CLOSE_FIXED;
    wire_close *w = (wire_close *)(buf + FB_WIRE_HEADER_LEN);
    fb_err rc;

    *plen = 0;
    if (m->reason >= (uint32_t)FB_ERR__COUNT || ((hdr->flags & FB_WIRE_F_CLOSE_UNCHANGED) && m->reason != FB_OK))
        return FB_ERR_INTERNAL;
    rc = encode_check(buf, cap, total, hdr, FB_WIRE_CLOSE, ctx);
    if (rc != FB_OK)
        return rc;
    write_header(buf, hdr, FB_WIRE_CLOSE);
    memset(w, 0, sizeof(*w));
    put32(w->reason, m->reason);
    return encode_seal(buf, total, plen, hdr, FB_WIRE_CLOSE, ctx);
}

fb_err fb_wire_encode_probe(uint8_t *buf, size_t cap, size_t *plen, const fb_wire_hdr *hdr,
                            const fb_wire_probe *m, const fb_aead_ctx *ctx)
{
    size_t minimal = FB_WIRE_OVERHEAD + FB_WIRE_PROBE_FIXED;
    size_t total = m->pad_to < minimal ? minimal : m->pad_to;
    wire_probe *w = (wire_probe *)(buf + FB_WIRE_HEADER_LEN);
    fb_err rc;

    *plen = 0;
    rc = encode_check(buf, cap, total, hdr, FB_WIRE_PROBE, ctx);
    if (rc != FB_OK)
        return rc;
    write_header(buf, hdr, FB_WIRE_PROBE);
    memset(w, 0, total - FB_WIRE_OVERHEAD);
    put64(w->probe_id, m->probe_id);
    put64(w->ts, m->ts_us);
    put32(w->hold, m->hold_us);
    return encode_seal(buf, total, plen, hdr, FB_WIRE_PROBE, ctx);
}

fb_err fb_wire_encode(uint8_t *buf, size_t cap, size_t *plen, const fb_wire_pkt *pkt, const fb_aead_ctx *ctx)
{
    *plen = 0;
    switch (pkt->hdr.type) {
    case FB_WIRE_HELLO:
        return fb_wire_encode_hello(buf, cap, plen, &pkt->hdr, &pkt->u.hello, ctx);
    case FB_WIRE_HELLO_ACK:
        return fb_wire_encode_hello_ack(buf, cap, plen, &pkt->hdr, &pkt->u.hello_ack, ctx);
    case FB_WIRE_DATA:
        return fb_wire_encode_data(buf, cap, plen, &pkt->hdr, &pkt->u.data, ctx);
    case FB_WIRE_FEEDBACK:
        return fb_wire_encode_feedback(buf, cap, plen, &pkt->hdr, &pkt->u.feedback, ctx);
    case FB_WIRE_CLOSE:
        return fb_wire_encode_close(buf, cap, plen, &pkt->hdr, &pkt->u.close, ctx);
    case FB_WIRE_PROBE:
        return fb_wire_encode_probe(buf, cap, plen, &pkt->hdr, &pkt->u.probe, ctx);
    default:
        return FB_ERR_INTERNAL;
    }
}

/* ---- decoding --------------------------------------------------------------------------- */

/* Parses the authenticated plaintext BODY (BODYLEN bytes) of a packet of type HDR->type. */
static int parse_body(fb_wire_pkt *pkt, const uint8_t *body, size_t bodylen)
{
    switch (pkt->hdr.type) {
    case FB_WIRE_HELLO: {
        const wire_hello *w = (const wire_hello *)body;
        fb_wire_hello *m = &pkt->u.hello;

        memcpy(m->client_nonce, w->client_nonce, sizeof(m->client_nonce));
        m->cipher = get32(w->cipher);
        m->policy = get32(w->policy);
        m->target_rate = get64(w->target_rate);
        m->min_rate = get64(w->min_rate);
        m->client_ts_us = get64(w->client_ts);
        m->max_datagram = get16(w->max_datagram);
        m->pad_to = pkt->datagram_len;
        return all_zero(w->reserved, sizeof(w->reserved)) &&
               all_zero(body + sizeof(*w), bodylen - sizeof(*w)) && hello_valid(m);
    }
    case FB_WIRE_HELLO_ACK: {
        const wire_hello_ack *w = (const wire_hello_ack *)body;
        fb_wire_hello_ack *m = &pkt->u.hello_ack;

        memcpy(m->client_nonce, w->client_nonce, sizeof(m->client_nonce));
        memcpy(m->server_nonce, w->server_nonce, sizeof(m->server_nonce));
        m->status = get32(w->status);
        m->cipher = get32(w->cipher);
        m->policy = get32(w->policy);
        m->target_rate = get64(w->target_rate);
        m->min_rate = get64(w->min_rate);
        m->echo_ts_us = get64(w->echo_ts);
        m->hold_us = get32(w->hold);
        m->max_datagram = get16(w->max_datagram);
        m->server_ts_us = get64(w->server_ts);
        return all_zero(w->reserved, sizeof(w->reserved)) && all_zero(w->reserved2, sizeof(w->reserved2)) &&
               hello_ack_valid(m);
    }
    case FB_WIRE_DATA: {
        const wire_data *w = (const wire_data *)body;
        fb_wire_data *m = &pkt->u.data;

        m->offset = get64(w->offset);
        m->send_ts_us = get32(w->send_ts);
        m->payload = body + sizeof(*w);
        m->len = bodylen - sizeof(*w);
        return m->offset <= UINT64_MAX - m->len;
    }
    case FB_WIRE_FEEDBACK: {
        const wire_feedback *w = (const wire_feedback *)body;
        fb_wire_feedback *m = &pkt->u.feedback;
        size_t from = (pkt->hdr.flags & FB_WIRE_F_FEEDBACK_FROM) ? FB_WIRE_RANGE_LEN : 0;
        size_t listed;

        if (bodylen < sizeof(*w) + from)
            return 0;
        listed = (bodylen - sizeof(*w) - from) / FB_WIRE_RANGE_LEN;

        m->cum_offset = get64(w->cum_offset);
        m->high_offset = get64(w->high_offset);
        m->recv_bytes = get64(w->recv_bytes);
        m->recv_rate = get64(w->recv_rate);
        m->echo_ts_us = get64(w->echo_ts);
        m->echo_recv_ts_us = get64(w->echo_recv_ts);
        m->hold_us = get32(w->hold);
        m->nranges = get16(w->nranges);
        m->delay_lag_us = get16(w->delay_lag);
        if (m->nranges != listed || listed > FB_WIRE_MAX_RANGES)
            return 0;
        m->from_offset = m->cum_offset;
        if (from) {
            const wire_from *f = (const wire_from *)(body + sizeof(*w));

            if (!all_zero(f->reserved, sizeof(f->reserved)))
                return 0;
            m->from_offset = get64(f->from_offset);
        }
        for (size_t i = 0; i < listed; i++) {
            const wire_range *r = (const wire_range *)(body + sizeof(*w) + from + i * FB_WIRE_RANGE_LEN);

            m->ranges[i].offset = get64(r->offset);
            m->ranges[i].length = get64(r->length);
        }
        return feedback_valid(m, pkt->hdr.flags);
    }
    case FB_WIRE_CLOSE: {
        const wire_close *w = (const wire_close *)body;

        pkt->u.close.reason = get32(w->reason);
        /* "unchanged" only ends a transfer that finished normally */
        if ((pkt->hdr.flags & FB_WIRE_F_CLOSE_UNCHANGED) && pkt->u.close.reason != FB_OK)
            return 0;
        return pkt->u.close.reason < (uint32_t)FB_ERR__COUNT && all_zero(w->reserved, sizeof(w->reserved));
    }
    case FB_WIRE_PROBE: {
        const wire_probe *w = (const wire_probe *)body;
        fb_wire_probe *m = &pkt->u.probe;

        m->probe_id = get64(w->probe_id);
        m->ts_us = get64(w->ts);
        m->hold_us = get32(w->hold);
        m->pad_to = pkt->datagram_len;
        return all_zero(w->reserved, sizeof(w->reserved)) &&
               all_zero(body + sizeof(*w), bodylen - sizeof(*w));
    }
    default:
        return 0;
    }
}

fb_err fb_wire_open(fb_wire_pkt *pkt, fb_wire_reason *reason, uint8_t *buf, size_t len,
                    const fb_aead_ctx *ctx, fb_replay *replay)
{
    fb_aead_phase phase;
    uint8_t *body;
    size_t bodylen, hl;
    fb_err rc;

    memset(pkt, 0, sizeof(*pkt));
    rc = fb_wire_peek_header(&pkt->hdr, reason, buf, len);
    if (rc != FB_OK)
        goto fail;
    phase = fb_wire_type_phase((fb_wire_type)pkt->hdr.type);
    /* Handshake packets carry random packet numbers and are deduplicated by their nonces. */
    if (phase == FB_AEAD_HANDSHAKE)
        replay = NULL;
    /* DATA's low 32 bits: the whole number is the one nearest to what the window expects next
     * (a wrong guess fails the tag, as the nonce is built from the whole number). */
    if (pkt->hdr.type == FB_WIRE_DATA)
        pkt->hdr.pn = fb_wire_pn_restore(replay != NULL ? replay->top : 0, replay != NULL && replay->any,
                                         (uint32_t)pkt->hdr.pn);
    if (replay != NULL && !fb_replay_check(replay, pkt->hdr.pn)) {
        rc = drop(reason, FB_WIRE_R_REPLAYED);
        goto fail;
    }
    hl = header_len(pkt->hdr.type);
    body = buf + hl;
    bodylen = len - hl - FB_WIRE_TAG_LEN;
    rc = fb_aead_open(ctx, phase, pkt->hdr.pn, buf, hl, body, body, len - hl);
    if (rc != FB_OK) {
        rc = drop(reason, rc == FB_ERR_AUTH            ? FB_WIRE_R_AUTH_FAILED
                          : rc == FB_ERR_SESSION_STATE ? FB_WIRE_R_NO_KEYS
                                                       : FB_WIRE_R_INTERNAL);
        goto fail;
    }
    pkt->datagram_len = len;
    if (!parse_body(pkt, body, bodylen)) {
        rc = drop(reason, FB_WIRE_R_MALFORMED);
        goto fail;
    }
    if (replay != NULL)
        fb_replay_update(replay, pkt->hdr.pn);
    *reason = FB_WIRE_R_NONE;
    return FB_OK;
fail : {
    fb_wire_reason why = *reason;

    memset(pkt, 0, sizeof(*pkt));
    *reason = why;
}
    return rc;
}

/* ---- session ids ------------------------------------------------------------------------ */

fb_err fb_wire_sid_from_string(uint8_t sid[FB_WIRE_SID_LEN], const char *id)
{
    if (id == NULL || strlen(id) != FB_WIRE_SID_HEX_LEN)
        return FB_ERR_BAD_REQUEST;
    return fb_hex_decode(sid, FB_WIRE_SID_LEN, id);
}

void fb_wire_sid_to_string(char out[FB_WIRE_SID_HEX_LEN + 1], const uint8_t sid[FB_WIRE_SID_LEN])
{
    fb_hex_encode(out, sid, FB_WIRE_SID_LEN);
}

uint32_t fb_wire_sid_slot(const uint8_t sid[FB_WIRE_SID_LEN])
{
    return get32(sid);
}

int fb_wire_names_session(const fb_wire_hdr *hdr, const uint8_t sid[FB_WIRE_SID_LEN])
{
    return memcmp(hdr->sid, sid, 4) == 0 &&
           (hdr->type == FB_WIRE_DATA || fb_mem_equal_ct(hdr->sid + 4, sid + 4, FB_WIRE_SID_LEN - 4));
}

uint64_t fb_wire_ts_unwrap(uint64_t now_us, uint64_t ts)
{
    return now_us - (uint32_t)((uint32_t)now_us - (uint32_t)ts);
}

uint64_t fb_wire_pn_restore(uint64_t top, int any, uint32_t low32)
{
    const uint64_t win = 1ull << 32, half = win / 2;
    uint64_t expected = any ? top + 1 : 0, cand = (expected & ~(win - 1)) | low32;

    if (expected >= half && cand <= expected - half && cand <= UINT64_MAX - win)
        return cand + win;
    if (cand > expected + half && cand >= win)
        return cand - win;
    return cand;
}
