/* Unit tests for the link emulator's pure model (bench/linkem_model.c): seeded random loss,
 * Gilbert-Elliott bursts, the drop-tail queue, serialisation at the link rate, the delay, and
 * the packet ring that holds what is in flight. Time is passed in, so every test is exact. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../bench/linkem_model.h"

#define MS 1000000ull
#define S 1000000000ull

static lk_dir_cfg cfg_plain(uint64_t rate_bps, uint64_t delay_ns, uint64_t queue)
{
    lk_dir_cfg c;
    memset(&c, 0, sizeof(c));
    c.rate_bps = rate_bps;
    c.delay_ns = delay_ns;
    c.queue_bytes = queue;
    return c;
}

START_TEST(test_rng_same_seed_same_sequence_streams_differ)
{
    lk_rng a, b, c;
    lk_rng_seed(&a, 42, 0);
    lk_rng_seed(&b, 42, 0);
    lk_rng_seed(&c, 42, 1);
    int same_c = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = lk_rng_next(&a);
        ck_assert_uint_eq(x, lk_rng_next(&b));
        same_c += x == lk_rng_next(&c);
    }
    ck_assert_int_eq(same_c, 0);
    for (int i = 0; i < 100000; i++) {
        double u = lk_rng_unit(&a);
        ck_assert(u >= 0.0 && u < 1.0);
    }
}
END_TEST

START_TEST(test_cfg_check_rejects_bad_values)
{
    lk_dir_cfg c = cfg_plain(100000000, 0, 1500);
    ck_assert_ptr_null(lk_dir_cfg_check(&c));
    c.loss = 1.5;
    ck_assert_ptr_nonnull(lk_dir_cfg_check(&c));
    c.loss = NAN;
    ck_assert_ptr_nonnull(lk_dir_cfg_check(&c));
    c.loss = 0;
    c.queue_bytes = 1499;
    ck_assert_ptr_nonnull(lk_dir_cfg_check(&c));
    c.queue_bytes = 1500;
    c.ge_enabled = true;
    c.ge.p = -0.1;
    ck_assert_ptr_nonnull(lk_dir_cfg_check(&c));
    c.ge.p = 0.1;
    ck_assert_ptr_null(lk_dir_cfg_check(&c));
    c.delay_ns = 11 * S;
    ck_assert_ptr_nonnull(lk_dir_cfg_check(&c));
}
END_TEST

START_TEST(test_no_loss_never_drops_full_loss_always_drops)
{
    lk_dir_cfg c = cfg_plain(0, 0, 0);
    lk_dir d;
    uint64_t rel;
    lk_dir_init(&d, &c, 1, 0);
    for (int i = 0; i < 10000; i++)
        ck_assert_int_eq(lk_dir_offer(&d, (uint64_t)i, 100, &rel), LK_FORWARD);
    c.loss = 1.0;
    lk_dir_init(&d, &c, 1, 0);
    for (int i = 0; i < 10000; i++)
        ck_assert_int_eq(lk_dir_offer(&d, (uint64_t)i, 100, &rel), LK_DROP_LOSS);
}
END_TEST

START_TEST(test_bernoulli_loss_rate_matches)
{
    lk_dir_cfg c = cfg_plain(0, 0, 0);
    c.loss = 0.01;
    lk_dir d;
    lk_dir_init(&d, &c, 7, 0);
    uint64_t rel;
    int lost = 0, n = 1000000;
    for (int i = 0; i < n; i++)
        lost += lk_dir_offer(&d, 0, 1500, &rel) == LK_DROP_LOSS;
    /* binomial sd = sqrt(n p (1-p)) ~ 99.5: allow 5 sd */
    ck_assert_int_gt(lost, 10000 - 500);
    ck_assert_int_lt(lost, 10000 + 500);
}
END_TEST

START_TEST(test_same_seed_same_losses)
{
    lk_dir_cfg c = cfg_plain(0, 0, 0);
    c.loss = 0.05;
    c.ge_enabled = true;
    c.ge = (lk_ge_cfg){.p = 0.02, .r = 0.25, .loss_bad = 0.8, .loss_good = 0.001};
    lk_dir a, b, other;
    lk_dir_init(&a, &c, 99, 1);
    lk_dir_init(&b, &c, 99, 1);
    lk_dir_init(&other, &c, 100, 1);
    uint64_t rel;
    int differ = 0;
    for (int i = 0; i < 100000; i++) {
        lk_verdict va = lk_dir_offer(&a, 0, 1000, &rel);
        ck_assert_int_eq(va, lk_dir_offer(&b, 0, 1000, &rel));
        differ += va != lk_dir_offer(&other, 0, 1000, &rel);
    }
    ck_assert_int_gt(differ, 1000);
}
END_TEST

