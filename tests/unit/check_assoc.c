/* Unit tests for fb_assoc: the UDP association handshake of both ends, joined directly (every
 * datagram goes through the real codec and AEAD) with the test deciding which datagrams are lost,
 * duplicated, reordered, replayed, forged or cut, in virtual time. Deterministic. */
#include <arpa/inet.h>
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "assoc_world.h"
#include "fb_config.h"
#include "fb_util.h"

/* ---- success ---------------------------------------------------------------------------------- */

START_TEST(test_handshake_both_sides)
{
    world w;
    uint8_t ack[FB_ASSOC_ACK_LEN], probe[128];
    size_t plen;

    world_init(&w, FB_CIPHER_AES128_GCM | FB_CIPHER_AES256_GCM);
    client_hello(&w, T0, 1);
    ck_assert(w.c.pending);
    ck_assert_uint_eq(fb_assoc_client_next_time(&w.c), T0 + FB_ASSOC_HELLO_RTO_US);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0 + 10000), FB_ASSOC_HELLO_PENDING);
    ck_assert_ptr_eq(w.out.srv, &w.sess);
    ck_assert(w.sess.pend.live);
    ck_assert(!w.sess.cur.live);
    ck_assert_uint_eq(w.sess.pend.cipher, FB_CIPHER_AES128_GCM);
    ck_assert_uint_eq(w.sess.pend.policy, FB_POLICY_FAIR);
    ck_assert_uint_eq(w.sess.pend.target_rate, 50000000);
    ck_assert_uint_eq(w.sess.pend.min_rate, 1000000);
    ck_assert_uint_eq(w.sess.pend.max_dgram, 1452);
    memcpy(ack, w.out.dgram, w.out.len);
    ck_assert_int_eq(client_in(&w, ack, w.out.len, T0 + 20000), FB_ASSOC_C_ACCEPTED);
    ck_assert(!w.c.pending);
    ck_assert_uint_eq(fb_assoc_client_next_time(&w.c), UINT64_MAX);
    ck_assert_uint_eq(w.c.ack.cipher, FB_CIPHER_AES128_GCM);
    ck_assert_uint_eq(w.c.ack.target_rate, 50000000);
    ck_assert_uint_eq(w.c.max_dgram, 1452);
    ck_assert_uint_eq(w.c.rtt_us, 20000);
    ck_assert(fb_aead_has_data_keys(w.caead));
    /* the server sends nothing but HELLO_ACKs until the client's first data-phase packet */
    plen = client_probe(&w, probe, sizeof(probe));
    ck_assert_int_eq(server_in(&w, probe, plen, &w.a1, T0 + 30000), FB_ASSOC_VALIDATED);
    ck_assert_uint_eq(w.out.pkt.hdr.type, FB_WIRE_PROBE);
    fb_assoc_srv_promote(&w.sess);
    ck_assert(w.sess.cur.live);
    ck_assert_uint_eq(w.sess.cur.last_rx_us, T0 + 30000);
    /* from now on the running association: both directions use the same data keys */
    plen = client_probe(&w, probe, sizeof(probe));
    ck_assert_int_eq(server_in(&w, probe, plen, &w.a1, T0 + 40000), FB_ASSOC_PACKET);
    server_to_client_works(&w);
    world_free(&w);
}
END_TEST

START_TEST(test_server_caps_rates_and_datagram)
{
    world w;
    fb_assoc_client_params cp;

    world_init(&w, FB_CIPHER_AES128_GCM);
    fb_assoc_server_free(w.srv);
    w.sp.policy.target_rate_cap = 10000000;
    w.sp.policy.min_rate_cap = 500000;
    w.sp.policy.max_datagram = 1300;
    ck_assert_int_eq(fb_assoc_server_new(&w.srv, &w.sp), FB_OK);
    client_params(&w, &cp, FB_CIPHER_AES256_GCM); /* not allowed: the server picks AES-128 */
    cp.policy = FB_POLICY_HIGH;
    fb_assoc_client_init(&w.c, &cp, w.caead);
    associate(&w, &w.a1, T0);
    ck_assert_uint_eq(w.sess.cur.target_rate, 10000000);
    ck_assert_uint_eq(w.sess.cur.min_rate, 500000);
    ck_assert_uint_eq(w.sess.cur.max_dgram, 1300);
    ck_assert_uint_eq(w.sess.cur.cipher, FB_CIPHER_AES128_GCM);
    ck_assert_uint_eq(w.sess.cur.policy, FB_POLICY_HIGH);
    ck_assert_uint_eq(w.c.max_dgram, 1300);
    /* a target of 0 takes the cap; without a cap the default */
    cp.target_rate = 0;
    fb_assoc_client_init(&w.c, &cp, w.caead);
    associate(&w, &w.a1, T0 + 1000000);
    ck_assert_uint_eq(w.sess.cur.target_rate, 10000000);
    world_free(&w);
}
END_TEST

/* ---- lost, duplicated and reordered datagrams; retries ----------------------------------------- */

