/* mod_fallback_private.h: what the mod_fallback_*.c files share: the module's log identity,
 * the log tag macro, the per-server state (config + session table), the per-request context
 * and the prototypes between the files. Nothing here is visible outside the module. */
#ifndef MOD_FALLBACK_PRIVATE_H
#define MOD_FALLBACK_PRIVATE_H

#include <stdint.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"

#include <jansson.h>

#include "fb_config.h"
#include "fb_err.h"
#include "fb_table.h"

/* mod_fallback.c gets the same declaration from AP_DECLARE_MODULE. */
#ifndef MOD_FALLBACK_MAIN
APLOG_USE_MODULE(fallback);
#endif

/* Every log message starts with a unique tag ("FB00042: ") so tests can expect or forbid it.
 * Numbers by file: mod_fallback.c 00001-00099, _util 00100-00199, _sessions 00200-00399,
 * _data 00400-00499, _files 00500-00599, _status 00600-00699, _daemon 00700-00799,
 * _pack_up 00900-00949, _pack_down 00950-00999. */
#define FBLOGNO(n) "FB" #n ": "

/* Longest list of missing ranges put into one answer; the rest is summarised by
 * "missing_bytes" and "missing_truncated". */
#define MOD_FALLBACK_MAX_MISSING_RANGES 4096

/* One loaded fallback.xml and the session table it names; shared by every server_rec that
 * uses the same FallbackConfig file. Lives for one configuration generation (pconf). */
typedef struct mod_fallback_state {
    const char *config_file;
    fb_config *cfg;
    fb_table *table; /* NULL until post_config attached it */
} mod_fallback_state;

typedef struct mod_fallback_server_conf {
    const char *config_file; /* FallbackConfig, NULL: not set here */
    const char *schema_file; /* FallbackSchema, NULL: not set here */
    /* FallbackDaemon*: global only, so they are read from the main server's config. */
    int daemon_on;           /* FallbackDaemon: 1 on, 0 off, -1 not set (off) */
    const char *daemon_path; /* FallbackDaemonPath, NULL: FB_SBINDIR "/udpd" */
    const char *daemon_user; /* FallbackDaemonUser, NULL: Apache's User */
    mod_fallback_state *state;
} mod_fallback_server_conf;

/* Everything a route handler needs about its request. */
typedef struct mod_fallback_req {
    request_rec *r;
    mod_fallback_state *state;
    const fb_config *cfg;
    fb_table *table;
    const char *base;    /* URL prefix of the handler's location, no trailing slash */
    const char *user;    /* r->user or "" */
    const char *docroot; /* NULL if the user has none */
    int docroot_fd;      /* -1 until mod_fallback_docroot_open */
    int body_read;       /* the request body was consumed (or its reading failed) */
    json_t *answer_extra; /* members added to the session document answered next (packs), or NULL */
} mod_fallback_req;

/* mod_fallback_util.c. Functions returning int return a handler result: after a problem was
 * answered they return OK with their out-parameter unset (NULL / -1). */
/* Answers an application/problem+json document for CODE (status from fb_err_http_status). */
int mod_fallback_problem(mod_fallback_req *req, fb_err code, const char *detail);
/* The same with extension members: EXTRA's (a JSON object, or NULL; its reference is taken). */
int mod_fallback_problem_ext(mod_fallback_req *req, fb_err code, const char *detail, json_t *extra);
int mod_fallback_problem_r(request_rec *r, fb_err code, const char *detail);
/* Answers DOC (consumed) as application/json with STATUS; SENSITIVE wipes the text after. */
int mod_fallback_json_reply(mod_fallback_req *req, int status, json_t *doc, int sensitive);
/* Reads a JSON object body of at most max_json_body bytes; *PDOC is freed with r->pool. */
int mod_fallback_read_json(mod_fallback_req *req, json_t **pdoc);
/* Sets req->docroot and opens req->docroot_fd (O_PATH, closed with r->pool). */
int mod_fallback_docroot_open(mod_fallback_req *req);
void mod_fallback_fd_close_on_cleanup(apr_pool_t *p, int fd);
/* Closes FD now and forgets its cleanup (FD was registered with the function above). */
void mod_fallback_fd_close_now(apr_pool_t *p, int fd);
/* Called before answering a request whose body was not read. */
void mod_fallback_body_unread(request_rec *r);
fb_err mod_fallback_split_parent(const char **pparent, const char **pbase, apr_pool_t *p, const char *relpath);
/* Opens the directory holding RELPATH beneath the docroot (O_RDONLY, closed with r->pool). */
fb_err mod_fallback_open_parent(int *pfd, mod_fallback_req *req, const char *relpath);
const char *mod_fallback_basename(const char *relpath);
fb_err mod_fallback_sha256_hex_parse(unsigned char out[32], json_t *value);
/* Sets FD's modification time to *MTIME_NS (ns since the epoch), or to now if MTIME_NS is NULL;
 * the access time to now. 0, or -1 with errno. */
