/* fbcp: the command-line transfer client. This header ties its parts together:
 *
 *   fbcp.c           command line, planning (which local file goes to which remote path), main()
 *   fbcp_tree.c      the run's job queue and its workers: several files (and listings) at once
 *   fbcp_util.c      pure helpers: URLs, remote paths, number parsing
 *   fbcp_ranges.c    range lists (pure)
 *   fbcp_sidecar.c   the download sidecar (read, written atomically)
 *   fbcp_http.c      libcurl plumbing: shared settings, error mapping, the control API
 *                    (sessions, commit, listings)
 *   fbcp_http_data.c the HTTP(S) data transport (parallel ranged PUT/GET on N connections)
 *   fbcp_upload.c    one upload: session, missing ranges, hash, commit
 *   fbcp_upload_hash.c  its SHA-256 while the data goes out (sender buffers, a thread)
 *   fbcp_download.c  one download: HEAD, partial file + sidecar, ranged GETs, rename into place
 *   fbcp_download_hash.c  its running SHA-256, resume check and checkpoints, on threads
 *   fbcp_pack_down.c download packs: a tree's small files gathered, fetched as one session, landed
 *   fbcp_progress.c  messages on stderr, the progress bar and the --json event stream
 *   fbcp_udp.c       the UDP association (docs/PROTOCOL.md): socket with batched, GSO/GRO I/O,
 *                    HELLO/HELLO_ACK, receiving, CLOSE, and the probe that finds UDP again
 *                    while HTTP(S) carries the data (internals shared in fbcp_udp.h)
 *   fbcp_udp_leg.c   a UDP leg: the fb_xfer sender (upload) or receiver (download), pacing
 *   fbcp_switch.c    the transport choice in virtual time (pure: no I/O, no clock)
 *   fbcp_move.c      moves a file's missing ranges, on UDP or HTTP(S) as fbcp_switch decides
 *
 * The control API is always HTTP(S). The data path goes through fbcp_transport: upload/download
 * hand fbcp_move the ranges still to move; it runs the UDP or the HTTP transport on them, and
 * the transports report progress through the fbcp_xfer hooks. */
#ifndef FBCP_H
#define FBCP_H

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <curl/curl.h>
#include <jansson.h>

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
#define FBCP_MAX_RETRY_AFTER_S 60  /* longest wait a Retry-After may ask for */
#define FBCP_MAX_BUSY_WAIT_S 900   /* most one request waits in total for a busy server */

typedef enum fbcp_overwrite {
    FBCP_OVERWRITE_NEVER,
    FBCP_OVERWRITE_ALWAYS,
    FBCP_OVERWRITE_IF_DIFFERENT,
    FBCP_OVERWRITE_OLDER,              /* replace only a target older than the source */
    FBCP_OVERWRITE_IF_DIFFERENT_OLDER, /* replace only a target that differs and is older */
} fbcp_overwrite;
/* The --overwrite names, indexed by fbcp_overwrite (also the API's "overwrite" values). */
extern const char *const fbcp_overwrite_names[5];

#define FBCP_DEFAULT_TRANSFERS 16 /* --transfers: files in flight at once */
#define FBCP_MAX_TRANSFERS 128
#define FBCP_BIG_FILE (64ull * 1024 * 1024) /* files this big move one at a time */
#define FBCP_HASH_FIRST_MAX (1024u * 1024u) /* files up to this size are hashed before sending */
/* Packs (fbcp_pack_up.c): files up to FBCP_PACK_FILE_MAX go in packs of at most FBCP_PACK_FILES
 * files, FBCP_PACK_BYTES bytes and FBCP_PACK_JSON bytes of request (under the server's default
 * max_json_body of 64 KiB). */
#define FBCP_PACK_FILE_MAX (1024u * 1024u)
#define FBCP_PACK_FILES 1000
#define FBCP_PACK_BYTES (16u * 1024u * 1024u)
#define FBCP_PACK_JSON 60000
/* Packs moving at once, by their bytes: many small packs overlap their round trips, while a few
 * big ones fill the link (more would only compete: over UDP each has its own rate control; 16 of
 * 16 MiB resent up to a fifth of their bytes on loopback, 4 none). */
#define FBCP_PACK_BYTES_AT_ONCE (64ull * 1024 * 1024)
/* Under --fallback=auto, files up to this size move over the HTTP(S) connection already open
 * instead of UDP: a UDP association (socket, HELLO, feedback, CLOSE) costs more than the data of
 * a few datagrams (docs/fbcp.md, "Small files"). */
