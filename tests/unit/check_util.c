/* Unit tests for fb_util: hex encoding and strict decoding, SHA-256 of a file against known
 * digests (including files larger than one read block and files shorter than claimed), random
 * bytes, clocks and constant-time comparison. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fb_util.h"

/* SHA-256 test vectors from FIPS 180-2. */
#define SHA256_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define SHA256_EMPTY "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
/* One million 'a' characters. */
#define SHA256_MILLION_A "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
/* Exactly one 1 MiB read block of 'a', and 3 MiB + 5 bytes of 'a' (computed with Python hashlib). */
#define SHA256_MIB_A "9bc1b2a288b26af7257a36277ae3816a7d4f16e89c1e7e77d0a5c48bad62b360"
#define SHA256_3MIB_5_A "aff2c7498aae939dfb2fb1dc6c0c83fa3708b069428e51338801af7f5dc2bf0f"

/* A temporary file holding LEN bytes of DATA (or LEN copies of FILL if DATA is NULL),
 * already unlinked; returns its descriptor. */
static int temp_file(const void *data, size_t len, char fill)
{
    char name[] = "/tmp/check_util.XXXXXX";
    int fd = mkstemp(name);
    char *buf;

    ck_assert_int_ge(fd, 0);
    unlink(name);
    buf = malloc(len + 1);
    ck_assert_ptr_nonnull(buf);
    if (data != NULL)
        memcpy(buf, data, len);
    else
        memset(buf, fill, len);
    ck_assert_int_eq(write(fd, buf, len), (ssize_t)len);
    free(buf);
    return fd;
}

static void expect_sha256(int fd, uint64_t size, const char *want_hex)
{
    unsigned char digest[FB_SHA256_LEN];
    char hex[FB_SHA256_HEX_LEN + 1];

    ck_assert_int_eq(fb_sha256_fd(digest, fd, size), FB_OK);
    fb_hex_encode(hex, digest, sizeof(digest));
    ck_assert_str_eq(hex, want_hex);
}

START_TEST(test_hex_encode_is_lower_case)
{
    const unsigned char in[] = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xff};
    char out[2 * sizeof(in) + 1];

    memset(out, 'x', sizeof(out));
    fb_hex_encode(out, in, sizeof(in));
    ck_assert_str_eq(out, "00017f80abff");
    fb_hex_encode(out, in, 0);
    ck_assert_str_eq(out, "");
}
END_TEST

START_TEST(test_hex_decode_accepts_either_case)
{
    unsigned char out[4];
    const unsigned char want[] = {0xde, 0xad, 0xbe, 0xef};

    ck_assert_int_eq(fb_hex_decode(out, 4, "deadbeef"), FB_OK);
    ck_assert_mem_eq(out, want, 4);
    memset(out, 0, sizeof(out));
    ck_assert_int_eq(fb_hex_decode(out, 4, "DeAdBEEF"), FB_OK);
    ck_assert_mem_eq(out, want, 4);
    ck_assert_int_eq(fb_hex_decode(out, 0, ""), FB_OK);
}
END_TEST

START_TEST(test_hex_decode_rejects_bad_characters)
{
    unsigned char out[4];

    ck_assert_int_eq(fb_hex_decode(out, 4, "deadbeeg"), FB_ERR_BAD_REQUEST);
    ck_assert_int_eq(fb_hex_decode(out, 4, "dead beef"), FB_ERR_BAD_REQUEST);
    ck_assert_int_eq(fb_hex_decode(out, 4, "deadbee "), FB_ERR_BAD_REQUEST);
    ck_assert_int_eq(fb_hex_decode(out, 4, "0xdeadbe"), FB_ERR_BAD_REQUEST);
    ck_assert_int_eq(fb_hex_decode(out, 4, "-1000000"), FB_ERR_BAD_REQUEST);
    ck_assert_int_eq(fb_hex_decode(out, 1, "\xc3\xa9"), FB_ERR_BAD_REQUEST);
    ck_assert_int_eq(fb_hex_decode(out, 1, NULL), FB_ERR_BAD_REQUEST);
}
END_TEST

