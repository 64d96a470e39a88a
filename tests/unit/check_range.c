/* Unit tests for fb_range: strict Content-Range parsing, chunk arithmetic at its edges, the
 * chunks a written range completes, and the missing ranges derived from a chunk bitmap. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fb_range.h"

#define CHUNK 1024u

/* Parses VALUE and checks the result (and, on success, the three numbers). */
static void expect_parse(const char *value, fb_err want, uint64_t first, uint64_t last, uint64_t complete)
{
    uint64_t f = 7, l = 7, c = 7;
    fb_err rv = fb_content_range_parse(&f, &l, &c, value);

    ck_assert_msg(rv == want, "\"%s\": got %s, want %s", value, fb_err_name(rv), fb_err_name(want));
    if (want == FB_OK) {
        ck_assert_uint_eq(f, first);
        ck_assert_uint_eq(l, last);
        ck_assert_uint_eq(c, complete);
    }
}

static void expect_bad(const char *value)
{
    expect_parse(value, FB_ERR_BAD_RANGE, 0, 0, 0);
}

START_TEST(test_decimal_parse_whole_string_only)
{
    uint64_t v = 7;

    ck_assert_int_eq(fb_decimal_parse(&v, "0"), 1);
    ck_assert_uint_eq(v, 0);
    ck_assert_int_eq(fb_decimal_parse(&v, "18446744073709551615"), 1);
    ck_assert_uint_eq(v, UINT64_MAX);
    ck_assert_int_eq(fb_decimal_parse(&v, "0012"), 1);
    ck_assert_uint_eq(v, 12);
    v = 7;
    ck_assert_int_eq(fb_decimal_parse(&v, "18446744073709551616"), 0);
    ck_assert_int_eq(fb_decimal_parse(&v, ""), 0);
    ck_assert_int_eq(fb_decimal_parse(&v, "+1"), 0);
    ck_assert_int_eq(fb_decimal_parse(&v, "1 "), 0);
    ck_assert_int_eq(fb_decimal_parse(&v, " 1"), 0);
    ck_assert_int_eq(fb_decimal_parse(&v, "1e3"), 0);
    ck_assert_int_eq(fb_decimal_parse(&v, NULL), 0);
    ck_assert_uint_eq(v, 7); /* untouched on failure */
}
END_TEST

START_TEST(test_content_range_valid_forms)
{
    expect_parse("bytes 0-0/1", FB_OK, 0, 0, 1);
    expect_parse("bytes 0-99/100", FB_OK, 0, 99, 100);
    expect_parse("bytes 100-199/1000", FB_OK, 100, 199, 1000);
    expect_parse("bytes 5-5/6", FB_OK, 5, 5, 6);
    expect_parse("bytes 0-18446744073709551613/18446744073709551614", FB_OK, 0, UINT64_MAX - 2,
                 UINT64_MAX - 1);
    expect_parse("bytes 0-18446744073709551614/18446744073709551615", FB_OK, 0, UINT64_MAX - 1, UINT64_MAX);
    expect_parse("bytes 1234567890123456789-1234567890123456789/9999999999999999999", FB_OK,
                 1234567890123456789u, 1234567890123456789u, 9999999999999999999u);
}
END_TEST

START_TEST(test_content_range_leading_zeros_accepted)
{
    expect_parse("bytes 00-01/02", FB_OK, 0, 1, 2);
    expect_parse("bytes 0000000000000000000000000010-0000000000000000000000000020/00000000000000000000000030",
                 FB_OK, 10, 20, 30);
}
END_TEST

START_TEST(test_content_range_overflow_rejected)
{
    expect_bad("bytes 0-1/18446744073709551616");
    expect_bad("bytes 18446744073709551616-18446744073709551617/18446744073709551618");
    expect_bad("bytes 0-18446744073709551616/18446744073709551615");
    expect_bad("bytes 0-1/99999999999999999999999");
    /* UINT64_MAX itself is representable, but LAST must then be below it. */
    expect_parse("bytes 0-18446744073709551615/18446744073709551615", FB_ERR_RANGE_NOT_SATISFIABLE, 0, 0, 0);
}
END_TEST

