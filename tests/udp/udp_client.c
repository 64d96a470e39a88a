/* udp_client: test driver for udpd. Uploads or downloads one file over the UDP fast path with
 * the same engines fbcp uses (fb_xfer), for a session created over HTTPS (its JSON answer is
 * read from a file), and sends hostile datagrams for the security tests.
 *
 *   udp_client --session S.json --port P [--host H] --upload FILE   [options]
 *   udp_client --session S.json --port P [--host H] --download FILE [options]
 *   udp_client --session S.json --port P [--host H] --attack KIND [--count N] [--wait-ms MS]
 *
 * Transfers print one JSON line of statistics on stdout; --drop P loses a fraction P of the
 * datagrams in both directions after the engines (reproducibly, --seed N). Attacks send datagrams udpd must
 * drop and exit 0 only if nothing at all came back within --wait-ms; KIND is random, truncated, forged,
 * wrong-key, unknown-session, no-hello (data-phase packets without a HELLO), or replay (a valid association,
 * then its HELLO and DATA replayed from another socket, which must get nothing, and again from the first
 * one). Exit codes: 0 ok, 1 failure, 2 usage, 4 no answer (connection lost), 5 refused. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fb_config.h"
#include "fb_util.h"
#include "fb_wire.h"
#include "fb_xfer.h"
#include "fb_udp.h"

typedef struct client {
    /* options */
    const char *session_file, *host, *upload, *download, *attack;
    int port, count, wait_ms, timeout_s, no_offload, verbose;
    uint64_t rate, min_rate;
    double drop; /* simulated loss, both directions */
    uint64_t rng;
    unsigned policy, cipher;
    size_t datagram;
    /* session */
    uint8_t sid[FB_WIRE_SID_LEN];
    uint8_t key[32];
    uint64_t size;
    uint32_t chunk_size;
    fb_range *missing;
    size_t nmissing;
    int have_missing;
    /* association */
    fb_udp_sock sock;
    fb_udp_addr server;
    fb_udp_rx *rx;
    fb_udp_tx *tx;
    fb_aead_ctx *aead;
    fb_replay replay;
    uint64_t pn;
    fb_wire_hello_ack ack;
    size_t ack_len;
    uint8_t cnonce[16];
    /* file */
    int fd;
    uint8_t *map;  /* upload: the file, mapped */
    uint8_t *wbuf; /* download: contiguous bytes gathered for one pwrite */
    uint64_t woff;
    size_t wlen;
    uint64_t chunks_done;
    /* stats */
    uint64_t rx_dgrams, closes_rx;
    int end_answered, end_unchanged; /* a download's CLOSE(0) was answered; with UNCHANGED */
    fb_err close_reason;
} client;

static uint64_t now_us(void)
{
    return fb_time_mono_ns() / 1000;
}

/* xorshift64*: the simulated loss is reproducible for a seed. */
static int lose(client *c)
{
    if (c->drop <= 0)
        return 0;
    c->rng ^= c->rng >> 12;
    c->rng ^= c->rng << 25;
    c->rng ^= c->rng >> 27;
    return (double)((c->rng * 2685821657736338717ull) >> 11) / 9007199254740992.0 < c->drop;
}

static void die(const char *msg)
{
    fprintf(stderr, "udp_client: %s\n", msg);
    exit(1);
}

static unsigned parse_policy(const char *s)
{
    if (strcmp(s, "fixed") == 0)
        return FB_POLICY_FIXED;
    if (strcmp(s, "high") == 0)
        return FB_POLICY_HIGH;
    if (strcmp(s, "fair") == 0)
        return FB_POLICY_FAIR;
    if (strcmp(s, "low") == 0)
        return FB_POLICY_LOW;
    return 0;
}

static unsigned parse_cipher(const char *s)
{
    if (strcmp(s, "aes128") == 0 || strcmp(s, "aes-128-gcm") == 0)
        return FB_CIPHER_AES128_GCM;
    if (strcmp(s, "aes256") == 0 || strcmp(s, "aes-256-gcm") == 0)
        return FB_CIPHER_AES256_GCM;
    if (strcmp(s, "none") == 0)
        return FB_CIPHER_NONE;
    return 0;
}

