/* Unit tests for fb_checkpoint: the progress sidecar. Round trips (with and without the
 * session's expected digest, with the partial file's and the source's identity), older versions
 * refused, every kind of damage read back as
 * FB_ERR_IO, names beneath the directory only, atomic replacement with a stale or concurrent
 * temporary file. Each test works in a mkdtemp directory that the unchecked fixture
 * removes afterwards. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "fb_checkpoint.h"

#define TPATH 256

static char g_top[128];

/* The on-disk format, spelt out independently of the implementation. */
struct disk_header {
    char magic[8];
    uint32_t version;
    uint32_t chunk_size;
    uint64_t size;
    uint64_t nchunks;
    uint32_t bitmap_words_used;
    uint32_t flags;
};
_Static_assert(sizeof(struct disk_header) == 40, "checkpoint header is 40 bytes");
#define IDENT_LEN 48 /* version 3: partial st_dev, st_ino (8 each), source identity (32) */
#define CRAFT_DEV 0x0102030405060708ull
#define CRAFT_INO 0x1112131415161718ull
#define CRAFT_SOURCE_BYTE 0x33

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void top_setup(void)
{
    snprintf(g_top, sizeof(g_top), "/tmp/check_checkpoint.XXXXXX");
    if (mkdtemp(g_top) == NULL) {
        perror("mkdtemp");
        abort();
    }
}

static void top_teardown(void)
{
    nftw(g_top, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh directory for one test, opened. */
static int test_dirfd(char dir[TPATH])
{
    int fd;

    snprintf(dir, TPATH, "%.128s/t.XXXXXX", g_top);
    ck_assert_ptr_nonnull(mkdtemp(dir));
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    return fd;
}

static fb_checkpoint *cp_new(uint64_t size, uint32_t chunk_size)
{
    fb_checkpoint *cp = calloc(1, sizeof(*cp));

    ck_assert_ptr_nonnull(cp);
    cp->size = size;
    cp->chunk_size = chunk_size;
    cp->nchunks = fb_table_nchunks_for(size, chunk_size);
    return cp;
}

static void cp_set(fb_checkpoint *cp, uint64_t i)
{
    cp->bitmap[i / 64] |= UINT64_C(1) << (i % 64);
}

static size_t file_size(int dirfd, const char *name)
{
    struct stat st;

    ck_assert_int_eq(fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW), 0);
    return (size_t)st.st_size;
}

static int exists(int dirfd, const char *name)
{
    struct stat st;

    return fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

static void put_file(int dirfd, const char *name, const void *buf, size_t len)
{
    int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC, 0600);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, buf, len), (ssize_t)len);
    close(fd);
}

static size_t get_file(int dirfd, const char *name, unsigned char *buf, size_t cap)
{
    int fd = openat(dirfd, name, O_RDONLY);
    ssize_t n;

    ck_assert_int_ge(fd, 0);
    n = read(fd, buf, cap);
    ck_assert_int_ge(n, 0);
    close(fd);
    return (size_t)n;
}

/* Writes a sidecar by hand: HDR, the expected digest EXPECT if not NULL, WORDS words, and a
 * correct SHA-256. */
static void craft_sha(int dirfd, const char *name, const struct disk_header *hdr, const unsigned char *expect,
                      const uint64_t *words, size_t nwords)
{
    unsigned char buf[sizeof(*hdr) + IDENT_LEN + 32 + 16 * 8 + 32];
    size_t off = sizeof(*hdr) + IDENT_LEN + (expect != NULL ? 32 : 0), len = off + nwords * 8;
    unsigned int mdlen = 0;
    uint64_t dev = CRAFT_DEV, ino = CRAFT_INO;

    ck_assert_uint_le(nwords, 16);
    memcpy(buf, hdr, sizeof(*hdr));
    memcpy(buf + sizeof(*hdr), &dev, 8);
    memcpy(buf + sizeof(*hdr) + 8, &ino, 8);
    memset(buf + sizeof(*hdr) + 16, CRAFT_SOURCE_BYTE, 32);
    if (expect != NULL)
        memcpy(buf + sizeof(*hdr) + IDENT_LEN, expect, 32);
    memcpy(buf + off, words, nwords * 8);
    ck_assert_int_eq(EVP_Digest(buf, len, buf + len, &mdlen, EVP_sha256(), NULL), 1);
    put_file(dirfd, name, buf, len + 32);
}