START_TEST(test_content_range_spaces_rejected)
{
    expect_bad("bytes  0-1/2");
    expect_bad(" bytes 0-1/2");
    expect_bad("bytes 0-1/2 ");
    expect_bad("bytes 0 -1/2");
    expect_bad("bytes 0- 1/2");
    expect_bad("bytes 0-1 /2");
    expect_bad("bytes 0-1/ 2");
    expect_bad("bytes\t0-1/2");
    expect_bad("bytes0-1/2");
    expect_bad("bytes 0-1/2\n");
}
END_TEST

START_TEST(test_content_range_unit_must_be_lower_case_bytes)
{
    expect_bad("0-1/2");
    expect_bad("Bytes 0-1/2");
    expect_bad("BYTES 0-1/2");
    expect_bad("byte 0-1/2");
    expect_bad("items 0-1/2");
    expect_bad("bytes=0-1/2");
    expect_bad("");
    expect_bad("bytes ");
    expect_parse(NULL, FB_ERR_BAD_RANGE, 0, 0, 0);
}
END_TEST

START_TEST(test_content_range_signs_and_junk_rejected)
{
    expect_bad("bytes +0-1/2");
    expect_bad("bytes 0-+1/2");
    expect_bad("bytes 0-1/+2");
    expect_bad("bytes -0-1/2");
    expect_bad("bytes 0--1/2");
    expect_bad("bytes 0-1/-2");
    expect_bad("bytes 0x0-1/2");
    expect_bad("bytes 0-1/2x");
    expect_bad("bytes 0-1/2/3");
    expect_bad("bytes 0-1-2/3");
    expect_bad("bytes 0,1/2");
    expect_bad("bytes 0-1,3-4/10");
    expect_bad("bytes 0-/2");
    expect_bad("bytes -1/2");
    expect_bad("bytes 0-1/");
    expect_bad("bytes 0-1");
    expect_bad("bytes 1.0-2/3");
}
END_TEST

START_TEST(test_content_range_star_forms_rejected)
{
    expect_bad("bytes */100");
    expect_bad("bytes 0-1/*");
    expect_bad("bytes */*");
}
END_TEST

START_TEST(test_content_range_inverted_is_bad_range)
{
    expect_bad("bytes 2-1/10");
    expect_bad("bytes 10-0/100");
    /* Inverted and also beyond the file: the syntax problem wins. */
    expect_bad("bytes 20-10/5");
}
END_TEST

START_TEST(test_content_range_beyond_complete_is_not_satisfiable)
{
    expect_parse("bytes 0-10/10", FB_ERR_RANGE_NOT_SATISFIABLE, 0, 0, 0);
    expect_parse("bytes 0-11/10", FB_ERR_RANGE_NOT_SATISFIABLE, 0, 0, 0);
    expect_parse("bytes 10-10/10", FB_ERR_RANGE_NOT_SATISFIABLE, 0, 0, 0);
    expect_parse("bytes 0-0/0", FB_ERR_RANGE_NOT_SATISFIABLE, 0, 0, 0);
    expect_parse("bytes 9-9/10", FB_OK, 9, 9, 10);
}
END_TEST

START_TEST(test_content_range_failure_leaves_outputs_alone)
{
    uint64_t f = 11, l = 22, c = 33;

    ck_assert_int_eq(fb_content_range_parse(&f, &l, &c, "bytes 0-10/10"), FB_ERR_RANGE_NOT_SATISFIABLE);
    ck_assert_uint_eq(f, 11);
    ck_assert_uint_eq(l, 22);
    ck_assert_uint_eq(c, 33);
}
END_TEST

