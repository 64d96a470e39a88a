/* Unit tests for fb_path: the syntax check on client paths, the hidden partial/checkpoint names,
 * and containment on a real filesystem (symlinks inside and out of a mkdtemp tree, "..",
 * absolute links, directory creation through links). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fb_path.h"

static void expect_check(const char *in, fb_err want, const char *want_out)
{
    char out[FB_PATH_MAX + 1];
    fb_err rv;

    memset(out, 'x', sizeof(out));
    rv = fb_path_check(out, sizeof(out), in);
    ck_assert_msg(rv == want, "\"%s\": got %s, want %s", in, fb_err_name(rv), fb_err_name(want));
    if (want == FB_OK)
        ck_assert_str_eq(out, want_out);
}

static void expect_ok(const char *in, const char *want_out)
{
    expect_check(in, FB_OK, want_out);
}

static void expect_bad(const char *in)
{
    expect_check(in, FB_ERR_BAD_PATH, NULL);
}

static void expect_escape(const char *in)
{
    expect_check(in, FB_ERR_PATH_ESCAPE, NULL);
}

START_TEST(test_check_accepts_ordinary_paths)
{
    expect_ok("", "");
    expect_ok("a", "a");
    expect_ok("dir/file.bin", "dir/file.bin");
    expect_ok("a/b/c/d.txt", "a/b/c/d.txt");
    expect_ok("with space/and-dash_under.score", "with space/and-dash_under.score");
    expect_ok(".hidden", ".hidden");
    expect_ok("...", "...");
    expect_ok("..a/a..", "..a/a..");
    expect_ok("a\\b", "a\\b");
    expect_ok("..\\etc", "..\\etc");
    expect_ok("%2e%2e/x", "%2e%2e/x"); /* not decoded here: a literal name */
}
END_TEST

START_TEST(test_check_removes_one_trailing_slash)
{
    expect_ok("dir/", "dir");
    expect_ok("a/b/", "a/b");
    expect_bad("dir//");
    expect_bad("a/b///");
}
END_TEST

START_TEST(test_check_dotdot_and_absolute_escape)
{
    expect_escape("..");
    expect_escape("../");
    expect_escape("../x");
    expect_escape("a/..");
    expect_escape("a/../b");
    expect_escape("a/b/../../..");
    expect_escape("/");
    expect_escape("/etc/passwd");
    expect_escape("//x");
    /* Escape wins over other problems in the same path. */
    expect_escape("a//../b");
    expect_escape("a\x01/../b");
}
END_TEST

START_TEST(test_check_dot_and_empty_components_are_bad)
{
    expect_bad(".");
    expect_bad("./");
    expect_bad("./a");
    expect_bad("a/./b");
    expect_bad("a/.");
    expect_bad("a//b");
}
END_TEST

START_TEST(test_check_control_characters_are_bad)
{
    expect_bad("a\x01");
    expect_bad("a\tb");
    expect_bad("a\nb");
    expect_bad("a\rb");
    expect_bad("\x1f");
    expect_bad("a/\x7f");
}
END_TEST

START_TEST(test_check_requires_well_formed_utf8)
{
    expect_ok("caf\xc3\xa9/\xe2\x82\xac.txt", "caf\xc3\xa9/\xe2\x82\xac.txt");
    expect_ok("\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80");
    expect_bad("caf\xc3");          /* truncated */
    expect_bad("\xc3/a");           /* truncated before a slash */
    expect_bad("\xc0\xaf");         /* overlong "/" */
    expect_bad("\xe0\x80\xaf");     /* overlong "/" */
    expect_bad("\xed\xa0\x80");     /* surrogate */
    expect_bad("\xf4\x90\x80\x80"); /* beyond U+10FFFF */
    expect_bad("\xff");
    expect_bad("\x80");
}
END_TEST

START_TEST(test_check_partial_and_checkpoint_names_are_bad)
{
    expect_bad(".f.fbpart");
    expect_bad("dir/.f.fbpart");
    expect_bad("dir/.f.fbpart.ckpt");
    expect_bad("dir/.f.fbpart.ckpt.tmp");
    expect_bad(".fbpart");
    expect_bad("a/.x.fbpart/b");
    expect_ok("f.fbpart", "f.fbpart");
    expect_ok(".f.fbpartx", ".f.fbpartx");
    expect_ok(".f.fbpart.ckpt.tmp2", ".f.fbpart.ckpt.tmp2");
}
END_TEST

