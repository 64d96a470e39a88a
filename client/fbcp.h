/* fbcp: the command-line transfer client. This header ties its parts together:
 *
 *   fbcp.c           command line, planning (which local file goes to which remote path), main()
 *   fbcp_util.c      pure helpers: URLs, range lists, number parsing, the download sidecar
 *   fbcp_http.c      libcurl plumbing: the control API (sessions, commit, listings) and the
 *                    HTTP(S) data transport (parallel ranged PUT/GET on N connections)
 *   fbcp_upload.c    one upload: session, missing ranges, hash, commit
 *   fbcp_download.c  one download: HEAD, partial file + sidecar, ranged GETs, rename into place
 *   fbcp_progress.c  messages on stderr, the progress bar and the --json event stream
 *
 * The control API is always HTTP(S). The data path goes through fbcp_transport so that the UDP
 * transport (a later issue) can slot in beside the HTTP one: upload/download hand a transport
 * the ranges still to move and the transport reports progress through the fbcp_xfer hooks. */
#ifndef FBCP_H
#define FBCP_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "fb_err.h"
#include "fb_range.h"
#include "fb_util.h"

#define FBCP_DEFAULT_CONNECTIONS 4
#define FBCP_MAX_CONNECTIONS 64
#define FBCP_DEFAULT_RETRIES 5
#define FBCP_MAX_RETRIES 1000
#define FBCP_DEFAULT_TIMEOUT 30                       /* seconds without progress */
#define FBCP_DEFAULT_REQUEST_SIZE (16u * 1024 * 1024) /* bytes per PUT/GET range request */
#define FBCP_DOWNLOAD_CHUNK (1u * 1024 * 1024)        /* chunk size of the download sidecar */
#define FBCP_CHECKPOINT_EVERY (64ull * 1024 * 1024)   /* bytes between download checkpoints */
#define FBCP_MAX_DEPTH 64                             /* -r recursion depth limit */
#define FBCP_MAX_JSON (1u * 1024 * 1024)              /* largest control answer accepted */
#define FBCP_MAX_LISTING (64u * 1024 * 1024)          /* largest directory listing accepted */
#define FBCP_EXIT_INTERRUPTED 130                     /* SIGINT/SIGTERM: 128 + SIGINT */

typedef enum fbcp_overwrite {
    FBCP_OVERWRITE_NEVER,
    FBCP_OVERWRITE_ALWAYS,
    FBCP_OVERWRITE_IF_DIFFERENT,
} fbcp_overwrite;

typedef enum fbcp_fallback {
    FBCP_FALLBACK_AUTO,  /* UDP first, HTTP(S) when UDP is unavailable (today: HTTP(S) only) */
    FBCP_FALLBACK_FORCE, /* HTTP(S) only */
    FBCP_FALLBACK_NEVER, /* UDP only: fails until the UDP transport exists */
} fbcp_fallback;

typedef enum fbcp_policy {
    FBCP_POLICY_FAIR,
    FBCP_POLICY_FIXED,
    FBCP_POLICY_HIGH,
    FBCP_POLICY_LOW,
} fbcp_policy;

typedef enum fbcp_direction {
    FBCP_UPLOAD,
    FBCP_DOWNLOAD,
} fbcp_direction;

/* Everything the command line says. Strings are owned by the struct (fbcp_opts_free). */
typedef struct fbcp_opts {
    int recursive;
    int connections;
    fbcp_overwrite overwrite;
    int resume;
    char *user;     /* NULL: none given (.netrc may supply one) */
    char *password; /* wiped with OPENSSL_cleanse on free */
    int netrc;      /* --netrc given: .netrc is read even with -u */
    char *netrc_file;
    char *cacert;
    int insecure;
    int json;
    int quiet;
    int verbose;
    long timeout_s; /* low-speed limit: a request moving nothing this long is aborted */
    int retries;
    fbcp_fallback fallback;
    uint64_t target_rate; /* bits/s, 0 = unset; for the UDP transport */
    uint64_t min_rate;    /* bits/s, 0 = unset */
    fbcp_policy policy;
    uint64_t limit_rate;   /* bytes/s over all connections, 0 = unlimited */
    uint64_t request_size; /* bytes per ranged request */
    char *location;        /* --location, NULL: first path segment */
    int progress_bar;      /* derived: stderr is a terminal, not --json, not -q */
} fbcp_opts;

