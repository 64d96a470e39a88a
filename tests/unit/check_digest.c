/* Unit tests of fb_digest: the running SHA-256 kept in a session slot. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "fb_digest.h"
#include "fb_filesum.h"
#include "fb_range.h"
#include "fb_table.h"
#include "fb_util.h"

#define CHUNK 65536u

static char tmpdir[64];
static char tablepath[128];
static char datapath[128];
static fb_table *table;

static void setup(void)
{
    fb_table_opts opts = {.nslots = 4, .create = 1, .owner_uid = (uid_t)-1, .owner_gid = (gid_t)-1,
                          .trusted_uid = (uid_t)-1};
    char err[256];

    strcpy(tmpdir, "/tmp/fbdigest.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    snprintf(tablepath, sizeof(tablepath), "%s/table", tmpdir);
    snprintf(datapath, sizeof(datapath), "%s/data", tmpdir);
    ck_assert_int_eq(fb_table_open(&table, tablepath, &opts, err, sizeof(err)), FB_OK);
}

static void teardown(void)
{
    fb_table_close(table);
    unlink(tablepath);
    unlink(datapath);
    rmdir(tmpdir);
}

/* A session slot for SIZE bytes and a file of SIZE seeded random bytes; returns the fd. */
static int make_session(fb_slot **pslot, uint32_t *pgen, uint64_t size, unsigned seed)
{
    uint32_t idx;
    fb_slot *slot;
    unsigned char *buf = malloc(size ? size : 1);
    int fd;

    ck_assert_int_eq(fb_table_claim(table, &idx, fb_time_now_ns(), 0, 0), FB_OK);
    slot = fb_table_slot(table, idx);
    fb_slot_info_write_begin(slot);
    slot->info.size = size;
    slot->info.chunk_size = CHUNK;
    slot->info.nchunks = fb_chunk_count(size, CHUNK);
    slot->info.direction = FB_DIR_UPLOAD;
    fb_slot_info_write_end(slot);
    ck_assert(fb_slot_transition(slot, FB_SLOT_CLAIMED, FB_SLOT_ACTIVE));
    srand(seed);
    for (uint64_t i = 0; i < size; i++)
        buf[i] = (unsigned char)rand();
    fd = open(datapath, O_RDWR | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, buf, size), (ssize_t)size);
    free(buf);
    *pslot = slot;
    *pgen = atomic_load(&slot->generation);
    return fd;
}

static void file_sha256(unsigned char out[32], int fd, uint64_t size)
{
    ck_assert_int_eq(fb_sha256_fd(out, fd, size), FB_OK);
}

START_TEST(test_out_of_order_chunks_give_the_file_digest)
{
    uint64_t size = 10 * CHUNK + 123;
    uint64_t n = fb_chunk_count(size, CHUNK);
    unsigned char want[32], got[32];
    fb_slot *slot;
    uint32_t gen;
    int fd = make_session(&slot, &gen, size, 7);

    file_sha256(want, fd, size);
    /* Chunks complete back to front: nothing can be folded until chunk 0 arrives. */
    for (uint64_t i = n; i-- > 1;) {
        fb_slot_set_chunk(slot, i);
        fb_slot_digest_advance(slot, gen, fd, 0);
        ck_assert_uint_eq(fb_slot_digest_position(slot), 0);
    }
    fb_slot_set_chunk(slot, 0);
    fb_slot_digest_advance(slot, gen, fd, 0);
    ck_assert_uint_eq(fb_slot_digest_position(slot), size);
    ck_assert_int_eq(fb_slot_digest_final(got, slot, gen, fd, size), FB_OK);
    ck_assert_mem_eq(got, want, 32);
    close(fd);
}
END_TEST

START_TEST(test_advance_is_bounded_and_final_reads_the_rest)
{
    uint64_t size = 8 * CHUNK;
    unsigned char want[32], got[32];
    fb_slot *slot;
    uint32_t gen;
    int fd = make_session(&slot, &gen, size, 9);

    file_sha256(want, fd, size);
    for (uint64_t i = 0; i < 8; i++)
        fb_slot_set_chunk(slot, i);
    fb_slot_digest_advance(slot, gen, fd, 2 * CHUNK);
    ck_assert_uint_eq(fb_slot_digest_position(slot), 2 * CHUNK);
    ck_assert_int_eq(fb_slot_digest_final(got, slot, gen, fd, size), FB_OK);
    ck_assert_mem_eq(got, want, 32);
    close(fd);
}
END_TEST

