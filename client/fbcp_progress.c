/* fbcp_progress: everything fbcp tells the user: error and warning lines on stderr, the -v
 * request trace, the progress bar (stderr, terminals only) and the --json event stream (one
 * object per line on stdout, built with jansson). Also keeps the run's totals for the summary
 * and the first error for the exit code. Called from every transfer worker (fbcp_tree.c): one
 * lock serialises the output and the totals. Files of a tree (-r) count towards that tree's own
 * totals as well, for its "tree" event; the bar then shows the run, not one file of it. */
#include "fbcp.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

static const fbcp_opts *g_opts;
static fb_err g_first_error = FB_OK;
static int g_bar_active; /* a progress line without newline is on stderr */
static uint64_t g_start_ns;
typedef struct fbcp_sum {
    unsigned files, done, skipped, failed;
    uint64_t bytes, total, bytes_http, bytes_udp, bytes_retx;
} fbcp_sum;
static fbcp_sum g_sum;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

/* The trees of this run (one per directory source), each with its own totals. */
typedef struct fbcp_tree_sum {
    char *source, *dest;
    unsigned dirs;
    fbcp_sum sum;
} fbcp_tree_sum;
static fbcp_tree_sum *g_trees;
static int g_ntrees;
static int g_tree_bar;           /* the bar shows the run's totals (several files at once) */
static uint64_t g_tree_bar_ns;   /* when it was last drawn */
static __thread int t_tree = -1; /* the tree the calling thread works for */

typedef enum { FBCP_COUNT_START, FBCP_COUNT_SKIP, FBCP_COUNT_DONE, FBCP_COUNT_FAILED } fbcp_count_what;

/* Adds an outcome to the run's totals and to those of the calling thread's tree. */
static void fbcp_count(fbcp_count_what what, const fbcp_xfer *x)
{
    fbcp_sum *sums[2] = {&g_sum, t_tree >= 0 && t_tree < g_ntrees ? &g_trees[t_tree].sum : NULL};

    for (int i = 0; i < 2 && sums[i] != NULL; i++) {
        fbcp_sum *s = sums[i];
        switch (what) {
        case FBCP_COUNT_START:
            s->files++;
            s->total += x->size;
            break;
        case FBCP_COUNT_SKIP:
            s->files++;
            s->skipped++;
            s->total += x->size;
            break;
        case FBCP_COUNT_DONE:
            s->done++;
            s->bytes += x->bytes;
            s->bytes_http += x->bytes_http;
            s->bytes_udp += x->bytes_udp;
            s->bytes_retx += x->bytes_udp_retx;
            break;
        case FBCP_COUNT_FAILED:
            s->failed++;
            break;
        }
    }
}

void fbcp_progress_init(const fbcp_opts *o)
{
    g_opts = o;
    g_start_ns = fb_time_mono_ns();
}

fb_err fbcp_first_error(void)
{
    fb_err e;

    pthread_mutex_lock(&g_mu);
    e = g_first_error;
    pthread_mutex_unlock(&g_mu);
    return e;
}

static void fbcp_bar_clear(void)
{
    if (g_bar_active) {
        fputs("\r\033[K", stderr);
        g_bar_active = 0;
    }
}

/* Seconds since the run started (every event's "t"). */
static double fbcp_elapsed(void)
{
    return (double)(fb_time_mono_ns() - g_start_ns) / 1e9;
}

static void fbcp_emit(json_t *ev)
{
    if (ev == NULL)
        return;
    json_object_set_new(ev, "t", json_real((double)(int64_t)(fbcp_elapsed() * 1000) / 1000));
    if (json_dumpf(ev, stdout, JSON_COMPACT | JSON_REAL_PRECISION(6)) == 0)
        fputc('\n', stdout);
    fflush(stdout);
    json_decref(ev);
}

static const char *fbcp_dir_name(fbcp_direction d)
{
    return d == FBCP_UPLOAD ? "upload" : "download";
}