int mod_fallback_fd_set_mtime(int fd, const uint64_t *mtime_ns);
/* Sets OBJ's "mtime" (whole seconds since the epoch) and "mtime_ns" (the nanoseconds part). */
struct timespec;
void mod_fallback_json_set_mtime(json_t *obj, const struct timespec *t);

/* mod_fallback_sessions.c, mod_fallback_create.c, mod_fallback_commit.c */
int mod_fallback_sessions_create(mod_fallback_req *req);
int mod_fallback_sessions_get(mod_fallback_req *req, const char *id);
int mod_fallback_sessions_delete(mod_fallback_req *req, const char *id);
int mod_fallback_sessions_commit(mod_fallback_req *req, const char *id);
/* The commit with the file digest SHA (32 bytes) already known: for POST .../commit and for a PUT
 * with Fallback-Commit that completes the file. */
int mod_fallback_sessions_commit_sha(mod_fallback_req *req, const char *id, const unsigned char *sha);
/* Shared by mod_fallback_sessions.c, mod_fallback_create.c and mod_fallback_commit.c: */
struct stat;
/* Wipes INFO's key. */
void wipe_info(fb_slot_info *info);
/* Answers a session document; the key only to its creator (create/resume answers). */
int reply_session(mod_fallback_req *req, int status, uint32_t idx, fb_slot *slot, int with_key, int with_stats,
                  int resumed);
/* Opens (creating) the partial file and takes its flock. Retries when the name was replaced or
 * removed while we waited (a cancel, a commit, or a restart of the upload). */
fb_err lock_partial(int *pfd, int parent_fd, const char *partbase, int create);
/* 1 if SB (the partial file as opened now) is still the partial file the live upload INFO wrote. */
int partial_is_the_sessions(const struct stat *sb, const fb_slot_info *info);
/* 1 if the target SB may be replaced under an "older" policy (mtime before SOURCE_MTIME_NS). */
int target_is_older(const struct stat *sb, uint64_t source_mtime_ns);
/* Finds session ID of the request's user and docroot (opening the docroot). When it is not
 * found (or belongs to someone else: the same answer) it answers 404 and leaves *PSLOT NULL.
 * *PGEN is the slot generation seen before INFO was read: compare it later to detect reuse.
 * The caller wipes info->key when done. */
int mod_fallback_session_lookup(mod_fallback_req *req, const char *id, uint32_t *pindex, fb_slot **pslot,
                                uint32_t *pgen, fb_slot_info *info);
/* The error recorded with a FAILED session of generation GEN (FB_OK: none, or not FAILED). */
fb_err mod_fallback_session_error(fb_slot *slot, uint32_t gen);
/* Answers a request on a session that is no longer ACTIVE: the administrator's refusal
 * (fbctl cancel) as server_refused, anything else as session_state naming the state. */
int mod_fallback_session_ended(mod_fallback_req *req, fb_slot *slot, uint32_t gen);
/* "active", "finalising", "done", "failed" */
const char *mod_fallback_state_name(uint32_t state);

/* Shared by the single-file upload and the upload pack (mod_fallback_pack_up.c). */
struct mod_fallback_pack_up;
/* Creates or resumes an upload session of RELPATH (see docs/HTTP-API.md, "Resuming"); answers.
 * PACK: NULL for one file; for a pack its manifest is written beside the partial file under the
 * partial file's lock, the slot is marked FB_SLOT_FLAG_PACK, and max_file_size is not applied
 * to the whole (the pack applies it to each file). */
int mod_fallback_upload_create(mod_fallback_req *req, const char *relpath, uint64_t size, fb_overwrite ow,
                               const unsigned char *sha256, int ask_digest, unsigned mode,
                               const unsigned char *source_id, const uint64_t *source_mtime_ns,
                               struct mod_fallback_pack_up *pack);
/* The overwrite policy for an existing target BASE in PARENT_FD, without answering: -1 to go on
 * (no target, or it may be replaced), 1 to skip (*PREASON "identical" or "newer"; an identical
 * target takes SOURCE_MTIME_NS), 0 refused: *PERR, *PDETAIL (may be NULL) and *PTARGET
 * ("directory", "file" or NULL: the problem's "target" member). */
int mod_fallback_target_decide(request_rec *r, int parent_fd, const char *base, uint64_t size,
                               fb_overwrite ow, const unsigned char *sha256, int ask_digest,
                               const uint64_t *source_mtime_ns, const char **preason, fb_err *perr,
                               const char **pdetail, const char **ptarget);
/* Under the older policies: 1 if a target (not a directory) is at BASE now that is not older
 * than SOURCE_MTIME_NS (NULL: unknown, so not older). */
int mod_fallback_target_now_newer(int parent_fd, const char *base, fb_overwrite ow,
                                  const uint64_t *source_mtime_ns);
/* Renames PARTBASE to BASE in PARENT_FD; under "never" without replacing (EEXIST). 0 or -1. */
int mod_fallback_rename_into_place(int parent_fd, const char *partbase, const char *base, fb_overwrite ow);
/* Moves a FINALISING slot to TO after a failed commit and answers CODE (EXTRA: members, taken). */
int mod_fallback_commit_fail_ext(mod_fallback_req *req, fb_slot *slot, fb_slot_state to, fb_err code,
                                 const char *detail, json_t *extra);
