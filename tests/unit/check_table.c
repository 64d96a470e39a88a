/* Unit tests for fb_table: the shared session table (creation, attach checks, claim/release
 * under concurrency, recovery from processes killed at awkward moments, lookups, bitmap).
 * Every test works in its own directory under one /dev/shm directory that the unchecked
 * fixture removes, so nothing is left behind even when a test fails. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <dirent.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fb_table.h"

#define NS_PER_S 1000000000ull
#define TPATH 256 /* test paths stay short */

static char g_top[128]; /* removed by the unchecked teardown */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void top_setup(void)
{
    snprintf(g_top, sizeof(g_top), "/dev/shm/check_table.XXXXXX");
    if (mkdtemp(g_top) == NULL) {
        perror("mkdtemp");
        abort();
    }
}

static void top_teardown(void)
{
    nftw(g_top, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh directory for one test; PATH gets DIR/table. */
static void test_dir(char dir[TPATH], char path[TPATH])
{
    snprintf(dir, TPATH, "%.128s/t.XXXXXX", g_top);
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, TPATH, "%.200s/table", dir);
}

static fb_table_opts opts_create(uint32_t nslots)
{
    fb_table_opts o;

    memset(&o, 0, sizeof(o));
    o.nslots = nslots;
    o.create = 1;
    o.owner_uid = (uid_t)-1;
    o.owner_gid = (gid_t)-1;
    o.trusted_uid = (uid_t)-1;
    return o;
}

static fb_table *open_new(const char *path, uint32_t nslots)
{
    fb_table_opts o = opts_create(nslots);
    fb_table *t = NULL;
    char err[256];
    fb_err rc = fb_table_open(&t, path, &o, err, sizeof(err));

    ck_assert_msg(rc == FB_OK, "fb_table_open: %d %s", rc, err);
    return t;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* Claims a slot and publishes it ACTIVE with the given descriptive fields. */
static uint32_t make_active(fb_table *t, fb_direction dir, const char *user, const char *docroot,
                            const char *relpath, uint64_t size, const uint8_t random[FB_ID_RANDOM_LEN])
{
    uint32_t idx = UINT32_MAX;
    fb_slot *s;

    ck_assert_int_eq(fb_table_claim(t, &idx, now_ns(), 0, 3600), FB_OK);
    s = fb_table_slot(t, idx);
    fb_slot_info_write_begin(s);
    s->info.direction = dir;
    s->info.size = size;
    s->info.chunk_size = 1u << 20;
    s->info.nchunks = fb_table_nchunks_for(size, s->info.chunk_size);
    snprintf(s->info.user, sizeof(s->info.user), "%s", user);
    snprintf(s->info.docroot, sizeof(s->info.docroot), "%s", docroot);
    snprintf(s->info.relpath, sizeof(s->info.relpath), "%s", relpath);
    if (random != NULL)
        memcpy(s->info.id_random, random, FB_ID_RANDOM_LEN);
    fb_slot_info_write_end(s);
    ck_assert(fb_slot_transition(s, FB_SLOT_CLAIMED, FB_SLOT_ACTIVE));
    return idx;
}

/* Number of entries in DIR other than . and .. */
static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    ck_assert_ptr_nonnull(d);
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

/* Shared anonymous memory visible to forked children. */
static void *shared_alloc(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

    ck_assert(p != MAP_FAILED);
    return p;
}

static void wait_ok(pid_t pid)
{
    int status = 0;

    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed, status %d", status);
}

/* ---- create / attach ---- */

START_TEST(test_create_then_attach_sees_same_header)
{
    char dir[TPATH], path[TPATH];
    fb_table *a, *b = NULL;
    fb_table_header *ha, *hb;

    test_dir(dir, path);
    a = open_new(path, 7);
    ck_assert_int_eq(fb_table_open(&b, path, NULL, NULL, 0), FB_OK);
    ha = fb_table_header_get(a);
    hb = fb_table_header_get(b);
    ck_assert_mem_eq(hb->magic, FB_TABLE_MAGIC, 8);
    ck_assert_uint_eq(hb->version_major, FB_TABLE_VERSION_MAJOR);
    ck_assert_uint_eq(hb->nslots, 7);
    ck_assert_uint_eq(fb_table_nslots(b), 7);
    ck_assert_uint_eq(hb->slot_size, sizeof(fb_slot));
    ck_assert_uint_eq(hb->total_size, sizeof(fb_table_header) + 7 * sizeof(fb_slot));
    ck_assert_mem_eq(ha->boot_id, hb->boot_id, 16);
    /* Same memory, not a copy: a store through one handle is seen through the other. */
    atomic_store(&ha->heartbeat_ns, 12345);
    ck_assert_uint_eq(atomic_load(&hb->heartbeat_ns), 12345);
    ck_assert_ptr_null(fb_table_slot(b, 7));
    ck_assert_ptr_nonnull(fb_table_slot(b, 6));
    fb_table_close(a);
    fb_table_close(b);
    /* Only the table remains: the temporary file was removed. */
    ck_assert_int_eq(dir_entries(dir), 1);
}
END_TEST

START_TEST(test_missing_table_without_create_is_not_found)
{
    char dir[TPATH], path[TPATH], err[256];
    fb_table_opts o;
    fb_table *t = NULL;

    test_dir(dir, path);
    o = opts_create(4);
    o.create = 0;
    ck_assert_int_eq(fb_table_open(&t, path, &o, err, sizeof(err)), FB_ERR_NOT_FOUND);
    ck_assert_ptr_null(t);
    ck_assert_int_eq(dir_entries(dir), 0);
}
END_TEST

START_TEST(test_other_major_version_refused)
{
    char dir[TPATH], path[TPATH], err[512];
    fb_table *t;
    uint16_t v = FB_TABLE_VERSION_MAJOR + 1, back = 0;
    fb_table_opts o = opts_create(4);
    int fd;

    test_dir(dir, path);
    fb_table_close(open_new(path, 4));
    fd = open(path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, &v, sizeof(v), offsetof(fb_table_header, version_major)), sizeof(v));
    t = NULL;
    ck_assert_int_eq(fb_table_open(&t, path, &o, err, sizeof(err)), FB_ERR_SHM_VERSION);
    ck_assert_ptr_null(t);
    {
        char found[32], wanted[32];
        snprintf(found, sizeof(found), "version %u.0", (unsigned)v);
        snprintf(wanted, sizeof(wanted), "major version %u", (unsigned)FB_TABLE_VERSION_MAJOR);
        ck_assert_msg(strstr(err, found) != NULL && strstr(err, wanted) != NULL, "message: %s", err);
    }
    /* Even with create set, the foreign table is left as it is. */
    ck_assert_int_eq(pread(fd, &back, sizeof(back), offsetof(fb_table_header, version_major)), sizeof(back));
    ck_assert_uint_eq(back, v);
    close(fd);
}
END_TEST

START_TEST(test_bad_magic_or_layout_refused)
{
    char dir[TPATH], path[TPATH], err[512];
    fb_table *t = NULL;
    static const char zeros[4096];
    int fd;

    test_dir(dir, path);
    fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0660);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, zeros, sizeof(zeros)), sizeof(zeros));
    ck_assert_int_eq(fb_table_open(&t, path, NULL, err, sizeof(err)), FB_ERR_SHM_VERSION);
    ck_assert_msg(strstr(err, "magic") != NULL, "message: %s", err);
    ck_assert_int_eq(ftruncate(fd, 10), 0);
    ck_assert_int_eq(fb_table_open(&t, path, NULL, err, sizeof(err)), FB_ERR_SHM_VERSION);
    close(fd);
    ck_assert_int_eq(unlink(path), 0);

    /* A real table whose file size no longer matches its header. */
    fb_table_close(open_new(path, 2));
    ck_assert_int_eq(truncate(path, sizeof(fb_table_header) + 3 * sizeof(fb_slot)), 0);
    ck_assert_int_eq(fb_table_open(&t, path, NULL, err, sizeof(err)), FB_ERR_SHM_VERSION);
    ck_assert_ptr_null(t);
}
END_TEST