START_TEST(test_gilbert_elliott_mean_loss_and_burst_length)
{
    /* Bad state loses everything, good state nothing: loss = p/(p+r), bursts average 1/r. */
    lk_dir_cfg c = cfg_plain(0, 0, 0);
    c.ge_enabled = true;
    c.ge = (lk_ge_cfg){.p = 0.01, .r = 0.25, .loss_bad = 1.0, .loss_good = 0.0};
    lk_dir d;
    lk_dir_init(&d, &c, 3, 0);
    uint64_t rel;
    int n = 2000000, lost = 0, bursts = 0;
    bool prev = false;
    for (int i = 0; i < n; i++) {
        bool l = lk_dir_offer(&d, 0, 1000, &rel) == LK_DROP_LOSS;
        lost += l;
        bursts += l && !prev;
        prev = l;
    }
    double rate = (double)lost / n, expect = 0.01 / 0.26;
    ck_assert_msg(fabs(rate - expect) < 0.1 * expect, "GE loss %f, expected %f", rate, expect);
    double burst = (double)lost / bursts;
    ck_assert_msg(fabs(burst - 4.0) < 0.2, "mean burst %f, expected 4", burst);
}
END_TEST

START_TEST(test_back_to_back_packets_leave_at_the_link_rate)
{
    /* 8 Mbit/s: a 1000-byte packet takes exactly 1 ms on the wire; delay 20 ms. */
    lk_dir_cfg c = cfg_plain(8000000, 20 * MS, 100000);
    lk_dir d;
    lk_dir_init(&d, &c, 1, 0);
    uint64_t rel;
    for (uint64_t k = 1; k <= 10; k++) {
        ck_assert_int_eq(lk_dir_offer(&d, 5 * MS, 1000, &rel), LK_FORWARD);
        ck_assert_uint_eq(rel, 5 * MS + k * MS + 20 * MS);
        /* the k-th waits behind k-1 packets; the link never idles between them */
        ck_assert_uint_eq(d.last_wait_ns, (k - 1) * MS);
        ck_assert_uint_eq(d.last_idle_ns, 0);
    }
}
END_TEST

START_TEST(test_idle_link_adds_only_serialisation_and_delay)
{
    lk_dir_cfg c = cfg_plain(8000000, 20 * MS, 100000);
    lk_dir d;
    lk_dir_init(&d, &c, 1, 0);
    uint64_t rel;
    ck_assert_int_eq(lk_dir_offer(&d, 0, 1000, &rel), LK_FORWARD);
    ck_assert_uint_eq(rel, 21 * MS);
    /* long after the first one left: no queueing */
    ck_assert_int_eq(lk_dir_offer(&d, 100 * MS, 500, &rel), LK_FORWARD);
    ck_assert_uint_eq(rel, 100 * MS + MS / 2 + 20 * MS);
    ck_assert_uint_eq(lk_dir_backlog(&d, 200 * MS), 0);
    /* the link was idle from 1 ms (the first packet serialised) to 100 ms */
    ck_assert_uint_eq(d.last_idle_ns, 99 * MS);
    ck_assert_uint_eq(d.last_wait_ns, 0);
}
END_TEST

START_TEST(test_unlimited_rate_adds_only_delay)
{
    lk_dir_cfg c = cfg_plain(0, 30 * MS, 0);
    lk_dir d;
    lk_dir_init(&d, &c, 1, 0);
    uint64_t rel;
    for (int i = 0; i < 100; i++) {
        ck_assert_int_eq(lk_dir_offer(&d, 7 * MS, 65535, &rel), LK_FORWARD);
        ck_assert_uint_eq(rel, 37 * MS);
    }
}
END_TEST

