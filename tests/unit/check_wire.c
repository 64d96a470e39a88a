/* Unit tests for fb_wire: the UDP datagram codec, protocol version 1 (docs/PROTOCOL.md).
 *
 * Round trips of every packet type, the exact sizes the protocol promises, rejection of every
 * truncation, every flipped bit, wrong keys, reflection, replays and oversized datagrams, field
 * validation of authenticated but malformed bodies, and 100 000 random inputs. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fb_aead.h"
#include "fb_config.h"
#include "fb_table.h"
#include "fb_wire.h"

#define BUFSZ (FB_WIRE_MAX_DATAGRAM + 64)

static const uint8_t KEY[32] = {0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe, 1,  2,  3,
                                4,    5,    6,    7,    8,    9,    10,   11,   12, 13, 14,
                                15,   16,   17,   18,   19,   20,   21,   22,   23, 24};
static const uint8_t CN[16] = {0xaa, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
static const uint8_t SN[16] = {0xbb, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

static fb_aead_ctx *client, *server;
static uint8_t *buf, *copy;

static void setup(void)
{
    ck_assert_int_eq(fb_aead_new(&client, KEY, FB_AEAD_CLIENT), FB_OK);
    ck_assert_int_eq(fb_aead_new(&server, KEY, FB_AEAD_SERVER), FB_OK);
    ck_assert_int_eq(fb_aead_set_data_keys(client, FB_CIPHER_AES128_GCM, CN, SN), FB_OK);
    ck_assert_int_eq(fb_aead_set_data_keys(server, FB_CIPHER_AES128_GCM, CN, SN), FB_OK);
    buf = malloc(BUFSZ);
    copy = malloc(BUFSZ);
    ck_assert_ptr_nonnull(buf);
    ck_assert_ptr_nonnull(copy);
}

static void teardown(void)
{
    fb_aead_free(client);
    fb_aead_free(server);
    free(buf);
    free(copy);
}

static fb_wire_hdr make_hdr(uint64_t pn, uint8_t flags)
{
    fb_wire_hdr h;

    memset(&h, 0, sizeof(h));
    h.flags = flags;
    h.pn = pn;
    for (int i = 0; i < FB_WIRE_SID_LEN; i++)
        h.sid[i] = (uint8_t)(0x40 + i);
    return h;
}

/* A valid packet of every type, as the client or the server would send it. */
static fb_wire_pkt sample(fb_wire_type type)
{
    static uint8_t payload[FB_WIRE_DEFAULT_PAYLOAD];
    fb_wire_pkt p;

    memset(&p, 0, sizeof(p));
    p.hdr = make_hdr(type == FB_WIRE_HELLO || type == FB_WIRE_HELLO_ACK ? 0x8badf00ddeadbeefull : 42, 0);
    p.hdr.type = (uint8_t)type;
    switch (type) {
    case FB_WIRE_HELLO:
        memcpy(p.u.hello.client_nonce, CN, 16);
        p.u.hello.cipher = FB_CIPHER_AES256_GCM;
        p.u.hello.policy = FB_POLICY_FAIR;
        p.u.hello.target_rate = 125000000;
        p.u.hello.min_rate = 1000000;
        p.u.hello.client_ts_us = 0x0102030405060708ull;
        p.u.hello.max_datagram = 1452;
        break;
    case FB_WIRE_HELLO_ACK:
        memcpy(p.u.hello_ack.client_nonce, CN, 16);
        memcpy(p.u.hello_ack.server_nonce, SN, 16);
        p.u.hello_ack.status = FB_OK;
        p.u.hello_ack.cipher = FB_CIPHER_AES128_GCM;
        p.u.hello_ack.policy = FB_POLICY_LOW;
        p.u.hello_ack.target_rate = 62500000;
        p.u.hello_ack.min_rate = 0;
        p.u.hello_ack.echo_ts_us = 0x0102030405060708ull;
        p.u.hello_ack.hold_us = 77;
        p.u.hello_ack.max_datagram = 1400;
        p.u.hello_ack.server_ts_us = 0xfedcba9876543210ull;
        break;
    case FB_WIRE_DATA:
        for (size_t i = 0; i < sizeof(payload); i++)
            payload[i] = (uint8_t)(i * 31 + 7);
        p.hdr.flags = FB_WIRE_F_DATA_RETRANSMIT;
        p.u.data.offset = 0x123456789aull;
        p.u.data.send_ts_us = 999999;
        p.u.data.payload = payload;
        p.u.data.len = sizeof(payload);
        break;
    case FB_WIRE_FEEDBACK:
        p.hdr.flags = FB_WIRE_F_FEEDBACK_MORE;
        p.u.feedback.cum_offset = 1000;
        p.u.feedback.high_offset = 90000;
        p.u.feedback.recv_bytes = 85000;
        p.u.feedback.recv_rate = 12500000;
        p.u.feedback.echo_ts_us = 31337;
        p.u.feedback.echo_recv_ts_us = 0x7fffffffffull;
        p.u.feedback.hold_us = 1234;
        p.u.feedback.delay_lag_us = 4321;
        p.u.feedback.nranges = 3;
        p.u.feedback.ranges[0] = (fb_range){1000, 1400};
        p.u.feedback.ranges[1] = (fb_range){5000, 2800};
        p.u.feedback.ranges[2] = (fb_range){80000, 1400};
        break;
    case FB_WIRE_CLOSE:
        p.u.close.reason = FB_ERR_DISK_FULL;
        break;
    case FB_WIRE_PROBE:
        p.u.probe.probe_id = 0xabcdef;
        p.u.probe.ts_us = 5555;
        p.u.probe.hold_us = 0;
        p.u.probe.pad_to = 1300;
        break;
    }
    return p;
}

static const fb_aead_ctx *sender_of(fb_wire_type type)
{
    return type == FB_WIRE_HELLO_ACK ? server : client;
}

static const fb_aead_ctx *receiver_of(fb_wire_type type)
{
    return type == FB_WIRE_HELLO_ACK ? client : server;
}

static size_t encode_sample(fb_wire_type type)
{
    fb_wire_pkt p = sample(type);
    size_t len = 0;

    ck_assert_int_eq(fb_wire_encode(buf, BUFSZ, &len, &p, sender_of(type)), FB_OK);
    ck_assert_uint_gt(len, 0);
    return len;
}

static fb_wire_reason open_copy(fb_wire_pkt *out, const uint8_t *src, size_t len, const fb_aead_ctx *ctx,
                                fb_replay *replay)
{
    fb_wire_reason why = FB_WIRE_R__COUNT;
    fb_err rc;

    memcpy(copy, src, len);
    rc = fb_wire_open(out, &why, copy, len, ctx, replay);
    ck_assert_int_eq(rc == FB_OK, why == FB_WIRE_R_NONE);
    if (rc != FB_OK)
        ck_assert_int_eq(rc, FB_ERR_PROTOCOL);
    return why;
}

/* ---- round trips ------------------------------------------------------------------------ */

