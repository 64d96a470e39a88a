/* udpd: the UDP data path daemon of the fallback file transfer system.
 *
 * Reads fallback.xml (the same file as mod_fallback), binds <udp><port> on <bind_address>,
 * attaches to the shared session table (creating it if Apache has not yet), drops the
 * privileges it no longer needs, and moves file data for the sessions it finds there, in the
 * foreground (systemd, or supervised by mod_fallback). One thread runs the event loop (epoll
 * over the socket, a timerfd for pacing and feedback, a signalfd); a second one writes upload
 * checkpoints. See docs/udpd.md and udpd(8). */
#include "udpd.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "fb_util.h"

#define BDP_RTT_US 250000u /* socket buffers hold this long at the highest rate */
#define SOCKET_BUFFER_MIN (4u << 20)
#define SOCKET_BUFFER_MAX (256u << 20)
#define HEARTBEAT_US 1000000ull
#define STATS_US (60ull * 1000000)
#define RX_BATCHES_PER_WAKE 64 /* then the timers get a turn */
/* After a read that found datagrams, the next ones are left to gather in the socket this long
 * (unless a timer is due sooner) instead of waking for each: a 500 Mbit/s upload woke udpd
 * 12000 times a second for about three datagrams each. Arrival times come from the kernel. */
#define RX_GATHER_US 500

struct udpd {
    const char *config_file;
    fb_config *cfg;
    fb_table *table;
    fb_udp_sock sock;
    fb_udp_rx *rx;
    fb_udp_tx *tx;
    udpd_sessions *ss;
    int epfd, tfd, sfd;
    int want_out; /* EPOLLOUT armed */
    uint64_t timer_armed_us;
    uint64_t last_heartbeat_us, last_stats_us;
    uint64_t rx_found_us; /* when the last read found datagrams and drained the socket; 0: no */
};

static volatile int stop_requested;

const fb_config *udpd_cfg(const udpd *d)
{
    return d->cfg;
}

fb_table *udpd_table(const udpd *d)
{
    return d->table;
}

uint64_t udpd_now_us(void)
{
    return fb_time_mono_ns() / 1000;
}

static void flush_tx(udpd *d)
{
    uint64_t before = d->sock.st.tx_dgrams, calls = d->sock.st.tx_calls;
    int had_gso = d->sock.gso, busy = fb_udp_tx_flush(&d->sock, d->tx);

    if (had_gso && !d->sock.gso)
        udpd_log(UDPD_WARN, "UD00080", "the kernel refuses UDP GSO (%s): sending plain datagrams from now on",
                 strerror(d->sock.gso_errno));

    udpd_ctr.tx_dgrams += d->sock.st.tx_dgrams - before;
    udpd_ctr.tx_sends += d->sock.st.tx_calls - calls;
    if (busy != d->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (busy ? EPOLLOUT : 0), .data.fd = d->sock.fd};

        if (epoll_ctl(d->epfd, EPOLL_CTL_MOD, d->sock.fd, &ev) == 0)
            d->want_out = busy;
    }
}

uint8_t *udpd_send_reserve(udpd *d, size_t maxlen)
{
    uint8_t *p = fb_udp_tx_reserve(d->tx, maxlen);

    if (p == NULL && !d->want_out) {
        /* Full: send what is queued and try again. */
        flush_tx(d);
        p = fb_udp_tx_reserve(d->tx, maxlen);
    }
    return p;
}

int udpd_send_blocked(const udpd *d)
{
    return d->want_out;
}

void udpd_send_commit(udpd *d, size_t len, const udpd_addr *to)
{
    if (fb_udp_tx_commit(d->tx, len, to) == FB_OK)
        udpd_ctr.tx_bytes += len;
}

/* ---- options ---------------------------------------------------------------------------------- */

typedef struct options {
    const char *config;
    const char *user;
    const char *pidfile;
    int check_only;
    int no_offload;
} options;

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: udpd -c FILE [-f] [--user NAME] [--pidfile FILE] [--log-level LEVEL] [--no-offload] [-t]\n"
        "\n"
        "  -c, --config FILE     fallback.xml to read (default %s)\n"
        "  -f, --foreground      stay in the foreground (always the case; for systemd and supervisors)\n"
        "  -u, --user NAME       when started as root: create the session table for NAME and run as NAME\n"
        "                        (and its groups) after binding the socket\n"
        "  -p, --pidfile FILE    write the process id to FILE (removed at exit when still permitted)\n"
        "  -l, --log-level LEVEL error, warn, info (default) or debug\n"
        "      --no-offload      do not use UDP GSO/GRO even where the kernel offers them\n"
        "  -t, --check           load the configuration, report, and exit\n"
        "  -h, --help            this text\n"
        "\n"
        "Signals: TERM/INT checkpoint every upload and exit 0; HUP reloads the configuration (the port,\n"
        "address and session table need a restart); USR1 logs the counters and live sessions.\n",
        FB_DEFAULT_CONFIG_FILE);
}