#define FBCP_UDP_MIN_SIZE (64u * 1024u)

typedef enum fbcp_fallback {
    FBCP_FALLBACK_AUTO,  /* UDP first, HTTP(S) when UDP is unavailable or lost, back to UDP later */
    FBCP_FALLBACK_FORCE, /* HTTP(S) only */
    FBCP_FALLBACK_NEVER, /* UDP only: "Connection lost" when UDP cannot be used */
} fbcp_fallback;

#define FBCP_DEFAULT_UDP_TIMEOUT_MS 2000 /* --udp-timeout: no HELLO_ACK this long at start */
#define FBCP_DEFAULT_UDP_IDLE_MS 3000    /* --udp-idle: nothing authenticated this long */
#define FBCP_UDP_PROBE_INTERVAL_MS 1000  /* HELLO while HTTP(S) carries the data */
#define FBCP_MAX_RETURNS_TO_UDP 8        /* moves back to UDP per file (bounded flapping) */

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
    unsigned cipher;         /* --cipher: one FB_CIPHER_* bit (fb_config.h) */
    uint32_t udp_timeout_ms; /* --udp-timeout */
    uint32_t udp_idle_ms;    /* --udp-idle */
    uint32_t udp_datagram;   /* --udp-datagram: largest datagram fbcp asks for */
    uint64_t limit_rate;     /* bytes/s over all connections, 0 = unlimited */
    uint64_t request_size;   /* bytes per ranged request */
    char *location;          /* --location, NULL: first path segment */
    int transfers;           /* --transfers: files in flight at once */
    int preserve_times;      /* keep modification times (default; --no-preserve-times) */
    int packs;               /* -r: small files in packs (default; --no-packs) */
    int progress_bar;        /* derived: stderr is a terminal, not --json, not -q */
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
/* 1 if [off, off+len) lies wholly inside one range of R (binary search); 0 otherwise. */
int fbcp_ranges_covers(const fbcp_ranges *r, uint64_t off, uint64_t len);
/* Splits R into requests of at most MAX_LEN bytes (MAX_LEN rounded down to a multiple of
 * CHUNK, at least one chunk) whose starts stay chunk-aligned when R's are. */
fb_err fbcp_ranges_split(fbcp_ranges *out, const fbcp_ranges *r, uint64_t max_len, uint32_t chunk);
/* How much of a queued request of LEN bytes a free connection takes now, when UNASSIGNED bytes
 * (LEN included) wait in the queue for NSLOTS connections: a share of what is left
 * (UNASSIGNED / NSLOTS, in whole chunks, at least FBCP_TAIL_REQUEST_MIN rounded down to a chunk,
 * at least one chunk, at most LEN). Requests shrink as the transfer nears its end, so the connections finish together
 * instead of one of them carrying a last full-size request alone. */
#define FBCP_TAIL_REQUEST_MIN (4u * 1024 * 1024)
uint64_t fbcp_request_share(uint64_t len, uint64_t unassigned, int nslots, uint32_t chunk);
/* Reads a JSON array of [offset, length] pairs, each checked against SIZE. */
struct json_t;
fb_err fbcp_ranges_from_json(fbcp_ranges *out, struct json_t *arr, uint64_t size);
struct json_t *fbcp_ranges_to_json(const fbcp_ranges *r);

/* Parses a byte count or rate with an optional suffix. BINARY: k/K=1024, m/M=1024^2, g/G=1024^3
 * (for --limit-rate and --request-size); else decimal k/M/G (bits per second for rates). */
fb_err fbcp_parse_size(uint64_t *out, const char *text, int binary);
/* Parses an integer in [min, max]. */
fb_err fbcp_parse_long(long *out, const char *text, long min, long max);
/* Parses decimal seconds ("2", "0.5", at most 3 decimals) into milliseconds in [min, max]. */
fb_err fbcp_parse_seconds_ms(uint32_t *out, const char *text, uint32_t min_ms, uint32_t max_ms);
/* Parses "Content-Range: bytes FIRST-LAST/SIZE" values as answered in a 206 (strict). */
fb_err fbcp_parse_content_range(uint64_t *first, uint64_t *last, uint64_t *complete, const char *value);

