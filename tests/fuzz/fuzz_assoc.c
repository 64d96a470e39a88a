/* libFuzzer target for the input side of the association handshake (fb_assoc), both ends. Build
 * with `make fuzz` (clang, -fsanitize=fuzzer,address,undefined), run e.g.
 * `tests/fuzz/fuzz_assoc -max_total_time=300`.
 *
 * One session (slot 0) on a fresh server and one client with a HELLO pending, per input. The input
 * is a script of steps; each step's first byte picks what it is (low 3 bits) and from which of two
 * addresses it comes (bit 3), a second byte how much time passes, then a 16-bit length and that
 * many bytes:
 *   0: the bytes as a datagram to the server, as they would arrive from the network;
 *   1: the bytes as a datagram to the client;
 *   2: the bytes as HELLO fields (cipher, policy, rates, datagram size, nonce), sealed into a
 *      HELLO under the session key: what a peer holding the key could send (reaches the
 *      negotiation, the nonce memory and the replay checks behind the tag);
 *   3: the bytes as HELLO_ACK fields sealed under the session key, to the client (reaches the
 *      acceptance behind the tag), echoing the pending nonce when the first byte is even;
 *   4: the client's own HELLO (fresh or retransmitted) to the server, and the server's answer
 *      back to the client;
 *   5: a data-phase PROBE under the client's keys to the server (validates an association);
 *   6: the server's expiry timer;
 *   7: the client's own HELLO, its timer, nothing delivered.
 * Invariants (abort on failure): the server never answers with more bytes than it got, nor
 * sends anything but answers to HELLOs; to an address no association was validated for, it
 * never sends more than it received from it; an accepted answer leaves data keys and a datagram
 * size within both limits. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <netinet/in.h>

#include "fb_assoc.h"
#include "fb_config.h"

static const uint8_t key[32] = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3};
static const uint8_t sid[FB_WIRE_SID_LEN] = {0, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4, 5, 6, 7, 8};

typedef struct fuzz_world {
    uint64_t rng;
    fb_assoc_srv sess;
    int have_sess;
} fuzz_world;

static uint8_t dgram[FB_WIRE_MAX_DATAGRAM + 16];

static fb_err rnd(void *ctx, uint8_t *buf, size_t len)
{
    fuzz_world *w = ctx;

    for (size_t i = 0; i < len; i++) {
        w->rng = w->rng * 6364136223846793005ull + 1442695040888963407ull;
        buf[i] = (uint8_t)(w->rng >> 56);
    }
    return FB_OK;
}

static fb_assoc_srv *lookup(void *ctx, const fb_wire_hdr *hdr, uint64_t now, fb_wire_reason *why)
{
    fuzz_world *w = ctx;

    (void)now;
    if (fb_wire_sid_slot(hdr->sid) != 0 || memcmp(hdr->sid, sid, sizeof(sid)) != 0) {
        *why = FB_WIRE_R_UNKNOWN_SESSION;
        return NULL;
    }
    if (!w->have_sess) {
        if (hdr->type != FB_WIRE_HELLO) {
            *why = FB_WIRE_R_NO_KEYS;
            return NULL;
        }
        if (fb_assoc_srv_init(&w->sess, sid, key, 0, w) != FB_OK)
            abort();
        w->have_sess = 1;
    }
    return &w->sess;
}

static fb_err admit(void *ctx, fb_assoc_srv *s, uint64_t now, const char **detail)
{
    (void)ctx;
    (void)s;
    *detail = "odd time";
    return (now / 1000) % 7 == 3 ? FB_ERR_PERMISSION : FB_OK;
}

static uint64_t get(const uint8_t *p, size_t n)
{
    uint64_t v = 0;

    for (size_t i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

static void addr(fb_assoc_addr *a, int which)
{
    struct sockaddr_in in;

    memset(&in, 0, sizeof(in));
    in.sin_family = AF_INET;
    in.sin_port = htons(40000);
    in.sin_addr.s_addr = htonl(0xc0000201u + (uint32_t)which);
    fb_assoc_addr_set(a, (const struct sockaddr *)&in, sizeof(in));
}

typedef struct fuzz_run {
    fuzz_world w;
    fb_assoc_server *srv;
    fb_assoc_client c;
    fb_aead_ctx *caead, *shs;
    fb_assoc_addr from[2];
    uint64_t in[2], out[2]; /* bytes from and to each address */
    int validated[2];
    uint64_t now, cpn;
} fuzz_run;