START_TEST(test_chunk_count_edges)
{
    ck_assert_uint_eq(fb_chunk_count(0, CHUNK), 0);
    ck_assert_uint_eq(fb_chunk_count(1, CHUNK), 1);
    ck_assert_uint_eq(fb_chunk_count(CHUNK - 1, CHUNK), 1);
    ck_assert_uint_eq(fb_chunk_count(CHUNK, CHUNK), 1);
    ck_assert_uint_eq(fb_chunk_count(CHUNK + 1, CHUNK), 2);
    ck_assert_uint_eq(fb_chunk_count(2 * CHUNK, CHUNK), 2);
    ck_assert_uint_eq(fb_chunk_count(UINT64_MAX, 1), UINT64_MAX);
    /* 2^64 - 1 = (2^32 - 1)(2^32 + 1): exactly 2^32 + 1 full chunks, no extra one. */
    ck_assert_uint_eq(fb_chunk_count(UINT64_MAX, UINT32_MAX), 4294967297u);
    ck_assert_uint_eq(fb_chunk_count(UINT64_MAX, 1u << 31), (uint64_t)1 << 33);
    ck_assert_uint_eq(fb_chunk_count(10, 0), 0);
}
END_TEST

START_TEST(test_chunk_range_edges)
{
    fb_range r;

    r = fb_chunk_range(1, CHUNK, 0);
    ck_assert_uint_eq(r.offset, 0);
    ck_assert_uint_eq(r.length, 1);
    r = fb_chunk_range(CHUNK - 1, CHUNK, 0);
    ck_assert_uint_eq(r.length, CHUNK - 1);
    r = fb_chunk_range(CHUNK, CHUNK, 0);
    ck_assert_uint_eq(r.offset, 0);
    ck_assert_uint_eq(r.length, CHUNK);
    r = fb_chunk_range(CHUNK + 1, CHUNK, 0);
    ck_assert_uint_eq(r.length, CHUNK);
    r = fb_chunk_range(CHUNK + 1, CHUNK, 1);
    ck_assert_uint_eq(r.offset, CHUNK);
    ck_assert_uint_eq(r.length, 1);
    /* Past the last chunk, and any chunk of an empty file: empty range at the end. */
    r = fb_chunk_range(CHUNK + 1, CHUNK, 2);
    ck_assert_uint_eq(r.length, 0);
    r = fb_chunk_range(0, CHUNK, 0);
    ck_assert_uint_eq(r.length, 0);
    r = fb_chunk_range(CHUNK, CHUNK, UINT64_MAX);
    ck_assert_uint_eq(r.length, 0);
    /* The last chunk of the largest file does not overflow. */
    r = fb_chunk_range(UINT64_MAX, 1u << 31, ((uint64_t)1 << 33) - 1);
    ck_assert_uint_eq(r.offset, UINT64_MAX - ((1u << 31) - 1));
    ck_assert_uint_eq(r.length, (1u << 31) - 1);
    r = fb_chunk_range(UINT64_MAX, 1u << 31, (uint64_t)1 << 33);
    ck_assert_uint_eq(r.length, 0);
}
END_TEST

static void expect_covered(uint64_t size, uint64_t offset, uint64_t length, uint64_t first, uint64_t last)
{
    uint64_t f = 99, l = 99;

    fb_chunks_covered(&f, &l, size, CHUNK, offset, length);
    if (first == last) {
        ck_assert_msg(f >= l, "size %llu [%llu,+%llu): expected no chunk, got %llu..%llu",
                      (unsigned long long)size, (unsigned long long)offset, (unsigned long long)length,
                      (unsigned long long)f, (unsigned long long)l);
        return;
    }
    ck_assert_msg(f == first && l == last, "size %llu [%llu,+%llu): got %llu..%llu, want %llu..%llu",
                  (unsigned long long)size, (unsigned long long)offset, (unsigned long long)length,
                  (unsigned long long)f, (unsigned long long)l, (unsigned long long)first,
                  (unsigned long long)last);
}