START_TEST(test_lost_hello_is_retransmitted_with_backoff)
{
    world w;
    uint8_t first[FB_WIRE_MAX_DATAGRAM];
    size_t first_len;
    uint64_t pn0;
    fb_wire_hdr h0, h1;
    fb_wire_reason why;

    world_init(&w, FB_CIPHER_AES128_GCM);
    client_hello(&w, T0, 1);
    memcpy(first, w.hello, w.hello_len);
    first_len = w.hello_len;
    pn0 = w.c.hello_pn;
    /* lost: due again after 250 ms, then 500, 1000 */
    ck_assert_uint_eq(fb_assoc_client_next_time(&w.c), T0 + 250000);
    client_hello(&w, T0 + 250000, 0);
    ck_assert_uint_eq(fb_assoc_client_next_time(&w.c), T0 + 250000 + 500000);
    client_hello(&w, T0 + 750000, 0);
    ck_assert_uint_eq(fb_assoc_client_next_time(&w.c), T0 + 750000 + 1000000);
    ck_assert_uint_eq(w.c.hello_pn, pn0 + 2); /* a new packet number each time, same nonce */
    ck_assert_int_eq(fb_wire_peek_header(&h0, &why, first, first_len), FB_OK);
    ck_assert_int_eq(fb_wire_peek_header(&h1, &why, w.hello, w.hello_len), FB_OK);
    ck_assert_uint_ne(h0.pn, h1.pn);
    /* the third try arrives and is answered */
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0 + 760000), FB_ASSOC_HELLO_PENDING);
    ck_assert_int_eq(client_in(&w, w.out.dgram, w.out.len, T0 + 770000), FB_ASSOC_C_ACCEPTED);
    /* no retransmission without a pending HELLO */
    ck_assert_int_eq(fb_assoc_client_hello(&w.c, w.hello, sizeof(w.hello), &w.hello_len, T0, 0),
                     FB_ERR_SESSION_STATE);
    world_free(&w);
}
END_TEST

START_TEST(test_lost_ack_gets_the_same_answer_again)
{
    world w;
    uint8_t snonce[16], probe[128];
    size_t plen;

    world_init(&w, FB_CIPHER_AES128_GCM);
    client_hello(&w, T0, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0 + 1000), FB_ASSOC_HELLO_PENDING);
    memcpy(snonce, w.sess.pend.snonce, 16);
    /* the answer is lost; the retransmission gets the same server nonce */
    client_hello(&w, T0 + 250000, 0);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0 + 251000), FB_ASSOC_HELLO_AGAIN);
    ck_assert_uint_eq(w.out.len, FB_ASSOC_ACK_LEN);
    ck_assert_mem_eq(w.sess.pend.snonce, snonce, 16);
    ck_assert_int_eq(client_in(&w, w.out.dgram, w.out.len, T0 + 252000), FB_ASSOC_C_ACCEPTED);
    ck_assert_mem_eq(w.c.ack.server_nonce, snonce, 16);
    plen = client_probe(&w, probe, sizeof(probe));
    ck_assert_int_eq(server_in(&w, probe, plen, &w.a1, T0 + 253000), FB_ASSOC_VALIDATED);
    world_free(&w);
}
END_TEST

START_TEST(test_duplicated_and_reordered_datagrams)
{
    world w;
    uint8_t h1[FB_WIRE_MAX_DATAGRAM], ack1[FB_ASSOC_ACK_LEN], ack2[FB_ASSOC_ACK_LEN], p1[128], p2[128];
    size_t h1len, plen1, plen2;

    world_init(&w, FB_CIPHER_AES128_GCM);
    client_hello(&w, T0, 1);
    memcpy(h1, w.hello, w.hello_len);
    h1len = w.hello_len;
    client_hello(&w, T0 + 250000, 0);
    /* the retransmission overtakes the first HELLO: both answered alike */
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0 + 260000), FB_ASSOC_HELLO_PENDING);
    memcpy(ack1, w.out.dgram, FB_ASSOC_ACK_LEN);
    ck_assert_int_eq(server_in(&w, h1, h1len, &w.a1, T0 + 261000), FB_ASSOC_HELLO_AGAIN);
    memcpy(ack2, w.out.dgram, FB_ASSOC_ACK_LEN);
    /* the duplicate answer is dropped once the first was taken */
    ck_assert_int_eq(client_in(&w, ack2, FB_ASSOC_ACK_LEN, T0 + 270000), FB_ASSOC_C_ACCEPTED);
    ck_assert_int_eq(client_in(&w, ack1, FB_ASSOC_ACK_LEN, T0 + 271000), FB_ASSOC_C_DROP);
    /* data-phase packets out of order, and one twice: the window takes each once */
    plen1 = client_probe(&w, p1, sizeof(p1));
    plen2 = client_probe(&w, p2, sizeof(p2));
    ck_assert_int_eq(server_in(&w, p2, plen2, &w.a1, T0 + 280000), FB_ASSOC_VALIDATED);
    fb_assoc_srv_promote(&w.sess);
    ck_assert_int_eq(server_in(&w, p1, plen1, &w.a1, T0 + 281000), FB_ASSOC_PACKET);
    ck_assert_int_eq(server_in(&w, p1, plen1, &w.a1, T0 + 282000), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_REPLAYED);
    world_free(&w);
}
END_TEST