START_TEST(test_round_trip_every_type)
{
    for (int t = FB_WIRE_HELLO; t <= FB_WIRE_PROBE; t++) {
        fb_wire_pkt want = sample((fb_wire_type)t), got;
        fb_wire_hdr peek;
        fb_wire_reason why;
        size_t len = encode_sample((fb_wire_type)t);

        /* Header readable without the key. */
        ck_assert_int_eq(fb_wire_peek_header(&peek, &why, buf, len), FB_OK);
        ck_assert_uint_eq(peek.type, t);
        ck_assert_uint_eq(peek.pn, want.hdr.pn);
        ck_assert_uint_eq(peek.flags, want.hdr.flags);
        if (t == FB_WIRE_DATA) {
            /* the short header: the slot index alone, the rest of the id zero */
            static const uint8_t zero[FB_WIRE_SID_LEN - 4];

            ck_assert_mem_eq(peek.sid, want.hdr.sid, 4);
            ck_assert_mem_eq(peek.sid + 4, zero, sizeof(zero));
            ck_assert_uint_eq(fb_wire_sid_slot(peek.sid), fb_wire_sid_slot(want.hdr.sid));
        } else {
            ck_assert_mem_eq(peek.sid, want.hdr.sid, FB_WIRE_SID_LEN);
        }
        /* It names its session (by the slot alone for DATA), not one with another slot, nor,
         * with the long header, one with another random part. */
        {
            uint8_t other[FB_WIRE_SID_LEN];

            ck_assert(fb_wire_names_session(&peek, want.hdr.sid));
            memcpy(other, want.hdr.sid, sizeof(other));
            other[3] ^= 1;
            ck_assert(!fb_wire_names_session(&peek, other));
            memcpy(other, want.hdr.sid, sizeof(other));
            other[FB_WIRE_SID_LEN - 1] ^= 1;
            ck_assert_int_eq(fb_wire_names_session(&peek, other), t == FB_WIRE_DATA);
        }

        ck_assert_int_eq(open_copy(&got, buf, len, receiver_of((fb_wire_type)t), NULL), FB_WIRE_R_NONE);
        ck_assert_uint_eq(got.hdr.type, t);
        ck_assert_uint_eq(got.hdr.pn, want.hdr.pn);
        ck_assert_uint_eq(got.datagram_len, len);
        switch (t) {
        case FB_WIRE_HELLO:
            ck_assert_uint_eq(len, FB_WIRE_MIN_DATAGRAM);
            ck_assert_mem_eq(got.u.hello.client_nonce, CN, 16);
            ck_assert_uint_eq(got.u.hello.cipher, want.u.hello.cipher);
            ck_assert_uint_eq(got.u.hello.policy, want.u.hello.policy);
            ck_assert_uint_eq(got.u.hello.target_rate, want.u.hello.target_rate);
            ck_assert_uint_eq(got.u.hello.min_rate, want.u.hello.min_rate);
            ck_assert_uint_eq(got.u.hello.client_ts_us, want.u.hello.client_ts_us);
            ck_assert_uint_eq(got.u.hello.max_datagram, want.u.hello.max_datagram);
            ck_assert_uint_eq(got.u.hello.pad_to, len);
            break;
        case FB_WIRE_HELLO_ACK:
            ck_assert_uint_eq(len, FB_WIRE_OVERHEAD + FB_WIRE_HELLO_ACK_FIXED);
            ck_assert_mem_eq(got.u.hello_ack.client_nonce, CN, 16);
            ck_assert_mem_eq(got.u.hello_ack.server_nonce, SN, 16);
            ck_assert_uint_eq(got.u.hello_ack.status, FB_OK);
            ck_assert_uint_eq(got.u.hello_ack.cipher, want.u.hello_ack.cipher);
            ck_assert_uint_eq(got.u.hello_ack.policy, want.u.hello_ack.policy);
            ck_assert_uint_eq(got.u.hello_ack.target_rate, want.u.hello_ack.target_rate);
            ck_assert_uint_eq(got.u.hello_ack.min_rate, 0);
            ck_assert_uint_eq(got.u.hello_ack.echo_ts_us, want.u.hello_ack.echo_ts_us);
            ck_assert_uint_eq(got.u.hello_ack.hold_us, 77);
            ck_assert_uint_eq(got.u.hello_ack.max_datagram, 1400);
            ck_assert_uint_eq(got.u.hello_ack.server_ts_us, want.u.hello_ack.server_ts_us);
            break;
        case FB_WIRE_DATA:
            ck_assert_uint_eq(len, FB_WIRE_DEFAULT_DATAGRAM);
            ck_assert_uint_eq(got.hdr.flags, FB_WIRE_F_DATA_RETRANSMIT);
            ck_assert_uint_eq(got.u.data.offset, want.u.data.offset);
            ck_assert_uint_eq(got.u.data.send_ts_us, 999999);
            ck_assert_uint_eq(got.u.data.len, want.u.data.len);
            ck_assert_mem_eq(got.u.data.payload, want.u.data.payload, want.u.data.len);
            /* The payload was decrypted in place: it points into the caller's buffer. */
            ck_assert_ptr_eq(got.u.data.payload, copy + FB_WIRE_DATA_PAYLOAD_OFF);
            break;
        case FB_WIRE_FEEDBACK:
            ck_assert_uint_eq(len, FB_WIRE_OVERHEAD + FB_WIRE_FEEDBACK_FIXED + 3 * FB_WIRE_RANGE_LEN);
            ck_assert_uint_eq(got.hdr.flags, FB_WIRE_F_FEEDBACK_MORE);
            ck_assert_uint_eq(got.u.feedback.cum_offset, 1000);
            ck_assert_uint_eq(got.u.feedback.high_offset, 90000);
            ck_assert_uint_eq(got.u.feedback.recv_bytes, 85000);
            ck_assert_uint_eq(got.u.feedback.recv_rate, 12500000);
            ck_assert_uint_eq(got.u.feedback.echo_ts_us, 31337);
            ck_assert_uint_eq(got.u.feedback.echo_recv_ts_us, 0x7fffffffffull);
            ck_assert_uint_eq(got.u.feedback.hold_us, 1234);
            ck_assert_uint_eq(got.u.feedback.delay_lag_us, 4321);
            ck_assert_uint_eq(got.u.feedback.nranges, 3);
            for (int i = 0; i < 3; i++) {
                ck_assert_uint_eq(got.u.feedback.ranges[i].offset, want.u.feedback.ranges[i].offset);
                ck_assert_uint_eq(got.u.feedback.ranges[i].length, want.u.feedback.ranges[i].length);
            }
            break;
        case FB_WIRE_CLOSE:
            ck_assert_uint_eq(len, FB_WIRE_OVERHEAD + FB_WIRE_CLOSE_FIXED);
            ck_assert_uint_eq(got.u.close.reason, FB_ERR_DISK_FULL);
            break;
        case FB_WIRE_PROBE:
            ck_assert_uint_eq(len, 1300);
            ck_assert_uint_eq(got.u.probe.probe_id, 0xabcdef);
            ck_assert_uint_eq(got.u.probe.ts_us, 5555);
            ck_assert_uint_eq(got.u.probe.pad_to, 1300);
            break;
        }
    }
}
END_TEST

START_TEST(test_round_trip_with_each_cipher)
{
    static const unsigned ciphers[] = {FB_CIPHER_NONE, FB_CIPHER_AES128_GCM, FB_CIPHER_AES256_GCM};

    for (size_t c = 0; c < 3; c++) {
        fb_wire_pkt got;

        ck_assert_int_eq(fb_aead_set_data_keys(client, ciphers[c], CN, SN), FB_OK);
        ck_assert_int_eq(fb_aead_set_data_keys(server, ciphers[c], CN, SN), FB_OK);
        for (int t = FB_WIRE_HELLO; t <= FB_WIRE_PROBE; t++) {
            size_t len = encode_sample((fb_wire_type)t);

            ck_assert_int_eq(open_copy(&got, buf, len, receiver_of((fb_wire_type)t), NULL), FB_WIRE_R_NONE);
            ck_assert_uint_eq(got.hdr.type, t);
        }
    }
}
END_TEST

/* DATA carries the low 32 bits of its packet number; the receiver restores the rest from its
 * replay window (the nearest to the highest accepted + 1), across the 2^32 boundary and with
 * reordering, and a number from elsewhere fails the tag (the nonce is built from all 64 bits). */