/* The download sidecar ".<name>.fbpart.json": which chunks of the partial file are on disk, and
 * the SHA-256 of chunks as they were written, for chunks [0, NHASHED) (all zero: not known; a
 * resume keeps a claimed chunk only if it still has its digest). Version 2; a version-1 sidecar
 * is refused (start over). */
#define FBCP_SIDECAR_VERSION 2
typedef struct fbcp_sidecar {
    char *url;
    uint64_t size;
    char *etag; /* "" when the server gave none */
    uint32_t chunk_size;
    fbcp_ranges done;
    uint64_t nhashed;         /* CHUNK_SHA covers chunks [0, nhashed) (all-zero entries: unknown) */
    unsigned char *chunk_sha; /* nhashed * 32 bytes (malloc), NULL when nhashed is 0 */
} fbcp_sidecar;

void fbcp_sidecar_init(fbcp_sidecar *s);
void fbcp_sidecar_free(fbcp_sidecar *s);
/* Atomic write: PATH.tmp, fsync, rename over PATH. */
fb_err fbcp_sidecar_write(const char *path, const fbcp_sidecar *s);
/* FB_ERR_NOT_FOUND if absent; FB_ERR_LOCAL_IO if unreadable or damaged, of another version, or
 * with more chunk digests than the file has chunks (callers start over). */
fb_err fbcp_sidecar_read(fbcp_sidecar *s, const char *path);
/* Copies the first N chunk digests SHA (N * 32 bytes) into S, replacing what it had. */
fb_err fbcp_sidecar_set_hashes(fbcp_sidecar *s, const unsigned char *sha, uint64_t n);

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
    uint64_t bytes_udp;      /* payload bytes over UDP, each counted once per UDP leg */
    int udp_end_confirmed;   /* download: the UDP leg that completed the file ended with udpd's
                              * CLOSE(unchanged): the file is as the session began, and udpd
                              * ended the session (no HEAD, no DELETE needed) */
    uint64_t bytes_udp_retx; /* payload bytes sent (upload) or received (download) again over UDP */
    uint64_t bytes_skipped;  /* already present when this run started */
    uint64_t bytes_done;     /* bytes confirmed complete (for the progress estimate) */
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
    /* What is still to move (upload: GET sessions/{id}; download: the sidecar's complement);
     * used by fbcp_move after a change of transport. */
    fb_err (*missing)(fbcp_xfer *x, fbcp_ranges *out, char *detail, size_t detlen);
    void *ctx; /* owner's state for the hooks */
    /* Upload: the file's SHA-256 (hex) when known before the data moves. A request that carries
     * the whole file then asks the server to commit it too (Fallback-Commit), and COMMITTED is
     * set when the answer says it did. */
    const char *commit_sha;
    int committed;

    /* The session as the UDP transport needs it (upload: created by POST sessions; download:
     * POST sessions with direction download). SESSION_GEN changes whenever the id and key do
     * (a session the server lost is created again). */
    uint8_t key[32]; /* wiped when the file is done */
    int have_key;
    unsigned session_gen;
    long udp_port;          /* from the session answer; 0 = no UDP endpoint */
    struct fbcp_udp *udp;   /* the file's UDP state (fbcp_udp.c), NULL without UDP */
    struct fbcp_switch *sw; /* the file's transport choice (fbcp_switch.c) */
    /* Called by the HTTP transport's loop at least every 200 ms while it runs: non-zero means
     * "stop starting requests, let the running ones finish, and return FB_OK with YIELDED set"
     * (UDP answers again). POLL_FD (-1: none) wakes the loop when readable. */
    int (*yield_check)(fbcp_xfer *x);
    int poll_fd;
    int yielded;
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
/* A change of transport: {"event":"transport","from":FROM,"to":TO,"reason":REASON}; also sets
 * X->transport_name and tells the progress bar. */
void fbcp_event_transport(fbcp_xfer *x, const char *from, const char *to, const char *reason);
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
    char *repr_digest; /* Repr-Digest (RFC 9530), NULL if absent */
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

/* ---- libcurl internals shared by fbcp_http.c and fbcp_http_data.c ---- */

/* The settings every request shares, and the easy handle of control requests. */
struct fbcp_http {
    const fbcp_opts *o;
    CURLSH *share;
    CURL *api;
    char errbuf[CURL_ERROR_SIZE];
};

/* A curl answer body collected in memory, at most MAX bytes (OVERFLOW set beyond). */
typedef struct fbcp_buf {
    char *data;
    size_t len;
    size_t max;
    int overflow;
} fbcp_buf;