static void load_session(client *c)
{
    json_error_t jerr;
    json_t *doc = json_load_file(c->session_file, 0, &jerr), *v;
    const char *id, *key;

    if (doc == NULL) {
        fprintf(stderr, "udp_client: %s: %s\n", c->session_file, jerr.text);
        exit(2);
    }
    id = json_string_value(json_object_get(doc, "id"));
    key = json_string_value(json_object_get(doc, "key"));
    if (id == NULL || key == NULL || fb_wire_sid_from_string(c->sid, id) != FB_OK ||
        fb_hex_decode(c->key, sizeof(c->key), key) != FB_OK)
        die("the session document has no valid id and key");
    c->size = (uint64_t)json_integer_value(json_object_get(doc, "size"));
    c->chunk_size = (uint32_t)json_integer_value(json_object_get(doc, "chunk_size"));
    if (c->chunk_size == 0)
        die("the session document has no chunk_size");
    v = json_object_get(doc, "missing");
    if (json_is_array(v)) {
        size_t i, n = json_array_size(v);

        c->have_missing = 1;
        c->missing = calloc(n ? n : 1, sizeof(fb_range));
        for (i = 0; i < n; i++) {
            json_t *p = json_array_get(v, i);

            c->missing[i].offset = (uint64_t)json_integer_value(json_array_get(p, 0));
            c->missing[i].length = (uint64_t)json_integer_value(json_array_get(p, 1));
        }
        c->nmissing = n;
    }
    json_decref(doc);
}

static void open_socket(client *c)
{
    char err[256];

    if (fb_udp_addr_parse(&c->server, c->host, c->port) != FB_OK)
        die("bad --host");
    if (fb_udp_sock_open(&c->sock, c->server.ss.ss_family == AF_INET ? "0.0.0.0" : "::", 0, 16u << 20,
                         !c->no_offload, err, sizeof(err)) != FB_OK)
        die(err);
    if (fb_udp_rx_new(&c->rx, 0) != FB_OK || fb_udp_tx_new(&c->tx, 0, 0) != FB_OK)
        die("out of memory");
}

static void send_now(client *c, const uint8_t *buf, size_t len, fb_udp_sock *sock)
{
    uint8_t *p = fb_udp_tx_reserve(c->tx, len);

    if (p == NULL) {
        fb_udp_tx_flush(&c->sock, c->tx);
        p = fb_udp_tx_reserve(c->tx, len);
    }
    if (p == NULL)
        return;
    memcpy(p, buf, len);
    fb_udp_tx_commit(c->tx, len, &c->server);
    fb_udp_tx_flush(sock, c->tx);
}

/* Waits up to TIMEOUT_US for datagrams on SOCK; calls FN for each; returns the count. */
static int wait_dgrams(client *c, fb_udp_sock *sock, uint64_t timeout_us,
                       int (*fn)(client *c, uint8_t *buf, size_t len), int stop_after_one)
{
    uint64_t end = now_us() + timeout_us;
    int got = 0;

    for (int guard = 0; guard < 100000; guard++) {
        struct pollfd pfd = {.fd = sock->fd, .events = POLLIN};
        uint64_t t = now_us();
        struct timespec ts;
        fb_udp_dgram *dg;
        int n;

        if (t >= end)
            break;
        ts.tv_sec = (time_t)((end - t) / 1000000);
        ts.tv_nsec = (long)((end - t) % 1000000) * 1000;
        if (ppoll(&pfd, 1, &ts, NULL) <= 0)
            continue;
        n = fb_udp_rx_recv(sock, c->rx, &dg);
        for (int i = 0; i < n; i++) {
            got++;
            if (fn != NULL && fn(c, dg[i].buf, dg[i].len) && stop_after_one)
                return got;
        }
    }
    return got;
}

static int on_hello_ack(client *c, uint8_t *buf, size_t len)
{
    fb_wire_pkt pkt;
    fb_wire_reason why;

    if (fb_wire_open(&pkt, &why, buf, len, c->aead, NULL) != FB_OK || pkt.hdr.type != FB_WIRE_HELLO_ACK ||
        memcmp(pkt.u.hello_ack.client_nonce, c->cnonce, sizeof(c->cnonce)) != 0)
        return 0;
    c->ack = pkt.u.hello_ack;
    c->ack_len = len;
    return 1;
}

