/* fb_path: keeps client-supplied paths beneath a docroot.
 *
 * Two layers: fb_path_check rejects bad syntax ("..", absolute, control characters, our own
 * hidden partial names) so errors are clear and early; openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_MAGICLINKS) then makes the kernel enforce containment at every component, which
 * also covers symlinks planted inside the tree and races with a concurrent rename. */
#include "fb_path.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/openat2.h>

#define FB_PARTIAL_SUFFIX ".fbpart"
#define FB_CHECKPOINT_SUFFIX ".fbpart.ckpt"
#define FB_CHECKPOINT_TMP_SUFFIX ".fbpart.ckpt.tmp"
/* Packs (docs/HTTP-API.md, "Packs"): the manifest sidecar beside a pack's partial file, its
 * temporary, the per-file temporaries of the commit, and the pack's own hidden name. */
#define FB_MANIFEST_SUFFIX ".fbpart.manifest"
#define FB_MANIFEST_TMP_SUFFIX ".fbpart.manifest.tmp"
#define FB_UNPACK_SUFFIX ".fbpart.unpack"
#define FB_PACK_PREFIX ".fbpack-"
#define FB_PACK_HEX 32

/* openat2 can be interrupted when opening a FIFO or a file on a network filesystem. */
#define FB_OPEN_EINTR_RETRIES 100

/* True if the LEN bytes at S end with SUFFIX. */
static int fb_ends_with(const char *s, size_t len, const char *suffix)
{
    size_t slen = strlen(suffix);

    return len >= slen && memcmp(s + len - slen, suffix, slen) == 0;
}

/* True if the LEN bytes at NAME are ".fbpack-" and FB_PACK_HEX lower-case hex digits. */
static int fb_is_pack_name(const char *name, size_t len)
{
    size_t plen = strlen(FB_PACK_PREFIX);

    if (len != plen + FB_PACK_HEX || memcmp(name, FB_PACK_PREFIX, plen) != 0)
        return 0;
    for (size_t i = plen; i < len; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
            return 0;
    return 1;
}

/* The partial-name test on a component that is not NUL-terminated. */
static int fb_is_partial_component(const char *name, size_t len)
{
    return len > 0 && name[0] == '.' &&
           (fb_ends_with(name, len, FB_PARTIAL_SUFFIX) || fb_ends_with(name, len, FB_CHECKPOINT_SUFFIX) ||
            fb_ends_with(name, len, FB_CHECKPOINT_TMP_SUFFIX) ||
            fb_ends_with(name, len, FB_MANIFEST_SUFFIX) || fb_ends_with(name, len, FB_MANIFEST_TMP_SUFFIX) ||
            fb_ends_with(name, len, FB_UNPACK_SUFFIX) || fb_is_pack_name(name, len));
}

int fb_path_is_partial_name(const char *name)
{
    return name != NULL && fb_is_partial_component(name, strlen(name));
}

/* Length of the well-formed UTF-8 sequence at S (at most AVAIL bytes), or 0 if it is malformed:
 * truncated, overlong, a surrogate or beyond U+10FFFF (RFC 3629). Paths end up in JSON, which
 * must be valid UTF-8, so a bad byte is refused here rather than deep inside an encoder. */
static size_t fb_utf8_len(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t cp, min;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
        min = 0x10000;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* Checks one component of LEN bytes (LEN > 0, no '/'). */
static fb_err fb_check_component(const char *comp, size_t len)
{
    /* NAME_MAX: the kernel would refuse a longer name anyway, with a less clear error. */
    if ((len == 1 && comp[0] == '.') || len > NAME_MAX || fb_is_partial_component(comp, len))
        return FB_ERR_BAD_PATH;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)comp[i];
        size_t n;

        if (c < 0x20 || c == 0x7f)
            return FB_ERR_BAD_PATH;
        n = fb_utf8_len((const unsigned char *)comp + i, len - i);
        if (n == 0)
            return FB_ERR_BAD_PATH;
        i += n;
    }
    return FB_OK;
}

