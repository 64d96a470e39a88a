/* linkem: a WAN link emulator for the benchmarks, since this kernel has neither netem nor fq.
 *
 * Two network namespaces (client and server) each get a TUN device, created by this process
 * inside the namespace. One thread per direction reads IP packets from one TUN, passes them
 * through the link model (linkem_model.c: loss, drop-tail byte queue, serialisation at the link
 * rate, fixed delay), keeps the survivors in a byte ring ordered by release time, and writes each
 * to the other TUN when its time comes. bench/linkem-up and bench/linkem-down wrap it; the
 * namespaces' addresses and routes are set by linkem-up. docs/linkem.md has the numbers.
 *
 * Statistics (per direction: packets and bytes in, lost, dropped by the queue, forwarded) are
 * written as JSON on SIGUSR1 and at exit. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "linkem_model.h"

#define NS_PER_S 1000000000ull
#define NS_PER_MS 1000000ull
/* Packets read per wake-up before the thread checks the release queue again: bounds the latency
 * a burst of arrivals can add to departures. */
#define READ_BATCH 32
/* Ring size when the rate is unlimited and in-flight bytes cannot be bounded from the config. */
#define RING_UNLIMITED_DEFAULT (64ull << 20)
#define STATS_VERSION 1
/* A release this late is counted: it adds visible jitter to the emulated delay. */
#define LATE_NS (1 * NS_PER_MS)

enum { DIR_UP = 0, DIR_DOWN = 1, DIR_COUNT = 2 };
static const char *const dir_name[DIR_COUNT] = {"up", "down"};

/* The bins of dir_stats.idle_ns and .wait_pkts: upper bound (ns, exclusive; the last bin is
 * open-ended) and the name the statistics give it. */
typedef struct stat_bin {
    uint64_t upper_ns;
    const char *name;
} stat_bin;
static const stat_bin idle_bins[] = {{100000, "under_0.1ms"},
                                     {1000000, "0.1_to_1ms"},
                                     {10000000, "1_to_10ms"},
                                     {UINT64_MAX, "10ms_and_more"}};
static const stat_bin wait_bins[] = {{500000, "under_0.5ms"}, {1000000, "0.5_to_1ms"}, {2000000, "1_to_2ms"},
                                     {4000000, "2_to_4ms"},   {8000000, "4_to_8ms"},   {UINT64_MAX, "8ms_and_more"}};
#define N_IDLE_BINS (sizeof(idle_bins) / sizeof(idle_bins[0]))
#define N_WAIT_BINS (sizeof(wait_bins) / sizeof(wait_bins[0]))

/* Counters have a single writer (the direction's thread) and are read by the main thread when it
 * writes the statistics: a plain load and store (no locked add) keeps them cheap. */
typedef struct dir_stats {
    _Atomic uint64_t pkts_in, bytes_in;
    _Atomic uint64_t loss_pkts, loss_bytes;
    _Atomic uint64_t queue_pkts, queue_bytes;
    _Atomic uint64_t ring_pkts; /* no room in the ring: must stay 0, else a bug */
    _Atomic uint64_t pkts_out, bytes_out;
    _Atomic uint64_t write_errors;
    _Atomic uint64_t max_backlog;
    _Atomic uint64_t max_late_ns; /* worst lateness of a release behind its due time */
    _Atomic uint64_t late_pkts;   /* released more than LATE_NS after their due time */
    /* Where the link's capacity went unused: idle time summed by the length of the idle gap
     * (many short gaps: bursty or jittery arrivals; long ones: the sender slowed down), and the
     * arriving packets counted by the time they wait behind the backlog (the queue they met). */
    _Atomic uint64_t idle_ns[N_IDLE_BINS];
    _Atomic uint64_t wait_pkts[N_WAIT_BINS];
} dir_stats;

static unsigned bin_of(const stat_bin *bins, uint64_t v)
{
    unsigned i = 0;
    while (bins[i].upper_ns != UINT64_MAX && v >= bins[i].upper_ns)
        i++;
    return i;
}

/* Aligned so the two threads' hot data never share a cache line. */
typedef struct direction {
    _Alignas(64) int id;
    int in_fd, out_fd;
    int cpu;     /* -1: not pinned */
    int rt_prio; /* SCHED_FIFO priority, 0: normal scheduling */
    lk_dir model;
    lk_ring q;
    dir_stats st;
    pthread_t thread;
} direction;