static size_t make_hello(client *c, uint8_t *buf, size_t cap, const fb_aead_ctx *ctx)
{
    fb_wire_hdr hdr;
    fb_wire_hello h;
    size_t len = 0;

    memset(&hdr, 0, sizeof(hdr));
    memset(&h, 0, sizeof(h));
    memcpy(hdr.sid, c->sid, sizeof(hdr.sid));
    fb_random_bytes((unsigned char *)&hdr.pn, sizeof(hdr.pn));
    memcpy(h.client_nonce, c->cnonce, sizeof(h.client_nonce));
    h.cipher = c->cipher;
    h.policy = c->policy;
    h.target_rate = c->rate;
    h.min_rate = c->min_rate;
    h.client_ts_us = now_us();
    h.max_datagram = (uint16_t)c->datagram;
    /* Padded to the datagram size it wants to use: the path is checked at that size. */
    h.pad_to = c->datagram;
    if (fb_wire_encode_hello(buf, cap, &len, &hdr, &h, ctx) != FB_OK)
        die("cannot encode HELLO");
    return len;
}

/* HELLO until HELLO_ACK (retransmitted with the same nonce after 250 ms, doubling). Returns the
 * HELLO's length. */
static size_t handshake(client *c, uint8_t *hello, size_t cap)
{
    size_t len = 0;

    if (fb_aead_new(&c->aead, c->key, FB_AEAD_CLIENT) != FB_OK)
        die("fb_aead_new");
    fb_random_bytes(c->cnonce, sizeof(c->cnonce));
    for (uint64_t attempt = 0, wait = 250000, total = 0; attempt < 8 && total < 3000000;
         attempt++, wait *= 2) {
        len = make_hello(c, hello, cap, c->aead);
        send_now(c, hello, len, &c->sock);
        if (wait_dgrams(c, &c->sock, wait, on_hello_ack, 1) > 0 &&
            memcmp(c->ack.client_nonce, c->cnonce, 16) == 0)
            break;
        total += wait;
    }
    if (memcmp(c->ack.client_nonce, c->cnonce, 16) != 0) {
        fprintf(stderr, "udp_client: no HELLO_ACK from udpd\n");
        exit(4);
    }
    if (c->ack.status != FB_OK) {
        fprintf(stderr, "udp_client: udpd refused: %s\n", fb_err_message((fb_err)c->ack.status));
        exit(5);
    }
    if (fb_aead_set_data_keys(c->aead, c->ack.cipher, c->cnonce, c->ack.server_nonce) != FB_OK)
        die("cannot derive data keys");
    fb_replay_init(&c->replay);
    return len;
}

/* ---- transfer ----------------------------------------------------------------------------------- */

static fb_err read_cb(void *ctx, uint64_t off, uint8_t *buf, size_t len)
{
    client *c = ctx;

    memcpy(buf, c->map + off, len);
    return FB_OK;
}

#define WBUF_SIZE (1u << 20)

static fb_err wflush(client *c)
{
    if (fb_pwrite_all(c->fd, c->wbuf, c->wlen, c->woff) != FB_OK)
        return FB_ERR_LOCAL_IO;
    c->wlen = 0;
    return FB_OK;
}

/* Writes go through a buffer of contiguous bytes and pwrite (page faults on a fresh, sparse
 * mapping would make this end slower than the network). */
static fb_err write_cb(void *ctx, uint64_t off, const uint8_t *buf, size_t len)
{
    client *c = ctx;
    fb_err e;

    if (c->wlen > 0 && (off != c->woff + c->wlen || c->wlen + len > WBUF_SIZE)) {
        e = wflush(c);
        if (e != FB_OK)
            return e;
    }
    if (len > WBUF_SIZE)
        return FB_ERR_INTERNAL;
    if (c->wlen == 0)
        c->woff = off;
    memcpy(c->wbuf + c->wlen, buf, len);
    c->wlen += len;
    return FB_OK;
}

static void chunk_cb(void *ctx, uint64_t index)
{
    client *c = ctx;

    (void)index;
    c->chunks_done++;
}

static void send_close(client *c, fb_err reason)
{
    fb_wire_hdr hdr;
    fb_wire_close m;
    uint8_t buf[128];
    size_t len = 0;

    memset(&hdr, 0, sizeof(hdr));
    memcpy(hdr.sid, c->sid, sizeof(hdr.sid));
    m.reason = (uint32_t)reason;
    for (int i = 0; i < 2; i++) {
        hdr.pn = c->pn++;
        if (fb_wire_encode_close(buf, sizeof(buf), &len, &hdr, &m, c->aead) == FB_OK)
            send_now(c, buf, len, &c->sock);
    }
}

