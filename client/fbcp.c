/* fbcp: command line, credentials, and the plan of a run (which local file goes to which remote
 * path and back), then main(). The transfers themselves are in fbcp_upload.c and
 * fbcp_download.c; docs/fbcp.md is the user's documentation of everything parsed here. */
#include "config.h"

#include "fbcp.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "fb_config.h"
#include "fb_wire.h"

void fbcp_opts_init(fbcp_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->connections = FBCP_DEFAULT_CONNECTIONS;
    o->overwrite = FBCP_OVERWRITE_IF_DIFFERENT;
    o->resume = 1;
    o->timeout_s = FBCP_DEFAULT_TIMEOUT;
    o->retries = FBCP_DEFAULT_RETRIES;
    o->fallback = FBCP_FALLBACK_AUTO;
    o->policy = FBCP_POLICY_FAIR;
    o->request_size = FBCP_DEFAULT_REQUEST_SIZE;
    o->cipher = FB_CIPHER_AES128_GCM;
    o->udp_timeout_ms = FBCP_DEFAULT_UDP_TIMEOUT_MS;
    o->udp_idle_ms = FBCP_DEFAULT_UDP_IDLE_MS;
    o->udp_datagram = 0; /* by the address family: fbcp_udp_new */
    o->transfers = FBCP_DEFAULT_TRANSFERS;
    o->preserve_times = 1;
    o->packs = 1;
}

const char *const fbcp_overwrite_names[5] = {"never", "always", "if_different", "older",
                                             "if_different,older"};

void fbcp_opts_free(fbcp_opts *o)
{
    free(o->user);
    if (o->password != NULL) {
        OPENSSL_cleanse(o->password, strlen(o->password));
        free(o->password);
    }
    free(o->netrc_file);
    free(o->cacert);
    free(o->location);
    memset(o, 0, sizeof(*o));
}

static void fbcp_usage(FILE *f)
{
    fputs("Usage: fbcp [options] SOURCE... DEST\n"
          "Copies files to or from a mod_fallback server. Exactly one side is a URL\n"
          "https://host[:port]/<location>/<path> (or http://).\n"
          "\n"
          "  upload:   fbcp [options] FILE... https://host/fallback/dir/\n"
          "  download: fbcp [options] https://host/fallback/dir/file... LOCAL\n"
          "\n"
          "Options:\n"
          "  -r, --recursive           copy directories recursively\n"
          "      --connections N       parallel connections per file (1..64, default 4)\n"
          "      --transfers N         files in flight at once (1..128, default 16)\n"
          "      --overwrite POLICY    never, always, if_different (default), older (replace\n"
          "                            only older targets) or if_different,older\n"
          "      --no-preserve-times   do not keep modification times (kept by default)\n"
          "      --no-packs            with -r, move every file in its own session (by default files\n"
          "                            of at most 1 MiB travel in packs of up to 1000, up and down)\n"
          "      --resume              resume interrupted transfers (default)\n"
          "      --no-resume           discard earlier partial data and start over\n"
          "  -u, --user USER[:PASS]    credentials (asks for the password on a terminal)\n"
          "      --netrc               read credentials from ~/.netrc (default without -u)\n"
          "      --netrc-file FILE     read credentials from FILE instead of ~/.netrc\n"
          "      --cacert FILE         trust the CA certificates in FILE\n"
          "  -k, --insecure            do not verify the server's certificate\n"
          "      --location PATH       the server's location (default: first URL path segment)\n"
          "      --json                one JSON event per line on stdout\n"
          "  -q, --quiet               no progress output\n"
          "  -v, --verbose             trace requests on stderr (never credentials)\n"
          "      --timeout SECONDS     abort a request that moves nothing for this long (default 30)\n"
          "      --chunk-timeout SECONDS  same as --timeout\n"
          "      --retries N           retries per failed request (default 5, with backoff)\n"
          "      --limit-rate BYTES    at most BYTES per second in total (suffixes k, m, g)\n"
          "      --request-size BYTES  bytes per ranged request (default 16m)\n"
          "      --fallback MODE       auto (UDP first, HTTP(S) when UDP is blocked or lost,\n"
          "                            back to UDP when it answers; default), force (HTTP(S)\n"
          "                            only) or never (UDP only)\n"
          "      --udp-timeout SECONDS no UDP answer this long at start: HTTP(S) (default 2)\n"
          "      --udp-idle SECONDS    UDP silent this long mid-transfer: HTTP(S) (default 3)\n"
          "      --target-rate RATE    target rate in bits/s for UDP (suffixes k, M, G)\n"
          "      --min-rate RATE       minimum rate in bits/s for UDP\n"
          "      --policy POLICY       fixed, high, fair (default) or low (UDP rate control)\n"
          "      --cipher CIPHER       aes-128-gcm (default), aes-256-gcm or none (UDP packet\n"
          "                            protection; the server decides what is allowed)\n"
          "      --udp-datagram BYTES  largest UDP datagram (default: fits an MTU of 1500)\n"
          "  -h, --help                this help\n"
          "  -V, --version             print the version\n"
          "\n"
          "Exit status: 0 on success, else the code of the first error (see fbcp(1)).\n",
          f);
}

