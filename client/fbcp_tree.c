/* fbcp_tree: many files at once. Every run of fbcp goes through here: the sources (files, and
 * with -r whole trees) become jobs in one queue, and --transfers workers, each with its own
 * HTTP(S) connections and UDP transport, take jobs from it, so that while one file waits for a
 * round trip (its session, its UDP handshake, its commit) others move data. A tree of small files
 * is then limited by the link and the server, not by one file's round trips after another.
 *
 * Jobs:
 *   LIST   upload: read a local directory; download: ask the server's listing. Each entry
 *          becomes a FILE job, each subdirectory a LIST job; an empty directory a MKDIR job
 *          (upload). Directories are remembered for their times.
 *   FILE   one file, with fbcp_upload_file / fbcp_download_file.
 *   MKDIR  upload: MKCOL files/{path} (empty directories, and every directory's time at the end).
 *
 * When the queue is empty and no worker runs a job, the pass is over. With times kept (the
 * default, like rsync -a), a second pass gives every directory its source's modification time,
 * after every file in it has landed (a file landing changes its directory's time).
 *
 * Rules kept across workers: at most one file of FBCP_BIG_FILE bytes or more moves at a time (a
 * big file fills the link on its own; several would only compete); --limit-rate, --target-rate
 * and --min-rate are the run's totals, so each worker gets its share; an error that stops the
 * run (fbcp_err_stops_run) stops every worker after its current file. */
#include "fbcp.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

typedef enum fbcp_job_kind {
    FBCP_JOB_LIST,
    FBCP_JOB_FILE,
    FBCP_JOB_MKDIR,
    FBCP_JOB_PACK_UP,
    FBCP_JOB_PACK_DOWN
} fbcp_job_kind;

/* Small files of one tree on their way into a pack (upload). */
typedef struct fbcp_pack_items {
    fbcp_pack_item *v;
    size_t n, cap;
    uint64_t bytes; /* their sizes */
    size_t json;    /* an estimate of their part of the pack's request */
} fbcp_pack_items;

static void fbcp_pack_items_free(fbcp_pack_items *p)
{
    for (size_t i = 0; p->v != NULL && i < p->n; i++) {
        free(p->v[i].local);
        free(p->v[i].remote);
    }
    free(p->v);
    memset(p, 0, sizeof(*p));
}

typedef struct fbcp_job {
    fbcp_job_kind kind;
    char *local;
    char *remote;
    uint64_t size; /* FILE: as seen when listed (for the big-file rule) */
    int into_dir;  /* FILE upload: REMOTE may name a directory (cp's rule) */
    int depth;     /* LIST: directory depth below the source */
    int has_time;  /* the directory's time below is known */
    struct timespec mtime;
    int tree;                  /* index of the source tree (fbcp_progress's tree counters), -1: none */
    const fbcp_url *url;       /* the server's URL (one per source of a download) */
    fbcp_pack_items *pack;     /* PACK_UP: its files (REMOTE is the pack's root); owned by the job */
    fbcp_pack_down *pack_down; /* PACK_DOWN: the pack (owned by the job) */
} fbcp_job;

/* A source tree of an upload: its root on the server, and the pack being filled. */
typedef struct fbcp_tree_root {
    int tree;
    char *remote;
    const fbcp_url *url;
    fbcp_pack_items pending;
} fbcp_tree_root;

typedef struct fbcp_jobs {
    fbcp_job *v;
    size_t n, cap;
} fbcp_jobs;

struct fbcp_tree {
    const fbcp_opts *opts;
    fbcp_opts worker_opts; /* OPTS with the run's rate limits split between the workers */
    fbcp_direction direction;
    int nworkers;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    fbcp_jobs queue; /* FIFO: [head, n) waits */
    size_t head;
    fbcp_jobs dirs;              /* every directory met, for the time pass */
    int busy;                    /* workers running a job */
    int listing;                 /* ... of which listing a directory */
    int big_running;             /* a file of FBCP_BIG_FILE bytes or more is moving */
    uint64_t pack_bytes_running; /* the bytes of the packs moving (FBCP_PACK_BYTES_AT_ONCE) */
    int stop;                    /* an error that stops the run happened */
    int mkcol_missing;           /* the server does not know MKCOL (warned once) */
    fbcp_tree_root *roots;       /* upload trees (packs are per tree) */
    int nroots;
    /* download: small files gathered into packs (fbcp_pack_down.c), the open ones queued when no
     * LIST job is left (LISTS_LEFT: queued or running) */
    fbcp_pack_gather *gather;
    int lists_left;
};