START_TEST(test_data_packet_numbers_across_the_wrap)
{
    static const uint64_t order[] = {0xfffffffdull, 0xffffffffull, 0xfffffffeull, 0x100000001ull,
                                     0x100000000ull, 0x100000002ull};
    fb_replay w;
    fb_wire_data d = {4096, 123, (const uint8_t *)"payload", 7};
    fb_wire_pkt got;
    size_t len;

    fb_replay_init(&w);
    fb_replay_update(&w, 0xfffffff0ull); /* the window already this far */
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        fb_wire_hdr h = make_hdr(order[i], 0);

        ck_assert_int_eq(fb_wire_encode_data(buf, BUFSZ, &len, &h, &d, client), FB_OK);
        ck_assert_int_eq(open_copy(&got, buf, len, server, &w), FB_WIRE_R_NONE);
        ck_assert_uint_eq(got.hdr.pn, order[i]);
    }
    /* replayed: the same low 32 bits restore to the same number, which the window has seen */
    {
        fb_wire_hdr h = make_hdr(0x100000000ull, 0);

        ck_assert_int_eq(fb_wire_encode_data(buf, BUFSZ, &len, &h, &d, client), FB_OK);
        ck_assert_int_eq(open_copy(&got, buf, len, server, &w), FB_WIRE_R_REPLAYED);
    }
    /* sealed under a number 2^32 away (same low bits): restored wrongly, so the tag fails */
    {
        fb_wire_hdr h = make_hdr(0x200000003ull, 0);

        ck_assert_int_eq(fb_wire_encode_data(buf, BUFSZ, &len, &h, &d, client), FB_OK);
        ck_assert_int_eq(open_copy(&got, buf, len, server, &w), FB_WIRE_R_AUTH_FAILED);
    }
    /* the restoring rule itself (RFC 9000 A.3 with 32 bits) */
    ck_assert_uint_eq(fb_wire_pn_restore(0, 0, 0), 0);
    ck_assert_uint_eq(fb_wire_pn_restore(0, 0, 7), 7);
    ck_assert_uint_eq(fb_wire_pn_restore(0xfffffff0ull, 1, 0x00000005u), 0x100000005ull);
    ck_assert_uint_eq(fb_wire_pn_restore(0x100000005ull, 1, 0xfffffff0u), 0xfffffff0ull);
    ck_assert_uint_eq(fb_wire_pn_restore(0x300000000ull, 1, 0x7fffffffu), 0x27fffffffull + 0x100000000ull);
    ck_assert_uint_eq(fb_wire_pn_restore(0x300000000ull, 1, 0x80000002u), 0x280000002ull);
    /* and the 32-bit send time: a recent full time comes back unchanged, a wrapped one restored */
    ck_assert_uint_eq(fb_wire_ts_unwrap(0x100000100ull, 0x100000000ull), 0x100000000ull);
    ck_assert_uint_eq(fb_wire_ts_unwrap(0x100000100ull, 0xffffff00ull), 0xffffff00ull);
    ck_assert_uint_eq(fb_wire_ts_unwrap(0x100000100ull, 0x50ull), 0x100000050ull);
}
END_TEST

START_TEST(test_data_sizes_from_one_byte_to_the_maximum)
{
    static const size_t sizes[] = {1, 2, 1412, FB_WIRE_DEFAULT_PAYLOAD, 8192, 65000, FB_WIRE_MAX_PAYLOAD};
    static uint8_t payload[FB_WIRE_MAX_PAYLOAD];

    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)(i ^ (i >> 8));
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        fb_wire_hdr h = make_hdr(k, FB_WIRE_F_DATA_LAST);
        fb_wire_data d = {UINT64_MAX - sizes[k], 1, payload, sizes[k]};
        fb_wire_pkt got;
        size_t len;

        ck_assert_int_eq(fb_wire_encode_data(buf, BUFSZ, &len, &h, &d, client), FB_OK);
        ck_assert_uint_eq(len, FB_WIRE_DATA_OVERHEAD + sizes[k]);
        ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_NONE);
        ck_assert_uint_eq(got.u.data.len, sizes[k]);
        ck_assert_uint_eq(got.u.data.offset, UINT64_MAX - sizes[k]);
        ck_assert_mem_eq(got.u.data.payload, payload, sizes[k]);
    }
}
END_TEST

START_TEST(test_data_payload_read_in_place_is_not_copied)
{
    fb_wire_hdr h = make_hdr(5, 0);
    fb_wire_data d;
    fb_wire_pkt got;
    size_t len;

    /* The sender reads the file straight into the datagram buffer. */
    memset(buf + FB_WIRE_DATA_PAYLOAD_OFF, 'z', 1000);
    d.offset = 4096;
    d.send_ts_us = 3;
    d.payload = buf + FB_WIRE_DATA_PAYLOAD_OFF;
    d.len = 1000;
    ck_assert_int_eq(fb_wire_encode_data(buf, BUFSZ, &len, &h, &d, client), FB_OK);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_NONE);
    for (size_t i = 0; i < 1000; i++)
        ck_assert_uint_eq(got.u.data.payload[i], 'z');
}
END_TEST

START_TEST(test_data_payload_overlapping_the_header_area)
{
    fb_wire_hdr h = make_hdr(6, 0);
    fb_wire_data d;
    fb_wire_pkt got;
    uint8_t want[100];
    size_t len;

    for (int i = 0; i < 100; i++)
        want[i] = buf[10 + i] = (uint8_t)(i + 1);
    d.offset = 0;
    d.send_ts_us = 1;
    d.payload = buf + 10; /* overlaps where the header and offset go */
    d.len = 100;
    ck_assert_int_eq(fb_wire_encode_data(buf, BUFSZ, &len, &h, &d, client), FB_OK);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_NONE);
    ck_assert_mem_eq(got.u.data.payload, want, 100);
}
END_TEST

START_TEST(test_feedback_extremes)
{
    fb_wire_hdr h = make_hdr(9, 0);
    fb_wire_feedback f;
    fb_wire_pkt got;
    size_t len;

    /* Everything received: no ranges, COMPLETE. */
    memset(&f, 0, sizeof(f));
    f.cum_offset = f.high_offset = 1u << 30;
    h.flags = FB_WIRE_F_FEEDBACK_COMPLETE;
    ck_assert_int_eq(fb_wire_encode_feedback(buf, BUFSZ, &len, &h, &f, client), FB_OK);
    ck_assert_uint_eq(len, FB_WIRE_OVERHEAD + FB_WIRE_FEEDBACK_FIXED);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_NONE);
    ck_assert_uint_eq(got.hdr.flags, FB_WIRE_F_FEEDBACK_COMPLETE);

    /* The most ranges a FEEDBACK carries: still within the minimum datagram. */
    memset(&f, 0, sizeof(f));
    f.cum_offset = 0;
    f.nranges = FB_WIRE_MAX_RANGES;
    for (unsigned i = 0; i < FB_WIRE_MAX_RANGES; i++)
        f.ranges[i] = (fb_range){(uint64_t)i * 3000, 1500};
    f.high_offset = (uint64_t)FB_WIRE_MAX_RANGES * 3000;
    h.flags = FB_WIRE_F_FEEDBACK_MORE;
    ck_assert_int_eq(fb_wire_encode_feedback(buf, BUFSZ, &len, &h, &f, client), FB_OK);
    ck_assert_uint_le(len, FB_WIRE_MIN_DATAGRAM);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_NONE);
    ck_assert_uint_eq(got.u.feedback.nranges, FB_WIRE_MAX_RANGES);
    ck_assert_uint_eq(got.u.feedback.ranges[63].offset, 63u * 3000);
}
END_TEST