START_TEST(test_data_before_any_hello_needs_keys)
{
    world w;
    uint8_t probe[128];
    size_t plen;

    world_init(&w, FB_CIPHER_AES128_GCM);
    /* a data-phase packet for a session udpd has no state for (udpd restarted, say) */
    ck_assert_int_eq(fb_aead_set_data_keys(w.caead, FB_CIPHER_AES128_GCM, w.key, w.key), FB_OK);
    plen = client_probe(&w, probe, sizeof(probe));
    ck_assert_int_eq(server_in(&w, probe, plen, &w.a1, T0), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_NO_KEYS);
    /* the session exists but no HELLO reached it (and none is pending) */
    associate(&w, &w.a1, T0);
    fb_assoc_srv_end(&w.sess);
    plen = client_probe(&w, probe, sizeof(probe));
    ck_assert_int_eq(server_in(&w, probe, plen, &w.a1, T0 + 100000), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_NO_KEYS);
    world_free(&w);
}
END_TEST

START_TEST(test_stale_answer_to_an_earlier_attempt_is_dropped)
{
    world w;
    uint8_t old_ack[FB_ASSOC_ACK_LEN];

    world_init(&w, FB_CIPHER_AES128_GCM);
    client_hello(&w, T0, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0 + 1000), FB_ASSOC_HELLO_PENDING);
    memcpy(old_ack, w.out.dgram, FB_ASSOC_ACK_LEN);
    client_hello(&w, T0 + 3000000, 1); /* a fresh attempt: a new nonce */
    ck_assert_int_eq(client_in(&w, old_ack, FB_ASSOC_ACK_LEN, T0 + 3000001), FB_ASSOC_C_DROP);
    ck_assert(w.c.pending);
    /* and after a cancel, no answer is taken */
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0 + 3001000), FB_ASSOC_HELLO_PENDING);
    fb_assoc_client_cancel(&w.c);
    ck_assert_int_eq(client_in(&w, w.out.dgram, w.out.len, T0 + 3002000), FB_ASSOC_C_DROP);
    world_free(&w);
}
END_TEST

/* ---- timeouts --------------------------------------------------------------------------------- */

START_TEST(test_idle_associations_expire)
{
    world w;
    uint8_t probe[128];
    size_t plen;

    world_init(&w, FB_CIPHER_AES128_GCM);
    associate(&w, &w.a1, T0);
    ck_assert_int_eq(fb_assoc_srv_expire(&w.sess, T0 + 3000 + FB_ASSOC_IDLE_US), 0);
    ck_assert_int_eq(fb_assoc_srv_expire(&w.sess, T0 + 3001 + FB_ASSOC_IDLE_US), 1);
    fb_assoc_srv_end(&w.sess);
    ck_assert(!w.sess.cur.live);
    /* a pending association that never hears a data-phase packet is forgotten */
    client_hello(&w, T0 + 10000000, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0 + 10000000), FB_ASSOC_HELLO_PENDING);
    ck_assert_int_eq(client_in(&w, w.out.dgram, w.out.len, T0 + 10000001), FB_ASSOC_C_ACCEPTED);
    ck_assert_int_eq(fb_assoc_srv_expire(&w.sess, T0 + 10000000 + FB_ASSOC_IDLE_US), 0);
    ck_assert(w.sess.pend.live);
    ck_assert_int_eq(fb_assoc_srv_expire(&w.sess, T0 + 10000001 + FB_ASSOC_IDLE_US), 0);
    ck_assert(!w.sess.pend.live);
    w.c_pn = 0;
    plen = client_probe(&w, probe, sizeof(probe));
    ck_assert_int_eq(server_in(&w, probe, plen, &w.a1, T0 + 16000000), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_NO_KEYS);
    world_free(&w);
}
END_TEST

/* ---- anti-amplification ------------------------------------------------------------------------ */

START_TEST(test_never_more_bytes_than_received_before_validation)
{
    world w;
    uint64_t in = 0, out = 0;
    uint8_t buf[FB_WIRE_MAX_DATAGRAM];

    world_init(&w, FB_CIPHER_AES128_GCM);
    /* a forged source address sends HELLOs (captured, retransmitted, fresh) and garbage: what goes
     * back to it never exceeds what came from it, and nothing but HELLO_ACKs */
    for (int i = 0; i < 200; i++) {
        fb_assoc_event ev;
        size_t len;

        if (i % 4 == 0) {
            client_hello(&w, T0 + (uint64_t)i * 1000, i % 8 == 0);
            len = w.hello_len;
            memcpy(buf, w.hello, len);
        } else {
            len = 1 + (size_t)(w.rng % 2000);
            rnd(&w, buf, len);
            if (i % 3 == 0)
                memcpy(buf, w.hello, len < w.hello_len ? len : w.hello_len); /* cut HELLOs */
        }
        in += len;
        ev = server_in(&w, buf, len, &w.a2, T0 + (uint64_t)i * 1000);
        ck_assert(ev != FB_ASSOC_PACKET && ev != FB_ASSOC_VALIDATED);
        out += w.out.len;
        ck_assert_uint_le(out, in);
    }
    ck_assert_uint_gt(out, 0);
    ck_assert(!w.sess.cur.live);
    world_free(&w);
}
END_TEST