typedef struct options {
    lk_dir_cfg cfg[DIR_COUNT];
    bool queue_set[DIR_COUNT];
    uint64_t seed;
    uint64_t ring_bytes;        /* 0: computed */
    const char *ns[DIR_COUNT];  /* namespace of the reading side: [UP] = client, [DOWN] = server */
    const char *dev[DIR_COUNT]; /* device name in that namespace */
    const char *stats_path;
    const char *pidfile;
    const char *log_path;
    bool foreground;
    int cpu[DIR_COUNT];
    int rt_prio;
} options;

static direction g_dir[DIR_COUNT];
static options g_opt;
static int g_stop_fd = -1; /* eventfd: readable once the threads must stop (wakes ppoll) */
static atomic_bool g_stop; /* the same, for a thread too busy to sleep */
static uint64_t g_start_ns;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* The release store orders the counters as the thread updates them (arrival before outcome) for
 * the reader's acquire fence; on x86 it is a plain store. */
static inline void stat_add(_Atomic uint64_t *c, uint64_t v)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v, memory_order_release);
}

static inline void stat_max(_Atomic uint64_t *c, uint64_t v)
{
    if (v > atomic_load_explicit(c, memory_order_relaxed))
        atomic_store_explicit(c, v, memory_order_relaxed);
}