/* CURLOPT_WRITEFUNCTION into an fbcp_buf. */
size_t fbcp_buf_write(char *ptr, size_t size, size_t nmemb, void *ud);
/* The settings every handle shares. */
fb_err fbcp_http_setup(fbcp_http *h, CURL *e, char *errbuf);
/* Maps a failed curl transfer to an error code and a detail line. */
fb_err fbcp_curl_error(CURL *easy, CURLcode c, const char *errbuf, char *detail, size_t detlen);
/* Transport failures worth another attempt (the server may come back). */
int fbcp_curl_retryable(CURLcode c);
/* HTTP statuses worth another attempt (408, 429, 500, 502, 503, 504). */
int fbcp_status_retryable(long status);
/* Maps STATUS and a problem+json DOC (may be NULL) to an error code and detail. */
fb_err fbcp_problem_from(long status, json_t *doc, char *detail, size_t detlen);

/* ---- transports ---- */

typedef struct fbcp_transport fbcp_transport;

typedef struct fbcp_transport_ops {
    const char *name; /* "http" or "udp" (the --json "transport" field) */
    /* Moves every range of TODO (chunk-aligned, as the server listed them) for X: upload reads
     * X->fd and sends to the session, download receives into X->fd. Calls X->range_done and
     * progress as data completes; retries per --retries. Returns the first fatal error.
     * HTTP: returns FB_OK early with X->yielded set when X->yield_check asks it to.
     * UDP: runs one UDP leg (X->udp, X->sw): FB_OK when everything arrived; when UDP cannot go
     * on (no answer, lost, refused, closed by udpd) an error with X->sw->reason set, after
     * which the caller may continue over HTTP(S); other errors (local file, memory) are fatal
     * with X->sw->reason unset. */
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
/* The UDP data transport (per-file state in X->udp). */
fb_err fbcp_transport_udp_new(fbcp_transport **pt, const fbcp_opts *o);

/* ---- the UDP side of one file (fbcp_udp.c) ---- */

typedef struct fbcp_udp fbcp_udp;

/* Resolves HOST (the URL's host) and PORT, opens a connected, non-blocking UDP socket with
 * large buffers (GSO/GRO where the kernel has them). FB_ERR_CONNECTION_LOST with DETAIL when
 * the name does not resolve or no socket can be made. */
fb_err fbcp_udp_new(fbcp_udp **pu, const fbcp_opts *o, const char *host, long port, char *detail,
                    size_t detlen);
/* Sends CLOSE if an association is open, wipes keys, closes the socket. NULL is allowed. */
void fbcp_udp_free(fbcp_udp *u);
int fbcp_udp_fd(const fbcp_udp *u);
/* 1 while an association is open (a HELLO was accepted and not closed since). */
int fbcp_udp_associated(const fbcp_udp *u);
/* X->yield_check while HTTP(S) carries the data: reads the socket, sends a HELLO (fresh nonce)
 * when X->sw says a probe is due, keeps an answered association alive with PROBEs. Returns 1
 * once a HELLO was accepted and X->sw says to move back to UDP. */
int fbcp_udp_probe(fbcp_xfer *x);

/* ---- the transport choice (fbcp_switch.c): pure, in virtual time (microseconds) ---- */

typedef enum fbcp_tr { FBCP_TR_HTTP = 0, FBCP_TR_UDP = 1 } fbcp_tr;

typedef enum fbcp_sw_reason {
    FBCP_SW_NONE = 0,
    FBCP_SW_NO_ANSWER,   /* no authenticated HELLO_ACK within --udp-timeout at the start of a leg */
    FBCP_SW_LOST,        /* nothing authenticated for --udp-idle during a leg */
    FBCP_SW_REFUSED,     /* udpd refused the HELLO (cipher, policy, permissions): no probing */
    FBCP_SW_CLOSED,      /* udpd closed the association with an error (e.g. its write failed) */
    FBCP_SW_UNAVAILABLE, /* no UDP endpoint at all (no port in the session, no socket) */
    FBCP_SW_ANSWERED,    /* a probe was answered: back to UDP */
} fbcp_sw_reason;

typedef enum fbcp_sw_verdict {
    FBCP_SW_STAY = 0, /* go on as now */
    FBCP_SW_FALLBACK, /* leave UDP for HTTP(S) */
    FBCP_SW_FAIL,     /* UDP cannot be used and --fallback=never: "Connection lost" */
    FBCP_SW_RETURN,   /* (on HTTP(S)) UDP answers again: move back */
} fbcp_sw_verdict;

typedef struct fbcp_switch {
    fbcp_fallback mode;
    uint64_t start_timeout_us, idle_timeout_us, probe_interval_us;
    unsigned max_returns;
    fbcp_tr current;
    uint64_t leg_start_us;  /* the current leg began */
    uint64_t last_heard_us; /* UDP: last authenticated datagram of this leg (0: none) */
    int answered;           /* UDP: this leg's HELLO was answered */
    uint64_t next_probe_us; /* HTTP: next HELLO (UINT64_MAX: no more probing) */
    unsigned returns;       /* moves back to UDP so far */
    unsigned switches;      /* changes of transport so far */
    int udp_disabled;       /* refused or unavailable: HTTP(S) for good */
    fbcp_sw_reason reason;  /* why the last change happened (or why UDP failed) */
} fbcp_switch;

/* Starts on UDP (auto, never) or HTTP(S) (force) at NOW. Timeouts in milliseconds. */
void fbcp_switch_init(fbcp_switch *s, fbcp_fallback mode, uint32_t start_timeout_ms, uint32_t idle_timeout_ms,
                      uint32_t probe_interval_ms, unsigned max_returns, uint64_t now_us);
/* UDP: an authenticated datagram arrived (HANDSHAKE: it was the HELLO_ACK of this leg). */
void fbcp_switch_udp_heard(fbcp_switch *s, uint64_t now_us, int handshake);
/* UDP: whether to go on, at NOW; sets the reason when not. */
fbcp_sw_verdict fbcp_switch_udp_check(fbcp_switch *s, uint64_t now_us);
/* UDP: when fbcp_switch_udp_check would next say something else than STAY. */
uint64_t fbcp_switch_udp_deadline(const fbcp_switch *s);
/* UDP failed for REASON (refused, closed, unavailable): FALLBACK, or FAIL under never. */
fbcp_sw_verdict fbcp_switch_udp_failed(fbcp_switch *s, fbcp_sw_reason reason);
/* The change to HTTP(S) happened at NOW: probing starts one interval later (unless disabled or
 * the returns are used up). */
void fbcp_switch_to_http(fbcp_switch *s, uint64_t now_us);
/* HTTP: 1 if a probe (new HELLO) is due at NOW; the next one is then scheduled. */
int fbcp_switch_probe_due(fbcp_switch *s, uint64_t now_us);
/* HTTP: a probe was answered (accepted HELLO_ACK): RETURN, or STAY when no more returns. */
fbcp_sw_verdict fbcp_switch_probe_answered(fbcp_switch *s);
/* HTTP: udpd refused the probe's HELLO: no more probing. */
void fbcp_switch_probe_refused(fbcp_switch *s);
/* The change back to UDP happened at NOW; the leg's HELLO was already answered. */
void fbcp_switch_to_udp(fbcp_switch *s, uint64_t now_us);
/* "no_answer", "lost", ... (the --json "reason"). */
const char *fbcp_switch_reason_name(fbcp_sw_reason r);
const char *fbcp_tr_name(fbcp_tr t);

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
    fbcp_transport *transport; /* HTTP(S) */
    fbcp_transport *udp;       /* UDP (NULL under --fallback=force) */
    /* The last UDP leg of this run got no answer at all: under auto the next file starts on
     * HTTP(S) and probes at once, instead of waiting --udp-timeout again. Cleared by an answer. */
    int udp_unanswered;
} fbcp_ctx;