START_TEST(test_hello_at_the_minimum_size_is_answered_smaller)
{
    world w;
    fb_assoc_client_params cp;

    world_init(&w, FB_CIPHER_AES128_GCM);
    client_params(&w, &cp, FB_CIPHER_AES128_GCM);
    cp.max_datagram = 100; /* raised to the minimum */
    fb_assoc_client_init(&w.c, &cp, w.caead);
    client_hello(&w, T0, 1);
    ck_assert_uint_eq(w.hello_len, FB_WIRE_MIN_DATAGRAM);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_HELLO_PENDING);
    ck_assert_uint_eq(w.out.len, 132);
    world_free(&w);
}
END_TEST

/* ---- replay ------------------------------------------------------------------------------------ */

START_TEST(test_replayed_hello_cannot_disturb_the_association)
{
    world w;
    uint8_t old[FB_WIRE_MAX_DATAGRAM], cur_hello[FB_WIRE_MAX_DATAGRAM], probe[128];
    size_t old_len, cur_len, plen;
    uint8_t snonce[16];

    world_init(&w, FB_CIPHER_AES128_GCM);
    associate(&w, &w.a1, T0);
    memcpy(old, w.hello, w.hello_len);
    old_len = w.hello_len;
    associate(&w, &w.a1, T0 + 1000000); /* a second association replaced the first */
    memcpy(cur_hello, w.hello, w.hello_len);
    cur_len = w.hello_len;
    memcpy(snonce, w.sess.cur.snonce, 16);
    /* the first association's HELLO, from anywhere: dropped, nothing sent, nothing changed */
    ck_assert_int_eq(server_in(&w, old, old_len, &w.a1, T0 + 2000000), FB_ASSOC_HELLO_REPLAYED);
    ck_assert_int_eq(server_in(&w, old, old_len, &w.a2, T0 + 2000000), FB_ASSOC_HELLO_REPLAYED);
    ck_assert(!w.sess.pend.live);
    /* the running one's HELLO from another address: a replay */
    ck_assert_int_eq(server_in(&w, cur_hello, cur_len, &w.a2, T0 + 2000000), FB_ASSOC_HELLO_REPLAYED);
    /* from its own address: the same answer again, the association unchanged */
    ck_assert_int_eq(server_in(&w, cur_hello, cur_len, &w.a1, T0 + 2000000), FB_ASSOC_HELLO_AGAIN);
    ck_assert_mem_eq(w.sess.cur.snonce, snonce, 16);
    plen = client_probe(&w, probe, sizeof(probe));
    ck_assert_int_eq(server_in(&w, probe, plen, &w.a1, T0 + 2000001), FB_ASSOC_PACKET);
    server_to_client_works(&w);
    world_free(&w);
}
END_TEST

START_TEST(test_nonce_memory_is_bounded)
{
    world w;
    uint8_t first[FB_WIRE_MAX_DATAGRAM];
    size_t first_len;

    world_init(&w, FB_CIPHER_AES128_GCM);
    client_hello(&w, T0, 1);
    memcpy(first, w.hello, w.hello_len);
    first_len = w.hello_len;
    for (int i = 0; i < FB_ASSOC_NONCE_MEMORY + 1; i++) {
        ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_HELLO_PENDING);
        client_hello(&w, T0, 1);
    }
    ck_assert_uint_eq(w.sess.nseen, FB_ASSOC_NONCE_MEMORY);
    /* pushed out of the memory, the first nonce would be answered again with new keys: harmless
     * (a new pending association; the running one, if any, goes on until it is validated) */
    ck_assert_int_eq(server_in(&w, first, first_len, &w.a1, T0), FB_ASSOC_HELLO_PENDING);
    world_free(&w);
}
END_TEST

/* ---- wrong keys -------------------------------------------------------------------------------- */