void fbcp_opts_init(fbcp_opts *o);
void fbcp_opts_free(fbcp_opts *o);

/* A remote URL split into the module's base and the path beneath it. */
typedef struct fbcp_url {
    char *base;         /* "https://host:8443/fallback": scheme, authority, location; no trailing "/" */
    char *origin;       /* "https://host:8443" (for messages) */
    char *host;         /* "host" */
    long port;          /* explicit or the scheme's default */
    char *path;         /* decoded remote path relative to the location, no leading or trailing "/" */
    int trailing_slash; /* the URL ended with "/" (names a directory) */
    char *user;         /* user info in the URL, if any (decoded) */
    char *password;
} fbcp_url;

/* Parses TEXT ("http(s)://host[:port]/location/path"). LOCATION (NULL for the first path segment)
 * must be a prefix of the URL's path at a segment boundary. FB_ERR_USAGE with a reason in
 * ERRBUF otherwise. */
fb_err fbcp_url_parse(fbcp_url *u, const char *text, const char *location, char *errbuf, size_t errlen);
void fbcp_url_free(fbcp_url *u);
/* True if ARG looks like an http:// or https:// URL. */
int fbcp_is_url(const char *arg);
/* Percent-encodes each segment of PATH (keeping "/") into a new string (NULL on ENOMEM). */
char *fbcp_path_escape(const char *path);
/* Joins DIR and NAME with one "/" (either may be empty); new string or NULL. */
char *fbcp_path_join(const char *dir, const char *name);
/* Last component of PATH ignoring trailing "/" ("" for "" or "/"); new string or NULL. */
char *fbcp_basename(const char *path);
/* A name from a server listing is safe to use as one local path component. */
int fbcp_name_is_safe(const char *name);

/* A sorted list of disjoint, non-adjacent half-open byte ranges. */
typedef struct fbcp_ranges {
    fb_range *v;
    size_t n;
    size_t cap;
} fbcp_ranges;

void fbcp_ranges_init(fbcp_ranges *r);
void fbcp_ranges_free(fbcp_ranges *r);
void fbcp_ranges_clear(fbcp_ranges *r);
/* Adds [off, off+len), merging with overlapping or adjacent ranges. */
fb_err fbcp_ranges_add(fbcp_ranges *r, uint64_t off, uint64_t len);
uint64_t fbcp_ranges_total(const fbcp_ranges *r);
/* OUT = the parts of R that lie in [off, off+len). */
fb_err fbcp_ranges_intersect(fbcp_ranges *out, const fbcp_ranges *r, uint64_t off, uint64_t len);
/* OUT = [0, size) minus R. */
fb_err fbcp_ranges_complement(fbcp_ranges *out, const fbcp_ranges *r, uint64_t size);
fb_err fbcp_ranges_copy(fbcp_ranges *out, const fbcp_ranges *r);
/* Splits R into requests of at most MAX_LEN bytes (MAX_LEN rounded down to a multiple of
 * CHUNK, at least one chunk) whose starts stay chunk-aligned when R's are. */
fb_err fbcp_ranges_split(fbcp_ranges *out, const fbcp_ranges *r, uint64_t max_len, uint32_t chunk);
/* Reads a JSON array of [offset, length] pairs, each checked against SIZE. */
struct json_t;
fb_err fbcp_ranges_from_json(fbcp_ranges *out, struct json_t *arr, uint64_t size);
struct json_t *fbcp_ranges_to_json(const fbcp_ranges *r);

/* Parses a byte count or rate with an optional suffix. BINARY: k/K=1024, m/M=1024^2, g/G=1024^3
 * (for --limit-rate and --request-size); else decimal k/M/G (bits per second for rates). */
fb_err fbcp_parse_size(uint64_t *out, const char *text, int binary);
/* Parses an integer in [min, max]. */
fb_err fbcp_parse_long(long *out, const char *text, long min, long max);
/* Parses "Content-Range: bytes FIRST-LAST/SIZE" values as answered in a 206 (strict). */
fb_err fbcp_parse_content_range(uint64_t *first, uint64_t *last, uint64_t *complete, const char *value);

/* The download sidecar ".<name>.fbpart.json": which chunks of the partial file are on disk. */
#define FBCP_SIDECAR_VERSION 1
typedef struct fbcp_sidecar {
    char *url;
    uint64_t size;
    char *etag; /* "" when the server gave none */
    uint32_t chunk_size;
    fbcp_ranges done;
} fbcp_sidecar;