START_TEST(test_world_accessible_table_refused)
{
    char dir[TPATH], path[TPATH], err[256];
    fb_table *t = NULL;

    test_dir(dir, path);
    fb_table_close(open_new(path, 2));
    ck_assert_int_eq(chmod(path, 0664), 0);
    ck_assert_int_eq(fb_table_open(&t, path, NULL, err, sizeof(err)), FB_ERR_SHM_PERMS);
    ck_assert_msg(strstr(err, "0664") != NULL, "message: %s", err);
    ck_assert_int_eq(chmod(path, 0666), 0);
    ck_assert_int_eq(fb_table_open(&t, path, NULL, err, sizeof(err)), FB_ERR_SHM_PERMS);
    ck_assert_int_eq(chmod(path, 0661), 0);
    ck_assert_int_eq(fb_table_open(&t, path, NULL, err, sizeof(err)), FB_ERR_SHM_PERMS);
    ck_assert_ptr_null(t);
    ck_assert_int_eq(chmod(path, 0600), 0);
    ck_assert_int_eq(fb_table_open(&t, path, NULL, err, sizeof(err)), FB_OK);
    fb_table_close(t);
}
END_TEST

START_TEST(test_untrusted_owner_refused)
{
    char dir[TPATH], path[TPATH], err[256];
    fb_table *t = NULL;
    fb_table_opts o = opts_create(2);

    if (geteuid() != 0)
        return; /* needs chown */
    test_dir(dir, path);
    fb_table_close(open_new(path, 2));
    ck_assert_int_eq(chown(path, 12345, 12345), 0);
    ck_assert_int_eq(fb_table_open(&t, path, &o, err, sizeof(err)), FB_ERR_SHM_PERMS);
    ck_assert_msg(strstr(err, "12345") != NULL, "message: %s", err);
    o.trusted_uid = 12345;
    ck_assert_int_eq(fb_table_open(&t, path, &o, err, sizeof(err)), FB_OK);
    fb_table_close(t);
}
END_TEST

START_TEST(test_symlink_and_non_regular_refused)
{
    char dir[TPATH], path[TPATH], link_path[TPATH + 8], err[256];
    fb_table *t = NULL;

    test_dir(dir, path);
    fb_table_close(open_new(path, 2));
    snprintf(link_path, sizeof(link_path), "%s/link", dir);
    ck_assert_int_eq(symlink(path, link_path), 0);
    ck_assert_int_eq(fb_table_open(&t, link_path, NULL, err, sizeof(err)), FB_ERR_SHM_PERMS);
    snprintf(link_path, sizeof(link_path), "%s/fifo", dir);
    ck_assert_int_eq(mkfifo(link_path, 0660), 0);
    ck_assert_int_eq(fb_table_open(&t, link_path, NULL, err, sizeof(err)), FB_ERR_SHM_PERMS);
    ck_assert_ptr_null(t);
}
END_TEST