START_TEST(test_wrong_session_key)
{
    world w;
    uint8_t bad[32], probe[128], ack[FB_ASSOC_ACK_LEN];
    fb_aead_ctx *other;
    fb_assoc_client oc;
    fb_assoc_client_params cp;
    size_t plen;

    world_init(&w, FB_CIPHER_AES128_GCM);
    memcpy(bad, w.key, 32);
    bad[5] ^= 1;
    ck_assert_int_eq(fb_aead_new(&other, bad, FB_AEAD_CLIENT), FB_OK);
    client_params(&w, &cp, FB_CIPHER_AES128_GCM);
    fb_assoc_client_init(&oc, &cp, other);
    ck_assert_int_eq(fb_assoc_client_hello(&oc, w.hello, sizeof(w.hello), &w.hello_len, T0, 1), FB_OK);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_AUTH_FAILED);
    ck_assert(!w.sess.pend.live);
    /* an answer sealed under another key is not taken by the client */
    client_hello(&w, T0, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_HELLO_PENDING);
    memcpy(ack, w.out.dgram, FB_ASSOC_ACK_LEN);
    memcpy(oc.cnonce, w.c.cnonce, 16); /* even knowing the nonce */
    ck_assert_int_eq(fb_assoc_client_input(&oc, ack, FB_ASSOC_ACK_LEN, T0), FB_ASSOC_C_DROP);
    ck_assert(!fb_aead_has_data_keys(other));
    /* data-phase packets under the wrong data keys do not validate the pending association */
    memcpy(ack, w.out.dgram, FB_ASSOC_ACK_LEN);
    ck_assert_int_eq(client_in(&w, ack, FB_ASSOC_ACK_LEN, T0), FB_ASSOC_C_ACCEPTED);
    ck_assert_int_eq(fb_aead_set_data_keys(other, FB_CIPHER_AES128_GCM, w.c.cnonce, w.c.ack.server_nonce),
                     FB_OK);
    {
        fb_aead_ctx *keep = w.caead;

        w.caead = other;
        plen = client_probe(&w, probe, sizeof(probe));
        w.caead = keep;
    }
    ck_assert_int_eq(server_in(&w, probe, plen, &w.a1, T0), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_AUTH_FAILED);
    ck_assert(w.sess.pend.live);
    ck_assert(!w.sess.cur.live);
    /* the right ones do, even after the forged one took its packet number */
    w.c_pn = 0;
    plen = client_probe(&w, probe, sizeof(probe));
    ck_assert_int_eq(server_in(&w, probe, plen, &w.a1, T0), FB_ASSOC_VALIDATED);
    fb_aead_free(other);
    world_free(&w);
}
END_TEST

START_TEST(test_reflected_hello_ack_is_dropped)
{
    world w;

    world_init(&w, FB_CIPHER_AES128_GCM);
    client_hello(&w, T0, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_HELLO_PENDING);
    /* the server's own answer sent back to it */
    ck_assert_int_eq(server_in(&w, w.out.dgram, w.out.len, &w.a1, T0), FB_ASSOC_DROP_UNEXPECTED);
    /* and the client's HELLO sent back to the client */
    ck_assert_int_eq(client_in(&w, w.hello, 100, T0), FB_ASSOC_C_DROP);
    world_free(&w);
}
END_TEST

/* ---- refusals ---------------------------------------------------------------------------------- */

START_TEST(test_refusals)
{
    world w;
    fb_assoc_client_params cp;

    world_init(&w, FB_CIPHER_NONE);
    /* only cipher none allowed, and the client asks for AES: no allowed AES-GCM cipher */
    client_hello(&w, T0, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_HELLO_REFUSED);
    ck_assert_int_eq(w.out.status, FB_ERR_PERMISSION);
    ck_assert_str_eq(w.out.detail, "no allowed cipher");
    ck_assert_uint_eq(w.out.len, FB_ASSOC_ACK_LEN);
    ck_assert(!w.sess.pend.live);
    ck_assert_int_eq(client_in(&w, w.out.dgram, w.out.len, T0), FB_ASSOC_C_REFUSED);
    ck_assert_int_eq(w.c.refused, FB_ERR_PERMISSION);
    ck_assert(!fb_aead_has_data_keys(w.caead));
    /* a fresh attempt forgets the refusal */
    client_hello(&w, T0 + 1000000, 1);
    ck_assert_int_eq(w.c.refused, FB_OK);
    world_free(&w);

    /* a policy the server does not allow, without fair to fall back on */
    world_init(&w, FB_CIPHER_AES128_GCM);
    w.sp.policy.allowed_policies = FB_POLICY_LOW; /* a reloaded configuration */
    fb_assoc_server_set_policy(w.srv, &w.sp.policy);
    client_hello(&w, T0, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_HELLO_REFUSED);
    ck_assert_str_eq(w.out.detail, "policy not allowed");
    world_free(&w);

    /* the caller's own check says no */
    world_init(&w, FB_CIPHER_AES128_GCM);
    w.admit = FB_ERR_NOT_FOUND;
    client_hello(&w, T0, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_HELLO_REFUSED);
    ck_assert_int_eq(w.out.status, FB_ERR_NOT_FOUND);
    ck_assert_str_eq(w.out.detail, "test says no");
    ck_assert_int_eq(client_in(&w, w.out.dgram, w.out.len, T0), FB_ASSOC_C_REFUSED);
    ck_assert_int_eq(w.c.refused, FB_ERR_NOT_FOUND);
    world_free(&w);

    /* the server grants cipher none (the session fixed it) to a client that asked for AES: the
     * client refuses less protection than it asked for */
    world_init(&w, FB_CIPHER_AES128_GCM);
    client_hello(&w, T0, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_HELLO_PENDING);
    fb_assoc_srv_clear(&w.sess);
    w.have_sess = 0;
    ck_assert_int_eq(fb_assoc_srv_init(&w.sess, w.sid, w.key, FB_CIPHER_NONE, &w), FB_OK);
    w.have_sess = 1;
    client_hello(&w, T0, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_HELLO_PENDING);
    ck_assert_uint_eq(w.sess.pend.cipher, FB_CIPHER_NONE);
    ck_assert_int_eq(client_in(&w, w.out.dgram, w.out.len, T0), FB_ASSOC_C_REFUSED);
    ck_assert_int_eq(w.c.refused, FB_ERR_SERVER_REFUSED);
    /* ... while a client that asked for none takes it */
    client_params(&w, &cp, FB_CIPHER_NONE);
    fb_assoc_client_init(&w.c, &cp, w.caead);
    client_hello(&w, T0, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_HELLO_PENDING);
    ck_assert_int_eq(client_in(&w, w.out.dgram, w.out.len, T0), FB_ASSOC_C_ACCEPTED);
    world_free(&w);
}
END_TEST

