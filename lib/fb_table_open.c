/* fb_table_open: creating and attaching the session table's shared file (DESIGN.md section 3).
 *
 * Creating builds the whole file under a private temporary name and publishes it with link(),
 * so a reader never sees a half-built table and racing creators all end on the first one.
 * Attaching checks ownership, mode and layout before mapping. The slots' state changes are
 * fb_table.c. */
#include "fb_table.h"
#include "fb_table_private.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#define TABLE_FILE_MODE 0660
#define TABLE_DIR_MODE 0770
#define TABLE_OPEN_ATTEMPTS 5 /* open/create rounds when the path keeps vanishing */

/* ---- creating and attaching ---- */

/* mkdir -p of the directory part of PATH, each new directory 0770 (explicitly, whatever the
 * umask) and given to OWNER_UID/GID when we are root, so unprivileged children can reach it. */
static fb_err table_make_parent(const char *path, const fb_table_opts *opts, char *errbuf, size_t errlen)
{
    char dir[PATH_MAX];
    char *slash;
    size_t len = strlen(path);
    struct stat st;

    if (len >= sizeof(dir)) {
        table_errf(errbuf, errlen, "session table path too long: %s", path);
        return FB_ERR_CONFIG;
    }
    memcpy(dir, path, len + 1);
    slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir)
        return FB_OK; /* relative name in the cwd, or directly under / */
    *slash = '\0';
    if (stat(dir, &st) == 0)
        return FB_OK;

    /* Walk forward creating each missing component; bounded by the path length. */
    for (char *p = dir + 1;; p++) {
        int last = (*p == '\0');

        if (*p != '/' && !last)
            continue;
        *p = '\0';
        if (mkdir(dir, TABLE_DIR_MODE) == 0) {
            if (chmod(dir, TABLE_DIR_MODE) != 0) {
                table_errf(errbuf, errlen, "chmod %s: %s", dir, strerror(errno));
                return fb_err_from_errno(errno);
            }
            if (geteuid() == 0 && (opts->owner_uid != (uid_t)-1 || opts->owner_gid != (gid_t)-1) &&
                chown(dir, opts->owner_uid, opts->owner_gid) != 0) {
                table_errf(errbuf, errlen, "chown %s: %s", dir, strerror(errno));
                return fb_err_from_errno(errno);
            }
        } else if (errno != EEXIST) {
            table_errf(errbuf, errlen, "cannot create directory %s: %s", dir, strerror(errno));
            return fb_err_from_errno(errno);
        }
        if (last)
            break;
        *p = '/';
    }
    return FB_OK;
}

/* Builds a complete table under a temporary name and publishes it at PATH unless a table is
 * already there (then the caller attaches to that one). */