START_TEST(test_created_with_mode_0660_and_parent_0770)
{
    char dir[TPATH], path[TPATH], deep[TPATH + 32], sub[TPATH + 32];
    struct stat st;
    mode_t old = umask(077);
    fb_table *t;

    test_dir(dir, path);
    snprintf(deep, sizeof(deep), "%s/sub/deeper/table", dir);
    t = open_new(deep, 3);
    umask(old);
    ck_assert_int_eq(stat(deep, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0660);
    ck_assert(S_ISREG(st.st_mode));
    ck_assert_int_eq((long long)st.st_size, (long long)(sizeof(fb_table_header) + 3 * sizeof(fb_slot)));
    snprintf(sub, sizeof(sub), "%s/sub", dir);
    ck_assert_int_eq(stat(sub, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0770);
    snprintf(sub, sizeof(sub), "%s/sub/deeper", dir);
    ck_assert_int_eq(stat(sub, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0770);
    ck_assert_int_eq(dir_entries(sub), 1);
    fb_table_close(t);
}
END_TEST

START_TEST(test_create_chowns_to_owner_and_trusts_it)
{
    char dir[TPATH], path[TPATH], err[256];
    fb_table_opts o = opts_create(2);
    fb_table *t = NULL;
    struct stat st;

    if (geteuid() != 0)
        return;
    test_dir(dir, path);
    o.owner_uid = 23456;
    o.owner_gid = 23457;
    ck_assert_int_eq(fb_table_open(&t, path, &o, err, sizeof(err)), FB_OK);
    fb_table_close(t);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(st.st_uid, 23456);
    ck_assert_uint_eq(st.st_gid, 23457);
}
END_TEST

START_TEST(test_reopen_never_zeroes_existing_slots)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t idx;
    fb_slot *s;
    fb_slot_info info;
    uint8_t boot[16];
    struct stat st;

    test_dir(dir, path);
    t = open_new(path, 4);
    memcpy(boot, fb_table_header_get(t)->boot_id, sizeof(boot));
    idx = make_active(t, FB_DIR_UPLOAD, "keeper", "/srv", "kept.bin", 5u << 20, NULL);
    ck_assert_int_eq(fb_slot_set_chunk(fb_table_slot(t, idx), 3), 1);
    fb_table_close(t);

    t = open_new(path, 9); /* create again with another size: the existing table wins */
    ck_assert_uint_eq(fb_table_nslots(t), 4);
    ck_assert_mem_eq(fb_table_header_get(t)->boot_id, boot, sizeof(boot));
    s = fb_table_slot(t, idx);
    ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_ACTIVE);
    fb_slot_info_read(&info, s);
    ck_assert_str_eq(info.user, "keeper");
    ck_assert_str_eq(info.relpath, "kept.bin");
    ck_assert(fb_slot_chunk_done(s, 3));
    ck_assert_uint_eq(atomic_load(&s->chunks_done), 1);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq((long long)st.st_size, (long long)(sizeof(fb_table_header) + 4 * sizeof(fb_slot)));
    fb_table_close(t);
}
END_TEST

/* ---- concurrency ---- */

#define STRESS_CHILDREN 8
#define STRESS_ROUNDS 2000
#define STRESS_SLOTS 5

struct stress_shared {
    _Atomic int32_t holder[STRESS_SLOTS];
    _Atomic uint32_t violations[5]; /* by kind, see stress_child */
    _Atomic uint32_t go;
};

static int stress_child(const char *path, struct stress_shared *sh)
{
    fb_table *t = NULL;
    int32_t me = (int32_t)getpid();
    char mine[32];
    int spins;

    if (fb_table_open(&t, path, NULL, NULL, 0) != FB_OK)
        return 2;
    snprintf(mine, sizeof(mine), "pid %d", (int)me);
    for (spins = 0; spins < 100000000 && !atomic_load(&sh->go); spins++)
        sched_yield();
    for (int round = 0; round < STRESS_ROUNDS; round++) {
        uint32_t idx = UINT32_MAX;
        fb_slot *s;
        fb_slot_info info;
        int32_t zero = 0;
        fb_err rc = FB_ERR_TABLE_FULL;

        for (int tries = 0; tries < 10000000 && rc == FB_ERR_TABLE_FULL; tries++) {
            rc = fb_table_claim(t, &idx, now_ns(), 0, 3600);
            if (rc == FB_ERR_TABLE_FULL)
                sched_yield();
        }
        if (rc != FB_OK)
            return 3;
        s = fb_table_slot(t, idx);
        if (!atomic_compare_exchange_strong(&sh->holder[idx], &zero, me))
            atomic_fetch_add(&sh->violations[0], 1);
        if (atomic_load(&s->owner_pid) != me || atomic_load(&s->state) != FB_SLOT_CLAIMED)
            atomic_fetch_add(&sh->violations[1], 1);
        fb_slot_info_write_begin(s);
        snprintf(s->info.user, sizeof(s->info.user), "%s", mine);
        fb_slot_info_write_end(s);
        if (round % 7 == 0)
            sched_yield(); /* let others try to take it meanwhile */
        fb_slot_info_read(&info, s);
        if (strcmp(info.user, mine) != 0 || atomic_load(&s->owner_pid) != me)
            atomic_fetch_add(&sh->violations[2], 1);
        if (round % 4 == 3) {
            /* Published, then cancelled by generation. */
            uint32_t gen = atomic_load(&s->generation);

            if (!fb_slot_transition(s, FB_SLOT_CLAIMED, FB_SLOT_ACTIVE))
                atomic_fetch_add(&sh->violations[3], 1);
            atomic_store(&sh->holder[idx], 0);
            if (!fb_slot_cancel(s, gen))
                atomic_fetch_add(&sh->violations[3], 1);
            continue;
        }
        if (round % 4 == 1) {
            /* The full life: ACTIVE, FINALISING (ours alone), DONE. A finished slot may be taken
             * by the next claim at once (fb_table_claim), so it is no longer ours to touch. */
            if (!fb_slot_transition(s, FB_SLOT_CLAIMED, FB_SLOT_ACTIVE) ||
                !fb_slot_transition(s, FB_SLOT_ACTIVE, FB_SLOT_FINALISING) || atomic_load(&s->owner_pid) != me)
                atomic_fetch_add(&sh->violations[3], 1);
            fb_slot_info_read(&info, s);
            if (strcmp(info.user, mine) != 0)
                atomic_fetch_add(&sh->violations[4], 1);
            atomic_store(&sh->holder[idx], 0);
            if (!fb_slot_transition(s, FB_SLOT_FINALISING, FB_SLOT_DONE))
                atomic_fetch_add(&sh->violations[3], 1);
            continue;
        }
        fb_slot_info_read(&info, s);
        if (strcmp(info.user, mine) != 0)
            atomic_fetch_add(&sh->violations[4], 1);
        atomic_store(&sh->holder[idx], 0);
        fb_slot_release(s);
    }
    fb_table_close(t);
    return 0;
}

START_TEST(test_claim_release_exclusive_across_processes)
{
    char dir[TPATH], path[TPATH];
    struct stress_shared *sh = shared_alloc(sizeof(*sh));
    pid_t pids[STRESS_CHILDREN];
    fb_table *t;

    test_dir(dir, path);
    t = open_new(path, STRESS_SLOTS);
    for (int i = 0; i < STRESS_CHILDREN; i++) {
        pids[i] = fork();
        ck_assert_int_ge(pids[i], 0);
        if (pids[i] == 0)
            _exit(stress_child(path, sh));
    }
    atomic_store(&sh->go, 1);
    for (int i = 0; i < STRESS_CHILDREN; i++)
        wait_ok(pids[i]);
    for (int k = 0; k < 5; k++)
        ck_assert_msg(atomic_load(&sh->violations[k]) == 0, "violation kind %d: %u", k,
                      (unsigned)atomic_load(&sh->violations[k]));
    for (uint32_t i = 0; i < STRESS_SLOTS; i++) {
        fb_slot *s = fb_table_slot(t, i);

        uint32_t st = atomic_load(&s->state);

        /* every slot was released, or finished (DONE: nobody's, free for the next claim) */
        ck_assert_msg(st == FB_SLOT_FREE || st == FB_SLOT_DONE, "slot %u left in state %u", i, st);
        ck_assert_int_eq(atomic_load(&s->owner_pid), 0);
        ck_assert_uint_eq(atomic_load(&s->seq) % 2, 0);
    }
    fb_table_close(t);
    munmap(sh, sizeof(*sh));
}
END_TEST

#define CREATORS 8

struct create_shared {
    _Atomic uint32_t go;
    uint8_t boot[CREATORS][16];
};

START_TEST(test_concurrent_creation_yields_one_table)
{
    char dir[TPATH], path[TPATH];
    struct create_shared *sh = shared_alloc(sizeof(*sh));
    pid_t pids[CREATORS];
    fb_table *t = NULL;

    test_dir(dir, path);
    for (int i = 0; i < CREATORS; i++) {
        pids[i] = fork();
        ck_assert_int_ge(pids[i], 0);
        if (pids[i] == 0) {
            fb_table_opts o = opts_create(16);
            fb_table *ct = NULL;

            for (int spins = 0; spins < 100000000 && !atomic_load(&sh->go); spins++)
                ;
            if (fb_table_open(&ct, path, &o, NULL, 0) != FB_OK)
                _exit(2);
            memcpy(sh->boot[i], fb_table_header_get(ct)->boot_id, 16);
            fb_table_close(ct);
            _exit(0);
        }
    }
    atomic_store(&sh->go, 1);
    for (int i = 0; i < CREATORS; i++)
        wait_ok(pids[i]);
    ck_assert_int_eq(fb_table_open(&t, path, NULL, NULL, 0), FB_OK);
    for (int i = 0; i < CREATORS; i++)
        ck_assert_mem_eq(sh->boot[i], fb_table_header_get(t)->boot_id, 16);
    fb_table_close(t);
    ck_assert_int_eq(dir_entries(dir), 1); /* no temporary file left */
    munmap(sh, sizeof(*sh));
}
END_TEST

/* ---- recovery from dead processes ---- */

enum victim_stage { VICTIM_CLAIMED, VICTIM_MID_INFO_WRITE, VICTIM_FINALISING };

/* Forks a process that takes a slot to STAGE and then waits to be killed; returns its pid
 * (already killed with SIGKILL and reaped) and the slot index. */
static pid_t run_victim(const char *path, enum victim_stage stage, uint32_t *pidx)
{
    int pfd[2];
    pid_t pid;
    uint32_t idx = UINT32_MAX;
    int status;

    ck_assert_int_eq(pipe(pfd), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        fb_table *t = NULL;
        fb_slot *s;

        alarm(60); /* never outlive the test */
        close(pfd[0]);
        if (fb_table_open(&t, path, NULL, NULL, 0) != FB_OK ||
            fb_table_claim(t, &idx, now_ns(), 0, 3600) != FB_OK)
            _exit(2);
        s = fb_table_slot(t, idx);
        fb_slot_info_write_begin(s);
        snprintf(s->info.user, sizeof(s->info.user), "victim");
        s->info.size = 10;
        s->info.chunk_size = 4;
        s->info.nchunks = 3;
        if (stage != VICTIM_MID_INFO_WRITE)
            fb_slot_info_write_end(s);
        if (stage == VICTIM_FINALISING) {
            if (!fb_slot_transition(s, FB_SLOT_CLAIMED, FB_SLOT_ACTIVE) ||
                !fb_slot_transition(s, FB_SLOT_ACTIVE, FB_SLOT_FINALISING))
                _exit(3);
        }
        if (write(pfd[1], &idx, sizeof(idx)) != sizeof(idx))
            _exit(4);
        for (;;)
            pause();
    }
    close(pfd[1]);
    ck_assert_int_eq(read(pfd[0], &idx, sizeof(idx)), sizeof(idx));
    close(pfd[0]);
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid); /* a zombie still counts as alive */
    ck_assert(WIFSIGNALED(status));
    *pidx = idx;
    return pid;
}

