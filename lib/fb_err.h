/* fb_err: the one table of error codes shared by every part of the system.
 *
 * Each code has a stable name (used in problem+json documents and --json events), one
 * human message (used in logs and on the client's terminal), the HTTP status the module
 * answers with, and the exit code fbcp/fbctl return. Add codes at the end only: the
 * numbers are part of the documented exit codes. */
#ifndef FB_ERR_H
#define FB_ERR_H

/* X(enum, name, http_status, exit_code, message) */
#define FB_ERR_TABLE(X)                                                                              \
    X(FB_OK, "ok", 200, 0, "Success")                                                                \
    X(FB_ERR_USAGE, "usage", 400, 2, "Invalid command line")                                         \
    X(FB_ERR_CONFIG, "config", 500, 3, "Invalid configuration")                                      \
    X(FB_ERR_CONNECTION_LOST, "connection_lost", 503, 4, "Connection lost")                          \
    X(FB_ERR_SERVER_REFUSED, "server_refused", 400, 5, "Server refused request")                     \
    X(FB_ERR_PERMISSION, "insufficient_permissions", 403, 6, "Insufficient permissions")             \
    X(FB_ERR_BAD_PASSPHRASE, "bad_passphrase", 400, 7, "File decryption error, bad passphrase")      \
    X(FB_ERR_AUTH, "authentication_failed", 401, 8, "Authentication failed")                         \
    X(FB_ERR_NOT_FOUND, "not_found", 404, 9, "No such file or session")                              \
    X(FB_ERR_BAD_REQUEST, "bad_request", 400, 10, "Malformed request")                               \
    X(FB_ERR_BAD_RANGE, "bad_range", 400, 11, "Malformed Content-Range")                             \
    X(FB_ERR_RANGE_NOT_SATISFIABLE, "range_not_satisfiable", 416, 12, "Range outside the file or already received") \
    X(FB_ERR_PATH_ESCAPE, "path_escape", 403, 13, "Path escapes the document root")                  \
    X(FB_ERR_BAD_PATH, "bad_path", 400, 14, "Invalid path")                                          \
    X(FB_ERR_TOO_LARGE, "too_large", 413, 15, "Request or file too large")                           \
    X(FB_ERR_EXISTS, "exists", 409, 16, "Target exists and the overwrite policy forbids replacing it") \
    X(FB_ERR_INCOMPLETE, "incomplete", 409, 17, "Transfer is not complete")                          \
    X(FB_ERR_DIGEST_MISMATCH, "digest_mismatch", 422, 18, "File digest does not match")              \
    X(FB_ERR_DISK_FULL, "disk_full", 507, 19, "No space left on the server's disk")                  \
    X(FB_ERR_TABLE_FULL, "too_many_sessions", 503, 20, "Too many sessions")                          \
    X(FB_ERR_SESSION_STATE, "session_state", 409, 21, "Session is not in a state that allows this")  \
    X(FB_ERR_IO, "io_error", 500, 22, "Input/output error")                                          \
    X(FB_ERR_NOMEM, "out_of_memory", 500, 23, "Out of memory")                                       \
    X(FB_ERR_SHM_VERSION, "shm_version", 500, 24, "Session table has an unknown layout version")     \
    X(FB_ERR_SHM_PERMS, "shm_permissions", 500, 25, "Session table has unsafe ownership or mode")   \
    X(FB_ERR_TLS, "tls_error", 502, 26, "TLS or certificate error")                                  \
    X(FB_ERR_PROTOCOL, "protocol_error", 502, 27, "Unexpected answer from the server")               \
    X(FB_ERR_LOCAL_IO, "local_io_error", 500, 28, "Local file error")                                \
    X(FB_ERR_CHANGED, "changed", 412, 29, "File changed on the server during the transfer")          \
    X(FB_ERR_METHOD, "method_not_allowed", 405, 30, "Method not allowed")                            \
    X(FB_ERR_INTERNAL, "internal_error", 500, 31, "Internal error")

typedef enum fb_err {
#define FB_ERR_ENUM(e, name, http, exitc, msg) e,
    FB_ERR_TABLE(FB_ERR_ENUM)
#undef FB_ERR_ENUM
        FB_ERR__COUNT
} fb_err;

/* Stable machine name ("connection_lost"); "unknown" for out-of-range values. */
const char *fb_err_name(fb_err e);
/* The one human message ("Connection lost"). */
const char *fb_err_message(fb_err e);
/* HTTP status the module answers with. */
int fb_err_http_status(fb_err e);
/* Process exit code for fbcp/fbctl. */
int fb_err_exit_code(fb_err e);
/* Reverse lookup from a name in a problem document; FB_ERR_PROTOCOL if unknown. */
fb_err fb_err_from_name(const char *name);
/* Maps an errno from file I/O to a code (ENOSPC/EDQUOT -> FB_ERR_DISK_FULL, EACCES -> ...). */
fb_err fb_err_from_errno(int errnum);

#endif
