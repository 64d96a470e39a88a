/* Unit tests for fb_udp, the UDP socket layer of udpd and fbcp, on real loopback sockets:
 * batches with and without GSO, GRO splitting, truncation, the errno policy, bad sizes. */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fb_udp.h"
#include "fb_util.h"

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define MAX_GOT 256

typedef struct got {
    size_t n;
    size_t len[MAX_GOT];
    uint8_t data[MAX_GOT][2048];
    uint64_t arrived[MAX_GOT];
} got;

static int local_port(const fb_udp_sock *s)
{
    struct sockaddr_storage ss;
    socklen_t l = sizeof(ss);

    ck_assert_int_eq(getsockname(s->fd, (struct sockaddr *)&ss, &l), 0);
    return ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                         : ((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* A receiver bound to 127.0.0.1 and a sender connected to it. */
static void open_pair(fb_udp_sock *rx, int rx_offload, fb_udp_sock *tx, int tx_offload)
{
    char err[256];

    ck_assert_int_eq(fb_udp_sock_open(rx, "127.0.0.1", 0, 1u << 20, rx_offload, err, sizeof(err)), FB_OK);
    ck_assert_int_eq(
        fb_udp_sock_connect(tx, "127.0.0.1", local_port(rx), 1u << 20, tx_offload, err, sizeof(err)), FB_OK);
    ck_assert_int_eq(tx->family, AF_INET);
}

/* Queues one datagram of LEN bytes, its first byte I and the rest a pattern of I. */
static void queue(fb_udp_tx *tx, size_t i, size_t len)
{
    uint8_t *p = fb_udp_tx_reserve(tx, len);

    ck_assert_ptr_nonnull(p);
    for (size_t k = 0; k < len; k++)
        p[k] = (uint8_t)(i + k * 7);
    ck_assert_int_eq(fb_udp_tx_commit(tx, len, NULL), FB_OK);
}

static void check_dgram(const got *g, size_t at, size_t i, size_t len)
{
    ck_assert_uint_eq(g->len[at], len);
    for (size_t k = 0; k < len && k < sizeof(g->data[0]); k++)
        ck_assert_uint_eq(g->data[at][k], (uint8_t)(i + k * 7));
}

/* Reads until WANT datagrams came or a second passed (bounded). */
static void receive(fb_udp_sock *s, fb_udp_rx *rx, got *g, size_t want)
{
    uint64_t until = fb_time_mono_ns() / 1000 + 1000000;

    g->n = 0;
    while (g->n < want && fb_time_mono_ns() / 1000 < until) {
        struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
        fb_udp_dgram *dg;
        int n;

        (void)poll(&pfd, 1, 50);
        n = fb_udp_rx_recv(s, rx, &dg);
        ck_assert_int_ge(n, 0);
        for (int i = 0; i < n && g->n < MAX_GOT; i++, g->n++) {
            g->len[g->n] = dg[i].len;
            memcpy(g->data[g->n], dg[i].buf, dg[i].len < sizeof(g->data[0]) ? dg[i].len : sizeof(g->data[0]));
            g->arrived[g->n] = dg[i].arrived_us;
        }
    }
}

/* Frees what a test opened (any of them may be NULL). */
static void done(fb_udp_sock *r, fb_udp_sock *t, fb_udp_tx *tx, fb_udp_rx *rx, got *g)
{
    fb_udp_tx_free(tx);
    fb_udp_rx_free(rx);
    if (r != NULL)
        fb_udp_sock_close(r);
    if (t != NULL)
        fb_udp_sock_close(t);
    free(g);
}

/* 40 full datagrams and a shorter last one, sent as one batch, arrive whole and in order. */
static void batch_round_trip(int tx_offload, int rx_offload, fb_udp_sock *prx, fb_udp_sock *ptx)
{
    fb_udp_tx *tx;
    fb_udp_rx *rx;
    got *g = calloc(1, sizeof(*g));

    ck_assert_ptr_nonnull(g);
    open_pair(prx, rx_offload, ptx, tx_offload);
    ck_assert_int_eq(fb_udp_tx_new(&tx, 128, 128 * 1200), FB_OK);
    ck_assert_int_eq(fb_udp_rx_new(&rx, 0), FB_OK);
    for (size_t i = 0; i < 40; i++)
        queue(tx, i, 1200);
    queue(tx, 40, 700);
    ck_assert_uint_eq(fb_udp_tx_pending(tx), 41);
    ck_assert_int_eq(fb_udp_tx_flush(ptx, tx), 0);
    ck_assert_uint_eq(fb_udp_tx_pending(tx), 0);
    ck_assert_uint_eq(ptx->st.tx_dgrams, 41);
    ck_assert_uint_eq(ptx->st.tx_dropped, 0);
    ck_assert_uint_eq(ptx->st.tx_calls, 1);
    receive(prx, rx, g, 41);
    ck_assert_uint_eq(g->n, 41);
    for (size_t i = 0; i < 41; i++)
        check_dgram(g, i, i, i < 40 ? 1200 : 700);
    done(NULL, NULL, tx, rx, g);
}

START_TEST(test_batch_with_gso_is_one_message_per_run)
{
    fb_udp_sock r, t;

    batch_round_trip(1, 0, &r, &t);
    if (!t.gso) {
        fprintf(stderr, "check_udp: the kernel offers no UDP GSO: only delivery was checked\n");
    } else {
        /* 41 datagrams: a run of 54 at most 65000 bytes: 40 + 1 fit one message */
        ck_assert_uint_eq(t.st.tx_gso_msgs, 1);
    }
    ck_assert_uint_eq(r.st.rx_gro_msgs, 0); /* the receiver did not ask for GRO */
    fb_udp_sock_close(&r);
    fb_udp_sock_close(&t);
}
END_TEST

START_TEST(test_batch_without_gso_is_plain_datagrams)
{
    fb_udp_sock r, t;

    batch_round_trip(0, 0, &r, &t);
    ck_assert_int_eq(t.gso, 0);
    ck_assert_uint_eq(t.st.tx_gso_msgs, 0);
    fb_udp_sock_close(&r);
    fb_udp_sock_close(&t);
}
END_TEST

START_TEST(test_gro_buffers_are_split_into_datagrams)
{
    fb_udp_sock r, t;

    batch_round_trip(1, 1, &r, &t);
    if (!t.gso || !r.gro)
        fprintf(stderr, "check_udp: no GSO or GRO here: only delivery was checked\n");
    else
        ck_assert_uint_ge(r.st.rx_gro_msgs, 1); /* loopback hands the GSO message over whole */
    ck_assert_uint_eq(r.st.rx_dgrams, 41);
    fb_udp_sock_close(&r);
    fb_udp_sock_close(&t);
}
END_TEST

START_TEST(test_datagram_bigger_than_the_buffer_is_dropped)
{
    fb_udp_sock r, t;
    fb_udp_tx *tx;
    fb_udp_rx *rx;
    got *g = calloc(1, sizeof(*g));

    ck_assert_ptr_nonnull(g);
    open_pair(&r, 0, &t, 0);
    ck_assert_int_eq(fb_udp_tx_new(&tx, 0, 0), FB_OK);
    ck_assert_int_eq(fb_udp_rx_new(&rx, 1024), FB_OK);
    queue(tx, 1, 2000);
    queue(tx, 2, 100);
    ck_assert_int_eq(fb_udp_tx_flush(&t, tx), 0);
    receive(&r, rx, g, 1);
    ck_assert_uint_eq(g->n, 1);
    check_dgram(g, 0, 2, 100);
    ck_assert_uint_eq(r.st.rx_truncated, 1);
    done(&r, &t, tx, rx, g);
}
END_TEST

/* A socket with UDP checksums off (SO_NO_CHECK) cannot segment: its GSO send fails with EINVAL.
 * The layer turns GSO off and sends the same datagrams plain, losing none. */
START_TEST(test_refused_gso_is_sent_again_plain)
{
    fb_udp_sock r, t;
    fb_udp_tx *tx = NULL;
    fb_udp_rx *rx = NULL;
    got *g = calloc(1, sizeof(*g));
    int one = 1;

    ck_assert_ptr_nonnull(g);
    open_pair(&r, 0, &t, 1);
    if (!t.gso) {
        fprintf(stderr, "check_udp: the kernel offers no UDP GSO: nothing to refuse\n");
        goto out;
    }
    ck_assert_int_eq(setsockopt(t.fd, SOL_SOCKET, SO_NO_CHECK, &one, sizeof(one)), 0);
    ck_assert_int_eq(fb_udp_tx_new(&tx, 0, 0), FB_OK);
    ck_assert_int_eq(fb_udp_rx_new(&rx, 0), FB_OK);
    for (size_t i = 0; i < 10; i++)
        queue(tx, i, 1200);
    ck_assert_int_eq(fb_udp_tx_flush(&t, tx), 0);
    ck_assert_int_eq(t.gso, 0);
    ck_assert_int_eq(t.gso_errno, EINVAL);
    ck_assert_uint_eq(t.st.tx_dropped, 0);
    ck_assert_uint_eq(t.st.tx_gso_msgs, 0);
    ck_assert_uint_eq(t.st.tx_dgrams, 10);
    receive(&r, rx, g, 10);
    ck_assert_uint_eq(g->n, 10);
    for (size_t i = 0; i < 10; i++)
        check_dgram(g, i, i, 1200);
out:
    done(&r, &t, tx, rx, g);
}
END_TEST

/* EMSGSIZE (a datagram IPv4 cannot carry) drops that message only; the rest of the batch goes. */
START_TEST(test_oversized_datagram_is_dropped_alone)
{
    fb_udp_sock r, t;
    fb_udp_tx *tx;
    fb_udp_rx *rx;
    got *g = calloc(1, sizeof(*g));
    int had_gso;

    ck_assert_ptr_nonnull(g);
    open_pair(&r, 0, &t, 1);
    had_gso = t.gso;
    ck_assert_int_eq(fb_udp_tx_new(&tx, 0, 0), FB_OK);
    ck_assert_int_eq(fb_udp_rx_new(&rx, 0), FB_OK);
    queue(tx, 1, 100);
    queue(tx, 2, 65520); /* IPv4 carries 65507 at most */
    queue(tx, 3, 100);
    ck_assert_int_eq(fb_udp_tx_flush(&t, tx), 0);
    ck_assert_uint_eq(t.st.tx_dropped, 1);
    ck_assert_uint_eq(t.st.tx_dgrams, 2);
    ck_assert_int_eq(t.gso, had_gso); /* an oversized plain datagram says nothing about GSO */
    receive(&r, rx, g, 2);
    ck_assert_uint_eq(g->n, 2);
    check_dgram(g, 0, 1, 100);
    check_dgram(g, 1, 3, 100);
    done(&r, &t, tx, rx, g);
}
END_TEST

/* A connected socket whose peer port is closed: the ICMP error comes back on the next call.
 * A receive counts it and reads as nothing; a send drops that one message, the next goes. */
START_TEST(test_icmp_errors_are_counted_not_fatal)
{
    fb_udp_sock gone, t;
    fb_udp_tx *tx;
    fb_udp_rx *rx;
    fb_udp_dgram *dg;
    char err[256];
    int port;

    ck_assert_int_eq(fb_udp_sock_open(&gone, "127.0.0.1", 0, 0, 0, err, sizeof(err)), FB_OK);
    port = local_port(&gone);
    fb_udp_sock_close(&gone);
    ck_assert_int_eq(fb_udp_sock_connect(&t, "127.0.0.1", port, 0, 0, err, sizeof(err)), FB_OK);
    ck_assert_int_eq(fb_udp_tx_new(&tx, 0, 0), FB_OK);
    ck_assert_int_eq(fb_udp_rx_new(&rx, 0), FB_OK);

    queue(tx, 1, 100);
    ck_assert_int_eq(fb_udp_tx_flush(&t, tx), 0);
    usleep(50000);
    ck_assert_int_eq(fb_udp_rx_recv(&t, rx, &dg), 0);
    ck_assert_uint_eq(t.st.rx_icmp, 1);
    ck_assert_uint_eq(fb_udp_rx_msgs(rx), 0);

    queue(tx, 2, 100);
    ck_assert_int_eq(fb_udp_tx_flush(&t, tx), 0);
    usleep(50000);
    queue(tx, 3, 100);
    queue(tx, 4, 200);
    ck_assert_int_eq(fb_udp_tx_flush(&t, tx), 0);
    ck_assert_uint_eq(t.st.tx_dropped, 1); /* 3 carried the error */
    ck_assert_uint_eq(t.st.tx_dgrams, 3);  /* 1, 2 and 4 */
    ck_assert_uint_eq(fb_udp_tx_pending(tx), 0);
    done(NULL, &t, tx, rx, NULL);
}
END_TEST

START_TEST(test_errno_policy)
{
    static const int drop[] = {ENOBUFS, EMSGSIZE, ECONNREFUSED, ENETUNREACH, EHOSTUNREACH, EPERM, EACCES};

    ck_assert_int_eq(fb_udp_send_policy(EINTR, 0), FB_UDP_SEND_RETRY);
    ck_assert_int_eq(fb_udp_send_policy(EINTR, 1), FB_UDP_SEND_RETRY);
    ck_assert_int_eq(fb_udp_send_policy(EAGAIN, 0), FB_UDP_SEND_WAIT);
    ck_assert_int_eq(fb_udp_send_policy(EWOULDBLOCK, 1), FB_UDP_SEND_WAIT);
    ck_assert_int_eq(fb_udp_send_policy(EIO, 1), FB_UDP_SEND_PLAIN);
    ck_assert_int_eq(fb_udp_send_policy(EINVAL, 1), FB_UDP_SEND_PLAIN);
    ck_assert_int_eq(fb_udp_send_policy(EOPNOTSUPP, 1), FB_UDP_SEND_PLAIN);
    /* without a GSO message the same errors are about that datagram: dropped */
    ck_assert_int_eq(fb_udp_send_policy(EIO, 0), FB_UDP_SEND_DROP);
    ck_assert_int_eq(fb_udp_send_policy(EINVAL, 0), FB_UDP_SEND_DROP);
    ck_assert_int_eq(fb_udp_send_policy(EOPNOTSUPP, 0), FB_UDP_SEND_DROP);
    for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++) {
        ck_assert_int_eq(fb_udp_send_policy(drop[i], 0), FB_UDP_SEND_DROP);
        ck_assert_int_eq(fb_udp_send_policy(drop[i], 1), FB_UDP_SEND_DROP);
    }
}
END_TEST

/* A message of LEN bytes whose control data says segment size GS (cmsg data of DLEN bytes). */
static size_t gro_of(size_t len, int level, int gs, size_t dlen)
{
    union {
        char buf[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct msghdr h;
    struct cmsghdr *c;

    memset(&ctl, 0, sizeof(ctl));
    memset(&h, 0, sizeof(h));
    h.msg_control = ctl.buf;
    h.msg_controllen = CMSG_SPACE(sizeof(int));
    c = CMSG_FIRSTHDR(&h);
    c->cmsg_level = level;
    c->cmsg_type = UDP_GRO;
    c->cmsg_len = CMSG_LEN(dlen);
    memcpy(CMSG_DATA(c), &gs, sizeof(gs));
    return fb_udp_gro_segment(&h, len);
}

START_TEST(test_bad_segment_sizes_are_refused)
{
    fb_udp_tx *tx;
    struct msghdr none;
    uint8_t *p;

    /* receive: only a whole UDP_GRO message with 0 < size < length splits */
    ck_assert_uint_eq(gro_of(3000, SOL_UDP, 1200, sizeof(int)), 1200);
    ck_assert_uint_eq(gro_of(3000, SOL_UDP, 0, sizeof(int)), 3000);
    ck_assert_uint_eq(gro_of(3000, SOL_UDP, -1200, sizeof(int)), 3000);
    ck_assert_uint_eq(gro_of(3000, SOL_UDP, 3000, sizeof(int)), 3000);
    ck_assert_uint_eq(gro_of(3000, SOL_UDP, 3001, sizeof(int)), 3000);
    ck_assert_uint_eq(gro_of(3000, SOL_UDP, 1200, 2), 3000); /* a short control message */
    ck_assert_uint_eq(gro_of(3000, SOL_SOCKET, 1200, sizeof(int)), 3000);
    memset(&none, 0, sizeof(none));
    ck_assert_uint_eq(fb_udp_gro_segment(&none, 3000), 3000);

    /* send: sizes out of range, and commits of more than was reserved, queue nothing */
    ck_assert_int_eq(fb_udp_tx_new(&tx, 4, 4 * 100), FB_OK);
    ck_assert_ptr_null(fb_udp_tx_reserve(tx, 0));
    ck_assert_ptr_null(fb_udp_tx_reserve(tx, FB_UDP_MAX_DGRAM + 1));
    ck_assert_int_eq(fb_udp_tx_commit(tx, 10, NULL), FB_ERR_INTERNAL); /* nothing reserved */
    ck_assert_ptr_nonnull(fb_udp_tx_reserve(tx, 100));
    ck_assert_int_eq(fb_udp_tx_commit(tx, 101, NULL), FB_ERR_INTERNAL);
    ck_assert_ptr_nonnull(fb_udp_tx_reserve(tx, 100));
    ck_assert_int_eq(fb_udp_tx_commit(tx, 0, NULL), FB_ERR_INTERNAL);
    ck_assert_uint_eq(fb_udp_tx_pending(tx), 0);
    /* a full batch says so; discarding empties it */
    for (int i = 0; i < 4; i++) {
        ck_assert_ptr_nonnull(p = fb_udp_tx_reserve(tx, 100));
        ck_assert_int_eq(fb_udp_tx_commit(tx, 100, NULL), FB_OK);
    }
    ck_assert_ptr_null(fb_udp_tx_reserve(tx, 1));
    fb_udp_tx_discard(tx);
    ck_assert_uint_eq(fb_udp_tx_pending(tx), 0);
    ck_assert_ptr_nonnull(fb_udp_tx_reserve(tx, 100));
    fb_udp_tx_free(tx);
}
END_TEST

/* One receive call reads a batch of 32 messages; the rest wait for the next. Arrival times are
 * the kernel's, between the send and the read. */
START_TEST(test_receive_batches_and_arrival_times)
{
    fb_udp_sock r, t;
    fb_udp_tx *tx;
    fb_udp_rx *rx;
    fb_udp_dgram *dg;
    uint64_t sent;
    int n;

    open_pair(&r, 0, &t, 0);
    ck_assert_int_eq(fb_udp_tx_new(&tx, 0, 0), FB_OK);
    ck_assert_int_eq(fb_udp_rx_new(&rx, 0), FB_OK);
    sent = fb_time_mono_ns() / 1000;
    for (size_t i = 0; i < 40; i++)
        queue(tx, i, 64);
    ck_assert_int_eq(fb_udp_tx_flush(&t, tx), 0);
    usleep(20000);
    n = fb_udp_rx_recv(&r, rx, &dg);
    ck_assert_int_eq(n, FB_UDP_RX_BATCH);
    ck_assert_uint_eq(fb_udp_rx_msgs(rx), FB_UDP_RX_BATCH);
    for (int i = 0; i < n; i++) {
        ck_assert_uint_eq(dg[i].len, 64);
        ck_assert_uint_eq(dg[i].buf[0], (uint8_t)i);
        ck_assert_uint_ge(dg[i].arrived_us + 2000, sent);
        ck_assert_uint_le(dg[i].arrived_us, fb_time_mono_ns() / 1000);
    }
    n = fb_udp_rx_recv(&r, rx, &dg);
    ck_assert_int_eq(n, 8);
    ck_assert_uint_eq(fb_udp_rx_msgs(rx), 8);
    ck_assert_int_eq(fb_udp_rx_recv(&r, rx, &dg), 0);
    ck_assert_uint_eq(fb_udp_rx_msgs(rx), 0);
    done(&r, &t, tx, rx, NULL);
}
END_TEST

START_TEST(test_addresses)
{
    fb_udp_addr a, b;
    char s[80];

    ck_assert_int_eq(fb_udp_addr_parse(&a, "192.0.2.1", 33001), FB_OK);
    fb_udp_addr_format(s, sizeof(s), &a);
    ck_assert_str_eq(s, "192.0.2.1:33001");
    ck_assert_int_eq(fb_udp_addr_parse(&b, "2001:db8::1", 33001), FB_OK);
    fb_udp_addr_format(s, sizeof(s), &b);
    ck_assert_str_eq(s, "[2001:db8::1]:33001");
    ck_assert_int_eq(fb_udp_addr_equal(&a, &b), 0);
    ck_assert_int_eq(fb_udp_addr_parse(&b, "192.0.2.1", 33001), FB_OK);
    ck_assert_int_eq(fb_udp_addr_equal(&a, &b), 1);
    ck_assert_int_eq(fb_udp_addr_parse(&b, "192.0.2.1", 33002), FB_OK);
    ck_assert_int_eq(fb_udp_addr_equal(&a, &b), 0);
    ck_assert_int_eq(fb_udp_addr_parse(&b, NULL, 1), FB_OK);
    fb_udp_addr_format(s, sizeof(s), &b);
    ck_assert_str_eq(s, "[::]:1");
    ck_assert_int_eq(fb_udp_addr_parse(&b, "999.0.2.1", 1), FB_ERR_CONFIG);
    ck_assert_int_eq(fb_udp_addr_parse(&b, "example.org", 1), FB_ERR_CONFIG);
    ck_assert_int_eq(fb_udp_addr_parse(&b, "192.0.2.1", 65536), FB_ERR_CONFIG);
}
END_TEST

START_TEST(test_open_and_connect_errors)
{
    fb_udp_sock r, t;
    char err[256];

    ck_assert_int_eq(fb_udp_sock_open(&r, "not-an-address", 0, 0, 0, err, sizeof(err)), FB_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(err, "not a numeric"));
    ck_assert_int_eq(r.fd, -1);
    ck_assert_int_eq(fb_udp_sock_open(&r, "127.0.0.1", 0, 0, 0, err, sizeof(err)), FB_OK);
    ck_assert_int_eq(fb_udp_sock_open(&t, "127.0.0.1", local_port(&r), 0, 0, err, sizeof(err)), FB_ERR_IO);
    ck_assert_ptr_nonnull(strstr(err, "bind 127.0.0.1:"));
    ck_assert_int_eq(fb_udp_sock_connect(&t, "no-such-host.invalid", 1, 0, 0, err, sizeof(err)),
                     FB_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(err, "cannot resolve no-such-host.invalid"));
    ck_assert_int_eq(fb_udp_sock_connect(&t, "127.0.0.1", 0, 0, 0, err, sizeof(err)), FB_ERR_CONFIG);
    ck_assert_int_eq(fb_udp_sock_connect(&t, "127.0.0.1", 65536, 0, 0, err, sizeof(err)), FB_ERR_CONFIG);
    ck_assert_int_eq(t.fd, -1);
    /* an IPv6 literal in a URL's brackets, where this machine has IPv6 */
    if (fb_udp_sock_connect(&t, "[::1]", local_port(&r), 0, 0, err, sizeof(err)) == FB_OK) {
        ck_assert_int_eq(t.family, AF_INET6);
        fb_udp_sock_close(&t);
    }
    fb_udp_sock_close(&r);
    ck_assert_int_eq(r.fd, -1);
    fb_udp_sock_close(&r); /* twice is harmless */
}
END_TEST

static Suite *udp_suite(void)
{
    Suite *s = suite_create("fb_udp");
    TCase *io = tcase_create("loopback");
    TCase *rules = tcase_create("rules");

    tcase_add_test(io, test_batch_with_gso_is_one_message_per_run);
    tcase_add_test(io, test_batch_without_gso_is_plain_datagrams);
    tcase_add_test(io, test_gro_buffers_are_split_into_datagrams);
    tcase_add_test(io, test_datagram_bigger_than_the_buffer_is_dropped);
    tcase_add_test(io, test_refused_gso_is_sent_again_plain);
    tcase_add_test(io, test_oversized_datagram_is_dropped_alone);
    tcase_add_test(io, test_icmp_errors_are_counted_not_fatal);
    tcase_add_test(io, test_receive_batches_and_arrival_times);
    tcase_add_test(io, test_open_and_connect_errors);
    tcase_add_test(rules, test_errno_policy);
    tcase_add_test(rules, test_bad_segment_sizes_are_refused);
    tcase_add_test(rules, test_addresses);
    suite_add_tcase(s, io);
    suite_add_tcase(s, rules);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(udp_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