static fb_err table_create(const char *path, const fb_table_opts *opts, char *errbuf, size_t errlen)
{
    char tmp[PATH_MAX];
    unsigned char rnd[8];
    char rndhex[2 * sizeof(rnd) + 1];
    fb_table_header *hdr = MAP_FAILED;
    uint64_t total;
    int fd = -1, tmp_made = 0, n;
    fb_err rc = FB_OK;

    if (opts->nslots == 0 || opts->nslots > FB_TABLE_MAX_SLOTS) {
        table_errf(errbuf, errlen, "session table: %u slots requested, allowed 1..%u", opts->nslots,
                   FB_TABLE_MAX_SLOTS);
        return FB_ERR_CONFIG;
    }
    total = sizeof(fb_table_header) + (uint64_t)opts->nslots * sizeof(fb_slot);

    rc = table_make_parent(path, opts, errbuf, errlen);
    if (rc != FB_OK)
        return rc;

    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        table_errf(errbuf, errlen, "session table: no random bytes");
        return FB_ERR_INTERNAL;
    }
    table_hex(rndhex, rnd, sizeof(rnd));
    n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld.%s", path, (long)getpid(), rndhex);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        table_errf(errbuf, errlen, "session table path too long: %s", path);
        return FB_ERR_CONFIG;
    }

    fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, TABLE_FILE_MODE);
    if (fd < 0) {
        table_errf(errbuf, errlen, "cannot create %s: %s", tmp, strerror(errno));
        rc = fb_err_from_errno(errno);
        goto out;
    }
    tmp_made = 1;
    if (fchmod(fd, TABLE_FILE_MODE) != 0) { /* the umask may have removed group bits */
        table_errf(errbuf, errlen, "chmod %s: %s", tmp, strerror(errno));
        rc = fb_err_from_errno(errno);
        goto out;
    }
    if (geteuid() == 0 && (opts->owner_uid != (uid_t)-1 || opts->owner_gid != (gid_t)-1) &&
        fchown(fd, opts->owner_uid, opts->owner_gid) != 0) {
        table_errf(errbuf, errlen, "chown %s: %s", tmp, strerror(errno));
        rc = fb_err_from_errno(errno);
        goto out;
    }
    if (ftruncate(fd, (off_t)total) != 0) {
        table_errf(errbuf, errlen, "cannot size %s: %s", tmp, strerror(errno));
        rc = fb_err_from_errno(errno);
        goto out;
    }
    /* Reserve the pages now: on a full tmpfs a later first touch would be SIGBUS in a writer. */
    n = posix_fallocate(fd, 0, (off_t)total);
    if (n != 0 && n != EOPNOTSUPP && n != EINVAL) {
        table_errf(errbuf, errlen, "cannot allocate %s: %s", tmp, strerror(n));
        rc = fb_err_from_errno(n);
        goto out;
    }

    /* Slots are all zero from ftruncate: FREE, unowned, seq 0. Only the header is written. */
    hdr = mmap(NULL, sizeof(*hdr), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (hdr == MAP_FAILED) {
        table_errf(errbuf, errlen, "cannot map %s: %s", tmp, strerror(errno));
        rc = fb_err_from_errno(errno);
        goto out;
    }
    hdr->version_major = FB_TABLE_VERSION_MAJOR;
    hdr->version_minor = FB_TABLE_VERSION_MINOR;
    hdr->header_size = sizeof(fb_table_header);
    hdr->total_size = total;
    hdr->slot_size = sizeof(fb_slot);
    hdr->nslots = opts->nslots;
    if (RAND_bytes(hdr->boot_id, sizeof(hdr->boot_id)) != 1) {
        table_errf(errbuf, errlen, "session table: no random bytes");
        rc = FB_ERR_INTERNAL;
        goto out;
    }
    atomic_store_explicit(&hdr->heartbeat_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&hdr->udpd_pid, 0, memory_order_relaxed);
    /* The magic last: anything that sees it sees a complete header (VSM style). */
    atomic_thread_fence(memory_order_release);
    memcpy(hdr->magic, FB_TABLE_MAGIC, sizeof(hdr->magic));
    if (msync(hdr, sizeof(*hdr), MS_SYNC) != 0) {
        table_errf(errbuf, errlen, "msync %s: %s", tmp, strerror(errno));
        rc = fb_err_from_errno(errno);
        goto out;
    }

    /* link() never replaces: if another process published first, we attach to theirs. */
    if (link(tmp, path) != 0 && errno != EEXIST) {
        int link_errno = errno;

        /* Some file systems have no hard links: an exclusive rename does the same job. */
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == 0) {
            tmp_made = 0;
        } else if (errno != EEXIST) {
            table_errf(errbuf, errlen, "cannot publish session table %s: %s", path, strerror(link_errno));
            rc = fb_err_from_errno(link_errno);
            goto out;
        }
    }

out:
    if (hdr != MAP_FAILED)
        munmap(hdr, sizeof(*hdr));
    if (fd >= 0)
        close(fd);
    if (tmp_made)
        unlink(tmp);
    return rc;
}

static int table_owner_trusted(uid_t uid, const fb_table_opts *opts)
{
    if (uid == 0 || uid == geteuid())
        return 1;
    if (opts == NULL)
        return 0;
    return (opts->trusted_uid != (uid_t)-1 && uid == opts->trusted_uid) ||
           (opts->owner_uid != (uid_t)-1 && uid == opts->owner_uid);
}