START_TEST(test_answer_must_echo_the_pending_nonce)
{
    world w;
    fb_aead_ctx *hs;
    fb_wire_hdr hdr;
    fb_wire_hello_ack a;
    uint8_t buf[FB_ASSOC_ACK_LEN];
    size_t len = 0;

    world_init(&w, FB_CIPHER_AES128_GCM);
    client_hello(&w, T0, 1);
    /* sealed under the right handshake keys (anyone holding the session key) but answering
     * another HELLO: not taken */
    ck_assert_int_eq(fb_aead_new(&hs, w.key, FB_AEAD_SERVER), FB_OK);
    memset(&hdr, 0, sizeof(hdr));
    memset(&a, 0, sizeof(a));
    memcpy(hdr.sid, w.sid, sizeof(hdr.sid));
    memcpy(a.client_nonce, w.c.cnonce, 16);
    a.client_nonce[0] ^= 1;
    a.cipher = FB_CIPHER_AES128_GCM;
    a.policy = FB_POLICY_FAIR;
    a.max_datagram = 1200;
    ck_assert_int_eq(fb_wire_encode_hello_ack(buf, sizeof(buf), &len, &hdr, &a, hs), FB_OK);
    ck_assert_int_eq(client_in(&w, buf, len, T0), FB_ASSOC_C_DROP);
    ck_assert(w.c.pending);
    ck_assert(!fb_aead_has_data_keys(w.caead));
    a.client_nonce[0] ^= 1;
    hdr.pn++;
    ck_assert_int_eq(fb_wire_encode_hello_ack(buf, sizeof(buf), &len, &hdr, &a, hs), FB_OK);
    ck_assert_int_eq(client_in(&w, buf, len, T0), FB_ASSOC_C_ACCEPTED);
    ck_assert_uint_eq(w.c.max_dgram, 1200);
    ck_assert(fb_aead_has_data_keys(w.caead));
    fb_aead_free(hs);
    world_free(&w);
}
END_TEST

START_TEST(test_no_randomness_no_answer)
{
    world w;

    world_init(&w, FB_CIPHER_AES128_GCM);
    fb_assoc_server_free(w.srv);
    w.sp.random = rnd_fail;
    ck_assert_int_eq(fb_assoc_server_new(&w.srv, &w.sp), FB_OK);
    client_hello(&w, T0, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_HELLO_FAILED);
    ck_assert_uint_eq(w.out.len, 0);
    ck_assert(!w.sess.pend.live);
    w.c.p.random = rnd_fail;
    ck_assert_int_eq(fb_assoc_client_hello(&w.c, w.hello, sizeof(w.hello), &w.hello_len, T0, 1),
                     FB_ERR_INTERNAL);
    world_free(&w);
}
END_TEST

/* ---- bad datagrams ----------------------------------------------------------------------------- */

START_TEST(test_truncated_oversized_and_garbage)
{
    world w;
    uint8_t *big = calloc(1, FB_WIRE_MAX_DATAGRAM + 10);
    uint8_t junk[1500];

    world_init(&w, FB_CIPHER_AES128_GCM);
    client_hello(&w, T0, 1);
    /* a HELLO cut below its minimum size */
    ck_assert_int_eq(server_in(&w, w.hello, 1199, &w.a1, T0), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_TRUNCATED);
    /* one byte short of its padding: the tag fails */
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len - 1, &w.a1, T0), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_AUTH_FAILED);
    ck_assert_int_eq(server_in(&w, w.hello, 0, &w.a1, T0), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_TRUNCATED);
    /* larger than a UDP datagram */
    memcpy(big, w.hello, w.hello_len);
    ck_assert_int_eq(server_in(&w, big, FB_WIRE_MAX_DATAGRAM + 1, &w.a1, T0), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_OVERSIZED);
    /* garbage */
    memset(junk, 0x5a, sizeof(junk));
    ck_assert_int_eq(server_in(&w, junk, sizeof(junk), &w.a1, T0), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_BAD_VERSION);
    memcpy(junk, w.hello, 28);
    junk[1] = 9;
    ck_assert_int_eq(server_in(&w, junk, sizeof(junk), &w.a1, T0), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_BAD_TYPE);
    /* a tampered body */
    memcpy(big, w.hello, w.hello_len);
    big[40] ^= 0x80;
    ck_assert_int_eq(server_in(&w, big, w.hello_len, &w.a1, T0), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_AUTH_FAILED);
    ck_assert(!w.sess.pend.live);
    /* the client: garbage, cut answers */
    ck_assert_int_eq(client_in(&w, junk, 100, T0), FB_ASSOC_C_DROP);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_HELLO_PENDING);
    memcpy(junk, w.out.dgram, w.out.len);
    ck_assert_int_eq(client_in(&w, junk, w.out.len - 1, T0), FB_ASSOC_C_DROP);
    ck_assert_int_eq(client_in(&w, junk, 0, T0), FB_ASSOC_C_DROP);
    ck_assert(w.c.pending);
    ck_assert_int_eq(client_in(&w, junk, w.out.len, T0), FB_ASSOC_C_ACCEPTED);
    free(big);
    world_free(&w);
}
END_TEST