/* fbcp_move.c: sets up X's transport choice (X->sw, X->udp) once its session is known: the
 * UDP endpoint is X->url's host and X->udp_port. Under --fallback=never a missing endpoint is
 * FB_ERR_CONNECTION_LOST. Sets X->transport_name for the start event. */
fb_err fbcp_move_setup(fbcp_ctx *c, fbcp_xfer *x, fbcp_switch *sw, char *detail, size_t detlen);
/* Moves TODO for X on the transport X->sw chooses, changing transport as it decides (the
 * "transport" events) and asking X->missing what is left after each change. */
fb_err fbcp_move(fbcp_ctx *c, fbcp_xfer *x, const fbcp_ranges *todo, char *detail, size_t detlen);
/* Frees X->udp and wipes X->key. */
void fbcp_move_cleanup(fbcp_xfer *x);

/* Uploads LOCAL to REMOTE (relative to URL's location). Reports its own errors. INTO_DIR: if
 * REMOTE turns out to be a directory, upload into it under LOCAL's name (cp's rule). */
fb_err fbcp_upload_file(fbcp_ctx *c, const fbcp_url *url, const char *local, const char *remote,
                        int into_dir);
/* A pack: many small files as one upload session (docs/HTTP-API.md, "Packs"). BUILD is called
 * once the server has said which files it wants (ANSWER: the POST sessions answer, with its
 * "pack" decisions): it gives an fd holding the pack's bytes (the caller's, left open), their
 * count and their SHA-256. fbcp_upload_pack creates the session with REQUEST (its POST body),
 * sends the data over UDP or HTTP(S) like any file and commits it. *PANSWER is the creation
 * answer (NULL if there was none), *PCOMMIT the commit's (the result of each file; NULL when
 * nothing was sent); both are the caller's to json_decref. COUNTS (may be NULL) receives the
 * pack's byte counters (bytes, bytes_udp, bytes_http, ...). LABEL names the pack in messages. */