static void craft(int dirfd, const char *name, const struct disk_header *hdr, const uint64_t *words,
                  size_t nwords)
{
    craft_sha(dirfd, name, hdr, NULL, words, nwords);
}

static struct disk_header good_header(void)
{
    struct disk_header h;

    memset(&h, 0, sizeof(h));
    memcpy(h.magic, FB_CHECKPOINT_MAGIC, 8);
    h.version = FB_CHECKPOINT_VERSION;
    h.chunk_size = 1000;
    h.size = 100500; /* 101 chunks: two words */
    h.nchunks = 101;
    h.bitmap_words_used = 2;
    return h;
}

START_TEST(test_round_trip_keeps_every_field)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir);
    fb_checkpoint *cp = cp_new((10u << 20) + 5, 1u << 20), *back = calloc(1, sizeof(*back));

    ck_assert_uint_eq(cp->nchunks, 11);
    cp_set(cp, 0);
    cp_set(cp, 3);
    cp_set(cp, 10);
    memset(back, 0x5a, sizeof(*back));
    ck_assert_int_eq(fb_checkpoint_write(dfd, ".f.fbpart.ckpt", cp), FB_OK);
    ck_assert_uint_eq(file_size(dfd, ".f.fbpart.ckpt"), 40 + IDENT_LEN + 8 + 32);
    ck_assert(!exists(dfd, ".f.fbpart.ckpt.tmp"));
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, ".f.fbpart.ckpt"), FB_OK);
    ck_assert_uint_eq(back->size, cp->size);
    ck_assert_uint_eq(back->chunk_size, cp->chunk_size);
    ck_assert_uint_eq(back->nchunks, 11);
    ck_assert_mem_eq(back->bitmap, cp->bitmap, sizeof(cp->bitmap)); /* unused words come back 0 */
    free(cp);
    free(back);
    close(dfd);
}
END_TEST

START_TEST(test_round_trip_empty_file_and_full_bitmap)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir);
    fb_checkpoint *cp = cp_new(0, 4096), *back = calloc(1, sizeof(*back));

    ck_assert_uint_eq(cp->nchunks, 0);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", cp), FB_OK);
    ck_assert_uint_eq(file_size(dfd, "c"), 40 + IDENT_LEN + 32);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);
    ck_assert_uint_eq(back->nchunks, 0);
    ck_assert_uint_eq(back->size, 0);
    free(cp);

    cp = cp_new((uint64_t)FB_BITMAP_BITS * 4096, 4096);
    ck_assert_uint_eq(cp->nchunks, FB_BITMAP_BITS);
    memset(cp->bitmap, 0xff, sizeof(cp->bitmap));
    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", cp), FB_OK);
    ck_assert_uint_eq(file_size(dfd, "c"), 40 + IDENT_LEN + FB_BITMAP_WORDS * 8 + 32);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);
    ck_assert_mem_eq(back->bitmap, cp->bitmap, sizeof(cp->bitmap));
    free(cp);
    free(back);
    close(dfd);
}
END_TEST

