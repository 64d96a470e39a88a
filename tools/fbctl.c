/* fbctl: the admin tool of the fallback transfer system, on libfb.
 *
 *   fbctl [-c FILE] check [--run-user U]   validate fallback.xml, print the effective settings,
 *                                          warn about docroots U cannot write
 *   fbctl [-c FILE] set-port http|https N  change a fallback port in place (validated, atomic)
 *   fbctl [-c FILE] sessions [--json]      list the sessions in the shared table
 *   fbctl [-c FILE] cancel ID              fail an active session (clients see server_refused)
 *
 * Errors go to stderr as "fbctl: message"; the exit code is the shared one of fb_err.h. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "fb_config.h"
#include "fb_err.h"
#include "fb_table.h"

#define FBCTL_ERRLEN 4096

typedef struct fbctl_opts {
    const char *config;   /* -c, else $FALLBACK_CONFIG, else FB_DEFAULT_CONFIG_FILE */
    const char *schema;   /* --schema, else fb_config_load's own search */
    const char *run_user; /* check --run-user, else $APACHE_RUN_USER, else who runs fbctl */
} fbctl_opts;

static void fbctl_usage(FILE *out)
{
    fprintf(out,
            "Usage: fbctl [OPTIONS] COMMAND [ARGS]\n"
            "\n"
            "Administer the fallback file transfer system (mod_fallback and udpd).\n"
            "\n"
            "Commands:\n"
            "  check [--run-user USER]  validate the configuration, print the effective settings, and\n"
            "                           warn about a docroot that is missing or that USER (the user\n"
            "                           Apache and udpd run as; default $APACHE_RUN_USER, else the\n"
            "                           user running fbctl; another user needs root) cannot write\n"
            "  set-port http|https N    set <http_server>/<http_port> or <https_port> to N, keeping\n"
            "                           comments; the file is replaced only if the result is valid\n"
            "  sessions [--json]        list the sessions in the shared session table\n"
            "                           (--json: one JSON object per line)\n"
            "  cancel ID                mark an active session failed; its client stops with\n"
            "                           \"Server refused request\" (the partial file is kept)\n"
            "\n"
            "Options:\n"
            "  -c, --config FILE        configuration file (default: $FALLBACK_CONFIG, else %s)\n"
            "      --schema FILE        schema to validate against (default: $FB_SCHEMA, else\n"
            "                           %s, else fallback.xsd beside FILE)\n"
            "  -h, --help               show this help\n"
            "  -V, --version            show the version\n"
            "\n"
            "Exit status: 0 on success, 2 usage error, 3 invalid configuration, and the other codes\n"
            "of the shared error table (see docs/CONFIG.md).\n",
            FB_DEFAULT_CONFIG_FILE, FB_DEFAULT_SCHEMA_FILE);
}

/* Prints each line of a (possibly multi-line) libfb error message with our prefix. */
static void fbctl_print_error(const char *errbuf, fb_err rc)
{
    const char *p = errbuf;
    if (p == NULL || *p == '\0') {
        fprintf(stderr, "fbctl: %s\n", fb_err_message(rc));
        return;
    }
    /* Bounded by the buffer: each pass consumes at least one character. */
    while (*p != '\0') {
        const char *nl = strchr(p, '\n');
        int len = nl != NULL ? (int)(nl - p) : (int)strlen(p);
        fprintf(stderr, "fbctl: %.*s\n", len, p);
        p += len;
        if (*p == '\n')
            p++;
    }
}

__attribute__((format(printf, 1, 2))) static int fbctl_fail_usage(const char *fmt, ...)
{
    va_list ap;
    fputs("fbctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'fbctl --help'.\n", stderr);
    return fb_err_exit_code(FB_ERR_USAGE);
}

static fb_err fbctl_load(fb_config **pcfg, const fbctl_opts *opts)
{
    char errbuf[FBCTL_ERRLEN];
    fb_err rc = fb_config_load(pcfg, opts->config, opts->schema, errbuf, sizeof(errbuf));
    if (rc != FB_OK)
        fbctl_print_error(errbuf, rc);
    return rc;
}