START_TEST(test_check_length_limits)
{
    char path[FB_PATH_MAX + 2];
    char out[FB_PATH_MAX + 1];

    /* Exactly FB_PATH_MAX bytes: components of 200 separated by '/'. */
    memset(path, 'a', FB_PATH_MAX);
    for (size_t i = 200; i < FB_PATH_MAX; i += 201)
        path[i] = '/';
    path[FB_PATH_MAX] = '\0';
    ck_assert_int_eq(fb_path_check(out, sizeof(out), path), FB_OK);
    ck_assert_str_eq(out, path);
    path[FB_PATH_MAX] = 'a';
    path[FB_PATH_MAX + 1] = '\0';
    ck_assert_int_eq(fb_path_check(out, sizeof(out), path), FB_ERR_BAD_PATH);

    /* One component longer than NAME_MAX. */
    memset(path, 'b', NAME_MAX + 1);
    path[NAME_MAX + 1] = '\0';
    ck_assert_int_eq(fb_path_check(out, sizeof(out), path), FB_ERR_BAD_PATH);
    path[NAME_MAX] = '\0';
    ck_assert_int_eq(fb_path_check(out, sizeof(out), path), FB_OK);
}
END_TEST

START_TEST(test_check_output_capacity_and_in_place)
{
    char out[4];
    char buf[] = "ab/";

    ck_assert_int_eq(fb_path_check(out, sizeof(out), "abcd"), FB_ERR_BAD_PATH);
    ck_assert_int_eq(fb_path_check(out, sizeof(out), "abc"), FB_OK);
    ck_assert_str_eq(out, "abc");
    ck_assert_int_eq(fb_path_check(out, sizeof(out), "abc/"), FB_OK);
    ck_assert_str_eq(out, "abc");
    ck_assert_int_eq(fb_path_check(out, 0, ""), FB_ERR_BAD_PATH);
    ck_assert_int_eq(fb_path_check(buf, sizeof(buf), buf), FB_OK);
    ck_assert_str_eq(buf, "ab");
    ck_assert_int_eq(fb_path_check(out, sizeof(out), NULL), FB_ERR_BAD_PATH);
}
END_TEST

START_TEST(test_partial_and_checkpoint_names)
{
    char out[64];

    ck_assert_int_eq(fb_path_partial_name(out, sizeof(out), "a/b/file.bin"), FB_OK);
    ck_assert_str_eq(out, "a/b/.file.bin.fbpart");
    ck_assert_int_eq(fb_path_checkpoint_name(out, sizeof(out), "a/b/file.bin"), FB_OK);
    ck_assert_str_eq(out, "a/b/.file.bin.fbpart.ckpt");
    ck_assert_int_eq(fb_path_partial_name(out, sizeof(out), "file"), FB_OK);
    ck_assert_str_eq(out, ".file.fbpart");
    ck_assert_int_eq(fb_path_checkpoint_name(out, sizeof(out), "file"), FB_OK);
    ck_assert_str_eq(out, ".file.fbpart.ckpt");
    /* What they produce is hidden and refused as a client path. */
    ck_assert(fb_path_is_partial_name(".file.fbpart"));
    ck_assert(fb_path_is_partial_name(".file.fbpart.ckpt"));
    ck_assert_int_eq(fb_path_check(out, sizeof(out), "a/b/.file.bin.fbpart"), FB_ERR_BAD_PATH);
}
END_TEST

START_TEST(test_partial_name_errors)
{
    char out[64];

    ck_assert_int_eq(fb_path_partial_name(out, sizeof(out), ""), FB_ERR_BAD_PATH);
    ck_assert_int_eq(fb_path_partial_name(out, sizeof(out), "dir/"), FB_ERR_BAD_PATH);
    ck_assert_int_eq(fb_path_checkpoint_name(out, sizeof(out), ""), FB_ERR_BAD_PATH);
    ck_assert_int_eq(fb_path_partial_name(out, sizeof(out), NULL), FB_ERR_BAD_PATH);
    /* ".ab.fbpart" is 10 bytes + NUL: fits in 11, not in 10. */
    ck_assert_int_eq(fb_path_partial_name(out, 10, "ab"), FB_ERR_BAD_PATH);
    ck_assert_int_eq(fb_path_partial_name(out, 11, "ab"), FB_OK);
    ck_assert_str_eq(out, ".ab.fbpart");
    ck_assert_int_eq(fb_path_checkpoint_name(out, 15, "ab"), FB_ERR_BAD_PATH);
    ck_assert_int_eq(fb_path_checkpoint_name(out, 16, "ab"), FB_OK);
}
END_TEST

