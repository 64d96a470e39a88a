/* assoc_world: the test world of check_assoc (assoc_world.h). */
#include "assoc_world.h"

#include <arpa/inet.h>
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "fb_config.h"
#include "fb_util.h"

fb_err rnd(void *ctx, uint8_t *buf, size_t len)
{
    world *w = ctx;

    for (size_t i = 0; i < len; i++) {
        w->rng ^= w->rng << 13;
        w->rng ^= w->rng >> 7;
        w->rng ^= w->rng << 17;
        buf[i] = (uint8_t)(w->rng >> 24);
    }
    return FB_OK;
}

fb_err rnd_fail(void *ctx, uint8_t *buf, size_t len)
{
    (void)ctx;
    (void)buf;
    (void)len;
    return FB_ERR_INTERNAL;
}

/* udpd's lookup in small: slot 0 only; created on a HELLO whose random part matches. */
static fb_assoc_srv *lookup(void *ctx, const fb_wire_hdr *hdr, uint64_t now, fb_wire_reason *why)
{
    world *w = ctx;

    (void)now;
    w->lookups++;
    if (fb_wire_sid_slot(hdr->sid) != 0) {
        *why = FB_WIRE_R_UNKNOWN_SESSION;
        return NULL;
    }
    if (!w->have_sess) {
        if (hdr->type != FB_WIRE_HELLO) {
            *why = FB_WIRE_R_NO_KEYS;
            return NULL;
        }
        if (!fb_mem_equal_ct(hdr->sid + 4, w->sid + 4, FB_WIRE_SID_LEN - 4)) {
            *why = FB_WIRE_R_UNKNOWN_SESSION;
            return NULL;
        }
        ck_assert_int_eq(fb_assoc_srv_init(&w->sess, w->sid, w->key, 0, w), FB_OK);
        w->have_sess = 1;
    }
    return &w->sess;
}

static fb_err admit(void *ctx, fb_assoc_srv *s, uint64_t now, const char **detail)
{
    world *w = ctx;

    (void)now;
    ck_assert_ptr_eq(s->user, w);
    if (w->admit != FB_OK)
        *detail = "test says no";
    return w->admit;
}

void addr4(fb_assoc_addr *a, const char *ip, int port)
{
    struct sockaddr_in in;

    memset(&in, 0xee, sizeof(in)); /* garbage in the padding: normalised away */
    in.sin_family = AF_INET;
    in.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, ip, &in.sin_addr);
    fb_assoc_addr_set(a, (const struct sockaddr *)&in, sizeof(in));
}

void client_params(world *w, fb_assoc_client_params *p, unsigned cipher)
{
    memset(p, 0, sizeof(*p));
    memcpy(p->sid, w->sid, sizeof(p->sid));
    p->cipher = cipher;
    p->policy = FB_POLICY_FAIR;
    p->target_rate = 50000000;
    p->min_rate = 1000000;
    p->max_datagram = 1452;
    p->random = rnd;
    p->random_ctx = w;
}

void world_init(world *w, unsigned allowed_ciphers)
{
    fb_assoc_client_params cp;

    memset(w, 0, sizeof(*w));
    w->rng = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 32; i++)
        w->key[i] = (uint8_t)(i * 7 + 1);
    ck_assert_int_eq(fb_wire_sid_from_string(w->sid, SID), FB_OK);
    w->sp.policy.allowed_ciphers = allowed_ciphers;
    w->sp.policy.allowed_policies = FB_POLICY_FIXED | FB_POLICY_FAIR | FB_POLICY_HIGH | FB_POLICY_LOW;
    w->sp.policy.default_rate = 125000000;
    w->sp.policy.max_datagram = FB_WIRE_MAX_DATAGRAM;
    w->sp.random = rnd;
    w->sp.lookup = lookup;
    w->sp.admit = admit;
    w->sp.ctx = w;
    ck_assert_int_eq(fb_assoc_server_new(&w->srv, &w->sp), FB_OK);
    ck_assert_int_eq(fb_aead_new(&w->caead, w->key, FB_AEAD_CLIENT), FB_OK);
    client_params(w, &cp, FB_CIPHER_AES128_GCM);
    fb_assoc_client_init(&w->c, &cp, w->caead);
    fb_replay_init(&w->c_replay);
    addr4(&w->a1, "192.0.2.1", 40000);
    addr4(&w->a2, "192.0.2.2", 40000);
}

void world_free(world *w)
{
    if (w->have_sess)
        fb_assoc_srv_clear(&w->sess);
    fb_assoc_server_free(w->srv);
    fb_aead_free(w->caead);
}

