/* fbcp_upload.h: one upload's state, shared by fbcp_upload.c (the upload) and
 * fbcp_upload_hash.c (its SHA-256 beside the transfer). Private to client/. */
#ifndef FBCP_UPLOAD_H
#define FBCP_UPLOAD_H

#include <pthread.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "fbcp.h"

/* The file's SHA-256 in file order. POS only grows; whoever hashes [POS, ...) claims it first and
 * hashes outside the lock, so the thread and a sender never wait for each other's hashing. */
typedef struct fbcp_hash_job {
    pthread_t thread;
    int started;
    int fd;
    uint64_t size;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    EVP_MD_CTX *md;
    uint64_t pos; /* bytes hashed */
    int claimed;  /* [POS, CLAIM_END) is being hashed outside the lock */
    uint64_t claim_end;
    int stop;              /* the upload ended early: stop hashing */
    uint64_t read_low;     /* lowest offset an HTTP(S) sender is still to read; UINT64_MAX: none */
    uint64_t hint_ns;      /* when READ_LOW was last published */
    uint64_t moved_ns;     /* when POS last moved */
    uint64_t inline_bytes; /* hashed from the senders' buffers (for -v) */
    unsigned char digest[FB_SHA256_LEN];
    fb_err rv;
} fbcp_hash_job;

typedef struct fbcp_upload {
    fbcp_ctx *c;
    fbcp_xfer x;
    mode_t mode;
    struct stat source_st; /* the local file when the upload began (its time; unchanged at commit) */
    int local_changed;     /* the local file changed while it was read: nothing to start over */
    char sha_hex[FB_SHA256_HEX_LEN + 1];    /* "" until known */
    char source_hex[FB_SHA256_HEX_LEN + 1]; /* the file's identity (fbcp_upload_source_id) */
    fbcp_ranges missing;                    /* from the last session document */
    int done;                               /* the server says the session is done */
    int skipped;                            /* ... because the target is identical (or newer) */
    const char *skip_reason;                /* "identical" or "newer" */
    int resumed;
    /* why POST sessions was refused, from the problem's "target" member: a directory is there,
     * or a file of the same size (if_different, no digest yet) */
    enum { FBCP_TARGET_OTHER, FBCP_TARGET_DIRECTORY, FBCP_TARGET_FILE } refused_by;
    int ask_digest; /* the first session request: ask for the digest rather than replace */
    char *state;
    fbcp_switch sw;      /* the transport choice for this file */
    fbcp_hash_job *hash; /* the digest beside the upload; NULL when computed before it */
    /* A pack (fbcp_upload_pack): the POST sessions body, and the server's answers kept for the
     * caller (the decision per file; the result per file). NULL for one file. */
    json_t *pack_request;
    json_t *pack_answer;
    json_t *commit_answer;
} fbcp_upload;

/* fbcp_upload_hash.c */
/* Starts the hashing thread on J (its FD and SIZE set). */
fb_err fbcp_hash_start(fbcp_hash_job *j);
/* Waits for the thread (STOP: asks it to stop first) and frees what fbcp_hash_start made. */
void fbcp_hash_finish(fbcp_hash_job *j, int stop);

#endif
