/* fb_assoc: the UDP association handshake of both ends (fb_assoc.h, docs/PROTOCOL.md section 7):
 * pure code, no I/O, no clock. */
#include "fb_assoc.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "fb_config.h"
#include "fb_util.h"

/* PROTOCOL.md 3: HELLO_ACK is exactly 132 bytes, below the 1200 of the smallest HELLO. */
_Static_assert(FB_ASSOC_ACK_LEN == 132 && FB_ASSOC_ACK_LEN < FB_WIRE_MIN_DATAGRAM, "HELLO_ACK size");

struct fb_assoc_server {
    fb_assoc_server_params p;
    uint8_t *copy; /* a datagram kept for a second key (FB_WIRE_MAX_DATAGRAM bytes) */
};

fb_err fb_assoc_random_os(void *ctx, uint8_t *buf, size_t len)
{
    (void)ctx;
    return fb_random_bytes(buf, len);
}

/* ---- addresses -------------------------------------------------------------------------------- */

void fb_assoc_addr_set(fb_assoc_addr *a, const struct sockaddr *sa, socklen_t len)
{
    memset(a, 0, sizeof(*a));
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        struct sockaddr_in *out = (struct sockaddr_in *)(void *)&a->ss;

        out->sin_family = AF_INET;
        out->sin_port = in->sin_port;
        out->sin_addr = in->sin_addr;
        a->len = sizeof(*out);
    } else if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in = (const struct sockaddr_in6 *)(const void *)sa;
        struct sockaddr_in6 *out = (struct sockaddr_in6 *)(void *)&a->ss;

        out->sin6_family = AF_INET6;
        out->sin6_port = in->sin6_port;
        out->sin6_addr = in->sin6_addr;
        out->sin6_scope_id = in->sin6_scope_id;
        a->len = sizeof(*out);
    }
    /* anything else stays the empty address, equal to no real peer's */
}