/* The client's HELLO into w->hello. */
void client_hello(world *w, uint64_t now, int fresh)
{
    ck_assert_int_eq(fb_assoc_client_hello(&w->c, w->hello, sizeof(w->hello), &w->hello_len, now, fresh),
                     FB_OK);
    ck_assert_uint_ge(w->hello_len, w->c.p.max_datagram);
}

/* Feeds a copy of BUF to the server from A; checks the answer is never larger than what came in. */
fb_assoc_event server_in(world *w, const uint8_t *buf, size_t len, const fb_assoc_addr *a, uint64_t now)
{
    uint8_t *copy = malloc(len ? len : 1);
    fb_assoc_event ev;

    memcpy(copy, buf, len);
    ev = fb_assoc_server_input(w->srv, &w->out, copy, len, a, now);
    ck_assert_uint_le(w->out.len, len); /* no amplification, whatever came in */
    if (ev != FB_ASSOC_HELLO_PENDING && ev != FB_ASSOC_HELLO_AGAIN && ev != FB_ASSOC_HELLO_REFUSED)
        ck_assert_uint_eq(w->out.len, 0);
    free(copy);
    return ev;
}

fb_assoc_client_event client_in(world *w, const uint8_t *buf, size_t len, uint64_t now)
{
    uint8_t copy[FB_ASSOC_ACK_LEN + 64];

    ck_assert_uint_le(len, sizeof(copy));
    memcpy(copy, buf, len);
    return fb_assoc_client_input(&w->c, copy, len, now);
}

/* A data-phase PROBE from the client under its data keys (what validates its address). */
size_t client_probe(world *w, uint8_t *buf, size_t cap)
{
    fb_wire_hdr hdr;
    fb_wire_probe p;
    size_t len = 0;

    memset(&hdr, 0, sizeof(hdr));
    memset(&p, 0, sizeof(p));
    memcpy(hdr.sid, w->sid, sizeof(hdr.sid));
    hdr.pn = w->c_pn++;
    p.probe_id = hdr.pn;
    p.ts_us = T0;
    ck_assert_int_eq(fb_wire_encode_probe(buf, cap, &len, &hdr, &p, w->caead), FB_OK);
    return len;
}

/* HELLO, HELLO_ACK, then a data-phase packet that validates: the association runs. */
void associate(world *w, const fb_assoc_addr *from, uint64_t now)
{
    uint8_t ack[FB_ASSOC_ACK_LEN], probe[128];
    size_t acklen, plen;

    client_hello(w, now, 1);
    ck_assert_int_eq(server_in(w, w->hello, w->hello_len, from, now + 1000), FB_ASSOC_HELLO_PENDING);
    ck_assert_uint_eq(w->out.len, FB_ASSOC_ACK_LEN);
    memcpy(ack, w->out.dgram, w->out.len);
    acklen = w->out.len;
    ck_assert_int_eq(client_in(w, ack, acklen, now + 2000), FB_ASSOC_C_ACCEPTED);
    w->c_pn = 0;
    fb_replay_init(&w->c_replay);
    plen = client_probe(w, probe, sizeof(probe));
    ck_assert_int_eq(server_in(w, probe, plen, from, now + 3000), FB_ASSOC_VALIDATED);
    fb_assoc_srv_promote(&w->sess);
    ck_assert(w->sess.cur.live);
    ck_assert(!w->sess.pend.live);
}

/* The server sends a CLOSE on its running association; the client must open it. */
void server_to_client_works(world *w)
{
    uint8_t buf[FB_WIRE_OVERHEAD + FB_WIRE_CLOSE_FIXED];
    fb_wire_hdr hdr;
    fb_wire_close cl = {.reason = 0};
    fb_wire_pkt pkt;
    fb_wire_reason why;
    size_t len = 0;

    memset(&hdr, 0, sizeof(hdr));
    memcpy(hdr.sid, w->sid, sizeof(hdr.sid));
    hdr.pn = w->sess.cur.pn_out++;
    ck_assert_int_eq(fb_wire_encode_close(buf, sizeof(buf), &len, &hdr, &cl, w->sess.cur.aead), FB_OK);
    ck_assert_int_eq(fb_assoc_client_input(&w->c, buf, len, T0), FB_ASSOC_C_DATA_PHASE);
    ck_assert_int_eq(fb_wire_open(&pkt, &why, buf, len, w->caead, &w->c_replay), FB_OK);
    ck_assert_uint_eq(pkt.hdr.type, FB_WIRE_CLOSE);
}