/* ---- check, set-port ------------------------------------------------------------------- */

/* Whether UID/GID (with NAME's supplementary groups) may create files in DIR: checked in a child
 * that becomes that user, so ACLs, groups and read-only mounts all count as the kernel sees them.
 * 1 yes, 0 no, -1 the check could not be made. */
static int fbctl_writable_as(const char *dir, const char *name, uid_t uid, gid_t gid)
{
    if (uid == geteuid())
        return access(dir, W_OK | X_OK) == 0;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (initgroups(name, gid) != 0 || setgid(gid) != 0 || setuid(uid) != 0)
            _exit(2);
        _exit(access(dir, W_OK | X_OK) == 0 ? 0 : 1);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) > 1)
        return -1;
    return WEXITSTATUS(status) == 0;
}

/* Warns (stderr, "fbctl: warning: FILE:LINE: ...") about each docroot that does not exist, is not
 * a directory, or is not writable by the user Apache and udpd run as. Returns the count. */
static unsigned fbctl_check_docroots(const fb_config *cfg, const char *run_user)
{
    unsigned warnings = 0;
    struct passwd *pw = NULL;
    uid_t uid = geteuid();
    gid_t gid = getegid();
    char name[256] = "";

    if (run_user != NULL && run_user[0] != '\0') {
        pw = getpwnam(run_user);
        if (pw == NULL) {
            fprintf(stderr,
                    "fbctl: warning: no user '%s' (--run-user or APACHE_RUN_USER): docroots not checked\n",
                    run_user);
            return 1;
        }
    } else {
        pw = getpwuid(uid);
    }
    if (pw != NULL) {
        snprintf(name, sizeof(name), "%s", pw->pw_name);
        if (pw->pw_uid != uid && geteuid() != 0) {
            fprintf(stderr,
                    "fbctl: warning: only root can check the docroots as '%s': checked as the user running "
                    "fbctl\n",
                    name);
            warnings++;
            pw = getpwuid(uid);
            snprintf(name, sizeof(name), "%s", pw != NULL ? pw->pw_name : "?");
        } else {
            uid = pw->pw_uid;
            gid = pw->pw_gid;
        }
    }
    for (unsigned i = 0; i < cfg->ndocroots; i++) {
        const fb_docroot *d = &cfg->docroots[i];
        char who[300];
        struct stat st;

        if (d->user != NULL)
            snprintf(who, sizeof(who), "user %s", d->user);
        else if (d->group != NULL)
            snprintf(who, sizeof(who), "group %s", d->group);
        else
            snprintf(who, sizeof(who), "default");
        if (stat(d->docroot, &st) != 0) {
            fprintf(stderr, "fbctl: warning: %s:%ld: docroot %s (%s) %s%s\n", cfg->file, d->line, d->docroot,
                    who, errno == ENOENT ? "does not exist" : "cannot be examined: ",
                    errno == ENOENT ? "" : strerror(errno));
            warnings++;
        } else if (!S_ISDIR(st.st_mode)) {
            fprintf(stderr, "fbctl: warning: %s:%ld: docroot %s (%s) is not a directory\n", cfg->file,
                    d->line, d->docroot, who);
            warnings++;
        } else {
            int w = fbctl_writable_as(d->docroot, name, uid, gid);
            if (w != 1) {
                fprintf(stderr,
                        "fbctl: warning: %s:%ld: docroot %s (%s) %s by user %s (Apache's and udpd's)\n",
                        cfg->file, d->line, d->docroot, who,
                        w == 0 ? "is not writable" : "could not be checked", name);
                warnings++;
            }
        }
    }
    printf("docroots checked as user %s: %u warning%s\n", name[0] ? name : "?", warnings,
           warnings == 1 ? "" : "s");
    return warnings;
}

