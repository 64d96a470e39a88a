/* check_fbcp: unit tests of fbcp's pure parts: URL splitting into base and remote path, path
 * escaping and joining, range lists, number and Content-Range parsing, and the download
 * sidecar's atomic write and validated read (fbcp_util.c); the transport choice between UDP and
 * HTTP(S) in virtual time (fbcp_switch.c). */
#include "fbcp.h"

#include <check.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

static char errbuf[256];

START_TEST(url_default_location_is_first_segment)
{
    fbcp_url u;
    ck_assert_int_eq(
        fbcp_url_parse(&u, "https://example.org:8443/fallback/dir/file.bin", NULL, errbuf, sizeof(errbuf)),
        FB_OK);
    ck_assert_str_eq(u.base, "https://example.org:8443/fallback");
    ck_assert_str_eq(u.path, "dir/file.bin");
    ck_assert_str_eq(u.host, "example.org");
    ck_assert_int_eq(u.port, 8443);
    ck_assert_int_eq(u.trailing_slash, 0);
    fbcp_url_free(&u);
}
END_TEST

START_TEST(url_default_port_and_trailing_slash)
{
    fbcp_url u;
    ck_assert_int_eq(fbcp_url_parse(&u, "http://h/fallback/dir/", NULL, errbuf, sizeof(errbuf)), FB_OK);
    ck_assert_str_eq(u.base, "http://h:80/fallback");
    ck_assert_str_eq(u.path, "dir");
    ck_assert_int_eq(u.trailing_slash, 1);
    fbcp_url_free(&u);
    ck_assert_int_eq(fbcp_url_parse(&u, "https://h/fallback", NULL, errbuf, sizeof(errbuf)), FB_OK);
    ck_assert_str_eq(u.base, "https://h:443/fallback");
    ck_assert_str_eq(u.path, "");
    fbcp_url_free(&u);
}
END_TEST

START_TEST(url_location_option_spans_segments)
{
    fbcp_url u;
    ck_assert_int_eq(fbcp_url_parse(&u, "https://h:1/a/b/c/d.txt", "/a/b", errbuf, sizeof(errbuf)), FB_OK);
    ck_assert_str_eq(u.base, "https://h:1/a/b");
    ck_assert_str_eq(u.path, "c/d.txt");
    fbcp_url_free(&u);
    ck_assert_int_eq(fbcp_url_parse(&u, "https://h:1/a/b/c", "a/b/", errbuf, sizeof(errbuf)), FB_OK);
    ck_assert_str_eq(u.path, "c");
    fbcp_url_free(&u);
    /* a prefix that is not a whole segment does not match */
    ck_assert_int_eq(fbcp_url_parse(&u, "https://h:1/a/bc/d", "/a/b", errbuf, sizeof(errbuf)), FB_ERR_USAGE);
}
END_TEST

START_TEST(url_path_is_decoded)
{
    fbcp_url u;
    ck_assert_int_eq(fbcp_url_parse(&u, "https://h/fallback/my%20dir/x%2By", NULL, errbuf, sizeof(errbuf)),
                     FB_OK);
    ck_assert_str_eq(u.path, "my dir/x+y");
    fbcp_url_free(&u);
}
END_TEST

START_TEST(url_bad_inputs_are_refused)
{
    fbcp_url u;
    ck_assert_int_eq(fbcp_url_parse(&u, "ftp://h/fallback/x", NULL, errbuf, sizeof(errbuf)), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_url_parse(&u, "https://h/", NULL, errbuf, sizeof(errbuf)), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_url_parse(&u, "https://h/fallback/x?y=1", NULL, errbuf, sizeof(errbuf)),
                     FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_url_parse(&u, "https://h/fallback/../etc", NULL, errbuf, sizeof(errbuf)),
                     FB_ERR_PATH_ESCAPE);
    ck_assert_int_eq(fbcp_url_parse(&u, "https://h/fallback/a//b", NULL, errbuf, sizeof(errbuf)),
                     FB_ERR_BAD_PATH);
    ck_assert_int_eq(fbcp_url_parse(&u, "https://h/fallback/a%2Fb", NULL, errbuf, sizeof(errbuf)),
                     FB_ERR_BAD_PATH);
    ck_assert_int_eq(fbcp_url_parse(&u, "https://h/fallback/a%00b", NULL, errbuf, sizeof(errbuf)),
                     FB_ERR_BAD_PATH);
}
END_TEST

START_TEST(url_user_info_is_taken)
{
    fbcp_url u;
    ck_assert_int_eq(fbcp_url_parse(&u, "https://al%40x:s%3Acret@h/fallback/f", NULL, errbuf, sizeof(errbuf)),
                     FB_OK);
    ck_assert_str_eq(u.user, "al@x");
    ck_assert_str_eq(u.password, "s:cret");
    /* the base used for requests and messages carries no credentials */
    ck_assert_ptr_null(strstr(u.base, "cret"));
    fbcp_url_free(&u);
}
END_TEST