/* JSON "overwrite" (NULL or null: "always"); 0 if it is not one of the five names. */
#define MOD_FALLBACK_OVERWRITE_BAD                                                                           \
    "overwrite must be \"never\", \"always\", \"if_different\", \"older\" or \"if_different,older\""
int mod_fallback_overwrite_parse(fb_overwrite *pow, json_t *v);
/* Octal permission string ("644", "0644", no setuid/setgid/sticky); 0 if malformed. */
int mod_fallback_mode_parse(unsigned *pmode, const char *s);
/* OBJ's "mtime"/"mtime_ns" (docs/HTTP-API.md): NULL when fine (*PHAS 0 when absent), else what is
 * wrong with them. */
const char *mod_fallback_mtime_parse(json_t *obj, uint64_t *pns, int *phas);
int mod_fallback_policy_needs_older(fb_overwrite ow);

/* mod_fallback_pack_up.c: upload packs (docs/HTTP-API.md, "Upload packs"). */
/* POST sessions with "pack" and direction upload; ROOT is the checked "path". */
int mod_fallback_pack_up_create(mod_fallback_req *req, json_t *doc, const char *root);
/* Called by mod_fallback_upload_create under the partial file's lock, PARENT_FD the root. */
fb_err mod_fallback_pack_up_prepare(mod_fallback_req *req, struct mod_fallback_pack_up *pack, int parent_fd);
/* The commit of a pack once its digest is verified: lands every file, answers, and leaves
 * FINALISING. PART_FD: the pack's partial file (locked); PARENT_FD: the root directory. */
int mod_fallback_pack_up_land(mod_fallback_req *req, const char *id, fb_slot *slot, const fb_slot_info *info,
                              int part_fd, int parent_fd, const unsigned char *digest);
/* Removes a pack's manifest sidecar (cancel); RELPATH is the pack's hidden relpath. */
void mod_fallback_pack_up_remove(int parent_fd, const char *relpath);
/* The pack's root directory for its hidden RELPATH ("" for the docroot). */
const char *mod_fallback_pack_root(apr_pool_t *p, const char *relpath);
/* A download session of RELPATH (checked by the caller; a download pack's staging file is a
 * hidden name of the module's own), answered 201 with req->answer_extra's members added. */
int mod_fallback_sessions_create_download(mod_fallback_req *req, const char *relpath);

/* mod_fallback_pack_down.c: POST sessions with "pack" and direction download (ROOT checked). */
int mod_fallback_pack_down_create(mod_fallback_req *req, const char *root, json_t *doc);
/* The session of RELPATH ended (DELETE): its staging file goes, if RELPATH names one. */
void mod_fallback_pack_down_forget(mod_fallback_req *req, const char *relpath);

/* Calls VISIT for each entry of DIR_FD (at most MAX_ENTRIES looked at), with the time now and
 * idle_timeout in ns; VISIT returns non-zero when it removed something. Returns how many did. */
unsigned mod_fallback_sweep_dir(mod_fallback_req *req, int dir_fd, unsigned max_entries,
                                int (*visit)(mod_fallback_req *req, int dir_fd, const char *name, uint64_t now,
                                             uint64_t max_age_ns, void *arg),
                                void *arg);
/* Whether NAME in DIR_FD is missing, or was last modified at least MAX_AGE_NS before NOW. */
int mod_fallback_stale_or_gone(int dir_fd, const char *name, uint64_t now, uint64_t max_age_ns);
/* The end of a successful commit (one file or a pack): DIGEST kept for repeated commits, the
 * slot FINALISING -> DONE. */
void mod_fallback_commit_done(mod_fallback_req *req, fb_slot *slot, const char *id, const unsigned char *digest);

/* mod_fallback_data.c */
int mod_fallback_data_put(mod_fallback_req *req, const char *id);

/* mod_fallback_status.c: hooks into mod_status when it is loaded. */
void mod_fallback_status_register(void);

/* mod_fallback_daemon.c: udpd started and supervised by the Apache parent (FallbackDaemon on).
 * check_config: refuses a FallbackDaemonPath that is not an executable file. post_config (the
 * real pass only): starts udpd, or keeps the one that survived a graceful restart. */
int mod_fallback_daemon_check(server_rec *s);
int mod_fallback_daemon_post_config(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *s);
/* The parent's monitor hook: retries a start that failed. */
void mod_fallback_daemon_register_hooks(void);

/* mod_fallback_files.c */
int mod_fallback_files_get(mod_fallback_req *req, const char *relpath);
/* GET/HEAD sessions/{id}/data: the file of download session ID, as files/ serves a file. */
int mod_fallback_files_session_data(mod_fallback_req *req, const char *id);
/* MKCOL: makes the directory RELPATH (and its parents) beneath the docroot. */
int mod_fallback_files_mkcol(mod_fallback_req *req, const char *relpath);
/* Mode of directories the module makes (before the umask), as mkdir -p does. */
#define MOD_FALLBACK_DIR_MODE 0755

#endif