START_TEST(test_write_clears_bits_past_last_chunk_and_rejects_bad_input)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir);
    fb_checkpoint *cp = cp_new(11, 1), *back = calloc(1, sizeof(*back));

    cp_set(cp, 10);
    cp_set(cp, 40); /* no chunk 40 in an 11-chunk file */
    cp->bitmap[5] = 7;
    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", cp), FB_OK);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);
    ck_assert_uint_eq(back->bitmap[0], UINT64_C(1) << 10);
    ck_assert_uint_eq(back->bitmap[5], 0);

    cp->chunk_size = 0;
    ck_assert_int_ne(fb_checkpoint_write(dfd, "d", cp), FB_OK);
    cp->chunk_size = 1;
    cp->nchunks = 12; /* does not match size / chunk size */
    ck_assert_int_ne(fb_checkpoint_write(dfd, "d", cp), FB_OK);
    free(cp);
    cp = cp_new((uint64_t)FB_BITMAP_BITS + 1, 1); /* more chunks than the bitmap holds */
    ck_assert_int_ne(fb_checkpoint_write(dfd, "d", cp), FB_OK);
    ck_assert_int_ne(fb_checkpoint_write(dfd, "d", NULL), FB_OK);
    ck_assert(!exists(dfd, "d"));
    free(cp);
    free(back);
    close(dfd);
}
END_TEST

START_TEST(test_any_damaged_byte_is_io_error)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir);
    fb_checkpoint *cp = cp_new(100500, 1000), *back = calloc(1, sizeof(*back));
    unsigned char orig[256], buf[256];
    size_t len;

    cp_set(cp, 1);
    cp_set(cp, 100);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", cp), FB_OK);
    len = get_file(dfd, "c", orig, sizeof(orig));
    ck_assert_uint_eq(len, 40 + IDENT_LEN + 16 + 32);
    /* Every byte, header, bitmap or digest, is covered. */
    for (size_t i = 0; i < len; i++) {
        memcpy(buf, orig, len);
        buf[i] ^= 0x01;
        put_file(dfd, "c", buf, len);
        ck_assert_msg(fb_checkpoint_read(back, dfd, "c") == FB_ERR_IO, "flipped byte %zu accepted", i);
    }
    put_file(dfd, "c", orig, len);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);
    free(cp);
    free(back);
    close(dfd);
}
END_TEST

START_TEST(test_truncated_or_extended_file_is_io_error)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir);
    fb_checkpoint *cp = cp_new(100500, 1000), *back = calloc(1, sizeof(*back));
    unsigned char orig[256];
    size_t len;
    static const size_t cuts[] = {0, 1, 39, 40, 41, 56, 87, 88, 104, 119, 120, 135};

    cp_set(cp, 7);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", cp), FB_OK);
    len = get_file(dfd, "c", orig, sizeof(orig));
    ck_assert_uint_eq(len, 40 + IDENT_LEN + 16 + 32);
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        put_file(dfd, "c", orig, cuts[i]);
        ck_assert_msg(fb_checkpoint_read(back, dfd, "c") == FB_ERR_IO, "length %zu accepted", cuts[i]);
    }
    orig[len] = 0;
    put_file(dfd, "c", orig, len + 1);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_ERR_IO);
    free(cp);
    free(back);
    close(dfd);
}
END_TEST

