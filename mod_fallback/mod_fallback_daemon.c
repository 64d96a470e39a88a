/* mod_fallback_daemon.c: udpd as a child of the Apache parent (FallbackDaemon on), so that
 * `apachectl start|stop|graceful` manage the whole service, in the manner of mod_cgid.
 *
 * What happens to udpd, by what the Apache parent does:
 *  - start: post_config of the real configuration pass (never the CREATE_PRE_CONFIG pass, never
 *    for -t or the -M/-S dumps) forks and execs `udpd -c FALLBACKCONFIG -f --user USER`, and
 *    registers it as an APR "other child", so the MPM's wait loop reports its death to us;
 *  - udpd dies: the maintenance callback starts another one: at once if the old one ran for a
 *    while, else spaced 1, 2, 4 ... 60 s from its previous start. The new child sleeps that delay
 *    itself before exec, so the parent never blocks and a crashing udpd is started at most once a
 *    second;
 *  - graceful restart (SIGUSR1): pconf is cleared and this module unloaded and loaded again, so
 *    the pid lives in retained data (ap_retained_data_create); the pconf cleanup leaves udpd
 *    running and the next generation registers the same pid again and sends it SIGHUP, so udpd
 *    reads fallback.xml again (docroots, rate caps, policies, ciphers: what it applies to each
 *    new association) while its transfers go on. It is started anew instead if what udpd cannot
 *    change live differs: its FallbackDaemon* settings or FallbackConfig, or in fallback.xml its
 *    UDP port, bind address or session table (the "signature"); or if it died meanwhile;
 *  - stop, graceful-stop, hard restart (SIGHUP), a startup that fails after us: the pconf
 *    cleanup sends SIGTERM, waits up to 5 s, then SIGKILL; a hard restart then starts a new one.
 * The cleanup tells a graceful restart from the rest by ap_state_query (EXITING when the parent
 * exits) and by the Unix MPMs' retained signal state (restart_is_graceful). */

#include "mod_fallback_private.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "apr_strings.h"
#include "apr_thread_proc.h"

#include "ap_mpm.h"
#include "http_core.h"
#include "http_main.h"
#include "mpm_common.h"
#include "unixd.h"

#ifndef FB_SBINDIR
#error "FB_SBINDIR must be defined (mod_fallback/local.mk)"
#endif

extern module AP_MODULE_DECLARE_DATA fallback_module;

/* Retained data outlives the module's code: a new layout needs a new key. */
#define DAEMON_RETAINED_KEY "mod_fallback.daemon.v1"
#define DAEMON_DEFAULT_PATH FB_SBINDIR "/udpd"
#define FAST_DEATH apr_time_from_sec(10) /* dying sooner than this after exec counts as a crash loop */
#define MAX_DELAY_S 60                   /* longest wait before restarting a crashing udpd */
#define STOP_STEP apr_time_from_msec(50)
#define STOP_TERM_STEPS 100 /* 5 s for udpd to finish after SIGTERM */
#define STOP_KILL_STEPS 40  /* 2 s for SIGKILL to be reaped */
#define CLOSE_FDS_MAX 65536 /* bound of the close loop where close_range is missing */

/* Survives graceful restarts (and the module's unloading): no pointers into the module. */
typedef struct daemon_retained {
    pid_t pid;             /* running udpd (or its delayed start), 0 if none */
    apr_time_t exec_at;    /* when it was (or will be) exec'ed */
    unsigned fast_deaths;  /* consecutive deaths within FAST_DEATH of exec */
    unsigned char sig[32]; /* SHA-256 of the command line it was started with */
} daemon_retained;

/* This configuration generation's view; set again by every post_config. */
static struct daemon_gen {
    daemon_retained *ret;
    apr_pool_t *pconf;
    char **argv;         /* pconf */
    const char *cmdline; /* for logs */
    apr_proc_t proc;     /* what the other-child registration points at */
    int registered;
    int enabled;           /* FallbackDaemon on in this generation */
    int stopping;          /* pconf is being cleared: never start another udpd */
    unsigned char sig[32]; /* SHA-256 of ARGV */
    int sig_ok;
} gen;

static const mod_fallback_server_conf *main_conf(server_rec *s)
{
    return ap_get_module_config(s->module_config, &fallback_module);
}

static const char *daemon_path(const mod_fallback_server_conf *conf)
{
    return conf->daemon_path ? conf->daemon_path : DAEMON_DEFAULT_PATH;
}