START_TEST(test_full_queue_drops_tail_then_drains)
{
    /* 8 Mbit/s = 1 byte/us; queue 3000 bytes. */
    lk_dir_cfg c = cfg_plain(8000000, 0, 3000);
    lk_dir d;
    lk_dir_init(&d, &c, 1, 0);
    uint64_t rel;
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(lk_dir_offer(&d, 0, 1000, &rel), LK_FORWARD);
    ck_assert_uint_eq(lk_dir_backlog(&d, 0), 3000);
    ck_assert_int_eq(lk_dir_offer(&d, 0, 1000, &rel), LK_DROP_QUEUE);
    ck_assert_int_eq(lk_dir_offer(&d, 0, 1, &rel), LK_DROP_QUEUE);
    /* 1 ms later one packet has left */
    ck_assert_uint_eq(lk_dir_backlog(&d, MS), 2000);
    ck_assert_int_eq(lk_dir_offer(&d, MS, 1000, &rel), LK_FORWARD);
    ck_assert_uint_eq(rel, 4 * MS);
    ck_assert_int_eq(lk_dir_offer(&d, MS, 1000, &rel), LK_DROP_QUEUE);
    /* half a packet sent: the partly sent packet still counts */
    ck_assert_uint_eq(lk_dir_backlog(&d, MS + MS / 2), 2500);
    ck_assert_int_eq(lk_dir_offer(&d, MS + MS / 2, 500, &rel), LK_FORWARD);
    ck_assert_int_eq(lk_dir_offer(&d, MS + MS / 2, 1, &rel), LK_DROP_QUEUE);
}
END_TEST

START_TEST(test_odd_rate_is_exact_over_many_packets)
{
    /* 7 Mbit/s does not divide 1500 bytes into whole nanoseconds; the remainder is carried. */
    lk_dir_cfg c = cfg_plain(7000000, 0, 1ull << 30);
    lk_dir d;
    lk_dir_init(&d, &c, 1, 0);
    uint64_t rel = 0;
    for (int i = 0; i < 7000; i++)
        ck_assert_int_eq(lk_dir_offer(&d, 0, 1500, &rel), LK_FORWARD);
    /* 7000 * 1500 * 8 bits / 7e6 bit/s = 12 s exactly */
    ck_assert_uint_eq(rel, 12 * S);
}
END_TEST

START_TEST(test_time_never_runs_backwards)
{
    lk_dir_cfg c = cfg_plain(8000000, 10 * MS, 100000);
    lk_dir d;
    lk_dir_init(&d, &c, 1, 0);
    uint64_t rel1, rel2;
    ck_assert_int_eq(lk_dir_offer(&d, 50 * MS, 1000, &rel1), LK_FORWARD);
    ck_assert_int_eq(lk_dir_offer(&d, 10 * MS, 1000, &rel2), LK_FORWARD);
    ck_assert_uint_eq(rel1, 61 * MS);
    ck_assert_uint_eq(rel2, 62 * MS);
}
END_TEST

/* Fills the packet of a record with a pattern derived from its sequence number. */
static void fill(uint8_t *p, uint32_t len, uint32_t seq)
{
    for (uint32_t i = 0; i < len; i++)
        p[i] = (uint8_t)(seq * 31 + i);
}

static bool check_fill(const uint8_t *p, uint32_t len, uint32_t seq)
{
    for (uint32_t i = 0; i < len; i++)
        if (p[i] != (uint8_t)(seq * 31 + i))
            return false;
    return true;
}

START_TEST(test_ring_keeps_fifo_order_and_contents_across_wraps)
{
    size_t cap = 3 * LK_MAX_REC + 12345 * 8;
    uint8_t *buf = aligned_alloc(8, cap);
    ck_assert_ptr_nonnull(buf);
    lk_ring r;
    lk_ring_init(&r, buf, cap);
    lk_rng rng;
    lk_rng_seed(&rng, 5, 0);
    uint32_t next_in = 0, next_out = 0, full_seen = 0, wraps = 0;
    size_t last_tail = 0;
    for (int step = 0; step < 200000; step++) {
        bool push = (lk_rng_next(&rng) % 100) < 55;
        if (push) {
            lk_rec *h = lk_ring_reserve(&r);
            if (!h) {
                full_seen++;
                ck_assert_uint_gt(r.count, 0);
                continue;
            }
            ck_assert((uint8_t *)h >= buf && (uint8_t *)h + LK_MAX_REC <= buf + cap);
            uint64_t pick = lk_rng_next(&rng) % 100;
            uint32_t len = pick < 5 ? LK_MAX_PKT : pick < 50 ? 20 + (uint32_t)(pick * 13) : 1500;
            h->len = len;
            h->release_ns = next_in;
            fill((uint8_t *)(h + 1), len, next_in);
            lk_ring_commit(&r);
            if (r.tail < last_tail)
                wraps++;
            last_tail = r.tail;
            next_in++;
        } else {
            lk_rec *h = lk_ring_front(&r);
            if (!h) {
                ck_assert_uint_eq(next_in, next_out);
                continue;
            }
            ck_assert_uint_eq(h->release_ns, next_out);
            ck_assert(check_fill((uint8_t *)(h + 1), h->len, next_out));
            lk_ring_pop(&r);
            next_out++;
        }
    }
    ck_assert_uint_gt(full_seen, 0);
    ck_assert_uint_gt(wraps, 10);
    while (lk_ring_front(&r)) {
        ck_assert_uint_eq(lk_ring_front(&r)->release_ns, next_out);
        lk_ring_pop(&r);
        next_out++;
    }
    ck_assert_uint_eq(next_in, next_out);
    ck_assert_uint_eq(r.bytes, 0);
    free(buf);
}
END_TEST