START_TEST(test_covered_whole_chunks_only)
{
    uint64_t size = 10 * CHUNK;

    expect_covered(size, 0, CHUNK, 0, 1);
    expect_covered(size, 0, CHUNK - 1, 0, 0);
    expect_covered(size, 1, CHUNK, 0, 0);
    expect_covered(size, 1, 2 * CHUNK, 1, 2);
    expect_covered(size, CHUNK - 1, 2 * CHUNK + 2, 1, 3);
    expect_covered(size, 3 * CHUNK, 4 * CHUNK, 3, 7);
    expect_covered(size, 0, size, 0, 10);
    expect_covered(size, 5, 0, 0, 0);
}
END_TEST

START_TEST(test_covered_short_final_chunk_counts_when_reaching_size)
{
    uint64_t size = 3 * CHUNK + 10;

    expect_covered(size, 3 * CHUNK, 10, 3, 4);
    expect_covered(size, 3 * CHUNK, 9, 0, 0);
    expect_covered(size, 2 * CHUNK, CHUNK + 10, 2, 4);
    expect_covered(size, 2 * CHUNK + 1, CHUNK + 9, 3, 4);
    expect_covered(size, 0, size, 0, 4);
    /* A file smaller than one chunk has a single short chunk. */
    expect_covered(1, 0, 1, 0, 1);
    expect_covered(CHUNK - 1, 0, CHUNK - 1, 0, 1);
    expect_covered(CHUNK - 1, 1, CHUNK - 2, 0, 0);
}
END_TEST

START_TEST(test_covered_out_of_file_and_overflow)
{
    expect_covered(0, 0, 10, 0, 0);
    expect_covered(CHUNK, CHUNK, CHUNK, 0, 0);
    expect_covered(CHUNK, 5 * CHUNK, CHUNK, 0, 0);
    /* offset + length wraps around: treated as reaching the end of the file. */
    expect_covered(4 * CHUNK, 2 * CHUNK, UINT64_MAX, 2, 4);
    /* The last (short) chunk of the largest file starts at (UINT64_MAX / CHUNK) * CHUNK. */
    expect_covered(UINT64_MAX, (UINT64_MAX / CHUNK) * CHUNK, UINT64_MAX, UINT64_MAX / CHUNK,
                   UINT64_MAX / CHUNK + 1);
    expect_covered(UINT64_MAX, UINT64_MAX - 1, UINT64_MAX, 0, 0);
}
END_TEST

START_TEST(test_bitmap_get_set_count)
{
    uint64_t words[3] = {0, 0, 0};

    fb_bitmap_set(words, 0);
    fb_bitmap_set(words, 63);
    fb_bitmap_set(words, 64);
    fb_bitmap_set(words, 130);
    fb_bitmap_set(words, 130);
    ck_assert_int_eq(fb_bitmap_get(words, 0), 1);
    ck_assert_int_eq(fb_bitmap_get(words, 1), 0);
    ck_assert_int_eq(fb_bitmap_get(words, 63), 1);
    ck_assert_int_eq(fb_bitmap_get(words, 64), 1);
    ck_assert_int_eq(fb_bitmap_get(words, 129), 0);
    ck_assert_int_eq(fb_bitmap_get(words, 130), 1);
    ck_assert_uint_eq(fb_bitmap_count(words, 192), 4);
    ck_assert_uint_eq(fb_bitmap_count(words, 131), 4);
    ck_assert_uint_eq(fb_bitmap_count(words, 130), 3);
    ck_assert_uint_eq(fb_bitmap_count(words, 64), 2);
    ck_assert_uint_eq(fb_bitmap_count(words, 63), 1);
    ck_assert_uint_eq(fb_bitmap_count(words, 0), 0);
}
END_TEST

START_TEST(test_bitmap_count_ignores_bits_past_nbits)
{
    uint64_t words[2] = {UINT64_MAX, UINT64_MAX};

    ck_assert_uint_eq(fb_bitmap_count(words, 70), 70);
    ck_assert_uint_eq(fb_bitmap_count(words, 1), 1);
}
END_TEST