START_TEST(test_claim_reclaims_slot_of_killed_claimer)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t dead_idx, a, b, c;
    pid_t victim;
    fb_slot *s;
    uint32_t gen;

    test_dir(dir, path);
    t = open_new(path, 2);
    victim = run_victim(path, VICTIM_CLAIMED, &dead_idx);
    s = fb_table_slot(t, dead_idx);
    ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_CLAIMED);
    ck_assert_int_eq(atomic_load(&s->owner_pid), victim);
    gen = atomic_load(&s->generation);

    ck_assert_int_eq(fb_table_claim(t, &a, now_ns(), 0, 3600), FB_OK); /* the free one first */
    ck_assert_uint_ne(a, dead_idx);
    ck_assert_int_eq(fb_table_claim(t, &b, now_ns(), 0, 3600), FB_OK); /* then the dead one */
    ck_assert_uint_eq(b, dead_idx);
    ck_assert_int_eq(atomic_load(&s->owner_pid), getpid());
    ck_assert_uint_eq(atomic_load(&s->generation), gen + 1);
    ck_assert_uint_eq(s->info.user[0], 0);
    ck_assert_int_eq(fb_table_claim(t, &c, now_ns(), 0, 3600), FB_ERR_TABLE_FULL);
    /* Still usable: release and claim again. */
    fb_slot_release(s);
    ck_assert_int_eq(fb_table_claim(t, &c, now_ns(), 0, 3600), FB_OK);
    ck_assert_uint_eq(c, dead_idx);
    fb_table_close(t);
}
END_TEST

START_TEST(test_claim_reclaims_slot_of_writer_killed_mid_write)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t dead_idx, idx;
    fb_slot *s;
    fb_slot_info info;

    test_dir(dir, path);
    t = open_new(path, 1);
    run_victim(path, VICTIM_MID_INFO_WRITE, &dead_idx);
    s = fb_table_slot(t, dead_idx);
    ck_assert_uint_eq(atomic_load(&s->seq) % 2, 1);
    /* A reader does not hang on the dead writer: it gives up and says so. */
    ck_assert_int_eq(fb_slot_info_read_checked(&info, s), 0);

    ck_assert_int_eq(fb_table_claim(t, &idx, now_ns(), 0, 3600), FB_OK);
    ck_assert_uint_eq(idx, dead_idx);
    ck_assert_uint_eq(atomic_load(&s->seq) % 2, 0);
    ck_assert_int_eq(fb_slot_info_read_checked(&info, s), 1);
    ck_assert_str_eq(info.user, "");
    ck_assert_uint_eq(info.size, 0);
    /* And the slot works normally afterwards. */
    fb_slot_info_write_begin(s);
    snprintf(s->info.user, sizeof(s->info.user), "next");
    fb_slot_info_write_end(s);
    ck_assert(fb_slot_transition(s, FB_SLOT_CLAIMED, FB_SLOT_ACTIVE));
    ck_assert_int_eq(fb_slot_info_read_checked(&info, s), 1);
    ck_assert_str_eq(info.user, "next");
    fb_table_close(t);
}
END_TEST

START_TEST(test_recover_returns_dead_finaliser_to_active)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t dead_idx, mine;
    fb_slot *s;
    fb_slot_info info;

    test_dir(dir, path);
    t = open_new(path, 2);
    run_victim(path, VICTIM_FINALISING, &dead_idx);
    s = fb_table_slot(t, dead_idx);
    ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_FINALISING);

    /* A live finaliser (us) is left alone. */
    mine = make_active(t, FB_DIR_UPLOAD, "me", "/d", "f", 1, NULL);
    ck_assert(fb_slot_transition(fb_table_slot(t, mine), FB_SLOT_ACTIVE, FB_SLOT_FINALISING));
    ck_assert_int_eq(fb_table_recover_slot(t, mine), 0);
    ck_assert_uint_eq(atomic_load(&fb_table_slot(t, mine)->state), FB_SLOT_FINALISING);

    ck_assert_int_eq(fb_table_recover_slot(t, dead_idx), 1);
    ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_ACTIVE);
    ck_assert_int_eq(atomic_load(&s->owner_pid), 0);
    fb_slot_info_read(&info, s); /* the session itself is kept: it can commit again */
    ck_assert_str_eq(info.user, "victim");
    ck_assert_int_eq(fb_table_recover_slot(t, dead_idx), 0);
    ck_assert_int_eq(fb_table_recover_slot(t, 99), 0);
    /* It can be finalised again, by us this time. */
    ck_assert(fb_slot_transition(s, FB_SLOT_ACTIVE, FB_SLOT_FINALISING));
    ck_assert_int_eq(atomic_load(&s->owner_pid), getpid());
    fb_table_close(t);
}
END_TEST

START_TEST(test_claim_recovers_dead_finaliser_but_keeps_session)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t dead_idx, idx;
    fb_slot *s;

    test_dir(dir, path);
    t = open_new(path, 1);
    run_victim(path, VICTIM_FINALISING, &dead_idx);
    s = fb_table_slot(t, dead_idx);
    /* Not idle yet: the claim repairs the slot but does not take it. */
    ck_assert_int_eq(fb_table_claim(t, &idx, now_ns(), 3600, 3600), FB_ERR_TABLE_FULL);
    ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_ACTIVE);
    ck_assert_int_eq(atomic_load(&s->owner_pid), 0);
    fb_table_close(t);
}
END_TEST