typedef fb_err (*fbcp_pack_build_fn)(void *arg, json_t *answer, int *pfd, uint64_t *psize,
                                     char sha_hex[FB_SHA256_HEX_LEN + 1], char *detail, size_t detlen);
fb_err fbcp_upload_pack(fbcp_ctx *c, const fbcp_url *url, const char *label, const char *remote,
                        json_t *request, fbcp_pack_build_fn build, void *arg, json_t **panswer,
                        json_t **pcommit, fbcp_xfer *counts, char *detail, size_t detlen);
/* Uploads the files ITEMS (fbcp_pack_up.c) under the remote directory ROOT as packs of at most
 * FBCP_PACK_FILES files; each file reports its own outcome. Files the server cannot take as a
 * pack (an older server) are sent one by one. */
typedef struct fbcp_pack_item {
    char *local;   /* the local file */
    char *remote;  /* its remote path (relative to the location) */
    uint64_t size; /* as listed */
} fbcp_pack_item;
fb_err fbcp_upload_pack_files(fbcp_ctx *c, const fbcp_url *url, const char *root, const fbcp_pack_item *items,
                              size_t n);

/* Hooks of the HTTP(S) transport into the upload's hashing (fbcp_upload.c); both do nothing
 * unless X is an upload whose hashing thread runs. SENT: DATA, the LEN bytes at file offset OFF,
 * was just read to be sent; it is hashed from memory if it is next in file order, so the file is
 * not read a second time. */
void fbcp_upload_hash_sent(fbcp_xfer *x, uint64_t off, const void *data, size_t len);
/* HINT: READ_LOW is the lowest offset a request is still to read (UINT64_MAX: none). The hashing
 * thread reads the file below it and leaves the rest to SENT while hints keep coming and the
 * front keeps moving. */
void fbcp_upload_hash_hint(fbcp_xfer *x, uint64_t read_low);

/* Waits on CV (MU held) for at most MS milliseconds: the digest threads' bounded sleep. */
void fbcp_cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, unsigned ms);
/* The URL of files/{REMOTE} (SLASH: with a trailing "/", for a directory listing); NULL on ENOMEM. */
char *fbcp_files_url(const fbcp_url *url, const char *remote, int slash);
/* Takes a download session's answer ANS into X: session_id, key, udp_port (0: none), a new
 * session_gen. FB_ERR_PROTOCOL when it has no usable id or key. */
fb_err fbcp_download_session_take(fbcp_xfer *x, struct json_t *ans);
/* POST BASE/sessions with BODY (consumed; NULL: FB_ERR_NOMEM), as fbcp_http_request. */
fb_err fbcp_sessions_post(fbcp_ctx *c, const fbcp_url *url, struct json_t *body, fbcp_http_answer *a,
                          char *detail, size_t detlen);
/* DELETE BASE/sessions/{ID} (without retries; the server expires what is not deleted). */
void fbcp_session_delete(fbcp_ctx *c, const fbcp_url *url, const char *id);
/* X (all zero first) as a download of REMOTE to LOCAL for C, on C's HTTP(S) transport to start. */
void fbcp_download_xfer_init(fbcp_xfer *x, fbcp_ctx *c, const fbcp_url *url, const char *local,
                             const char *remote);