static void to_server(fuzz_run *r, uint8_t *buf, size_t len, int who)
{
    static fb_assoc_out out;
    fb_assoc_event ev = fb_assoc_server_input(r->srv, &out, buf, len, &r->from[who], r->now);

    r->in[who] += len;
    if (out.len > len)
        abort(); /* amplification */
    if (out.len > 0 && ev != FB_ASSOC_HELLO_PENDING && ev != FB_ASSOC_HELLO_AGAIN &&
        ev != FB_ASSOC_HELLO_REFUSED)
        abort();
    r->out[who] += out.len;
    if (!r->validated[who] && r->out[who] > r->in[who])
        abort();
    if (ev == FB_ASSOC_VALIDATED) {
        if (out.srv != &r->w.sess || !r->w.sess.pend.live)
            abort();
        fb_assoc_srv_promote(out.srv);
        r->validated[who] = 1;
    }
    if ((ev == FB_ASSOC_PACKET || ev == FB_ASSOC_VALIDATED) &&
        (!r->w.sess.cur.live || !fb_assoc_addr_equal(&r->w.sess.cur.peer, &r->from[who])))
        abort();
    if (out.len > 0 && ev != FB_ASSOC_HELLO_REFUSED) /* the client may hear the answer */
        (void)fb_assoc_client_input(&r->c, out.dgram, out.len, r->now);
}

static void to_client(fuzz_run *r, uint8_t *buf, size_t len)
{
    fb_assoc_client_event ev = fb_assoc_client_input(&r->c, buf, len, r->now);

    if (ev == FB_ASSOC_C_ACCEPTED &&
        (!fb_aead_has_data_keys(r->caead) || r->c.max_dgram < FB_WIRE_MIN_DATAGRAM ||
         r->c.max_dgram > r->c.p.max_datagram))
        abort();
    if (ev == FB_ASSOC_C_REFUSED && r->c.refused == FB_OK)
        abort();
    if (ev == FB_ASSOC_C_ACCEPTED || ev == FB_ASSOC_C_REFUSED)
        r->cpn = 0;
}

static void hdr_init(fb_wire_hdr *hdr, uint64_t pn)
{
    memset(hdr, 0, sizeof(*hdr));
    memcpy(hdr->sid, sid, sizeof(sid));
    hdr->pn = pn;
}

static void sealed_hello(fuzz_run *r, const uint8_t *d, size_t n, int who)
{
    fb_wire_hdr hdr;
    fb_wire_hello h;
    uint8_t f[64] = {0};
    size_t len = 0;

    memcpy(f, d, n < sizeof(f) ? n : sizeof(f));
    hdr_init(&hdr, get(f, 8));
    memset(&h, 0, sizeof(h));
    memcpy(h.client_nonce, f[8] & 1 ? r->c.cnonce : f + 8, sizeof(h.client_nonce));
    h.cipher = 1u << (f[24] % 3);
    h.policy = 1u << (f[25] % 4);
    h.target_rate = get(f + 26, 4);
    h.min_rate = get(f + 30, 3);
    h.client_ts_us = get(f + 33, 8);
    h.max_datagram = (uint16_t)get(f + 41, 2);
    h.pad_to = get(f + 43, 2) % 3000;
    if (fb_wire_encode_hello(dgram, sizeof(dgram), &len, &hdr, &h, r->caead) == FB_OK)
        to_server(r, dgram, len, who);
}

static void sealed_ack(fuzz_run *r, const uint8_t *d, size_t n)
{
    fb_wire_hdr hdr;
    fb_wire_hello_ack a;
    uint8_t f[96] = {0};
    size_t len = 0;

    memcpy(f, d, n < sizeof(f) ? n : sizeof(f));
    hdr_init(&hdr, get(f, 8));
    memset(&a, 0, sizeof(a));
    memcpy(a.client_nonce, f[8] % 2 == 0 ? r->c.cnonce : f + 8, sizeof(a.client_nonce));
    memcpy(a.server_nonce, f + 24, sizeof(a.server_nonce));
    a.status = (uint32_t)(f[40] % 4 == 0 ? f[41] % FB_ERR__COUNT : 0);
    a.cipher = 1u << (f[42] % 3);
    a.policy = 1u << (f[43] % 4);
    a.target_rate = get(f + 44, 4);
    a.min_rate = get(f + 48, 3);
    a.echo_ts_us = get(f + 51, 8);
    a.hold_us = (uint32_t)get(f + 59, 4);
    a.max_datagram = (uint16_t)get(f + 63, 2);
    a.server_ts_us = get(f + 65, 8);
    if (fb_wire_encode_hello_ack(dgram, sizeof(dgram), &len, &hdr, &a, r->shs) == FB_OK)
        to_client(r, dgram, len);
}