START_TEST(test_is_partial_name)
{
    ck_assert(fb_path_is_partial_name(".x.fbpart"));
    ck_assert(fb_path_is_partial_name(".x.fbpart.ckpt"));
    ck_assert(fb_path_is_partial_name(".x.fbpart.ckpt.tmp"));
    ck_assert(!fb_path_is_partial_name("x.fbpart"));
    ck_assert(!fb_path_is_partial_name(".x.fbpart.bak"));
    ck_assert(!fb_path_is_partial_name(".x"));
    ck_assert(!fb_path_is_partial_name(""));
    ck_assert(!fb_path_is_partial_name(NULL));
}
END_TEST

START_TEST(test_pack_names_hidden)
{
    char out[96];

    /* A pack's manifest sidecar, its temporary and the commit's per-file temporaries. */
    ck_assert(fb_path_is_partial_name("..fbpack-0123456789abcdef0123456789abcdef.fbpart.manifest"));
    ck_assert(fb_path_is_partial_name(".x.fbpart.manifest.tmp"));
    ck_assert(fb_path_is_partial_name(".f.txt.0011223344556677.fbpart.unpack"));
    ck_assert(!fb_path_is_partial_name("x.fbpart.manifest"));
    ck_assert(!fb_path_is_partial_name(".x.fbpart.unpack2"));
    /* The pack's own name: exactly ".fbpack-" and 32 lower-case hex digits. */
    ck_assert(fb_path_is_partial_name(".fbpack-0123456789abcdef0123456789abcdef"));
    ck_assert(!fb_path_is_partial_name(".fbpack-0123456789abcdef0123456789abcde"));
    ck_assert(!fb_path_is_partial_name(".fbpack-0123456789abcdef0123456789abcdef0"));
    ck_assert(!fb_path_is_partial_name(".fbpack-0123456789ABCDEF0123456789abcdef"));
    ck_assert(!fb_path_is_partial_name(".fbpack-notes.txt"));
    ck_assert(!fb_path_is_partial_name("fbpack-0123456789abcdef0123456789abcdef"));
    /* Refused as client paths, in any component. */
    expect_bad("a/.fbpack-0123456789abcdef0123456789abcdef");
    expect_bad(".fbpack-0123456789abcdef0123456789abcdef/x");
    expect_bad("a/.b.fbpart.manifest");
    expect_bad("a/.b.12.fbpart.unpack");
    expect_ok(".fbpack-notes", ".fbpack-notes");
    ck_assert_int_eq(fb_path_manifest_name(out, sizeof(out), "r/.fbpack-0123456789abcdef0123456789abcdef"),
                     FB_OK);
    ck_assert_str_eq(out, "r/..fbpack-0123456789abcdef0123456789abcdef.fbpart.manifest");
    ck_assert_int_eq(fb_path_manifest_name(out, sizeof(out), ""), FB_ERR_BAD_PATH);
}
END_TEST

/* ---- Real filesystem: a docroot and an "outside" directory per test, under one mkdtemp base
 * that the unchecked teardown removes even when a test failed (a failed test skips the checked
 * teardown). ---- */

static char base[32];
static char testdir[64];
static char root[PATH_MAX];
static char outside[PATH_MAX];
static int rootfd = -1;

static void write_file(const char *path, const char *content)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
}