START_TEST(test_consistent_digest_but_invalid_fields_is_io_error)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir);
    fb_checkpoint *back = calloc(1, sizeof(*back));
    uint64_t words[16] = {5, 1};
    struct disk_header h;

    h = good_header();
    craft(dfd, "c", &h, words, 2);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK); /* the crafting itself is right */
    ck_assert_uint_eq(back->bitmap[0], 5);
    ck_assert_uint_eq(back->bitmap[1], 1);

    h = good_header();
    h.version = FB_CHECKPOINT_VERSION + 1;
    craft(dfd, "c", &h, words, 2);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_ERR_IO);

    h = good_header();
    h.magic[0] = 'X';
    craft(dfd, "c", &h, words, 2);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_ERR_IO);

    h = good_header();
    h.nchunks = 102; /* does not match size / chunk size */
    craft(dfd, "c", &h, words, 2);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_ERR_IO);

    h = good_header();
    h.chunk_size = 0;
    craft(dfd, "c", &h, words, 2);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_ERR_IO);

    h = good_header();
    h.bitmap_words_used = 3; /* claims more words than nchunks needs... */
    craft(dfd, "c", &h, words, 3);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_ERR_IO);
    h.bitmap_words_used = 1; /* ...or fewer */
    craft(dfd, "c", &h, words, 1);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_ERR_IO);
    h = good_header();
    craft(dfd, "c", &h, words, 3); /* right count in the header, one word too many in the file */
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_ERR_IO);

    h = good_header();
    h.flags = 8; /* no such flag */
    craft(dfd, "c", &h, words, 2);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_ERR_IO);

    h = good_header();
    words[1] = UINT64_C(1) << 37; /* chunk 101 of a 101-chunk file */
    craft(dfd, "c", &h, words, 2);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_ERR_IO);

    h = good_header();
    h.size = (uint64_t)(FB_BITMAP_BITS + 1) * 1000;
    h.nchunks = FB_BITMAP_BITS + 1;
    h.bitmap_words_used = 2;
    words[1] = 0;
    craft(dfd, "c", &h, words, 2);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_ERR_IO);
    free(back);
    close(dfd);
}
END_TEST

START_TEST(test_expected_digest_round_trips_and_is_covered)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir);
    fb_checkpoint *cp = cp_new(100500, 1000), *back = calloc(1, sizeof(*back));
    unsigned char orig[256], buf[256];
    size_t len;

    for (int i = 0; i < 32; i++)
        cp->expected_sha256[i] = (uint8_t)(0xa0 + i);
    cp->flags = FB_CHECKPOINT_FLAG_SHA256;
    cp_set(cp, 2);
    cp_set(cp, 100);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", cp), FB_OK);
    len = get_file(dfd, "c", orig, sizeof(orig));
    ck_assert_uint_eq(len, 40 + IDENT_LEN + 32 + 16 + 32);
    memset(back, 0x5a, sizeof(*back));
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);
    ck_assert_uint_eq(back->flags, FB_CHECKPOINT_FLAG_SHA256);
    ck_assert_mem_eq(back->expected_sha256, cp->expected_sha256, 32);
    ck_assert_uint_eq(back->size, 100500);
    ck_assert_uint_eq(back->chunk_size, 1000);
    ck_assert_mem_eq(back->bitmap, cp->bitmap, sizeof(cp->bitmap));
    /* The digest bytes are covered like every other byte. */
    for (size_t i = 0; i < len; i++) {
        memcpy(buf, orig, len);
        buf[i] ^= 0x80;
        put_file(dfd, "c", buf, len);
        ck_assert_msg(fb_checkpoint_read(back, dfd, "c") == FB_ERR_IO, "flipped byte %zu accepted", i);
    }

    /* Without the flag nothing of expected_sha256 is stored, and it reads back as zeros. */
    cp->flags = 0;
    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", cp), FB_OK);
    ck_assert_uint_eq(file_size(dfd, "c"), 40 + IDENT_LEN + 16 + 32);
    memset(back, 0x5a, sizeof(*back));
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);
    ck_assert_uint_eq(back->flags, 0);
    for (int i = 0; i < 32; i++)
        ck_assert_uint_eq(back->expected_sha256[i], 0);

    /* Unknown flags are a caller's bug: nothing written. */
    cp->flags = 4;
    ck_assert_int_eq(fb_checkpoint_write(dfd, "d", cp), FB_ERR_INTERNAL);
    ck_assert(!exists(dfd, "d"));
    free(cp);
    free(back);
    close(dfd);
}
END_TEST