/* The fields every event carries. */
static json_t *fbcp_event_new(const char *event, const fbcp_xfer *x)
{
    json_t *ev = json_object();
    if (ev == NULL)
        return NULL;
    json_object_set_new(ev, "event", json_string(event));
    if (x != NULL) {
        json_object_set_new(ev, "file", json_string(x->local));
        json_object_set_new(ev, "remote", json_string(x->remote));
        json_object_set_new(ev, "direction", json_string(fbcp_dir_name(x->direction)));
        json_object_set_new(ev, "bytes", json_integer((json_int_t)x->bytes));
        json_object_set_new(ev, "total", json_integer((json_int_t)x->size));
        json_object_set_new(ev, "transport", json_string(x->transport_name ? x->transport_name : "http"));
        json_object_set_new(ev, "bytes_udp", json_integer((json_int_t)x->bytes_udp));
        json_object_set_new(ev, "bytes_http", json_integer((json_int_t)x->bytes_http));
    }
    return ev;
}

void fbcp_report_error(const fbcp_xfer *x, const char *file, fb_err e, const char *detail)
{
    int has_detail = detail != NULL && detail[0] != '\0';

    pthread_mutex_lock(&g_mu);
    if (g_first_error == FB_OK)
        g_first_error = e;
    fbcp_count(FBCP_COUNT_FAILED, x);
    fbcp_bar_clear();
    if (file != NULL && file[0] != '\0')
        fprintf(stderr, "fbcp: %s: %s%s%s%s\n", file, fb_err_message(e), has_detail ? " (" : "",
                has_detail ? detail : "", has_detail ? ")" : "");
    else
        fprintf(stderr, "fbcp: %s%s%s%s\n", fb_err_message(e), has_detail ? " (" : "",
                has_detail ? detail : "", has_detail ? ")" : "");
    if (g_opts != NULL && g_opts->json) {
        json_t *ev = json_object();
        if (ev != NULL) {
            char msg[FBCP_DETAIL_LEN + 128];
            snprintf(msg, sizeof(msg), "%s%s%s%s", fb_err_message(e), has_detail ? " (" : "",
                     has_detail ? detail : "", has_detail ? ")" : "");
            json_object_set_new(ev, "event", json_string("error"));
            json_object_set_new(ev, "file", file != NULL ? json_string(file) : json_null());
            if (x != NULL) {
                json_object_set_new(ev, "remote", json_string(x->remote));
                json_object_set_new(ev, "direction",
                                    json_string(x->direction == FBCP_UPLOAD ? "upload" : "download"));
            }
            json_object_set_new(ev, "bytes", json_integer(x != NULL ? (json_int_t)x->bytes : 0));
            json_object_set_new(ev, "total", json_integer(x != NULL ? (json_int_t)x->size : 0));
            json_object_set_new(
                ev, "transport",
                json_string(x != NULL && x->transport_name != NULL ? x->transport_name : "http"));
            json_object_set_new(ev, "bytes_udp", json_integer(x != NULL ? (json_int_t)x->bytes_udp : 0));
            json_object_set_new(ev, "bytes_http", json_integer(x != NULL ? (json_int_t)x->bytes_http : 0));
            json_object_set_new(ev, "code", json_string(fb_err_name(e)));
            json_object_set_new(ev, "message", json_string(msg));
            json_object_set_new(ev, "exit_code", json_integer(fb_err_exit_code(e)));
            fbcp_emit(ev);
        }
    }
    pthread_mutex_unlock(&g_mu);
}