/* ---- sessions ---------------------------------------------------------------------------------- */

START_TEST(test_session_not_found)
{
    world w;
    fb_assoc_client_params cp;
    uint8_t probe[128];
    size_t plen;

    world_init(&w, FB_CIPHER_AES128_GCM);
    /* another slot: the lookup finds nothing */
    client_params(&w, &cp, FB_CIPHER_AES128_GCM);
    cp.sid[3] = 7;
    fb_assoc_client_init(&w.c, &cp, w.caead);
    client_hello(&w, T0, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_UNKNOWN_SESSION);
    ck_assert_ptr_null(w.out.srv);
    /* the right slot, a wrong random part: not created */
    client_params(&w, &cp, FB_CIPHER_AES128_GCM);
    cp.sid[10] ^= 1;
    fb_assoc_client_init(&w.c, &cp, w.caead);
    client_hello(&w, T0, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_UNKNOWN_SESSION);
    ck_assert(!w.have_sess);
    /* ... nor matched once the session exists */
    client_params(&w, &cp, FB_CIPHER_AES128_GCM);
    fb_assoc_client_init(&w.c, &cp, w.caead);
    associate(&w, &w.a1, T0);
    cp.sid[10] ^= 1;
    fb_assoc_client_init(&w.c, &cp, w.caead);
    client_hello(&w, T0, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_UNKNOWN_SESSION);
    /* the client drops datagrams for another session */
    plen = client_probe(&w, probe, sizeof(probe)); /* names the real session */
    ck_assert_int_eq(fb_assoc_client_input(&w.c, probe, plen, T0), FB_ASSOC_C_DROP);
    world_free(&w);
}
END_TEST

START_TEST(test_new_address_needs_a_new_hello)
{
    world w;
    fb_assoc_addr a3;
    uint8_t probe[128];
    size_t plen;

    world_init(&w, FB_CIPHER_AES128_GCM);
    associate(&w, &w.a1, T0);
    /* the running association's packets from another address (NAT rebinding): dropped */
    plen = client_probe(&w, probe, sizeof(probe));
    ck_assert_int_eq(server_in(&w, probe, plen, &w.a2, T0 + 10000), FB_ASSOC_DROP_ADDRESS);
    /* a new HELLO from the new address: pending, the old one keeps running meanwhile */
    client_hello(&w, T0 + 20000, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a2, T0 + 20000), FB_ASSOC_HELLO_PENDING);
    ck_assert(w.sess.cur.live);
    ck_assert(w.sess.pend.live);
    ck_assert_int_eq(client_in(&w, w.out.dgram, w.out.len, T0 + 20001), FB_ASSOC_C_ACCEPTED);
    w.c_pn = 0;
    /* the new keys from anywhere but the new address validate nothing */
    addr4(&a3, "198.51.100.7", 40000);
    plen = client_probe(&w, probe, sizeof(probe));
    ck_assert_int_eq(server_in(&w, probe, plen, &a3, T0 + 25000), FB_ASSOC_DROP_ADDRESS);
    plen = client_probe(&w, probe, sizeof(probe));
    ck_assert_int_eq(server_in(&w, probe, plen, &w.a1, T0 + 25000), FB_ASSOC_DROP);
    ck_assert_int_eq(w.out.reason, FB_WIRE_R_AUTH_FAILED); /* tried as the running one's */
    ck_assert(w.sess.pend.live);
    ck_assert(fb_assoc_addr_equal(&w.sess.cur.peer, &w.a1));
    plen = client_probe(&w, probe, sizeof(probe));
    ck_assert_int_eq(server_in(&w, probe, plen, &w.a2, T0 + 30000), FB_ASSOC_VALIDATED);
    fb_assoc_srv_promote(&w.sess);
    ck_assert(fb_assoc_addr_equal(&w.sess.cur.peer, &w.a2));
    /* the old address is no one now */
    plen = client_probe(&w, probe, sizeof(probe));
    ck_assert_int_eq(server_in(&w, probe, plen, &w.a1, T0 + 40000), FB_ASSOC_DROP_ADDRESS);
    world_free(&w);
}
END_TEST