fb_err fb_path_check(char *out, size_t outlen, const char *relpath)
{
    size_t len;

    if (relpath == NULL || out == NULL)
        return FB_ERR_BAD_PATH;
    if (relpath[0] == '/')
        return FB_ERR_PATH_ESCAPE;
    len = strnlen(relpath, FB_PATH_MAX + 1);
    if (len > FB_PATH_MAX)
        return FB_ERR_BAD_PATH;
    /* One trailing "/" names the same thing ("dir/" is "dir"); more than one is an empty
     * component and is refused below. */
    if (len > 0 && relpath[len - 1] == '/')
        len--;

    /* ".." is checked over the whole path first so that an escape attempt is always reported as
     * one, whatever else is wrong with the path. */
    for (size_t start = 0; start < len;) {
        const char *slash = memchr(relpath + start, '/', len - start);
        size_t clen = (slash != NULL ? (size_t)(slash - relpath) : len) - start;

        if (clen == 2 && relpath[start] == '.' && relpath[start + 1] == '.')
            return FB_ERR_PATH_ESCAPE;
        start += clen + 1;
    }
    for (size_t start = 0; start < len;) {
        const char *slash = memchr(relpath + start, '/', len - start);
        size_t clen = (slash != NULL ? (size_t)(slash - relpath) : len) - start;
        fb_err rv;

        if (clen == 0)
            return FB_ERR_BAD_PATH;
        rv = fb_check_component(relpath + start, clen);
        if (rv != FB_OK)
            return rv;
        /* A '/' as the very last byte (after the trailing one was removed) leaves an empty
         * last component: "a//". */
        if (slash != NULL && start + clen + 1 == len)
            return FB_ERR_BAD_PATH;
        start += clen + 1;
    }
    if (len + 1 > outlen)
        return FB_ERR_BAD_PATH;
    memmove(out, relpath, len); /* memmove: OUT may be RELPATH itself */
    out[len] = '\0';
    return FB_OK;
}