/* Opens and validates an existing table. FB_ERR_NOT_FOUND (errno ENOENT) if absent. */
static fb_err table_attach(fb_table **ptable, const char *path, const fb_table_opts *opts, char *errbuf,
                           size_t errlen)
{
    fb_table_header hdr;
    struct stat st;
    fb_table *table = NULL;
    void *base = MAP_FAILED;
    ssize_t got;
    uint64_t expect;
    int fd;
    fb_err rc = FB_OK;

    fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (errno == ENOENT) {
            table_errf(errbuf, errlen, "session table %s does not exist", path);
            return FB_ERR_NOT_FOUND;
        }
        if (errno == ELOOP) {
            table_errf(errbuf, errlen, "session table %s is a symbolic link; refusing it", path);
            return FB_ERR_SHM_PERMS;
        }
        table_errf(errbuf, errlen, "cannot open session table %s: %s", path, strerror(errno));
        return fb_err_from_errno(errno);
    }
    if (fstat(fd, &st) != 0) {
        table_errf(errbuf, errlen, "cannot stat session table %s: %s", path, strerror(errno));
        rc = fb_err_from_errno(errno);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        table_errf(errbuf, errlen, "session table %s is not a regular file", path);
        rc = FB_ERR_SHM_PERMS;
        goto out;
    }
    /* The slots hold session keys: never usable by others. */
    if ((st.st_mode & 0007) != 0) {
        table_errf(errbuf, errlen, "session table %s has mode %04o: others must have no access (use 0660)",
                   path, (unsigned)(st.st_mode & 07777));
        rc = FB_ERR_SHM_PERMS;
        goto out;
    }
    if (!table_owner_trusted(st.st_uid, opts)) {
        table_errf(errbuf, errlen, "session table %s is owned by uid %lu, which is not trusted", path,
                   (unsigned long)st.st_uid);
        rc = FB_ERR_SHM_PERMS;
        goto out;
    }
    if ((uint64_t)st.st_size < sizeof(hdr)) {
        table_errf(errbuf, errlen, "%s is not a session table (only %lld bytes)", path,
                   (long long)st.st_size);
        rc = FB_ERR_SHM_VERSION;
        goto out;
    }
    got = pread(fd, &hdr, sizeof(hdr), 0);
    if (got != (ssize_t)sizeof(hdr)) {
        table_errf(errbuf, errlen, "cannot read session table header %s: %s", path,
                   got < 0 ? strerror(errno) : "short read");
        rc = FB_ERR_IO;
        goto out;
    }
    if (memcmp(hdr.magic, FB_TABLE_MAGIC, sizeof(hdr.magic)) != 0) {
        table_errf(errbuf, errlen, "%s is not a session table (bad magic)", path);
        rc = FB_ERR_SHM_VERSION;
        goto out;
    }
    if (hdr.version_major != FB_TABLE_VERSION_MAJOR) {
        table_errf(errbuf, errlen,
                   "session table %s has layout version %u.%u, this build understands major version %u; "
                   "stop every process using it and remove it",
                   path, (unsigned)hdr.version_major, (unsigned)hdr.version_minor, FB_TABLE_VERSION_MAJOR);
        rc = FB_ERR_SHM_VERSION;
        goto out;
    }
    expect = sizeof(fb_table_header) + (uint64_t)hdr.nslots * sizeof(fb_slot);
    if (hdr.header_size != sizeof(fb_table_header) || hdr.slot_size != sizeof(fb_slot) || hdr.nslots == 0 ||
        hdr.nslots > FB_TABLE_MAX_SLOTS || hdr.total_size != expect || (uint64_t)st.st_size != expect) {
        table_errf(errbuf, errlen,
                   "session table %s has an inconsistent layout (header %u, slot %u, %u slots, total %llu, "
                   "file %lld bytes; expected header %zu, slot %zu)",
                   path, hdr.header_size, hdr.slot_size, hdr.nslots, (unsigned long long)hdr.total_size,
                   (long long)st.st_size, sizeof(fb_table_header), sizeof(fb_slot));
        rc = FB_ERR_SHM_VERSION;
        goto out;
    }

    base = mmap(NULL, (size_t)expect, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        table_errf(errbuf, errlen, "cannot map session table %s: %s", path, strerror(errno));
        rc = fb_err_from_errno(errno);
        goto out;
    }
    table = calloc(1, sizeof(*table));
    if (table == NULL) {
        rc = FB_ERR_NOMEM;
        goto out;
    }
    table->base = base;
    table->map_size = (size_t)expect;
    table->nslots = hdr.nslots;
    {
        uint32_t start = 0;

        if (RAND_bytes((unsigned char *)&start, sizeof(start)) != 1)
            start = (uint32_t)getpid();
        atomic_init(&table->cursor, start % hdr.nslots);
    }
    base = MAP_FAILED;
    *ptable = table;

out:
    if (base != MAP_FAILED)
        munmap(base, (size_t)expect);
    close(fd);
    return rc;
}

fb_err fb_table_open(fb_table **ptable, const char *path, const fb_table_opts *opts, char *errbuf,
                     size_t errlen)
{
    fb_err rc = FB_ERR_NOT_FOUND;

    if (ptable == NULL || path == NULL || path[0] == '\0') {
        table_errf(errbuf, errlen, "session table: no path");
        return FB_ERR_CONFIG;
    }
    *ptable = NULL;
    table_errf(errbuf, errlen, "%s", "");
    /* Bounded: the file can vanish between our link() and open() only if someone removes it. */
    for (int attempt = 0; attempt < TABLE_OPEN_ATTEMPTS; attempt++) {
        rc = table_attach(ptable, path, opts, errbuf, errlen);
        if (rc != FB_ERR_NOT_FOUND || opts == NULL || !opts->create)
            return rc;
        rc = table_create(path, opts, errbuf, errlen);
        if (rc != FB_OK)
            return rc;
    }
    table_errf(errbuf, errlen, "session table %s keeps disappearing", path);
    return FB_ERR_IO;
}

void fb_table_close(fb_table *table)
{
    if (table == NULL)
        return;
    munmap(table->base, table->map_size);
    free(table);
}

fb_table_header *fb_table_header_get(fb_table *table)
{
    return (fb_table_header *)table->base;
}

uint32_t fb_table_nslots(const fb_table *table)
{
    return table->nslots;
}

fb_slot *fb_table_slot(fb_table *table, uint32_t index)
{
    if (index >= table->nslots)
        return NULL;
    return (fb_slot *)(table->base + sizeof(fb_table_header) + (size_t)index * sizeof(fb_slot));
}