START_TEST(test_final_refuses_an_incomplete_file)
{
    uint64_t size = 3 * CHUNK;
    unsigned char got[32];
    fb_slot *slot;
    uint32_t gen;
    int fd = make_session(&slot, &gen, size, 11);

    fb_slot_set_chunk(slot, 0);
    fb_slot_set_chunk(slot, 2);
    ck_assert_int_eq(fb_slot_digest_final(got, slot, gen, fd, size), FB_ERR_INCOMPLETE);
    ck_assert_uint_eq(fb_slot_digest_position(slot), CHUNK);
    close(fd);
}
END_TEST

START_TEST(test_empty_file_digest)
{
    static const unsigned char empty[32] = {0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4,
                                            0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b,
                                            0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};
    unsigned char got[32];
    fb_slot *slot;
    uint32_t gen;
    int fd = make_session(&slot, &gen, 0, 1);

    ck_assert_int_eq(fb_slot_digest_final(got, slot, gen, fd, 0), FB_OK);
    ck_assert_mem_eq(got, empty, 32);
    close(fd);
}
END_TEST

START_TEST(test_reused_slot_is_refused)
{
    uint64_t size = 2 * CHUNK;
    unsigned char got[32];
    fb_slot *slot;
    uint32_t gen;
    int fd = make_session(&slot, &gen, size, 3);

    fb_slot_set_chunk(slot, 0);
    fb_slot_set_chunk(slot, 1);
    ck_assert_int_eq(fb_slot_digest_final(got, slot, gen + 1, fd, size), FB_ERR_SESSION_STATE);
    fb_slot_digest_advance(slot, gen + 1, fd, 0);
    ck_assert_uint_eq(fb_slot_digest_position(slot), 0);
    close(fd);
}
END_TEST

START_TEST(test_owner_killed_mid_digest_is_recovered)
{
    uint64_t size = 4 * CHUNK;
    unsigned char want[32], got[32];
    fb_slot *slot;
    uint32_t gen;
    int fd = make_session(&slot, &gen, size, 5);
    pid_t pid;
    int status;

    file_sha256(want, fd, size);
    for (uint64_t i = 0; i < 4; i++)
        fb_slot_set_chunk(slot, i);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        /* Take the digest lock and die holding it, with garbage in the copy not in use. */
        int32_t zero = 0;
        atomic_compare_exchange_strong(&slot->hash_owner, &zero, (int32_t)getpid());
        memset(slot->hash_state[(atomic_load(&slot->hash_pos) & 1) ^ 1], 0xAB, 128);
        raise(SIGKILL);
        _exit(0);
    }
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFSIGNALED(status));
    ck_assert_int_eq(atomic_load(&slot->hash_owner), pid);
    ck_assert_int_eq(fb_slot_digest_final(got, slot, gen, fd, size), FB_OK);
    ck_assert_mem_eq(got, want, 32);
    ck_assert_int_eq(atomic_load(&slot->hash_owner), 0);
    close(fd);
}
END_TEST

/* ---- fb_filesum: the committed file's digest kept with it, and Repr-Digest ---- */

static struct stat filesum_stat(void)
{
    struct stat st;

    memset(&st, 0, sizeof(st));
    st.st_size = 3000000;
    st.st_mtim.tv_sec = 1700000000;
    st.st_mtim.tv_nsec = 123456789;
    st.st_dev = 2049;
    st.st_ino = 987654;
    st.st_ctim.tv_sec = 1700000100;
    st.st_ctim.tv_nsec = 5;
    return st;
}