static void base_setup(void)
{
    snprintf(base, sizeof(base), "/tmp/check_path.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(base));
}

static void fs_setup(void)
{
    char p[PATH_MAX + 32];

    umask(022);
    /* A fresh directory per test, from a template so it works with and without fork mode. */
    snprintf(testdir, sizeof(testdir), "%s/tXXXXXX", base);
    ck_assert_ptr_nonnull(mkdtemp(testdir));
    snprintf(root, sizeof(root), "%s/root", testdir);
    snprintf(outside, sizeof(outside), "%s/outside", testdir);
    ck_assert_int_eq(mkdir(root, 0755), 0);
    ck_assert_int_eq(mkdir(outside, 0755), 0);
    snprintf(p, sizeof(p), "%s/inside.txt", root);
    write_file(p, "inside");
    snprintf(p, sizeof(p), "%s/secret.txt", outside);
    write_file(p, "secret");
    snprintf(p, sizeof(p), "%s/sub", root);
    ck_assert_int_eq(mkdir(p, 0755), 0);
    rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ck_assert_int_ge(rootfd, 0);
    /* Links inside the tree that stay inside. */
    ck_assert_int_eq(symlinkat("inside.txt", rootfd, "link_in"), 0);
    ck_assert_int_eq(symlinkat("../inside.txt", rootfd, "sub/up"), 0);
    ck_assert_int_eq(symlinkat("sub", rootfd, "sublink"), 0);
    /* Links that leave it. */
    ck_assert_int_eq(symlinkat("/etc/passwd", rootfd, "passwd_link"), 0);
    ck_assert_int_eq(symlinkat("/", rootfd, "rootlink"), 0);
    ck_assert_int_eq(symlinkat("../outside/secret.txt", rootfd, "rel_out"), 0);
    ck_assert_int_eq(symlinkat("../outside", rootfd, "outdir"), 0);
    ck_assert_int_eq(symlinkat(outside, rootfd, "outdir_abs"), 0);
    ck_assert_int_eq(symlinkat("/nonexistent-fb-check-path", rootfd, "dangling_abs"), 0);
    ck_assert_int_eq(symlinkat("loop2", rootfd, "loop1"), 0);
    ck_assert_int_eq(symlinkat("loop1", rootfd, "loop2"), 0);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void fs_teardown(void)
{
    if (rootfd >= 0)
        close(rootfd);
    rootfd = -1;
}

static void base_teardown(void)
{
    nftw(base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Opens RELPATH read-only beneath the root and returns its contents (static buffer). */
static const char *read_beneath(const char *relpath)
{
    static char buf[64];
    int fd = -1;
    ssize_t n;

    ck_assert_int_eq(fb_path_open_beneath(&fd, rootfd, relpath, O_RDONLY, 0), FB_OK);
    n = read(fd, buf, sizeof(buf) - 1);
    ck_assert_int_ge(n, 0);
    buf[n] = '\0';
    close(fd);
    return buf;
}

static void expect_open_error(const char *relpath, int flags, fb_err want)
{
    int fd = 1234;
    fb_err rv = fb_path_open_beneath(&fd, rootfd, relpath, flags, 0600);

    ck_assert_msg(rv == want, "\"%s\": got %s, want %s", relpath, fb_err_name(rv), fb_err_name(want));
    ck_assert_int_eq(fd, -1);
}

START_TEST(test_open_plain_file_beneath)
{
    ck_assert_str_eq(read_beneath("inside.txt"), "inside");
}
END_TEST

START_TEST(test_open_symlink_staying_inside_is_followed)
{
    ck_assert_str_eq(read_beneath("link_in"), "inside");
    ck_assert_str_eq(read_beneath("sub/up"), "inside");
    ck_assert_str_eq(read_beneath("sublink/up"), "inside");
}
END_TEST

START_TEST(test_open_symlink_to_etc_passwd_escapes)
{
    expect_open_error("passwd_link", O_RDONLY, FB_ERR_PATH_ESCAPE);
}
END_TEST

START_TEST(test_open_through_symlink_to_root_escapes)
{
    expect_open_error("rootlink/etc/passwd", O_RDONLY, FB_ERR_PATH_ESCAPE);
    expect_open_error("rootlink", O_RDONLY | O_DIRECTORY, FB_ERR_PATH_ESCAPE);
}
END_TEST

START_TEST(test_open_relative_symlink_out_escapes)
{
    expect_open_error("rel_out", O_RDONLY, FB_ERR_PATH_ESCAPE);
    expect_open_error("outdir/secret.txt", O_RDONLY, FB_ERR_PATH_ESCAPE);
    expect_open_error("outdir_abs/secret.txt", O_RDONLY, FB_ERR_PATH_ESCAPE);
}
END_TEST

START_TEST(test_open_dotdot_and_absolute_escape)
{
    expect_open_error("../x", O_RDONLY, FB_ERR_PATH_ESCAPE);
    expect_open_error("../outside/secret.txt", O_RDONLY, FB_ERR_PATH_ESCAPE);
    expect_open_error("sub/../../outside/secret.txt", O_RDONLY, FB_ERR_PATH_ESCAPE);
    expect_open_error("/etc/passwd", O_RDONLY, FB_ERR_PATH_ESCAPE);
}
END_TEST

START_TEST(test_open_creating_through_escaping_link_is_refused)
{
    char p[PATH_MAX + 32];

    expect_open_error("outdir/new.txt", O_WRONLY | O_CREAT | O_EXCL, FB_ERR_PATH_ESCAPE);
    expect_open_error("dangling_abs", O_WRONLY | O_CREAT, FB_ERR_PATH_ESCAPE);
    snprintf(p, sizeof(p), "%s/new.txt", outside);
    ck_assert_int_ne(access(p, F_OK), 0);
}
END_TEST

START_TEST(test_open_symlink_loop_is_refused)
{
    expect_open_error("loop1", O_RDONLY, FB_ERR_PATH_ESCAPE);
}
END_TEST

START_TEST(test_open_missing_and_existing)
{
    expect_open_error("missing.txt", O_RDONLY, FB_ERR_NOT_FOUND);
    expect_open_error("inside.txt", O_WRONLY | O_CREAT | O_EXCL, FB_ERR_EXISTS);
}
END_TEST

START_TEST(test_open_empty_path_is_the_directory_itself)
{
    struct stat a, b;
    int fd = -1;

    ck_assert_int_eq(fb_path_open_beneath(&fd, rootfd, "", O_RDONLY | O_DIRECTORY, 0), FB_OK);
    ck_assert_int_eq(fstat(fd, &a), 0);
    ck_assert_int_eq(fstat(rootfd, &b), 0);
    ck_assert_uint_eq(a.st_ino, b.st_ino);
    ck_assert_uint_eq(a.st_dev, b.st_dev);
    close(fd);
}
END_TEST

START_TEST(test_open_always_sets_cloexec_and_creates_with_mode)
{
    struct stat st;
    int fd = -1;

    ck_assert_int_eq(fb_path_open_beneath(&fd, rootfd, "sub/new.bin", O_WRONLY | O_CREAT | O_EXCL, 0640),
                     FB_OK);
    ck_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    ck_assert_int_eq(fstat(fd, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0640);
    close(fd);
}
END_TEST

START_TEST(test_mkdirs_creates_nested_parents_only)
{
    struct stat st;
    int fd = -1;

    ck_assert_int_eq(fb_path_mkdirs_beneath(rootfd, "x/y/z/file.bin"), FB_OK);
    ck_assert_int_eq(fstatat(rootfd, "x/y/z", &st, AT_SYMLINK_NOFOLLOW), 0);
    ck_assert(S_ISDIR(st.st_mode));
    ck_assert_uint_eq(st.st_mode & 0777, 0755);
    ck_assert_int_ne(fstatat(rootfd, "x/y/z/file.bin", &st, AT_SYMLINK_NOFOLLOW), 0);
    /* Again: everything exists already, still fine. */
    ck_assert_int_eq(fb_path_mkdirs_beneath(rootfd, "x/y/z/file.bin"), FB_OK);
    ck_assert_int_eq(fb_path_open_beneath(&fd, rootfd, "x/y/z/file.bin", O_WRONLY | O_CREAT, 0644), FB_OK);
    close(fd);
}
END_TEST

START_TEST(test_mkdirs_without_parent_does_nothing)
{
    ck_assert_int_eq(fb_path_mkdirs_beneath(rootfd, "file.bin"), FB_OK);
    ck_assert_int_eq(fb_path_mkdirs_beneath(rootfd, ""), FB_OK);
}
END_TEST

START_TEST(test_mkdirs_through_inside_symlink_works)
{
    struct stat st;

    ck_assert_int_eq(fb_path_mkdirs_beneath(rootfd, "sublink/q/file.bin"), FB_OK);
    ck_assert_int_eq(fstatat(rootfd, "sub/q", &st, AT_SYMLINK_NOFOLLOW), 0);
    ck_assert(S_ISDIR(st.st_mode));
}
END_TEST

START_TEST(test_mkdirs_through_escaping_symlink_is_refused)
{
    char p[PATH_MAX + 32];

    ck_assert_int_eq(fb_path_mkdirs_beneath(rootfd, "outdir/newdir/file.bin"), FB_ERR_PATH_ESCAPE);
    ck_assert_int_eq(fb_path_mkdirs_beneath(rootfd, "outdir_abs/newdir/file.bin"), FB_ERR_PATH_ESCAPE);
    ck_assert_int_eq(fb_path_mkdirs_beneath(rootfd, "rootlink/tmp/fb-check-path-new/file"),
                     FB_ERR_PATH_ESCAPE);
    ck_assert_int_eq(fb_path_mkdirs_beneath(rootfd, "dangling_abs/file"), FB_ERR_PATH_ESCAPE);
    ck_assert_int_eq(fb_path_mkdirs_beneath(rootfd, "../outside/newdir/file"), FB_ERR_PATH_ESCAPE);
    snprintf(p, sizeof(p), "%s/newdir", outside);
    ck_assert_int_ne(access(p, F_OK), 0);
    ck_assert_int_ne(access("/tmp/fb-check-path-new", F_OK), 0);
    ck_assert_int_ne(access("/nonexistent-fb-check-path", F_OK), 0);
}
END_TEST

START_TEST(test_mkdirs_through_regular_file_is_bad_path)
{
    ck_assert_int_eq(fb_path_mkdirs_beneath(rootfd, "inside.txt/d/file"), FB_ERR_BAD_PATH);
    ck_assert_int_eq(fb_path_mkdirs_beneath(rootfd, "link_in/d/file"), FB_ERR_BAD_PATH);
}
END_TEST

static Suite *path_suite(void)
{
    Suite *s = suite_create("fb_path");
    TCase *syntax = tcase_create("syntax");
    TCase *fs = tcase_create("filesystem");

    tcase_add_test(syntax, test_check_accepts_ordinary_paths);
    tcase_add_test(syntax, test_check_removes_one_trailing_slash);
    tcase_add_test(syntax, test_check_dotdot_and_absolute_escape);
    tcase_add_test(syntax, test_check_dot_and_empty_components_are_bad);
    tcase_add_test(syntax, test_check_control_characters_are_bad);
    tcase_add_test(syntax, test_check_requires_well_formed_utf8);
    tcase_add_test(syntax, test_check_partial_and_checkpoint_names_are_bad);
    tcase_add_test(syntax, test_check_length_limits);
    tcase_add_test(syntax, test_check_output_capacity_and_in_place);
    tcase_add_test(syntax, test_partial_and_checkpoint_names);
    tcase_add_test(syntax, test_partial_name_errors);
    tcase_add_test(syntax, test_is_partial_name);
    tcase_add_test(syntax, test_pack_names_hidden);
    suite_add_tcase(s, syntax);

    tcase_add_unchecked_fixture(fs, base_setup, base_teardown);
    tcase_add_checked_fixture(fs, fs_setup, fs_teardown);
    tcase_add_test(fs, test_open_plain_file_beneath);
    tcase_add_test(fs, test_open_symlink_staying_inside_is_followed);
    tcase_add_test(fs, test_open_symlink_to_etc_passwd_escapes);
    tcase_add_test(fs, test_open_through_symlink_to_root_escapes);
    tcase_add_test(fs, test_open_relative_symlink_out_escapes);
    tcase_add_test(fs, test_open_dotdot_and_absolute_escape);
    tcase_add_test(fs, test_open_creating_through_escaping_link_is_refused);
    tcase_add_test(fs, test_open_symlink_loop_is_refused);
    tcase_add_test(fs, test_open_missing_and_existing);
    tcase_add_test(fs, test_open_empty_path_is_the_directory_itself);
    tcase_add_test(fs, test_open_always_sets_cloexec_and_creates_with_mode);
    tcase_add_test(fs, test_mkdirs_creates_nested_parents_only);
    tcase_add_test(fs, test_mkdirs_without_parent_does_nothing);
    tcase_add_test(fs, test_mkdirs_through_inside_symlink_works);
    tcase_add_test(fs, test_mkdirs_through_escaping_symlink_is_refused);
    tcase_add_test(fs, test_mkdirs_through_regular_file_is_bad_path);
    suite_add_tcase(s, fs);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(path_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