static inline uint64_t stat_get(_Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* ---- the per-direction relay ---- */

/* Writes every packet whose release time has come; returns the release time of the next one,
 * or UINT64_MAX when none is held. */
static uint64_t release_due(direction *d, uint64_t now)
{
    lk_rec *h;
    while ((h = lk_ring_front(&d->q)) != NULL) {
        if (h->release_ns > now)
            return h->release_ns;
        uint64_t late = now - h->release_ns;
        stat_max(&d->st.max_late_ns, late);
        if (late > LATE_NS)
            stat_add(&d->st.late_pkts, 1);
        ssize_t n = write(d->out_fd, (uint8_t *)(h + 1), h->len);
        if (n == (ssize_t)h->len) {
            stat_add(&d->st.pkts_out, 1);
            stat_add(&d->st.bytes_out, h->len);
        } else {
            stat_add(&d->st.write_errors, 1);
        }
        lk_ring_pop(&d->q);
        /* A write into a TUN runs the receiving namespace's stack in this thread, which can take
         * long: the clock must be read again after each. */
        now = now_ns();
    }
    return UINT64_MAX;
}

/* Reads up to READ_BATCH packets. Returns 1 if more may be waiting, 0 if the TUN is drained,
 * -1 on a fatal error (the device went away). */
static int read_batch(direction *d)
{
    static _Thread_local uint8_t scratch[LK_MAX_PKT];
    for (int i = 0; i < READ_BATCH; i++) {
        lk_rec *h = lk_ring_reserve(&d->q);
        uint8_t *dst = h ? (uint8_t *)(h + 1) : scratch;
        ssize_t n = read(d->in_fd, dst, LK_MAX_PKT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            return -1;
        }
        if (n == 0)
            continue;
        uint64_t now = now_ns();
        stat_add(&d->st.pkts_in, 1);
        stat_add(&d->st.bytes_in, (uint64_t)n);
        uint64_t release;
        lk_verdict v = lk_dir_offer(&d->model, now, (uint32_t)n, &release);
        if (v == LK_DROP_LOSS) {
            stat_add(&d->st.loss_pkts, 1);
            stat_add(&d->st.loss_bytes, (uint64_t)n);
        } else if (v == LK_DROP_QUEUE) {
            stat_add(&d->st.queue_pkts, 1);
            stat_add(&d->st.queue_bytes, (uint64_t)n);
        } else if (h == NULL) {
            stat_add(&d->st.ring_pkts, 1);
        } else {
            h->release_ns = release;
            h->len = (uint32_t)n;
            h->reserved = 0;
            lk_ring_commit(&d->q);
            stat_max(&d->st.max_backlog, lk_dir_backlog(&d->model, now));
            if (d->model.last_idle_ns > 0)
                stat_add(&d->st.idle_ns[bin_of(idle_bins, d->model.last_idle_ns)], d->model.last_idle_ns);
            stat_add(&d->st.wait_pkts[bin_of(wait_bins, d->model.last_wait_ns)], 1);
        }
    }
    return 1;
}

static void *dir_thread(void *arg)
{
    direction *d = arg;
    /* The release timers must fire on time, not up to 50 us late (the default slack). */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    if (d->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(d->cpu, &set);
        int rc = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
        if (rc != 0)
            fprintf(stderr, "linkem: LKM010 cannot pin %s thread to cpu %d: %s\n", dir_name[d->id], d->cpu,
                    strerror(rc));
    }
    if (d->rt_prio > 0) {
        /* Real-time priority lets a release preempt the benchmark's own processes at once
         * instead of waiting for the CFS scheduler; the thread sleeps between packets, and the
         * kernel's RT throttling keeps a runaway from freezing the machine. */
        struct sched_param sp = {.sched_priority = d->rt_prio};
        int rc = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
        if (rc != 0)
            fprintf(stderr, "linkem: LKM014 cannot use SCHED_FIFO %d: %s\n", d->rt_prio, strerror(rc));
    }
    struct pollfd pfd[2] = {{.fd = d->in_fd, .events = POLLIN}, {.fd = g_stop_fd, .events = POLLIN}};
    for (;;) {
        if (atomic_load_explicit(&g_stop, memory_order_relaxed))
            break;
        release_due(d, now_ns());
        int r = read_batch(d);
        if (r < 0) {
            fprintf(stderr, "linkem: LKM011 %s: reading the TUN device failed: %s; stopping\n",
                    dir_name[d->id], strerror(errno));
            kill(getpid(), SIGTERM);
            break;
        }
        if (r > 0)
            continue;
        /* Drained: release what came due while reading, then sleep until the next release or the
         * next arrival. */
        uint64_t next = release_due(d, now_ns());
        struct timespec ts, *tsp = NULL;
        if (next != UINT64_MAX) {
            uint64_t now = now_ns();
            uint64_t wait = next > now ? next - now : 0;
            ts.tv_sec = (time_t)(wait / NS_PER_S);
            ts.tv_nsec = (long)(wait % NS_PER_S);
            tsp = &ts;
        }
        int pr = ppoll(pfd, 2, tsp, NULL);
        if (pr < 0 && errno != EINTR) {
            fprintf(stderr, "linkem: LKM012 %s: ppoll: %s\n", dir_name[d->id], strerror(errno));
            kill(getpid(), SIGTERM);
            break;
        }
        if (pr > 0 && (pfd[1].revents & POLLIN))
            break;
        if (pr > 0 && (pfd[0].revents & (POLLERR | POLLHUP | POLLNVAL))) {
            fprintf(stderr, "linkem: LKM013 %s: the TUN device went away; stopping\n", dir_name[d->id]);
            kill(getpid(), SIGTERM);
            break;
        }
    }
    return NULL;
}

/* ---- setup ---- */

/* Creates a TUN device named dev inside the named network namespace (/run/netns/<ns>) and returns
 * its descriptor. The device lives in that namespace for good; the descriptor works from any. */
static int tun_open_in_ns(const char *ns, const char *dev)
{
    int fd = -1, self = -1, target = -1;
    char path[PATH_MAX];
    struct ifreq ifr;

    if (strlen(dev) >= IFNAMSIZ) {
        fprintf(stderr, "linkem: LKM020 device name too long: %s\n", dev);
        return -1;
    }
    self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (self < 0) {
        fprintf(stderr, "linkem: LKM021 cannot open own network namespace: %s\n", strerror(errno));
        goto out;
    }
    if (snprintf(path, sizeof(path), "/run/netns/%s", ns) >= (int)sizeof(path))
        goto out;
    target = open(path, O_RDONLY | O_CLOEXEC);
    if (target < 0) {
        fprintf(stderr, "linkem: LKM022 no network namespace %s (%s): %s\n", ns, path, strerror(errno));
        goto out;
    }
    if (setns(target, CLONE_NEWNET) != 0) {
        fprintf(stderr, "linkem: LKM023 cannot enter namespace %s: %s\n", ns, strerror(errno));
        goto out;
    }
    fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "linkem: LKM024 cannot open /dev/net/tun: %s\n", strerror(errno));
    } else {
        memset(&ifr, 0, sizeof(ifr));
        ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
        memcpy(ifr.ifr_name, dev, strlen(dev));
        if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
            fprintf(stderr, "linkem: LKM025 cannot create TUN %s in %s: %s\n", dev, ns, strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    if (setns(self, CLONE_NEWNET) != 0) {
        /* Staying in the wrong namespace would be harmless for the relay, but say so. */
        fprintf(stderr, "linkem: LKM026 cannot return to own namespace: %s\n", strerror(errno));
    }
out:
    if (self >= 0)
        close(self);
    if (target >= 0)
        close(target);
    return fd;
}

/* ---- statistics ---- */

static json_t *dir_json(direction *d, double elapsed)
{
    const lk_dir_cfg *c = &d->model.cfg;
    dir_stats *s = &d->st;
    json_t *cfg = json_pack("{s:f, s:f, s:I, s:f}", "rate_mbit", (double)c->rate_bps / 1e6, "delay_ms",
                            (double)c->delay_ns / 1e6, "queue_bytes", (json_int_t)c->queue_bytes, "loss_pct",
                            c->loss * 100.0);
    if (cfg && c->ge_enabled)
        json_object_set_new(cfg, "ge_pct",
                            json_pack("{s:f, s:f, s:f, s:f}", "p", c->ge.p * 100.0, "r", c->ge.r * 100.0,
                                      "loss_bad", c->ge.loss_bad * 100.0, "loss_good",
                                      c->ge.loss_good * 100.0));
    /* Outcomes first, arrivals last: each outcome is counted after its arrival, so the packets
     * still held never come out negative while the thread runs on. */
    uint64_t loss = stat_get(&s->loss_pkts), qd = stat_get(&s->queue_pkts), ring = stat_get(&s->ring_pkts);
    uint64_t out = stat_get(&s->pkts_out), werr = stat_get(&s->write_errors),
             bytes_out = stat_get(&s->bytes_out);
    /* The admitted packets (queue_wait_pkts) are outcomes too. */
    json_t *idle = json_object(), *wait = json_object();
    for (unsigned i = 0; idle && i < N_IDLE_BINS; i++)
        json_object_set_new(idle, idle_bins[i].name, json_real((double)stat_get(&s->idle_ns[i]) / 1e6));
    for (unsigned i = 0; wait && i < N_WAIT_BINS; i++)
        json_object_set_new(wait, wait_bins[i].name, json_integer((json_int_t)stat_get(&s->wait_pkts[i])));
    atomic_thread_fence(memory_order_acquire);
    uint64_t in = stat_get(&s->pkts_in);
    double util =
        (c->rate_bps && elapsed > 0) ? (double)bytes_out * 8.0 / ((double)c->rate_bps * elapsed) : 0.0;
    return json_pack(
        "{s:o?, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:I, s:f, s:o?, s:o?}",
        "config", cfg, "pkts_in", (json_int_t)in, "bytes_in", (json_int_t)stat_get(&s->bytes_in), "loss_pkts",
        (json_int_t)loss, "loss_bytes", (json_int_t)stat_get(&s->loss_bytes), "queue_drop_pkts",
        (json_int_t)qd, "queue_drop_bytes", (json_int_t)stat_get(&s->queue_bytes), "ring_drop_pkts",
        (json_int_t)ring, "pkts_out", (json_int_t)out, "bytes_out", (json_int_t)bytes_out, "write_errors",
        (json_int_t)werr, "held_pkts", (json_int_t)(in - loss - qd - ring - out - werr), "max_backlog_bytes",
        (json_int_t)stat_get(&s->max_backlog), "loss_rate", in ? (double)loss / (double)in : 0.0,
        "queue_drop_rate", in ? (double)qd / (double)in : 0.0, "max_late_ms",
        (double)stat_get(&s->max_late_ns) / 1e6, "late_1ms_pkts", (json_int_t)stat_get(&s->late_pkts),
        "utilisation", util, "idle_ms_by_gap", idle, "queue_wait_pkts", wait);
}

/* Writes the statistics to the stats file (atomically, through a temporary file and rename) or
 * to stderr without one. Called from the main thread only. */
static void write_stats(bool final)
{
    double elapsed = (double)(now_ns() - g_start_ns) / 1e9;
    json_t *root = json_pack("{s:i, s:b, s:f, s:I, s:o?, s:o?}", "version", STATS_VERSION, "final", final,
                             "elapsed_s", elapsed, "seed", (json_int_t)g_opt.seed, "up",
                             dir_json(&g_dir[DIR_UP], elapsed), "down", dir_json(&g_dir[DIR_DOWN], elapsed));
    if (!root) {
        fprintf(stderr, "linkem: LKM030 cannot build the statistics\n");
        return;
    }
    if (!g_opt.stats_path) {
        json_dumpf(root, stderr, JSON_INDENT(2));
        fputc('\n', stderr);
    } else {
        char tmp[PATH_MAX];
        if (snprintf(tmp, sizeof(tmp), "%s.tmp", g_opt.stats_path) >= (int)sizeof(tmp) ||
            json_dump_file(root, tmp, JSON_INDENT(2)) != 0 || rename(tmp, g_opt.stats_path) != 0)
            fprintf(stderr, "linkem: LKM031 cannot write statistics to %s: %s\n", g_opt.stats_path,
                    strerror(errno));
    }
    json_decref(root);
}

/* ---- command line ---- */

static void usage(FILE *f)
{
    fprintf(f, "usage: linkem [options]\n"
               "Relays IP packets between a TUN device in the client namespace and one in the server\n"
               "namespace, emulating a WAN link. 'up' is client->server, 'down' server->client; each\n"
               "link option has -up and -down variants, the plain one sets both.\n"
               "  --rate MBIT          link rate in Mbit/s (default 1000; 0 = unlimited)\n"
               "  --delay MS           one-way delay in ms (default 0; RTT = delay-up + delay-down)\n"
               "  --loss PCT           independent random loss in %% (default 0)\n"
               "  --ge P,R[,1-H[,1-K]] Gilbert-Elliott loss in %%, netem order: P good->bad, R bad->good,\n"
               "                       1-H loss in bad (default 100), 1-K loss in good (default 0)\n"
               "  --queue BYTES        drop-tail queue (suffix k, m = KiB, MiB; default rate x 100 ms,\n"
               "                       at least 64 KiB)\n"
               "  --seed N             PRNG seed (default 1): same seed, same packets, same losses\n"
               "  --client-ns NAME     client namespace (default fbc), --client-dev NAME (default fbc0)\n"
               "  --server-ns NAME     server namespace (default fbs), --server-dev NAME (default fbs0)\n"
               "  --stats FILE         write JSON statistics here on SIGUSR1 and at exit (default stderr)\n"
               "  --pidfile FILE       write the relay's pid here once it runs\n"
               "  --log FILE           where the daemon's messages go (default /dev/null)\n"
               "  --foreground         do not daemonise\n"
               "  --cpu-up N, --cpu-down N  pin a direction's thread to a CPU\n"
               "  --rt PRIO            run the relay threads SCHED_FIFO at PRIO (1-99; 0 = off, default)\n"
               "  --ring BYTES         per-direction packet buffer (default from rate, delay and queue)\n");
}

static bool parse_double(double *out, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_bytes(uint64_t *out, const char *s)
{
    char *end;
    errno = 0;
    if (*s == '-')
        return false;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return false;
    unsigned shift = 0;
    if (*end == 'k' || *end == 'K')
        shift = 10, end++;
    else if (*end == 'm' || *end == 'M')
        shift = 20, end++;
    else if (*end == 'g' || *end == 'G')
        shift = 30, end++;
    if (*end || v > (UINT64_MAX >> shift))
        return false;
    *out = (uint64_t)v << shift;
    return true;
}

static bool parse_ge(lk_dir_cfg *cfg, const char *s)
{
    double v[4] = {0, 0, 100, 0};
    char buf[128];
    if (strlen(s) >= sizeof(buf))
        return false;
    strcpy(buf, s);
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == 4 || !parse_double(&v[n], tok, 0.0, 100.0))
            return false;
        n++;
    }
    if (n < 2)
        return false;
    cfg->ge_enabled = true;
    cfg->ge.p = v[0] / 100.0;
    cfg->ge.r = v[1] / 100.0;
    cfg->ge.loss_bad = v[2] / 100.0;
    cfg->ge.loss_good = v[3] / 100.0;
    return true;
}