START_TEST(is_url_by_scheme)
{
    ck_assert(fbcp_is_url("https://x"));
    ck_assert(fbcp_is_url("HTTP://x"));
    ck_assert(!fbcp_is_url("/tmp/https://x"));
    ck_assert(!fbcp_is_url("file.bin"));
}
END_TEST

START_TEST(path_escape_per_segment)
{
    char *e = fbcp_path_escape("a b/c%d/\xc3\xa9");
    ck_assert_str_eq(e, "a%20b/c%25d/%C3%A9");
    free(e);
    e = fbcp_path_escape("");
    ck_assert_str_eq(e, "");
    free(e);
}
END_TEST

START_TEST(path_join_and_basename)
{
    char *p;
    p = fbcp_path_join("", "a");
    ck_assert_str_eq(p, "a");
    free(p);
    p = fbcp_path_join("d/", "a");
    ck_assert_str_eq(p, "d/a");
    free(p);
    p = fbcp_path_join("d", "");
    ck_assert_str_eq(p, "d");
    free(p);
    p = fbcp_path_join("/", "a");
    ck_assert_str_eq(p, "/a");
    free(p);
    p = fbcp_basename("x/y/z.bin");
    ck_assert_str_eq(p, "z.bin");
    free(p);
    p = fbcp_basename("x/y/");
    ck_assert_str_eq(p, "y");
    free(p);
    p = fbcp_basename("");
    ck_assert_str_eq(p, "");
    free(p);
}
END_TEST

START_TEST(listing_names_must_be_one_component)
{
    ck_assert(fbcp_name_is_safe("a.bin"));
    ck_assert(!fbcp_name_is_safe(".."));
    ck_assert(!fbcp_name_is_safe("."));
    ck_assert(!fbcp_name_is_safe(""));
    ck_assert(!fbcp_name_is_safe("a/b"));
    ck_assert(!fbcp_name_is_safe("a\nb"));
    ck_assert(!fbcp_name_is_safe(NULL));
}
END_TEST

START_TEST(ranges_merge_on_add)
{
    fbcp_ranges r;
    fbcp_ranges_init(&r);
    ck_assert_int_eq(fbcp_ranges_add(&r, 10, 10), FB_OK);
    ck_assert_int_eq(fbcp_ranges_add(&r, 40, 10), FB_OK);
    ck_assert_int_eq(fbcp_ranges_add(&r, 0, 5), FB_OK);
    ck_assert_uint_eq(r.n, 3);
    ck_assert_uint_eq(r.v[0].offset, 0);
    ck_assert_uint_eq(r.v[1].offset, 10);
    /* adjacent to [10,20) and overlapping [40,50): all three merge */
    ck_assert_int_eq(fbcp_ranges_add(&r, 20, 25), FB_OK);
    ck_assert_uint_eq(r.n, 2);
    ck_assert_uint_eq(r.v[1].offset, 10);
    ck_assert_uint_eq(r.v[1].length, 40);
    ck_assert_uint_eq(fbcp_ranges_total(&r), 45);
    ck_assert_int_eq(fbcp_ranges_add(&r, 5, 5), FB_OK);
    ck_assert_uint_eq(r.n, 1);
    ck_assert_uint_eq(r.v[0].length, 50);
    ck_assert_int_eq(fbcp_ranges_add(&r, UINT64_MAX, 2), FB_ERR_BAD_RANGE);
    fbcp_ranges_free(&r);
}
END_TEST

START_TEST(ranges_intersect_and_complement)
{
    fbcp_ranges r, out;
    fbcp_ranges_init(&r);
    fbcp_ranges_init(&out);
    fbcp_ranges_add(&r, 0, 10);
    fbcp_ranges_add(&r, 20, 10);
    ck_assert_int_eq(fbcp_ranges_intersect(&out, &r, 5, 20), FB_OK);
    ck_assert_uint_eq(out.n, 2);
    ck_assert_uint_eq(out.v[0].offset, 5);
    ck_assert_uint_eq(out.v[0].length, 5);
    ck_assert_uint_eq(out.v[1].offset, 20);
    ck_assert_uint_eq(out.v[1].length, 5);
    ck_assert_int_eq(fbcp_ranges_complement(&out, &r, 35), FB_OK);
    ck_assert_uint_eq(out.n, 2);
    ck_assert_uint_eq(out.v[0].offset, 10);
    ck_assert_uint_eq(out.v[0].length, 10);
    ck_assert_uint_eq(out.v[1].offset, 30);
    ck_assert_uint_eq(out.v[1].length, 5);
    fbcp_ranges_clear(&r);
    ck_assert_int_eq(fbcp_ranges_complement(&out, &r, 0), FB_OK);
    ck_assert_uint_eq(out.n, 0);
    fbcp_ranges_free(&r);
    fbcp_ranges_free(&out);
}
END_TEST

