/* fb_checkpoint: the progress sidecar beside a partial file (DESIGN.md section 5).
 *
 * File layout (host byte order: the sidecar never leaves the machine that wrote it):
 *   ckpt_header (40 bytes); the identity block (48 bytes: the partial file's st_dev and st_ino,
 *   the source identity); with FB_CHECKPOINT_FLAG_SHA256 in header.flags, the session's
 *   expected SHA-256 (32 bytes); with FB_CHECKPOINT_FLAG_SOURCE_MTIME, the client file's
 *   modification time (uint64_t ns); then bitmap_words_used 64-bit words (ceil(nchunks / 64));
 *   then SHA-256 over every preceding byte.
 * Versions 1 to 3 are no longer read: their chunks cannot be tied to a partial inode and a
 * source, so the upload starts over.
 * Writers serialise on an flock of RELNAME.tmp (several Apache children and udpd may checkpoint
 * the same session at once), write and fdatasync it, and rename it over RELNAME, then fsync the
 * directory. A stale RELNAME.tmp left by a crash is simply reused. Readers validate every length
 * and the digest; anything odd is FB_ERR_IO and the caller starts from zero. */
#include "fb_checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#define CKPT_FILE_MODE 0660 /* Apache and udpd may run as different users sharing a group */
#define CKPT_TMP_SUFFIX ".tmp"
#define CKPT_DIGEST_LEN 32
#define CKPT_WRITE_ATTEMPTS 1000 /* rounds lost to other writers renaming the tmp under us */

typedef struct ckpt_header {
    char magic[8];
    uint32_t version;
    uint32_t chunk_size;
    uint64_t size;
    uint64_t nchunks;
    uint32_t bitmap_words_used;
    uint32_t flags; /* FB_CHECKPOINT_FLAG_*; version 1: reserved, 0 */
} ckpt_header;

_Static_assert(sizeof(FB_CHECKPOINT_MAGIC) - 1 == 8, "checkpoint magic is 8 bytes");
_Static_assert(offsetof(ckpt_header, version) == 8 && offsetof(ckpt_header, chunk_size) == 12 &&
                   offsetof(ckpt_header, size) == 16 && offsetof(ckpt_header, nchunks) == 24 &&
                   offsetof(ckpt_header, bitmap_words_used) == 32 && sizeof(ckpt_header) == 40,
               "checkpoint header layout");

typedef struct ckpt_identity {
    uint64_t part_dev;
    uint64_t part_ino;
    uint8_t source_id[32];
} ckpt_identity;

_Static_assert(sizeof(ckpt_identity) == 48 && offsetof(ckpt_identity, source_id) == 16,
               "checkpoint identity layout");
_Static_assert(sizeof(((fb_checkpoint *)0)->source_id) == 32, "source identity is 32 bytes");

#define CKPT_KNOWN_FLAGS (FB_CHECKPOINT_FLAG_SHA256 | FB_CHECKPOINT_FLAG_SOURCE_MTIME)
#define CKPT_MTIME_LEN 8
#define CKPT_SHA_LEN 32
_Static_assert(sizeof(((fb_checkpoint *)0)->expected_sha256) == CKPT_SHA_LEN, "expected digest is 32 bytes");

#define CKPT_MAX_LEN                                                                                         \
    (sizeof(ckpt_header) + sizeof(ckpt_identity) + CKPT_SHA_LEN + CKPT_MTIME_LEN +                          \
     FB_BITMAP_WORDS * sizeof(uint64_t) + CKPT_DIGEST_LEN)

/* Bytes between the identity block and the bitmap for FLAGS. */
static size_t ckpt_optional_len(uint32_t flags)
{
    return ((flags & FB_CHECKPOINT_FLAG_SHA256) ? CKPT_SHA_LEN : 0) +
           ((flags & FB_CHECKPOINT_FLAG_SOURCE_MTIME) ? CKPT_MTIME_LEN : 0);
}

/* Splits RELNAME into its directory part (or ".") and its last component, refusing absolute
 * names, empty, "." and ".." components: the name must stay beneath DIRFD. */