START_TEST(test_identity_round_trips_and_older_versions_are_refused)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir);
    fb_checkpoint *cp = cp_new(100500, 1000), *back = calloc(1, sizeof(*back));
    uint64_t words[16] = {9, 1};
    unsigned char expect[32];
    struct disk_header h;

    /* The identity written is the identity read. */
    cp->part_dev = 77;
    cp->part_ino = 123456789;
    for (int i = 0; i < 32; i++)
        cp->source_id[i] = (uint8_t)(i * 7 + 1);
    cp_set(cp, 5);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", cp), FB_OK);
    memset(back, 0x5a, sizeof(*back));
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);
    ck_assert_uint_eq(back->part_dev, 77);
    ck_assert_uint_eq(back->part_ino, 123456789);
    ck_assert_mem_eq(back->source_id, cp->source_id, 32);

    /* Crafted by hand: the identity block sits right after the header. */
    memset(expect, 0x11, sizeof(expect));
    h = good_header();
    ck_assert_uint_eq(h.version, 4);
    h.flags = FB_CHECKPOINT_FLAG_SHA256;
    craft_sha(dfd, "c", &h, expect, words, 2);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);
    ck_assert_uint_eq(back->part_dev, CRAFT_DEV);
    ck_assert_uint_eq(back->part_ino, CRAFT_INO);
    ck_assert_uint_eq(back->source_id[0], CRAFT_SOURCE_BYTE);
    ck_assert_uint_eq(back->source_id[31], CRAFT_SOURCE_BYTE);
    ck_assert_mem_eq(back->expected_sha256, expect, 32);
    ck_assert_uint_eq(back->bitmap[0], 9);
    /* The flag without the digest block, or the block without the flag: wrong length. */
    craft(dfd, "c", &h, words, 2);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_ERR_IO);
    h.flags = 0;
    craft_sha(dfd, "c", &h, expect, words, 2);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_ERR_IO);

    /* Versions 1 to 3 cannot tie their chunks to a partial file, a source and its time: refused. */
    for (uint32_t v = 1; v <= 3; v++) {
        h = good_header();
        h.version = v;
        craft(dfd, "c", &h, words, 2);
        ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_ERR_IO);
    }
    free(cp);
    free(back);
    close(dfd);
}
END_TEST

START_TEST(test_missing_checkpoint_is_not_found)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir);
    fb_checkpoint *back = calloc(1, sizeof(*back));

    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "nothing.ckpt"), FB_ERR_NOT_FOUND);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "no/such/dir.ckpt"), FB_ERR_NOT_FOUND);
    ck_assert_int_eq(fb_checkpoint_remove(dfd, "nothing.ckpt"), FB_OK);
    ck_assert_int_eq(fb_checkpoint_remove(dfd, "no/such/dir.ckpt"), FB_OK);
    free(back);
    close(dfd);
}
END_TEST

START_TEST(test_relname_with_subdirectory)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir), sub;
    fb_checkpoint *cp = cp_new(5000, 1000), *back = calloc(1, sizeof(*back));

    ck_assert_int_eq(mkdirat(dfd, "a", 0700), 0);
    ck_assert_int_eq(mkdirat(dfd, "a/b", 0700), 0);
    cp_set(cp, 4);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "a/b/.f.bin.fbpart.ckpt", cp), FB_OK);
    sub = openat(dfd, "a/b", O_RDONLY | O_DIRECTORY);
    ck_assert_int_ge(sub, 0);
    ck_assert(exists(sub, ".f.bin.fbpart.ckpt"));
    ck_assert(!exists(sub, ".f.bin.fbpart.ckpt.tmp"));
    ck_assert(!exists(dfd, ".f.bin.fbpart.ckpt"));
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "a/b/.f.bin.fbpart.ckpt"), FB_OK);
    ck_assert_uint_eq(back->bitmap[0], 1u << 4);
    /* The same file through the subdirectory's descriptor. */
    ck_assert_int_eq(fb_checkpoint_read(back, sub, ".f.bin.fbpart.ckpt"), FB_OK);
    ck_assert_int_eq(fb_checkpoint_remove(dfd, "a/b/.f.bin.fbpart.ckpt"), FB_OK);
    ck_assert(!exists(sub, ".f.bin.fbpart.ckpt"));
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "a/b/.f.bin.fbpart.ckpt"), FB_ERR_NOT_FOUND);
    close(sub);
    free(cp);
    free(back);
    close(dfd);
}
END_TEST