START_TEST(test_hex_decode_rejects_wrong_length)
{
    unsigned char out[4];

    ck_assert_int_eq(fb_hex_decode(out, 4, "deadbee"), FB_ERR_BAD_REQUEST);    /* odd, short */
    ck_assert_int_eq(fb_hex_decode(out, 4, "deadbeef0"), FB_ERR_BAD_REQUEST);  /* odd, long */
    ck_assert_int_eq(fb_hex_decode(out, 4, "deadbeef00"), FB_ERR_BAD_REQUEST); /* even, long */
    ck_assert_int_eq(fb_hex_decode(out, 4, "dead"), FB_ERR_BAD_REQUEST);
    ck_assert_int_eq(fb_hex_decode(out, 4, ""), FB_ERR_BAD_REQUEST);
    ck_assert_int_eq(fb_hex_decode(out, 0, "00"), FB_ERR_BAD_REQUEST);
}
END_TEST

START_TEST(test_hex_round_trip)
{
    unsigned char in[256], back[256];
    char hex[2 * sizeof(in) + 1];

    for (unsigned i = 0; i < sizeof(in); i++)
        in[i] = (unsigned char)i;
    fb_hex_encode(hex, in, sizeof(in));
    ck_assert_int_eq(fb_hex_decode(back, sizeof(back), hex), FB_OK);
    ck_assert_mem_eq(in, back, sizeof(in));
}
END_TEST

START_TEST(test_sha256_of_abc_is_the_known_digest)
{
    int fd = temp_file("abc", 3, 0);

    expect_sha256(fd, 3, SHA256_ABC);
    close(fd);
}
END_TEST

START_TEST(test_sha256_of_empty_prefix)
{
    int fd = temp_file("abc", 3, 0);

    expect_sha256(fd, 0, SHA256_EMPTY);
    close(fd);
}
END_TEST

START_TEST(test_sha256_hashes_only_the_first_size_bytes)
{
    int fd = temp_file("abcdef", 6, 0);

    expect_sha256(fd, 3, SHA256_ABC);
    close(fd);
}
END_TEST

START_TEST(test_sha256_across_several_read_blocks)
{
    /* Less than one 1 MiB read block, exactly one, and a bit over three. */
    int fd = temp_file(NULL, 3 * 1024 * 1024 + 5, 'a');

    expect_sha256(fd, 1000000, SHA256_MILLION_A);
    expect_sha256(fd, 1024 * 1024, SHA256_MIB_A);
    expect_sha256(fd, 3 * 1024 * 1024 + 5, SHA256_3MIB_5_A);
    close(fd);
}
END_TEST

START_TEST(test_sha256_file_shorter_than_size_is_an_error)
{
    unsigned char digest[FB_SHA256_LEN];
    int fd = temp_file("abc", 3, 0);

    ck_assert_int_eq(fb_sha256_fd(digest, fd, 4), FB_ERR_IO);
    close(fd);
    fd = temp_file(NULL, 3 * 1024 * 1024 + 5, 'z');
    ck_assert_int_eq(fb_sha256_fd(digest, fd, 3 * 1024 * 1024 + 6), FB_ERR_IO);
    close(fd);
}
END_TEST

START_TEST(test_sha256_does_not_move_the_file_offset)
{
    unsigned char digest[FB_SHA256_LEN];
    int fd = temp_file("abc", 3, 0);

    ck_assert_int_eq(lseek(fd, 1, SEEK_SET), 1);
    ck_assert_int_eq(fb_sha256_fd(digest, fd, 3), FB_OK);
    ck_assert_int_eq(lseek(fd, 0, SEEK_CUR), 1);
    close(fd);
}
END_TEST

START_TEST(test_sha256_bad_descriptor_is_an_error)
{
    unsigned char digest[FB_SHA256_LEN];
    int fd = open("/", O_RDONLY | O_DIRECTORY);

    ck_assert_int_ne(fb_sha256_fd(digest, -1, 3), FB_OK);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(fb_sha256_fd(digest, fd, 3), FB_ERR_IO); /* EISDIR from pread */
    close(fd);
}
END_TEST