static void fbcp_job_free(fbcp_job *j)
{
    free(j->local);
    free(j->remote);
    j->local = j->remote = NULL;
    if (j->pack != NULL) {
        fbcp_pack_items_free(j->pack);
        free(j->pack);
        j->pack = NULL;
    }
    fbcp_pack_down_free(j->pack_down);
    j->pack_down = NULL;
}

static void fbcp_jobs_free(fbcp_jobs *q)
{
    for (size_t i = 0; i < q->n; i++)
        fbcp_job_free(&q->v[i]);
    free(q->v);
    memset(q, 0, sizeof(*q));
}

/* Appends a copy of J (its strings are duplicated). Called with the tree's lock held, or before
 * the workers start. */
static fb_err fbcp_jobs_push(fbcp_jobs *q, const fbcp_job *j)
{
    fbcp_job *slot;

    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 256;
        fbcp_job *v = realloc(q->v, cap * sizeof(*v));
        if (v == NULL)
            return FB_ERR_NOMEM;
        q->v = v;
        q->cap = cap;
    }
    slot = &q->v[q->n];
    *slot = *j;
    slot->local = j->local != NULL ? strdup(j->local) : NULL;
    slot->remote = j->remote != NULL ? strdup(j->remote) : NULL;
    if ((j->local != NULL && slot->local == NULL) || (j->remote != NULL && slot->remote == NULL)) {
        fbcp_job_free(slot);
        return FB_ERR_NOMEM;
    }
    q->n++;
    return FB_OK;
}

fb_err fbcp_tree_new(fbcp_tree **pt, const fbcp_opts *o, fbcp_direction direction)
{
    fbcp_tree *t = calloc(1, sizeof(*t));

    *pt = NULL;
    if (t == NULL)
        return FB_ERR_NOMEM;
    t->opts = o;
    t->direction = direction;
    t->nworkers = o->transfers > 0 ? o->transfers : 1;
    t->worker_opts = *o;
    if (direction == FBCP_DOWNLOAD && o->packs && fbcp_pack_gather_new(&t->gather) != FB_OK) {
        free(t);
        return FB_ERR_NOMEM;
    }
    if (pthread_mutex_init(&t->mu, NULL) != 0) {
        free(t);
        return FB_ERR_NOMEM;
    }
    if (pthread_cond_init(&t->cv, NULL) != 0) {
        pthread_mutex_destroy(&t->mu);
        free(t);
        return FB_ERR_NOMEM;
    }
    *pt = t;
    return FB_OK;
}