/* ---- reuse policy ---- */

START_TEST(test_full_table_reports_table_full)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t idx, seen = 0;

    test_dir(dir, path);
    t = open_new(path, 3);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(fb_table_claim(t, &idx, now_ns(), 60, 60), FB_OK);
        ck_assert_uint_lt(idx, 3);
        ck_assert_uint_eq(seen & (1u << idx), 0);
        seen |= 1u << idx;
    }
    ck_assert_int_eq(fb_table_claim(t, &idx, now_ns(), 60, 60), FB_ERR_TABLE_FULL);
    fb_table_close(t);
}
END_TEST

/* A finished session never stands in the way of a new one: with no FREE slot left, the DONE or
 * FAILED slot that finished longest ago is taken at once, inside its linger, and before any idle
 * ACTIVE session. */
START_TEST(test_finished_slot_reused_within_linger_oldest_first)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t a, b, c, again;
    fb_slot *sa, *sb, *sc;
    uint64_t t0;

    test_dir(dir, path);
    t = open_new(path, 3);
    a = make_active(t, FB_DIR_UPLOAD, "u", "/d", "a", 100, NULL);
    b = make_active(t, FB_DIR_UPLOAD, "u", "/d", "b", 100, NULL);
    c = make_active(t, FB_DIR_UPLOAD, "u", "/d", "c", 100, NULL);
    sa = fb_table_slot(t, a);
    sb = fb_table_slot(t, b);
    sc = fb_table_slot(t, c);
    ck_assert_int_eq(fb_slot_set_chunk(sb, 0), 1);
    atomic_store(&sb->bytes_http, 100);
    /* B finished first (done), A later (failed); C stays ACTIVE and idle. */
    ck_assert(fb_slot_transition(sb, FB_SLOT_ACTIVE, FB_SLOT_FINALISING));
    ck_assert(fb_slot_transition(sb, FB_SLOT_FINALISING, FB_SLOT_DONE));
    ck_assert(fb_slot_transition(sa, FB_SLOT_ACTIVE, FB_SLOT_FAILED));
    ck_assert_int_eq(atomic_load(&sb->owner_pid), 0);
    t0 = now_ns();
    atomic_store(&sb->state_since_ns, t0 - 2 * NS_PER_S);
    atomic_store(&sa->state_since_ns, t0 - 1 * NS_PER_S);
    atomic_store(&sc->last_activity_ns, t0 - 1000 * NS_PER_S);

    ck_assert_int_eq(fb_table_claim(t, &again, t0, 60, 300), FB_OK);
    ck_assert_uint_eq(again, b);
    ck_assert_uint_eq(atomic_load(&sb->state), FB_SLOT_CLAIMED);
    /* The new claimer starts clean. */
    ck_assert_uint_eq(atomic_load(&sb->chunks_done), 0);
    ck_assert_uint_eq(atomic_load(&sb->bytes_http), 0);
    ck_assert_uint_eq(atomic_load(&sb->bitmap[0]), 0);
    ck_assert_str_eq(sb->info.user, "");
    ck_assert_int_eq(fb_table_claim(t, &again, t0, 60, 300), FB_OK);
    ck_assert_uint_eq(again, a);
    ck_assert_uint_eq(atomic_load(&sc->state), FB_SLOT_ACTIVE);
    /* Only then the idle ACTIVE one, and with no idle timeout nothing is left. */
    ck_assert_int_eq(fb_table_claim(t, &again, t0, 0, 300), FB_ERR_TABLE_FULL);
    ck_assert_int_eq(fb_table_claim(t, &again, t0, 60, 300), FB_OK);
    ck_assert_uint_eq(again, c);
    ck_assert_int_eq(fb_table_claim(t, &again, t0, 60, 300), FB_ERR_TABLE_FULL);
    fb_table_close(t);
}
END_TEST

/* A FREE slot still comes before a finished one, so a finished session stays visible for its
 * linger while there is room. */
START_TEST(test_free_slot_preferred_over_finished_one)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t done, again;
    fb_slot *s;

    test_dir(dir, path);
    t = open_new(path, 2);
    done = make_active(t, FB_DIR_UPLOAD, "u", "/d", "f", 100, NULL);
    s = fb_table_slot(t, done);
    ck_assert(fb_slot_transition(s, FB_SLOT_ACTIVE, FB_SLOT_FINALISING));
    ck_assert(fb_slot_transition(s, FB_SLOT_FINALISING, FB_SLOT_DONE));
    for (int i = 0; i < 8; i++) { /* whatever the cursor says */
        ck_assert_int_eq(fb_table_claim(t, &again, now_ns(), 0, 300), FB_OK);
        ck_assert_uint_ne(again, done);
        ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_DONE);
        fb_slot_release(fb_table_slot(t, again));
    }
    fb_table_close(t);
}
END_TEST

START_TEST(test_failed_slot_reused_at_once_with_zero_linger)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t idx, again;

    test_dir(dir, path);
    t = open_new(path, 1);
    idx = make_active(t, FB_DIR_DOWNLOAD, "u", "/d", "f", 100, NULL);
    ck_assert(fb_slot_transition(fb_table_slot(t, idx), FB_SLOT_ACTIVE, FB_SLOT_FAILED));
    ck_assert_int_eq(fb_table_claim(t, &again, now_ns(), 0, 0), FB_OK);
    ck_assert_uint_eq(again, idx);
    fb_table_close(t);
}
END_TEST

START_TEST(test_idle_active_reused_only_after_idle_timeout)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t idx, again;
    fb_slot *s;
    uint64_t t0;

    test_dir(dir, path);
    t = open_new(path, 1);
    idx = make_active(t, FB_DIR_UPLOAD, "u", "/d", "f", 100, NULL);
    s = fb_table_slot(t, idx);
    t0 = now_ns();
    atomic_store(&s->last_activity_ns, t0);
    ck_assert_int_eq(fb_table_claim(t, &again, t0 + 29 * NS_PER_S, 30, 0), FB_ERR_TABLE_FULL);
    /* Idle timeout 0 means never. */
    ck_assert_int_eq(fb_table_claim(t, &again, t0 + 100000 * NS_PER_S, 0, 0), FB_ERR_TABLE_FULL);
    /* Activity pushes the deadline. */
    atomic_store(&s->last_activity_ns, t0 + 20 * NS_PER_S);
    ck_assert_int_eq(fb_table_claim(t, &again, t0 + 31 * NS_PER_S, 30, 0), FB_ERR_TABLE_FULL);
    ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_ACTIVE);
    ck_assert_int_eq(fb_table_claim(t, &again, t0 + 51 * NS_PER_S, 30, 0), FB_OK);
    ck_assert_uint_eq(again, idx);
    ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_CLAIMED);
    fb_table_close(t);
}
END_TEST