START_TEST(test_random_bytes_differ_between_calls)
{
    unsigned char a[32], b[32], zero[32];

    memset(zero, 0, sizeof(zero));
    ck_assert_int_eq(fb_random_bytes(a, sizeof(a)), FB_OK);
    ck_assert_int_eq(fb_random_bytes(b, sizeof(b)), FB_OK);
    ck_assert(memcmp(a, b, sizeof(a)) != 0);
    ck_assert(memcmp(a, zero, sizeof(a)) != 0);
    ck_assert_int_eq(fb_random_bytes(a, 0), FB_OK);
}
END_TEST

START_TEST(test_clocks_advance)
{
    uint64_t m1 = fb_time_mono_ns();
    uint64_t now = fb_time_now_ns();
    struct timespec ts = {0, 2000000};
    uint64_t m2;

    nanosleep(&ts, NULL);
    m2 = fb_time_mono_ns();
    ck_assert_uint_ge(m2 - m1, 2000000);
    /* Wall clock after 2020-01-01 and within a few seconds of time(). */
    ck_assert_uint_gt(now, 1577836800ull * 1000000000ull);
    ck_assert_uint_le(now / 1000000000ull, (uint64_t)time(NULL) + 1);
    ck_assert_uint_ge(now / 1000000000ull + 2, (uint64_t)time(NULL));
}
END_TEST

START_TEST(test_constant_time_compare)
{
    unsigned char a[64], b[64];

    memset(a, 0x5a, sizeof(a));
    memcpy(b, a, sizeof(b));
    ck_assert_int_eq(fb_mem_equal_ct(a, b, sizeof(a)), 1);
    b[63] ^= 1;
    ck_assert_int_eq(fb_mem_equal_ct(a, b, sizeof(a)), 0);
    ck_assert_int_eq(fb_mem_equal_ct(a, b, 63), 1);
    b[63] ^= 1;
    b[0] ^= 0x80;
    ck_assert_int_eq(fb_mem_equal_ct(a, b, sizeof(a)), 0);
    ck_assert_int_eq(fb_mem_equal_ct(a, b, 0), 1);
}
END_TEST

START_TEST(test_pwrite_and_pread_all)
{
    unsigned char in[200000], out[200000];
    int fd = temp_file(NULL, 0, 0);

    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (unsigned char)(i * 31 + 7);
    /* At an offset past the end (a sparse start), then read back exactly. */
    ck_assert_int_eq(fb_pwrite_all(fd, in, sizeof(in), 4096), FB_OK);
    ck_assert_int_eq(fb_pread_all(fd, out, sizeof(out), 4096), FB_OK);
    ck_assert_mem_eq(out, in, sizeof(in));
    /* A read beyond the end: the file is shorter than asked, not an I/O error. */
    ck_assert_int_eq(fb_pread_all(fd, out, 100, 4096 + sizeof(in) - 50), FB_ERR_CHANGED);
    ck_assert_int_eq(errno, 0);
    close(fd);
    /* A bad descriptor: an I/O error with errno set. */
    ck_assert_int_eq(fb_pwrite_all(-1, in, 10, 0), FB_ERR_IO);
    ck_assert_int_eq(errno, EBADF);
    ck_assert_int_eq(fb_pread_all(-1, out, 10, 0), FB_ERR_IO);
    ck_assert_int_eq(errno, EBADF);
}
END_TEST

START_TEST(test_pwrite_all_on_a_full_device_is_disk_full)
{
    unsigned char in[4096] = {1};
    int fd = open("/dev/full", O_WRONLY | O_CLOEXEC);

    if (fd < 0)
        return; /* no /dev/full in this environment: nothing to check */
    ck_assert_int_eq(fb_pwrite_all(fd, in, sizeof(in), 0), FB_ERR_DISK_FULL);
    ck_assert_int_eq(errno, ENOSPC);
    close(fd);
}
END_TEST

/* A datagram's arrival time comes from the kernel (SO_TIMESTAMPNS), converted to the
 * monotonic clock; without the control message, or with an implausible one, it is NOW. */
