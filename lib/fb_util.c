/* fb_util: small helpers shared by every part of libfb: hex encoding, random bytes from
 * OpenSSL, SHA-256 of an open file, wall and monotonic clocks, and constant-time comparison.
 * Digests and randomness come from OpenSSL; nothing here implements a primitive itself. */
#include "fb_util.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

/* Read size for hashing: large enough to keep the syscall count low, small enough to allocate
 * per call in a busy server. */
#define FB_HASH_BLOCK (1024u * 1024u)

void fb_hex_encode(char *out, const unsigned char *in, size_t len)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0x0f];
    }
    out[2 * len] = '\0';
}

/* Value of one hex digit, or -1. */
static int fb_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

fb_err fb_hex_decode(unsigned char *out, size_t len, const char *in)
{
    if (in == NULL)
        return FB_ERR_BAD_REQUEST;
    /* Exactly 2*LEN digits: the string must end right there (strnlen never reads past it). */
    if (len > (SIZE_MAX - 1) / 2 || strnlen(in, 2 * len + 1) != 2 * len)
        return FB_ERR_BAD_REQUEST;
    for (size_t i = 0; i < len; i++) {
        int hi = fb_hex_digit(in[2 * i]);
        int lo = fb_hex_digit(in[2 * i + 1]);

        if (hi < 0 || lo < 0)
            return FB_ERR_BAD_REQUEST;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return FB_OK;
}

fb_err fb_random_bytes(unsigned char *out, size_t len)
{
    /* RAND_bytes takes an int: feed it in bounded pieces. */
    while (len > 0) {
        size_t n = len > INT_MAX ? INT_MAX : len;

        if (RAND_bytes(out, (int)n) != 1)
            return FB_ERR_INTERNAL;
        out += n;
        len -= n;
    }
    return FB_OK;
}

fb_err fb_sha256_fd(unsigned char out[FB_SHA256_LEN], int fd, uint64_t size)
{
    fb_err rv = FB_ERR_INTERNAL;
    EVP_MD_CTX *ctx = NULL;
    unsigned char *buf = NULL;
    unsigned int outlen = 0;
    uint64_t done = 0;

    if (fd < 0 || size > (uint64_t)INT64_MAX)
        return FB_ERR_BAD_REQUEST;
    buf = malloc(FB_HASH_BLOCK);
    ctx = EVP_MD_CTX_new();
    if (buf == NULL || ctx == NULL) {
        rv = FB_ERR_NOMEM;
        goto out;
    }
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        goto out;
    while (done < size) {
        uint64_t want = size - done;
        ssize_t n;

        if (want > FB_HASH_BLOCK)
            want = FB_HASH_BLOCK;
        n = pread(fd, buf, (size_t)want, (off_t)done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rv = FB_ERR_IO;
            goto out;
        }
        if (n == 0) {
            /* The file is shorter than the caller said: its digest would be meaningless. */
            rv = FB_ERR_IO;
            goto out;
        }
        if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1)
            goto out;
        done += (uint64_t)n;
    }
    if (EVP_DigestFinal_ex(ctx, out, &outlen) != 1 || outlen != FB_SHA256_LEN)
        goto out;
    rv = FB_OK;
out:
    EVP_MD_CTX_free(ctx);
    free(buf);
    return rv;
}

/* Nanoseconds on CLOCK; both clocks exist on every Linux, so failure is not expected. */
static uint64_t fb_time_ns(clockid_t clock)
{
    struct timespec ts;

    if (clock_gettime(clock, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t fb_time_now_ns(void)
{
    return fb_time_ns(CLOCK_REALTIME);
}

uint64_t fb_time_mono_ns(void)
{
    return fb_time_ns(CLOCK_MONOTONIC);
}

#define FB_EINTR_RETRIES 1000 /* a signal storm cannot keep a read or write looping for ever */

fb_err fb_pread_all(int fd, void *buf, size_t len, uint64_t off)
{
    unsigned char *p = buf;
    int eintr = 0;

    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);

        if (n < 0) {
            if (errno == EINTR && eintr++ < FB_EINTR_RETRIES)
                continue;
            return FB_ERR_IO;
        }
        if (n == 0) {
            errno = 0;
            return FB_ERR_CHANGED;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return FB_OK;
}

fb_err fb_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    const unsigned char *p = buf;
    int eintr = 0;

    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);

        if (n < 0) {
            if (errno == EINTR && eintr++ < FB_EINTR_RETRIES)
                continue;
            return fb_err_from_errno(errno) == FB_ERR_DISK_FULL ? FB_ERR_DISK_FULL : FB_ERR_IO;
        }
        if (n == 0) {
            errno = EIO;
            return FB_ERR_IO;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return FB_OK;
}

int fb_sock_rx_timestamps(int fd)
{
    int one = 1;

    return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one));
}

int fb_sock_tcp_pace(int fd)
{
    unsigned int bytes_per_s = 0xfffffffeu; /* ~0u would mean "no limit" and leave pacing off */

    return setsockopt(fd, SOL_SOCKET, SO_MAX_PACING_RATE, &bytes_per_s, sizeof(bytes_per_s));
}

uint64_t fb_timespec_ns(const struct timespec *t)
{
    return t->tv_sec < 0 ? 0 : (uint64_t)t->tv_sec * 1000000000ull + (uint64_t)t->tv_nsec;
}

fb_err fb_mtime_parse(uint64_t *pns, const char *s)
{
    uint64_t sec = 0, frac = 0;
    size_t i = 0, nd;

    if (s == NULL)
        return FB_ERR_BAD_REQUEST;
    for (nd = 0; s[i] >= '0' && s[i] <= '9'; i++, nd++) {
        if (nd == 10)
            return FB_ERR_BAD_REQUEST;
        sec = sec * 10 + (uint64_t)(s[i] - '0');
    }
    if (nd == 0 || sec > FB_MTIME_MAX_S)
        return FB_ERR_BAD_REQUEST;
    if (s[i] == '.') {
        i++;
        for (nd = 0; s[i] >= '0' && s[i] <= '9'; i++, nd++) {
            if (nd == 9)
                return FB_ERR_BAD_REQUEST;
            frac = frac * 10 + (uint64_t)(s[i] - '0');
        }
        if (nd == 0)
            return FB_ERR_BAD_REQUEST;
        for (; nd < 9; nd++) /* a decimal fraction: scale to ns */
            frac *= 10;
    }
    if (s[i] != '\0')
        return FB_ERR_BAD_REQUEST;
    *pns = sec * 1000000000ull + frac;
    return FB_OK;
}

int64_t fb_time_real_minus_mono_us(void)
{
    return (int64_t)(fb_time_now_ns() / 1000) - (int64_t)(fb_time_mono_ns() / 1000);
}

uint64_t fb_time_rx_arrival_us(const struct msghdr *mh, uint64_t now_us, int64_t real_minus_mono_us)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c != NULL; c = CMSG_NXTHDR((struct msghdr *)mh, c)) {
        struct timespec ts;
        int64_t t;

        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_TIMESTAMPNS ||
            c->cmsg_len < CMSG_LEN(sizeof(ts)))
            continue;
        memcpy(&ts, CMSG_DATA(c), sizeof(ts));
        t = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000 - real_minus_mono_us;
        if (t <= 0 || (uint64_t)t > now_us || now_us - (uint64_t)t > 1000000)
            return now_us;
        return (uint64_t)t;
    }
    return now_us;
}

int fb_mem_equal_ct(const void *a, const void *b, size_t len)
{
    if (len == 0)
        return 1;
    return CRYPTO_memcmp(a, b, len) == 0;
}