void fbcp_sidecar_init(fbcp_sidecar *s);
void fbcp_sidecar_free(fbcp_sidecar *s);
/* Atomic write: PATH.tmp, fsync, rename over PATH. */
fb_err fbcp_sidecar_write(const char *path, const fbcp_sidecar *s);
/* FB_ERR_NOT_FOUND if absent; FB_ERR_LOCAL_IO if unreadable or damaged (callers start over). */
fb_err fbcp_sidecar_read(fbcp_sidecar *s, const char *path);

/* ---- progress, messages, events (fbcp_progress.c) ---- */

/* Per-file state shared by upload/download and the transports. */
typedef struct fbcp_xfer fbcp_xfer;

struct fbcp_xfer {
    fbcp_direction direction;
    const fbcp_opts *opts;
    const char *local;   /* local path (source of an upload, target of a download) */
    const char *remote;  /* remote path relative to the location */
    const fbcp_url *url; /* the base URL (host, location) */
    int fd;              /* the local file (upload: source, download: partial file) */
    uint64_t size;
    uint32_t chunk_size;
    char *session_id;    /* upload: current session id */
    char *data_url;      /* upload: .../sessions/{id}/data; download: .../files/{path} */
    char *if_range;      /* download: the strong ETag for If-Range, may be NULL */
    char *etag;          /* download: the ETag's opaque tag (no "W/"), NULL if none */
    char *last_modified; /* download: Last-Modified as the server wrote it, NULL if none */
    uint64_t bytes;      /* payload bytes moved this run (all transports, retries included) */
    uint64_t bytes_http;
    uint64_t bytes_skipped; /* already present when this run started */
    uint64_t bytes_done;    /* bytes confirmed complete (for the progress estimate) */
    uint64_t start_ns;
    uint64_t last_progress_ns;
    uint64_t rate_mark_ns;
    uint64_t rate_mark_bytes;
    double rate_bps;
    int resumed;
    const char *transport_name;
    /* Upload: ask the server again which of [off, off+len) is still missing (GET sessions/{id},
     * re-POST on 404). Download: NULL (the client itself knows what it has). */
    fb_err (*refresh)(fbcp_xfer *x, fbcp_ranges *out, uint64_t off, uint64_t len, char *detail,
                      size_t detlen);
    /* Called when [off, off+len) is complete at the receiver (download: written locally). */
    fb_err (*range_done)(fbcp_xfer *x, uint64_t off, uint64_t len);
    void *ctx; /* owner's state for the hooks */
};

/* Detail text of the first error of a file: fbcp: <file>: <message> (<detail>). */
#define FBCP_DETAIL_LEN 512

void fbcp_progress_init(const fbcp_opts *o);
/* fbcp: <file>: <message>[ (<detail>)] on stderr and an "error" event; records the first error
 * for the exit code and summary. X (may be NULL) supplies the event's byte counts. */