START_TEST(test_names_outside_the_directory_refused)
{
    char dir[TPATH], outside[TPATH + 32];
    int dfd = test_dirfd(dir);
    fb_checkpoint *cp = cp_new(5000, 1000), *back = calloc(1, sizeof(*back));

    ck_assert_int_eq(mkdirat(dfd, "in", 0700), 0);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "../escape.ckpt", cp), FB_ERR_PATH_ESCAPE);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "in/../../escape.ckpt", cp), FB_ERR_PATH_ESCAPE);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "/tmp/escape.ckpt", cp), FB_ERR_BAD_PATH);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "in//x", cp), FB_ERR_BAD_PATH);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "in/", cp), FB_ERR_BAD_PATH);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "", cp), FB_ERR_BAD_PATH);
    ck_assert_int_eq(fb_checkpoint_write(dfd, NULL, cp), FB_ERR_BAD_PATH);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "../escape.ckpt"), FB_ERR_PATH_ESCAPE);
    /* A symlinked directory that leads out of the tree. */
    snprintf(outside, sizeof(outside), "%s/..", dir);
    ck_assert_int_eq(symlinkat(outside, dfd, "out"), 0);
    ck_assert_int_ne(fb_checkpoint_write(dfd, "out/escape.ckpt", cp), FB_OK);
    ck_assert_int_ne(fb_checkpoint_read(back, dfd, "out/escape.ckpt"), FB_OK);
    snprintf(outside, sizeof(outside), "%s/../escape.ckpt", dir);
    ck_assert_int_ne(access(outside, F_OK), 0);
    /* The checkpoint itself a symlink: not followed. */
    ck_assert_int_eq(fb_checkpoint_write(dfd, "real", cp), FB_OK);
    ck_assert_int_eq(symlinkat("real", dfd, "alias"), 0);
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "alias"), FB_ERR_IO);
    free(cp);
    free(back);
    close(dfd);
}
END_TEST

START_TEST(test_stale_tmp_does_not_block_or_damage)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir);
    fb_checkpoint *v1 = cp_new(5000, 1000), *v2 = cp_new(5000, 1000), *back = calloc(1, sizeof(*back));
    static const char junk[] = "half-written garbage from a crashed writer";

    cp_set(v1, 0);
    cp_set(v2, 0);
    cp_set(v2, 1);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", v1), FB_OK);
    /* A writer died after creating the tmp file: the old checkpoint is still what is read. */
    put_file(dfd, "c.tmp", junk, sizeof(junk));
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);
    ck_assert_uint_eq(back->bitmap[0], 1);
    /* The next write reuses the tmp name and replaces the checkpoint. */
    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", v2), FB_OK);
    ck_assert(!exists(dfd, "c.tmp"));
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);
    ck_assert_uint_eq(back->bitmap[0], 3);
    /* remove also clears a stale tmp. */
    put_file(dfd, "c.tmp", junk, sizeof(junk));
    ck_assert_int_eq(fb_checkpoint_remove(dfd, "c"), FB_OK);
    ck_assert(!exists(dfd, "c"));
    ck_assert(!exists(dfd, "c.tmp"));
    free(v1);
    free(v2);
    free(back);
    close(dfd);
}
END_TEST

START_TEST(test_written_file_is_group_accessible)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir);
    fb_checkpoint *cp = cp_new(5000, 1000);
    struct stat st;
    mode_t old = umask(077);

    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", cp), FB_OK);
    umask(old);
    ck_assert_int_eq(fstatat(dfd, "c", &st, 0), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0660);
    free(cp);
    close(dfd);
}
END_TEST