enum {
    OPT_RATE = 256,
    OPT_RATE_UP,
    OPT_RATE_DOWN,
    OPT_DELAY,
    OPT_DELAY_UP,
    OPT_DELAY_DOWN,
    OPT_LOSS,
    OPT_LOSS_UP,
    OPT_LOSS_DOWN,
    OPT_GE,
    OPT_GE_UP,
    OPT_GE_DOWN,
    OPT_QUEUE,
    OPT_QUEUE_UP,
    OPT_QUEUE_DOWN,
    OPT_SEED,
    OPT_STATS,
    OPT_PIDFILE,
    OPT_LOG,
    OPT_FOREGROUND,
    OPT_CLIENT_NS,
    OPT_SERVER_NS,
    OPT_CLIENT_DEV,
    OPT_SERVER_DEV,
    OPT_CPU_UP,
    OPT_CPU_DOWN,
    OPT_RING,
    OPT_RT,
    OPT_HELP,
};

/* Applies a per-direction option to the directions its variant names (both, up or down). */
static bool set_dir_opt(options *o, int base, int variant, const char *arg)
{
    int first = variant == 2 ? DIR_DOWN : DIR_UP, last = variant == 1 ? DIR_UP : DIR_DOWN;
    for (int i = first; i <= last; i++) {
        lk_dir_cfg *c = &o->cfg[i];
        double v;
        switch (base) {
        case OPT_RATE:
            if (!parse_double(&v, arg, 0.0, 100000.0))
                return false;
            c->rate_bps = (uint64_t)llround(v * 1e6);
            break;
        case OPT_DELAY:
            if (!parse_double(&v, arg, 0.0, 10000.0))
                return false;
            c->delay_ns = (uint64_t)llround(v * 1e6);
            break;
        case OPT_LOSS:
            if (!parse_double(&v, arg, 0.0, 100.0))
                return false;
            c->loss = v / 100.0;
            break;
        case OPT_GE:
            if (!parse_ge(c, arg))
                return false;
            break;
        case OPT_QUEUE:
            if (!parse_bytes(&c->queue_bytes, arg))
                return false;
            o->queue_set[i] = true;
            break;
        default:
            return false;
        }
    }
    return true;
}

