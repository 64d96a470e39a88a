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

/* The file's SIZE bytes, read back: what a writer had in memory when it wrote them. */
static unsigned char *file_bytes(int fd, uint64_t size)
{
    unsigned char *buf = malloc(size ? size : 1);

    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(pread(fd, buf, size, 0), (ssize_t)size);
    return buf;
}

/* Marks every chunk lying wholly below END (or ending at SIZE) as done, as a writer does. */
static void mark_below(fb_slot *slot, uint64_t size, uint64_t end)
{
    for (uint64_t i = 0; i < fb_chunk_count(size, CHUNK); i++) {
        fb_range r = fb_chunk_range(size, CHUNK, i);
        if (r.offset + r.length <= end)
            fb_slot_set_chunk(slot, i);
    }
}

/* A session whose file holds SIZE random bytes (SEED), with what a writer had in memory. */
typedef struct feed_case {
    fb_slot *slot;
    uint32_t gen;
    int fd;
    uint64_t size;
    unsigned char want[32]; /* the file's SHA-256 */
    unsigned char *data;    /* its bytes */
} feed_case;

static void feed_case_open(feed_case *fc, uint64_t size, unsigned seed)
{
    fc->size = size;
    fc->fd = make_session(&fc->slot, &fc->gen, size, seed);
    file_sha256(fc->want, fc->fd, size);
    fc->data = file_bytes(fc->fd, size);
}

/* The commit's digest of the case's file is the file's. */
static void expect_final(feed_case *fc)
{
    unsigned char got[32];

    ck_assert_int_eq(fb_slot_digest_final(got, fc->slot, fc->gen, fc->fd, fc->size), FB_OK);
    ck_assert_mem_eq(got, fc->want, 32);
}

static void feed_case_free(feed_case *fc)
{
    free(fc->data);
    close(fc->fd);
}

START_TEST(test_feed_in_order_gives_the_file_digest)
{
    uint64_t size = 5 * CHUNK + 77;
    feed_case fc;
    uint64_t off = 0, step = 10007; /* pieces that straddle chunk boundaries */

    feed_case_open(&fc, size, 21);
    for (int guard = 0; off < size && guard < 1000; guard++) {
        uint64_t n = size - off < step ? size - off : step;
        /* No fd: at the front the data must come from memory, never from the file. */
        fb_slot_digest_feed(fc.slot, fc.gen, -1, off, fc.data + off, (size_t)n);
        off += n;
        ck_assert_uint_eq(fb_slot_digest_position(fc.slot), off);
        mark_below(fc.slot, size, off);
    }
    ck_assert_uint_eq(off, size);
    expect_final(&fc);
    feed_case_free(&fc);
}
END_TEST

START_TEST(test_feed_does_not_skip_a_gap)
{
    uint64_t size = 5 * CHUNK;
    feed_case fc;

    feed_case_open(&fc, size, 23);
    /* Chunk 0 missing: data further on, complete or not, inside chunk 0 or past it, waits. */
    fb_slot_set_chunk(fc.slot, 1);
    fb_slot_set_chunk(fc.slot, 2);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, 100, fc.data + 100, 1000);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), 0);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, CHUNK, fc.data + CHUNK, CHUNK);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), 0);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, 3 * CHUNK, fc.data + 3 * CHUNK, 1000);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), 0);

    /* Chunk 0 arrives: the completed chunks 0..2 are folded from the file first, then the data
     * at 3 * CHUNK (its chunk is not complete yet) from memory. */
    fb_slot_set_chunk(fc.slot, 0);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, 3 * CHUNK, fc.data + 3 * CHUNK, 1000);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), 3 * CHUNK + 1000);

    /* A second gap (chunk 3 beyond the fed 1000 bytes): data in chunk 4 waits again. */
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, 4 * CHUNK, fc.data + 4 * CHUNK, CHUNK);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), 3 * CHUNK + 1000);
    fb_slot_set_chunk(fc.slot, 4);

    /* The rest of chunk 3 is written by someone else; the commit folds it from the file. */
    fb_slot_set_chunk(fc.slot, 3);
    expect_final(&fc);
    feed_case_free(&fc);
}
END_TEST

START_TEST(test_feed_folds_completed_chunks_then_stops_at_a_gap)
{
    uint64_t size = 4 * CHUNK;
    feed_case fc;

    feed_case_open(&fc, size, 25);
    /* Chunk 0 complete, chunk 1 missing: chunk 0 is folded from the file, nothing past it. */
    fb_slot_set_chunk(fc.slot, 0);
    fb_slot_set_chunk(fc.slot, 2);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, 3 * CHUNK, fc.data + 3 * CHUNK, CHUNK);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), CHUNK);
    fb_slot_set_chunk(fc.slot, 1);
    fb_slot_set_chunk(fc.slot, 3);
    fb_slot_digest_advance(fc.slot, fc.gen, fc.fd, 0);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), size);
    expect_final(&fc);
    feed_case_free(&fc);
}
END_TEST