START_TEST(ranges_covers_only_whole_spans)
{
    fbcp_ranges r;

    fbcp_ranges_init(&r);
    ck_assert(!fbcp_ranges_covers(&r, 0, 1));
    fbcp_ranges_add(&r, 10, 10); /* [10, 20) */
    fbcp_ranges_add(&r, 30, 5);  /* [30, 35) */
    fbcp_ranges_add(&r, 100, 50); /* [100, 150) */
    ck_assert(fbcp_ranges_covers(&r, 10, 10));
    ck_assert(fbcp_ranges_covers(&r, 12, 3));
    ck_assert(fbcp_ranges_covers(&r, 30, 5));
    ck_assert(fbcp_ranges_covers(&r, 100, 50));
    ck_assert(fbcp_ranges_covers(&r, 149, 1));
    ck_assert(!fbcp_ranges_covers(&r, 9, 2));   /* starts before */
    ck_assert(!fbcp_ranges_covers(&r, 15, 10)); /* runs past, across a gap */
    ck_assert(!fbcp_ranges_covers(&r, 20, 1));  /* the gap */
    ck_assert(!fbcp_ranges_covers(&r, 0, 5));
    ck_assert(!fbcp_ranges_covers(&r, 150, 1));
    ck_assert(!fbcp_ranges_covers(&r, 12, 0)); /* nothing is not covered */
    ck_assert(!fbcp_ranges_covers(&r, UINT64_MAX, 2));
    fbcp_ranges_free(&r);
}
END_TEST

START_TEST(ranges_split_stays_chunk_aligned)
{
    fbcp_ranges r, out;
    fbcp_ranges_init(&r);
    fbcp_ranges_init(&out);
    fbcp_ranges_add(&r, 0, 10 * 1024 + 7);
    /* 2500 rounds down to 2048 with 1 KiB chunks */
    ck_assert_int_eq(fbcp_ranges_split(&out, &r, 2500, 1024), FB_OK);
    ck_assert_uint_eq(out.n, 6);
    for (size_t i = 0; i < out.n; i++)
        ck_assert_uint_eq(out.v[i].offset % 1024, 0);
    ck_assert_uint_eq(out.v[4].length, 2048);
    ck_assert_uint_eq(out.v[5].length, 7);
    /* a request size below the chunk still moves one chunk per request */
    ck_assert_int_eq(fbcp_ranges_split(&out, &r, 100, 1024), FB_OK);
    ck_assert_uint_eq(out.n, 11);
    fbcp_ranges_free(&r);
    fbcp_ranges_free(&out);
}
END_TEST

START_TEST(request_share_shrinks_towards_the_end)
{
    const uint32_t mib = 1024 * 1024;
    uint64_t left = 128ull * mib, biggest_last = 0;
    int requests = 0;

    /* plenty left: a connection takes the whole queued request */
    ck_assert_uint_eq(fbcp_request_share(16ull * mib, 128ull * mib, 4, mib), 16ull * mib);
    /* 24 MiB left for 4 connections: 6 MiB each */
    ck_assert_uint_eq(fbcp_request_share(16ull * mib, 24ull * mib, 4, mib), 6ull * mib);
    /* never below the tail minimum, rounded to the chunk */
    ck_assert_uint_eq(fbcp_request_share(16ull * mib, 5ull * mib, 4, mib), FBCP_TAIL_REQUEST_MIN);
    ck_assert_uint_eq(fbcp_request_share(16ull * mib, 16ull * mib, 4, 3 * mib), 3ull * mib);
    /* at least one chunk, even when the chunk is larger than the minimum */
    ck_assert_uint_eq(fbcp_request_share(64ull * mib, 64ull * mib, 4, 8 * mib), 16ull * mib);
    ck_assert_uint_eq(fbcp_request_share(64ull * mib, 9ull * mib, 4, 8 * mib), 8ull * mib);
    /* never more than the request, one connection takes all that is left of it */
    ck_assert_uint_eq(fbcp_request_share(1000, 1000, 4, mib), 1000);
    ck_assert_uint_eq(fbcp_request_share(16ull * mib, 20ull * mib, 1, mib), 16ull * mib);
    ck_assert_uint_eq(fbcp_request_share(16ull * mib, 20ull * mib, 4, 0), 5ull * mib);
    /* a 128 MiB queue of 16 MiB requests on 4 connections: the last requests are small */
    while (left > 0) {
        uint64_t head = left % (16ull * mib) ? left % (16ull * mib) : 16ull * mib;
        uint64_t take = fbcp_request_share(head, left, 4, mib);
        ck_assert_uint_gt(take, 0);
        ck_assert_uint_le(take, head);
        left -= take;
        requests++;
        if (left < 8ull * mib && take > biggest_last)
            biggest_last = take;
    }
    ck_assert_uint_le(biggest_last, FBCP_TAIL_REQUEST_MIN);
    ck_assert_int_lt(requests, 24);
}
END_TEST