static int parse_args(options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"rate", required_argument, NULL, OPT_RATE},
        {"rate-up", required_argument, NULL, OPT_RATE_UP},
        {"rate-down", required_argument, NULL, OPT_RATE_DOWN},
        {"delay", required_argument, NULL, OPT_DELAY},
        {"delay-up", required_argument, NULL, OPT_DELAY_UP},
        {"delay-down", required_argument, NULL, OPT_DELAY_DOWN},
        {"loss", required_argument, NULL, OPT_LOSS},
        {"loss-up", required_argument, NULL, OPT_LOSS_UP},
        {"loss-down", required_argument, NULL, OPT_LOSS_DOWN},
        {"ge", required_argument, NULL, OPT_GE},
        {"ge-up", required_argument, NULL, OPT_GE_UP},
        {"ge-down", required_argument, NULL, OPT_GE_DOWN},
        {"queue", required_argument, NULL, OPT_QUEUE},
        {"queue-up", required_argument, NULL, OPT_QUEUE_UP},
        {"queue-down", required_argument, NULL, OPT_QUEUE_DOWN},
        {"seed", required_argument, NULL, OPT_SEED},
        {"stats", required_argument, NULL, OPT_STATS},
        {"pidfile", required_argument, NULL, OPT_PIDFILE},
        {"log", required_argument, NULL, OPT_LOG},
        {"foreground", no_argument, NULL, OPT_FOREGROUND},
        {"client-ns", required_argument, NULL, OPT_CLIENT_NS},
        {"server-ns", required_argument, NULL, OPT_SERVER_NS},
        {"client-dev", required_argument, NULL, OPT_CLIENT_DEV},
        {"server-dev", required_argument, NULL, OPT_SERVER_DEV},
        {"cpu-up", required_argument, NULL, OPT_CPU_UP},
        {"cpu-down", required_argument, NULL, OPT_CPU_DOWN},
        {"ring", required_argument, NULL, OPT_RING},
        {"rt", required_argument, NULL, OPT_RT},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    for (int i = 0; i < DIR_COUNT; i++) {
        o->cfg[i].rate_bps = 1000000000ull;
        o->cpu[i] = -1;
    }
    o->seed = 1;
    o->ns[DIR_UP] = "fbc";
    o->ns[DIR_DOWN] = "fbs";
    o->dev[DIR_UP] = "fbc0";
    o->dev[DIR_DOWN] = "fbs0";

    int c, li = -1;
    while ((c = getopt_long(argc, argv, "", longopts, &li)) != -1) {
        bool ok = true;
        char *end;
        if (c == '?' || c == ':')
            li = -1;
        switch (c) {
        case OPT_RATE:
        case OPT_RATE_UP:
        case OPT_RATE_DOWN:
            ok = set_dir_opt(o, OPT_RATE, c - OPT_RATE, optarg);
            break;
        case OPT_DELAY:
        case OPT_DELAY_UP:
        case OPT_DELAY_DOWN:
            ok = set_dir_opt(o, OPT_DELAY, c - OPT_DELAY, optarg);
            break;
        case OPT_LOSS:
        case OPT_LOSS_UP:
        case OPT_LOSS_DOWN:
            ok = set_dir_opt(o, OPT_LOSS, c - OPT_LOSS, optarg);
            break;
        case OPT_GE:
        case OPT_GE_UP:
        case OPT_GE_DOWN:
            ok = set_dir_opt(o, OPT_GE, c - OPT_GE, optarg);
            break;
        case OPT_QUEUE:
        case OPT_QUEUE_UP:
        case OPT_QUEUE_DOWN:
            ok = set_dir_opt(o, OPT_QUEUE, c - OPT_QUEUE, optarg);
            break;
        case OPT_SEED:
            errno = 0;
            o->seed = strtoull(optarg, &end, 0);
            ok = !errno && end != optarg && !*end && *optarg != '-';
            break;
        case OPT_STATS:
            o->stats_path = optarg;
            break;
        case OPT_PIDFILE:
            o->pidfile = optarg;
            break;
        case OPT_LOG:
            o->log_path = optarg;
            break;
        case OPT_FOREGROUND:
            o->foreground = true;
            break;
        case OPT_CLIENT_NS:
            o->ns[DIR_UP] = optarg;
            break;
        case OPT_SERVER_NS:
            o->ns[DIR_DOWN] = optarg;
            break;
        case OPT_CLIENT_DEV:
            o->dev[DIR_UP] = optarg;
            break;
        case OPT_SERVER_DEV:
            o->dev[DIR_DOWN] = optarg;
            break;
        case OPT_CPU_UP:
        case OPT_CPU_DOWN: {
            errno = 0;
            long v = strtol(optarg, &end, 10);
            ok = !errno && end != optarg && !*end && v >= 0 && v < CPU_SETSIZE;
            o->cpu[c == OPT_CPU_UP ? DIR_UP : DIR_DOWN] = (int)v;
            break;
        }
        case OPT_RING:
            ok = parse_bytes(&o->ring_bytes, optarg);
            break;
        case OPT_RT: {
            errno = 0;
            long v = strtol(optarg, &end, 10);
            ok = !errno && end != optarg && !*end && v >= 0 && v <= 99;
            o->rt_prio = (int)v;
            break;
        }
        case OPT_HELP:
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
        if (!ok) {
            fprintf(stderr, "linkem: LKM001 invalid value for --%s: %s\n", li >= 0 ? longopts[li].name : "?",
                    optarg);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "linkem: LKM002 unexpected argument: %s\n", argv[optind]);
        return -1;
    }
    for (int i = 0; i < DIR_COUNT; i++) {
        lk_dir_cfg *cfg = &o->cfg[i];
        if (!o->queue_set[i]) {
            uint64_t q = cfg->rate_bps / 8 / 10; /* 100 ms at the link rate */
            cfg->queue_bytes = q < 65536 ? 65536 : q;
        }
        const char *err = lk_dir_cfg_check(cfg);
        if (err) {
            fprintf(stderr, "linkem: LKM003 %s direction: %s\n", dir_name[i], err);
            return -1;
        }
    }
    if (o->ring_bytes && o->ring_bytes < 4ull * LK_MAX_REC) {
        fprintf(stderr, "linkem: LKM004 --ring must be at least %u bytes\n", 4u * LK_MAX_REC);
        return -1;
    }
    if (strcmp(o->ns[0], o->ns[1]) == 0) {
        fprintf(stderr, "linkem: LKM005 the client and server namespaces must differ\n");
        return -1;
    }
    return 0;
}