START_TEST(test_feedback_listing_from_a_later_hole)
{
    fb_wire_hdr h = make_hdr(11, 0);
    fb_wire_feedback f;
    fb_wire_pkt got;
    size_t len, len_plain;

    /* Holes at 0 (cum), 3000 and 6000; the listing starts at the one at 3000: [0, 3000) is not
     * described. The FROM block adds 16 bytes, and 64 ranges still fit the minimum datagram. */
    memset(&f, 0, sizeof(f));
    f.cum_offset = 0;
    f.high_offset = (uint64_t)(FB_WIRE_MAX_RANGES + 1) * 3000;
    f.from_offset = 3000;
    f.nranges = FB_WIRE_MAX_RANGES;
    for (unsigned i = 0; i < FB_WIRE_MAX_RANGES; i++)
        f.ranges[i] = (fb_range){(uint64_t)(i + 1) * 3000, 1500};
    h.flags = FB_WIRE_F_FEEDBACK_FROM | FB_WIRE_F_FEEDBACK_MORE;
    ck_assert_int_eq(fb_wire_encode_feedback(buf, BUFSZ, &len, &h, &f, client), FB_OK);
    ck_assert_uint_le(len, FB_WIRE_MIN_DATAGRAM);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_NONE);
    ck_assert_uint_eq(got.hdr.flags, FB_WIRE_F_FEEDBACK_FROM | FB_WIRE_F_FEEDBACK_MORE);
    ck_assert_uint_eq(got.u.feedback.from_offset, 3000);
    ck_assert_uint_eq(got.u.feedback.cum_offset, 0);
    ck_assert_uint_eq(got.u.feedback.nranges, FB_WIRE_MAX_RANGES);
    ck_assert_uint_eq(got.u.feedback.ranges[0].offset, 3000);
    h.flags = FB_WIRE_F_FEEDBACK_MORE;
    f.nranges = 1;
    f.ranges[0] = (fb_range){0, 1500};
    ck_assert_int_eq(fb_wire_encode_feedback(buf, BUFSZ, &len_plain, &h, &f, client), FB_OK);
    ck_assert_int_eq(open_copy(&got, buf, len_plain, server, NULL), FB_WIRE_R_NONE);
    ck_assert_uint_eq(got.u.feedback.from_offset, 0); /* without FROM: cum */

    /* The encoder refuses a FROM at or below cum, at or past high, or not at the first range. */
    h.flags = FB_WIRE_F_FEEDBACK_FROM | FB_WIRE_F_FEEDBACK_MORE;
    f.cum_offset = 1500;
    f.from_offset = 1500;
    f.ranges[0] = (fb_range){1500, 100};
    ck_assert_int_eq(fb_wire_encode_feedback(buf, BUFSZ, &len, &h, &f, client), FB_ERR_INTERNAL);
    f.from_offset = f.high_offset;
    f.ranges[0] = (fb_range){f.high_offset, 1};
    ck_assert_int_eq(fb_wire_encode_feedback(buf, BUFSZ, &len, &h, &f, client), FB_ERR_INTERNAL);
    f.from_offset = 3000;
    f.ranges[0] = (fb_range){4000, 100};
    ck_assert_int_eq(fb_wire_encode_feedback(buf, BUFSZ, &len, &h, &f, client), FB_ERR_INTERNAL);

}
END_TEST

START_TEST(test_hello_ack_never_larger_than_hello)
{
    size_t hello = encode_sample(FB_WIRE_HELLO), ack = encode_sample(FB_WIRE_HELLO_ACK);

    ck_assert_uint_ge(hello, FB_WIRE_MIN_DATAGRAM);
    ck_assert_uint_lt(ack, hello);
    /* A padded HELLO is as large as asked. */
    {
        fb_wire_pkt p = sample(FB_WIRE_HELLO), got;
        size_t len;

        p.u.hello.pad_to = 1452;
        ck_assert_int_eq(fb_wire_encode(buf, BUFSZ, &len, &p, client), FB_OK);
        ck_assert_uint_eq(len, 1452);
        ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_NONE);
        ck_assert_uint_eq(got.u.hello.pad_to, 1452);
    }
}
END_TEST

START_TEST(test_refusing_hello_ack)
{
    fb_wire_hdr h = make_hdr(77, 0);
    fb_wire_hello_ack a;
    fb_wire_pkt got;
    size_t len;

    memset(&a, 0, sizeof(a));
    memcpy(a.client_nonce, CN, 16);
    a.status = FB_ERR_PERMISSION; /* e.g. the requested cipher is not allowed */
    ck_assert_int_eq(fb_wire_encode_hello_ack(buf, BUFSZ, &len, &h, &a, server), FB_OK);
    ck_assert_int_eq(open_copy(&got, buf, len, client, NULL), FB_WIRE_R_NONE);
    ck_assert_uint_eq(got.u.hello_ack.status, FB_ERR_PERMISSION);
}
END_TEST

/* ---- rejection --------------------------------------------------------------------------- */

START_TEST(test_every_truncation_is_rejected)
{
    for (int t = FB_WIRE_HELLO; t <= FB_WIRE_PROBE; t++) {
        size_t len = encode_sample((fb_wire_type)t);

        for (size_t cut = 0; cut < len; cut++) {
            fb_wire_pkt got;
            fb_wire_reason why = open_copy(&got, buf, cut, receiver_of((fb_wire_type)t), NULL);

            ck_assert_msg(why != FB_WIRE_R_NONE, "type %d accepted at %zu of %zu bytes", t, cut, len);
            ck_assert_msg(why == FB_WIRE_R_TRUNCATED || why == FB_WIRE_R_AUTH_FAILED, "type %d cut %zu: %s",
                          t, cut, fb_wire_reason_name(why));
            ck_assert_uint_eq(got.hdr.type, 0); /* nothing leaks out of a failed decode */
        }
    }
}
END_TEST

START_TEST(test_every_flipped_bit_is_rejected)
{
    for (int t = FB_WIRE_HELLO; t <= FB_WIRE_PROBE; t++) {
        size_t len = encode_sample((fb_wire_type)t);

        for (size_t bit = 0; bit < 8 * len; bit++) {
            fb_wire_pkt got;
            fb_wire_reason why;

            buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            why = open_copy(&got, buf, len, receiver_of((fb_wire_type)t), NULL);
            buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            /* Bytes 0-3 (version, type, flags, reserved) are checked before the key is used and
             * may be refused for that; every other bit is caught by the tag. */
            if (bit / 8 >= 4)
                ck_assert_msg(why == FB_WIRE_R_AUTH_FAILED, "type %d bit %zu: %s", t, bit,
                              fb_wire_reason_name(why));
            else
                ck_assert_msg(why != FB_WIRE_R_NONE, "type %d bit %zu accepted", t, bit);
        }
    }
}
END_TEST

START_TEST(test_wrong_key_and_reflection_fail_authentication)
{
    uint8_t other_key[32];
    fb_aead_ctx *stranger;

    memcpy(other_key, KEY, 32);
    other_key[0] ^= 1;
    ck_assert_int_eq(fb_aead_new(&stranger, other_key, FB_AEAD_SERVER), FB_OK);
    ck_assert_int_eq(fb_aead_set_data_keys(stranger, FB_CIPHER_AES128_GCM, CN, SN), FB_OK);
    for (int t = FB_WIRE_HELLO; t <= FB_WIRE_PROBE; t++) {
        size_t len;
        fb_wire_pkt got;

        if (t == FB_WIRE_HELLO_ACK)
            continue; /* sent by the server: covered by the reflection check below */
        len = encode_sample((fb_wire_type)t);
        ck_assert_int_eq(open_copy(&got, buf, len, stranger, NULL), FB_WIRE_R_AUTH_FAILED);
        /* The client's own packet sent back to it. */
        ck_assert_int_eq(open_copy(&got, buf, len, client, NULL), FB_WIRE_R_AUTH_FAILED);
    }
    {
        size_t len = encode_sample(FB_WIRE_HELLO_ACK);
        fb_wire_pkt got;

        ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_AUTH_FAILED);
    }
    fb_aead_free(stranger);
}
END_TEST