START_TEST(test_missing_all_missing_is_one_range)
{
    uint64_t words[2] = {0, 0};
    fb_range out[4];
    uint64_t bytes = 0;
    uint64_t size = 100 * CHUNK + 7;

    ck_assert_uint_eq(fb_bitmap_missing(out, 4, &bytes, words, size, CHUNK), 1);
    ck_assert_uint_eq(out[0].offset, 0);
    ck_assert_uint_eq(out[0].length, size);
    ck_assert_uint_eq(bytes, size);
}
END_TEST

START_TEST(test_missing_none_missing_is_no_range)
{
    uint64_t words[2] = {UINT64_MAX, (1u << 5) - 1};
    fb_range out[4];
    uint64_t bytes = 42;

    /* 69 chunks, all set; bits past the last chunk are zero and must not count as missing. */
    ck_assert_uint_eq(fb_bitmap_missing(out, 4, &bytes, words, 69 * CHUNK, CHUNK), 0);
    ck_assert_uint_eq(bytes, 0);
    ck_assert_uint_eq(fb_bitmap_missing(out, 4, &bytes, words, 68 * CHUNK + 1, CHUNK), 0);
}
END_TEST

START_TEST(test_missing_size_zero_is_no_range)
{
    uint64_t words[1] = {0};
    fb_range out[1];
    uint64_t bytes = 42;

    ck_assert_uint_eq(fb_bitmap_missing(out, 1, &bytes, words, 0, CHUNK), 0);
    ck_assert_uint_eq(bytes, 0);
}
END_TEST

START_TEST(test_missing_alternating_chunks_are_separate_ranges)
{
    uint64_t words[2] = {0x5555555555555555u, 0x5555555555555555u};
    fb_range out[64];
    uint64_t bytes = 0;

    /* 128 chunks; even ones present, odd ones missing. */
    ck_assert_uint_eq(fb_bitmap_missing(out, 64, &bytes, words, 128 * CHUNK, CHUNK), 64);
    for (unsigned i = 0; i < 64; i++) {
        ck_assert_uint_eq(out[i].offset, (2 * i + 1) * (uint64_t)CHUNK);
        ck_assert_uint_eq(out[i].length, CHUNK);
    }
    ck_assert_uint_eq(bytes, 64 * CHUNK);
}
END_TEST

START_TEST(test_missing_adjacent_chunks_merge_across_words)
{
    uint64_t words[3] = {0, 0, 0};
    fb_range out[4];
    uint64_t bytes = 0;

    /* 150 chunks: present 0..9 and 140..149; missing 10..139 crosses two word boundaries. */
    for (unsigned i = 0; i < 10; i++)
        fb_bitmap_set(words, i);
    for (unsigned i = 140; i < 150; i++)
        fb_bitmap_set(words, i);
    ck_assert_uint_eq(fb_bitmap_missing(out, 4, &bytes, words, 150 * CHUNK, CHUNK), 1);
    ck_assert_uint_eq(out[0].offset, 10 * CHUNK);
    ck_assert_uint_eq(out[0].length, 130 * CHUNK);
    ck_assert_uint_eq(bytes, 130 * CHUNK);
}
END_TEST

START_TEST(test_missing_last_short_chunk)
{
    uint64_t words[1] = {0};
    fb_range out[4];
    uint64_t bytes = 0;
    uint64_t size = 3 * CHUNK + 5;

    fb_bitmap_set(words, 0);
    fb_bitmap_set(words, 1);
    fb_bitmap_set(words, 2);
    ck_assert_uint_eq(fb_bitmap_missing(out, 4, &bytes, words, size, CHUNK), 1);
    ck_assert_uint_eq(out[0].offset, 3 * CHUNK);
    ck_assert_uint_eq(out[0].length, 5);
    ck_assert_uint_eq(bytes, 5);

    /* Missing middle and short last chunk: two ranges, the second short. */
    words[0] = 0;
    fb_bitmap_set(words, 0);
    fb_bitmap_set(words, 2);
    ck_assert_uint_eq(fb_bitmap_missing(out, 4, &bytes, words, size, CHUNK), 2);
    ck_assert_uint_eq(out[0].offset, CHUNK);
    ck_assert_uint_eq(out[0].length, CHUNK);
    ck_assert_uint_eq(out[1].offset, 3 * CHUNK);
    ck_assert_uint_eq(out[1].length, 5);
    ck_assert_uint_eq(bytes, CHUNK + 5);

    /* A file shorter than one chunk. */
    words[0] = 0;
    ck_assert_uint_eq(fb_bitmap_missing(out, 4, &bytes, words, 1, CHUNK), 1);
    ck_assert_uint_eq(out[0].offset, 0);
    ck_assert_uint_eq(out[0].length, 1);
}
END_TEST