static fb_err ckpt_split(char *dir, size_t dirlen, const char **pbase, const char *relname)
{
    size_t len;
    const char *slash, *p;

    if (relname == NULL || relname[0] == '\0' || relname[0] == '/')
        return FB_ERR_BAD_PATH;
    len = strlen(relname);
    if (len + sizeof(CKPT_TMP_SUFFIX) > PATH_MAX)
        return FB_ERR_BAD_PATH;
    /* Check every component (bounded by the string). */
    p = relname;
    for (;;) {
        const char *end = strchr(p, '/');
        size_t clen = end ? (size_t)(end - p) : strlen(p);

        if (clen == 0 || (clen == 1 && p[0] == '.') || (clen == 2 && p[0] == '.' && p[1] == '.'))
            return clen == 2 ? FB_ERR_PATH_ESCAPE : FB_ERR_BAD_PATH;
        if (clen > NAME_MAX - (sizeof(CKPT_TMP_SUFFIX) - 1))
            return FB_ERR_BAD_PATH;
        if (end == NULL)
            break;
        p = end + 1;
    }
    slash = strrchr(relname, '/');
    if (slash == NULL) {
        if (dirlen < 2)
            return FB_ERR_BAD_PATH;
        memcpy(dir, ".", 2);
        *pbase = relname;
    } else {
        size_t dlen = (size_t)(slash - relname);

        if (dlen + 1 > dirlen)
            return FB_ERR_BAD_PATH;
        memcpy(dir, relname, dlen);
        dir[dlen] = '\0';
        *pbase = slash + 1;
    }
    return FB_OK;
}

/* Opens directory DIR beneath DIRFD; the kernel keeps symlinks from leading outside. */
static fb_err ckpt_open_dir(int *pfd, int dirfd, const char *dir)
{
    struct open_how how;
    long fd;

    memset(&how, 0, sizeof(how));
    how.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    fd = syscall(SYS_openat2, dirfd, dir, &how, sizeof(how));
    if (fd < 0 && errno == ENOSYS) /* kernels before 5.6: components were checked above */
        fd = openat(dirfd, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return fb_err_from_errno(errno);
    *pfd = (int)fd;
    return FB_OK;
}

static fb_err ckpt_write_all(int fd, const unsigned char *buf, size_t len)
{
    size_t done = 0;

    /* Each round writes at least one byte or fails: bounded by LEN (EINTR aside). */
    while (done < len) {
        ssize_t n = write(fd, buf + done, len - done);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fb_err_from_errno(errno);
        }
        if (n == 0)
            return FB_ERR_IO;
        done += (size_t)n;
    }
    return FB_OK;
}

static int ckpt_sha256(unsigned char out[CKPT_DIGEST_LEN], const unsigned char *buf, size_t len)
{
    unsigned int outlen = 0;

    return EVP_Digest(buf, len, out, &outlen, EVP_sha256(), NULL) == 1 && outlen == CKPT_DIGEST_LEN;
}

/* Number of bitmap words that hold NCHUNKS bits. */
static size_t ckpt_words(uint64_t nchunks)
{
    return (size_t)((nchunks + 63) / 64);
}

/* Mask of the bits of the last used word that name real chunks. */
static uint64_t ckpt_last_word_mask(uint64_t nchunks)
{
    unsigned rem = (unsigned)(nchunks % 64);

    return rem == 0 ? UINT64_MAX : (UINT64_C(1) << rem) - 1;
}