START_TEST(test_data_before_handshake_has_no_keys)
{
    fb_aead_ctx *fresh;
    fb_wire_pkt got;
    size_t len = encode_sample(FB_WIRE_DATA);

    ck_assert_int_eq(fb_aead_new(&fresh, KEY, FB_AEAD_SERVER), FB_OK);
    ck_assert_int_eq(open_copy(&got, buf, len, fresh, NULL), FB_WIRE_R_NO_KEYS);
    /* ... while its HELLO opens fine. */
    len = encode_sample(FB_WIRE_HELLO);
    ck_assert_int_eq(open_copy(&got, buf, len, fresh, NULL), FB_WIRE_R_NONE);
    fb_aead_free(fresh);
}
END_TEST

START_TEST(test_replayed_packet_numbers_are_rejected)
{
    fb_replay w;
    fb_wire_pkt p = sample(FB_WIRE_DATA), got;
    size_t len;
    uint8_t saved[2000];
    size_t saved_len;

    fb_replay_init(&w);
    p.hdr.pn = 5000;
    ck_assert_int_eq(fb_wire_encode(buf, BUFSZ, &len, &p, client), FB_OK);
    memcpy(saved, buf, len);
    saved_len = len;
    ck_assert_int_eq(open_copy(&got, saved, saved_len, server, &w), FB_WIRE_R_NONE);
    ck_assert_int_eq(open_copy(&got, saved, saved_len, server, &w), FB_WIRE_R_REPLAYED);

    /* An old number far below the window is refused before any decryption. */
    p.hdr.pn = 5000 - FB_REPLAY_WINDOW;
    ck_assert_int_eq(fb_wire_encode(buf, BUFSZ, &len, &p, client), FB_OK);
    ck_assert_int_eq(open_copy(&got, buf, len, server, &w), FB_WIRE_R_REPLAYED);

    /* A forged packet with a huge number does not move the window. */
    p.hdr.pn = 1000000;
    ck_assert_int_eq(fb_wire_encode(buf, BUFSZ, &len, &p, client), FB_OK);
    buf[len - 1] ^= 1;
    ck_assert_int_eq(open_copy(&got, buf, len, server, &w), FB_WIRE_R_AUTH_FAILED);
    p.hdr.pn = 5001;
    ck_assert_int_eq(fb_wire_encode(buf, BUFSZ, &len, &p, client), FB_OK);
    ck_assert_int_eq(open_copy(&got, buf, len, server, &w), FB_WIRE_R_NONE);

    /* Handshake packets carry random numbers and never touch the window. */
    len = encode_sample(FB_WIRE_HELLO);
    ck_assert_int_eq(open_copy(&got, buf, len, server, &w), FB_WIRE_R_NONE);
    ck_assert_int_eq(open_copy(&got, buf, len, server, &w), FB_WIRE_R_NONE);
    ck_assert_uint_eq(w.top, 5001);
}
END_TEST

START_TEST(test_oversized_datagrams_are_rejected)
{
    fb_wire_pkt got;
    fb_wire_hdr h;
    fb_wire_reason why;
    size_t len;

    /* Beyond the largest UDP payload, whatever it holds. */
    len = encode_sample(FB_WIRE_DATA);
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, FB_WIRE_MAX_DATAGRAM + 1), FB_ERR_PROTOCOL);
    ck_assert_int_eq(why, FB_WIRE_R_OVERSIZED);
    /* Longer than its type allows: a HELLO_ACK, a CLOSE, a FEEDBACK with too many ranges. */
    len = encode_sample(FB_WIRE_HELLO_ACK);
    memset(buf + len, 0, 16);
    ck_assert_int_eq(open_copy(&got, buf, len + 16, client, NULL), FB_WIRE_R_OVERSIZED);
    len = encode_sample(FB_WIRE_CLOSE);
    ck_assert_int_eq(open_copy(&got, buf, len + 1, server, NULL), FB_WIRE_R_OVERSIZED);
    len = encode_sample(FB_WIRE_FEEDBACK);
    ck_assert_int_eq(
        open_copy(&got, buf,
                  FB_WIRE_OVERHEAD + FB_WIRE_FEEDBACK_FIXED + (FB_WIRE_MAX_RANGES + 1) * FB_WIRE_RANGE_LEN,
                  server, NULL),
        FB_WIRE_R_OVERSIZED);
    /* The encoders refuse to build them. */
    {
        static uint8_t big[FB_WIRE_MAX_PAYLOAD + 1];
        fb_wire_hdr hh = make_hdr(1, 0);
        fb_wire_data d = {0, 0, big, sizeof(big)};
        fb_wire_probe pr = {1, 2, 0, FB_WIRE_MAX_DATAGRAM + 1};
        fb_wire_pkt hello = sample(FB_WIRE_HELLO);

        ck_assert_int_eq(fb_wire_encode_data(buf, BUFSZ, &len, &hh, &d, client), FB_ERR_TOO_LARGE);
        ck_assert_uint_eq(len, 0);
        ck_assert_int_eq(fb_wire_encode_probe(buf, BUFSZ, &len, &hh, &pr, client), FB_ERR_TOO_LARGE);
        /* Nor write past the buffer they are given. */
        ck_assert_int_eq(fb_wire_encode(buf, FB_WIRE_MIN_DATAGRAM - 1, &len, &hello, client),
                         FB_ERR_TOO_LARGE);
        d.len = 100;
        ck_assert_int_eq(fb_wire_encode_data(buf, FB_WIRE_DATA_OVERHEAD + 99, &len, &hh, &d, client),
                         FB_ERR_TOO_LARGE);
    }
}
END_TEST

START_TEST(test_header_checks_before_the_key)
{
    fb_wire_hdr h;
    fb_wire_reason why;
    size_t len = encode_sample(FB_WIRE_DATA);

    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, 0), FB_ERR_PROTOCOL);
    ck_assert_int_eq(why, FB_WIRE_R_TRUNCATED);
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, 10), FB_ERR_PROTOCOL);
    ck_assert_int_eq(why, FB_WIRE_R_TRUNCATED);
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, FB_WIRE_DATA_OVERHEAD), FB_ERR_PROTOCOL);
    ck_assert_int_eq(why, FB_WIRE_R_TRUNCATED); /* a DATA needs a byte of payload */
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, FB_WIRE_DATA_OVERHEAD + 1), FB_OK);

    buf[0] = 0xF2; /* version 2 (the long DATA header), no longer spoken */
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, len), FB_ERR_PROTOCOL);
    ck_assert_int_eq(why, FB_WIRE_R_BAD_VERSION);
    buf[0] = 0xF1; /* version 1 (before the FROM flag), no longer spoken */
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, len), FB_ERR_PROTOCOL);
    ck_assert_int_eq(why, FB_WIRE_R_BAD_VERSION);
    buf[0] = 0x16; /* a TLS record, say */
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, len), FB_ERR_PROTOCOL);
    ck_assert_int_eq(why, FB_WIRE_R_BAD_VERSION);
    buf[0] = FB_WIRE_VERSION_BYTE;

    buf[1] = 0;
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, len), FB_ERR_PROTOCOL);
    ck_assert_int_eq(why, FB_WIRE_R_BAD_TYPE);
    buf[1] = 7;
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, len), FB_ERR_PROTOCOL);
    ck_assert_int_eq(why, FB_WIRE_R_BAD_TYPE);
    buf[1] = FB_WIRE_DATA;

    buf[2] = 0x80; /* unknown flag */
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, len), FB_ERR_PROTOCOL);
    ck_assert_int_eq(why, FB_WIRE_R_MALFORMED);
    buf[2] = 0;
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, len), FB_OK);
    /* the long header's reserved byte */
    len = encode_sample(FB_WIRE_CLOSE);
    buf[3] = 1;
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, len), FB_ERR_PROTOCOL);
    ck_assert_int_eq(why, FB_WIRE_R_MALFORMED);
    buf[3] = 0;
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, len), FB_OK);

    /* A FEEDBACK whose length is not a whole number of ranges. */
    len = encode_sample(FB_WIRE_FEEDBACK);
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, len - 1), FB_ERR_PROTOCOL);
    ck_assert_int_eq(why, FB_WIRE_R_TRUNCATED);
    /* A HELLO below the anti-amplification minimum. */
    len = encode_sample(FB_WIRE_HELLO);
    ck_assert_int_eq(fb_wire_peek_header(&h, &why, buf, FB_WIRE_MIN_DATAGRAM - 1), FB_ERR_PROTOCOL);
    ck_assert_int_eq(why, FB_WIRE_R_TRUNCATED);
}
END_TEST