START_TEST(ranges_json_checked_against_size)
{
    fbcp_ranges r;
    json_t *ok = json_loads("[[0, 10], [20, 5]]", 0, NULL);
    json_t *beyond = json_loads("[[0, 10], [20, 11]]", 0, NULL);
    json_t *neg = json_loads("[[-1, 10]]", 0, NULL);
    json_t *shape = json_loads("[[0, 10, 3]]", 0, NULL);
    json_t *back;

    fbcp_ranges_init(&r);
    ck_assert_int_eq(fbcp_ranges_from_json(&r, ok, 30), FB_OK);
    ck_assert_uint_eq(fbcp_ranges_total(&r), 15);
    back = fbcp_ranges_to_json(&r);
    ck_assert(json_equal(back, ok));
    ck_assert_int_eq(fbcp_ranges_from_json(&r, beyond, 30), FB_ERR_PROTOCOL);
    ck_assert_int_eq(fbcp_ranges_from_json(&r, neg, 30), FB_ERR_PROTOCOL);
    ck_assert_int_eq(fbcp_ranges_from_json(&r, shape, 30), FB_ERR_PROTOCOL);
    ck_assert_int_eq(fbcp_ranges_from_json(&r, NULL, 30), FB_ERR_PROTOCOL);
    json_decref(ok);
    json_decref(beyond);
    json_decref(neg);
    json_decref(shape);
    json_decref(back);
    fbcp_ranges_free(&r);
}
END_TEST

START_TEST(sizes_with_suffixes)
{
    uint64_t v;
    ck_assert_int_eq(fbcp_parse_size(&v, "10k", 1), FB_OK);
    ck_assert_uint_eq(v, 10240);
    ck_assert_int_eq(fbcp_parse_size(&v, "10k", 0), FB_OK);
    ck_assert_uint_eq(v, 10000);
    ck_assert_int_eq(fbcp_parse_size(&v, "3M", 0), FB_OK);
    ck_assert_uint_eq(v, 3000000);
    ck_assert_int_eq(fbcp_parse_size(&v, "16m", 1), FB_OK);
    ck_assert_uint_eq(v, 16u * 1024 * 1024);
    ck_assert_int_eq(fbcp_parse_size(&v, "42", 1), FB_OK);
    ck_assert_uint_eq(v, 42);
    ck_assert_int_eq(fbcp_parse_size(&v, "1x", 1), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_size(&v, "1kk", 1), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_size(&v, "-1", 1), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_size(&v, "", 1), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_size(&v, "99999999999999999999", 1), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_size(&v, "99999999999t", 1), FB_ERR_USAGE);
}
END_TEST

START_TEST(longs_in_bounds)
{
    long l;
    ck_assert_int_eq(fbcp_parse_long(&l, "4", 1, 64), FB_OK);
    ck_assert_int_eq(l, 4);
    ck_assert_int_eq(fbcp_parse_long(&l, "65", 1, 64), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_long(&l, "0", 1, 64), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_long(&l, "4x", 1, 64), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_long(&l, " 4", 1, 64), FB_ERR_USAGE);
}
END_TEST

START_TEST(content_range_of_answers_is_strict)
{
    uint64_t a, b, c;
    ck_assert_int_eq(fbcp_parse_content_range(&a, &b, &c, "bytes 0-99/100"), FB_OK);
    ck_assert_uint_eq(a, 0);
    ck_assert_uint_eq(b, 99);
    ck_assert_uint_eq(c, 100);
    ck_assert_int_eq(fbcp_parse_content_range(&a, &b, &c, "bytes 5-4/100"), FB_ERR_BAD_RANGE);
    ck_assert_int_eq(fbcp_parse_content_range(&a, &b, &c, "bytes 0-100/100"), FB_ERR_BAD_RANGE);
    ck_assert_int_eq(fbcp_parse_content_range(&a, &b, &c, "bytes */100"), FB_ERR_BAD_RANGE);
    ck_assert_int_eq(fbcp_parse_content_range(&a, &b, &c, "bytes 0-1/*"), FB_ERR_BAD_RANGE);
    ck_assert_int_eq(fbcp_parse_content_range(&a, &b, &c, "items 0-1/2"), FB_ERR_BAD_RANGE);
    ck_assert_int_eq(fbcp_parse_content_range(&a, &b, &c, "bytes 0-1/2x"), FB_ERR_BAD_RANGE);
}
END_TEST