static int fbctl_check(const fbctl_opts *opts)
{
    fb_config *cfg = NULL;
    fb_err rc = fbctl_load(&cfg, opts);
    if (rc != FB_OK)
        return fb_err_exit_code(rc);
    fb_config_print(cfg, stdout);
    fflush(stdout);
    (void)fbctl_check_docroots(cfg, opts->run_user != NULL ? opts->run_user : getenv("APACHE_RUN_USER"));
    printf("OK\n");
    fb_config_free(cfg);
    return 0;
}

static int fbctl_set_port(const fbctl_opts *opts, const char *which, const char *value)
{
    char errbuf[FBCTL_ERRLEN];
    char *end = NULL;

    if (strcmp(which, "http") != 0 && strcmp(which, "https") != 0)
        return fbctl_fail_usage("set-port: '%s' is not http or https", which);
    errno = 0;
    long port = strtol(value, &end, 10);
    /* Only the syntax is checked here; the range is the schema's (one rule, one message). */
    if (value[0] == '\0' || *end != '\0' || errno != 0 || port < -1 || port > 1000000)
        return fbctl_fail_usage("set-port: '%s' is not a port number", value);

    fb_err rc = fb_config_set_port(opts->config, opts->schema, which, (int)port, errbuf, sizeof(errbuf));
    if (rc != FB_OK) {
        fbctl_print_error(errbuf, rc);
        fprintf(stderr, "fbctl: %s left unchanged\n", opts->config);
        return fb_err_exit_code(rc);
    }
    printf("http_server.%s_port = %ld\n", which, port);
    printf("Written to %s. Make Apache's \"Listen\" match, then reload Apache (apachectl graceful).\n",
           opts->config);
    return 0;
}

/* ---- the session table ----------------------------------------------------------------- */

static const char *fbctl_direction_name(uint32_t dir)
{
    return dir == FB_DIR_UPLOAD ? "upload" : dir == FB_DIR_DOWNLOAD ? "download" : "-";
}

/* A fixed-size field from shared memory as a C string: never trust it to be terminated. */
static void fbctl_field(char *out, size_t outlen, const char *field, size_t cap)
{
    size_t n = strnlen(field, cap);
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, field, n);
    out[n] = '\0';
}

/* Makes a user-supplied string safe for a terminal: C0 controls, DEL and the UTF-8 forms of
 * C1 controls (which some terminals obey) become '?'. Other UTF-8 stays. */
static void fbctl_sanitize_terminal(char *s)
{
    for (unsigned char *p = (unsigned char *)s; *p != '\0'; p++) {
        if (*p < 0x20 || *p == 0x7f)
            *p = '?';
        else if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
            p[0] = '?';
            p[1] = '?';
            p++;
        }
    }
}

/* A JSON string for a field that should be UTF-8; if it is not, an ASCII rendering. */
static json_t *fbctl_json_string(const char *s)
{
    json_t *j = json_string(s);
    if (j != NULL)
        return j;
    char copy[FB_RELPATH_MAX + FB_DOCROOT_MAX];
    snprintf(copy, sizeof(copy), "%s", s);
    for (unsigned char *p = (unsigned char *)copy; *p != '\0'; p++)
        if (*p >= 0x80)
            *p = '?';
    return json_string(copy);
}

static void fbctl_human_size(char *out, size_t outlen, uint64_t bytes)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = (double)bytes;
    unsigned u = 0;
    while (v >= 1024.0 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(out, outlen, "%" PRIu64 " B", bytes);
    else
        snprintf(out, outlen, "%.1f %s", v, units[u]);
}

static void fbctl_human_age(char *out, size_t outlen, uint64_t seconds)
{
    if (seconds < 60)
        snprintf(out, outlen, "%" PRIu64 "s", seconds);
    else if (seconds < 3600)
        snprintf(out, outlen, "%" PRIu64 "m%02" PRIu64 "s", seconds / 60, seconds % 60);
    else if (seconds < 86400)
        snprintf(out, outlen, "%" PRIu64 "h%02" PRIu64 "m", seconds / 3600, seconds / 60 % 60);
    else
        snprintf(out, outlen, "%" PRIu64 "d%02" PRIu64 "h", seconds / 86400, seconds / 3600 % 24);
}