/* openat2 beneath DIRFD; returns the descriptor or -1 with errno set. */
static int fb_openat2(int dirfd, const char *relpath, int flags, mode_t mode)
{
    struct open_how how;
    int fd = -1;

    memset(&how, 0, sizeof(how));
    how.flags = (uint64_t)(unsigned int)(flags | O_CLOEXEC);
    /* openat2 refuses a mode without O_CREAT or O_TMPFILE. */
    if ((flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE)
        how.mode = mode;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    /* "" means the directory itself, which openat2 spells ".". */
    if (relpath[0] == '\0')
        relpath = ".";
    for (int i = 0; i < FB_OPEN_EINTR_RETRIES; i++) {
        fd = (int)syscall(SYS_openat2, dirfd, relpath, &how, sizeof(how));
        if (fd >= 0 || errno != EINTR)
            break;
    }
    return fd;
}

/* Error code for a failed openat2 beneath a docroot. */
static fb_err fb_open_error(int errnum)
{
    /* EXDEV: resolution left DIRFD ("..", absolute symlink, absolute path). ELOOP: a magic link
     * or a symlink loop; either way not something a client may make us follow. */
    if (errnum == EXDEV || errnum == ELOOP)
        return FB_ERR_PATH_ESCAPE;
    /* No openat2 (kernel before 5.6, a seccomp filter, valgrind): there is no safe fallback here,
     * so say it is our problem rather than an I/O error. */
    if (errnum == ENOSYS)
        return FB_ERR_INTERNAL;
    return fb_err_from_errno(errnum);
}

fb_err fb_path_open_beneath(int *pfd, int dirfd, const char *relpath, int flags, mode_t mode)
{
    int fd;

    *pfd = -1;
    if (relpath == NULL)
        return FB_ERR_BAD_PATH;
    fd = fb_openat2(dirfd, relpath, flags, mode);
    if (fd < 0)
        return fb_open_error(errno);
    *pfd = fd;
    return FB_OK;
}

fb_err fb_path_mkdirs_beneath(int dirfd, const char *relpath)
{
    char prefix[PATH_MAX];
    const char *last_slash;
    size_t plen, start = 0;
    int parentfd = -1;
    fb_err rv = FB_OK;

    if (relpath == NULL)
        return FB_ERR_BAD_PATH;
    last_slash = strrchr(relpath, '/');
    if (last_slash == NULL)
        return FB_OK; /* no parent below DIRFD */
    plen = (size_t)(last_slash - relpath);
    if (plen >= sizeof(prefix))
        return FB_ERR_BAD_PATH;
    memcpy(prefix, relpath, plen);
    prefix[plen] = '\0';

    /* Walk "a", "a/b", "a/b/c": each prefix is resolved from DIRFD with RESOLVE_BENEATH, so a
     * symlink inside the tree that stays inside works like in fb_path_open_beneath, and one that
     * leaves is refused before anything is created through it. */
    while (start < plen) {
        char *slash = memchr(prefix + start, '/', plen - start);
        size_t end = slash != NULL ? (size_t)(slash - prefix) : plen;
        char saved = prefix[end];
        int fd;

        if (end == start) {
            rv = FB_ERR_BAD_PATH; /* empty component: "a//b" */
            goto out;
        }
        prefix[end] = '\0';
        fd = fb_openat2(dirfd, prefix, O_PATH | O_DIRECTORY, 0);
        if (fd < 0 && errno == ENOENT) {
            /* Create it in the parent we already hold; losing a race to another creator is fine. */
            if (mkdirat(parentfd >= 0 ? parentfd : dirfd, prefix + start, 0755) != 0 && errno != EEXIST) {
                rv = fb_open_error(errno);
                prefix[end] = saved;
                goto out;
            }
            fd = fb_openat2(dirfd, prefix, O_PATH | O_DIRECTORY, 0);
        }
        prefix[end] = saved;
        if (fd < 0) {
            /* ENOTDIR: a component exists but is a file (or a symlink to one). */
            rv = errno == ENOTDIR ? FB_ERR_BAD_PATH : fb_open_error(errno);
            goto out;
        }
        if (parentfd >= 0)
            close(parentfd);
        parentfd = fd;
        start = end + 1;
    }
out:
    if (parentfd >= 0)
        close(parentfd);
    return rv;
}

/* Writes DIR + "." + BASE + SUFFIX for RELPATH = DIR + BASE. */
static fb_err fb_path_hidden_name(char *out, size_t outlen, const char *relpath, const char *suffix)
{
    const char *base;
    size_t dirlen;
    int n;

    if (out == NULL || relpath == NULL || relpath[0] == '\0')
        return FB_ERR_BAD_PATH;
    base = strrchr(relpath, '/');
    base = base != NULL ? base + 1 : relpath;
    if (base[0] == '\0')
        return FB_ERR_BAD_PATH; /* "dir/": no file name to hide */
    dirlen = (size_t)(base - relpath);
    if (dirlen > INT_MAX)
        return FB_ERR_BAD_PATH;
    n = snprintf(out, outlen, "%.*s.%s%s", (int)dirlen, relpath, base, suffix);
    if (n < 0 || (size_t)n >= outlen)
        return FB_ERR_BAD_PATH;
    return FB_OK;
}

fb_err fb_path_partial_name(char *out, size_t outlen, const char *relpath)
{
    return fb_path_hidden_name(out, outlen, relpath, FB_PARTIAL_SUFFIX);
}

fb_err fb_path_checkpoint_name(char *out, size_t outlen, const char *relpath)
{
    return fb_path_hidden_name(out, outlen, relpath, FB_CHECKPOINT_SUFFIX);
}

fb_err fb_path_manifest_name(char *out, size_t outlen, const char *relpath)
{
    return fb_path_hidden_name(out, outlen, relpath, FB_MANIFEST_SUFFIX);
}