/* Seals an arbitrary body under the right keys: an authenticated but malformed packet, which
 * only a peer holding the key (a buggy or hostile client) could send. */
static size_t seal_raw(uint8_t type, uint8_t flags, const uint8_t *body, size_t bodylen)
{
    fb_wire_hdr h = make_hdr(type == FB_WIRE_HELLO ? 0x55 : 100, flags);
    const fb_aead_ctx *ctx = type == FB_WIRE_HELLO_ACK ? server : client;
    fb_aead_phase phase = fb_wire_type_phase((fb_wire_type)type);

    size_t hl = type == FB_WIRE_DATA ? FB_WIRE_DATA_HEADER_LEN : FB_WIRE_HEADER_LEN;

    buf[0] = FB_WIRE_VERSION_BYTE;
    buf[1] = type;
    buf[2] = flags;
    if (type == FB_WIRE_DATA) { /* short header: slot index, low 32 bits of the packet number */
        memcpy(buf + 3, h.sid, 4);
        for (int i = 0; i < 4; i++)
            buf[7 + i] = (uint8_t)(h.pn >> (24 - 8 * i));
    } else {
        buf[3] = 0;
        memcpy(buf + 4, h.sid, 16);
        for (int i = 0; i < 8; i++)
            buf[20 + i] = (uint8_t)(h.pn >> (56 - 8 * i));
    }
    memcpy(buf + hl, body, bodylen);
    ck_assert_int_eq(fb_aead_seal(ctx, phase, h.pn, buf, hl, buf + hl, buf + hl, bodylen), FB_OK);
    return hl + bodylen + FB_WIRE_TAG_LEN;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

START_TEST(test_authenticated_but_malformed_bodies_are_rejected)
{
    uint8_t body[2048];
    fb_wire_pkt got;
    size_t len, hb = FB_WIRE_MIN_DATAGRAM - FB_WIRE_OVERHEAD;

    /* HELLO: a valid body first, then one defect at a time. */
    memset(body, 0, sizeof(body));
    put32(body + 16, FB_CIPHER_AES128_GCM);
    put32(body + 20, FB_POLICY_FAIR);
    body[48] = 0x05, body[49] = 0xac; /* max_datagram 1452 */
    len = seal_raw(FB_WIRE_HELLO, 0, body, hb);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_NONE);
    put32(body + 16, FB_CIPHER_AES128_GCM | FB_CIPHER_AES256_GCM); /* two ciphers */
    len = seal_raw(FB_WIRE_HELLO, 0, body, hb);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);
    put32(body + 16, FB_CIPHER_AES128_GCM);
    put32(body + 20, 0x10); /* unknown policy */
    len = seal_raw(FB_WIRE_HELLO, 0, body, hb);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);
    put32(body + 20, FB_POLICY_FAIR);
    body[hb - 1] = 1; /* padding not zero */
    len = seal_raw(FB_WIRE_HELLO, 0, body, hb);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);
    body[hb - 1] = 0;
    body[48] = 0x01, body[49] = 0x00; /* max_datagram 256: below the minimum */
    len = seal_raw(FB_WIRE_HELLO, 0, body, hb);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);
    body[48] = 0x05, body[49] = 0xac;
    put64(body + 24, 1000); /* target 1000 below min 2000 */
    put64(body + 32, 2000);
    len = seal_raw(FB_WIRE_HELLO, 0, body, hb);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);

    /* FEEDBACK: ranges that contradict each other or the offsets. */
    {
        static const struct {
            uint64_t cum, high;
            uint16_t n;
            uint64_t r[4];
        } bad[] = {
            {100, 50, 0, {0}},                 /* cum above high */
            {100, 200, 0, {0}},                /* a gap with no range listed */
            {100, 200, 1, {150, 10}},          /* first hole not at cum */
            {100, 200, 1, {100, 100}},         /* hole reaching high (high-1 not received) */
            {100, 200, 1, {100, 0}},           /* empty range */
            {100, 200, 2, {100, 10, 105, 10}}, /* overlapping */
            {100, 200, 2, {100, 10, 110, 10}}, /* adjacent, not merged */
            {100, 200, 2, {100, 10, 50, 10}},  /* unsorted */
            {100, 200, 1, {100, UINT64_MAX}},  /* overflowing */
            {100, 100, 1, {100, 10}},          /* range while nothing is missing */
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            memset(body, 0, sizeof(body));
            put64(body, bad[i].cum);
            put64(body + 8, bad[i].high);
            body[52] = 0, body[53] = (uint8_t)bad[i].n;
            for (unsigned k = 0; k < bad[i].n; k++) {
                put64(body + 56 + 16 * k, bad[i].r[2 * k]);
                put64(body + 56 + 16 * k + 8, bad[i].r[2 * k + 1]);
            }
            len = seal_raw(FB_WIRE_FEEDBACK, 0, body, 56 + 16u * bad[i].n);
            ck_assert_msg(open_copy(&got, buf, len, server, NULL) == FB_WIRE_R_MALFORMED, "feedback case %zu",
                          i);
        }
        /* nranges disagreeing with the datagram length */
        memset(body, 0, sizeof(body));
        put64(body, 100);
        put64(body + 8, 200);
        body[53] = 2;
        put64(body + 56, 100);
        put64(body + 64, 10);
        len = seal_raw(FB_WIRE_FEEDBACK, 0, body, 56 + 16);
        ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);
        /* COMPLETE while holes remain */
        body[53] = 1;
        len = seal_raw(FB_WIRE_FEEDBACK, FB_WIRE_F_FEEDBACK_COMPLETE, body, 56 + 16);
        ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);
    }

    /* FROM: cum 0, high 10000, from 3000, one hole [3000, 3100). Valid as built; then with a
     * non-zero reserved half of the FROM block, a from not above cum, or no room for it. */
    memset(body, 0, sizeof(body));
    put64(body + 8, 10000);
    body[53] = 1;
    put64(body + 56, 3000);
    put64(body + 72, 3000);
    put64(body + 80, 100);
    len = seal_raw(FB_WIRE_FEEDBACK, FB_WIRE_F_FEEDBACK_FROM | FB_WIRE_F_FEEDBACK_MORE, body, 56 + 32);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_NONE);
    ck_assert_uint_eq(got.u.feedback.from_offset, 3000);
    body[64] = 1;
    len = seal_raw(FB_WIRE_FEEDBACK, FB_WIRE_F_FEEDBACK_FROM | FB_WIRE_F_FEEDBACK_MORE, body, 56 + 32);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);
    body[64] = 0;
    put64(body + 56, 0);
    put64(body + 72, 0);
    len = seal_raw(FB_WIRE_FEEDBACK, FB_WIRE_F_FEEDBACK_FROM | FB_WIRE_F_FEEDBACK_MORE, body, 56 + 32);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);
    body[53] = 0;
    len = seal_raw(FB_WIRE_FEEDBACK, FB_WIRE_F_FEEDBACK_FROM, body, 56);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);

    /* CLOSE with an unknown reason; DATA whose end would pass 2^64; PROBE with padding. */
    memset(body, 0, sizeof(body));
    put32(body, 9999);
    len = seal_raw(FB_WIRE_CLOSE, 0, body, 8);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);
    /* CLOSE "unchanged" only with reason 0; no other CLOSE flag */
    put32(body, (uint32_t)FB_ERR_CHANGED);
    len = seal_raw(FB_WIRE_CLOSE, FB_WIRE_F_CLOSE_UNCHANGED, body, 8);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);
    put32(body, 0);
    len = seal_raw(FB_WIRE_CLOSE, FB_WIRE_F_CLOSE_UNCHANGED, body, 8);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_NONE);
    ck_assert_uint_eq(got.hdr.flags, FB_WIRE_F_CLOSE_UNCHANGED);
    ck_assert_uint_eq(got.u.close.reason, FB_OK);
    len = seal_raw(FB_WIRE_CLOSE, 0x02, body, 8);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);
    put64(body, UINT64_MAX - 5);
    len = seal_raw(FB_WIRE_DATA, 0, body, FB_WIRE_DATA_FIXED + 10);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);
    memset(body, 0, sizeof(body));
    body[100] = 0xff;
    len = seal_raw(FB_WIRE_PROBE, 0, body, 200);
    ck_assert_int_eq(open_copy(&got, buf, len, server, NULL), FB_WIRE_R_MALFORMED);
    /* HELLO_ACK whose status is not a known code. */
    memset(body, 0, sizeof(body));
    put32(body + 32, 5000);
    len = seal_raw(FB_WIRE_HELLO_ACK, 0, body, FB_WIRE_HELLO_ACK_FIXED);
    ck_assert_int_eq(open_copy(&got, buf, len, client, NULL), FB_WIRE_R_MALFORMED);
}
END_TEST