START_TEST(sidecar_round_trip_and_damage)
{
    char dir[] = "/tmp/check_fbcp.XXXXXX";
    char path[256];
    fbcp_sidecar s, r;
    int fd;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/.f.fbpart.json", dir);
    ck_assert_int_eq(fbcp_sidecar_read(&r, path), FB_ERR_NOT_FOUND);

    fbcp_sidecar_init(&s);
    s.url = strdup("https://h:1/fallback/files/f");
    s.etag = strdup("\"abc-123\"");
    s.size = 5u * 1024 * 1024 + 3;
    s.chunk_size = 1024 * 1024;
    fbcp_ranges_add(&s.done, 0, 2 * 1024 * 1024);
    fbcp_ranges_add(&s.done, 4u * 1024 * 1024, 1024 * 1024 + 3);
    {
        unsigned char sha[3 * 32];

        for (size_t i = 0; i < sizeof(sha); i++)
            sha[i] = (unsigned char)(i * 5 + 1);
        ck_assert_int_eq(fbcp_sidecar_set_hashes(&s, sha, 3), FB_OK);
    }
    ck_assert_int_eq(fbcp_sidecar_write(path, &s), FB_OK);
    ck_assert_int_eq(fbcp_sidecar_read(&r, path), FB_OK);
    ck_assert_str_eq(r.url, s.url);
    ck_assert_str_eq(r.etag, s.etag);
    ck_assert_uint_eq(r.size, s.size);
    ck_assert_uint_eq(r.chunk_size, s.chunk_size);
    ck_assert_uint_eq(r.done.n, 2);
    ck_assert_uint_eq(fbcp_ranges_total(&r.done), fbcp_ranges_total(&s.done));
    ck_assert_uint_eq(r.nhashed, 3);
    ck_assert_mem_eq(r.chunk_sha, s.chunk_sha, 3 * 32);
    fbcp_sidecar_free(&r);
    /* no digests at all is fine too */
    ck_assert_int_eq(fbcp_sidecar_set_hashes(&s, NULL, 0), FB_OK);
    ck_assert_int_eq(fbcp_sidecar_write(path, &s), FB_OK);
    ck_assert_int_eq(fbcp_sidecar_read(&r, path), FB_OK);
    ck_assert_uint_eq(r.nhashed, 0);
    fbcp_sidecar_free(&r);

    /* a torn or foreign file is refused, not trusted */
    fd = open(path, O_WRONLY | O_TRUNC);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "{\"version\":1,\"url\":", 19), 19);
    close(fd);
    ck_assert_int_eq(fbcp_sidecar_read(&r, path), FB_ERR_LOCAL_IO);
    fd = open(path, O_WRONLY | O_TRUNC);
    ck_assert_int_eq(
        write(fd, "{\"version\":3,\"url\":\"u\",\"size\":1,\"etag\":\"\",\"chunk_size\":1,\"done\":[]}", 67),
        67);
    close(fd);
    ck_assert_int_eq(fbcp_sidecar_read(&r, path), FB_ERR_LOCAL_IO);
    /* version 1 (no chunk digests: nothing it claims can be verified) is refused: start over */
    {
        static const char v1[] =
            "{\"version\":1,\"url\":\"u\",\"size\":1,\"etag\":\"e\",\"chunk_size\":1,\"done\":[[0,1]]}";
        static const char half[] = "{\"version\":2,\"url\":\"u\",\"size\":1,\"etag\":\"e\",\"chunk_size\":1,"
                                   "\"done\":[[0,1]],\"chunk_sha256\":\"00ff\"}";
        char more[512];
        int n = snprintf(more, sizeof(more),
                         "{\"version\":2,\"url\":\"u\",\"size\":1,\"etag\":\"e\",\"chunk_size\":1,"
                         "\"done\":[[0,1]],\"chunk_sha256\":\"%0128d\"}",
                         0); /* two digests for a one-chunk file */

        fd = open(path, O_WRONLY | O_TRUNC);
        ck_assert_int_eq(write(fd, v1, sizeof(v1) - 1), (ssize_t)sizeof(v1) - 1);
        close(fd);
        ck_assert_int_eq(fbcp_sidecar_read(&r, path), FB_ERR_LOCAL_IO);
        fd = open(path, O_WRONLY | O_TRUNC);
        ck_assert_int_eq(write(fd, half, sizeof(half) - 1), (ssize_t)sizeof(half) - 1);
        close(fd);
        ck_assert_int_eq(fbcp_sidecar_read(&r, path), FB_ERR_LOCAL_IO);
        fd = open(path, O_WRONLY | O_TRUNC);
        ck_assert_int_eq(write(fd, more, (size_t)n), n);
        close(fd);
        ck_assert_int_eq(fbcp_sidecar_read(&r, path), FB_ERR_LOCAL_IO);
    }
    /* done ranges beyond the size are refused */
    fd = open(path, O_WRONLY | O_TRUNC);
    ck_assert_int_eq(
        write(fd,
              "{\"version\":2,\"url\":\"u\",\"size\":1,\"etag\":\"\",\"chunk_size\":1,\"done\":[[0,2]],"
              "\"chunk_sha256\":\"\"}",
              90),
        90);
    close(fd);
    ck_assert_int_eq(fbcp_sidecar_read(&r, path), FB_ERR_LOCAL_IO);

    fbcp_sidecar_free(&s);
    unlink(path);
    rmdir(dir);
}
END_TEST

START_TEST(seconds_with_decimals)
{
    uint32_t ms = 0;
    ck_assert_int_eq(fbcp_parse_seconds_ms(&ms, "2", 100, 3600000), FB_OK);
    ck_assert_uint_eq(ms, 2000);
    ck_assert_int_eq(fbcp_parse_seconds_ms(&ms, "0.5", 100, 3600000), FB_OK);
    ck_assert_uint_eq(ms, 500);
    ck_assert_int_eq(fbcp_parse_seconds_ms(&ms, "1.25", 100, 3600000), FB_OK);
    ck_assert_uint_eq(ms, 1250);
    ck_assert_int_eq(fbcp_parse_seconds_ms(&ms, "3600", 100, 3600000), FB_OK);
    ck_assert_uint_eq(ms, 3600000);
    ck_assert_int_eq(fbcp_parse_seconds_ms(&ms, "0.05", 100, 3600000), FB_ERR_USAGE); /* below min */
    ck_assert_int_eq(fbcp_parse_seconds_ms(&ms, "3600.001", 100, 3600000), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_seconds_ms(&ms, "1.2345", 100, 3600000), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_seconds_ms(&ms, "1.", 100, 3600000), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_seconds_ms(&ms, ".5", 100, 3600000), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_seconds_ms(&ms, "-1", 100, 3600000), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_seconds_ms(&ms, "1e3", 100, 3600000), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_seconds_ms(&ms, "99999999999", 100, 3600000), FB_ERR_USAGE);
    ck_assert_int_eq(fbcp_parse_seconds_ms(&ms, "", 100, 3600000), FB_ERR_USAGE);
}
END_TEST