fb_err fb_checkpoint_write(int dirfd, const char *relname, const fb_checkpoint *cp)
{
    char dir[PATH_MAX], tmpname[NAME_MAX + 1];
    const char *base;
    unsigned char *buf = NULL;
    ckpt_header hdr;
    ckpt_identity ident;
    size_t words, len, shalen, bitmap_off;
    int pfd = -1, fd = -1, n;
    fb_err rc;

    if (cp == NULL || cp->chunk_size == 0 || cp->nchunks > FB_BITMAP_BITS ||
        cp->nchunks != fb_table_nchunks_for(cp->size, cp->chunk_size) || (cp->flags & ~CKPT_KNOWN_FLAGS) != 0)
        return FB_ERR_INTERNAL;
    rc = ckpt_split(dir, sizeof(dir), &base, relname);
    if (rc != FB_OK)
        return rc;
    n = snprintf(tmpname, sizeof(tmpname), "%s%s", base, CKPT_TMP_SUFFIX);
    if (n < 0 || (size_t)n >= sizeof(tmpname))
        return FB_ERR_BAD_PATH;

    words = ckpt_words(cp->nchunks);
    shalen = (cp->flags & FB_CHECKPOINT_FLAG_SHA256) ? CKPT_SHA_LEN : 0;
    bitmap_off = sizeof(hdr) + sizeof(ident) + ckpt_optional_len(cp->flags);
    len = bitmap_off + words * sizeof(uint64_t) + CKPT_DIGEST_LEN;
    buf = calloc(1, len);
    if (buf == NULL)
        return FB_ERR_NOMEM;
    memset(&hdr, 0, sizeof(hdr));
    memcpy(hdr.magic, FB_CHECKPOINT_MAGIC, sizeof(hdr.magic));
    hdr.version = FB_CHECKPOINT_VERSION;
    hdr.chunk_size = cp->chunk_size;
    hdr.size = cp->size;
    hdr.nchunks = cp->nchunks;
    hdr.bitmap_words_used = (uint32_t)words;
    hdr.flags = cp->flags;
    memcpy(buf, &hdr, sizeof(hdr));
    memset(&ident, 0, sizeof(ident));
    ident.part_dev = cp->part_dev;
    ident.part_ino = cp->part_ino;
    memcpy(ident.source_id, cp->source_id, sizeof(ident.source_id));
    memcpy(buf + sizeof(hdr), &ident, sizeof(ident));
    if (shalen > 0)
        memcpy(buf + sizeof(hdr) + sizeof(ident), cp->expected_sha256, CKPT_SHA_LEN);
    if (cp->flags & FB_CHECKPOINT_FLAG_SOURCE_MTIME)
        memcpy(buf + sizeof(hdr) + sizeof(ident) + shalen, &cp->source_mtime_ns, CKPT_MTIME_LEN);
    memcpy(buf + bitmap_off, cp->bitmap, words * sizeof(uint64_t));
    if (words > 0) { /* bits past the last chunk mean nothing: store them as 0 */
        uint64_t last;

        memcpy(&last, buf + bitmap_off + (words - 1) * sizeof(uint64_t), sizeof(last));
        last &= ckpt_last_word_mask(cp->nchunks);
        memcpy(buf + bitmap_off + (words - 1) * sizeof(uint64_t), &last, sizeof(last));
    }
    if (!ckpt_sha256(buf + len - CKPT_DIGEST_LEN, buf, len - CKPT_DIGEST_LEN)) {
        rc = FB_ERR_INTERNAL;
        goto out;
    }

    rc = ckpt_open_dir(&pfd, dirfd, dir);
    if (rc != FB_OK)
        goto out;

    rc = FB_ERR_IO;
    for (int attempt = 0; attempt < CKPT_WRITE_ATTEMPTS; attempt++) {
        struct stat held, named;

        /* O_NONBLOCK: a FIFO planted under the tmp name must not hang us (refused below). */
        fd = openat(pfd, tmpname, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, CKPT_FILE_MODE);
        if (fd < 0) {
            rc = errno == ELOOP ? FB_ERR_IO : fb_err_from_errno(errno);
            goto out;
        }
        if (flock(fd, LOCK_EX) != 0 || fstat(fd, &held) != 0) {
            rc = fb_err_from_errno(errno);
            goto out;
        }
        if (!S_ISREG(held.st_mode)) {
            rc = FB_ERR_IO;
            goto out;
        }
        /* A tmp name with other links could be a planted hard link to some other file: never
         * truncate that; drop the name and start again. */
        if (held.st_nlink > 1) {
            close(fd);
            fd = -1;
            if (unlinkat(pfd, tmpname, 0) != 0 && errno != ENOENT) {
                rc = fb_err_from_errno(errno);
                goto out;
            }
            continue;
        }
        /* Another writer may have renamed this inode into place while we waited for the lock:
         * then it is the live checkpoint and must not be truncated. Start again. */
        if (fstatat(pfd, tmpname, &named, AT_SYMLINK_NOFOLLOW) != 0 || named.st_ino != held.st_ino ||
            named.st_dev != held.st_dev) {
            close(fd);
            fd = -1;
            continue;
        }
        if (held.st_uid == geteuid())
            (void)fchmod(fd, CKPT_FILE_MODE); /* group access whatever the umask; best effort */
        if (ftruncate(fd, 0) != 0) {
            rc = fb_err_from_errno(errno);
            goto out;
        }
        rc = ckpt_write_all(fd, buf, len);
        if (rc != FB_OK)
            goto out;
        if (fdatasync(fd) != 0) {
            rc = fb_err_from_errno(errno);
            goto out;
        }
        if (renameat(pfd, tmpname, pfd, base) != 0) {
            rc = fb_err_from_errno(errno);
            goto out;
        }
        if (fsync(pfd) != 0) {
            rc = fb_err_from_errno(errno);
            goto out;
        }
        rc = FB_OK;
        break;
    }

out:
    if (fd >= 0)
        close(fd); /* also drops the lock */
    if (pfd >= 0)
        close(pfd);
    free(buf);
    return rc;
}