enum {
    OPT_CONNECTIONS = 256,
    OPT_OVERWRITE,
    OPT_RESUME,
    OPT_NO_RESUME,
    OPT_NETRC,
    OPT_NETRC_FILE,
    OPT_CACERT,
    OPT_LOCATION,
    OPT_JSON,
    OPT_TIMEOUT,
    OPT_RETRIES,
    OPT_LIMIT_RATE,
    OPT_REQUEST_SIZE,
    OPT_FALLBACK,
    OPT_TARGET_RATE,
    OPT_MIN_RATE,
    OPT_POLICY,
    OPT_CIPHER,
    OPT_UDP_TIMEOUT,
    OPT_UDP_IDLE,
    OPT_UDP_DATAGRAM,
    OPT_TRANSFERS,
    OPT_PRESERVE_TIMES,
    OPT_NO_PRESERVE_TIMES,
    OPT_NO_PACKS,
};

static const struct option fbcp_long_opts[] = {
    {"recursive", no_argument, NULL, 'r'},
    {"connections", required_argument, NULL, OPT_CONNECTIONS},
    {"overwrite", required_argument, NULL, OPT_OVERWRITE},
    {"resume", no_argument, NULL, OPT_RESUME},
    {"no-resume", no_argument, NULL, OPT_NO_RESUME},
    {"user", required_argument, NULL, 'u'},
    {"netrc", no_argument, NULL, OPT_NETRC},
    {"netrc-file", required_argument, NULL, OPT_NETRC_FILE},
    {"cacert", required_argument, NULL, OPT_CACERT},
    {"insecure", no_argument, NULL, 'k'},
    {"location", required_argument, NULL, OPT_LOCATION},
    {"json", no_argument, NULL, OPT_JSON},
    {"quiet", no_argument, NULL, 'q'},
    {"verbose", no_argument, NULL, 'v'},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"chunk-timeout", required_argument, NULL, OPT_TIMEOUT},
    {"retries", required_argument, NULL, OPT_RETRIES},
    {"limit-rate", required_argument, NULL, OPT_LIMIT_RATE},
    {"request-size", required_argument, NULL, OPT_REQUEST_SIZE},
    {"fallback", required_argument, NULL, OPT_FALLBACK},
    {"target-rate", required_argument, NULL, OPT_TARGET_RATE},
    {"min-rate", required_argument, NULL, OPT_MIN_RATE},
    {"policy", required_argument, NULL, OPT_POLICY},
    {"cipher", required_argument, NULL, OPT_CIPHER},
    {"udp-timeout", required_argument, NULL, OPT_UDP_TIMEOUT},
    {"udp-idle", required_argument, NULL, OPT_UDP_IDLE},
    {"udp-datagram", required_argument, NULL, OPT_UDP_DATAGRAM},
    {"transfers", required_argument, NULL, OPT_TRANSFERS},
    {"preserve-times", no_argument, NULL, OPT_PRESERVE_TIMES},
    {"no-preserve-times", no_argument, NULL, OPT_NO_PRESERVE_TIMES},
    {"no-packs", no_argument, NULL, OPT_NO_PACKS},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

static int fbcp_pick(const char *arg, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(arg, names[i]) == 0)
            return i;
    return -1;
}

/* Parses the command line into O. *PFIRST is the index of the first operand. On error writes a
 * reason into ERRBUF and returns FB_ERR_USAGE. *PEXIT is set for --help/--version. */