static size_t ring_size(const options *o, int i)
{
    if (o->ring_bytes)
        return (size_t)o->ring_bytes;
    size_t sz = lk_ring_size(&o->cfg[i]);
    return sz ? sz : RING_UNLIMITED_DEFAULT;
}

/* ---- process ---- */

static int write_pidfile(const char *path)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "%ld\n", (long)getpid());
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int rc = 1, ready_pipe[2] = {-1, -1};
    bool threads_started[DIR_COUNT] = {false, false};

    if (parse_args(&g_opt, argc, argv) != 0)
        return 2;

    /* The TUN devices first: if they cannot be made, fail before daemonising so the caller sees
     * the error. [UP] reads the client TUN and writes the server TUN; [DOWN] the reverse. */
    int tun[DIR_COUNT];
    for (int i = 0; i < DIR_COUNT; i++) {
        tun[i] = tun_open_in_ns(g_opt.ns[i], g_opt.dev[i]);
        if (tun[i] < 0) {
            if (i == 1)
                close(tun[0]);
            return 1;
        }
    }
    for (int i = 0; i < DIR_COUNT; i++) {
        direction *d = &g_dir[i];
        d->id = i;
        d->in_fd = tun[i];
        d->out_fd = tun[1 - i];
        d->cpu = g_opt.cpu[i];
        d->rt_prio = g_opt.rt_prio;
        lk_dir_init(&d->model, &g_opt.cfg[i], g_opt.seed, (uint64_t)i);
        size_t sz = ring_size(&g_opt, i);
        void *mem = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) {
            fprintf(stderr, "linkem: LKM040 cannot allocate a %zu-byte ring: %s\n", sz, strerror(errno));
            return 1;
        }
        lk_ring_init(&d->q, mem, sz);
    }
    g_stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (g_stop_fd < 0) {
        fprintf(stderr, "linkem: LKM041 eventfd: %s\n", strerror(errno));
        return 1;
    }

    if (!g_opt.foreground) {
        /* Daemonise; the parent waits until the child says it runs, so "linkem && configure" works
         * and a failure shows in the parent's exit status. */
        if (pipe2(ready_pipe, O_CLOEXEC) != 0) {
            fprintf(stderr, "linkem: LKM042 pipe: %s\n", strerror(errno));
            return 1;
        }
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "linkem: LKM043 fork: %s\n", strerror(errno));
            return 1;
        }
        if (pid > 0) {
            char ok = 0;
            close(ready_pipe[1]);
            ssize_t n;
            do {
                n = read(ready_pipe[0], &ok, 1);
            } while (n < 0 && errno == EINTR);
            return n == 1 && ok == 'R' ? 0 : 1;
        }
        close(ready_pipe[0]);
        setsid();
    }

    /* Signals go to the main thread only, which waits for them synchronously. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    sigaddset(&sigs, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (g_opt.pidfile && write_pidfile(g_opt.pidfile) != 0) {
        fprintf(stderr, "linkem: LKM044 cannot write pidfile %s: %s\n", g_opt.pidfile, strerror(errno));
        goto out;
    }
    g_start_ns = now_ns();
    for (int i = 0; i < DIR_COUNT; i++) {
        int e = pthread_create(&g_dir[i].thread, NULL, dir_thread, &g_dir[i]);
        if (e != 0) {
            fprintf(stderr, "linkem: LKM045 pthread_create: %s\n", strerror(e));
            goto out;
        }
        threads_started[i] = true;
    }
    if (!g_opt.foreground) {
        int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
        int logfd =
            g_opt.log_path ? open(g_opt.log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644) : -1;
        if (nul >= 0) {
            dup2(nul, STDIN_FILENO);
            dup2(logfd >= 0 ? logfd : nul, STDOUT_FILENO);
            dup2(logfd >= 0 ? logfd : nul, STDERR_FILENO);
            close(nul);
        }
        if (logfd >= 0)
            close(logfd);
        char ok = 'R';
        if (write(ready_pipe[1], &ok, 1) != 1)
            goto out;
        close(ready_pipe[1]);
        ready_pipe[1] = -1;
    }

    fprintf(stderr, "linkem: LKM050 running, pid %ld: up %s/%s -> %s/%s, down the reverse\n", (long)getpid(),
            g_opt.ns[0], g_opt.dev[0], g_opt.ns[1], g_opt.dev[1]);
    for (;;) {
        int sig = sigwaitinfo(&sigs, NULL);
        if (sig < 0)
            continue; /* EINTR */
        if (sig == SIGUSR1 || sig == SIGHUP) {
            write_stats(false);
            continue;
        }
        break;
    }
    rc = 0;
out : {
    uint64_t one = 1;
    atomic_store(&g_stop, true);
    if (write(g_stop_fd, &one, sizeof(one)) != sizeof(one))
        fprintf(stderr, "linkem: LKM046 cannot wake the relay threads\n");
}
    for (int i = 0; i < DIR_COUNT; i++)
        if (threads_started[i])
            pthread_join(g_dir[i].thread, NULL);
    if (threads_started[0] || threads_started[1])
        write_stats(true);
    if (g_opt.pidfile)
        unlink(g_opt.pidfile);
    fprintf(stderr, "linkem: LKM051 stopped\n");
    return rc;
}