START_TEST(test_planted_tmp_link_or_fifo_never_written_through)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir);
    fb_checkpoint *cp = cp_new(5000, 1000), *back = calloc(1, sizeof(*back));
    static const char precious[] = "someone else's data";
    unsigned char buf[64];

    put_file(dfd, "victim", precious, sizeof(precious));
    ck_assert_int_eq(linkat(dfd, "victim", dfd, "c.tmp", 0), 0);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", cp), FB_OK);
    ck_assert_uint_eq(get_file(dfd, "victim", buf, sizeof(buf)), sizeof(precious));
    ck_assert_mem_eq(buf, precious, sizeof(precious));
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);

    ck_assert_int_eq(mkfifoat(dfd, "d.tmp", 0600), 0);
    ck_assert_int_ne(fb_checkpoint_write(dfd, "d", cp), FB_OK); /* refused, and does not hang */
    ck_assert(!exists(dfd, "d"));
    ck_assert_int_eq(symlinkat("victim", dfd, "e.tmp"), 0);
    ck_assert_int_ne(fb_checkpoint_write(dfd, "e", cp), FB_OK);
    ck_assert_uint_eq(get_file(dfd, "victim", buf, sizeof(buf)), sizeof(precious));
    free(cp);
    free(back);
    close(dfd);
}
END_TEST

#define WRITERS 4
#define WRITES 150

START_TEST(test_concurrent_writers_never_leave_a_torn_checkpoint)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir);
    pid_t pids[WRITERS];
    fb_checkpoint *back = calloc(1, sizeof(*back));

    for (int w = 0; w < WRITERS; w++) {
        pids[w] = fork();
        ck_assert_int_ge(pids[w], 0);
        if (pids[w] == 0) {
            fb_checkpoint *cp = cp_new((uint64_t)64 * 100, 100); /* one full word */
            fb_checkpoint *mine = calloc(1, sizeof(*mine));

            for (int i = 0; i < WRITES; i++) {
                cp->bitmap[0] = ((uint64_t)(w + 1) << 32) | (uint64_t)i;
                fb_err rc = fb_checkpoint_write(dfd, "c", cp);

                if (rc != FB_OK) {
                    fprintf(stderr, "writer %d: write %d: %s\n", w, i, fb_err_name(rc));
                    _exit(2);
                }
                /* Whatever another writer left, it must be whole. */
                if (fb_checkpoint_read(mine, dfd, "c") != FB_OK)
                    _exit(3);
                if ((mine->bitmap[0] >> 32) < 1 || (mine->bitmap[0] >> 32) > WRITERS)
                    _exit(4);
            }
            _exit(0);
        }
    }
    for (int w = 0; w < WRITERS; w++) {
        int status = 0;

        ck_assert_int_eq(waitpid(pids[w], &status, 0), pids[w]);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer failed: status %d", status);
    }
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);
    ck_assert_uint_eq(back->bitmap[0] & 0xffffffffu, WRITES - 1); /* someone's last write won */
    ck_assert(!exists(dfd, "c.tmp"));
    free(back);
    close(dfd);
}
END_TEST

/* The client file's modification time  round-trips beside the expected digest, in
 * that order, is covered by the digest, and takes no space without its flag. */