START_TEST(test_missing_more_ranges_than_capacity)
{
    uint64_t words[1] = {0x5555555555555555u};
    fb_range out[4];
    uint64_t bytes = 0;

    /* Sentinel after the capacity we pass must survive. */
    memset(out, 0xab, sizeof(out));
    ck_assert_uint_eq(fb_bitmap_missing(out, 3, &bytes, words, 64 * CHUNK, CHUNK), 32);
    ck_assert_uint_eq(out[2].offset, 5 * CHUNK);
    ck_assert_uint_eq(out[3].offset, 0xababababababababu);
    ck_assert_uint_eq(bytes, 32 * CHUNK);
    /* Capacity 0 (OUT may then be NULL) just counts; NULL byte total is allowed. */
    ck_assert_uint_eq(fb_bitmap_missing(NULL, 0, NULL, words, 64 * CHUNK, CHUNK), 32);
    /* Exactly at capacity. */
    ck_assert_uint_eq(fb_bitmap_missing(out, 4, NULL, words, 8 * CHUNK, CHUNK), 4);
    ck_assert_uint_eq(out[3].offset, 7 * CHUNK);
    ck_assert_uint_eq(out[3].length, CHUNK);
}
END_TEST

/* Deterministic pseudo-random numbers for the cross-checks (xorshift64). */
static uint64_t next_rand(uint64_t *state)
{
    uint64_t x = *state;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return x;
}

START_TEST(test_missing_matches_chunk_by_chunk_reference)
{
    uint64_t state = 0x9e3779b97f4a7c15u;

    for (int round = 0; round < 500; round++) {
        uint64_t words[4] = {0, 0, 0, 0};
        fb_range out[256];
        uint32_t chunk = 1 + (uint32_t)(next_rand(&state) % 100);
        uint64_t size = next_rand(&state) % (256 * (uint64_t)chunk + 1);
        uint64_t n = fb_chunk_count(size, chunk);
        uint64_t bytes = 0, ref_bytes = 0, covered = 0, missing_chunks = 0;
        size_t nr;

        /* Vary the density so long runs and single gaps both appear. */
        for (uint64_t i = 0; i < n; i++)
            if (next_rand(&state) % 8 < (uint64_t)(round % 9))
                fb_bitmap_set(words, i);
        nr = fb_bitmap_missing(out, 256, &bytes, words, size, chunk);
        ck_assert_uint_le(nr, 256);
        for (uint64_t i = 0; i < n; i++)
            if (!fb_bitmap_get(words, i))
                ref_bytes += fb_chunk_range(size, chunk, i).length;
        ck_assert_uint_eq(bytes, ref_bytes);
        /* Ranges are sorted, disjoint, not adjacent (merged), chunk-aligned and all missing. */
        for (size_t r = 0; r < nr; r++) {
            ck_assert_uint_gt(out[r].length, 0);
            ck_assert_uint_eq(out[r].offset % chunk, 0);
            ck_assert_uint_le(out[r].offset + out[r].length, size);
            ck_assert(out[r].offset + out[r].length == size || (out[r].offset + out[r].length) % chunk == 0);
            if (r > 0)
                ck_assert_uint_gt(out[r].offset, out[r - 1].offset + out[r - 1].length);
            for (uint64_t c = out[r].offset / chunk; c * chunk < out[r].offset + out[r].length; c++)
                ck_assert_int_eq(fb_bitmap_get(words, c), 0);
            covered += out[r].length;
            missing_chunks += (out[r].length + chunk - 1) / chunk;
        }
        ck_assert_uint_eq(covered, ref_bytes);
        ck_assert_uint_eq(missing_chunks, n - fb_bitmap_count(words, n));
    }
}
END_TEST