START_TEST(test_ring_sized_for_config_never_fills)
{
    /* Offer 10x the link rate of mixed small and full packets for 3 s of virtual time, releasing
     * due packets up to 40 ms late: the ring sized by lk_ring_size must always have room. */
    lk_dir_cfg c = cfg_plain(50000000, 40 * MS, 200000);
    size_t cap = lk_ring_size(&c);
    ck_assert_uint_gt(cap, 0);
    uint8_t *buf = aligned_alloc(8, (cap + 7) & ~(size_t)7);
    ck_assert_ptr_nonnull(buf);
    lk_ring r;
    lk_ring_init(&r, buf, cap);
    lk_dir d;
    lk_dir_init(&d, &c, 1, 0);
    lk_rng rng;
    lk_rng_seed(&rng, 11, 0);
    uint64_t t = 0, forwarded = 0, last_release_pass = 0;
    while (t < 3 * S) {
        uint32_t len = (lk_rng_next(&rng) % 16) ? 20 : 1500; /* mostly the costliest records */
        t += (uint64_t)len * 8 * S / (10 * c.rate_bps);
        /* release only every 40 ms, the worst lateness the relay allows for */
        if (t - last_release_pass >= 40 * MS) {
            lk_rec *h;
            while ((h = lk_ring_front(&r)) && h->release_ns <= t)
                lk_ring_pop(&r);
            last_release_pass = t;
        }
        lk_rec *h = lk_ring_reserve(&r);
        ck_assert_ptr_nonnull(h);
        uint64_t rel;
        if (lk_dir_offer(&d, t, len, &rel) == LK_FORWARD) {
            h->len = len;
            h->release_ns = rel;
            lk_ring_commit(&r);
            forwarded++;
        }
    }
    ck_assert_uint_gt(forwarded, 1000);
    free(buf);
}
END_TEST

START_TEST(test_ring_size_zero_when_rate_unlimited)
{
    lk_dir_cfg c = cfg_plain(0, 40 * MS, 0);
    ck_assert_uint_eq(lk_ring_size(&c), 0);
}
END_TEST

static Suite *linkem_suite(void)
{
    Suite *s = suite_create("linkem");
    TCase *tc = tcase_create("model");
    tcase_add_test(tc, test_rng_same_seed_same_sequence_streams_differ);
    tcase_add_test(tc, test_cfg_check_rejects_bad_values);
    tcase_add_test(tc, test_no_loss_never_drops_full_loss_always_drops);
    tcase_add_test(tc, test_bernoulli_loss_rate_matches);
    tcase_add_test(tc, test_same_seed_same_losses);
    tcase_add_test(tc, test_gilbert_elliott_mean_loss_and_burst_length);
    tcase_add_test(tc, test_back_to_back_packets_leave_at_the_link_rate);
    tcase_add_test(tc, test_idle_link_adds_only_serialisation_and_delay);
    tcase_add_test(tc, test_unlimited_rate_adds_only_delay);
    tcase_add_test(tc, test_full_queue_drops_tail_then_drains);
    tcase_add_test(tc, test_odd_rate_is_exact_over_many_packets);
    tcase_add_test(tc, test_time_never_runs_backwards);
    suite_add_tcase(s, tc);
    TCase *tr = tcase_create("ring");
    tcase_add_test(tr, test_ring_keeps_fifo_order_and_contents_across_wraps);
    tcase_add_test(tr, test_ring_sized_for_config_never_fills);
    tcase_add_test(tr, test_ring_size_zero_when_rate_unlimited);
    suite_add_tcase(s, tr);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(linkem_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
