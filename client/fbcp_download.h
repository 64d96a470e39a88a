/* fbcp_download.h: one download's state, shared by fbcp_download.c (the download) and
 * fbcp_download_hash.c (hashing, resume check and checkpoints beside it). Private to client/. */
#ifndef FBCP_DOWNLOAD_H
#define FBCP_DOWNLOAD_H

#include "fbcp.h"

typedef struct fbcp_download {
    fbcp_ctx *c;
    fbcp_xfer x;
    char *files_url;
    char *partial;
    char *sidecar_path;
    char *dir; /* directory of the target, for the final fsync */
    fbcp_sidecar sc;
    uint64_t since_ckpt; /* bytes completed since the last checkpoint */
    int ckpt_warned;
    int64_t filetime;
    fbcp_switch sw;            /* the transport choice for this file */
    struct fbcp_dl_hash *hash; /* the digest of what is on disk, beside the transfer */
    struct fbcp_dl_ckpt *ckpt; /* the checkpoint being written, or NULL */
    int etag_checked;          /* the session's ETag was compared with HEAD's, and equal (both present) */
    int have_expect_sha;       /* the server gave the file's SHA-256 (EXPECT_SHA) */
    unsigned char expect_sha[FB_SHA256_LEN];
} fbcp_download;

/* fbcp_download_hash.c */
/* (Re)starts the hashing thread for the partial file as it is now. Without it, the finish hashes. */
void fbcp_download_hash_start(fbcp_download *d);
/* Tells the thread how far the file is complete on disk and which of the chunks touched by
 * [OFF, OFF+LEN) are now complete (LEN 0: none). */
void fbcp_download_hash_ready(fbcp_download *d, uint64_t off, uint64_t len);
/* Stops the thread (STOP) or waits for it to hash everything, and frees it; the digest into OUT
 * (when not NULL). */
fb_err fbcp_download_hash_end(fbcp_download *d, int stop, unsigned char out[FB_SHA256_LEN]);
/* A resume keeps of OLD's done ranges only the whole chunks that still have the digest recorded
 * when they were written; OUT gets what is kept. */
fb_err fbcp_download_keep_verified(fbcp_download *d, const fbcp_sidecar *old, fbcp_ranges *out);
/* Waits for the checkpoint being written, if any; FB_ERR_LOCAL_IO when its fdatasync failed. */
fb_err fbcp_download_ckpt_join(fbcp_download *d);
/* fdatasync the partial file, then record what it holds; now, on this thread (at the end). */
fb_err fbcp_download_checkpoint(fbcp_download *d);
/* Starts a checkpoint on its thread, unless the previous one is still being written. */
fb_err fbcp_download_checkpoint_behind(fbcp_download *d);

#endif