static const char *config_path(const mod_fallback_server_conf *conf)
{
    return conf->config_file ? conf->config_file : FB_DEFAULT_CONFIG_FILE;
}

/* Text for a waitpid status. */
static void describe_status(char *buf, size_t len, int status)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exit code %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        snprintf(buf, len, "wait status %d", status);
}

/* The Unix MPMs record in their retained data which signal asked for the restart. Their own
 * pconf cleanup (registered after ours in the MPM's run, so it runs before ours) moves
 * "is_ungraceful" into "was_graceful" and clears "restart_pending"; read whichever is current. */
static int restart_is_graceful(void)
{
    ap_unixd_mpm_retained_data *m = ap_unixd_mpm_get_retained_data();

    if (m == NULL)
        return 0;
    if (m->restart_pending)
        return !m->is_ungraceful;
    return m->was_graceful;
}

static int apache_stopping(void)
{
    int st = AP_MPMQ_STOPPING;

    if (gen.stopping)
        return 1;
    /* As mod_cgid: an MPM that cannot say is assumed to be stopping. */
    return ap_mpm_query(AP_MPMQ_MPM_STATE, &st) != APR_SUCCESS || st == AP_MPMQ_STOPPING;
}

static void close_from(int lowfd)
{
    int fd;

    if (close_range((unsigned)lowfd, ~0u, 0) == 0)
        return;
    for (fd = lowfd; fd < CLOSE_FDS_MAX; fd++)
        (void)close(fd);
}

/* In the forked child: a clean process for udpd, not a copy of the Apache parent. Never
 * returns. Only async-signal-safe work would be strictly needed here; the parent is
 * single-threaded, so the few libc calls below are safe as well. */
static void child_exec(char *const *argv, apr_interval_time_t delay, pid_t parent) __attribute__((noreturn));
static void child_exec(char *const *argv, apr_interval_time_t delay, pid_t parent)
{
    struct sigaction sa;
    sigset_t none; /* all but SIGHUP, see below */
    int sig, n = 0;

    /* Apache's handlers (SIGTERM -> "shut down gracefully") would make a delayed child
     * ignore our SIGTERM; udpd starts with default dispositions and nothing blocked. */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            (void)sigaction(sig, &sa, NULL);
    /* SIGHUP stays blocked: a reload sent while this child waits or before udpd's loop runs
     * stays pending for udpd's signalfd instead of killing it. */
    sigemptyset(&none);
    sigaddset(&none, SIGHUP);
    (void)sigprocmask(SIG_SETMASK, &none, NULL);
    /* Its own process group: signals Apache sends to its group (prefork's restart) or a
     * terminal's ^C to a foreground httpd reach udpd only through the parent's cleanup. */
    (void)setpgid(0, 0);
    /* If the parent is killed outright (no cleanup runs), take udpd down with it. The kernel
     * forgets this when udpd changes its user; udpd should then watch its parent itself. */
    (void)prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(0);
    /* Listening sockets, logs, the pipe of death, the session table mapping's fd... */
    close_from(3);
    if (delay > 0) {
        struct timespec ts;

        ts.tv_sec = (time_t)apr_time_sec(delay);
        ts.tv_nsec = (long)(delay % APR_USEC_PER_SEC) * 1000;
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR && n++ < 1000)
            ;
    }
    execv(argv[0], argv);
    /* stderr is Apache's main error log. */
    dprintf(2, "[mod_fallback] " FBLOGNO(00709) "cannot execute %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

static void daemon_maint(int reason, void *data, int status);

static void daemon_register(void)
{
    memset(&gen.proc, 0, sizeof(gen.proc));
    gen.proc.pid = gen.ret->pid;
    apr_proc_other_child_register(&gen.proc, daemon_maint, &gen.proc, NULL, gen.pconf);
    gen.registered = 1;
}

static void daemon_unregister(void)
{
    if (gen.registered) {
        gen.registered = 0;
        apr_proc_other_child_unregister(&gen.proc); /* calls daemon_maint(UNREGISTER) */
    }
}

/* Forks udpd; the child waits DELAY before exec. */
static apr_status_t daemon_spawn(server_rec *s, apr_interval_time_t delay)
{
    daemon_retained *r = gen.ret;
    pid_t parent = getpid(), pid;

    pid = fork();
    if (pid < 0) {
        apr_status_t rv = APR_FROM_OS_ERROR(errno);
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s, FBLOGNO(00708) "mod_fallback: cannot fork udpd");
        return rv;
    }
    if (pid == 0)
        child_exec(gen.argv, delay, parent);
    r->pid = pid;
    r->exec_at = apr_time_now() + delay;
    daemon_register();
    if (delay > 0)
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s,
                     FBLOGNO(00701) "mod_fallback: udpd (pid %d) starts in %.1f s: %s", (int)pid,
                     (double)delay / APR_USEC_PER_SEC, gen.cmdline);
    else
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, FBLOGNO(00720) "mod_fallback: udpd (pid %d) started: %s",
                     (int)pid, gen.cmdline);
    return APR_SUCCESS;
}