/* ---- the transport choice, in virtual time (microseconds) ---- */

#define S_ 1000000ull

static void sw_auto(fbcp_switch *sw, uint64_t now)
{
    fbcp_switch_init(sw, FBCP_FALLBACK_AUTO, 2000, 3000, 1000, 3, now);
}

START_TEST(switch_start_timeout_is_exact)
{
    fbcp_switch sw;
    uint64_t t0 = 5 * S_;

    sw_auto(&sw, t0);
    ck_assert_int_eq(sw.current, FBCP_TR_UDP);
    ck_assert_uint_eq(fbcp_switch_udp_deadline(&sw), t0 + 2 * S_);
    /* datagrams that are not the HELLO_ACK do not count before the handshake */
    fbcp_switch_udp_heard(&sw, t0 + S_, 0);
    ck_assert_int_eq(fbcp_switch_udp_check(&sw, t0 + 2 * S_ - 1), FBCP_SW_STAY);
    ck_assert_int_eq(fbcp_switch_udp_check(&sw, t0 + 2 * S_), FBCP_SW_FALLBACK);
    ck_assert_int_eq(sw.reason, FBCP_SW_NO_ANSWER);
    ck_assert_str_eq(fbcp_switch_reason_name(sw.reason), "no_answer");
}
END_TEST

START_TEST(switch_idle_runs_from_last_datagram)
{
    fbcp_switch sw;

    sw_auto(&sw, 0);
    fbcp_switch_udp_heard(&sw, 1900000, 1); /* HELLO_ACK just in time */
    ck_assert_int_eq(fbcp_switch_udp_check(&sw, 2 * S_ + 1), FBCP_SW_STAY);
    ck_assert_uint_eq(fbcp_switch_udp_deadline(&sw), 1900000 + 3 * S_);
    for (uint64_t t = 2 * S_; t <= 20 * S_; t += 10000)
        fbcp_switch_udp_heard(&sw, t, 0); /* FEEDBACK every 10 ms */
    ck_assert_int_eq(fbcp_switch_udp_check(&sw, 22 * S_), FBCP_SW_STAY);
    ck_assert_int_eq(fbcp_switch_udp_check(&sw, 23 * S_ - 1), FBCP_SW_STAY);
    ck_assert_int_eq(fbcp_switch_udp_check(&sw, 23 * S_), FBCP_SW_FALLBACK);
    ck_assert_int_eq(sw.reason, FBCP_SW_LOST);
    /* a late datagram heard out of order never moves the clock back */
    sw_auto(&sw, 0);
    fbcp_switch_udp_heard(&sw, 5 * S_, 1);
    fbcp_switch_udp_heard(&sw, 4 * S_, 0);
    ck_assert_uint_eq(fbcp_switch_udp_deadline(&sw), 8 * S_);
}
END_TEST

START_TEST(switch_never_fails_instead_of_falling_back)
{
    fbcp_switch sw;

    fbcp_switch_init(&sw, FBCP_FALLBACK_NEVER, 2000, 3000, 1000, 3, 0);
    ck_assert_int_eq(sw.current, FBCP_TR_UDP);
    ck_assert_int_eq(fbcp_switch_udp_check(&sw, 2 * S_), FBCP_SW_FAIL);
    fbcp_switch_init(&sw, FBCP_FALLBACK_NEVER, 2000, 3000, 1000, 3, 0);
    fbcp_switch_udp_heard(&sw, 10, 1);
    ck_assert_int_eq(fbcp_switch_udp_check(&sw, 3 * S_ + 10), FBCP_SW_FAIL);
    ck_assert_int_eq(sw.reason, FBCP_SW_LOST);
    ck_assert_int_eq(fbcp_switch_udp_failed(&sw, FBCP_SW_REFUSED), FBCP_SW_FAIL);
    /* never probes: there is no HTTP(S) leg to probe from */
    fbcp_switch_to_http(&sw, 4 * S_);
    ck_assert_int_eq(fbcp_switch_probe_due(&sw, 100 * S_), 0);
}
END_TEST