START_TEST(test_rehandshake_from_the_same_address_keeps_the_old_keys_working)
{
    world w;
    uint8_t probe[128];
    size_t plen;
    fb_aead_ctx *old;

    world_init(&w, FB_CIPHER_AES128_GCM);
    associate(&w, &w.a1, T0);
    /* the packets in flight under the running keys: a copy of the client's current keys */
    ck_assert_int_eq(fb_aead_new(&old, w.key, FB_AEAD_CLIENT), FB_OK);
    ck_assert_int_eq(fb_aead_set_data_keys(old, FB_CIPHER_AES128_GCM, w.c.cnonce, w.c.ack.server_nonce),
                     FB_OK);
    client_hello(&w, T0 + 10000, 1);
    ck_assert_int_eq(server_in(&w, w.hello, w.hello_len, &w.a1, T0 + 10000), FB_ASSOC_HELLO_PENDING);
    {
        fb_aead_ctx *keep = w.caead;

        w.caead = old;
        plen = client_probe(&w, probe, sizeof(probe));
        w.caead = keep;
    }
    /* both associations could own it: tried under the pending keys first, then the running ones */
    ck_assert_int_eq(server_in(&w, probe, plen, &w.a1, T0 + 10001), FB_ASSOC_PACKET);
    ck_assert(w.sess.pend.live);
    fb_aead_free(old);
    world_free(&w);
}
END_TEST

START_TEST(test_addresses)
{
    fb_assoc_addr a, b, c;
    struct sockaddr_in6 s6;
    struct sockaddr sa;

    addr4(&a, "192.0.2.1", 1);
    addr4(&b, "192.0.2.1", 1);
    addr4(&c, "192.0.2.1", 2);
    ck_assert(fb_assoc_addr_equal(&a, &b));
    ck_assert(!fb_assoc_addr_equal(&a, &c));
    memset(&s6, 0x11, sizeof(s6));
    s6.sin6_family = AF_INET6;
    s6.sin6_port = htons(1);
    inet_pton(AF_INET6, "2001:db8::1", &s6.sin6_addr);
    fb_assoc_addr_set(&b, (const struct sockaddr *)&s6, sizeof(s6));
    fb_assoc_addr_set(&c, (const struct sockaddr *)&s6, sizeof(s6));
    ck_assert(fb_assoc_addr_equal(&b, &c));
    s6.sin6_flowinfo = 0x22; /* not part of the peer */
    fb_assoc_addr_set(&c, (const struct sockaddr *)&s6, sizeof(s6));
    ck_assert(fb_assoc_addr_equal(&b, &c));
    ck_assert(!fb_assoc_addr_equal(&a, &b));
    /* an unknown family is no peer, not even itself */
    memset(&sa, 0, sizeof(sa));
    sa.sa_family = AF_UNIX;
    fb_assoc_addr_set(&c, &sa, sizeof(sa));
    ck_assert(!fb_assoc_addr_equal(&c, &c));
    fb_assoc_addr_set(&c, (const struct sockaddr *)&s6, 8); /* too short for its family */
    ck_assert(!fb_assoc_addr_equal(&c, &c));
}
END_TEST

static Suite *assoc_suite(void)
{
    Suite *s = suite_create("assoc");
    TCase *tc = tcase_create("handshake");

    tcase_add_test(tc, test_handshake_both_sides);
    tcase_add_test(tc, test_server_caps_rates_and_datagram);
    tcase_add_test(tc, test_lost_hello_is_retransmitted_with_backoff);
    tcase_add_test(tc, test_lost_ack_gets_the_same_answer_again);
    tcase_add_test(tc, test_duplicated_and_reordered_datagrams);
    tcase_add_test(tc, test_data_before_any_hello_needs_keys);
    tcase_add_test(tc, test_stale_answer_to_an_earlier_attempt_is_dropped);
    tcase_add_test(tc, test_idle_associations_expire);
    tcase_add_test(tc, test_never_more_bytes_than_received_before_validation);
    tcase_add_test(tc, test_hello_at_the_minimum_size_is_answered_smaller);
    tcase_add_test(tc, test_replayed_hello_cannot_disturb_the_association);
    tcase_add_test(tc, test_nonce_memory_is_bounded);
    tcase_add_test(tc, test_wrong_session_key);
    tcase_add_test(tc, test_reflected_hello_ack_is_dropped);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_answer_must_echo_the_pending_nonce);
    tcase_add_test(tc, test_no_randomness_no_answer);
    tcase_add_test(tc, test_truncated_oversized_and_garbage);
    tcase_add_test(tc, test_session_not_found);
    tcase_add_test(tc, test_new_address_needs_a_new_hello);
    tcase_add_test(tc, test_rehandshake_from_the_same_address_keeps_the_old_keys_working);
    tcase_add_test(tc, test_addresses);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(assoc_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