START_TEST(test_rx_arrival_time_from_the_kernel)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    int rx = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), tx = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    char data[8] = "arrival", got[16];
    union {
        char buf[CMSG_SPACE(sizeof(struct timespec))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {got, sizeof(got)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf)};
    uint64_t sent, now = 0, arrived, gap = 0;
    struct timespec fake;

    ck_assert_int_ge(rx, 0);
    ck_assert_int_ge(tx, 0);
    ck_assert_int_eq(bind(rx, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(getsockname(rx, (struct sockaddr *)&a, &alen), 0);
    ck_assert_int_eq(fb_sock_rx_timestamps(rx), 0);
    /* Read late, as a busy receiver would: the arrival time is the kernel's stamp, converted to
     * the monotonic clock, not the read. On a loaded machine the kernel may itself deliver the
     * datagram late (deferred softirq), so the gap is asked of one of a few attempts. */
    for (int attempt = 0; attempt < 5 && gap < 40000; attempt++) {
        struct timespec stamp;
        int64_t rmm = fb_time_real_minus_mono_us(), expect;

        mh.msg_controllen = sizeof(ctl.buf);
        sent = fb_time_mono_ns() / 1000;
        ck_assert_int_eq(sendto(tx, data, sizeof(data), 0, (struct sockaddr *)&a, sizeof(a)), (ssize_t)sizeof(data));
        usleep(50000);
        ck_assert_int_eq(recvmsg(rx, &mh, 0), (ssize_t)sizeof(data));
        now = fb_time_mono_ns() / 1000;
        arrived = fb_time_rx_arrival_us(&mh, now, rmm);
        ck_assert_ptr_nonnull(CMSG_FIRSTHDR(&mh));
        memcpy(&stamp, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(stamp));
        expect = (int64_t)stamp.tv_sec * 1000000 + stamp.tv_nsec / 1000 - rmm;
        ck_assert_int_le(llabs((long long)((int64_t)arrived - expect)), 1000); /* the kernel's stamp */
        ck_assert_uint_ge(arrived + 2000, sent); /* clock conversion: within 2 ms */
        ck_assert_uint_le(arrived, now);
        gap = now - arrived;
    }
    ck_assert_msg(gap >= 40000, "arrival %llu us before the read: the kernel's time, not the read",
                  (unsigned long long)gap);

    /* A timestamp later than now (a clock step): now. No control message: now. */
    fake.tv_sec = (time_t)((now + fb_time_real_minus_mono_us()) / 1000000 + 10);
    fake.tv_nsec = 0;
    memcpy(CMSG_DATA(CMSG_FIRSTHDR(&mh)), &fake, sizeof(fake));
    ck_assert_uint_eq(fb_time_rx_arrival_us(&mh, now, fb_time_real_minus_mono_us()), now);
    mh.msg_controllen = 0;
    ck_assert_uint_eq(fb_time_rx_arrival_us(&mh, now, fb_time_real_minus_mono_us()), now);
    close(rx);
    close(tx);
}
END_TEST

START_TEST(test_timespec_ns)
{
    struct timespec t = {.tv_sec = 1700000000, .tv_nsec = 123456789};

    ck_assert_uint_eq(fb_timespec_ns(&t), 1700000000123456789ull);
    t.tv_sec = 0;
    t.tv_nsec = 5;
    ck_assert_uint_eq(fb_timespec_ns(&t), 5);
    t.tv_sec = -1; /* before the epoch: 0, never a wrapped huge value */
    ck_assert_uint_eq(fb_timespec_ns(&t), 0);
}
END_TEST

START_TEST(test_mtime_parse)
{
    static const char *const bad[] = {
        "",    ".",    "1.",           ".5",          "-1",          "+1",   " 1",    "1 ", "1.5 ",
        "1e9", "0x10", "1.1234567890", "10000000000", "99999999999", "1..2", "1.2.3", "abc"};
    uint64_t ns = 42;

    ck_assert_int_eq(fb_mtime_parse(&ns, "1700000000"), FB_OK);
    ck_assert_uint_eq(ns, 1700000000000000000ull);
    ck_assert_int_eq(fb_mtime_parse(&ns, "1700000000.123456789"), FB_OK);
    ck_assert_uint_eq(ns, 1700000000123456789ull);
    ck_assert_int_eq(fb_mtime_parse(&ns, "1.5"), FB_OK); /* a decimal fraction */
    ck_assert_uint_eq(ns, 1500000000ull);
    ck_assert_int_eq(fb_mtime_parse(&ns, "0.000000005"), FB_OK);
    ck_assert_uint_eq(ns, 5);
    ck_assert_int_eq(fb_mtime_parse(&ns, "0"), FB_OK);
    ck_assert_uint_eq(ns, 0);
    ck_assert_int_eq(fb_mtime_parse(&ns, "9999999999.999999999"), FB_OK);
    ck_assert_uint_eq(ns, 9999999999999999999ull);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ns = 42;
        ck_assert_msg(fb_mtime_parse(&ns, bad[i]) == FB_ERR_BAD_REQUEST, "'%s' accepted", bad[i]);
        ck_assert_uint_eq(ns, 42);
    }
    ck_assert_int_eq(fb_mtime_parse(&ns, NULL), FB_ERR_BAD_REQUEST);
}
END_TEST

/* A paced TCP socket reports a finite maximum pacing rate (that is what turns the kernel's pacing
 * on); a fresh one reports "unlimited". */
START_TEST(test_tcp_pacing_is_turned_on)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    unsigned int rate = 0;
    socklen_t len = sizeof(rate);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(getsockopt(fd, SOL_SOCKET, SO_MAX_PACING_RATE, &rate, &len), 0);
    ck_assert_uint_eq(rate, ~0u);
    ck_assert_int_eq(fb_sock_tcp_pace(fd), 0);
    len = sizeof(rate);
    ck_assert_int_eq(getsockopt(fd, SOL_SOCKET, SO_MAX_PACING_RATE, &rate, &len), 0);
    ck_assert_uint_lt(rate, ~0u);
    ck_assert_uint_ge(rate, 1000000000u); /* far above any link: pacing, not limiting */
    close(fd);
    /* not a socket: an error the caller may ignore, nothing else */
    ck_assert_int_eq(fb_sock_tcp_pace(-1), -1);
}
END_TEST

