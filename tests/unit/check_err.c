/* Unit tests for fb_err: the shared error table (names, messages, HTTP statuses, exit codes)
 * and the errno mapping. Names and the seed messages are a public contract, so they are pinned. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fb_err.h"

START_TEST(test_every_code_has_a_distinct_name)
{
    for (int i = 0; i < FB_ERR__COUNT; i++) {
        const char *a = fb_err_name((fb_err)i);

        ck_assert_ptr_nonnull(a);
        ck_assert_uint_gt(strlen(a), 0);
        ck_assert_str_ne(a, "unknown");
        for (int j = i + 1; j < FB_ERR__COUNT; j++)
            ck_assert_msg(strcmp(a, fb_err_name((fb_err)j)) != 0, "codes %d and %d share the name %s", i, j,
                          a);
    }
}
END_TEST

START_TEST(test_every_code_has_a_distinct_exit_code_and_a_message)
{
    for (int i = 0; i < FB_ERR__COUNT; i++) {
        ck_assert_ptr_nonnull(fb_err_message((fb_err)i));
        ck_assert_uint_gt(strlen(fb_err_message((fb_err)i)), 0);
        ck_assert_int_ge(fb_err_http_status((fb_err)i), 200);
        ck_assert_int_le(fb_err_http_status((fb_err)i), 599);
        for (int j = i + 1; j < FB_ERR__COUNT; j++)
            ck_assert_int_ne(fb_err_exit_code((fb_err)i), fb_err_exit_code((fb_err)j));
    }
    ck_assert_int_eq(fb_err_exit_code(FB_OK), 0);
    ck_assert_int_eq(fb_err_http_status(FB_OK), 200);
}
END_TEST

START_TEST(test_name_round_trips_to_the_same_code)
{
    for (int i = 0; i < FB_ERR__COUNT; i++)
        ck_assert_int_eq(fb_err_from_name(fb_err_name((fb_err)i)), i);
}
END_TEST

START_TEST(test_unknown_name_is_a_protocol_error)
{
    ck_assert_int_eq(fb_err_from_name("no_such_code"), FB_ERR_PROTOCOL);
    ck_assert_int_eq(fb_err_from_name(""), FB_ERR_PROTOCOL);
    ck_assert_int_eq(fb_err_from_name(NULL), FB_ERR_PROTOCOL);
    /* Names are exact: no case folding. */
    ck_assert_int_eq(fb_err_from_name("Connection_Lost"), FB_ERR_PROTOCOL);
}
END_TEST

START_TEST(test_out_of_range_code_is_unknown_and_internal)
{
    ck_assert_str_eq(fb_err_name(FB_ERR__COUNT), "unknown");
    ck_assert_str_eq(fb_err_name((fb_err)-1), "unknown");
    ck_assert_str_eq(fb_err_message(FB_ERR__COUNT), fb_err_message(FB_ERR_INTERNAL));
    ck_assert_int_eq(fb_err_http_status((fb_err)1000), 500);
}
END_TEST

START_TEST(test_seed_messages_are_exact)
{
    ck_assert_str_eq(fb_err_message(FB_ERR_CONNECTION_LOST), "Connection lost");
    ck_assert_str_eq(fb_err_message(FB_ERR_SERVER_REFUSED), "Server refused request");
    ck_assert_str_eq(fb_err_message(FB_ERR_PERMISSION), "Insufficient permissions");
    ck_assert_str_eq(fb_err_message(FB_ERR_BAD_PASSPHRASE), "File decryption error, bad passphrase");
}
END_TEST

START_TEST(test_http_statuses_of_contract_codes)
{
    ck_assert_int_eq(fb_err_http_status(FB_ERR_PATH_ESCAPE), 403);
    ck_assert_int_eq(fb_err_http_status(FB_ERR_BAD_PATH), 400);
    ck_assert_int_eq(fb_err_http_status(FB_ERR_BAD_RANGE), 400);
    ck_assert_int_eq(fb_err_http_status(FB_ERR_RANGE_NOT_SATISFIABLE), 416);
    ck_assert_int_eq(fb_err_http_status(FB_ERR_DISK_FULL), 507);
    ck_assert_int_eq(fb_err_http_status(FB_ERR_NOT_FOUND), 404);
}
END_TEST

START_TEST(test_errno_mapping)
{
    ck_assert_int_eq(fb_err_from_errno(0), FB_OK);
    ck_assert_int_eq(fb_err_from_errno(ENOSPC), FB_ERR_DISK_FULL);
    ck_assert_str_eq(fb_err_name(fb_err_from_errno(ENOSPC)), "disk_full");
    ck_assert_int_eq(fb_err_from_errno(EDQUOT), FB_ERR_DISK_FULL);
    ck_assert_int_eq(fb_err_from_errno(EACCES), FB_ERR_PERMISSION);
    ck_assert_int_eq(fb_err_from_errno(EPERM), FB_ERR_PERMISSION);
    ck_assert_int_eq(fb_err_from_errno(ENOENT), FB_ERR_NOT_FOUND);
    ck_assert_int_eq(fb_err_from_errno(EXDEV), FB_ERR_PATH_ESCAPE);
    ck_assert_int_eq(fb_err_from_errno(EEXIST), FB_ERR_EXISTS);
    ck_assert_int_eq(fb_err_from_errno(ENOMEM), FB_ERR_NOMEM);
    ck_assert_int_eq(fb_err_from_errno(EIO), FB_ERR_IO);
}
END_TEST

static Suite *err_suite(void)
{
    Suite *s = suite_create("fb_err");
    TCase *tc = tcase_create("table");

    tcase_add_test(tc, test_every_code_has_a_distinct_name);
    tcase_add_test(tc, test_every_code_has_a_distinct_exit_code_and_a_message);
    tcase_add_test(tc, test_name_round_trips_to_the_same_code);
    tcase_add_test(tc, test_unknown_name_is_a_protocol_error);
    tcase_add_test(tc, test_out_of_range_code_is_unknown_and_internal);
    tcase_add_test(tc, test_seed_messages_are_exact);
    tcase_add_test(tc, test_http_statuses_of_contract_codes);
    tcase_add_test(tc, test_errno_mapping);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(err_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