static uint64_t fbctl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t fbctl_seconds_since(uint64_t now_ns, uint64_t then_ns)
{
    return then_ns != 0 && then_ns <= now_ns ? (now_ns - then_ns) / 1000000000u : 0;
}

/* One session as fbctl shows it: a snapshot, the key wiped from it at once. */
typedef struct fbctl_session {
    char id[FB_SESSION_ID_LEN + 1];
    uint32_t state;
    uint32_t error_code;
    int32_t owner_pid;
    uint32_t direction;
    uint32_t chunk_size;
    uint64_t size, nchunks, chunks_done, bytes_http, bytes_udp, received;
    uint64_t created_ns, last_activity_ns;
    char user[FB_USER_MAX];
    char path[FB_RELPATH_MAX];
    char docroot[FB_DOCROOT_MAX];
} fbctl_session;

static void fbctl_snapshot(fbctl_session *s, fb_slot *slot, uint32_t index)
{
    fb_slot_info info;

    memset(s, 0, sizeof(*s));
    s->state = atomic_load(&slot->state);
    fb_slot_info_read(&info, slot);
    OPENSSL_cleanse(info.key, sizeof(info.key)); /* fbctl never needs, shows or keeps it */
    fb_session_id_format(s->id, index, info.id_random);
    s->error_code = atomic_load(&slot->error_code);
    s->owner_pid = atomic_load(&slot->owner_pid);
    s->direction = info.direction;
    s->chunk_size = info.chunk_size;
    s->size = info.size;
    s->nchunks = info.nchunks;
    s->chunks_done = atomic_load(&slot->chunks_done);
    s->bytes_http = atomic_load(&slot->bytes_http);
    s->bytes_udp = atomic_load(&slot->bytes_udp);
    s->created_ns = info.created_ns;
    s->last_activity_ns = atomic_load(&slot->last_activity_ns);
    fbctl_field(s->user, sizeof(s->user), info.user, sizeof(info.user));
    fbctl_field(s->path, sizeof(s->path), info.relpath, sizeof(info.relpath));
    fbctl_field(s->docroot, sizeof(s->docroot), info.docroot, sizeof(info.docroot));
    OPENSSL_cleanse(&info, sizeof(info));

    /* Uploads: completed chunks (the last one may be short). Downloads: bytes sent. */
    if (s->direction == FB_DIR_UPLOAD) {
        if (s->nchunks > 0 && s->chunks_done >= s->nchunks)
            s->received = s->size;
        else
            s->received = s->chunks_done * (uint64_t)s->chunk_size;
    } else {
        s->received = s->bytes_http + s->bytes_udp;
    }
    if (s->state == FB_SLOT_DONE && s->direction == FB_DIR_UPLOAD)
        s->received = s->size;
    if (s->received > s->size)
        s->received = s->size;
}