static Suite *util_suite(void)
{
    Suite *s = suite_create("fb_util");
    TCase *hex = tcase_create("hex");
    TCase *sha = tcase_create("sha256");
    TCase *misc = tcase_create("misc");

    tcase_add_test(hex, test_hex_encode_is_lower_case);
    tcase_add_test(hex, test_hex_decode_accepts_either_case);
    tcase_add_test(hex, test_hex_decode_rejects_bad_characters);
    tcase_add_test(hex, test_hex_decode_rejects_wrong_length);
    tcase_add_test(hex, test_hex_round_trip);
    suite_add_tcase(s, hex);

    tcase_add_test(sha, test_sha256_of_abc_is_the_known_digest);
    tcase_add_test(sha, test_sha256_of_empty_prefix);
    tcase_add_test(sha, test_sha256_hashes_only_the_first_size_bytes);
    tcase_add_test(sha, test_sha256_across_several_read_blocks);
    tcase_add_test(sha, test_sha256_file_shorter_than_size_is_an_error);
    tcase_add_test(sha, test_sha256_does_not_move_the_file_offset);
    tcase_add_test(sha, test_sha256_bad_descriptor_is_an_error);
    suite_add_tcase(s, sha);

    tcase_add_test(misc, test_random_bytes_differ_between_calls);
    tcase_add_test(misc, test_clocks_advance);
    tcase_add_test(misc, test_constant_time_compare);
    tcase_add_test(misc, test_pwrite_and_pread_all);
    tcase_add_test(misc, test_pwrite_all_on_a_full_device_is_disk_full);
    tcase_add_test(misc, test_rx_arrival_time_from_the_kernel);
    tcase_add_test(misc, test_tcp_pacing_is_turned_on);
    tcase_add_test(misc, test_timespec_ns);
    tcase_add_test(misc, test_mtime_parse);
    suite_add_tcase(s, misc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(util_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