START_TEST(switch_force_is_http_for_good)
{
    fbcp_switch sw;

    fbcp_switch_init(&sw, FBCP_FALLBACK_FORCE, 2000, 3000, 1000, 3, 0);
    ck_assert_int_eq(sw.current, FBCP_TR_HTTP);
    ck_assert_str_eq(fbcp_tr_name(sw.current), "http");
    ck_assert_int_eq(sw.udp_disabled, 1);
    for (uint64_t t = 0; t < 60 * S_; t += 100000)
        ck_assert_int_eq(fbcp_switch_probe_due(&sw, t), 0);
    ck_assert_int_eq(fbcp_switch_probe_answered(&sw), FBCP_SW_STAY);
    ck_assert_int_eq(fbcp_switch_udp_check(&sw, 60 * S_), FBCP_SW_STAY);
}
END_TEST

START_TEST(switch_probes_every_interval_and_returns)
{
    fbcp_switch sw;
    int probes = 0;

    sw_auto(&sw, 0);
    ck_assert_int_eq(fbcp_switch_udp_check(&sw, 2 * S_), FBCP_SW_FALLBACK);
    fbcp_switch_to_http(&sw, 2 * S_);
    ck_assert_int_eq(sw.current, FBCP_TR_HTTP);
    ck_assert_uint_eq(sw.switches, 1);
    /* one HELLO per second from one second after the change, however often the loop asks */
    for (uint64_t t = 2 * S_; t < 7 * S_; t += 20000)
        probes += fbcp_switch_probe_due(&sw, t);
    ck_assert_int_eq(probes, 4); /* at 3, 4, 5 and 6 s */
    /* a stalled loop gets one probe, not a burst */
    ck_assert_int_eq(fbcp_switch_probe_due(&sw, 20 * S_), 1);
    ck_assert_int_eq(fbcp_switch_probe_due(&sw, 20 * S_ + 1), 0);
    ck_assert_int_eq(fbcp_switch_probe_answered(&sw), FBCP_SW_RETURN);
    fbcp_switch_to_udp(&sw, 21 * S_);
    ck_assert_int_eq(sw.current, FBCP_TR_UDP);
    ck_assert_uint_eq(sw.returns, 1);
    ck_assert_uint_eq(sw.switches, 2);
    ck_assert_str_eq(fbcp_switch_reason_name(sw.reason), "answered");
    /* the new leg's handshake is done: it is judged by the idle timeout at once */
    ck_assert_uint_eq(fbcp_switch_udp_deadline(&sw), 24 * S_);
    ck_assert_int_eq(fbcp_switch_probe_due(&sw, 30 * S_), 0); /* no probing on UDP */
}
END_TEST

START_TEST(switch_returns_are_bounded)
{
    fbcp_switch sw;
    uint64_t t = 0;

    sw_auto(&sw, 0); /* at most 3 returns */
    fbcp_switch_udp_heard(&sw, t, 1);
    for (int i = 0; i < 3; i++) {
        t += 10 * S_;
        ck_assert_int_eq(fbcp_switch_udp_check(&sw, t), FBCP_SW_FALLBACK);
        fbcp_switch_to_http(&sw, t);
        t += S_;
        ck_assert_int_eq(fbcp_switch_probe_due(&sw, t), 1);
        ck_assert_int_eq(fbcp_switch_probe_answered(&sw), FBCP_SW_RETURN);
        fbcp_switch_to_udp(&sw, t);
    }
    ck_assert_uint_eq(sw.returns, 3);
    t += 10 * S_;
    ck_assert_int_eq(fbcp_switch_udp_check(&sw, t), FBCP_SW_FALLBACK);
    fbcp_switch_to_http(&sw, t);
    /* the fourth time on HTTP(S) stays there: no probe, and an answer changes nothing */
    ck_assert_int_eq(fbcp_switch_probe_due(&sw, t + 100 * S_), 0);
    ck_assert_int_eq(fbcp_switch_probe_answered(&sw), FBCP_SW_STAY);
    ck_assert_uint_eq(sw.switches, 7);
}
END_TEST

START_TEST(switch_refusal_and_unavailable_stop_probing)
{
    fbcp_switch sw;

    sw_auto(&sw, 0);
    ck_assert_int_eq(fbcp_switch_udp_failed(&sw, FBCP_SW_REFUSED), FBCP_SW_FALLBACK);
    fbcp_switch_to_http(&sw, S_);
    ck_assert_int_eq(fbcp_switch_probe_due(&sw, 10 * S_), 0);
    ck_assert_int_eq(fbcp_switch_probe_answered(&sw), FBCP_SW_STAY);

    sw_auto(&sw, 0);
    ck_assert_int_eq(fbcp_switch_udp_failed(&sw, FBCP_SW_UNAVAILABLE), FBCP_SW_FALLBACK);
    fbcp_switch_to_http(&sw, 0);
    ck_assert_int_eq(fbcp_switch_probe_due(&sw, 10 * S_), 0);

    /* closed by udpd (a failed write): worth probing again later */
    sw_auto(&sw, 0);
    fbcp_switch_udp_heard(&sw, 1, 1);
    ck_assert_int_eq(fbcp_switch_udp_failed(&sw, FBCP_SW_CLOSED), FBCP_SW_FALLBACK);
    fbcp_switch_to_http(&sw, S_);
    ck_assert_int_eq(fbcp_switch_probe_due(&sw, 2 * S_), 1);

    /* a probe refused while on HTTP(S) ends the probing */
    fbcp_switch_probe_refused(&sw);
    ck_assert_int_eq(fbcp_switch_probe_due(&sw, 20 * S_), 0);
    ck_assert_int_eq(fbcp_switch_probe_answered(&sw), FBCP_SW_STAY);
}
END_TEST