static void fbctl_print_json(const fbctl_session *s, uint64_t now_ns)
{
    json_t *o = json_object();
    if (o == NULL)
        return;
    json_object_set_new(o, "id", json_string(s->id));
    json_object_set_new(o, "state", json_string(fb_slot_state_name(s->state)));
    json_object_set_new(o, "user", fbctl_json_string(s->user));
    json_object_set_new(o, "direction", json_string(fbctl_direction_name(s->direction)));
    json_object_set_new(o, "path", fbctl_json_string(s->path));
    json_object_set_new(o, "docroot", fbctl_json_string(s->docroot));
    json_object_set_new(o, "size", json_integer((json_int_t)s->size));
    json_object_set_new(o, "chunk_size", json_integer(s->chunk_size));
    json_object_set_new(o, "nchunks", json_integer((json_int_t)s->nchunks));
    json_object_set_new(o, "chunks_done", json_integer((json_int_t)s->chunks_done));
    json_object_set_new(o, "received_bytes", json_integer((json_int_t)s->received));
    json_object_set_new(o, "bytes_http", json_integer((json_int_t)s->bytes_http));
    json_object_set_new(o, "bytes_udp", json_integer((json_int_t)s->bytes_udp));
    json_object_set_new(o, "created", json_integer((json_int_t)(s->created_ns / 1000000000u)));
    json_object_set_new(o, "age_s", json_integer((json_int_t)fbctl_seconds_since(now_ns, s->created_ns)));
    if (s->last_activity_ns != 0)
        json_object_set_new(o, "idle_s",
                            json_integer((json_int_t)fbctl_seconds_since(now_ns, s->last_activity_ns)));
    if (s->state == FB_SLOT_FAILED)
        json_object_set_new(o, "error", json_string(fb_err_name((fb_err)s->error_code)));
    if (s->state == FB_SLOT_CLAIMED || s->state == FB_SLOT_FINALISING)
        json_object_set_new(o, "owner_pid", json_integer(s->owner_pid));
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (line != NULL) {
        printf("%s\n", line);
        free(line);
    }
    json_decref(o);
}

static void fbctl_print_text(const fbctl_session *s, uint64_t now_ns)
{
    char user[FB_USER_MAX], path[FB_RELPATH_MAX], size[32], done[48], age[32], state[48];

    snprintf(user, sizeof(user), "%s", s->user[0] != '\0' ? s->user : "-");
    snprintf(path, sizeof(path), "%s", s->path);
    fbctl_sanitize_terminal(user);
    fbctl_sanitize_terminal(path);
    fbctl_human_size(size, sizeof(size), s->size);
    fbctl_human_size(done, sizeof(done), s->received);
    if (s->size > 0) {
        size_t n = strlen(done);
        snprintf(done + n, sizeof(done) - n, " (%u%%)", (unsigned)(s->received * 100 / s->size));
    }
    if (s->created_ns != 0)
        fbctl_human_age(age, sizeof(age), fbctl_seconds_since(now_ns, s->created_ns));
    else
        snprintf(age, sizeof(age), "-");
    if (s->state == FB_SLOT_FAILED)
        snprintf(state, sizeof(state), "failed:%s", fb_err_name((fb_err)s->error_code));
    else
        snprintf(state, sizeof(state), "%s", fb_slot_state_name(s->state));
    printf("%-32s  %-21s  %-10s  %-8s  %10s  %17s  %7s  %s\n", s->id, state, user,
           fbctl_direction_name(s->direction), size, done, age, path);
}

/* Attaches to the table named in the configuration. *PTABLE stays NULL (and FB_OK is returned)
 * when there is no table yet. */
static fb_err fbctl_open_table(fb_table **ptable, const fb_config *cfg)
{
    char errbuf[FBCTL_ERRLEN];
    struct stat st;
    fb_table_opts topts;

    *ptable = NULL;
    if (lstat(cfg->shm_path, &st) != 0 && errno == ENOENT)
        return FB_OK;
    memset(&topts, 0, sizeof(topts));
    topts.create = 0;
    topts.owner_uid = (uid_t)-1;
    topts.owner_gid = (gid_t)-1;
    /* The owner check protects the daemons from a table planted by someone else. An admin who
     * can open the file at all is looking at whatever is there, so its owner is accepted; the
     * mode check (no access for others) still applies, and displayed strings are sanitised. */
    topts.trusted_uid = st.st_uid;
    fb_err rc = fb_table_open(ptable, cfg->shm_path, &topts, errbuf, sizeof(errbuf));
    if (rc == FB_ERR_NOT_FOUND) { /* removed between lstat and open */
        *ptable = NULL;
        return FB_OK;
    }
    if (rc != FB_OK)
        fbctl_print_error(errbuf, rc);
    return rc;
}