/* ---- transitions ---- */

START_TEST(test_transition_owner_and_exclusive_finalising)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t idx;
    fb_slot *s;
    uint64_t before;
    pid_t pid;

    test_dir(dir, path);
    t = open_new(path, 2);
    ck_assert_int_eq(fb_table_claim(t, &idx, now_ns(), 0, 0), FB_OK);
    s = fb_table_slot(t, idx);
    ck_assert_int_eq(atomic_load(&s->owner_pid), getpid());
    ck_assert(!fb_slot_transition(s, FB_SLOT_ACTIVE, FB_SLOT_DONE)); /* wrong FROM */
    ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_CLAIMED);
    ck_assert_int_eq(atomic_load(&s->owner_pid), getpid()); /* still ours: we are CLAIMED */
    ck_assert(fb_slot_transition(s, FB_SLOT_CLAIMED, FB_SLOT_ACTIVE));
    ck_assert_int_eq(atomic_load(&s->owner_pid), 0);

    before = now_ns();
    ck_assert(fb_slot_transition(s, FB_SLOT_ACTIVE, FB_SLOT_FINALISING));
    ck_assert_uint_ge(atomic_load(&s->state_since_ns), before);
    ck_assert_int_eq(atomic_load(&s->owner_pid), getpid());
    ck_assert(!fb_slot_transition(s, FB_SLOT_ACTIVE, FB_SLOT_FINALISING));

    /* Another process cannot finalise it while we hold it; once it is ACTIVE again, it can. */
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        fb_table *ct = NULL;

        if (fb_table_open(&ct, path, NULL, NULL, 0) != FB_OK)
            _exit(2);
        _exit(fb_slot_transition(fb_table_slot(ct, idx), FB_SLOT_ACTIVE, FB_SLOT_FINALISING) ? 3 : 0);
    }
    wait_ok(pid);
    ck_assert(fb_slot_transition(s, FB_SLOT_FINALISING, FB_SLOT_ACTIVE)); /* e.g. digest mismatch */
    ck_assert_int_eq(atomic_load(&s->owner_pid), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        fb_table *ct = NULL;

        if (fb_table_open(&ct, path, NULL, NULL, 0) != FB_OK)
            _exit(2);
        if (!fb_slot_transition(fb_table_slot(ct, idx), FB_SLOT_ACTIVE, FB_SLOT_FINALISING))
            _exit(3);
        _exit(atomic_load(&fb_table_slot(ct, idx)->owner_pid) == getpid() ? 0 : 4);
    }
    wait_ok(pid);
    /* That process exited while finalising: its ownership is dead and can be recovered. */
    ck_assert_int_eq(fb_table_recover_slot(t, idx), 1);
    ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_ACTIVE);
    fb_table_close(t);
}
END_TEST

START_TEST(test_release_wipes_key_and_frees)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t idx, again;
    fb_slot *s;
    static const uint8_t zero[FB_KEY_LEN];

    test_dir(dir, path);
    t = open_new(path, 1);
    ck_assert_int_eq(fb_table_claim(t, &idx, now_ns(), 0, 0), FB_OK);
    s = fb_table_slot(t, idx);
    fb_slot_info_write_begin(s);
    memset(s->info.key, 0xa5, sizeof(s->info.key));
    fb_slot_info_write_end(s);
    ck_assert(fb_slot_transition(s, FB_SLOT_CLAIMED, FB_SLOT_ACTIVE));
    fb_slot_release(s);
    ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_FREE);
    ck_assert_mem_eq(s->info.key, zero, sizeof(zero));
    ck_assert_int_eq(fb_table_claim(t, &again, now_ns(), 0, 0), FB_OK);
    ck_assert_uint_eq(again, idx);
    fb_table_close(t);
}
END_TEST

START_TEST(test_cancel_frees_only_the_session_looked_up)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t idx, again, gen;
    fb_slot *s;

    test_dir(dir, path);
    t = open_new(path, 1);
    idx = make_active(t, FB_DIR_UPLOAD, "u", "/d", "f", 100, NULL);
    s = fb_table_slot(t, idx);
    gen = atomic_load(&s->generation);
    ck_assert_int_eq(fb_slot_cancel(s, gen + 1), 0); /* another session's generation */
    ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_ACTIVE);
    ck_assert(fb_slot_transition(s, FB_SLOT_ACTIVE, FB_SLOT_FINALISING));
    ck_assert_int_eq(fb_slot_cancel(s, gen), 0); /* not while a commit runs */
    ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_FINALISING);
    ck_assert(fb_slot_transition(s, FB_SLOT_FINALISING, FB_SLOT_ACTIVE));
    ck_assert_int_eq(fb_slot_cancel(s, gen), 1);
    ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_FREE);
    ck_assert_int_eq(atomic_load(&s->owner_pid), 0);
    ck_assert_str_eq(s->info.user, "");
    ck_assert_int_eq(fb_slot_cancel(s, gen), 0); /* already free */

    /* The slot is reused: a late cancel of the old session leaves the new one alone. */
    ck_assert_int_eq(fb_table_claim(t, &again, now_ns(), 0, 0), FB_OK);
    ck_assert(fb_slot_transition(s, FB_SLOT_CLAIMED, FB_SLOT_ACTIVE));
    ck_assert_int_eq(fb_slot_cancel(s, gen), 0);
    ck_assert_uint_eq(atomic_load(&s->state), FB_SLOT_ACTIVE);
    ck_assert(fb_slot_transition(s, FB_SLOT_ACTIVE, FB_SLOT_FAILED));
    ck_assert_int_eq(fb_slot_cancel(s, gen + 1), 1);
    fb_table_close(t);
}
END_TEST

/* ---- lookups ---- */