START_TEST(test_source_mtime_round_trips)
{
    char dir[TPATH];
    int dfd = test_dirfd(dir);
    fb_checkpoint *cp = cp_new(100500, 1000), *back = calloc(1, sizeof(*back));
    unsigned char orig[256], buf[256];
    size_t len;

    memset(cp->expected_sha256, 0x77, 32);
    cp->source_mtime_ns = 1700000000123456789ull;
    cp->flags = FB_CHECKPOINT_FLAG_SHA256 | FB_CHECKPOINT_FLAG_SOURCE_MTIME;
    cp_set(cp, 7);
    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", cp), FB_OK);
    len = get_file(dfd, "c", orig, sizeof(orig));
    ck_assert_uint_eq(len, 40 + 48 + 32 + 8 + 16 + 32);
    memset(back, 0x5a, sizeof(*back));
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);
    ck_assert_uint_eq(back->flags, FB_CHECKPOINT_FLAG_SHA256 | FB_CHECKPOINT_FLAG_SOURCE_MTIME);
    ck_assert_uint_eq(back->source_mtime_ns, 1700000000123456789ull);
    ck_assert_mem_eq(back->expected_sha256, cp->expected_sha256, 32);
    ck_assert_mem_eq(back->bitmap, cp->bitmap, sizeof(cp->bitmap));
    for (size_t i = 40 + 48 + 32; i < 40 + 48 + 32 + 8; i++) {
        memcpy(buf, orig, len);
        buf[i] ^= 0x01;
        put_file(dfd, "c", buf, len);
        ck_assert_msg(fb_checkpoint_read(back, dfd, "c") == FB_ERR_IO, "flipped byte %zu accepted", i);
    }

    /* Only the time; and time 0 is a time like any other. */
    cp->flags = FB_CHECKPOINT_FLAG_SOURCE_MTIME;
    cp->source_mtime_ns = 0;
    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", cp), FB_OK);
    ck_assert_uint_eq(file_size(dfd, "c"), 40 + 48 + 8 + 16 + 32);
    memset(back, 0x5a, sizeof(*back));
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);
    ck_assert_uint_eq(back->flags, FB_CHECKPOINT_FLAG_SOURCE_MTIME);
    ck_assert_uint_eq(back->source_mtime_ns, 0);
    ck_assert_uint_eq(back->expected_sha256[0], 0);

    /* Without the flag nothing is stored and it reads back as 0. */
    cp->flags = 0;
    cp->source_mtime_ns = 123;
    ck_assert_int_eq(fb_checkpoint_write(dfd, "c", cp), FB_OK);
    ck_assert_uint_eq(file_size(dfd, "c"), 40 + 48 + 16 + 32);
    memset(back, 0x5a, sizeof(*back));
    ck_assert_int_eq(fb_checkpoint_read(back, dfd, "c"), FB_OK);
    ck_assert_uint_eq(back->source_mtime_ns, 0);
    free(cp);
    free(back);
    close(dfd);
}
END_TEST

static Suite *checkpoint_suite(void)
{
    Suite *s = suite_create("fb_checkpoint");
    TCase *tc = tcase_create("checkpoint");

    tcase_add_unchecked_fixture(tc, top_setup, top_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_round_trip_keeps_every_field);
    tcase_add_test(tc, test_round_trip_empty_file_and_full_bitmap);
    tcase_add_test(tc, test_write_clears_bits_past_last_chunk_and_rejects_bad_input);
    tcase_add_test(tc, test_any_damaged_byte_is_io_error);
    tcase_add_test(tc, test_truncated_or_extended_file_is_io_error);
    tcase_add_test(tc, test_consistent_digest_but_invalid_fields_is_io_error);
    tcase_add_test(tc, test_expected_digest_round_trips_and_is_covered);
    tcase_add_test(tc, test_identity_round_trips_and_older_versions_are_refused);
    tcase_add_test(tc, test_source_mtime_round_trips);
    tcase_add_test(tc, test_missing_checkpoint_is_not_found);
    tcase_add_test(tc, test_relname_with_subdirectory);
    tcase_add_test(tc, test_names_outside_the_directory_refused);
    tcase_add_test(tc, test_stale_tmp_does_not_block_or_damage);
    tcase_add_test(tc, test_written_file_is_group_accessible);
    tcase_add_test(tc, test_planted_tmp_link_or_fifo_never_written_through);
    tcase_add_test(tc, test_concurrent_writers_never_leave_a_torn_checkpoint);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(checkpoint_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