/* The local overwrite policy (O's) for a download to LOCAL of the server's SIZE and MTIME (whole
 * seconds, -1: unknown): 0 go on, 1 skip it (*PREASON: "identical", "newer"), -1 refused (*PERR,
 * and DETAIL when there is more to say). */
int fbcp_download_policy(const fbcp_opts *o, const char *local, uint64_t size, int64_t mtime,
                         const char **preason, fb_err *perr, char *detail, size_t detlen);
/* Downloads REMOTE to LOCAL (the final target path). Reports its own errors. */
fb_err fbcp_download_file(fbcp_ctx *c, const fbcp_url *url, const char *remote, const char *local);

/* ---- the run's queue of files and trees (fbcp_tree.c) ---- */

typedef struct fbcp_tree fbcp_tree;

/* A run in DIRECTION with O's --transfers workers. */
fb_err fbcp_tree_new(fbcp_tree **pt, const fbcp_opts *o, fbcp_direction direction);
void fbcp_tree_free(fbcp_tree *t);
/* Queues one file (upload: LOCAL -> REMOTE; download: REMOTE -> LOCAL). SIZE, when known, lets
 * big files take turns. INTO_DIR as for fbcp_upload_file. */
fb_err fbcp_tree_add_file(fbcp_tree *t, const fbcp_url *url, const char *local, const char *remote,
                          uint64_t size, int into_dir);
/* Queues a whole directory (upload: LOCAL's tree to REMOTE; download: REMOTE's tree into LOCAL,
 * created if needed); it gets its own "tree" summary. */
fb_err fbcp_tree_add_dir(fbcp_tree *t, const fbcp_url *url, const char *local, const char *remote);
/* Runs everything queued to its end; each file reports its own errors. */
fb_err fbcp_tree_run(fbcp_tree *t);

/* ---- download packs (fbcp_pack_down.c): small files of a tree in one session ---- */

typedef struct fbcp_pack_down fbcp_pack_down;     /* one pack: files of one tree */
typedef struct fbcp_pack_gather fbcp_pack_gather; /* the packs being filled, one per tree */

fb_err fbcp_pack_gather_new(fbcp_pack_gather **pg);
void fbcp_pack_gather_free(fbcp_pack_gather *g);
/* Offers the listed file REMOTE -> LOCAL of tree TREE (DEPTH components below the tree's root;
 * SIZE and MTIME, may be NULL, from the listing). 1: taken; 0: not taken (too big, ...), it goes
 * on its own. Either way *PFULL is a pack that is full now (to run), or NULL. */
int fbcp_pack_gather_add(fbcp_pack_gather *g, const fbcp_url *url, int tree, const char *remote,
                         const char *local, int depth, uint64_t size, const struct timespec *mtime,
                         fbcp_pack_down **pfull);
/* A pack still being filled, taken out (the listings are done); NULL when there is none. */
fbcp_pack_down *fbcp_pack_gather_flush(fbcp_pack_gather *g);
int fbcp_pack_down_tree(const fbcp_pack_down *p);
uint64_t fbcp_pack_down_bytes(const fbcp_pack_down *p); /* its files' sizes as listed */
/* Downloads the pack's files (one by one if the server has no packs); reports per file. */
fb_err fbcp_pack_down_run(fbcp_ctx *c, fbcp_pack_down *p);
void fbcp_pack_down_free(fbcp_pack_down *p);

/* fbcp_progress.c's side of trees: a tree's own totals ("tree" event at the end of the run). */
int fbcp_progress_tree_new(const char *source, const char *dest); /* its id, -1 if none */
void fbcp_progress_tree_enter(int tree); /* the calling thread now works for TREE (-1: none) */
void fbcp_progress_tree_dir(void);       /* the calling thread's tree has one more directory */
void fbcp_progress_tree_begin(void);     /* several files at once: the bar shows the run */
void fbcp_progress_tree_end(void);       /* the trees' events; the bar shows files again */
/* Asks whether REMOTE is a directory: *PISDIR, and, if PLISTING is not NULL, the listing in
 * *PLISTING when it is (caller json_decref). FB_ERR_NOT_FOUND if it does not exist. */
fb_err fbcp_remote_stat(fbcp_ctx *c, const fbcp_url *url, const char *remote, int *pisdir,
                        struct json_t **plisting, char *detail, size_t detlen);

#endif