int fb_assoc_addr_equal(const fb_assoc_addr *a, const fb_assoc_addr *b)
{
    return a->len != 0 && a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

/* ---- client ----------------------------------------------------------------------------------- */

void fb_assoc_client_init(fb_assoc_client *c, const fb_assoc_client_params *p, fb_aead_ctx *aead)
{
    memset(c, 0, sizeof(*c));
    c->p = *p;
    if (c->p.max_datagram < FB_WIRE_MIN_DATAGRAM)
        c->p.max_datagram = FB_WIRE_MIN_DATAGRAM;
    c->aead = aead;
    c->refused = FB_OK;
}

fb_err fb_assoc_client_hello(fb_assoc_client *c, uint8_t *buf, size_t cap, size_t *plen, uint64_t now,
                             int fresh)
{
    fb_wire_hdr hdr;
    fb_wire_hello h;
    fb_err e;

    *plen = 0;
    if (fresh) {
        if ((e = c->p.random(c->p.random_ctx, c->cnonce, sizeof(c->cnonce))) != FB_OK ||
            (e = c->p.random(c->p.random_ctx, (uint8_t *)&c->hello_pn, sizeof(c->hello_pn))) != FB_OK)
            return e;
        c->pending = 1;
        c->rto_us = FB_ASSOC_HELLO_RTO_US;
        c->refused = FB_OK;
    } else {
        if (!c->pending)
            return FB_ERR_SESSION_STATE;
        c->rto_us *= 2;
        c->hello_pn++; /* another random-looking number: a retransmission is a new packet */
    }
    memset(&hdr, 0, sizeof(hdr));
    memset(&h, 0, sizeof(h));
    memcpy(hdr.sid, c->p.sid, sizeof(hdr.sid));
    hdr.pn = c->hello_pn;
    memcpy(h.client_nonce, c->cnonce, sizeof(h.client_nonce));
    h.cipher = c->p.cipher;
    h.policy = c->p.policy;
    h.target_rate = c->p.target_rate;
    h.min_rate = c->p.min_rate;
    h.client_ts_us = now;
    h.max_datagram = c->p.max_datagram;
    h.pad_to = c->p.max_datagram; /* the path is checked at the size we want to use */
    c->sent_us = now;
    return fb_wire_encode_hello(buf, cap, plen, &hdr, &h, c->aead);
}

uint64_t fb_assoc_client_next_time(const fb_assoc_client *c)
{
    return c->pending ? c->sent_us + c->rto_us : UINT64_MAX;
}

void fb_assoc_client_cancel(fb_assoc_client *c)
{
    c->pending = 0;
}

fb_assoc_client_event fb_assoc_client_input(fb_assoc_client *c, uint8_t *buf, size_t len, uint64_t now)
{
    fb_wire_hdr hdr;
    fb_wire_pkt pkt;
    fb_wire_reason why;
    fb_wire_hello_ack *a = &pkt.u.hello_ack;
    fb_err st;

    if (fb_wire_peek_header(&hdr, &why, buf, len) != FB_OK || !fb_wire_names_session(&hdr, c->p.sid))
        return FB_ASSOC_C_DROP;
    if (hdr.type != FB_WIRE_HELLO_ACK)
        return hdr.type == FB_WIRE_HELLO ? FB_ASSOC_C_DROP : FB_ASSOC_C_DATA_PHASE;
    if (!c->pending || fb_wire_open(&pkt, &why, buf, len, c->aead, NULL) != FB_OK ||
        memcmp(a->client_nonce, c->cnonce, sizeof(c->cnonce)) != 0)
        return FB_ASSOC_C_DROP;
    c->pending = 0;
    st = (fb_err)a->status;
    if (st == FB_OK && a->cipher == FB_CIPHER_NONE && c->p.cipher != FB_CIPHER_NONE)
        st = FB_ERR_SERVER_REFUSED; /* never less protection than asked for */
    if (st == FB_OK && (a->max_datagram < FB_WIRE_MIN_DATAGRAM ||
                        fb_aead_set_data_keys(c->aead, a->cipher, c->cnonce, a->server_nonce) != FB_OK))
        st = FB_ERR_PROTOCOL;
    if (st != FB_OK) {
        c->refused = st;
        return FB_ASSOC_C_REFUSED;
    }
    c->ack = *a;
    c->rtt_us = now > a->echo_ts_us + a->hold_us ? now - a->echo_ts_us - a->hold_us : 0;
    c->max_dgram = a->max_datagram < c->p.max_datagram ? a->max_datagram : c->p.max_datagram;
    return FB_ASSOC_C_ACCEPTED;
}

/* ---- server: one session ---------------------------------------------------------------------- */

static void link_clear(fb_assoc_link *a)
{
    fb_aead_free(a->aead); /* wipes the keys */
    OPENSSL_cleanse(a, sizeof(*a));
}

fb_err fb_assoc_srv_init(fb_assoc_srv *s, const uint8_t sid[FB_WIRE_SID_LEN],
                         const uint8_t key[FB_AEAD_SESSION_KEY_LEN], unsigned slot_cipher, void *user)
{
    fb_err e;

    memset(s, 0, sizeof(*s));
    e = fb_aead_new(&s->hs, key, FB_AEAD_SERVER);
    if (e != FB_OK)
        return e;
    memcpy(s->sid, sid, sizeof(s->sid));
    memcpy(s->key, key, sizeof(s->key));
    s->slot_cipher = slot_cipher;
    s->user = user;
    return FB_OK;
}

void fb_assoc_srv_clear(fb_assoc_srv *s)
{
    link_clear(&s->cur);
    link_clear(&s->pend);
    fb_aead_free(s->hs);
    OPENSSL_cleanse(s, sizeof(*s)); /* the session key with it */
}

void fb_assoc_srv_end(fb_assoc_srv *s)
{
    link_clear(&s->cur);
}

void fb_assoc_srv_promote(fb_assoc_srv *s)
{
    if (!s->pend.live)
        return;
    link_clear(&s->cur);
    s->cur = s->pend;
    memset(&s->pend, 0, sizeof(s->pend)); /* its keys moved, not copied */
}

int fb_assoc_srv_expire(fb_assoc_srv *s, uint64_t now)
{
    if (s->pend.live && now - s->pend.last_rx_us > FB_ASSOC_IDLE_US)
        link_clear(&s->pend);
    return s->cur.live && now - s->cur.last_rx_us > FB_ASSOC_IDLE_US;
}

static int nonce_seen(const fb_assoc_srv *s, const uint8_t *nonce)
{
    for (unsigned i = 0; i < s->nseen; i++)
        if (memcmp(s->seen[i], nonce, FB_AEAD_HELLO_NONCE_LEN) == 0)
            return 1;
    return 0;
}

static void nonce_remember(fb_assoc_srv *s, const uint8_t *nonce)
{
    memcpy(s->seen[s->seen_next], nonce, FB_AEAD_HELLO_NONCE_LEN);
    s->seen_next = (s->seen_next + 1) % FB_ASSOC_NONCE_MEMORY;
    if (s->nseen < FB_ASSOC_NONCE_MEMORY)
        s->nseen++;
}

/* ---- server: negotiation ---------------------------------------------------------------------- */

/* PROTOCOL.md 7.2: the slot's cipher if the session fixed one; else the requested one if allowed;
 * else an allowed AES-GCM cipher; 0 = refuse. */
static unsigned choose_cipher(const fb_assoc_policy *p, unsigned slot_cipher, uint32_t requested)
{
    if (slot_cipher != 0)
        return slot_cipher;
    if (requested & p->allowed_ciphers)
        return requested;
    if (p->allowed_ciphers & FB_CIPHER_AES128_GCM)
        return FB_CIPHER_AES128_GCM;
    if (p->allowed_ciphers & FB_CIPHER_AES256_GCM)
        return FB_CIPHER_AES256_GCM;
    return 0;
}

/* The requested policy if allowed, else fair if allowed; 0 = refuse. */
static unsigned choose_policy(const fb_assoc_policy *p, uint32_t requested)
{
    if (requested & p->allowed_policies)
        return requested;
    return (p->allowed_policies & FB_POLICY_FAIR) ? FB_POLICY_FAIR : 0;
}

static void choose_rates(const fb_assoc_policy *p, const fb_wire_hello *h, fb_assoc_link *a)
{
    uint64_t cap = p->target_rate_cap, mincap = p->min_rate_cap;
    uint64_t target = h->target_rate ? h->target_rate : (cap ? cap : p->default_rate), min = h->min_rate;

    if (cap && target > cap)
        target = cap;
    if (mincap && min > mincap)
        min = mincap;
    if (min > target)
        min = target;
    a->target_rate = target;
    a->min_rate = min;
}

/* The answer to a HELLO of HELLO_LEN bytes into OUT: for the association A it created or repeats,
 * or a refusal (A NULL, sealed with the handshake keys). Never larger than the HELLO. */
static void hello_ack(fb_assoc_server *srv, fb_assoc_srv *s, fb_assoc_out *out, const fb_assoc_link *a,
                      const fb_wire_hello *h, fb_err status, size_t hello_len, uint64_t now)
{
    fb_wire_hdr hdr;
    fb_wire_hello_ack ack;
    size_t len = 0;

    out->len = 0;
    /* The codec pads every HELLO to 1200 bytes; the answer is 132. */
    if (FB_ASSOC_ACK_LEN > hello_len)
        return;
    memset(&hdr, 0, sizeof(hdr));
    memset(&ack, 0, sizeof(ack));
    memcpy(hdr.sid, s->sid, sizeof(hdr.sid));
    /* Handshake packets carry random numbers (their keys are per session, not per association). */
    if (srv->p.random(srv->p.ctx, (uint8_t *)&hdr.pn, sizeof(hdr.pn)) != FB_OK)
        return;
    memcpy(ack.client_nonce, h->client_nonce, sizeof(ack.client_nonce));
    ack.status = (uint32_t)status;
    ack.echo_ts_us = h->client_ts_us;
    ack.hold_us = 0; /* answered within the batch it arrived in */
    ack.server_ts_us = now;
    if (a != NULL) {
        memcpy(ack.server_nonce, a->snonce, sizeof(ack.server_nonce));
        ack.cipher = a->cipher;
        ack.policy = a->policy;
        ack.target_rate = a->target_rate;
        ack.min_rate = a->min_rate;
        ack.max_datagram = a->max_dgram;
    } else if (srv->p.random(srv->p.ctx, ack.server_nonce, sizeof(ack.server_nonce)) != FB_OK) {
        return;
    }
    if (fb_wire_encode_hello_ack(out->dgram, sizeof(out->dgram), &len, &hdr, &ack, a ? a->aead : s->hs) ==
        FB_OK)
        out->len = len;
}

static fb_assoc_event on_hello(fb_assoc_server *srv, fb_assoc_srv *s, fb_assoc_out *out,
                               const fb_wire_pkt *pkt, const fb_assoc_addr *from, uint64_t now)
{
    const fb_assoc_server_params *p = &srv->p;
    const fb_wire_hello *h = &pkt->u.hello;
    unsigned cipher, policy;
    fb_assoc_link *a;
    fb_err st = FB_OK;

    /* The same HELLO again: our answer was lost; the same answer (same server nonce). From
     * anywhere else it is a replay. */
    for (int k = 0; k < 2; k++) {
        a = k == 0 ? &s->pend : &s->cur;
        if (a->live && memcmp(h->client_nonce, a->cnonce, sizeof(a->cnonce)) == 0) {
            if (!fb_assoc_addr_equal(from, &a->peer))
                return FB_ASSOC_HELLO_REPLAYED;
            hello_ack(srv, s, out, a, h, FB_OK, pkt->datagram_len, now);
            return FB_ASSOC_HELLO_AGAIN;
        }
    }
    if (nonce_seen(s, h->client_nonce))
        return FB_ASSOC_HELLO_REPLAYED;
    nonce_remember(s, h->client_nonce);

    if ((cipher = choose_cipher(&p->policy, s->slot_cipher, h->cipher)) == 0) {
        st = FB_ERR_PERMISSION;
        out->detail = "no allowed cipher";
    } else if ((policy = choose_policy(&p->policy, h->policy)) == 0) {
        st = FB_ERR_PERMISSION;
        out->detail = "policy not allowed";
    } else if (p->admit != NULL) {
        st = p->admit(p->ctx, s, now, &out->detail);
    }
    if (st != FB_OK) {
        out->status = st;
        hello_ack(srv, s, out, NULL, h, st, pkt->datagram_len, now);
        return FB_ASSOC_HELLO_REFUSED;
    }
    /* A new pending association replaces an older pending one; the running one goes on until
     * this one is validated. */
    link_clear(&s->pend);
    a = &s->pend;
    if (fb_aead_new(&a->aead, s->key, FB_AEAD_SERVER) != FB_OK ||
        p->random(p->ctx, a->snonce, sizeof(a->snonce)) != FB_OK ||
        fb_aead_set_data_keys(a->aead, cipher, h->client_nonce, a->snonce) != FB_OK) {
        link_clear(a);
        return FB_ASSOC_HELLO_FAILED;
    }
    a->live = 1;
    memcpy(a->cnonce, h->client_nonce, sizeof(a->cnonce));
    a->cipher = cipher;
    a->policy = policy;
    choose_rates(&p->policy, h, a);
    a->max_dgram = h->max_datagram < p->policy.max_datagram ? h->max_datagram : p->policy.max_datagram;
    a->peer = *from;
    fb_replay_init(&a->replay);
    a->last_rx_us = now;
    hello_ack(srv, s, out, a, h, FB_OK, pkt->datagram_len, now);
    return FB_ASSOC_HELLO_PENDING;
}

/* ---- server: input ---------------------------------------------------------------------------- */

fb_err fb_assoc_server_new(fb_assoc_server **psrv, const fb_assoc_server_params *p)
{
    fb_assoc_server *srv;

    *psrv = NULL;
    if (p->random == NULL || p->lookup == NULL || p->policy.max_datagram < FB_WIRE_MIN_DATAGRAM)
        return FB_ERR_INTERNAL;
    srv = calloc(1, sizeof(*srv));
    if (srv == NULL)
        return FB_ERR_NOMEM;
    srv->p = *p;
    srv->copy = malloc(FB_WIRE_MAX_DATAGRAM);
    if (srv->copy == NULL) {
        free(srv);
        return FB_ERR_NOMEM;
    }
    *psrv = srv;
    return FB_OK;
}

void fb_assoc_server_set_policy(fb_assoc_server *srv, const fb_assoc_policy *policy)
{
    srv->p.policy = *policy;
    if (srv->p.policy.max_datagram < FB_WIRE_MIN_DATAGRAM)
        srv->p.policy.max_datagram = FB_WIRE_MIN_DATAGRAM;
}

void fb_assoc_server_free(fb_assoc_server *srv)
{
    if (srv == NULL)
        return;
    free(srv->copy);
    free(srv);
}

/* Data phase: the pending association first (its first packet validates it), then the running
 * one; a new address needs a new HELLO. */
static fb_assoc_event on_data_phase(fb_assoc_server *srv, fb_assoc_srv *s, fb_assoc_out *out, uint8_t *buf,
                                    size_t len, const fb_assoc_addr *from, uint64_t now)
{
    int pend_match = s->pend.live && fb_assoc_addr_equal(from, &s->pend.peer);
    int cur_match = s->cur.live && fb_assoc_addr_equal(from, &s->cur.peer);

    if (!pend_match && !cur_match) {
        if (s->cur.live || s->pend.live)
            return FB_ASSOC_DROP_ADDRESS;
        out->reason = FB_WIRE_R_NO_KEYS; /* no association: e.g. udpd restarted; the client re-handshakes */
        return FB_ASSOC_DROP;
    }
    if (pend_match) {
        /* A failed open leaves the buffer decrypted in place: keep a copy for the running
         * association when both could own it (the client re-handshakes from the same port). */
        uint8_t *copy = NULL;

        if (cur_match && len <= FB_WIRE_MAX_DATAGRAM) {
            memcpy(srv->copy, buf, len);
            copy = srv->copy;
        }
        if (fb_wire_open(&out->pkt, &out->reason, buf, len, s->pend.aead, &s->pend.replay) == FB_OK) {
            s->pend.last_rx_us = now;
            return FB_ASSOC_VALIDATED;
        }
        if (copy == NULL)
            return FB_ASSOC_DROP;
        buf = copy;
    }
    if (fb_wire_open(&out->pkt, &out->reason, buf, len, s->cur.aead, &s->cur.replay) != FB_OK)
        return FB_ASSOC_DROP;
    s->cur.last_rx_us = now;
    return FB_ASSOC_PACKET;
}

fb_assoc_event fb_assoc_server_input(fb_assoc_server *srv, fb_assoc_out *out, uint8_t *buf, size_t len,
                                     const fb_assoc_addr *from, uint64_t now)
{
    fb_wire_hdr hdr;
    fb_assoc_srv *s;

    out->srv = NULL;
    out->reason = FB_WIRE_R_NONE;
    out->status = FB_OK;
    out->detail = NULL;
    out->len = 0;
    if (fb_wire_peek_header(&hdr, &out->reason, buf, len) != FB_OK)
        return FB_ASSOC_DROP;
    /* Server-to-client types are never accepted (and reflected ones would not authenticate). */
    if (hdr.type == FB_WIRE_HELLO_ACK)
        return FB_ASSOC_DROP_UNEXPECTED;
    s = srv->p.lookup(srv->p.ctx, &hdr, now, &out->reason);
    if (s == NULL) {
        if (out->reason == FB_WIRE_R_NONE)
            out->reason = FB_WIRE_R_UNKNOWN_SESSION;
        return FB_ASSOC_DROP;
    }
    out->srv = s;
    if (!fb_wire_names_session(&hdr, s->sid)) {
        out->reason = FB_WIRE_R_UNKNOWN_SESSION;
        return FB_ASSOC_DROP;
    }
    if (hdr.type != FB_WIRE_HELLO)
        return on_data_phase(srv, s, out, buf, len, from, now);
    if (fb_wire_open(&out->pkt, &out->reason, buf, len, s->hs, NULL) != FB_OK)
        return FB_ASSOC_DROP;
    return on_hello(srv, s, out, &out->pkt, from, now);
}