static fb_err fbcp_parse_args(fbcp_opts *o, int *pfirst, int *pexit, int argc, char **argv, char *errbuf,
                              size_t errlen)
{
    static const char *const fallbacks[] = {"auto", "force", "never"};
    static const char *const policies[] = {"fair", "fixed", "high", "low"};
    static const char *const ciphers[] = {"aes-128-gcm", "aes-256-gcm", "none"};
    static const unsigned cipher_bits[] = {FB_CIPHER_AES128_GCM, FB_CIPHER_AES256_GCM, FB_CIPHER_NONE};
    int ch, idx;
    long l;

    *pexit = -1;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "ru:kqvhV", fbcp_long_opts, NULL)) != -1) {
        switch (ch) {
        case 'r':
            o->recursive = 1;
            break;
        case OPT_CONNECTIONS:
            if (fbcp_parse_long(&l, optarg, 1, FBCP_MAX_CONNECTIONS) != FB_OK) {
                snprintf(errbuf, errlen, "--connections wants a number from 1 to %d", FBCP_MAX_CONNECTIONS);
                return FB_ERR_USAGE;
            }
            o->connections = (int)l;
            break;
        case OPT_OVERWRITE:
            if ((idx = fbcp_pick(optarg, fbcp_overwrite_names, 5)) < 0) {
                snprintf(errbuf, errlen,
                         "--overwrite wants never, always, if_different, older or "
                         "if_different,older");
                return FB_ERR_USAGE;
            }
            o->overwrite = (fbcp_overwrite)idx;
            break;
        case OPT_RESUME:
            o->resume = 1;
            break;
        case OPT_NO_RESUME:
            o->resume = 0;
            break;
        case 'u': {
            char *colon = strchr(optarg, ':');
            free(o->user);
            if (o->password != NULL) {
                OPENSSL_cleanse(o->password, strlen(o->password));
                free(o->password);
                o->password = NULL;
            }
            o->user = colon != NULL ? strndup(optarg, (size_t)(colon - optarg)) : strdup(optarg);
            if (colon != NULL) {
                o->password = strdup(colon + 1);
                /* keep the password out of ps(1) */
                memset(colon + 1, '*', strlen(colon + 1));
            }
            if (o->user == NULL || (colon != NULL && o->password == NULL))
                return FB_ERR_NOMEM;
            break;
        }
        case OPT_NETRC:
            o->netrc = 1;
            break;
        case OPT_NETRC_FILE:
            free(o->netrc_file);
            o->netrc_file = strdup(optarg);
            o->netrc = 1;
            break;
        case OPT_CACERT:
            free(o->cacert);
            o->cacert = strdup(optarg);
            break;
        case 'k':
            o->insecure = 1;
            break;
        case OPT_LOCATION:
            free(o->location);
            o->location = strdup(optarg);
            break;
        case OPT_JSON:
            o->json = 1;
            break;
        case 'q':
            o->quiet = 1;
            break;
        case 'v':
            o->verbose = 1;
            break;
        case OPT_TIMEOUT:
            if (fbcp_parse_long(&l, optarg, 1, 86400) != FB_OK) {
                snprintf(errbuf, errlen, "--timeout wants seconds from 1 to 86400");
                return FB_ERR_USAGE;
            }
            o->timeout_s = l;
            break;
        case OPT_RETRIES:
            if (fbcp_parse_long(&l, optarg, 0, FBCP_MAX_RETRIES) != FB_OK) {
                snprintf(errbuf, errlen, "--retries wants a number from 0 to %d", FBCP_MAX_RETRIES);
                return FB_ERR_USAGE;
            }
            o->retries = (int)l;
            break;
        case OPT_LIMIT_RATE:
            if (fbcp_parse_size(&o->limit_rate, optarg, 1) != FB_OK || o->limit_rate > INT64_MAX) {
                snprintf(errbuf, errlen, "--limit-rate wants bytes per second (e.g. 500k, 10m)");
                return FB_ERR_USAGE;
            }
            break;
        case OPT_REQUEST_SIZE:
            if (fbcp_parse_size(&o->request_size, optarg, 1) != FB_OK || o->request_size == 0 ||
                o->request_size > (1ull << 40)) {
                snprintf(errbuf, errlen, "--request-size wants a byte count from 1 to 1t");
                return FB_ERR_USAGE;
            }
            break;
        case OPT_FALLBACK:
            if ((idx = fbcp_pick(optarg, fallbacks, 3)) < 0) {
                snprintf(errbuf, errlen, "--fallback wants auto, force or never");
                return FB_ERR_USAGE;
            }
            o->fallback = (fbcp_fallback)idx;
            break;
        case OPT_TARGET_RATE:
        case OPT_MIN_RATE: {
            uint64_t *dst = ch == OPT_TARGET_RATE ? &o->target_rate : &o->min_rate;
            if (fbcp_parse_size(dst, optarg, 0) != FB_OK || *dst == 0) {
                snprintf(errbuf, errlen, "%s wants a rate in bits per second (e.g. 100M)",
                         ch == OPT_TARGET_RATE ? "--target-rate" : "--min-rate");
                return FB_ERR_USAGE;
            }
            break;
        }
        case OPT_POLICY:
            if ((idx = fbcp_pick(optarg, policies, 4)) < 0) {
                snprintf(errbuf, errlen, "--policy wants fixed, high, fair or low");
                return FB_ERR_USAGE;
            }
            o->policy = (fbcp_policy)idx;
            break;
        case OPT_CIPHER:
            if ((idx = fbcp_pick(optarg, ciphers, 3)) < 0) {
                snprintf(errbuf, errlen, "--cipher wants aes-128-gcm, aes-256-gcm or none");
                return FB_ERR_USAGE;
            }
            o->cipher = cipher_bits[idx];
            break;
        case OPT_UDP_TIMEOUT:
        case OPT_UDP_IDLE: {
            uint32_t ms;
            if (fbcp_parse_seconds_ms(&ms, optarg, 100, 3600000) != FB_OK) {
                snprintf(errbuf, errlen, "%s wants seconds from 0.1 to 3600 (e.g. 2 or 0.5)",
                         ch == OPT_UDP_TIMEOUT ? "--udp-timeout" : "--udp-idle");
                return FB_ERR_USAGE;
            }
            if (ch == OPT_UDP_TIMEOUT)
                o->udp_timeout_ms = ms;
            else
                o->udp_idle_ms = ms;
            break;
        }
        case OPT_UDP_DATAGRAM:
            if (fbcp_parse_long(&l, optarg, FB_WIRE_MIN_DATAGRAM, FB_WIRE_MAX_DATAGRAM) != FB_OK) {
                snprintf(errbuf, errlen, "--udp-datagram wants a size from %u to %u bytes",
                         FB_WIRE_MIN_DATAGRAM, FB_WIRE_MAX_DATAGRAM);
                return FB_ERR_USAGE;
            }
            o->udp_datagram = (uint32_t)l;
            break;
        case OPT_TRANSFERS:
            if (fbcp_parse_long(&l, optarg, 1, FBCP_MAX_TRANSFERS) != FB_OK) {
                snprintf(errbuf, errlen, "--transfers wants a number from 1 to %d", FBCP_MAX_TRANSFERS);
                return FB_ERR_USAGE;
            }
            o->transfers = (int)l;
            break;
        case OPT_PRESERVE_TIMES:
        case OPT_NO_PRESERVE_TIMES:
            o->preserve_times = ch == OPT_PRESERVE_TIMES;
            break;
        case OPT_NO_PACKS:
            o->packs = 0;
            break;
        case 'h':
            *pexit = 0;
            fbcp_usage(stdout);
            return FB_OK;
        case 'V':
            *pexit = 0;
            printf("fbcp %s (transports: http, udp)\n", PACKAGE_VERSION);
            return FB_OK;
        default:
            if (optopt != 0 && optopt < 256)
                snprintf(errbuf, errlen, "unknown option -%c or missing argument", optopt);
            else
                snprintf(errbuf, errlen, "unknown option %s or missing argument", argv[optind - 1]);
            return FB_ERR_USAGE;
        }
        if ((ch == OPT_NETRC_FILE && o->netrc_file == NULL) || (ch == OPT_CACERT && o->cacert == NULL) ||
            (ch == OPT_LOCATION && o->location == NULL))
            return FB_ERR_NOMEM;
    }
    if (o->target_rate != 0 && o->min_rate != 0 && o->min_rate > o->target_rate) {
        snprintf(errbuf, errlen, "--min-rate is above --target-rate");
        return FB_ERR_USAGE;
    }
    if (argc - optind < 2) {
        snprintf(errbuf, errlen, "need at least one SOURCE and a DEST");
        return FB_ERR_USAGE;
    }
    *pfirst = optind;
    return FB_OK;
}

