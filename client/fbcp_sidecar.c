/* fbcp_sidecar: the download sidecar ".<name>.fbpart.json" (docs/fbcp.md): the remote file's
 * URL, size and validators, the chunks done and their SHA-256s; JSON via jansson, written
 * atomically (temporary file, fsync, rename). */
#include "fbcp.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

/* ---------------------------------------------------------------- sidecar */

void fbcp_sidecar_init(fbcp_sidecar *s)
{
    memset(s, 0, sizeof(*s));
    fbcp_ranges_init(&s->done);
}

void fbcp_sidecar_free(fbcp_sidecar *s)
{
    free(s->url);
    free(s->etag);
    free(s->chunk_sha);
    fbcp_ranges_free(&s->done);
    memset(s, 0, sizeof(*s));
}

fb_err fbcp_sidecar_set_hashes(fbcp_sidecar *s, const unsigned char *sha, uint64_t n)
{
    unsigned char *copy = NULL;

    if (n > 0) {
        if (n > SIZE_MAX / 32 || (copy = malloc((size_t)n * 32)) == NULL)
            return FB_ERR_NOMEM;
        memcpy(copy, sha, (size_t)n * 32);
    }
    free(s->chunk_sha);
    s->chunk_sha = copy;
    s->nhashed = n;
    return FB_OK;
}

fb_err fbcp_sidecar_write(const char *path, const fbcp_sidecar *s)
{
    json_t *doc = NULL, *done = fbcp_ranges_to_json(&s->done);
    char *text = NULL, *tmp = NULL, *hex = NULL;
    size_t len, off = 0, tl = strlen(path) + 8;
    int fd = -1;
    fb_err rv = FB_ERR_NOMEM;

    if (done == NULL)
        goto out;
    /* the chunk digests as one hex string, chunk 0 first */
    hex = malloc((size_t)s->nhashed * 64 + 1);
    if (hex == NULL) {
        json_decref(done);
        goto out;
    }
    hex[0] = '\0';
    for (uint64_t i = 0; i < s->nhashed; i++)
        fb_hex_encode(hex + i * 64, s->chunk_sha + i * 32, 32);
    doc = json_pack("{s:i, s:s, s:I, s:s, s:I, s:o, s:s}", "version", FBCP_SIDECAR_VERSION, "url", s->url,
                    "size", (json_int_t)s->size, "etag", s->etag != NULL ? s->etag : "", "chunk_size",
                    (json_int_t)s->chunk_size, "done", done, "chunk_sha256", hex);
    done = NULL; /* owned by doc now (or freed by json_pack on failure) */
    if (doc == NULL)
        goto out;
    text = json_dumps(doc, JSON_COMPACT);
    tmp = malloc(tl);
    if (text == NULL || tmp == NULL)
        goto out;
    snprintf(tmp, tl, "%s.tmp", path);
    rv = FB_ERR_LOCAL_IO;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        goto out;
    len = strlen(text);
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        off += (size_t)n;
    }
    if (write(fd, "\n", 1) != 1 || fsync(fd) != 0)
        goto out;
    if (close(fd) != 0) {
        fd = -1;
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0)
        goto out;
    rv = FB_OK;
out:
    if (fd >= 0)
        close(fd);
    if (rv != FB_OK && tmp != NULL)
        unlink(tmp);
    free(tmp);
    free(text);
    free(hex);
    json_decref(doc);
    return rv;
}

fb_err fbcp_sidecar_read(fbcp_sidecar *s, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *buf = NULL;
    size_t off = 0;
    json_t *doc = NULL;
    json_int_t version = 0, size = -1, chunk = 0;
    const char *url = NULL, *etag = NULL, *hex = NULL;
    json_t *done = NULL;
    fb_err rv = FB_ERR_LOCAL_IO;
    size_t hexlen;

    fbcp_sidecar_init(s);
    if (fd < 0)
        return errno == ENOENT ? FB_ERR_NOT_FOUND : FB_ERR_LOCAL_IO;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > 64 * 1024 * 1024)
        goto out;
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL)
        goto out;
    while (off < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + off, (size_t)st.st_size - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        off += (size_t)n;
    }
    doc = json_loadb(buf, off, 0, NULL);
    if (doc == NULL ||
        json_unpack(doc, "{s:I, s:s, s:I, s:s, s:I, s:o, s:s}", "version", &version, "url", &url, "size",
                    &size, "etag", &etag, "chunk_size", &chunk, "done", &done, "chunk_sha256", &hex) != 0)
        goto out;
    if (version != FBCP_SIDECAR_VERSION || size < 0 || chunk <= 0 || chunk > (json_int_t)UINT32_MAX)
        goto out;
    /* whole digests, no more than the file has chunks */
    hexlen = strlen(hex);
    if (hexlen % 64 != 0 || hexlen / 64 > ((uint64_t)size + (uint64_t)chunk - 1) / (uint64_t)chunk)
        goto out;
    s->nhashed = hexlen / 64;
    if (s->nhashed > 0) {
        s->chunk_sha = malloc((size_t)s->nhashed * 32);
        if (s->chunk_sha == NULL)
            goto out;
        for (uint64_t i = 0; i < s->nhashed; i++) {
            char one[65];

            memcpy(one, hex + i * 64, 64);
            one[64] = '\0';
            if (fb_hex_decode(s->chunk_sha + i * 32, 32, one) != FB_OK)
                goto out;
        }
    }
    s->size = (uint64_t)size;
    s->chunk_size = (uint32_t)chunk;
    s->url = strdup(url);
    s->etag = strdup(etag);
    if (s->url == NULL || s->etag == NULL || fbcp_ranges_from_json(&s->done, done, s->size) != FB_OK)
        goto out;
    rv = FB_OK;
out:
    if (rv != FB_OK)
        fbcp_sidecar_free(s);
    json_decref(doc);
    free(buf);
    close(fd);
    return rv;
}