START_TEST(test_filesum_round_trip_and_validity)
{
    uint8_t sha[32], back[32];
    struct stat st = filesum_stat(), other;
    uint64_t set_ns = 1700000100ull * 1000000000ull;
    char v[FB_FILESUM_MAX];
    size_t n;

    for (int i = 0; i < 32; i++)
        sha[i] = (uint8_t)(i * 9 + 3);
    n = fb_filesum_format(v, sizeof(v), sha, &st, set_ns);
    ck_assert_uint_gt(n, 66);
    ck_assert(strncmp(v, "1 030c151e27303942", 18) == 0);
    ck_assert(strstr(v, " 3000000 1700000000123456789 2049 987654 1700000100000000000") != NULL);
    ck_assert_int_eq(fb_filesum_parse(back, v, n, &st), 1);
    ck_assert_mem_eq(back, sha, 32);
    /* too small a buffer: nothing */
    ck_assert_uint_eq(fb_filesum_format(v, 20, sha, &st, set_ns), 0);
    n = fb_filesum_format(v, sizeof(v), sha, &st, set_ns);

    /* any change the file can go through makes it invalid */
    other = st;
    other.st_size++;
    ck_assert_int_eq(fb_filesum_parse(back, v, n, &other), 0);
    other = st;
    other.st_mtim.tv_nsec++;
    ck_assert_int_eq(fb_filesum_parse(back, v, n, &other), 0);
    other = st;
    other.st_ino++;
    ck_assert_int_eq(fb_filesum_parse(back, v, n, &other), 0);
    other = st;
    other.st_dev++;
    ck_assert_int_eq(fb_filesum_parse(back, v, n, &other), 0);
    /* the change time: within the window after the digest was set (the rename), not later */
    other = st;
    other.st_ctim.tv_sec += 1;
    ck_assert_int_eq(fb_filesum_parse(back, v, n, &other), 1);
    other.st_ctim.tv_sec += 2; /* 3 s after */
    ck_assert_int_eq(fb_filesum_parse(back, v, n, &other), 0);
    other = st;
    other.st_ctim.tv_sec -= 2; /* well before it was set: not this file's history */
    ck_assert_int_eq(fb_filesum_parse(back, v, n, &other), 0);

    /* malformed values */
    ck_assert_int_eq(fb_filesum_parse(back, v, n - 1, &st), 0); /* last number cut short */
    ck_assert_int_eq(fb_filesum_parse(back, v, 10, &st), 0);
    ck_assert_int_eq(fb_filesum_parse(back, "", 0, &st), 0);
    v[0] = '2'; /* unknown version */
    ck_assert_int_eq(fb_filesum_parse(back, v, n, &st), 0);
    v[0] = '1';
    v[5] = 'x'; /* not hex */
    ck_assert_int_eq(fb_filesum_parse(back, v, n, &st), 0);
    {
        static const char huge[] = "1 0000000000000000000000000000000000000000000000000000000000000000 "
                                   "99999999999999999999999 1 1 1 1";
        ck_assert_int_eq(fb_filesum_parse(back, huge, sizeof(huge) - 1, &st), 0);
    }
}
END_TEST

START_TEST(test_repr_digest_format_and_parse)
{
    uint8_t sha[32], back[32];
    unsigned int len = 0;
    char v[FB_REPR_DIGEST_LEN], list[256];

    /* SHA-256("abc"), RFC 9530 style: base64 between colons */
    ck_assert_int_eq(EVP_Digest("abc", 3, sha, &len, EVP_sha256(), NULL), 1);
    fb_repr_digest_format(v, sha);
    ck_assert_str_eq(v, "sha-256=:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=:");
    ck_assert_int_eq(fb_repr_digest_parse(back, v), 1);
    ck_assert_mem_eq(back, sha, 32);
    /* among other members, with spaces and parameters */
    snprintf(list, sizeof(list), "sha-512=:AAAA:, unixsum=:1:;x=1,  %s", v);
    memset(back, 0, sizeof(back));
    ck_assert_int_eq(fb_repr_digest_parse(back, list), 1);
    ck_assert_mem_eq(back, sha, 32);
    /* absent, truncated, wrong length or not base64 */
    ck_assert_int_eq(fb_repr_digest_parse(back, "sha-512=:AAAA:"), 0);
    ck_assert_int_eq(fb_repr_digest_parse(back, "sha-256=:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="), 0);
    ck_assert_int_eq(fb_repr_digest_parse(back, "sha-256=:AAAA:"), 0);
    ck_assert_int_eq(fb_repr_digest_parse(back, "sha-256=:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAF***:"), 0);
    ck_assert_int_eq(fb_repr_digest_parse(back, "sha-2567=:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=:"),
                     0);
    ck_assert_int_eq(fb_repr_digest_parse(back, ""), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fb_digest");
    TCase *tc = tcase_create("running digest");
    SRunner *sr;
    int failed;

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_out_of_order_chunks_give_the_file_digest);
    tcase_add_test(tc, test_advance_is_bounded_and_final_reads_the_rest);
    tcase_add_test(tc, test_final_refuses_an_incomplete_file);
    tcase_add_test(tc, test_empty_file_digest);
    tcase_add_test(tc, test_reused_slot_is_refused);
    tcase_add_test(tc, test_owner_killed_mid_digest_is_recovered);
    suite_add_tcase(s, tc);
    tc = tcase_create("filesum");
    tcase_add_test(tc, test_filesum_round_trip_and_validity);
    tcase_add_test(tc, test_repr_digest_format_and_parse);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