static int fbctl_sessions(const fbctl_opts *opts, int json)
{
    fb_config *cfg = NULL;
    fb_table *table = NULL;
    int status = 0;

    fb_err rc = fbctl_load(&cfg, opts);
    if (rc != FB_OK)
        return fb_err_exit_code(rc);
    rc = fbctl_open_table(&table, cfg);
    if (rc != FB_OK) {
        status = fb_err_exit_code(rc);
        goto out;
    }
    if (table == NULL) {
        if (!json)
            printf("no session table at %s (no sessions yet)\n", cfg->shm_path);
        goto out;
    }

    uint64_t now_ns = fbctl_now_ns();
    uint32_t nslots = fb_table_nslots(table), shown = 0;
    if (!json)
        printf("%-32s  %-21s  %-10s  %-8s  %10s  %17s  %7s  %s\n", "ID", "STATE", "USER", "DIR", "SIZE",
               "DONE", "AGE", "PATH");
    for (uint32_t i = 0; i < nslots; i++) {
        fb_slot *slot = fb_table_slot(table, i);
        if (slot == NULL || atomic_load(&slot->state) == FB_SLOT_FREE)
            continue;
        fbctl_session s;
        fbctl_snapshot(&s, slot, i);
        if (s.state == FB_SLOT_FREE) /* freed while we read it */
            continue;
        if (json)
            fbctl_print_json(&s, now_ns);
        else
            fbctl_print_text(&s, now_ns);
        shown++;
    }
    if (!json) {
        fb_table_header *hdr = fb_table_header_get(table);
        int32_t udpd_pid = atomic_load(&hdr->udpd_pid);
        uint64_t beat = atomic_load(&hdr->heartbeat_ns);
        printf("%u session%s in %u slots of %s", shown, shown == 1 ? "" : "s", nslots, cfg->shm_path);
        if (udpd_pid > 0 && beat != 0)
            printf("; udpd pid %d, last heartbeat %" PRIu64 "s ago", (int)udpd_pid,
                   fbctl_seconds_since(now_ns, beat));
        printf("\n");
    }
out:
    if (table != NULL)
        fb_table_close(table);
    fb_config_free(cfg);
    return status;
}

static int fbctl_cancel(const fbctl_opts *opts, const char *id)
{
    fb_config *cfg = NULL;
    fb_table *table = NULL;
    int status = 0;
    uint32_t index = 0;

    fb_err rc = fbctl_load(&cfg, opts);
    if (rc != FB_OK)
        return fb_err_exit_code(rc);
    rc = fbctl_open_table(&table, cfg);
    if (rc != FB_OK) {
        status = fb_err_exit_code(rc);
        goto out;
    }
    char shown_id[FB_SESSION_ID_LEN + 1];
    fbctl_field(shown_id, sizeof(shown_id), id, strlen(id) + 1);
    fbctl_sanitize_terminal(shown_id);
    if (table == NULL || fb_table_find(table, &index, id) != FB_OK) {
        fprintf(stderr, "fbctl: no session %s%s\n", shown_id,
                table == NULL ? " (there is no session table yet)" : "");
        status = fb_err_exit_code(FB_ERR_NOT_FOUND);
        goto out;
    }

    fb_slot *slot = fb_table_slot(table, index);
    fbctl_session s;
    fbctl_snapshot(&s, slot, index);
    fbctl_sanitize_terminal(s.user);
    fbctl_sanitize_terminal(s.path);

    /* The error code first, so a client that sees FAILED also sees why. If the transition
     * loses a race (the session finished meanwhile), put the old code back. */
    uint32_t old_code = atomic_exchange(&slot->error_code, (uint32_t)FB_ERR_SERVER_REFUSED);
    if (fb_slot_transition(slot, FB_SLOT_ACTIVE, FB_SLOT_FAILED)) {
        printf("session %s (user %s, %s %s): active -> failed (%s: %s)\n", s.id, s.user[0] ? s.user : "-",
               fbctl_direction_name(s.direction), s.path, fb_err_name(FB_ERR_SERVER_REFUSED),
               fb_err_message(FB_ERR_SERVER_REFUSED));
        printf("The partial file and its checkpoint are kept; the slot is reused after %u s.\n",
               (unsigned)cfg->done_linger);
        goto out;
    }
    uint32_t expected = (uint32_t)FB_ERR_SERVER_REFUSED;
    atomic_compare_exchange_strong(&slot->error_code, &expected, old_code);
    uint32_t now = atomic_load(&slot->state);
    fprintf(stderr, "fbctl: session %s is %s: only an active session can be cancelled\n", s.id,
            fb_slot_state_name(now));
    status = fb_err_exit_code(FB_ERR_SESSION_STATE);
out:
    if (table != NULL)
        fb_table_close(table);
    fb_config_free(cfg);
    return status;
}

