/* fb_filesum: a committed file's SHA-256 kept with the file (extended attribute), and the RFC
 * 9530 Repr-Digest field that serves it. See fb_filesum.h. */
#include "fb_filesum.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>

#include <openssl/evp.h>

#include "fb_util.h"

#define FILESUM_VERSION "1"

size_t fb_filesum_format(char *out, size_t outlen, const uint8_t sha[32], const struct stat *st,
                         uint64_t set_ns)
{
    char hex[65];
    int n;

    fb_hex_encode(hex, sha, 32);
    n = snprintf(out, outlen, FILESUM_VERSION " %s %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64,
                 hex, (uint64_t)st->st_size, fb_timespec_ns(&st->st_mtim), (uint64_t)st->st_dev,
                 (uint64_t)st->st_ino, set_ns);
    return n < 0 || (size_t)n >= outlen ? 0 : (size_t)n;
}

/* One unsigned decimal number of at most 20 digits from *P (up to END), then a space or END. */
static int filesum_number(uint64_t *pv, const char **p, const char *end)
{
    uint64_t v = 0;
    int digits = 0;

    while (*p < end && **p >= '0' && **p <= '9') {
        unsigned d = (unsigned)(**p - '0');

        if (++digits > 20 || v > (UINT64_MAX - d) / 10)
            return 0;
        v = v * 10 + d;
        (*p)++;
    }
    if (digits == 0)
        return 0;
    if (*p < end) {
        if (**p != ' ')
            return 0;
        (*p)++;
    }
    *pv = v;
    return 1;
}

int fb_filesum_parse(uint8_t sha[32], const char *value, size_t len, const struct stat *st)
{
    const char *p = value, *end = value + len;
    char hex[65];
    uint64_t size, mtime, dev, ino, set_ns, ctime;

    if (value == NULL || len < 2 + 64 || len >= FB_FILESUM_MAX || memcmp(p, FILESUM_VERSION " ", 2) != 0)
        return 0;
    p += 2;
    memcpy(hex, p, 64);
    hex[64] = '\0';
    p += 64;
    if (p >= end || *p != ' ')
        return 0;
    p++;
    if (!filesum_number(&size, &p, end) || !filesum_number(&mtime, &p, end) ||
        !filesum_number(&dev, &p, end) || !filesum_number(&ino, &p, end) ||
        !filesum_number(&set_ns, &p, end) || p != end)
        return 0;
    ctime = fb_timespec_ns(&st->st_ctim);
    if (size != (uint64_t)st->st_size || mtime != fb_timespec_ns(&st->st_mtim) ||
        dev != (uint64_t)st->st_dev || ino != (uint64_t)st->st_ino ||
        ctime + FB_FILESUM_CTIME_EARLY_NS < set_ns || ctime > set_ns + FB_FILESUM_CTIME_WINDOW_NS)
        return 0;
    return fb_hex_decode(sha, 32, hex) == FB_OK;
}

fb_err fb_filesum_set(int fd, const uint8_t sha[32])
{
    char value[FB_FILESUM_MAX];
    struct stat st;
    size_t n;

    if (fstat(fd, &st) != 0)
        return fb_err_from_errno(errno);
    n = fb_filesum_format(value, sizeof(value), sha, &st, fb_time_now_ns());
    if (n == 0)
        return FB_ERR_INTERNAL;
    if (fsetxattr(fd, FB_FILESUM_XATTR, value, n, 0) != 0)
        return FB_ERR_IO;
    return FB_OK;
}

int fb_filesum_get(uint8_t sha[32], int fd)
{
    char value[FB_FILESUM_MAX];
    struct stat st;
    ssize_t n = fgetxattr(fd, FB_FILESUM_XATTR, value, sizeof(value));

    if (n <= 0 || fstat(fd, &st) != 0)
        return 0;
    return fb_filesum_parse(sha, value, (size_t)n, &st);
}

void fb_repr_digest_format(char out[FB_REPR_DIGEST_LEN], const uint8_t sha[32])
{
    memcpy(out, "sha-256=:", 9);
    EVP_EncodeBlock((unsigned char *)out + 9, sha, 32); /* 44 characters and a NUL */
    out[53] = ':';
    out[54] = '\0';
}

int fb_repr_digest_parse(uint8_t sha[32], const char *value)
{
    const char *p = value;

    /* Each member: optional spaces, key, "=", ":base64:", optional parameters, up to ",".
     * Bounded by the string: every step moves P on or stops. */
    while (p != NULL && *p != '\0') {
        const char *key, *b64, *close;
        unsigned char raw[48];
        int n;

        while (*p == ' ' || *p == '\t')
            p++;
        key = p;
        while (*p != '\0' && *p != '=' && *p != ',')
            p++;
        if (*p == '=' && (size_t)(p - key) == 7 && strncmp(key, "sha-256", 7) == 0 && p[1] == ':') {
            b64 = p + 2;
            close = strchr(b64, ':');
            if (close == NULL || close - b64 != 44)
                return 0;
            n = EVP_DecodeBlock(raw, (const unsigned char *)b64, 44);
            /* 44 characters decode to 33 bytes; "=" padding leaves 32 of them */
            if (n != 33 || b64[43] != '=' || b64[42] == '=')
                return 0;
            memcpy(sha, raw, 32);
            return 1;
        }
        p = strchr(p, ',');
        if (p != NULL)
            p++;
    }
    return 0;
}