/* A whole transfer in virtual time: the decisions a driver following the switch would take on a
 * path where UDP works for [0, 5 s), is gone for [5 s, 12 s) and works again after, with the
 * receiver answering every 10 ms and a probe's HELLO_ACK at once. The transfer needs 12 s of
 * data; HTTP(S) moves data at the same speed and a yield waits 300 ms for running requests. */
START_TEST(switch_scenario_lost_and_back)
{
    fbcp_switch sw;
    uint64_t t = 0, moved = 0, need = 12 * S_, first_http = 0, back = 0, lost_at = 0;
    uint64_t drain_until = 0;
    int fallbacks = 0, returns = 0, guard = 0;

    sw_auto(&sw, 0);
    while (moved < need && guard++ < 100000) {
        int up = t < 5 * S_ || t >= 12 * S_;

        if (sw.current == FBCP_TR_UDP) {
            if (up) {
                fbcp_switch_udp_heard(&sw, t, !sw.answered);
                moved += 10000;
            }
            if (fbcp_switch_udp_check(&sw, t) == FBCP_SW_FALLBACK) {
                fallbacks++;
                lost_at = t;
                fbcp_switch_to_http(&sw, t);
            }
        } else {
            if (first_http == 0)
                first_http = t;
            moved += 10000;
            if (drain_until != 0 && t >= drain_until) {
                drain_until = 0;
                fbcp_switch_to_udp(&sw, t);
                returns++;
                back = t;
            } else if (drain_until == 0 && fbcp_switch_probe_due(&sw, t) && up &&
                       fbcp_switch_probe_answered(&sw) == FBCP_SW_RETURN) {
                drain_until = t + 300000;
            }
        }
        t += 10000;
    }
    ck_assert_uint_ge(moved, need);
    ck_assert_int_eq(fallbacks, 1);
    ck_assert_int_eq(returns, 1);
    /* lost 3 s after the last datagram (4.99 s) */
    ck_assert_uint_ge(lost_at, 7990000);
    ck_assert_uint_le(lost_at, 8000000);
    ck_assert_uint_le(first_http - lost_at, 10000); /* HTTP(S) carries the very next step */
    /* back within a probe interval plus the drain of the path's return at 12 s */
    ck_assert_uint_ge(back, 12 * S_);
    ck_assert_uint_le(back, 13 * S_ + 300000);
    ck_assert_int_eq(sw.current, FBCP_TR_UDP);
    /* nothing was lost to the changes: the whole time moved data except the silent UDP stretch */
    ck_assert_uint_le(t, need + (lost_at - 5 * S_) + 20000);
}
END_TEST

static Suite *fbcp_suite(void)
{
    Suite *s = suite_create("fbcp");
    TCase *tc = tcase_create("util");

    tcase_add_test(tc, url_default_location_is_first_segment);
    tcase_add_test(tc, url_default_port_and_trailing_slash);
    tcase_add_test(tc, url_location_option_spans_segments);
    tcase_add_test(tc, url_path_is_decoded);
    tcase_add_test(tc, url_bad_inputs_are_refused);
    tcase_add_test(tc, url_user_info_is_taken);
    tcase_add_test(tc, is_url_by_scheme);
    tcase_add_test(tc, path_escape_per_segment);
    tcase_add_test(tc, path_join_and_basename);
    tcase_add_test(tc, listing_names_must_be_one_component);
    tcase_add_test(tc, ranges_merge_on_add);
    tcase_add_test(tc, ranges_intersect_and_complement);
    tcase_add_test(tc, ranges_covers_only_whole_spans);
    tcase_add_test(tc, ranges_split_stays_chunk_aligned);
    tcase_add_test(tc, request_share_shrinks_towards_the_end);
    tcase_add_test(tc, ranges_json_checked_against_size);
    tcase_add_test(tc, sizes_with_suffixes);
    tcase_add_test(tc, longs_in_bounds);
    tcase_add_test(tc, content_range_of_answers_is_strict);
    tcase_add_test(tc, sidecar_round_trip_and_damage);
    tcase_add_test(tc, seconds_with_decimals);
    suite_add_tcase(s, tc);

    tc = tcase_create("switch");
    tcase_add_test(tc, switch_start_timeout_is_exact);
    tcase_add_test(tc, switch_idle_runs_from_last_datagram);
    tcase_add_test(tc, switch_never_fails_instead_of_falling_back);
    tcase_add_test(tc, switch_force_is_http_for_good);
    tcase_add_test(tc, switch_probes_every_interval_and_returns);
    tcase_add_test(tc, switch_returns_are_bounded);
    tcase_add_test(tc, switch_refusal_and_unavailable_stop_probing);
    tcase_add_test(tc, switch_scenario_lost_and_back);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(fbcp_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