/* ---- main --------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    enum { OPT_SCHEMA = 256 };
    static const struct option global_opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"schema", required_argument, NULL, OPT_SCHEMA},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    static const struct option sessions_opts[] = {
        {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    static const struct option check_opts[] = {
        {"run-user", required_argument, NULL, 'u'},
        {NULL, 0, NULL, 0},
    };
    fbctl_opts opts;
    int c;

    memset(&opts, 0, sizeof(opts));
    opts.config = getenv("FALLBACK_CONFIG");
    if (opts.config == NULL || opts.config[0] == '\0')
        opts.config = FB_DEFAULT_CONFIG_FILE;

    /* '+': stop at the command, whose own options are parsed below. */
    while ((c = getopt_long(argc, argv, "+c:hV", global_opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            opts.config = optarg;
            break;
        case OPT_SCHEMA:
            opts.schema = optarg;
            break;
        case 'h':
            fbctl_usage(stdout);
            return 0;
        case 'V':
            printf("fbctl (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION);
            return 0;
        default:
            fprintf(stderr, "Try 'fbctl --help'.\n");
            return fb_err_exit_code(FB_ERR_USAGE);
        }
    }
    if (optind >= argc)
        return fbctl_fail_usage("%s", "no command given (check, set-port, sessions, cancel)");

    const char *cmd = argv[optind];
    int sub_argc = argc - optind;
    char **sub_argv = argv + optind;
    int json = 0;
    optind = 0; /* GNU getopt: restart on the command's arguments */
    opterr = 0; /* our own message names fbctl and the command */
    const struct option *cmd_opts = strcmp(cmd, "sessions") == 0 ? sessions_opts
                                    : strcmp(cmd, "check") == 0  ? check_opts
                                                                 : sessions_opts + 1;
    while ((c = getopt_long(sub_argc, sub_argv, "+", cmd_opts, NULL)) != -1) {
        if (c == 'j') {
            json = 1;
        } else if (c == 'u') {
            opts.run_user = optarg;
        } else {
            return fbctl_fail_usage("%s: unknown option '%s'", cmd, sub_argv[optind - 1]);
        }
    }
    int nargs = sub_argc - optind;
    char **args = sub_argv + optind;

    if (strcmp(cmd, "check") == 0) {
        if (nargs != 0)
            return fbctl_fail_usage("check: unexpected argument '%s'", args[0]);
        return fbctl_check(&opts);
    }
    if (strcmp(cmd, "set-port") == 0) {
        if (nargs != 2)
            return fbctl_fail_usage("%s", "set-port needs two arguments: http|https PORT");
        return fbctl_set_port(&opts, args[0], args[1]);
    }
    if (strcmp(cmd, "sessions") == 0) {
        if (nargs != 0)
            return fbctl_fail_usage("sessions: unexpected argument '%s'", args[0]);
        return fbctl_sessions(&opts, json);
    }
    if (strcmp(cmd, "cancel") == 0) {
        if (nargs != 1)
            return fbctl_fail_usage("%s", "cancel needs one argument: the session ID");
        return fbctl_cancel(&opts, args[0]);
    }
    return fbctl_fail_usage("unknown command '%s'", cmd);
}