START_TEST(test_covered_matches_byte_by_byte_reference)
{
    uint64_t state = 0x2545f4914f6cdd1du;

    for (int round = 0; round < 2000; round++) {
        uint32_t chunk = 1 + (uint32_t)(next_rand(&state) % 16);
        uint64_t size = next_rand(&state) % 100;
        uint64_t offset = next_rand(&state) % 110;
        uint64_t length = next_rand(&state) % 110;
        uint64_t f, l, rf = 0, rl = 0;
        int found = 0;

        fb_chunks_covered(&f, &l, size, chunk, offset, length);
        /* Reference: a chunk is covered when every one of its bytes lies in the range. */
        for (uint64_t c = 0; c < fb_chunk_count(size, chunk); c++) {
            fb_range cr = fb_chunk_range(size, chunk, c);
            int in = cr.offset >= offset && cr.offset + cr.length <= offset + length;

            if (in && !found) {
                rf = c;
                found = 1;
            }
            if (in)
                rl = c + 1;
        }
        if (!found) {
            ck_assert_msg(f >= l, "size %d chunk %d [%d,+%d)", (int)size, (int)chunk, (int)offset,
                          (int)length);
        } else {
            ck_assert_uint_eq(f, rf);
            ck_assert_uint_eq(l, rl);
        }
    }
}
END_TEST

static Suite *range_suite(void)
{
    Suite *s = suite_create("fb_range");
    TCase *parse = tcase_create("content_range");
    TCase *chunks = tcase_create("chunks");
    TCase *bitmap = tcase_create("bitmap");

    tcase_add_test(parse, test_content_range_valid_forms);
    tcase_add_test(parse, test_content_range_leading_zeros_accepted);
    tcase_add_test(parse, test_content_range_overflow_rejected);
    tcase_add_test(parse, test_content_range_spaces_rejected);
    tcase_add_test(parse, test_content_range_unit_must_be_lower_case_bytes);
    tcase_add_test(parse, test_content_range_signs_and_junk_rejected);
    tcase_add_test(parse, test_content_range_star_forms_rejected);
    tcase_add_test(parse, test_content_range_inverted_is_bad_range);
    tcase_add_test(parse, test_content_range_beyond_complete_is_not_satisfiable);
    tcase_add_test(parse, test_content_range_failure_leaves_outputs_alone);
    suite_add_tcase(s, parse);

    tcase_add_test(chunks, test_chunk_count_edges);
    tcase_add_test(chunks, test_chunk_range_edges);
    tcase_add_test(chunks, test_covered_whole_chunks_only);
    tcase_add_test(chunks, test_covered_short_final_chunk_counts_when_reaching_size);
    tcase_add_test(chunks, test_covered_out_of_file_and_overflow);
    tcase_add_test(chunks, test_covered_matches_byte_by_byte_reference);
    suite_add_tcase(s, chunks);

    tcase_add_test(bitmap, test_bitmap_get_set_count);
    tcase_add_test(bitmap, test_bitmap_count_ignores_bits_past_nbits);
    tcase_add_test(bitmap, test_missing_all_missing_is_one_range);
    tcase_add_test(bitmap, test_missing_none_missing_is_no_range);
    tcase_add_test(bitmap, test_missing_size_zero_is_no_range);
    tcase_add_test(bitmap, test_missing_alternating_chunks_are_separate_ranges);
    tcase_add_test(bitmap, test_missing_adjacent_chunks_merge_across_words);
    tcase_add_test(bitmap, test_missing_last_short_chunk);
    tcase_add_test(bitmap, test_missing_more_ranges_than_capacity);
    tcase_add_test(bitmap, test_missing_matches_chunk_by_chunk_reference);
    tcase_add_test(bitmap, test_decimal_parse_whole_string_only);
    suite_add_tcase(s, bitmap);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(range_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