void fbcp_warn(const char *fmt, ...)
{
    va_list ap;

    if (g_opts != NULL && g_opts->quiet)
        return;
    pthread_mutex_lock(&g_mu);
    fbcp_bar_clear();
    fputs("fbcp: warning: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    pthread_mutex_unlock(&g_mu);
}

void fbcp_trace(const fbcp_opts *o, const char *fmt, ...)
{
    va_list ap;

    if (o == NULL || !o->verbose)
        return;
    pthread_mutex_lock(&g_mu);
    fbcp_bar_clear();
    fputs("fbcp: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    pthread_mutex_unlock(&g_mu);
}

static void fbcp_human_bytes(char *out, size_t len, double v)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    unsigned u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(out, len, "%.0f %s", v, units[u]);
    else
        snprintf(out, len, "%.1f %s", v, units[u]);
}

/* Bytes known to be at the destination, for the bar: what was there plus what moved, capped. */
static uint64_t fbcp_position(const fbcp_xfer *x)
{
    uint64_t p = x->bytes_skipped + x->bytes;
    if (x->bytes_skipped + x->bytes_done > p)
        p = x->bytes_skipped + x->bytes_done;
    return p > x->size ? x->size : p;
}

static void fbcp_bar_draw(const fbcp_xfer *x, int final)
{
    char have[32], total[32], rate[32], eta[32] = "";
    uint64_t pos = final ? x->size : fbcp_position(x);
    unsigned pct = x->size ? (unsigned)(pos * 100 / x->size) : 100;
    double bytes_per_s = x->rate_bps / 8;
    const char *name = strrchr(x->local, '/') ? strrchr(x->local, '/') + 1 : x->local;

    fbcp_human_bytes(have, sizeof(have), (double)pos);
    fbcp_human_bytes(total, sizeof(total), (double)x->size);
    fbcp_human_bytes(rate, sizeof(rate), bytes_per_s);
    if (final) {
        double secs = (double)(fb_time_mono_ns() - x->start_ns) / 1e9;
        snprintf(eta, sizeof(eta), "%.1fs", secs);
    } else if (bytes_per_s > 0 && pos < x->size) {
        unsigned long s = (unsigned long)((double)(x->size - pos) / bytes_per_s);
        snprintf(eta, sizeof(eta), "ETA %lu:%02lu", s / 60, s % 60);
    }
    fprintf(stderr, "\r\033[K%-24.24s %3u%% %10s / %-10s %10s/s %-4s %s", name, pct, have, total, rate,
            x->transport_name != NULL ? x->transport_name : "http", eta);
    if (final) {
        fputc('\n', stderr);
        g_bar_active = 0;
    } else {
        g_bar_active = 1;
    }
    fflush(stderr);
}

void fbcp_event_start(fbcp_xfer *x)
{
    x->start_ns = fb_time_mono_ns();
    x->last_progress_ns = x->start_ns;
    x->rate_mark_ns = x->start_ns;
    x->rate_mark_bytes = 0;
    pthread_mutex_lock(&g_mu);
    fbcp_count(FBCP_COUNT_START, x);
    if (x->resumed && !g_opts->json && !g_opts->quiet) {
        char skipped[32];
        fbcp_bar_clear();
        fbcp_human_bytes(skipped, sizeof(skipped), (double)x->bytes_skipped);
        fprintf(stderr, "fbcp: %s: resuming, %s (%llu bytes) already transferred\n", x->local, skipped,
                (unsigned long long)x->bytes_skipped);
    }
    if (g_opts->json) {
        json_t *ev = fbcp_event_new("start", x);
        json_object_set_new(ev, "resumed", json_boolean(x->resumed));
        json_object_set_new(ev, "bytes_skipped", json_integer((json_int_t)x->bytes_skipped));
        fbcp_emit(ev);
    }
    pthread_mutex_unlock(&g_mu);
}

/* The bar of a run with several files at once: files and bytes finished over those known so
 * far, the average rate (at most five times a second unless FORCE). */
static void fbcp_tree_bar_draw(int force)
{
    char have[32], total[32], rate[32];
    uint64_t now = fb_time_mono_ns();
    double secs = fbcp_elapsed();
    uint64_t finished = g_sum.bytes;

    if (!force && now - g_tree_bar_ns < 200000000ull)
        return;
    g_tree_bar_ns = now;
    fbcp_human_bytes(have, sizeof(have), (double)finished);
    fbcp_human_bytes(total, sizeof(total), (double)g_sum.total);
    fbcp_human_bytes(rate, sizeof(rate), secs > 0 ? (double)finished / secs : 0);
    fprintf(stderr, "\r\033[K%u of %u files (%u skipped, %u failed) %10s moved, %s seen %10s/s", g_sum.done,
            g_sum.files, g_sum.skipped, g_sum.failed, have, total, rate);
    g_bar_active = 1;
    fflush(stderr);
}

void fbcp_event_progress(fbcp_xfer *x, int force)
{
    uint64_t now = fb_time_mono_ns();
    uint64_t interval = g_opts->json ? 500000000ull : 200000000ull; /* --json: at most 2 per second */

    /* --json promises at most two progress events a second, so FORCE only redraws the bar */
    if ((!force || g_opts->json) && now - x->last_progress_ns < interval)
        return;
    if (now - x->rate_mark_ns >= 1000000000ull || x->rate_bps == 0) {
        double secs = (double)(now - x->rate_mark_ns) / 1e9;
        if (secs > 0.05) {
            double inst = (double)(x->bytes - x->rate_mark_bytes) * 8 / secs;
            x->rate_bps = x->rate_bps == 0 ? inst : 0.5 * x->rate_bps + 0.5 * inst;
            x->rate_mark_ns = now;
            x->rate_mark_bytes = x->bytes;
        }
    }
    x->last_progress_ns = now;
    pthread_mutex_lock(&g_mu);
    if (g_opts->json) {
        json_t *ev = fbcp_event_new("progress", x);
        json_object_set_new(ev, "rate_bps", json_integer((json_int_t)x->rate_bps));
        json_object_set_new(ev, "position", json_integer((json_int_t)fbcp_position(x)));
        fbcp_emit(ev);
    } else if (g_opts->progress_bar && g_tree_bar) {
        fbcp_tree_bar_draw(0);
    } else if (g_opts->progress_bar) {
        fbcp_bar_draw(x, 0);
    }
    pthread_mutex_unlock(&g_mu);
}

void fbcp_event_skip(fbcp_xfer *x, const char *reason)
{
    pthread_mutex_lock(&g_mu);
    fbcp_count(FBCP_COUNT_SKIP, x);
    if (g_opts->json) {
        json_t *ev = fbcp_event_new("skip", x);
        json_object_set_new(ev, "reason", json_string(reason));
        fbcp_emit(ev);
    } else if (g_tree_bar && g_opts->progress_bar && !g_opts->verbose) {
        fbcp_tree_bar_draw(0);
    } else if (!g_opts->quiet && (g_opts->progress_bar || g_opts->verbose)) {
        fbcp_bar_clear();
        fprintf(stderr, "fbcp: %s: skipped (%s)\n", x->local, reason);
    }
    pthread_mutex_unlock(&g_mu);
}

void fbcp_event_done(fbcp_xfer *x, const char *sha256_hex)
{
    double secs = (double)(fb_time_mono_ns() - x->start_ns) / 1e9;

    pthread_mutex_lock(&g_mu);
    fbcp_count(FBCP_COUNT_DONE, x);
    if (g_opts->json) {
        json_t *ev = fbcp_event_new("done", x);
        json_object_set_new(ev, "bytes_retransmitted", json_integer((json_int_t)x->bytes_udp_retx));
        json_object_set_new(ev, "bytes_skipped", json_integer((json_int_t)x->bytes_skipped));
        json_object_set_new(ev, "seconds", json_real(secs));
        json_object_set_new(ev, "sha256", sha256_hex != NULL ? json_string(sha256_hex) : json_null());
        fbcp_emit(ev);
    } else if (g_tree_bar && g_opts->progress_bar && !g_opts->verbose) {
        fbcp_tree_bar_draw(0);
    } else if (g_opts->progress_bar) {
        x->rate_bps = secs > 0 ? (double)x->bytes * 8 / secs : 0;
        fbcp_bar_draw(x, 1);
    } else if (g_opts->verbose) {
        fprintf(stderr, "fbcp: %s: done, %llu bytes in %.2f s (%llu over UDP, %llu over HTTP(S))\n", x->local,
                (unsigned long long)x->bytes, secs, (unsigned long long)x->bytes_udp,
                (unsigned long long)x->bytes_http);
    }
    pthread_mutex_unlock(&g_mu);
}

void fbcp_event_transport(fbcp_xfer *x, const char *from, const char *to, const char *reason)
{
    x->transport_name = to;
    pthread_mutex_lock(&g_mu);
    if (g_opts->json) {
        json_t *ev = fbcp_event_new("transport", x);
        json_object_set_new(ev, "from", json_string(from));
        json_object_set_new(ev, "to", json_string(to));
        json_object_set_new(ev, "reason", json_string(reason));
        fbcp_emit(ev);
    } else if (g_opts->progress_bar && !g_tree_bar) {
        fbcp_bar_draw(x, 0); /* the bar names the transport */
    } else if (g_opts->verbose) {
        fprintf(stderr, "fbcp: %s: now over %s (%s)\n", x->local, strcmp(to, "udp") == 0 ? "UDP" : "HTTP(S)",
                reason);
    }
    pthread_mutex_unlock(&g_mu);
}

/* The counts every summary carries (the run's or one tree's). */
static void fbcp_sum_fields(json_t *ev, const fbcp_sum *s)
{
    json_object_set_new(ev, "bytes", json_integer((json_int_t)s->bytes));
    json_object_set_new(ev, "total", json_integer((json_int_t)s->total));
    json_object_set_new(ev, "bytes_http", json_integer((json_int_t)s->bytes_http));
    json_object_set_new(ev, "bytes_udp", json_integer((json_int_t)s->bytes_udp));
    json_object_set_new(ev, "bytes_retransmitted", json_integer((json_int_t)s->bytes_retx));
    json_object_set_new(ev, "files", json_integer(s->files));
    json_object_set_new(ev, "done", json_integer(s->done));
    json_object_set_new(ev, "skipped", json_integer(s->skipped));
    json_object_set_new(ev, "failed", json_integer(s->failed));
}

int fbcp_progress_tree_new(const char *source, const char *dest)
{
    fbcp_tree_sum *v;
    int id = -1;

    pthread_mutex_lock(&g_mu);
    v = realloc(g_trees, (size_t)(g_ntrees + 1) * sizeof(*v));
    if (v != NULL) {
        g_trees = v;
        memset(&v[g_ntrees], 0, sizeof(*v));
        v[g_ntrees].source = strdup(source);
        v[g_ntrees].dest = strdup(dest);
        if (v[g_ntrees].source != NULL && v[g_ntrees].dest != NULL) {
            id = g_ntrees++;
        } else {
            free(v[g_ntrees].source);
            free(v[g_ntrees].dest);
        }
    }
    pthread_mutex_unlock(&g_mu);
    return id;
}

void fbcp_progress_tree_enter(int tree)
{
    t_tree = tree;
}

void fbcp_progress_tree_dir(void)
{
    pthread_mutex_lock(&g_mu);
    if (t_tree >= 0 && t_tree < g_ntrees)
        g_trees[t_tree].dirs++;
    pthread_mutex_unlock(&g_mu);
}

void fbcp_progress_tree_begin(void)
{
    pthread_mutex_lock(&g_mu);
    g_tree_bar = 1;
    pthread_mutex_unlock(&g_mu);
}

void fbcp_progress_tree_end(void)
{
    pthread_mutex_lock(&g_mu);
    if (g_tree_bar && g_opts->progress_bar && g_sum.files > 0) {
        fbcp_tree_bar_draw(1);
        fputc('\n', stderr);
        g_bar_active = 0;
    }
    g_tree_bar = 0;
    for (int i = 0; i < g_ntrees; i++) {
        fbcp_tree_sum *t = &g_trees[i];
        if (g_opts->json) {
            json_t *ev = json_object();
            if (ev == NULL)
                break;
            json_object_set_new(ev, "event", json_string("tree"));
            json_object_set_new(ev, "source", json_string(t->source));
            json_object_set_new(ev, "dest", json_string(t->dest));
            json_object_set_new(ev, "dirs", json_integer(t->dirs));
            fbcp_sum_fields(ev, &t->sum);
            fbcp_emit(ev);
        } else if (g_opts->verbose) {
            fprintf(stderr, "fbcp: %s: %u files in %u directories: %u copied, %u skipped, %u failed\n",
                    t->source, t->sum.files, t->dirs, t->sum.done, t->sum.skipped, t->sum.failed);
        }
        free(t->source);
        free(t->dest);
    }
    free(g_trees);
    g_trees = NULL;
    g_ntrees = 0;
    pthread_mutex_unlock(&g_mu);
}

void fbcp_event_summary(void)
{
    double secs = fbcp_elapsed();
    json_t *ev;

    pthread_mutex_lock(&g_mu);
    fbcp_bar_clear();
    if (g_opts == NULL || !g_opts->json || (ev = json_object()) == NULL) {
        pthread_mutex_unlock(&g_mu);
        return;
    }
    json_object_set_new(ev, "event", json_string("summary"));
    json_object_set_new(ev, "file", json_null());
    json_object_set_new(ev, "transport", json_null());
    fbcp_sum_fields(ev, &g_sum);
    json_object_set_new(ev, "seconds", json_real(secs));
    json_object_set_new(ev, "code", json_string(fb_err_name(g_first_error)));
    json_object_set_new(
        ev, "exit_code",
        json_integer(fbcp_interrupted ? FBCP_EXIT_INTERRUPTED : fb_err_exit_code(g_first_error)));
    fbcp_emit(ev);
    pthread_mutex_unlock(&g_mu);
}