START_TEST(test_encoders_refuse_invalid_fields)
{
    fb_wire_hdr h = make_hdr(1, 0);
    size_t len;

    {
        fb_wire_pkt p = sample(FB_WIRE_HELLO);

        p.u.hello.cipher = 0;
        ck_assert_int_eq(fb_wire_encode(buf, BUFSZ, &len, &p, client), FB_ERR_INTERNAL);
        p = sample(FB_WIRE_HELLO);
        p.hdr.flags = 1; /* HELLO has no flags */
        ck_assert_int_eq(fb_wire_encode(buf, BUFSZ, &len, &p, client), FB_ERR_INTERNAL);
    }
    {
        fb_wire_feedback f;

        memset(&f, 0, sizeof(f));
        f.cum_offset = 10;
        f.high_offset = 20; /* a gap but no range */
        ck_assert_int_eq(fb_wire_encode_feedback(buf, BUFSZ, &len, &h, &f, client), FB_ERR_INTERNAL);
        f.nranges = FB_WIRE_MAX_RANGES + 1;
        ck_assert_int_eq(fb_wire_encode_feedback(buf, BUFSZ, &len, &h, &f, client), FB_ERR_INTERNAL);
    }
    {
        fb_wire_data d = {0, 0, NULL, 0};
        fb_wire_close c = {FB_ERR__COUNT};

        ck_assert_int_eq(fb_wire_encode_data(buf, BUFSZ, &len, &h, &d, client), FB_ERR_INTERNAL);
        ck_assert_int_eq(fb_wire_encode_close(buf, BUFSZ, &len, &h, &c, client), FB_ERR_INTERNAL);
        h.flags = 0x80;
        c.reason = FB_OK;
        ck_assert_int_eq(fb_wire_encode_close(buf, BUFSZ, &len, &h, &c, client), FB_ERR_INTERNAL);
        /* "unchanged" ends a finished transfer only */
        h.flags = FB_WIRE_F_CLOSE_UNCHANGED;
        c.reason = FB_ERR_CHANGED;
        ck_assert_int_eq(fb_wire_encode_close(buf, BUFSZ, &len, &h, &c, client), FB_ERR_INTERNAL);
        c.reason = FB_OK;
        ck_assert_int_eq(fb_wire_encode_close(buf, BUFSZ, &len, &h, &c, client), FB_OK);
        h.flags = 0;
    }
    {
        fb_wire_pkt p = sample(FB_WIRE_DATA);
        fb_aead_ctx *fresh;

        /* Data-phase packets cannot be sealed before the handshake. */
        ck_assert_int_eq(fb_aead_new(&fresh, KEY, FB_AEAD_CLIENT), FB_OK);
        ck_assert_int_eq(fb_wire_encode(buf, BUFSZ, &len, &p, fresh), FB_ERR_SESSION_STATE);
        fb_aead_free(fresh);
    }
}
END_TEST

START_TEST(test_random_bytes_never_crash)
{
    uint64_t state = 0x243f6a8885a308d3ull;
    fb_replay w;
    unsigned accepted = 0;

    fb_replay_init(&w);
    /* 100 000 inputs: pure noise, and noise behind a valid-looking header (so the decoder gets
     * past the cheap checks and into the AEAD), at lengths up to just past the maximum. */
    for (int i = 0; i < 100000; i++) {
        size_t len;
        fb_wire_pkt got;
        fb_wire_reason why;

        state ^= state << 13, state ^= state >> 7, state ^= state << 17;
        len = (i % 100 == 0) ? (size_t)(state % (FB_WIRE_MAX_DATAGRAM + 16)) : (size_t)(state % 1600);
        for (size_t k = 0; k < len; k++) {
            state ^= state << 13, state ^= state >> 7, state ^= state << 17;
            copy[k] = (uint8_t)state;
        }
        if (i % 2 == 0 && len >= 4) {
            copy[0] = FB_WIRE_VERSION_BYTE;
            copy[1] = (uint8_t)(1 + (state >> 8) % 6);
            copy[2] = 0;
            copy[3] = 0;
        }
        if (fb_wire_open(&got, &why, copy, len, i % 3 ? server : client, i % 5 ? &w : NULL) == FB_OK)
            accepted++;
        else
            ck_assert_int_ne(why, FB_WIRE_R_NONE);
    }
    ck_assert_uint_eq(accepted, 0);
}
END_TEST

/* ---- session ids -------------------------------------------------------------------------- */

START_TEST(test_session_id_matches_the_http_id)
{
    uint8_t random[FB_ID_RANDOM_LEN], sid[FB_WIRE_SID_LEN];
    char id[FB_SESSION_ID_LEN + 1], back[FB_WIRE_SID_HEX_LEN + 1];

    for (int i = 0; i < FB_ID_RANDOM_LEN; i++)
        random[i] = (uint8_t)(0xf0 + i);
    fb_session_id_format(id, 0x0102abcd, random);
    ck_assert_int_eq(fb_wire_sid_from_string(sid, id), FB_OK);
    ck_assert_uint_eq(fb_wire_sid_slot(sid), 0x0102abcd);
    ck_assert_mem_eq(sid + 4, random, FB_ID_RANDOM_LEN);
    fb_wire_sid_to_string(back, sid);
    ck_assert_str_eq(back, id);

    ck_assert_int_ne(fb_wire_sid_from_string(sid, "0102abcd"), FB_OK);
    ck_assert_int_ne(fb_wire_sid_from_string(sid, "zz02abcdf0f1f2f3f4f5f6f7f8f9fafb"), FB_OK);
    ck_assert_int_ne(fb_wire_sid_from_string(sid, "0102abcdf0f1f2f3f4f5f6f7f8f9fafb0"), FB_OK);
    ck_assert_int_ne(fb_wire_sid_from_string(sid, NULL), FB_OK);
}
END_TEST