static int parse_options(options *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"foreground", no_argument, NULL, 'f'},
        {"user", required_argument, NULL, 'u'},
        {"pidfile", required_argument, NULL, 'p'},
        {"log-level", required_argument, NULL, 'l'},
        {"no-offload", no_argument, NULL, 'O'},
        {"check", no_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c, lvl;

    memset(o, 0, sizeof(*o));
    o->config = FB_DEFAULT_CONFIG_FILE;
    while ((c = getopt_long(argc, argv, "c:fu:p:l:th", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            o->config = optarg;
            break;
        case 'f':
            break;
        case 'u':
            o->user = optarg;
            break;
        case 'p':
            o->pidfile = optarg;
            break;
        case 'l':
            lvl = udpd_level_parse(optarg);
            if (lvl < 0) {
                fprintf(stderr, "udpd: unknown log level '%s'\n", optarg);
                return 2;
            }
            udpd_log_level = (udpd_level)lvl;
            break;
        case 'O':
            o->no_offload = 1;
            break;
        case 't':
            o->check_only = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "udpd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    return -1;
}

/* ---- privileges ------------------------------------------------------------------------------- */

static int lookup_user(const char *name, uid_t *puid, gid_t *pgid)
{
    struct passwd pw, *res = NULL;
    char buf[4096];

    if (getpwnam_r(name, &pw, buf, sizeof(buf), &res) != 0 || res == NULL)
        return -1;
    *puid = pw.pw_uid;
    *pgid = pw.pw_gid;
    return 0;
}

static int drop_privileges(const char *user, uid_t uid, gid_t gid)
{
    if (initgroups(user, gid) != 0) {
        udpd_log(UDPD_ERROR, "UD00010", "initgroups(%s): %s", user, strerror(errno));
        return -1;
    }
    if (setgid(gid) != 0 || setuid(uid) != 0) {
        udpd_log(UDPD_ERROR, "UD00011", "cannot switch to user %s: %s", user, strerror(errno));
        return -1;
    }
    /* Paranoia: getting root back must be impossible now. */
    if (uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
        udpd_log(UDPD_ERROR, "UD00012", "could regain root after switching to %s", user);
        return -1;
    }
    return 0;
}

/* ---- event loop ------------------------------------------------------------------------------- */

static void arm_timer(udpd *d, uint64_t at_us, uint64_t now)
{
    struct itimerspec its;

    if (at_us <= now)
        at_us = now + 1;
    if (at_us == d->timer_armed_us)
        return;
    memset(&its, 0, sizeof(its));
    /* Absolute on the monotonic clock fb_time_mono_ns reads. */
    its.it_value.tv_sec = (time_t)(at_us / 1000000);
    its.it_value.tv_nsec = (long)(at_us % 1000000) * 1000;
    if (timerfd_settime(d->tfd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
        d->timer_armed_us = at_us;
}

static void heartbeat(udpd *d, uint64_t now)
{
    fb_table_header *h = fb_table_header_get(d->table);

    atomic_store(&h->heartbeat_ns, fb_time_now_ns());
    atomic_store(&h->udpd_pid, (int32_t)getpid());
    d->last_heartbeat_us = now;
}

/* NAMES of the bits set in BITS, comma-separated, into BUF. */
static void bit_names(char *buf, size_t len, unsigned bits, const char *(*name)(unsigned))
{
    size_t used = 0;

    buf[0] = '\0';
    for (unsigned i = 0; i < 8 && used < len; i++)
        if (bits & (1u << i)) {
            int n = snprintf(buf + used, len - used, "%s%s", used ? "," : "", name(1u << i));
            if (n < 0)
                break;
            used += (size_t)n;
        }
}

/* The settings udpd applies to each new association, as one line (after a start or reload). */
static void log_settings(const udpd *d, const char *tag, const char *what)
{
    char policies[64], ciphers[64];

    bit_names(policies, sizeof(policies), d->cfg->allowed_policies, fb_config_policy_name);
    bit_names(ciphers, sizeof(ciphers), d->cfg->allowed_ciphers, fb_config_cipher_name);
    udpd_log(UDPD_INFO, tag,
             "configuration %s %s: target_rate_cap_kbps %llu, min_rate_cap_kbps %llu, policies %s, "
             "ciphers %s, %u docroots",
             d->config_file, what, (unsigned long long)d->cfg->target_rate_cap_kbps,
             (unsigned long long)d->cfg->min_rate_cap_kbps, policies, ciphers, d->cfg->ndocroots);
}

static void reload(udpd *d)
{
    fb_config *ncfg = NULL;
    char err[2048] = "";

    if (fb_config_load(&ncfg, d->config_file, NULL, err, sizeof(err)) != FB_OK) {
        udpd_log(UDPD_ERROR, "UD00030", "reload of %s failed, keeping the old configuration: %s",
                 d->config_file, err);
        return;
    }
    if (ncfg->udp_port != d->cfg->udp_port || strcmp(ncfg->bind_address, d->cfg->bind_address) != 0)
        udpd_log(UDPD_WARN, "UD00031",
                 "the UDP port or address changed (%s port %d): restart udpd to apply it (under Apache's "
                 "FallbackDaemon on, apachectl graceful restarts it)",
                 ncfg->bind_address, ncfg->udp_port);
    if (strcmp(ncfg->shm_path, d->cfg->shm_path) != 0)
        udpd_log(UDPD_WARN, "UD00032", "the session table path changed (%s): restart udpd to apply it",
                 ncfg->shm_path);
    fb_config_free(d->cfg);
    d->cfg = ncfg;
    log_settings(d, "UD00033", "reloaded; they apply to new associations");
}

static void handle_signals(udpd *d)
{
    struct signalfd_siginfo si;

    for (int i = 0; i < 16; i++) {
        ssize_t n = read(d->sfd, &si, sizeof(si));

        if (n != (ssize_t)sizeof(si))
            break;
        switch (si.ssi_signo) {
        case SIGTERM:
        case SIGINT:
            udpd_log(UDPD_INFO, "UD00034", "signal %u: stopping", si.ssi_signo);
            stop_requested = 1;
            break;
        case SIGHUP:
            reload(d);
            break;
        case SIGUSR1:
            udpd_counters_log(UDPD_INFO, "SIGUSR1");
            udpd_sessions_log(d->ss);
            break;
        default:
            break;
        }
    }
}

static void receive(udpd *d)
{
    d->rx_found_us = 0;
    for (int b = 0; b < RX_BATCHES_PER_WAKE; b++) {
        fb_udp_dgram *dg;
        int n = fb_udp_rx_recv(&d->sock, d->rx, &dg);
        uint64_t now;

        if (n < 0) {
            udpd_log(UDPD_WARN, "UD00035", "receive: %s", strerror(errno));
            return;
        }
        if (n == 0) {
            if (b > 0)
                d->rx_found_us = udpd_now_us();
            return;
        }
        if (b == 0)
            udpd_ctr.rx_reads++;
        now = udpd_now_us();
        for (int i = 0; i < n; i++)
            udpd_sessions_input(d->ss, dg[i].buf, dg[i].len, dg[i].from, now, dg[i].arrived_us);
        udpd_sessions_after_batch(d->ss, now);
        flush_tx(d);
    }
}

static int event_loop(udpd *d)
{
    struct epoll_event evs[8];

    while (!stop_requested) {
        uint64_t now = udpd_now_us(), next;
        int n;

        next = udpd_sessions_run(d->ss, now);
        flush_tx(d);
        if (now - d->last_heartbeat_us >= HEARTBEAT_US)
            heartbeat(d, now);
        if (now - d->last_stats_us >= STATS_US) {
            d->last_stats_us = now;
            udpd_counters_log(UDPD_DEBUG, "periodic");
        }
        if (d->last_heartbeat_us + HEARTBEAT_US < next)
            next = d->last_heartbeat_us + HEARTBEAT_US;
        if (d->rx_found_us != 0 && next > now) {
            uint64_t until = d->rx_found_us + RX_GATHER_US < next ? d->rx_found_us + RX_GATHER_US : next;

            d->rx_found_us = 0;
            if (until > now) {
                /* let datagrams gather; signals wait in the signalfd meanwhile */
                struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(until - now) * 1000};

                nanosleep(&ts, NULL);
                continue;
            }
        }
        arm_timer(d, next, now);
        n = epoll_wait(d->epfd, evs, 8, next <= now ? 0 : -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            udpd_log(UDPD_ERROR, "UD00036", "epoll_wait: %s", strerror(errno));
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;

            if (fd == d->sfd) {
                handle_signals(d);
            } else if (fd == d->tfd) {
                uint64_t expirations;

                if (read(d->tfd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
                    udpd_log(UDPD_WARN, "UD00037", "timerfd: %s", strerror(errno));
                d->timer_armed_us = 0;
            } else if (fd == d->sock.fd) {
                if (evs[i].events & EPOLLOUT)
                    flush_tx(d);
                if (evs[i].events & (EPOLLIN | EPOLLERR))
                    receive(d);
            }
        }
    }
    return 0;
}

static int setup_fds(udpd *d)
{
    struct epoll_event ev;
    sigset_t set;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        return -1;
    signal(SIGPIPE, SIG_IGN);
    d->sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    d->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    d->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (d->sfd < 0 || d->tfd < 0 || d->epfd < 0)
        return -1;
    ev.events = EPOLLIN;
    ev.data.fd = d->sfd;
    if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, d->sfd, &ev) != 0)
        return -1;
    ev.data.fd = d->tfd;
    if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, d->tfd, &ev) != 0)
        return -1;
    ev.data.fd = d->sock.fd;
    if (epoll_ctl(d->epfd, EPOLL_CTL_ADD, d->sock.fd, &ev) != 0)
        return -1;
    return 0;
}

/* Socket buffers of about the bandwidth-delay product: the highest rate one transfer may have
 * (the configured cap, else the default target) for a 250 ms round trip. */
static size_t socket_buffer_for(const fb_config *cfg)
{
    uint64_t rate = cfg->target_rate_cap_kbps ? cfg->target_rate_cap_kbps * 125 : UDPD_DEFAULT_RATE;
    uint64_t b = rate / 1000000 * BDP_RTT_US;

    if (b < SOCKET_BUFFER_MIN)
        b = SOCKET_BUFFER_MIN;
    if (b > SOCKET_BUFFER_MAX)
        b = SOCKET_BUFFER_MAX;
    return (size_t)b;
}

static int write_pidfile(const char *path)
{
    char buf[32];
    int fd, n;

    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    if (write(fd, buf, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    return close(fd);
}

int main(int argc, char **argv)
{
    udpd d;
    options o;
    fb_table_opts topts;
    char err[2048] = "";
    uid_t uid = (uid_t)-1;
    gid_t gid = (gid_t)-1;
    int rc, status = 1, pidfile_written = 0;
    size_t bufsize;
    fb_err e;
    sigset_t hup;

    /* A reload asked for before the loop runs (apachectl graceful just after the start) waits
     * for the signalfd instead of ending udpd by SIGHUP's default action. */
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    (void)sigprocmask(SIG_BLOCK, &hup, NULL);
    rc = parse_options(&o, argc, argv);
    if (rc >= 0)
        return rc;
    memset(&d, 0, sizeof(d));
    d.sock.fd = d.epfd = d.tfd = d.sfd = -1;
    d.config_file = o.config;

    e = fb_config_load(&d.cfg, o.config, NULL, err, sizeof(err));
    if (e != FB_OK) {
        udpd_log(UDPD_ERROR, "UD00001", "cannot load the configuration: %s", err);
        return 3;
    }
    if (o.check_only) {
        udpd_log(UDPD_INFO, "UD00002", "%s: OK (udp %s port %d, table %s)", o.config, d.cfg->bind_address,
                 d.cfg->udp_port, d.cfg->shm_path);
        fb_config_free(d.cfg);
        return 0;
    }
    if (o.user != NULL) {
        if (geteuid() != 0) {
            udpd_log(UDPD_ERROR, "UD00003", "--user needs root (udpd runs as uid %ld already)",
                     (long)geteuid());
            goto out;
        }
        if (lookup_user(o.user, &uid, &gid) != 0) {
            udpd_log(UDPD_ERROR, "UD00004", "unknown user '%s'", o.user);
            goto out;
        }
    } else if (geteuid() == 0) {
        udpd_log(UDPD_WARN, "UD00005",
                 "running as root: use --user (Apache's user) so that the files udpd writes "
                 "stay usable by Apache");
    }

    bufsize = socket_buffer_for(d.cfg);
    e = fb_udp_sock_open(&d.sock, d.cfg->bind_address, d.cfg->udp_port, bufsize, !o.no_offload, err,
                         sizeof(err));
    if (e != FB_OK) {
        udpd_log(UDPD_ERROR, "UD00006", "cannot open the UDP socket: %s", err);
        goto out;
    }
    memset(&topts, 0, sizeof(topts));
    topts.nslots = d.cfg->max_sessions;
    topts.create = 1;
    topts.owner_uid = o.user ? uid : (uid_t)-1;
    topts.owner_gid = o.user ? gid : (gid_t)-1;
    topts.trusted_uid = o.user ? uid : geteuid();
    e = fb_table_open(&d.table, d.cfg->shm_path, &topts, err, sizeof(err));
    if (e != FB_OK) {
        udpd_log(UDPD_ERROR, "UD00007", "cannot open the session table %s: %s", d.cfg->shm_path,
                 err[0] ? err : fb_err_message(e));
        goto out;
    }
    if (o.pidfile != NULL) {
        if (write_pidfile(o.pidfile) != 0) {
            udpd_log(UDPD_ERROR, "UD00008", "cannot write the pid file %s: %s", o.pidfile, strerror(errno));
            goto out;
        }
        pidfile_written = 1;
    }
    if (o.user != NULL && drop_privileges(o.user, uid, gid) != 0)
        goto out;
    /* No execve may ever give privileges back (udpd never executes anything anyway). */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        udpd_log(UDPD_WARN, "UD00009", "PR_SET_NO_NEW_PRIVS: %s", strerror(errno));

    if (fb_udp_rx_new(&d.rx, 0) != FB_OK || fb_udp_tx_new(&d.tx, 0, 0) != FB_OK ||
        udpd_sessions_new(&d.ss, &d, fb_table_nslots(d.table)) != FB_OK) {
        udpd_log(UDPD_ERROR, "UD00013", "out of memory");
        goto out;
    }
    if (setup_fds(&d) != 0) {
        udpd_log(UDPD_ERROR, "UD00014", "cannot set up epoll/timerfd/signalfd: %s", strerror(errno));
        goto out;
    }
    if (udpd_ckpt_start() != FB_OK) {
        udpd_log(UDPD_ERROR, "UD00015", "cannot start the checkpoint thread");
        goto out;
    }
    heartbeat(&d, udpd_now_us());
    d.last_stats_us = udpd_now_us();
    udpd_log(UDPD_INFO, "UD00016",
             "listening on %s port %d (uid %ld, table %s with %u slots, socket buffers %d/%d bytes, GRO %s, "
             "GSO %s)",
             d.cfg->bind_address, d.cfg->udp_port, (long)geteuid(), d.cfg->shm_path, fb_table_nslots(d.table),
             d.sock.rcvbuf, d.sock.sndbuf, d.sock.gro ? "on" : "off", d.sock.gso ? "on" : "off");
    log_settings(&d, "UD00071", "loaded");
    if ((size_t)d.sock.rcvbuf < bufsize / 4)
        udpd_log(
            UDPD_WARN, "UD00017",
            "the kernel granted only %d bytes of receive buffer: raise net.core.rmem_max (and wmem_max) to "
            "%zu for high rates, or start udpd as root (SO_RCVBUFFORCE)",
            d.sock.rcvbuf, bufsize);
    status = event_loop(&d);

out:
    if (d.ss != NULL) {
        udpd_sessions_free(d.ss);
        d.ss = NULL;
        if (d.tx != NULL)
            flush_tx(&d);
    }
    udpd_ckpt_stop();
    if (d.table != NULL) {
        fb_table_header *h = fb_table_header_get(d.table);
        int32_t me = (int32_t)getpid();

        atomic_compare_exchange_strong(&h->udpd_pid, &me, 0);
    }
    if (d.cfg != NULL && d.sock.fd >= 0)
        udpd_counters_log(UDPD_INFO, "exit");
    fb_udp_rx_free(d.rx);
    fb_udp_tx_free(d.tx);
    fb_udp_sock_close(&d.sock);
    if (d.epfd >= 0)
        close(d.epfd);
    if (d.tfd >= 0)
        close(d.tfd);
    if (d.sfd >= 0)
        close(d.sfd);
    if (d.table != NULL)
        fb_table_close(d.table);
    if (pidfile_written)
        (void)unlink(o.pidfile);
    fb_config_free(d.cfg);
    return status;
}