fb_err fb_checkpoint_read(fb_checkpoint *cp, int dirfd, const char *relname)
{
    char dir[PATH_MAX];
    const char *base;
    unsigned char *buf = NULL;
    unsigned char digest[CKPT_DIGEST_LEN];
    ckpt_header hdr;
    ckpt_identity ident;
    struct stat st;
    size_t len, words, shalen, bitmap_off, done = 0;
    int pfd = -1, fd = -1;
    fb_err rc;

    rc = ckpt_split(dir, sizeof(dir), &base, relname);
    if (rc != FB_OK)
        return rc;
    rc = ckpt_open_dir(&pfd, dirfd, dir);
    if (rc != FB_OK)
        return rc;
    fd = openat(pfd, base, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        rc = errno == ENOENT ? FB_ERR_NOT_FOUND : errno == ELOOP ? FB_ERR_IO : fb_err_from_errno(errno);
        goto out;
    }
    rc = FB_ERR_IO;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        goto out;
    if ((uint64_t)st.st_size < sizeof(hdr) + sizeof(ident) + CKPT_DIGEST_LEN ||
        (uint64_t)st.st_size > CKPT_MAX_LEN)
        goto out;
    len = (size_t)st.st_size;
    buf = malloc(len);
    if (buf == NULL) {
        rc = FB_ERR_NOMEM;
        goto out;
    }
    while (done < len) { /* each round reads at least one byte or stops */
        ssize_t n = pread(fd, buf + done, len - done, (off_t)done);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        done += (size_t)n;
    }

    if (!ckpt_sha256(digest, buf, len - CKPT_DIGEST_LEN) ||
        CRYPTO_memcmp(digest, buf + len - CKPT_DIGEST_LEN, CKPT_DIGEST_LEN) != 0)
        goto out;
    memcpy(&hdr, buf, sizeof(hdr));
    if (memcmp(hdr.magic, FB_CHECKPOINT_MAGIC, sizeof(hdr.magic)) != 0 ||
        hdr.version != FB_CHECKPOINT_VERSION || (hdr.flags & ~CKPT_KNOWN_FLAGS) != 0 || hdr.chunk_size == 0 ||
        hdr.nchunks > FB_BITMAP_BITS || hdr.nchunks != fb_table_nchunks_for(hdr.size, hdr.chunk_size))
        goto out;
    words = ckpt_words(hdr.nchunks);
    shalen = (hdr.flags & FB_CHECKPOINT_FLAG_SHA256) ? CKPT_SHA_LEN : 0;
    bitmap_off = sizeof(hdr) + sizeof(ident) + ckpt_optional_len(hdr.flags);
    if (hdr.bitmap_words_used != words || len != bitmap_off + words * sizeof(uint64_t) + CKPT_DIGEST_LEN)
        goto out;

    memset(cp, 0, sizeof(*cp));
    cp->size = hdr.size;
    cp->chunk_size = hdr.chunk_size;
    cp->nchunks = hdr.nchunks;
    cp->flags = hdr.flags;
    memcpy(&ident, buf + sizeof(hdr), sizeof(ident));
    cp->part_dev = ident.part_dev;
    cp->part_ino = ident.part_ino;
    memcpy(cp->source_id, ident.source_id, sizeof(cp->source_id));
    if (shalen > 0)
        memcpy(cp->expected_sha256, buf + sizeof(hdr) + sizeof(ident), CKPT_SHA_LEN);
    if (hdr.flags & FB_CHECKPOINT_FLAG_SOURCE_MTIME)
        memcpy(&cp->source_mtime_ns, buf + sizeof(hdr) + sizeof(ident) + shalen, CKPT_MTIME_LEN);
    memcpy(cp->bitmap, buf + bitmap_off, words * sizeof(uint64_t));
    if (words > 0 && (cp->bitmap[words - 1] & ~ckpt_last_word_mask(hdr.nchunks)) != 0) {
        memset(cp, 0, sizeof(*cp));
        goto out;
    }
    rc = FB_OK;

out:
    if (fd >= 0)
        close(fd);
    if (pfd >= 0)
        close(pfd);
    free(buf);
    return rc;
}

fb_err fb_checkpoint_remove(int dirfd, const char *relname)
{
    char dir[PATH_MAX], tmpname[NAME_MAX + 1];
    const char *base;
    int pfd = -1, n;
    fb_err rc;

    rc = ckpt_split(dir, sizeof(dir), &base, relname);
    if (rc != FB_OK)
        return rc;
    n = snprintf(tmpname, sizeof(tmpname), "%s%s", base, CKPT_TMP_SUFFIX);
    if (n < 0 || (size_t)n >= sizeof(tmpname))
        return FB_ERR_BAD_PATH;
    rc = ckpt_open_dir(&pfd, dirfd, dir);
    if (rc != FB_OK)
        return rc == FB_ERR_NOT_FOUND ? FB_OK : rc;
    if (unlinkat(pfd, base, 0) != 0 && errno != ENOENT)
        rc = fb_err_from_errno(errno);
    /* A tmp left by a crashed writer goes too; one being written by a live writer reappears
     * under the real name only if that writer finishes after us, which the caller orders. */
    if (unlinkat(pfd, tmpname, 0) != 0 && errno != ENOENT && rc == FB_OK)
        rc = fb_err_from_errno(errno);
    close(pfd);
    return rc;
}