/* Reads a password from the terminal with echo off. */
static fb_err fbcp_ask_password(char **out, const char *user, const char *host)
{
    struct termios old, quiet;
    char buf[1024];
    size_t n = 0;
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
    int restored = 0;
    fb_err rv = FB_ERR_USAGE;

    *out = NULL;
    if (fd < 0 || !isatty(fd) || tcgetattr(fd, &old) != 0)
        goto out;
    quiet = old;
    quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
    quiet.c_lflag |= ICANON;
    if (tcsetattr(fd, TCSAFLUSH, &quiet) != 0)
        goto out;
    dprintf(fd, "Password for %s@%s: ", user, host);
    while (n + 1 < sizeof(buf)) {
        char ch;
        ssize_t r = read(fd, &ch, 1);
        if (r < 0 && errno == EINTR && !fbcp_interrupted)
            continue;
        if (r <= 0 || ch == '\n' || ch == '\r')
            break;
        buf[n++] = ch;
    }
    buf[n] = '\0';
    tcsetattr(fd, TCSAFLUSH, &old);
    restored = 1;
    if (write(fd, "\n", 1) < 0) {
        /* nothing to do: the newline is cosmetic */
    }
    if (!fbcp_interrupted) {
        *out = strdup(buf);
        rv = *out != NULL ? FB_OK : FB_ERR_NOMEM;
    }
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    if (fd >= 0) {
        if (!restored && rv != FB_ERR_USAGE)
            tcsetattr(fd, TCSAFLUSH, &old);
        close(fd);
    }
    return rv;
}