START_TEST(test_reason_and_type_names)
{
    for (int i = 0; i < FB_WIRE_R__COUNT; i++) {
        ck_assert_str_ne(fb_wire_reason_name((fb_wire_reason)i), "unknown");
        for (int j = i + 1; j < FB_WIRE_R__COUNT; j++)
            ck_assert_str_ne(fb_wire_reason_name((fb_wire_reason)i), fb_wire_reason_name((fb_wire_reason)j));
    }
    ck_assert_str_eq(fb_wire_reason_name(FB_WIRE_R__COUNT), "unknown");
    ck_assert_str_eq(fb_wire_reason_name(FB_WIRE_R_AUTH_FAILED), "auth_failed");
    ck_assert_str_eq(fb_wire_type_name(FB_WIRE_FEEDBACK), "FEEDBACK");
    ck_assert_str_eq(fb_wire_type_name(0), "unknown");
}
END_TEST

/* ---- the vectors published in docs/PROTOCOL.md section 4.3 -------------------------------- */

static void unhex(uint8_t *out, size_t len, const char *hex)
{
    ck_assert_uint_eq(strlen(hex), 2 * len);
    for (size_t i = 0; i < len; i++) {
        unsigned v;

        ck_assert_int_eq(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
}

START_TEST(test_protocol_document_vectors)
{
    uint8_t key[32], cn[16], sn[16], want[80], got_key[32];
    fb_aead_ctx *c, *s;
    fb_wire_hdr h;
    fb_wire_close cl = {FB_OK};
    fb_wire_data d = {1048576, 1000000, (const uint8_t *)"fallback", 8};
    fb_wire_pkt pkt;
    size_t len, klen;

    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)i;
    memset(cn, 0xc1, sizeof(cn));
    memset(sn, 0x5e, sizeof(sn));
    ck_assert_int_eq(fb_aead_new(&c, key, FB_AEAD_CLIENT), FB_OK);
    ck_assert_int_eq(fb_aead_new(&s, key, FB_AEAD_SERVER), FB_OK);
    ck_assert_int_eq(fb_aead_set_data_keys(c, FB_CIPHER_AES128_GCM, cn, sn), FB_OK);
    ck_assert_int_eq(fb_aead_set_data_keys(s, FB_CIPHER_AES128_GCM, cn, sn), FB_OK);

    ck_assert_int_eq(fb_aead_export_key(got_key, &klen, c, FB_AEAD_HANDSHAKE, FB_AEAD_C2S), FB_OK);
    unhex(want, 32, "5931112b26e493e1584a5a436c0acfc71b624f5d4b563040c7f6c29d04c866da");
    ck_assert_mem_eq(got_key, want, 32);
    ck_assert_int_eq(fb_aead_export_key(got_key, &klen, c, FB_AEAD_HANDSHAKE, FB_AEAD_S2C), FB_OK);
    unhex(want, 32, "cf4a26d159c9abba1c743be4a87fd95c1f0e48c5a339f2cbf07be4aa09c67de1");
    ck_assert_mem_eq(got_key, want, 32);
    ck_assert_int_eq(fb_aead_export_key(got_key, &klen, c, FB_AEAD_DATA, FB_AEAD_C2S), FB_OK);
    ck_assert_uint_eq(klen, 16);
    unhex(want, 16, "6e70da2ca37a31c8dca9c60396207af9");
    ck_assert_mem_eq(got_key, want, 16);
    ck_assert_int_eq(fb_aead_export_key(got_key, &klen, c, FB_AEAD_DATA, FB_AEAD_S2C), FB_OK);
    unhex(want, 16, "6248d33e9d7b91b5585b2b82e7a4cb89");
    ck_assert_mem_eq(got_key, want, 16);

    memset(&h, 0, sizeof(h));
    ck_assert_int_eq(fb_wire_sid_from_string(h.sid, "0000002a00112233445566778899aabb"), FB_OK);
    ck_assert_int_eq(fb_wire_encode_close(buf, BUFSZ, &len, &h, &cl, c), FB_OK);
    ck_assert_uint_eq(len, 52);
    unhex(want, 52,
          "f40500000000002a00112233445566778899aabb0000000000000000"
          "6fea35bff1dcea30e1779d33f30668de3bd961e490180e31");
    ck_assert_mem_eq(buf, want, 52);
    ck_assert_int_eq(open_copy(&pkt, buf, len, s, NULL), FB_WIRE_R_NONE);

    h.pn = 1;
    ck_assert_int_eq(fb_wire_encode_data(buf, BUFSZ, &len, &h, &d, c), FB_OK);
    ck_assert_uint_eq(len, 47);
    unhex(want, 47,
          "f403000000002a00000001"
          "86a2c1abf85ffaa4102b44691d79ab04a460ae2d"
          "8f9b56093afbffc0bc39f5b525fb1f33");
    ck_assert_mem_eq(buf, want, 47);
    ck_assert_int_eq(open_copy(&pkt, buf, len, s, NULL), FB_WIRE_R_NONE);
    ck_assert_mem_eq(pkt.u.data.payload, "fallback", 8);
    fb_aead_free(c);
    fb_aead_free(s);
}
END_TEST

static Suite *wire_suite(void)
{
    Suite *s = suite_create("fb_wire");
    TCase *rt = tcase_create("round trips");
    TCase *rej = tcase_create("rejection");
    TCase *misc = tcase_create("session ids and names");

    tcase_add_checked_fixture(rt, setup, teardown);
    tcase_add_test(rt, test_round_trip_every_type);
    tcase_add_test(rt, test_round_trip_with_each_cipher);
    tcase_add_test(rt, test_data_sizes_from_one_byte_to_the_maximum);
    tcase_add_test(rt, test_data_packet_numbers_across_the_wrap);
    tcase_add_test(rt, test_data_payload_read_in_place_is_not_copied);
    tcase_add_test(rt, test_data_payload_overlapping_the_header_area);
    tcase_add_test(rt, test_feedback_extremes);
    tcase_add_test(rt, test_feedback_listing_from_a_later_hole);
    tcase_add_test(rt, test_hello_ack_never_larger_than_hello);
    tcase_add_test(rt, test_refusing_hello_ack);
    suite_add_tcase(s, rt);

    tcase_add_checked_fixture(rej, setup, teardown);
    tcase_set_timeout(rej, 120);
    tcase_add_test(rej, test_every_truncation_is_rejected);
    tcase_add_test(rej, test_every_flipped_bit_is_rejected);
    tcase_add_test(rej, test_wrong_key_and_reflection_fail_authentication);
    tcase_add_test(rej, test_data_before_handshake_has_no_keys);
    tcase_add_test(rej, test_replayed_packet_numbers_are_rejected);
    tcase_add_test(rej, test_oversized_datagrams_are_rejected);
    tcase_add_test(rej, test_header_checks_before_the_key);
    tcase_add_test(rej, test_authenticated_but_malformed_bodies_are_rejected);
    tcase_add_test(rej, test_encoders_refuse_invalid_fields);
    tcase_add_test(rej, test_random_bytes_never_crash);
    suite_add_tcase(s, rej);

    tcase_add_test(misc, test_session_id_matches_the_http_id);
    tcase_add_test(misc, test_reason_and_type_names);
    tcase_add_checked_fixture(misc, setup, teardown);
    tcase_add_test(misc, test_protocol_document_vectors);
    suite_add_tcase(s, misc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(wire_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