/* Delay before the next start after udpd died now. Starts of a udpd that keeps dying within
 * FAST_DEATH of its exec are spaced 1 s, then 2, 4 ... MAX_DELAY_S apart (counting the time it
 * ran); one that ran longer is started again at once. */
static apr_interval_time_t respawn_delay(daemon_retained *r)
{
    apr_time_t now = apr_time_now();
    apr_interval_time_t lived = r->exec_at != 0 ? now - r->exec_at : FAST_DEATH, spacing;
    unsigned shift;

    if (lived >= FAST_DEATH) {
        r->fast_deaths = 0;
        return 0;
    }
    r->fast_deaths++;
    shift = r->fast_deaths - 1 < 6 ? r->fast_deaths - 1 : 6;
    spacing = apr_time_from_sec(1L << shift);
    if (spacing > apr_time_from_sec(MAX_DELAY_S))
        spacing = apr_time_from_sec(MAX_DELAY_S);
    if (lived < 0) /* died during its own delay */
        lived = 0;
    return spacing > lived ? spacing - lived : 0;
}

/* Stops udpd: SIGTERM, then SIGKILL if it is still there after 5 s. Blocks the parent at most
 * 7 s, only while Apache stops or restarts (or the settings changed). */
static void daemon_stop(server_rec *s, const char *why)
{
    daemon_retained *r = gen.ret;
    pid_t pid = r != NULL ? r->pid : 0, w;
    char how[96];
    int status = 0, i;

    if (pid <= 0)
        return;
    r->pid = 0;
    daemon_unregister();
    /* Still our unreaped child? (A zombie keeps its pid, so this signals no stranger.) */
    w = waitpid(pid, &status, WNOHANG);
    if (w != 0) {
        if (w == pid) {
            describe_status(how, sizeof(how), status);
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s,
                         FBLOGNO(00706) "mod_fallback: udpd (pid %d) had ended (%s)", (int)pid, how);
        }
        return;
    }
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, FBLOGNO(00705) "mod_fallback: stopping udpd (pid %d): %s",
                 (int)pid, why);
    (void)kill(pid, SIGTERM);
    for (i = 0; i < STOP_TERM_STEPS && w == 0; i++) {
        apr_sleep(STOP_STEP);
        w = waitpid(pid, &status, WNOHANG);
    }
    if (w == 0) {
        ap_log_error(
            APLOG_MARK, APLOG_WARNING, 0, s,
            FBLOGNO(00707) "mod_fallback: udpd (pid %d) still runs 5 s after SIGTERM; sending SIGKILL",
            (int)pid);
        (void)kill(pid, SIGKILL);
        for (i = 0; i < STOP_KILL_STEPS && w == 0; i++) {
            apr_sleep(STOP_STEP);
            w = waitpid(pid, &status, WNOHANG);
        }
    }
    if (w == pid) {
        describe_status(how, sizeof(how), status);
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s,
                     FBLOGNO(00721) "mod_fallback: udpd (pid %d) stopped (%s)", (int)pid, how);
    }
}