void fbcp_report_error(const fbcp_xfer *x, const char *file, fb_err e, const char *detail);
/* A warning line on stderr (not an error, no effect on the exit code). */
void fbcp_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* -v trace line on stderr. */
void fbcp_trace(const fbcp_opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void fbcp_event_start(fbcp_xfer *x);
void fbcp_event_progress(fbcp_xfer *x, int force);
void fbcp_event_skip(fbcp_xfer *x, const char *reason);
void fbcp_event_done(fbcp_xfer *x, const char *sha256_hex);
void fbcp_event_summary(void);
/* The first error reported (FB_OK if none). */
fb_err fbcp_first_error(void);

/* ---- HTTP client (fbcp_http.c) ---- */

typedef struct fbcp_http fbcp_http;

fb_err fbcp_http_global_init(void);
void fbcp_http_global_cleanup(void);
fb_err fbcp_http_new(fbcp_http **ph, const fbcp_opts *o);
void fbcp_http_free(fbcp_http *h);

/* One control request. BODY (may be NULL) is sent as application/json. *STATUS gets the HTTP
 * status, *ANSWER the parsed JSON answer (NULL if the body was not JSON or empty). Transport
 * errors are retried per --retries; HTTP errors are returned as status with FB_OK. */
typedef struct fbcp_http_answer {
    long status;
    struct json_t *json;
    char *content_type;
    char *etag;
    char *last_modified;
    char *content_range;
    int64_t filetime;  /* Last-Modified as time_t, -1 if absent */
    int64_t length;    /* Content-Length, -1 if absent */
    int accept_ranges; /* "Accept-Ranges: bytes" was present */
} fbcp_http_answer;

void fbcp_http_answer_free(fbcp_http_answer *a);
fb_err fbcp_http_request(fbcp_http *h, fbcp_http_answer *a, const char *method, const char *url,
                         struct json_t *body, size_t max_body, int retries, char *detail, size_t detlen);
#define FBCP_RETRIES_DEFAULT (-1) /* fbcp_http_request: use --retries */
/* The same with one extra request header line HEADER ("Range: bytes=0-0"). */
fb_err fbcp_http_request_hdr(fbcp_http *h, fbcp_http_answer *a, const char *method, const char *url,
                             const char *header, struct json_t *body, size_t max_body, int retries,
                             char *detail, size_t detlen);
/* Errors worth retrying after a backoff (the connection, not the request, failed). */
int fbcp_err_retryable(fb_err e);
/* Copies at most LEN-1 bytes of untrusted SRC into DST, control characters replaced by '?'. */
void fbcp_sanitize(char *dst, size_t len, const char *src);
/* Maps a non-2xx answer to an error code and detail (problem+json "code" and "detail"). */
fb_err fbcp_http_problem(const fbcp_http_answer *a, char *detail, size_t detlen);

/* ---- transports ---- */

typedef struct fbcp_transport fbcp_transport;

typedef struct fbcp_transport_ops {
    const char *name; /* "http" (the --json "transport" field) */
    /* Moves every range of TODO (chunk-aligned, as the server listed them) for X: upload reads
     * X->fd and sends to the session, download receives into X->fd. Calls X->range_done and
     * progress as data completes; retries per --retries. Returns the first fatal error. */
    fb_err (*upload)(fbcp_transport *t, fbcp_xfer *x, const fbcp_ranges *todo, char *detail, size_t detlen);
    fb_err (*download)(fbcp_transport *t, fbcp_xfer *x, const fbcp_ranges *todo, char *detail, size_t detlen);
    void (*destroy)(fbcp_transport *t);
} fbcp_transport_ops;

struct fbcp_transport {
    const fbcp_transport_ops *ops;
    void *impl;
};

/* The HTTP(S) data transport, sharing H's connections and settings. */
fb_err fbcp_transport_http_new(fbcp_transport **pt, fbcp_http *h);

/* Set by SIGINT/SIGTERM; every loop checks it. */
extern volatile sig_atomic_t fbcp_interrupted;
/* Sleeps up to MS milliseconds, returning early on interrupt. */
void fbcp_sleep_ms(long ms);
/* Backoff before retry ATTEMPT (1-based): 0.5 s doubling, at most 30 s. */
long fbcp_backoff_ms(int attempt);

/* ---- transfers ---- */

/* Errors after which the other files are not tried (authentication, TLS, server unreachable,
 * out of memory, interrupted). */
int fbcp_err_stops_run(fb_err e);

typedef struct fbcp_ctx {
    const fbcp_opts *opts;
    fbcp_http *http;
    fbcp_transport *transport;
} fbcp_ctx;

/* Uploads LOCAL to REMOTE (relative to URL's location). Reports its own errors. */
fb_err fbcp_upload_file(fbcp_ctx *c, const fbcp_url *url, const char *local, const char *remote);
/* Downloads REMOTE to LOCAL (the final target path). Reports its own errors. */
fb_err fbcp_download_file(fbcp_ctx *c, const fbcp_url *url, const char *remote, const char *local);
/* Downloads the remote directory REMOTE into the local directory LOCAL (created if needed),
 * recursively. Reports its own errors; returns the first. */
fb_err fbcp_download_tree(fbcp_ctx *c, const fbcp_url *url, const char *remote, const char *local, int depth);
/* Asks whether REMOTE is a directory: *PISDIR, and, if PLISTING is not NULL, the listing in
 * *PLISTING when it is (caller json_decref). FB_ERR_NOT_FOUND if it does not exist. */
fb_err fbcp_remote_stat(fbcp_ctx *c, const fbcp_url *url, const char *remote, int *pisdir,
                        struct json_t **plisting, char *detail, size_t detlen);

#endif