/* After a download's CLOSE(0): udpd's answering CLOSE, within a second (PROTOCOL.md 8.5). */
static void await_close_answer(client *c)
{
    uint64_t until = now_us() + 1000000;

    /* bounded: ends at UNTIL or with the answer */
    while (!c->end_answered && now_us() < until) {
        struct pollfd pfd = {.fd = c->sock.fd, .events = POLLIN};
        fb_udp_dgram *dg;
        int n;

        if (poll(&pfd, 1, 50) <= 0)
            continue;
        n = fb_udp_rx_recv(&c->sock, c->rx, &dg);
        for (int i = 0; i < n; i++) {
            fb_wire_pkt pkt;
            fb_wire_reason why;

            if (!fb_udp_addr_equal(dg[i].from, &c->server) ||
                fb_wire_open(&pkt, &why, dg[i].buf, dg[i].len, c->aead, &c->replay) != FB_OK ||
                pkt.hdr.type != FB_WIRE_CLOSE || pkt.u.close.reason != FB_OK)
                continue;
            c->end_answered = 1;
            c->end_unchanged = (pkt.hdr.flags & FB_WIRE_F_CLOSE_UNCHANGED) != 0;
        }
    }
}

static double cpu_seconds(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

/* Queues a FEEDBACK if one is due (unless the simulated loss takes it); 1 if one was made. */
static int queue_feedback(client *c, fb_xfer_receiver *rcv, uint64_t now)
{
    uint8_t *p = fb_udp_tx_reserve(c->tx, FB_WIRE_MIN_DATAGRAM);
    size_t len = 0;

    if (p == NULL || fb_xfer_receiver_feedback(rcv, p, FB_WIRE_MIN_DATAGRAM, &len, c->pn, now, 0) != FB_OK ||
        len == 0)
        return 0;
    c->pn++;
    if (!lose(c))
        fb_udp_tx_commit(c->tx, len, &c->server);
    return 1;
}

static int transfer(client *c)
{
    fb_xfer_sender *snd = NULL;
    fb_xfer_receiver *rcv = NULL;
    static uint8_t hello[FB_WIRE_MAX_DATAGRAM];
    size_t dgram;
    uint64_t t0, last_rx, end;
    int upload = c->upload != NULL, rc = 1;
    struct stat sb;
    double cpu0 = cpu_seconds();

    if (upload) {
        c->fd = open(c->upload, O_RDONLY | O_CLOEXEC);
        if (c->fd < 0 || fstat(c->fd, &sb) != 0 || (uint64_t)sb.st_size != c->size)
            die("the upload file is missing or not of the session's size");
        c->map = c->size ? mmap(NULL, c->size, PROT_READ, MAP_SHARED, c->fd, 0) : NULL;
    } else {
        c->fd = open(c->download, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (c->fd < 0 || ftruncate(c->fd, (off_t)c->size) != 0)
            die("cannot create the download file");
        c->wbuf = malloc(WBUF_SIZE);
        if (c->wbuf == NULL)
            die("out of memory");
    }
    if (c->size && c->map == MAP_FAILED)
        die("mmap");
    open_socket(c);
    t0 = now_us();
    handshake(c, hello, sizeof(hello));
    dgram = c->datagram < c->ack.max_datagram ? c->datagram : c->ack.max_datagram;

    if (upload) {
        fb_xfer_sender_params sp;

        memset(&sp, 0, sizeof(sp));
        sp.size = c->size;
        sp.ranges = c->have_missing ? c->missing : NULL;
        sp.nranges = c->have_missing ? c->nmissing : 0;
        if (c->have_missing && c->nmissing == 0)
            sp.ranges = c->missing; /* nothing to send */
        sp.max_payload = dgram - FB_WIRE_DATA_OVERHEAD;
        sp.rate.policy = c->ack.policy;
        sp.rate.target_rate = c->ack.target_rate;
        sp.rate.min_rate = c->ack.min_rate;
        sp.aead = c->aead;
        memcpy(sp.sid, c->sid, sizeof(sp.sid));
        sp.read = read_cb;
        sp.read_ctx = c;
        if (fb_xfer_sender_new(&snd, &sp, now_us()) != FB_OK)
            die("cannot start the sender");
    } else {
        fb_xfer_receiver_params rp;

        memset(&rp, 0, sizeof(rp));
        rp.size = c->size;
        rp.chunk_size = c->chunk_size;
        rp.aead = c->aead;
        memcpy(rp.sid, c->sid, sizeof(rp.sid));
        rp.write = write_cb;
        rp.on_chunk_complete = chunk_cb;
        rp.ctx = c;
        if (fb_xfer_receiver_new(&rcv, &rp, now_us()) != FB_OK)
            die("cannot start the receiver");
    }

    last_rx = now_us();
    for (uint64_t iter = 0;; iter++) {
        uint64_t now = now_us(), next = now + 100000;
        struct pollfd pfd = {.fd = c->sock.fd, .events = POLLIN};
        struct timespec ts;
        fb_udp_dgram *dg;
        int n;

        if (upload ? fb_xfer_sender_done(snd) : fb_xfer_receiver_complete(rcv))
            break;
        if (c->closes_rx > 0) {
            fprintf(stderr, "udp_client: udpd closed the association: %s\n", fb_err_message(c->close_reason));
            goto out;
        }
        if (now - last_rx > (uint64_t)c->timeout_s * 1000000) {
            fprintf(stderr, "udp_client: no answer from udpd for %d s\n", c->timeout_s);
            rc = 4;
            goto out;
        }
        /* Send what is due. */
        if (upload) {
            for (int k = 0; k < 4096 && fb_xfer_sender_next_time(snd, now) <= now; k++) {
                uint8_t *p = fb_udp_tx_reserve(c->tx, dgram);
                size_t len = 0;

                if (p == NULL)
                    break;
                if (fb_xfer_sender_next(snd, p, dgram, &len, c->pn, now) != FB_OK)
                    die("sender failed");
                if (len == 0)
                    break;
                c->pn++;
                if (!lose(c))
                    fb_udp_tx_commit(c->tx, len, &c->server);
                if (k % 64 == 63)
                    now = now_us();
            }
            next = fb_xfer_sender_next_time(snd, now);
            /* Wake at most every 250 us: the pacer's burst credit keeps the rate. */
            if (next > now && next - now < 250)
                next = now + 250;
        } else {
            queue_feedback(c, rcv, now);
            next = fb_xfer_receiver_next_feedback(rcv, now);
        }
        if (fb_udp_tx_flush(&c->sock, c->tx) != 0)
            pfd.events |= POLLOUT;
        now = now_us();
        if (next > now + 100000)
            next = now + 100000;
        ts.tv_sec = 0;
        ts.tv_nsec = next > now ? (long)(next - now) * 1000 : 0;
        if (ppoll(&pfd, 1, &ts, NULL) <= 0 || !(pfd.revents & POLLIN))
            continue;
        for (int b = 0; b < 64; b++) {
            n = fb_udp_rx_recv(&c->sock, c->rx, &dg);
            if (n <= 0)
                break;
            now = now_us();
            for (int i = 0; i < n; i++) {
                fb_wire_pkt pkt;
                fb_wire_reason why;

                if (!fb_udp_addr_equal(dg[i].from, &c->server) || lose(c) ||
                    fb_wire_open(&pkt, &why, dg[i].buf, dg[i].len, c->aead, &c->replay) != FB_OK)
                    continue;
                c->rx_dgrams++;
                last_rx = now;
                if (pkt.hdr.type == FB_WIRE_FEEDBACK && upload)
                    fb_xfer_sender_on_feedback(snd, &pkt.hdr, &pkt.u.feedback, dg[i].arrived_us);
                else if (pkt.hdr.type == FB_WIRE_DATA && !upload)
                    fb_xfer_receiver_on_data(rcv, &pkt.hdr, &pkt.u.data, dg[i].arrived_us, NULL);
                else if (pkt.hdr.type == FB_WIRE_CLOSE) {
                    c->closes_rx++;
                    c->close_reason = (fb_err)pkt.u.close.reason;
                }
            }
            /* A receiver busy draining its socket still answers on time: FEEDBACK between
             * batches, not only when the socket is empty (the sender reads silence as loss of
             * the path and slows down). */
            if (!upload && queue_feedback(c, rcv, now))
                fb_udp_tx_flush(&c->sock, c->tx);
        }
        (void)iter;
    }
    end = now_us();
    if (!upload) {
        /* Tell the sender it is complete, then close. */
        uint8_t buf[FB_WIRE_MIN_DATAGRAM];
        size_t len = 0;

        if (fb_xfer_receiver_feedback(rcv, buf, sizeof(buf), &len, c->pn, now_us(), 1) == FB_OK && len > 0) {
            c->pn++;
            send_now(c, buf, len, &c->sock);
        }
        if (wflush(c) != FB_OK || fsync(c->fd) != 0)
            die("cannot write the download file");
    }
    send_close(c, FB_OK);
    if (!upload)
        await_close_answer(c);
    {
        double secs = (double)(end - t0) / 1e6;
        double cpu = cpu_seconds() - cpu0;

        if (upload) {
            fb_xfer_sender_stats st;

            fb_xfer_sender_stats_get(&st, snd);
            printf("{\"direction\":\"upload\",\"cipher\":%u,\"policy\":%u,\"bytes\":%llu,\"seconds\":%.3f,"
                   "\"gbit_s\":%.3f,\"sent_new\":%llu,"
                   "\"sent_retx\":%llu,\"lost\":%llu,\"feedbacks\":%llu,\"rate\":%llu,\"srtt_us\":%llu,"
                   "\"cpu_s\":%.3f,\"gso_msgs\":%llu,\"eagain\":%llu}\n",
                   c->ack.cipher, c->ack.policy, (unsigned long long)c->size, secs,
                   secs > 0 ? (double)c->size * 8 / secs / 1e9 : 0, (unsigned long long)st.bytes_new,
                   (unsigned long long)st.bytes_retx, (unsigned long long)st.lost_bytes,
                   (unsigned long long)st.feedbacks, (unsigned long long)st.rate,
                   (unsigned long long)st.srtt_us, cpu, (unsigned long long)c->sock.st.tx_gso_msgs,
                   (unsigned long long)c->sock.st.tx_eagain);
        } else {
            fb_xfer_receiver_stats st;

            fb_xfer_receiver_stats_get(&st, rcv);
            printf("{\"direction\":\"download\",\"bytes\":%llu,\"seconds\":%.3f,\"gbit_s\":%.3f,\"new\":%llu,"
                   "\"dup\":%llu,\"chunks\":%llu,\"feedbacks\":%llu,\"cpu_s\":%.3f,\"gro_msgs\":%llu,"
                   "\"end_answered\":%s,\"end_unchanged\":%s}\n",
                   (unsigned long long)c->size, secs, secs > 0 ? (double)c->size * 8 / secs / 1e9 : 0,
                   (unsigned long long)st.bytes_new, (unsigned long long)st.bytes_dup,
                   (unsigned long long)c->chunks_done, (unsigned long long)st.feedbacks, cpu,
                   (unsigned long long)c->sock.st.rx_gro_msgs, c->end_answered ? "true" : "false",
                   c->end_unchanged ? "true" : "false");
        }
    }
    rc = 0;
out:
    fb_xfer_sender_free(snd);
    fb_xfer_receiver_free(rcv);
    return rc;
}

/* ---- attacks ------------------------------------------------------------------------------------ */

static int count_any(client *c, uint8_t *buf, size_t len)
{
    (void)c;
    (void)buf;
    (void)len;
    return 1;
}

static void rand_fill(uint8_t *p, size_t n)
{
    if (fb_random_bytes(p, n) != FB_OK)
        die("RAND_bytes");
}

static int attack(client *c)
{
    static uint8_t buf[FB_WIRE_MAX_DATAGRAM];
    size_t len;
    int sent = 0, back;

    open_socket(c);
    fb_random_bytes(c->cnonce, sizeof(c->cnonce));
    if (strcmp(c->attack, "random") == 0) {
        for (int i = 0; i < c->count; i++) {
            uint16_t r;
            rand_fill((uint8_t *)&r, sizeof(r));
            len = 1 + r % 1500;
            rand_fill(buf, len);
            if (i % 2)
                buf[0] = FB_WIRE_VERSION_BYTE; /* past the version check, into the type/length checks */
            send_now(c, buf, len, &c->sock);
            sent++;
        }
    } else if (strcmp(c->attack, "truncated") == 0) {
        fb_aead_ctx *ctx;
        static const size_t cut[] = {1199, 1000, 200, 44, 43, 28, 27, 1};

        fb_aead_new(&ctx, c->key, FB_AEAD_CLIENT);
        for (int i = 0; i < c->count; i++) {
            len = make_hello(c, buf, sizeof(buf), ctx);
            send_now(c, buf, cut[i % 8] < len ? cut[i % 8] : len - 1, &c->sock);
            sent++;
        }
        fb_aead_free(ctx);
    } else if (strcmp(c->attack, "forged") == 0 || strcmp(c->attack, "wrong-key") == 0) {
        fb_aead_ctx *ctx;
        uint8_t wrong[32];

        rand_fill(wrong, sizeof(wrong));
        fb_aead_new(&ctx, wrong, FB_AEAD_CLIENT);
        for (int i = 0; i < c->count; i++) {
            len = make_hello(c, buf, sizeof(buf), ctx);
            if (strcmp(c->attack, "forged") == 0) {
                /* The real key's HELLO with one flipped bit in the sealed body or the tag. */
                fb_aead_ctx *good;
                fb_aead_new(&good, c->key, FB_AEAD_CLIENT);
                len = make_hello(c, buf, sizeof(buf), good);
                fb_aead_free(good);
                buf[FB_WIRE_HEADER_LEN + (size_t)i % (len - FB_WIRE_HEADER_LEN)] ^= 0x01;
            }
            send_now(c, buf, len, &c->sock);
            sent++;
        }
        fb_aead_free(ctx);
    } else if (strcmp(c->attack, "unknown-session") == 0) {
        fb_aead_ctx *ctx;

        fb_aead_new(&ctx, c->key, FB_AEAD_CLIENT);
        for (int i = 0; i < c->count; i++) {
            len = make_hello(c, buf, sizeof(buf), ctx);
            if (i % 2)
                buf[4 + 4 + i % 12] ^= 0x80; /* the random part of the id */
            else
                memset(buf + 4, 0x7f, 4); /* a slot index far beyond the table */
            send_now(c, buf, len, &c->sock);
            sent++;
        }
        fb_aead_free(ctx);
    } else if (strcmp(c->attack, "no-hello") == 0) {
        /* Data-phase packets for a live session without any HELLO (keys made up). */
        fb_aead_ctx *ctx;
        uint8_t n1[16], n2[16];

        rand_fill(n1, sizeof(n1));
        rand_fill(n2, sizeof(n2));
        fb_aead_new(&ctx, c->key, FB_AEAD_CLIENT);
        fb_aead_set_data_keys(ctx, FB_CIPHER_AES128_GCM, n1, n2);
        for (int i = 0; i < c->count; i++) {
            fb_wire_hdr hdr;
            fb_wire_data d;
            uint8_t payload[64] = {0};

            memset(&hdr, 0, sizeof(hdr));
            memcpy(hdr.sid, c->sid, sizeof(hdr.sid));
            hdr.pn = (uint64_t)i;
            d.offset = 0;
            d.send_ts_us = now_us();
            d.payload = payload;
            d.len = sizeof(payload);
            if (fb_wire_encode_data(buf, sizeof(buf), &len, &hdr, &d, ctx) != FB_OK)
                die("cannot encode DATA");
            send_now(c, buf, len, &c->sock);
            sent++;
        }
        fb_aead_free(ctx);
    } else if (strcmp(c->attack, "replay") == 0) {
        /* A real association on the first socket... */
        static uint8_t hello[FB_WIRE_MAX_DATAGRAM], data[8][256];
        size_t hello_len, data_len[8];
        fb_udp_sock other;
        char err[256];

        hello_len = handshake(c, hello, sizeof(hello));
        for (int i = 0; i < 8; i++) {
            fb_wire_hdr hdr;
            fb_wire_data d;
            uint8_t payload[100];

            memset(&hdr, 0, sizeof(hdr));
            memcpy(hdr.sid, c->sid, sizeof(hdr.sid));
            hdr.pn = c->pn++;
            memset(payload, 0, sizeof(payload));
            d.offset = 0;
            d.send_ts_us = now_us();
            d.payload = payload;
            d.len = c->size < sizeof(payload) ? (size_t)c->size : sizeof(payload);
            if (d.len == 0 ||
                fb_wire_encode_data(data[i], sizeof(data[i]), &data_len[i], &hdr, &d, c->aead) != FB_OK)
                die("cannot encode DATA (the session needs a size > 0)");
        }
        /* ...whose packets, replayed from another address, get nothing at all. */
        if (fb_udp_sock_open(&other, c->server.ss.ss_family == AF_INET ? "0.0.0.0" : "::", 0, 0, 0, err,
                             sizeof(err)) != FB_OK)
            die(err);
        for (int r = 0; r < c->count; r++) {
            send_now(c, hello, hello_len, &other);
            for (int i = 0; i < 8; i++)
                send_now(c, data[i], data_len[i], &other);
            sent += 9;
        }
        back = wait_dgrams(c, &other, (uint64_t)c->wait_ms * 1000, count_any, 0);
        fb_udp_sock_close(&other);
        printf("{\"attack\":\"replay\",\"sent\":%d,\"answers\":%d,\"hello_len\":%zu,\"hello_ack_len\":%zu}\n",
               sent, back, hello_len, c->ack_len);
        if (back != 0)
            return 1;
        /* The DATA replayed on the association itself is dropped by the replay window (the
         * first copy of each is accepted: a legitimate first delivery). */
        for (int r = 0; r < 2; r++)
            for (int i = 0; i < 8; i++)
                send_now(c, data[i], data_len[i], &c->sock);
        send_close(c, FB_OK);
        return 0;
    } else {
        fprintf(stderr, "udp_client: unknown attack '%s'\n", c->attack);
        return 2;
    }
    back = wait_dgrams(c, &c->sock, (uint64_t)c->wait_ms * 1000, count_any, 0);
    printf("{\"attack\":\"%s\",\"sent\":%d,\"answers\":%d}\n", c->attack, sent, back);
    return back == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"session", required_argument, NULL, 's'},  {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},     {"upload", required_argument, NULL, 'U'},
        {"download", required_argument, NULL, 'D'}, {"attack", required_argument, NULL, 'A'},
        {"count", required_argument, NULL, 'n'},    {"wait-ms", required_argument, NULL, 'w'},
        {"rate", required_argument, NULL, 'r'},     {"min-rate", required_argument, NULL, 'm'},
        {"policy", required_argument, NULL, 'P'},   {"cipher", required_argument, NULL, 'C'},
        {"datagram", required_argument, NULL, 'd'}, {"timeout", required_argument, NULL, 't'},
        {"no-offload", no_argument, NULL, 'O'},     {"drop", required_argument, NULL, 'L'},
        {"seed", required_argument, NULL, 'S'},     {NULL, 0, NULL, 0},
    };
    client c;
    int opt;

    memset(&c, 0, sizeof(c));
    c.host = "127.0.0.1";
    c.count = 20;
    c.wait_ms = 500;
    c.timeout_s = 10;
    c.policy = FB_POLICY_FAIR;
    c.cipher = FB_CIPHER_AES128_GCM;
    c.datagram = FB_WIRE_DEFAULT_DATAGRAM;
    c.fd = -1;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 's':
            c.session_file = optarg;
            break;
        case 'H':
            c.host = optarg;
            break;
        case 'p':
            c.port = atoi(optarg);
            break;
        case 'U':
            c.upload = optarg;
            break;
        case 'D':
            c.download = optarg;
            break;
        case 'A':
            c.attack = optarg;
            break;
        case 'n':
            c.count = atoi(optarg);
            break;
        case 'w':
            c.wait_ms = atoi(optarg);
            break;
        case 'r':
            c.rate = strtoull(optarg, NULL, 10);
            break;
        case 'm':
            c.min_rate = strtoull(optarg, NULL, 10);
            break;
        case 'P':
            c.policy = parse_policy(optarg);
            break;
        case 'C':
            c.cipher = parse_cipher(optarg);
            break;
        case 'd':
            c.datagram = (size_t)strtoul(optarg, NULL, 10);
            break;
        case 't':
            c.timeout_s = atoi(optarg);
            break;
        case 'O':
            c.no_offload = 1;
            break;
        case 'L':
            c.drop = strtod(optarg, NULL);
            break;
        case 'S':
            c.rng = strtoull(optarg, NULL, 10);
            break;
        default:
            return 2;
        }
    }
    if (c.session_file == NULL || c.port <= 0 || c.policy == 0 || c.cipher == 0 ||
        c.datagram < FB_WIRE_MIN_DATAGRAM || c.datagram > FB_WIRE_MAX_DATAGRAM ||
        (!!c.upload + !!c.download + !!c.attack) != 1) {
        fprintf(stderr, "usage: udp_client --session S.json --port P [--host H] "
                        "(--upload F | --download F | --attack KIND) [options]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    c.rng = c.rng * 0x9E3779B97F4A7C15ull + 1;
    load_session(&c);
    return c.attack ? attack(&c) : transfer(&c);
}