/* APR's other-child callback, run by the parent's MPM loop (never in a signal handler). */
static void daemon_maint(int reason, void *data, int status)
{
    daemon_retained *r = gen.ret;
    pid_t pid;

    (void)data;
    switch (reason) {
    case APR_OC_REASON_DEATH:
    case APR_OC_REASON_LOST:
        /* APR forgets the process on DEATH but keeps the record: drop it, or the next alert
         * would look at a NULL proc. */
        daemon_unregister();
        pid = r->pid;
        r->pid = 0;
        if (apache_stopping()) {
            ap_log_error(APLOG_MARK, APLOG_INFO, 0, ap_server_conf,
                         FBLOGNO(00715) "mod_fallback: udpd (pid %d) ended while Apache stops or restarts",
                         (int)pid);
            return;
        }
        {
            apr_interval_time_t delay = respawn_delay(r);
            char when[64] = "";

            if (delay > 0)
                snprintf(when, sizeof(when), " in %.1f s (it keeps dying)", (double)delay / APR_USEC_PER_SEC);
            /* From the MPM, STATUS is the exit code or, if a signal killed udpd, its number. */
            if (reason == APR_OC_REASON_DEATH)
                ap_log_error(APLOG_MARK, APLOG_ERR, 0, ap_server_conf,
                             FBLOGNO(00702) "mod_fallback: udpd (pid %d) died (exit status or signal %d); "
                                            "restarting it%s",
                             (int)pid, status, when);
            else
                ap_log_error(APLOG_MARK, APLOG_ERR, 0, ap_server_conf,
                             FBLOGNO(00703) "mod_fallback: lost track of udpd (pid %d); restarting it%s",
                             (int)pid, when);
            (void)daemon_spawn(ap_server_conf, delay);
        }
        break;
    case APR_OC_REASON_UNREGISTER:
        gen.registered = 0;
        break;
    default: /* RESTART, RUNNING, UNWRITABLE: nothing to do */
        break;
    }
}

/* pconf cleanup: registered before the other-child registration, so it runs after it. */
static apr_status_t daemon_cleanup(void *data)
{
    int state = ap_state_query(AP_SQ_MAIN_STATE);

    (void)data;
    gen.stopping = 1;
    if (gen.ret == NULL || gen.ret->pid <= 0)
        return APR_SUCCESS;
    if (state == AP_SQ_MS_DESTROY_CONFIG && restart_is_graceful()) {
        ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, NULL,
                     FBLOGNO(00714) "mod_fallback: graceful restart: udpd (pid %d) keeps running",
                     (int)gen.ret->pid);
        return APR_SUCCESS;
    }
    daemon_stop(NULL, state == AP_SQ_MS_EXITING ? "Apache stops" : "Apache restarts");
    return APR_SUCCESS;
}

/* The parent's monitor hook (about every 10 s): a start that failed (fork) is tried again. */
static int daemon_monitor(apr_pool_t *p, server_rec *s)
{
    (void)p;
    if (gen.ret != NULL && gen.enabled && !gen.stopping && gen.ret->pid == 0 && !apache_stopping())
        (void)daemon_spawn(s, 0);
    return DECLINED;
}

int mod_fallback_daemon_check(server_rec *s)
{
    const mod_fallback_server_conf *conf = main_conf(s);
    const char *path = daemon_path(conf);
    struct stat sb;
    server_rec *vs;

    if (conf->daemon_on != 1)
        return OK;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || access(path, X_OK) != 0) {
        ap_log_error(
            APLOG_MARK, APLOG_STARTUP | APLOG_ERR, 0, NULL,
            FBLOGNO(00700) "mod_fallback: FallbackDaemon on, but FallbackDaemonPath %s is not an executable "
                           "file (install udpd or set FallbackDaemonPath)",
            path);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    for (vs = s->next; vs != NULL; vs = vs->next) {
        const mod_fallback_server_conf *vc = main_conf(vs);
        if (strcmp(config_path(vc), config_path(conf)) != 0)
            ap_log_error(
                APLOG_MARK, APLOG_STARTUP | APLOG_WARNING, 0, NULL,
                FBLOGNO(00713) "mod_fallback: FallbackDaemon starts udpd for %s only; virtual host %s:%u "
                               "uses %s, whose UDP side needs its own udpd",
                config_path(conf), vs->server_hostname ? vs->server_hostname : "?", (unsigned)vs->port,
                config_path(vc));
    }
    return OK;
}