static void own_hello(fuzz_run *r, int fresh, int deliver, int who)
{
    size_t len = 0;

    if (!fresh && r->now < fb_assoc_client_next_time(&r->c))
        fresh = !r->c.pending;
    if (fb_assoc_client_hello(&r->c, dgram, sizeof(dgram), &len, r->now, fresh) == FB_OK && deliver)
        to_server(r, dgram, len, who);
}

static void probe(fuzz_run *r, int who)
{
    fb_wire_hdr hdr;
    fb_wire_probe p;
    size_t len = 0;

    if (!fb_aead_has_data_keys(r->caead))
        return;
    hdr_init(&hdr, r->cpn++);
    memset(&p, 0, sizeof(p));
    p.ts_us = r->now;
    if (fb_wire_encode_probe(dgram, sizeof(dgram), &len, &hdr, &p, r->caead) == FB_OK)
        to_server(r, dgram, len, who);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fuzz_run r;
    fb_assoc_server_params sp;
    fb_assoc_client_params cp;
    size_t pos = 0;

    memset(&r, 0, sizeof(r));
    r.w.rng = 0x853c49e6748fea9bull;
    r.now = 1000000;
    memset(&sp, 0, sizeof(sp));
    sp.policy.allowed_ciphers = FB_CIPHER_AES128_GCM | FB_CIPHER_AES256_GCM | FB_CIPHER_NONE;
    sp.policy.allowed_policies = FB_POLICY_FAIR | FB_POLICY_LOW;
    sp.policy.target_rate_cap = 100000000;
    sp.policy.default_rate = 125000000;
    sp.policy.max_datagram = 9000;
    sp.random = rnd;
    sp.lookup = lookup;
    sp.admit = admit;
    sp.ctx = &r.w;
    memset(&cp, 0, sizeof(cp));
    memcpy(cp.sid, sid, sizeof(sid));
    cp.cipher = FB_CIPHER_AES128_GCM;
    cp.policy = FB_POLICY_FAIR;
    cp.max_datagram = 1452;
    cp.random = rnd;
    cp.random_ctx = &r.w;
    if (fb_assoc_server_new(&r.srv, &sp) != FB_OK || fb_aead_new(&r.caead, key, FB_AEAD_CLIENT) != FB_OK ||
        fb_aead_new(&r.shs, key, FB_AEAD_SERVER) != FB_OK)
        abort();
    fb_assoc_client_init(&r.c, &cp, r.caead);
    addr(&r.from[0], 0);
    addr(&r.from[1], 1);
    own_hello(&r, 1, 0, 0);

    /* bounded: each step consumes at least two bytes */
    while (pos + 2 <= size) {
        unsigned op = data[pos] & 7, who = (data[pos] >> 3) & 1;
        size_t len = 0;

        r.now += (uint64_t)data[pos + 1] * 10000;
        pos += 2;
        if (op <= 3 && pos + 2 <= size) {
            len = (size_t)(data[pos] << 8 | data[pos + 1]);
            pos += 2;
            if (len > size - pos)
                len = size - pos;
        }
        switch (op) {
        case 0:
        case 1:
            memcpy(dgram, data + pos, len);
            if (op == 0)
                to_server(&r, dgram, len, (int)who);
            else
                to_client(&r, dgram, len);
            break;
        case 2:
            sealed_hello(&r, data + pos, len, (int)who);
            break;
        case 3:
            sealed_ack(&r, data + pos, len);
            break;
        case 4:
            own_hello(&r, who, 1, (int)who);
            break;
        case 5:
            probe(&r, (int)who);
            break;
        case 6:
            if (r.w.have_sess && fb_assoc_srv_expire(&r.w.sess, r.now))
                fb_assoc_srv_end(&r.w.sess);
            break;
        default:
            own_hello(&r, 0, 0, 0);
            break;
        }
        pos += len;
    }
    if (r.w.have_sess)
        fb_assoc_srv_clear(&r.w.sess);
    fb_assoc_server_free(r.srv);
    fb_aead_free(r.caead);
    fb_aead_free(r.shs);
    return 0;
}