static void fbcp_on_signal(int sig)
{
    fbcp_interrupted = sig;
}

/* ---------------------------------------------------------------- upload planning */

/* Queues every source of an upload to URL in T. Returns non-zero if a source was refused with
 * an error that stops the run. */
static int fbcp_plan_upload(fbcp_tree *t, const fbcp_opts *o, const fbcp_url *url, char **sources, int nsrc)
{
    int dest_is_dir = url->trailing_slash || nsrc > 1 || url->path[0] == '\0';
    struct stat st;

    for (int i = 0; i < nsrc; i++)
        if (stat(sources[i], &st) == 0 && S_ISDIR(st.st_mode))
            dest_is_dir = 1;
    /* One file to a name without a trailing slash: if that names an existing remote directory,
     * the file goes into it under its own name (like cp); the session request finds out. */
    for (int i = 0; i < nsrc && !fbcp_interrupted; i++) {
        const char *src = sources[i];
        fb_err rv = FB_OK;

        if (stat(src, &st) != 0) {
            rv = errno == ENOENT ? FB_ERR_NOT_FOUND : FB_ERR_LOCAL_IO;
            fbcp_report_error(NULL, src, rv, strerror(errno));
        } else if (S_ISDIR(st.st_mode)) {
            if (!o->recursive) {
                rv = FB_ERR_USAGE;
                fbcp_report_error(NULL, src, rv, "is a directory (use -r)");
            } else {
                char *real = realpath(src, NULL);
                char *name = real != NULL ? fbcp_basename(real) : NULL;
                /* "/" has no name: its contents go straight into DEST */
                char *remote = name != NULL
                                   ? (name[0] != '\0' ? fbcp_path_join(url->path, name) : strdup(url->path))
                                   : NULL;
                if (remote == NULL) {
                    rv = real == NULL ? FB_ERR_LOCAL_IO : FB_ERR_NOMEM;
                    fbcp_report_error(NULL, src, rv, real == NULL ? strerror(errno) : NULL);
                } else {
                    rv = fbcp_tree_add_dir(t, url, src, remote);
                    if (rv != FB_OK)
                        fbcp_report_error(NULL, src, rv, NULL);
                }
                free(real);
                free(name);
                free(remote);
            }
        } else if (!S_ISREG(st.st_mode)) {
            rv = FB_ERR_LOCAL_IO;
            fbcp_report_error(NULL, src, rv, "not a regular file");
        } else {
            char *name = fbcp_basename(src);
            char *remote =
                dest_is_dir ? (name != NULL ? fbcp_path_join(url->path, name) : NULL) : strdup(url->path);
            rv = remote != NULL ? fbcp_tree_add_file(t, url, src, remote, (uint64_t)st.st_size, !dest_is_dir)
                                : FB_ERR_NOMEM;
            if (rv != FB_OK)
                fbcp_report_error(NULL, src, rv, NULL);
            free(name);
            free(remote);
        }
        if (rv != FB_OK && fbcp_err_stops_run(rv))
            return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- download planning */

/* Queues every source of a download into DEST in T (asking the server which are directories). */
static int fbcp_plan_download(fbcp_tree *t, fbcp_ctx *c, fbcp_url *urls, int nsrc, const char *dest)
{
    struct stat st;
    int dest_is_dir = stat(dest, &st) == 0 && S_ISDIR(st.st_mode);
    size_t dl = strlen(dest);
    int trailing = dl > 0 && dest[dl - 1] == '/';

    if (nsrc > 1 && !dest_is_dir) {
        fbcp_report_error(NULL, dest, FB_ERR_USAGE, "several sources need an existing directory as DEST");
        return 1;
    }
    for (int i = 0; i < nsrc && !fbcp_interrupted; i++) {
        const fbcp_url *u = &urls[i];
        char *name = fbcp_basename(u->path);
        char detail[FBCP_DETAIL_LEN] = "";
        int isdir = 0;
        fb_err rv = FB_OK;

        if (name == NULL) {
            fbcp_report_error(NULL, dest, FB_ERR_NOMEM, NULL);
            return 1;
        }
        if (c->opts->recursive || u->trailing_slash) {
            rv = fbcp_remote_stat(c, u, u->path, &isdir, NULL, detail, sizeof(detail));
            if (rv != FB_OK)
                fbcp_report_error(NULL, u->path[0] ? u->path : "/", rv, detail);
        }
        if (rv == FB_OK && isdir) {
            if (!c->opts->recursive) {
                rv = FB_ERR_USAGE;
                snprintf(detail, sizeof(detail), "%s is a remote directory (use -r)",
                         u->path[0] ? u->path : "/");
                fbcp_report_error(NULL, u->path[0] ? u->path : "/", rv, detail);
            } else {
                char *target = dest_is_dir && name[0] != '\0' ? fbcp_path_join(dest, name) : strdup(dest);
                rv = target != NULL ? fbcp_tree_add_dir(t, u, target, u->path) : FB_ERR_NOMEM;
                free(target);
            }
        } else if (rv == FB_OK) {
            char *target = NULL;
            if (name[0] == '\0') {
                rv = FB_ERR_USAGE;
                fbcp_report_error(NULL, "/", rv, "the URL names no file");
            } else {
                if (trailing && !dest_is_dir) {
                    if (mkdir(dest, 0777) == 0 || errno == EEXIST)
                        dest_is_dir = 1;
                }
                target = dest_is_dir || trailing ? fbcp_path_join(dest, name) : strdup(dest);
                rv = target != NULL ? fbcp_tree_add_file(t, u, target, u->path, 0, 0) : FB_ERR_NOMEM;
            }
            free(target);
        }
        free(name);
        if (rv != FB_OK && fbcp_err_stops_run(rv))
            return 1;
    }
    return 0;
}

/* Plans the run, then runs it. A download's plan needs the server (which sources are
 * directories): C is the main thread's connection for that. */
static void fbcp_run(fbcp_ctx *c, fbcp_url *urls, int nsrc, char **sources, const char *dest, int upload)
{
    fbcp_tree *t = NULL;
    fb_err rv = fbcp_tree_new(&t, c->opts, upload ? FBCP_UPLOAD : FBCP_DOWNLOAD);
    int stopped;

    if (rv != FB_OK) {
        fbcp_report_error(NULL, NULL, rv, NULL);
        return;
    }
    stopped = upload ? fbcp_plan_upload(t, c->opts, &urls[0], sources, nsrc)
                     : fbcp_plan_download(t, c, urls, nsrc, dest);
    if (!stopped && !fbcp_interrupted)
        fbcp_tree_run(t);
    fbcp_tree_free(t);
}

/* ---------------------------------------------------------------- main */

/* Overwrites the password of "scheme://user:password@host/..." in TEXT with '*' (for ps(1) and
 * for messages). */
static void fbcp_blank_url_password(char *text)
{
    char *p = strstr(text, "://"), *at, *slash, *colon;

    if (p == NULL)
        return;
    p += 3;
    slash = strchr(p, '/');
    at = strchr(p, '@');
    if (at == NULL || (slash != NULL && at > slash))
        return;
    colon = memchr(p, ':', (size_t)(at - p));
    if (colon != NULL)
        memset(colon + 1, '*', (size_t)(at - colon - 1));
}

int main(int argc, char **argv)
{
    fbcp_opts o;
    fbcp_url *urls = NULL;
    fbcp_ctx c = {0};
    char errbuf[FBCP_DETAIL_LEN] = "";
    int first = 0, exit_now = -1, nops, nsrc = 0, upload = 0;
    int status = 0;
    fb_err rv;
    struct sigaction sa;

    fbcp_opts_init(&o);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = fbcp_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    rv = fbcp_parse_args(&o, &first, &exit_now, argc, argv, errbuf, sizeof(errbuf));
    if (exit_now >= 0) {
        fbcp_opts_free(&o);
        return exit_now;
    }
    o.progress_bar = isatty(STDERR_FILENO) && !o.json && !o.quiet;
    fbcp_progress_init(&o);
    if (rv != FB_OK) {
        fbcp_report_error(NULL, NULL, rv, errbuf);
        fprintf(stderr, "Try 'fbcp --help'.\n");
        goto out;
    }
    nops = argc - first;
    nsrc = nops - 1;
    upload = fbcp_is_url(argv[argc - 1]);
    for (int i = 0; i < nsrc; i++) {
        if (fbcp_is_url(argv[first + i]) == upload) {
            rv = FB_ERR_USAGE;
            fbcp_report_error(NULL, NULL, rv,
                              upload ? "uploads take local SOURCEs and a URL as DEST"
                                     : "exactly one side must be a URL: SOURCE URLs and a local DEST, "
                                       "or local SOURCEs and a URL DEST");
            goto out;
        }
    }
    urls = calloc((size_t)(upload ? 1 : nsrc), sizeof(*urls));
    if (urls == NULL) {
        rv = FB_ERR_NOMEM;
        fbcp_report_error(NULL, NULL, rv, NULL);
        goto out;
    }
    for (int i = 0; i < (upload ? 1 : nsrc); i++) {
        const char *text = upload ? argv[argc - 1] : argv[first + i];
        rv = fbcp_url_parse(&urls[i], text, o.location, errbuf, sizeof(errbuf));
        fbcp_blank_url_password(upload ? argv[argc - 1] : argv[first + i]);
        if (rv != FB_OK) {
            char shown[256];
            fbcp_sanitize(shown, sizeof(shown), text);
            fbcp_report_error(NULL, shown, rv, errbuf);
            goto out;
        }
    }

    /* credentials: -u, else user info in the (first) URL, else .netrc */
    if (o.user == NULL && urls[0].user != NULL) {
        o.user = strdup(urls[0].user);
        o.password = urls[0].password != NULL ? strdup(urls[0].password) : NULL;
    }
    if (o.user != NULL && o.password == NULL && !o.netrc) {
        rv = fbcp_ask_password(&o.password, o.user, urls[0].host);
        if (rv != FB_OK) {
            fbcp_report_error(NULL, NULL, rv, "no password given and no terminal to ask for one");
            goto out;
        }
    }

    rv = fbcp_http_global_init();
    if (rv == FB_OK)
        rv = fbcp_http_new(&c.http, &o);
    if (rv == FB_OK)
        rv = fbcp_transport_http_new(&c.transport, c.http);
    if (rv == FB_OK && o.fallback != FBCP_FALLBACK_FORCE)
        rv = fbcp_transport_udp_new(&c.udp, &o);
    if (rv != FB_OK) {
        fbcp_report_error(NULL, NULL, rv, "cannot set up libcurl");
        goto out;
    }
    c.opts = &o;
    fbcp_run(&c, urls, nsrc, argv + first, argv[argc - 1], upload);

out:
    if (fbcp_interrupted) {
        fprintf(stderr, "\nfbcp: interrupted%s\n", o.resume ? "; run the same command again to resume" : "");
        status = FBCP_EXIT_INTERRUPTED;
    } else {
        status = fb_err_exit_code(fbcp_first_error());
    }
    fbcp_event_summary();
    if (c.transport != NULL)
        c.transport->ops->destroy(c.transport);
    if (c.udp != NULL)
        c.udp->ops->destroy(c.udp);
    fbcp_http_free(c.http);
    if (urls != NULL) {
        for (int i = 0; i < (upload ? 1 : nsrc); i++)
            fbcp_url_free(&urls[i]);
        free(urls);
    }
    fbcp_opts_free(&o);
    fbcp_http_global_cleanup();
    return status;
}