void fbcp_tree_free(fbcp_tree *t)
{
    if (t == NULL)
        return;
    fbcp_jobs_free(&t->queue);
    fbcp_jobs_free(&t->dirs);
    for (int i = 0; i < t->nroots; i++) {
        free(t->roots[i].remote);
        fbcp_pack_items_free(&t->roots[i].pending);
    }
    free(t->roots);
    fbcp_pack_gather_free(t->gather);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

static fb_err fbcp_tree_push(fbcp_tree *t, const fbcp_job *j)
{
    fb_err rv;

    pthread_mutex_lock(&t->mu);
    rv = fbcp_jobs_push(&t->queue, j);
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    return rv;
}

fb_err fbcp_tree_add_file(fbcp_tree *t, const fbcp_url *url, const char *local, const char *remote,
                          uint64_t size, int into_dir)
{
    fbcp_job j = {.kind = FBCP_JOB_FILE,
                  .local = (char *)local,
                  .remote = (char *)remote,
                  .size = size,
                  .into_dir = into_dir,
                  .tree = -1,
                  .url = url};
    return fbcp_tree_push(t, &j);
}

fb_err fbcp_tree_add_dir(fbcp_tree *t, const fbcp_url *url, const char *local, const char *remote)
{
    fbcp_job j = {
        .kind = FBCP_JOB_LIST, .local = (char *)local, .remote = (char *)remote, .tree = -1, .url = url};
    struct stat st;

    j.tree = fbcp_progress_tree_new(t->direction == FBCP_UPLOAD ? local : remote,
                                    t->direction == FBCP_UPLOAD ? remote : local);
    if (t->direction == FBCP_UPLOAD && stat(local, &st) == 0) {
        j.has_time = 1;
        j.mtime = st.st_mtim;
    }
    if (t->direction == FBCP_UPLOAD && t->opts->packs && j.tree >= 0) {
        /* its small files travel in packs rooted here */
        fbcp_tree_root *v = realloc(t->roots, (size_t)(t->nroots + 1) * sizeof(*v));
        if (v == NULL)
            return FB_ERR_NOMEM;
        t->roots = v;
        memset(&v[t->nroots], 0, sizeof(v[0]));
        v[t->nroots].tree = j.tree;
        v[t->nroots].url = url;
        v[t->nroots].remote = strdup(remote);
        if (v[t->nroots].remote == NULL)
            return FB_ERR_NOMEM;
        t->nroots++;
    }
    t->lists_left++; /* before the workers start */
    return fbcp_tree_push(t, &j);
}

/* ---------------------------------------------------------------- listing a directory */

static int fbcp_is_partial_local(const char *name)
{
    size_t l = strlen(name);
    return name[0] == '.' && ((l > 7 && strcmp(name + l - 7, ".fbpart") == 0) ||
                              (l > 12 && strcmp(name + l - 12, ".fbpart.json") == 0));
}

static int fbcp_dirent_filter(const struct dirent *d)
{
    return strcmp(d->d_name, ".") != 0 && strcmp(d->d_name, "..") != 0 && !fbcp_is_partial_local(d->d_name);
}

/* Remembers directory J for the time pass (with the lock held). */
static fb_err fbcp_tree_remember_dir(fbcp_tree *t, const fbcp_job *j)
{
    fbcp_job d = *j;

    d.kind = FBCP_JOB_MKDIR;
    return fbcp_jobs_push(&t->dirs, &d);
}

/* LIST of a local directory: its entries become jobs. Symbolic links: one to a regular file is
 * copied as that file (its content, under the link's name); one to a directory is skipped with
 * a warning (following them could loop, and a tree copied twice is rarely what was meant);
 * devices, FIFOs and sockets are skipped with a warning. */
static fb_err fbcp_list_local(fbcp_tree *t, const fbcp_job *dir, fbcp_jobs *out)
{
    struct dirent **list = NULL;
    int n, kept = 0;
    fb_err first = FB_OK;

    if (dir->depth > FBCP_MAX_DEPTH) {
        fbcp_report_error(NULL, dir->local, FB_ERR_USAGE, "directory tree too deep");
        return FB_ERR_USAGE;
    }
    n = scandir(dir->local, &list, fbcp_dirent_filter, alphasort);
    if (n < 0) {
        fbcp_report_error(NULL, dir->local, FB_ERR_LOCAL_IO, strerror(errno));
        return FB_ERR_LOCAL_IO;
    }
    for (int i = 0; i < n; i++) {
        fbcp_job j = {.tree = dir->tree, .depth = dir->depth + 1, .url = dir->url};
        struct stat lst, st;

        j.local = fbcp_path_join(dir->local, list[i]->d_name);
        j.remote = fbcp_path_join(dir->remote, list[i]->d_name);
        if (j.local == NULL || j.remote == NULL) {
            first = FB_ERR_NOMEM;
        } else if (lstat(j.local, &lst) != 0 || stat(j.local, &st) != 0) {
            fbcp_warn("%s: skipped: %s", j.local, strerror(errno));
        } else if (S_ISDIR(st.st_mode) && S_ISLNK(lst.st_mode)) {
            fbcp_warn("%s: skipped: symbolic link to a directory", j.local);
        } else if (S_ISDIR(st.st_mode)) {
            j.kind = FBCP_JOB_LIST;
            j.has_time = 1;
            j.mtime = st.st_mtim;
            first = fbcp_jobs_push(out, &j);
            kept++;
        } else if (S_ISREG(st.st_mode)) {
            j.kind = FBCP_JOB_FILE;
            j.size = (uint64_t)st.st_size;
            first = fbcp_jobs_push(out, &j);
            kept++;
        } else {
            fbcp_warn("%s: skipped: not a regular file", j.local);
        }
        free(j.local);
        free(j.remote);
        free(list[i]);
        if (first != FB_OK) {
            for (int k = i + 1; k < n; k++)
                free(list[k]);
            break;
        }
    }
    free(list);
    if (first == FB_OK && kept == 0) {
        /* an empty directory: created on the server as it is */
        fbcp_job j = *dir;
        j.kind = FBCP_JOB_MKDIR;
        first = fbcp_jobs_push(out, &j);
    }
    if (first != FB_OK)
        fbcp_report_error(NULL, dir->local, first, NULL);
    return first;
}

/* LIST of a remote directory: the server's listing; subdirectories are created locally at once
 * (so an empty one is copied too). */
static fb_err fbcp_list_remote(fbcp_tree *t, fbcp_ctx *c, const fbcp_job *dir, fbcp_jobs *out)
{
    char detail[FBCP_DETAIL_LEN] = "";
    json_t *listing = NULL, *entries, *ent;
    struct stat st;
    int isdir = 0;
    size_t i;
    fb_err rv, e;

    if (dir->depth > FBCP_MAX_DEPTH) {
        fbcp_report_error(NULL, dir->local, FB_ERR_USAGE, "directory tree too deep");
        return FB_ERR_USAGE;
    }
    rv = fbcp_remote_stat(c, dir->url, dir->remote, &isdir, &listing, detail, sizeof(detail));
    if (rv == FB_OK && !isdir) {
        rv = FB_ERR_PROTOCOL;
        snprintf(detail, sizeof(detail), "%s is not a directory", dir->remote);
    }
    if (rv != FB_OK) {
        fbcp_report_error(NULL, dir->local, rv, detail);
        json_decref(listing);
        return rv;
    }
    if (mkdir(dir->local, 0777) != 0 &&
        !(errno == EEXIST && stat(dir->local, &st) == 0 && S_ISDIR(st.st_mode))) {
        fbcp_report_error(NULL, dir->local, FB_ERR_LOCAL_IO, strerror(errno));
        json_decref(listing);
        return FB_ERR_LOCAL_IO;
    }
    entries = json_object_get(listing, "entries");
    if (json_is_true(json_object_get(listing, "truncated"))) {
        /* the server lists at most so many entries of one directory: the rest cannot be named */
        snprintf(detail, sizeof(detail), "the server listed only the first %zu entries of this directory",
                 json_array_size(entries));
        fbcp_report_error(NULL, dir->local, FB_ERR_TOO_LARGE, detail);
        rv = FB_ERR_TOO_LARGE;
    }
    json_array_foreach(entries, i, ent)
    {
        const char *name = json_string_value(json_object_get(ent, "name"));
        const char *type = json_string_value(json_object_get(ent, "type"));
        json_t *mt = json_object_get(ent, "mtime"), *mtns = json_object_get(ent, "mtime_ns");
        json_t *size = json_object_get(ent, "size");
        fbcp_job j = {.tree = dir->tree, .depth = dir->depth + 1, .url = dir->url};

        if (!fbcp_name_is_safe(name) || type == NULL) {
            char safe[128];
            fbcp_sanitize(safe, sizeof(safe), name != NULL ? name : "(none)");
            fbcp_warn("%s: skipping an entry with an unusable name '%s'", dir->remote[0] ? dir->remote : "/",
                      safe);
            continue;
        }
        if (strcmp(type, "file") == 0)
            j.kind = FBCP_JOB_FILE;
        else if (strcmp(type, "dir") == 0)
            j.kind = FBCP_JOB_LIST;
        else
            continue;
        if (json_is_integer(mt)) {
            j.has_time = 1;
            j.mtime.tv_sec = (time_t)json_integer_value(mt);
            j.mtime.tv_nsec = json_is_integer(mtns) && json_integer_value(mtns) >= 0 &&
                                      json_integer_value(mtns) < 1000000000
                                  ? (long)json_integer_value(mtns)
                                  : 0;
        }
        if (json_is_integer(size) && json_integer_value(size) >= 0)
            j.size = (uint64_t)json_integer_value(size);
        j.remote = fbcp_path_join(dir->remote, name);
        j.local = fbcp_path_join(dir->local, name);
        e = j.remote != NULL && j.local != NULL ? fbcp_jobs_push(out, &j) : FB_ERR_NOMEM;
        free(j.remote);
        free(j.local);
        if (e != FB_OK) {
            fbcp_report_error(NULL, dir->local, e, NULL);
            rv = e;
            break;
        }
    }
    json_decref(listing);
    return rv;
}

/* ---------------------------------------------------------------- directories on the server */

/* MKCOL files/{REMOTE}, with the directory's time when TIME is not NULL. */
static fb_err fbcp_remote_mkdir(fbcp_tree *t, fbcp_ctx *c, const fbcp_job *j, const struct timespec *time,
                                char *detail, size_t detlen)
{
    fbcp_http_answer a;
    char header[96];
    char *u = fbcp_files_url(j->url, j->remote, 0);
    fb_err rv;

    if (u == NULL)
        return FB_ERR_NOMEM;
    if (time != NULL)
        snprintf(header, sizeof(header), "X-Fallback-Mtime: %lld.%09ld", (long long)time->tv_sec,
                 (long)time->tv_nsec);
    rv = fbcp_http_request_hdr(c->http, &a, "MKCOL", u, time != NULL ? header : NULL, NULL, FBCP_MAX_JSON,
                               FBCP_RETRIES_DEFAULT, detail, detlen);
    free(u);
    if (rv != FB_OK)
        return rv;
    if (a.status == 405 || a.status == 501) {
        /* a server without MKCOL: files still land (their directories are made for them) */
        pthread_mutex_lock(&t->mu);
        if (!t->mkcol_missing)
            fbcp_warn("the server cannot create directories (HTTP %ld to MKCOL): empty directories "
                      "and directory times are not copied",
                      a.status);
        t->mkcol_missing = 1;
        pthread_mutex_unlock(&t->mu);
    } else if (a.status != 200 && a.status != 201 && a.status != 204) {
        rv = fbcp_http_problem(&a, detail, detlen);
        if (rv == FB_ERR_EXISTS)
            snprintf(detail, detlen, "a file is in the way of the directory on the server");
    }
    fbcp_http_answer_free(&a);
    return rv;
}

/* ---------------------------------------------------------------- packs (upload) */

static fbcp_tree_root *fbcp_tree_root_of(fbcp_tree *t, int tree)
{
    for (int i = 0; i < t->nroots; i++)
        if (t->roots[i].tree == tree)
            return &t->roots[i];
    return NULL;
}

/* Queues ROOT's pending pack as a job (with the lock held). */
static fb_err fbcp_tree_flush_pack(fbcp_tree *t, fbcp_tree_root *root)
{
    fbcp_job j = {.kind = FBCP_JOB_PACK_UP,
                  .remote = root->remote,
                  .size = root->pending.bytes + 1, /* an empty file's pack counts too */
                  .tree = root->tree,
                  .url = root->url};
    fb_err rv;

    if (root->pending.n == 0)
        return FB_OK;
    j.pack = malloc(sizeof(*j.pack));
    if (j.pack == NULL)
        return FB_ERR_NOMEM;
    *j.pack = root->pending;
    memset(&root->pending, 0, sizeof(root->pending));
    rv = fbcp_jobs_push(&t->queue, &j); /* the queue's copy owns the pack now */
    if (rv != FB_OK) {
        fbcp_pack_items_free(j.pack);
        free(j.pack);
    }
    return rv;
}

/* Every pending pack to the queue (with the lock held): workers are idle. */
static fb_err fbcp_tree_flush_packs(fbcp_tree *t)
{
    fb_err rv = FB_OK;

    for (int i = 0; i < t->nroots && rv == FB_OK; i++)
        rv = fbcp_tree_flush_pack(t, &t->roots[i]);
    return rv;
}

/* Takes the small file J into its tree's pack, which is queued when full (with the lock held).
 * Returns 0 when J is not for a pack. */
static int fbcp_tree_pack_file(fbcp_tree *t, const fbcp_job *j, fb_err *prv)
{
    fbcp_tree_root *root;
    fbcp_pack_items *p;
    size_t json;

    *prv = FB_OK;
    if (t->direction != FBCP_UPLOAD || j->kind != FBCP_JOB_FILE || j->size > FBCP_PACK_FILE_MAX ||
        (root = fbcp_tree_root_of(t, j->tree)) == NULL)
        return 0;
    p = &root->pending;
    /* its entry: the path below the root (UTF-8 as it is; a quote or backslash escaped, counted
     * twice to be safe), size, sha256, mode and times */
    json = 2 * (strlen(j->remote) - strlen(root->remote)) + 180;
    if (p->n > 0 &&
        (p->n >= FBCP_PACK_FILES || p->bytes + j->size > FBCP_PACK_BYTES || p->json + json > FBCP_PACK_JSON))
        *prv = fbcp_tree_flush_pack(t, root);
    if (*prv == FB_OK && p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        fbcp_pack_item *v = realloc(p->v, cap * sizeof(*v));
        if (v == NULL)
            *prv = FB_ERR_NOMEM;
        else {
            p->v = v;
            p->cap = cap;
        }
    }
    if (*prv != FB_OK)
        return 1;
    p->v[p->n].local = strdup(j->local);
    p->v[p->n].remote = strdup(j->remote);
    p->v[p->n].size = j->size;
    if (p->v[p->n].local == NULL || p->v[p->n].remote == NULL) {
        free(p->v[p->n].local);
        free(p->v[p->n].remote);
        *prv = FB_ERR_NOMEM;
        return 1;
    }
    p->n++;
    p->bytes += j->size;
    p->json += json;
    return 1;
}

/* ---------------------------------------------------------------- the workers */

typedef struct fbcp_worker {
    fbcp_tree *t;
    fbcp_ctx c;
    pthread_t thread;
    int started;
    int time_pass; /* MKDIR jobs carry the directory's time */
} fbcp_worker;

/* Queues a pack (with the lock held); it is freed if that fails. */
static fb_err fbcp_tree_queue_pack(fbcp_tree *t, fbcp_pack_down *p)
{
    fbcp_job j = {.kind = FBCP_JOB_PACK_DOWN,
                  .size = fbcp_pack_down_bytes(p) + 1,
                  .tree = fbcp_pack_down_tree(p),
                  .pack_down = p};
    fb_err rv = fbcp_jobs_push(&t->queue, &j);

    if (rv != FB_OK)
        fbcp_pack_down_free(p);
    return rv;
}

/* Queues J, found by a listing (with the lock held): a small file of a download goes into its
 * tree's pack instead, and a pack that is full goes to the queue. */
static fb_err fbcp_tree_queue_found(fbcp_tree *t, const fbcp_job *j)
{
    fbcp_pack_down *full = NULL;
    int taken = 0;
    fb_err rv = FB_OK;

    if (j->kind == FBCP_JOB_LIST)
        t->lists_left++;
    if (j->kind == FBCP_JOB_FILE && t->gather != NULL)
        taken = fbcp_pack_gather_add(t->gather, j->url, j->tree, j->remote, j->local, j->depth, j->size,
                                     j->has_time ? &j->mtime : NULL, &full);
    if (full != NULL)
        rv = fbcp_tree_queue_pack(t, full);
    if (!taken && rv == FB_OK)
        rv = fbcp_jobs_push(&t->queue, j);
    return rv;
}

/* Runs one job; jobs it finds (LIST) go to the queue. */
static fb_err fbcp_worker_run(fbcp_worker *w, fbcp_job *j)
{
    fbcp_tree *t = w->t;
    fb_err rv = FB_OK;

    fbcp_progress_tree_enter(j->tree);
    if (j->kind == FBCP_JOB_PACK_UP) {
        rv = fbcp_upload_pack_files(&w->c, j->url, j->remote, j->pack->v, j->pack->n);
    } else if (j->kind == FBCP_JOB_FILE) {
        if (t->direction == FBCP_UPLOAD)
            rv = fbcp_upload_file(&w->c, j->url, j->local, j->remote, j->into_dir);
        else
            rv = fbcp_download_file(&w->c, j->url, j->remote, j->local);
    } else if (j->kind == FBCP_JOB_PACK_DOWN) {
        rv = fbcp_pack_down_run(&w->c, j->pack_down);
    } else if (j->kind == FBCP_JOB_LIST) {
        fbcp_jobs found = {0};

        rv = t->direction == FBCP_UPLOAD ? fbcp_list_local(t, j, &found)
                                         : fbcp_list_remote(t, &w->c, j, &found);
        pthread_mutex_lock(&t->mu);
        /* what was found is copied even when the listing was incomplete (that error stands) */
        fb_err e = found.n > 0 || rv == FB_OK ? fbcp_tree_remember_dir(t, j) : FB_OK;
        for (size_t i = 0; e == FB_OK && i < found.n; i++)
            if (!fbcp_tree_pack_file(t, &found.v[i], &e))
                e = fbcp_tree_queue_found(t, &found.v[i]);
        /* the last listing is done: the download packs still being filled go too */
        if (--t->lists_left == 0)
            for (fbcp_pack_down *p; e == FB_OK && (p = fbcp_pack_gather_flush(t->gather)) != NULL;)
                e = fbcp_tree_queue_pack(t, p);
        if (e != FB_OK) {
            fbcp_report_error(NULL, j->local, e, NULL);
            rv = e;
        }
        pthread_cond_broadcast(&t->cv);
        pthread_mutex_unlock(&t->mu);
        fbcp_progress_tree_dir();
        fbcp_jobs_free(&found);
    } else if (t->direction == FBCP_UPLOAD) {
        char detail[FBCP_DETAIL_LEN] = "";
        int missing;

        pthread_mutex_lock(&t->mu);
        missing = t->mkcol_missing;
        pthread_mutex_unlock(&t->mu);
        if (!missing) {
            rv = fbcp_remote_mkdir(t, &w->c, j, w->time_pass && j->has_time ? &j->mtime : NULL, detail,
                                   sizeof(detail));
            if (rv != FB_OK)
                fbcp_report_error(NULL, j->local, rv, detail);
        }
    } else if (j->has_time) {
        /* download, time pass: the local directory gets the server's time */
        struct timespec ts[2] = {{0, UTIME_OMIT}, j->mtime};
        if (utimensat(AT_FDCWD, j->local, ts, 0) != 0)
            fbcp_warn("%s: cannot set its modification time: %s", j->local, strerror(errno));
    }
    fbcp_progress_tree_enter(-1);
    return rv;
}

static void *fbcp_worker_main(void *p)
{
    fbcp_worker *w = p;
    fbcp_tree *t = w->t;

    pthread_mutex_lock(&t->mu);
    for (;;) {
        fbcp_job j;
        fb_err rv;
        int big;
        uint64_t pack;

        /* Nothing queued: the packs being filled go as they are once no directory is being
         * listed (a listing would only add to them; after it, waiting gains nothing). */
        while (t->head == t->queue.n && !t->stop && !fbcp_interrupted) {
            if (t->listing == 0 && fbcp_tree_flush_packs(t) != FB_OK) {
                fbcp_report_error(NULL, NULL, FB_ERR_NOMEM, NULL);
                t->stop = 1;
            }
            if (t->head < t->queue.n || t->busy == 0)
                break;
            fbcp_cond_wait_ms(&t->cv, &t->mu, 200);
        }
        if (t->head == t->queue.n || t->stop || fbcp_interrupted)
            break;
        j = t->queue.v[t->head];
        memset(&t->queue.v[t->head], 0, sizeof(j));
        t->head++;
        t->busy++;
        t->listing += j.kind == FBCP_JOB_LIST;
        big = j.kind == FBCP_JOB_FILE && j.size >= FBCP_BIG_FILE && t->nworkers > 1;
        pack = (j.kind == FBCP_JOB_PACK_UP || j.kind == FBCP_JOB_PACK_DOWN) && t->nworkers > 1 ? j.size : 0;
        /* one big file at a time, packs up to FBCP_PACK_BYTES_AT_ONCE: they wait here (still
         * counted busy, so the pass does not end) */
        while (((big && t->big_running) || (pack && t->pack_bytes_running > 0 &&
                                            t->pack_bytes_running + pack > FBCP_PACK_BYTES_AT_ONCE)) &&
               !t->stop && !fbcp_interrupted)
            fbcp_cond_wait_ms(&t->cv, &t->mu, 200);
        t->big_running += big;
        t->pack_bytes_running += pack;
        pthread_mutex_unlock(&t->mu);

        rv = t->stop || fbcp_interrupted ? FB_OK : fbcp_worker_run(w, &j);
        fbcp_job_free(&j);

        pthread_mutex_lock(&t->mu);
        t->big_running -= big;
        t->pack_bytes_running -= pack;
        t->busy--;
        t->listing -= j.kind == FBCP_JOB_LIST;
        if (rv != FB_OK && fbcp_err_stops_run(rv))
            t->stop = 1;
        pthread_cond_broadcast(&t->cv);
    }
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

static fb_err fbcp_worker_init(fbcp_worker *w, fbcp_tree *t)
{
    fb_err rv;

    memset(w, 0, sizeof(*w));
    w->t = t;
    w->c.opts = &t->worker_opts;
    rv = fbcp_http_new(&w->c.http, &t->worker_opts);
    if (rv == FB_OK)
        rv = fbcp_transport_http_new(&w->c.transport, w->c.http);
    if (rv == FB_OK && t->worker_opts.fallback != FBCP_FALLBACK_FORCE)
        rv = fbcp_transport_udp_new(&w->c.udp, &t->worker_opts);
    return rv;
}

static void fbcp_worker_cleanup(fbcp_worker *w)
{
    if (w->c.transport != NULL)
        w->c.transport->ops->destroy(w->c.transport);
    if (w->c.udp != NULL)
        w->c.udp->ops->destroy(w->c.udp);
    fbcp_http_free(w->c.http);
    memset(&w->c, 0, sizeof(w->c));
}

/* Runs the queue to its end with the workers (the calling thread is one of them). */
static fb_err fbcp_tree_pass(fbcp_tree *t, fbcp_worker *ws, int time_pass)
{
    for (int i = 0; i < t->nworkers; i++)
        ws[i].time_pass = time_pass;
    for (int i = 1; i < t->nworkers; i++) {
        if (pthread_create(&ws[i].thread, NULL, fbcp_worker_main, &ws[i]) != 0)
            break; /* fewer workers: slower, not wrong */
        ws[i].started = 1;
    }
    fbcp_worker_main(&ws[0]);
    for (int i = 1; i < t->nworkers; i++) {
        if (ws[i].started)
            pthread_join(ws[i].thread, NULL);
        ws[i].started = 0;
    }
    return FB_OK;
}

/* As many workers as --transfers, but no more than there are files when no directory is to be
 * listed (one file is moved by one thread, as before there were workers); the run's limits are
 * totals, so every worker gets its share of them. */
static void fbcp_tree_size_workers(fbcp_tree *t)
{
    const fbcp_opts *o = t->opts;
    int lists = 0;

    for (size_t i = t->head; i < t->queue.n; i++)
        lists |= t->queue.v[i].kind == FBCP_JOB_LIST;
    if (!lists && t->queue.n - t->head < (size_t)t->nworkers)
        t->nworkers = t->queue.n - t->head > 0 ? (int)(t->queue.n - t->head) : 1;
    if (o->limit_rate > 0)
        t->worker_opts.limit_rate = o->limit_rate / (uint64_t)t->nworkers + (t->nworkers > 1);
    if (o->target_rate > 0)
        t->worker_opts.target_rate = o->target_rate / (uint64_t)t->nworkers + (t->nworkers > 1);
    if (o->min_rate > 0)
        t->worker_opts.min_rate = o->min_rate / (uint64_t)t->nworkers;
    if (t->worker_opts.min_rate == 0 && o->min_rate > 0)
        t->worker_opts.min_rate = 1;
}

fb_err fbcp_tree_run(fbcp_tree *t)
{
    fbcp_worker *ws;
    fb_err rv;
    int n = 0;

    fbcp_tree_size_workers(t);
    ws = calloc((size_t)t->nworkers, sizeof(*ws));
    rv = ws != NULL ? FB_OK : FB_ERR_NOMEM;

    for (; rv == FB_OK && n < t->nworkers; n++)
        rv = fbcp_worker_init(&ws[n], t);
    if (rv != FB_OK) {
        fbcp_report_error(NULL, NULL, rv, "cannot set up the transfer workers");
    } else {
        if (t->nworkers > 1)
            fbcp_progress_tree_begin(); /* several files at once: the bar shows the run */
        fbcp_tree_pass(t, ws, 0);
        /* the directories' times, once every file in them has landed */
        if (t->opts->preserve_times && !t->stop && !fbcp_interrupted && t->dirs.n > 0 && !t->mkcol_missing) {
            fbcp_jobs_free(&t->queue);
            t->head = 0;
            t->queue = t->dirs;
            memset(&t->dirs, 0, sizeof(t->dirs));
            fbcp_tree_pass(t, ws, 1);
        }
        fbcp_progress_tree_end();
    }
    for (int i = 0; i < n; i++)
        fbcp_worker_cleanup(&ws[i]);
    free(ws);
    return rv;
}