START_TEST(test_feed_overlapping_the_front_folds_only_the_new_part)
{
    uint64_t size = 3 * CHUNK + 5;
    feed_case fc;

    feed_case_open(&fc, size, 27);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, 0, fc.data, 3000);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), 3000);
    /* A retried PUT sends [1000, 5000) again: only [3000, 5000) is new. */
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, 1000, fc.data + 1000, 4000);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), 5000);
    /* Overlap across a chunk boundary, the front having been folded from the file. */
    fb_slot_set_chunk(fc.slot, 0);
    fb_slot_digest_advance(fc.slot, fc.gen, fc.fd, 0);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), CHUNK);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, CHUNK - 7, fc.data + CHUNK - 7, 2 * CHUNK + 12);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), size);
    mark_below(fc.slot, size, size);
    expect_final(&fc);
    feed_case_free(&fc);
}
END_TEST

START_TEST(test_feed_behind_the_front_is_ignored)
{
    uint64_t size = 2 * CHUNK;
    unsigned char *junk;
    feed_case fc;

    feed_case_open(&fc, size, 29);
    junk = malloc(size);
    ck_assert_ptr_nonnull(junk);
    memset(junk, 0x5A, size);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, 0, fc.data, 4000);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), 4000);
    /* Wrong bytes wholly behind the front (or ending at it) must not be folded. */
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, 1000, junk, 2000);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, 0, junk, 4000);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, 3999, junk, 1);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), 4000);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, 4000, fc.data + 4000, size - 4000);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), size);
    mark_below(fc.slot, size, size);
    expect_final(&fc);
    free(junk);
    feed_case_free(&fc);
}
END_TEST

START_TEST(test_feed_with_a_stale_generation_is_ignored)
{
    uint64_t size = 2 * CHUNK;
    feed_case fc;

    feed_case_open(&fc, size, 31);
    /* At the front, and with a completed chunk to fold first: neither happens. */
    fb_slot_digest_feed(fc.slot, fc.gen + 1, fc.fd, 0, fc.data, 1000);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), 0);
    fb_slot_set_chunk(fc.slot, 0);
    fb_slot_digest_feed(fc.slot, fc.gen + 1, fc.fd, CHUNK, fc.data + CHUNK, CHUNK);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), 0);
    ck_assert_int_eq(atomic_load(&fc.slot->hash_owner), 0);
    fb_slot_set_chunk(fc.slot, 1);
    expect_final(&fc);
    feed_case_free(&fc);
}
END_TEST

START_TEST(test_feed_past_the_end_is_ignored)
{
    uint64_t size = 2 * CHUNK + 10;
    unsigned char tail[16];
    feed_case fc;

    feed_case_open(&fc, size, 33);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, 0, fc.data, (size_t)(size - 5));
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), size - 5);
    /* The real last 5 bytes followed by 11 more: the whole range is refused, not cut. */
    memcpy(tail, fc.data + size - 5, 5);
    memset(tail + 5, 0x77, sizeof(tail) - 5);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, size - 5, tail, sizeof(tail));
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), size - 5);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, size, tail, 1);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, size + 100, tail, 1);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, UINT64_MAX - 2, tail, 5); /* OFF + LEN wraps */
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), size - 5);
    fb_slot_digest_feed(fc.slot, fc.gen, fc.fd, size - 5, tail, 5);
    ck_assert_uint_eq(fb_slot_digest_position(fc.slot), size);
    mark_below(fc.slot, size, size);
    expect_final(&fc);
    feed_case_free(&fc);
}
END_TEST

START_TEST(test_feed_yields_to_another_folder)
{
    uint64_t size = CHUNK;
    unsigned char *data;
    fb_slot *slot;
    uint32_t gen;
    int fd = make_session(&slot, &gen, size, 35);

    data = file_bytes(fd, size);
    /* Another thread of this process holds the digest: the feed returns without folding. */
    atomic_store(&slot->hash_owner, (int32_t)getpid());
    fb_slot_digest_feed(slot, gen, fd, 0, data, 1000);
    ck_assert_uint_eq(fb_slot_digest_position(slot), 0);
    ck_assert_int_eq(atomic_load(&slot->hash_owner), (int32_t)getpid());
    atomic_store(&slot->hash_owner, 0);
    fb_slot_digest_feed(slot, gen, fd, 0, data, 1000);
    ck_assert_uint_eq(fb_slot_digest_position(slot), 1000);
    ck_assert_int_eq(atomic_load(&slot->hash_owner), 0);
    free(data);
    close(fd);
}
END_TEST

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
    tcase_add_test(tc, test_feed_in_order_gives_the_file_digest);
    tcase_add_test(tc, test_feed_does_not_skip_a_gap);
    tcase_add_test(tc, test_feed_folds_completed_chunks_then_stops_at_a_gap);
    tcase_add_test(tc, test_feed_overlapping_the_front_folds_only_the_new_part);
    tcase_add_test(tc, test_feed_behind_the_front_is_ignored);
    tcase_add_test(tc, test_feed_with_a_stale_generation_is_ignored);
    tcase_add_test(tc, test_feed_past_the_end_is_ignored);
    tcase_add_test(tc, test_feed_yields_to_another_folder);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
