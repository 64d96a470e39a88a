/* fb_util: small helpers every part needs: hex, random bytes, SHA-256 of a file, time. */
#ifndef FB_UTIL_H
#define FB_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "fb_err.h"

#define FB_SHA256_LEN 32
#define FB_SHA256_HEX_LEN 64

/* Lower-case hex of LEN bytes into OUT (needs 2*LEN+1). */
void fb_hex_encode(char *out, const unsigned char *in, size_t len);
/* Decodes exactly 2*LEN hex characters (either case) from IN; FB_ERR_BAD_REQUEST otherwise. */
fb_err fb_hex_decode(unsigned char *out, size_t len, const char *in);

/* Cryptographically random bytes (OpenSSL RAND_bytes). */
fb_err fb_random_bytes(unsigned char *out, size_t len);

/* SHA-256 of the first SIZE bytes of the open file FD (pread, no seek). */
fb_err fb_sha256_fd(unsigned char out[FB_SHA256_LEN], int fd, uint64_t size);

/* CLOCK_REALTIME and CLOCK_MONOTONIC in nanoseconds. */
uint64_t fb_time_now_ns(void);
uint64_t fb_time_mono_ns(void);

/* Reads exactly LEN bytes of FD at OFF (pread, retrying short reads and EINTR). FB_OK;
 * FB_ERR_CHANGED when the file ends first (errno 0: it is shorter than the caller knows);
 * FB_ERR_IO otherwise (errno says why). */
fb_err fb_pread_all(int fd, void *buf, size_t len, uint64_t off);

/* Writes all LEN bytes of BUF to FD at OFF (pwrite, retrying short writes and EINTR). FB_OK;
 * FB_ERR_DISK_FULL (ENOSPC, EDQUOT); FB_ERR_IO otherwise (errno says why; EIO for a write
 * that wrote nothing). */
fb_err fb_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);

/* Kernel receive timestamps (SO_TIMESTAMPNS), so a receiver measures when a datagram reached
 * the host, not when a busy process got round to reading it: arrival times, and the receive
 * rate and delay samples made of them, then describe the network rather than the scheduler.
 *
 * fb_sock_rx_timestamps asks for them on FD (0, or -1 with errno: callers carry on without).
 * fb_time_rx_arrival_us returns the monotonic time (us) of a received message from its
 * SCM_TIMESTAMPNS control message, given NOW_US (monotonic) and REAL_MINUS_MONO_US (from
 * fb_time_real_minus_mono_us, taken once per receive batch); NOW_US when there is none or
 * it is implausible (later than now, or more than a second old: a clock step). */
int fb_sock_rx_timestamps(int fd);
int64_t fb_time_real_minus_mono_us(void);
struct msghdr;
uint64_t fb_time_rx_arrival_us(const struct msghdr *mh, uint64_t now_us, int64_t real_minus_mono_us);

/* Turns on the kernel's own pacing of what TCP socket FD sends, for qdiscs without fq (this
 * kernel's default): any finite SO_MAX_PACING_RATE makes TCP spread each window over the round
 * trip (cwnd / srtt) instead of sending it at once. Without it, a connection that sat idle
 * between two requests sends its whole congestion window in one burst when the next request
 * starts; on a long path with a short bottleneck queue the burst overflows the queue, the loss
 * halves the window and CUBIC needs many round trips to grow it back. The limit set (about
 * 34 Gbit/s) is far above any link. 0, or -1 with errno: callers carry on without. */
int fb_sock_tcp_pace(int fd);

/* A file time (struct stat's st_mtim, st_ctim) in ns since the epoch; 0 before the epoch. */
struct timespec;
uint64_t fb_timespec_ns(const struct timespec *t);

/* Modification times that clients send (POST sessions "mtime"/"mtime_ns", the MKCOL header
 * X-Fallback-Mtime): whole seconds since the epoch from 0 to FB_MTIME_MAX_S (year 2286), so the
 * time in ns always fits a uint64_t. */
#define FB_MTIME_MAX_S 9999999999ull
/* Parses "<seconds>[.<fraction>]": 1 to 10 decimal digits, then optionally "." and 1 to 9
 * digits of a decimal fraction ("1.5" is 1 s + 500000000 ns, "1.000000005" 1 s + 5 ns); nothing
 * else, no sign, no spaces. *PNS receives the time in ns since the epoch. FB_ERR_BAD_REQUEST
 * otherwise. */
fb_err fb_mtime_parse(uint64_t *pns, const char *s);

/* Constant-time comparison; 1 if equal. */
int fb_mem_equal_ct(const void *a, const void *b, size_t len);

#endif