START_TEST(test_find_by_session_id)
{
    char dir[TPATH], path[TPATH], id[FB_SESSION_ID_LEN + 1], bad[64];
    static const uint8_t rnd[FB_ID_RANDOM_LEN] = {0xab, 0xcd, 0xef, 0x01, 0x23, 0x45,
                                                  0x67, 0x89, 0xfa, 0xce, 0xb0, 0x0c};
    fb_table *t;
    uint32_t a, b, found = UINT32_MAX;
    fb_slot *sa;

    test_dir(dir, path);
    t = open_new(path, 4);
    a = make_active(t, FB_DIR_UPLOAD, "u", "/d", "f", 1, rnd);
    b = make_active(t, FB_DIR_UPLOAD, "u", "/d", "g", 1, NULL);
    sa = fb_table_slot(t, a);

    fb_session_id_format(id, a, rnd);
    ck_assert_uint_eq(strlen(id), FB_SESSION_ID_LEN);
    snprintf(bad, sizeof(bad), "%08x", a);
    ck_assert_int_eq(strncmp(id, bad, 8), 0);
    ck_assert_str_eq(id + 8, "abcdef0123456789faceb00c");
    ck_assert_int_eq(fb_table_find(t, &found, id), FB_OK);
    ck_assert_uint_eq(found, a);

    /* Wrong random part. */
    snprintf(bad, sizeof(bad), "%s", id);
    bad[FB_SESSION_ID_LEN - 1] = bad[FB_SESSION_ID_LEN - 1] == '0' ? '1' : '0';
    ck_assert_int_eq(fb_table_find(t, &found, bad), FB_ERR_NOT_FOUND);
    /* Right random, wrong slot. */
    fb_session_id_format(bad, b, rnd);
    ck_assert_int_eq(fb_table_find(t, &found, bad), FB_ERR_NOT_FOUND);
    /* Index beyond the table. */
    fb_session_id_format(bad, 4, rnd);
    ck_assert_int_eq(fb_table_find(t, &found, bad), FB_ERR_NOT_FOUND);
    fb_session_id_format(bad, 0xffffffffu, rnd);
    ck_assert_int_eq(fb_table_find(t, &found, bad), FB_ERR_NOT_FOUND);
    /* Syntax: short, long, non-hex, upper case, empty, NULL. */
    snprintf(bad, sizeof(bad), "%.31s", id);
    ck_assert_int_eq(fb_table_find(t, &found, bad), FB_ERR_NOT_FOUND);
    snprintf(bad, sizeof(bad), "%s0", id);
    ck_assert_int_eq(fb_table_find(t, &found, bad), FB_ERR_NOT_FOUND);
    snprintf(bad, sizeof(bad), "%s", id);
    bad[10] = 'g';
    ck_assert_int_eq(fb_table_find(t, &found, bad), FB_ERR_NOT_FOUND);
    snprintf(bad, sizeof(bad), "%s", id);
    for (char *p = bad; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    ck_assert_int_eq(fb_table_find(t, &found, bad), FB_ERR_NOT_FOUND);
    snprintf(bad, sizeof(bad), "%s", id);
    bad[5] = ' ';
    ck_assert_int_eq(fb_table_find(t, &found, bad), FB_ERR_NOT_FOUND);
    ck_assert_int_eq(fb_table_find(t, &found, ""), FB_ERR_NOT_FOUND);
    ck_assert_int_eq(fb_table_find(t, &found, NULL), FB_ERR_NOT_FOUND);

    /* Found while FINALISING and DONE; not once FREE, nor while only CLAIMED. */
    ck_assert(fb_slot_transition(sa, FB_SLOT_ACTIVE, FB_SLOT_FINALISING));
    ck_assert_int_eq(fb_table_find(t, &found, id), FB_OK);
    ck_assert(fb_slot_transition(sa, FB_SLOT_FINALISING, FB_SLOT_DONE));
    ck_assert_int_eq(fb_table_find(t, &found, id), FB_OK);
    fb_slot_release(sa);
    ck_assert_int_eq(fb_table_find(t, &found, id), FB_ERR_NOT_FOUND);
    ck_assert_int_eq(fb_table_claim(t, &found, now_ns(), 0, 0), FB_OK);
    {
        fb_slot *s = fb_table_slot(t, found);

        fb_slot_info_write_begin(s);
        memcpy(s->info.id_random, rnd, sizeof(rnd));
        fb_slot_info_write_end(s);
        fb_session_id_format(bad, found, rnd);
        ck_assert_int_eq(fb_table_find(t, &found, bad), FB_ERR_NOT_FOUND);
    }
    fb_table_close(t);
}
END_TEST

START_TEST(test_find_upload_matches_all_fields)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t up, found = UINT32_MAX, claimed;
    fb_slot *s;

    test_dir(dir, path);
    t = open_new(path, 6);
    make_active(t, FB_DIR_DOWNLOAD, "alice", "/srv/a", "x/file.bin", 1000, NULL);
    make_active(t, FB_DIR_UPLOAD, "alice", "/srv/a", "x/file.bin2", 1000, NULL);
    up = make_active(t, FB_DIR_UPLOAD, "alice", "/srv/a", "x/file.bin", 1000, NULL);
    ck_assert_int_eq(fb_table_find_upload(t, &found, "alice", "/srv/a", "x/file.bin", 1000), FB_OK);
    ck_assert_uint_eq(found, up);
    ck_assert_int_eq(fb_table_find_upload(t, &found, "alice", "/srv/a", "x/file.bin", 1001),
                     FB_ERR_NOT_FOUND);
    ck_assert_int_eq(fb_table_find_upload(t, &found, "bob", "/srv/a", "x/file.bin", 1000), FB_ERR_NOT_FOUND);
    ck_assert_int_eq(fb_table_find_upload(t, &found, "alice", "/srv/b", "x/file.bin", 1000),
                     FB_ERR_NOT_FOUND);
    ck_assert_int_eq(fb_table_find_upload(t, &found, "alice", "/srv/a", "x/file.bi", 1000), FB_ERR_NOT_FOUND);
    ck_assert_int_eq(fb_table_find_upload(t, &found, "alic", "/srv/a", "x/file.bin", 1000), FB_ERR_NOT_FOUND);
    /* Only ACTIVE sessions are resumed. */
    s = fb_table_slot(t, up);
    ck_assert(fb_slot_transition(s, FB_SLOT_ACTIVE, FB_SLOT_FINALISING));
    ck_assert_int_eq(fb_table_find_upload(t, &found, "alice", "/srv/a", "x/file.bin", 1000),
                     FB_ERR_NOT_FOUND);
    ck_assert_int_eq(fb_table_claim(t, &claimed, now_ns(), 0, 0), FB_OK);
    s = fb_table_slot(t, claimed);
    fb_slot_info_write_begin(s);
    s->info.direction = FB_DIR_UPLOAD;
    s->info.size = 1000;
    snprintf(s->info.user, sizeof(s->info.user), "alice");
    snprintf(s->info.docroot, sizeof(s->info.docroot), "/srv/a");
    snprintf(s->info.relpath, sizeof(s->info.relpath), "x/file.bin");
    fb_slot_info_write_end(s);
    ck_assert_int_eq(fb_table_find_upload(t, &found, "alice", "/srv/a", "x/file.bin", 1000),
                     FB_ERR_NOT_FOUND);
    ck_assert(fb_slot_transition(s, FB_SLOT_CLAIMED, FB_SLOT_ACTIVE));
    ck_assert_int_eq(fb_table_find_upload(t, &found, "alice", "/srv/a", "x/file.bin", 1000), FB_OK);
    ck_assert_uint_eq(found, claimed);
    fb_table_close(t);
}
END_TEST

/* ---- chunk bitmap and sizes ---- */

