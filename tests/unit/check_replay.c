/* Unit tests for fb_replay: the sliding anti-replay window (1024 packet numbers). */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>

#include "fb_replay.h"

START_TEST(test_each_number_is_accepted_once)
{
    fb_replay w;

    fb_replay_init(&w);
    for (uint64_t pn = 0; pn < 3000; pn++) {
        ck_assert_int_eq(fb_replay_check(&w, pn), 1);
        ck_assert_int_eq(fb_replay_update(&w, pn), 1);
        ck_assert_int_eq(fb_replay_check(&w, pn), 0);
        ck_assert_int_eq(fb_replay_update(&w, pn), 0);
    }
}
END_TEST

START_TEST(test_reordering_inside_the_window_is_accepted)
{
    fb_replay w;

    fb_replay_init(&w);
    ck_assert_int_eq(fb_replay_update(&w, 100), 1);
    /* Late arrivals within the window: once each. */
    ck_assert_int_eq(fb_replay_update(&w, 99), 1);
    ck_assert_int_eq(fb_replay_update(&w, 0), 1);
    ck_assert_int_eq(fb_replay_update(&w, 0), 0);
    ck_assert_int_eq(fb_replay_update(&w, 50), 1);
    ck_assert_int_eq(fb_replay_update(&w, 99), 0);
    /* A jump ahead, then the gap filled in any order. */
    ck_assert_int_eq(fb_replay_update(&w, 600), 1);
    for (uint64_t pn = 599; pn > 100; pn--)
        ck_assert_int_eq(fb_replay_update(&w, pn), 1);
    ck_assert_int_eq(fb_replay_check(&w, 100), 0);
}
END_TEST

START_TEST(test_too_old_is_refused)
{
    fb_replay w;

    fb_replay_init(&w);
    ck_assert_int_eq(fb_replay_update(&w, 5000), 1);
    ck_assert_int_eq(fb_replay_check(&w, 5000 - FB_REPLAY_WINDOW + 1), 1); /* oldest still inside */
    ck_assert_int_eq(fb_replay_check(&w, 5000 - FB_REPLAY_WINDOW), 0);     /* just outside */
    ck_assert_int_eq(fb_replay_check(&w, 0), 0);
    ck_assert_int_eq(fb_replay_update(&w, 10), 0);
}
END_TEST

START_TEST(test_sliding_forgets_bits_of_old_numbers)
{
    fb_replay w;

    fb_replay_init(&w);
    /* 7 shares its bit with 7 + WINDOW; after sliding, 7 + WINDOW must be new, 7 too old. */
    ck_assert_int_eq(fb_replay_update(&w, 7), 1);
    ck_assert_int_eq(fb_replay_update(&w, 7 + FB_REPLAY_WINDOW), 1);
    ck_assert_int_eq(fb_replay_check(&w, 7), 0);
    /* A big jump clears everything; numbers in the new window are new. */
    ck_assert_int_eq(fb_replay_update(&w, 1000000), 1);
    ck_assert_int_eq(fb_replay_check(&w, 1000000 - 1), 1);
    ck_assert_int_eq(fb_replay_check(&w, 1000000 - FB_REPLAY_WINDOW + 1), 1);
    /* Small advances clear exactly the bits that slid in. */
    ck_assert_int_eq(fb_replay_update(&w, 999990), 1);
    ck_assert_int_eq(fb_replay_update(&w, 1000005), 1);
    ck_assert_int_eq(fb_replay_check(&w, 999990), 0);
    ck_assert_int_eq(fb_replay_check(&w, 1000003), 1);
}
END_TEST

START_TEST(test_extreme_numbers)
{
    fb_replay w;

    fb_replay_init(&w);
    ck_assert_int_eq(fb_replay_update(&w, UINT64_MAX - 5), 1);
    ck_assert_int_eq(fb_replay_update(&w, UINT64_MAX), 1);
    ck_assert_int_eq(fb_replay_update(&w, UINT64_MAX), 0);
    ck_assert_int_eq(fb_replay_check(&w, UINT64_MAX - 5), 0);
    ck_assert_int_eq(fb_replay_check(&w, UINT64_MAX - 4), 1);
    ck_assert_int_eq(fb_replay_check(&w, 0), 0);
}
END_TEST

START_TEST(test_random_sequences_match_a_reference)
{
    /* Compare with a plain set over a bounded range: accept iff unseen and within the window. */
    static uint8_t seen[20000];
    fb_replay w;
    uint64_t top = 0, state = 12345;
    int any = 0;

    fb_replay_init(&w);
    for (int i = 0; i < 200000; i++) {
        uint64_t pn;
        int expect;

        state = state * 6364136223846793005ull + 1442695040888963407ull;
        pn = (state >> 33) % 20000;
        expect = !seen[pn] && (!any || pn > top || top - pn < FB_REPLAY_WINDOW);
        ck_assert_int_eq(fb_replay_update(&w, pn), expect);
        if (expect) {
            seen[pn] = 1;
            if (!any || pn > top)
                top = pn;
            any = 1;
        }
    }
}
END_TEST

static Suite *replay_suite(void)
{
    Suite *s = suite_create("fb_replay");
    TCase *tc = tcase_create("window");

    tcase_add_test(tc, test_each_number_is_accepted_once);
    tcase_add_test(tc, test_reordering_inside_the_window_is_accepted);
    tcase_add_test(tc, test_too_old_is_refused);
    tcase_add_test(tc, test_sliding_forgets_bits_of_old_numbers);
    tcase_add_test(tc, test_extreme_numbers);
    tcase_add_test(tc, test_random_sequences_match_a_reference);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(replay_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
