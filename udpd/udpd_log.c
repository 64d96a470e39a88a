/* udpd_log: tagged log lines on stderr and the drop counters.
 *
 * Every message carries a unique tag ("UD00001") so tests and admins can expect or forbid it.
 * Under systemd (JOURNAL_STREAM set) lines start with the kernel-style "<N>" priority the
 * journal understands and carry no timestamp; elsewhere they carry the local time. */
#include "udpd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

udpd_level udpd_log_level = UDPD_INFO;
udpd_counters udpd_ctr;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int udpd_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    if (strcmp(name, "warning") == 0)
        return UDPD_WARN;
    return -1;
}

void udpd_log(udpd_level level, const char *tag, const char *fmt, ...)
{
    static int journal = -1;
    char msg[2048], stamp[32] = "";
    va_list ap;

    if (level > udpd_log_level)
        return;
    if (journal < 0)
        journal = getenv("JOURNAL_STREAM") != NULL;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (journal) {
        static const int prio[] = {3, 4, 6, 7};
        fprintf(stderr, "<%d>%s: %s\n", prio[level], tag, msg);
    } else {
        struct timespec ts;
        struct tm tm;

        clock_gettime(CLOCK_REALTIME, &ts);
        localtime_r(&ts.tv_sec, &tm);
        strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
        fprintf(stderr, "%s.%03ld udpd[%ld] %s %s: %s\n", stamp, ts.tv_nsec / 1000000, (long)getpid(),
                level_names[level], tag, msg);
    }
}

const char *udpd_drop_name(udpd_drop d)
{
    static const char *const names[UDPD_DROP__COUNT] = {
        [UDPD_DROP_WRONG_ADDRESS] = "wrong_address",       [UDPD_DROP_WRONG_DIRECTION] = "wrong_direction",
        [UDPD_DROP_RANGE_SET_FULL] = "range_set_full",     [UDPD_DROP_HELLO_REPLAYED] = "hello_replayed",
        [UDPD_DROP_SESSION_INACTIVE] = "session_inactive", [UDPD_DROP_UNEXPECTED] = "unexpected_type",
    };

    return (unsigned)d < UDPD_DROP__COUNT ? names[d] : "unknown";
}

uint64_t udpd_counters_dropped(void)
{
    uint64_t n = 0;

    for (int i = 1; i < FB_WIRE_R__COUNT; i++)
        n += udpd_ctr.wire[i];
    for (int i = 0; i < UDPD_DROP__COUNT; i++)
        n += udpd_ctr.drop[i];
    return n;
}

void udpd_counters_log(udpd_level level, const char *why)
{
    char line[1536];
    size_t off = 0;
    const udpd_counters *c = &udpd_ctr;

    udpd_log(
        level, "UD00050",
        "counters (%s): rx_dgrams=%llu rx_reads=%llu rx_bytes=%llu tx_dgrams=%llu tx_sends=%llu "
        "tx_bytes=%llu dropped=%llu hellos=%llu hello_refused=%llu associations=%llu closes=%llu "
        "downloads_confirmed=%llu probes=%llu data_bytes_new=%llu data_bytes_dup=%llu "
        "data_bytes_sent=%llu feedbacks_sent=%llu feedbacks_rx=%llu chunks_completed=%llu checkpoints=%llu "
        "checkpoint_errors=%llu write_errors=%llu",
        why, (unsigned long long)c->rx_dgrams, (unsigned long long)c->rx_reads,
        (unsigned long long)c->rx_bytes, (unsigned long long)c->tx_dgrams, (unsigned long long)c->tx_sends,
        (unsigned long long)c->tx_bytes, (unsigned long long)udpd_counters_dropped(),
        (unsigned long long)c->hellos, (unsigned long long)c->hello_refused,
        (unsigned long long)c->associations, (unsigned long long)c->closes,
        (unsigned long long)c->downloads_confirmed, (unsigned long long)c->probes,
        (unsigned long long)c->data_bytes_new, (unsigned long long)c->data_bytes_dup,
        (unsigned long long)c->data_bytes_sent,
        (unsigned long long)c->feedbacks_sent, (unsigned long long)c->feedbacks_rx,
        (unsigned long long)c->chunks_completed,
        (unsigned long long)__atomic_load_n(&c->checkpoints, __ATOMIC_RELAXED),
        (unsigned long long)__atomic_load_n(&c->checkpoint_errors, __ATOMIC_RELAXED),
        (unsigned long long)c->write_errors);
    line[0] = '\0';
    for (int i = 1; i < FB_WIRE_R__COUNT; i++)
        off += (size_t)snprintf(line + off, sizeof(line) - off, "%s%s=%llu", off ? " " : "",
                                fb_wire_reason_name((fb_wire_reason)i), (unsigned long long)c->wire[i]);
    for (int i = 0; i < UDPD_DROP__COUNT && off < sizeof(line); i++)
        off += (size_t)snprintf(line + off, sizeof(line) - off, " %s=%llu", udpd_drop_name((udpd_drop)i),
                                (unsigned long long)c->drop[i]);
    udpd_log(level, "UD00051", "drops (%s): %s", why, line);
}