START_TEST(test_set_chunk_sets_bits_and_counts)
{
    char dir[TPATH], path[TPATH];
    fb_table *t;
    uint32_t idx;
    fb_slot *s;
    static uint64_t words[FB_BITMAP_WORDS];

    test_dir(dir, path);
    t = open_new(path, 1);
    idx = make_active(t, FB_DIR_UPLOAD, "u", "/d", "f", 100u << 20, NULL); /* 100 chunks of 1 MiB */
    s = fb_table_slot(t, idx);
    ck_assert_uint_eq(s->info.nchunks, 100);
    ck_assert_int_eq(fb_slot_set_chunk(s, 0), 1);
    ck_assert_int_eq(fb_slot_set_chunk(s, 0), 0);
    ck_assert_int_eq(fb_slot_set_chunk(s, 99), 1);
    ck_assert_int_eq(fb_slot_set_chunk(s, 64), 1);
    ck_assert_int_eq(fb_slot_set_chunk(s, 100), 0);
    ck_assert_int_eq(fb_slot_set_chunk(s, FB_BITMAP_BITS), 0);
    ck_assert_int_eq(fb_slot_set_chunk(s, UINT64_MAX), 0);
    ck_assert_uint_eq(atomic_load(&s->chunks_done), 3);
    ck_assert_int_eq(fb_slot_chunk_done(s, 0), 1);
    ck_assert_int_eq(fb_slot_chunk_done(s, 1), 0);
    ck_assert_int_eq(fb_slot_chunk_done(s, 99), 1);
    ck_assert_int_eq(fb_slot_chunk_done(s, 100), 0);
    ck_assert_int_eq(fb_slot_chunk_done(s, UINT64_MAX), 0);
    fb_slot_bitmap_copy(words, s);
    ck_assert_uint_eq(words[0], 1);
    ck_assert_uint_eq(words[1], (UINT64_C(1) << 35) | 1u);
    for (size_t i = 2; i < FB_BITMAP_WORDS; i++)
        ck_assert_uint_eq(words[i], 0);
    fb_table_close(t);
}
END_TEST

START_TEST(test_chunk_size_grows_to_fit_bitmap)
{
    const uint64_t mib = 1u << 20;

    ck_assert_uint_eq(fb_table_chunk_size_for(100, 4 * mib), 4 * mib);
    ck_assert_uint_eq(fb_table_chunk_size_for(0, 4 * mib), 4 * mib);
    ck_assert_uint_eq(fb_table_chunk_size_for(100, 0), mib);
    ck_assert_uint_eq(fb_table_chunk_size_for(FB_BITMAP_BITS * mib, mib), mib);
    ck_assert_uint_eq(fb_table_chunk_size_for(FB_BITMAP_BITS * mib + 1, mib), 2 * mib);
    ck_assert_uint_eq(fb_table_chunk_size_for(FB_BITMAP_BITS * 5 * mib, mib), 8 * mib);
    ck_assert_uint_eq(fb_table_chunk_size_for(UINT64_MAX, mib), FB_CHUNK_SIZE_MAX);
    ck_assert_uint_eq(fb_table_chunk_size_for(10, 3u << 30), FB_CHUNK_SIZE_MAX);
    ck_assert_uint_eq(fb_table_chunk_size_for(FB_BITMAP_BITS * 3ull, 1), 4);
    ck_assert_uint_eq(fb_table_nchunks_for(0, 10), 0);
    ck_assert_uint_eq(fb_table_nchunks_for(1, 10), 1);
    ck_assert_uint_eq(fb_table_nchunks_for(10, 10), 1);
    ck_assert_uint_eq(fb_table_nchunks_for(11, 10), 2);
    ck_assert_uint_eq(fb_table_nchunks_for(UINT64_MAX, 1), UINT64_MAX);
    ck_assert_uint_eq(fb_table_nchunks_for(5, 0), UINT64_MAX);
}
END_TEST

START_TEST(test_state_names)
{
    ck_assert_str_eq(fb_slot_state_name(FB_SLOT_FREE), "free");
    ck_assert_str_eq(fb_slot_state_name(FB_SLOT_CLAIMED), "claimed");
    ck_assert_str_eq(fb_slot_state_name(FB_SLOT_ACTIVE), "active");
    ck_assert_str_eq(fb_slot_state_name(FB_SLOT_FINALISING), "finalising");
    ck_assert_str_eq(fb_slot_state_name(FB_SLOT_DONE), "done");
    ck_assert_str_eq(fb_slot_state_name(FB_SLOT_FAILED), "failed");
    ck_assert_str_eq(fb_slot_state_name(99), "unknown");
}
END_TEST

static Suite *table_suite(void)
{
    Suite *s = suite_create("fb_table");
    TCase *open_tc = tcase_create("open");
    TCase *conc = tcase_create("concurrency");
    TCase *rec = tcase_create("recovery");
    TCase *use = tcase_create("use");

    tcase_add_unchecked_fixture(open_tc, top_setup, top_teardown);
    tcase_add_test(open_tc, test_create_then_attach_sees_same_header);
    tcase_add_test(open_tc, test_missing_table_without_create_is_not_found);
    tcase_add_test(open_tc, test_other_major_version_refused);
    tcase_add_test(open_tc, test_bad_magic_or_layout_refused);
    tcase_add_test(open_tc, test_world_accessible_table_refused);
    tcase_add_test(open_tc, test_untrusted_owner_refused);
    tcase_add_test(open_tc, test_symlink_and_non_regular_refused);
    tcase_add_test(open_tc, test_created_with_mode_0660_and_parent_0770);
    tcase_add_test(open_tc, test_create_chowns_to_owner_and_trusts_it);
    tcase_add_test(open_tc, test_reopen_never_zeroes_existing_slots);
    suite_add_tcase(s, open_tc);

    tcase_add_unchecked_fixture(conc, top_setup, top_teardown);
    tcase_set_timeout(conc, 300);
    tcase_add_test(conc, test_claim_release_exclusive_across_processes);
    tcase_add_test(conc, test_concurrent_creation_yields_one_table);
    suite_add_tcase(s, conc);

    tcase_add_unchecked_fixture(rec, top_setup, top_teardown);
    tcase_set_timeout(rec, 60);
    tcase_add_test(rec, test_claim_reclaims_slot_of_killed_claimer);
    tcase_add_test(rec, test_claim_reclaims_slot_of_writer_killed_mid_write);
    tcase_add_test(rec, test_recover_returns_dead_finaliser_to_active);
    tcase_add_test(rec, test_claim_recovers_dead_finaliser_but_keeps_session);
    suite_add_tcase(s, rec);

    tcase_add_unchecked_fixture(use, top_setup, top_teardown);
    tcase_add_test(use, test_full_table_reports_table_full);
    tcase_add_test(use, test_finished_slot_reused_within_linger_oldest_first);
    tcase_add_test(use, test_free_slot_preferred_over_finished_one);
    tcase_add_test(use, test_failed_slot_reused_at_once_with_zero_linger);
    tcase_add_test(use, test_idle_active_reused_only_after_idle_timeout);
    tcase_add_test(use, test_transition_owner_and_exclusive_finalising);
    tcase_add_test(use, test_release_wipes_key_and_frees);
    tcase_add_test(use, test_cancel_frees_only_the_session_looked_up);
    tcase_add_test(use, test_find_by_session_id);
    tcase_add_test(use, test_find_upload_matches_all_fields);
    tcase_add_test(use, test_set_chunk_sets_bits_and_counts);
    tcase_add_test(use, test_chunk_size_grows_to_fit_bitmap);
    tcase_add_test(use, test_state_names);
    suite_add_tcase(s, use);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(table_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