static void command_line(apr_pool_t *p, const mod_fallback_server_conf *conf)
{
    apr_array_header_t *a = apr_array_make(p, 8, sizeof(char *));
    const char *user = conf->daemon_user;
    const fb_config *cfg = conf->state != NULL ? conf->state->cfg : NULL;
    unsigned int len = 0;
    int i;
    EVP_MD_CTX *md = EVP_MD_CTX_new();

    APR_ARRAY_PUSH(a, char *) = apr_pstrdup(p, daemon_path(conf));
    APR_ARRAY_PUSH(a, char *) = "-c";
    APR_ARRAY_PUSH(a, char *) = apr_pstrdup(p, config_path(conf));
    APR_ARRAY_PUSH(a, char *) = "-f";
    /* Only root can switch users: without it Apache's User means nothing either. */
    if (user == NULL && geteuid() == 0)
        user = ap_unixd_config.user_name;
    if (user != NULL) {
        APR_ARRAY_PUSH(a, char *) = "--user";
        APR_ARRAY_PUSH(a, char *) = apr_pstrdup(p, user);
    }
    gen.cmdline = apr_array_pstrcat(p, a, ' ');
    /* The signature tells a graceful restart whether the running udpd still fits: its command
     * line, and what of fallback.xml udpd reads only at its start (a SIGHUP applies the rest). */
    if (md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1) {
        for (i = 0; i < a->nelts; i++)
            EVP_DigestUpdate(md, APR_ARRAY_IDX(a, i, char *), strlen(APR_ARRAY_IDX(a, i, char *)) + 1);
        if (cfg != NULL) {
            const char *fixed = apr_psprintf(p, "udp %s port %d table %s slots %u", cfg->bind_address,
                                             cfg->udp_port, cfg->shm_path, (unsigned)cfg->max_sessions);
            EVP_DigestUpdate(md, fixed, strlen(fixed) + 1);
        }
    }
    APR_ARRAY_PUSH(a, char *) = NULL;
    gen.argv = (char **)a->elts;
    gen.sig_ok = md != NULL && EVP_DigestFinal_ex(md, gen.sig, &len) == 1 && len == sizeof(gen.sig);
    EVP_MD_CTX_free(md);
}

int mod_fallback_daemon_post_config(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *s)
{
    const mod_fallback_server_conf *conf = main_conf(s);
    apr_interval_time_t delay = 0;
    daemon_retained *r;

    (void)ptemp;
    if (ap_state_query(AP_SQ_MAIN_STATE) != AP_SQ_MS_CREATE_CONFIG ||
        ap_state_query(AP_SQ_RUN_MODE) != AP_SQ_RM_NORMAL)
        return OK;
    r = ap_retained_data_get(DAEMON_RETAINED_KEY);
    if (r == NULL) {
        r = ap_retained_data_create(DAEMON_RETAINED_KEY, sizeof(*r));
        memset(r, 0, sizeof(*r));
    }
    memset(&gen, 0, sizeof(gen));
    gen.ret = r;
    gen.pconf = pconf;

    if (conf->daemon_on != 1) {
        if (r->pid > 0)
            daemon_stop(s, "FallbackDaemon is off now");
        return OK;
    }
    gen.enabled = 1;
    command_line(pconf, conf);
    /* Before any other-child registration, so that its cleanup runs after theirs. */
    apr_pool_cleanup_register(pconf, NULL, daemon_cleanup, apr_pool_cleanup_null);

    if (r->pid > 0) {
        int status = 0;
        pid_t w = waitpid(r->pid, &status, WNOHANG);

        if (w != 0) {
            char how[96] = "gone";

            if (w == r->pid)
                describe_status(how, sizeof(how), status);
            ap_log_error(
                APLOG_MARK, APLOG_ERR, 0, s,
                FBLOGNO(00712) "mod_fallback: udpd (pid %d) ended during the restart (%s); starting it again",
                (int)r->pid, how);
            r->pid = 0;
            delay = respawn_delay(r);
        } else if (!gen.sig_ok || memcmp(r->sig, gen.sig, sizeof(r->sig)) != 0) {
            daemon_stop(s, "its settings changed");
        } else {
            daemon_register();
            /* udpd blocks SIGHUP from its first instruction (and this module's child before
             * exec), so this never ends it: it re-reads fallback.xml at its next loop turn. */
            if (kill(r->pid, SIGHUP) != 0)
                ap_log_error(APLOG_MARK, APLOG_WARNING, APR_FROM_OS_ERROR(errno), s,
                             FBLOGNO(00722) "mod_fallback: cannot tell udpd (pid %d) to reload %s",
                             (int)r->pid, config_path(conf));
            ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                         FBLOGNO(00704) "mod_fallback: udpd (pid %d) kept across the graceful restart; told "
                                        "to reload %s (SIGHUP)",
                         (int)r->pid, config_path(conf));
            return OK;
        }
    }
    if (delay == 0)
        r->fast_deaths = 0;
    memcpy(r->sig, gen.sig, sizeof(r->sig));
    /* A failed fork is logged and retried by the monitor hook: Apache still serves HTTP. */
    (void)daemon_spawn(s, delay);
    return OK;
}

void mod_fallback_daemon_register_hooks(void)
{
    ap_hook_monitor(daemon_monitor, NULL, NULL, APR_HOOK_MIDDLE);
}
