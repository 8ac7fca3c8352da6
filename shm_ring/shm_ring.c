
/*
 * The shared-memory ring: region management, both sides of the rings,
 * wake-ups, reaping of dead peers.  Plain C; no nginx or Python types.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "shm_ring.h"


#define mosn_align(n, a)    (((n) + (a) - 1) & ~((uint64_t) (a) - 1))

#define mosn_load(p)        __atomic_load_n(p, __ATOMIC_ACQUIRE)
#define mosn_load_relaxed(p) __atomic_load_n(p, __ATOMIC_RELAXED)
#define mosn_store(p, v)    __atomic_store_n(p, v, __ATOMIC_RELEASE)
#define mosn_full_fence()   __atomic_thread_fence(__ATOMIC_SEQ_CST)


void
mosn_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list  args;

    if (err == NULL || errlen == 0) {
        return;
    }

    va_start(args, fmt);
    vsnprintf(err, errlen, fmt, args);
    va_end(args);
}


static int
mosn_conf_check(const mosn_region_conf_t *conf, char *err, size_t errlen)
{
    if (conf->nproducers == 0 || conf->nproducers > MOSN_MAX_PRODUCERS) {
        mosn_err(err, errlen, "producer count %u is not in 1..%u",
                 conf->nproducers, MOSN_MAX_PRODUCERS);
        return -1;
    }

    if (conf->nconsumers == 0 || conf->nconsumers > MOSN_MAX_CONSUMERS) {
        mosn_err(err, errlen, "consumer count %u is not in 1..%u",
                 conf->nconsumers, MOSN_MAX_CONSUMERS);
        return -1;
    }

    if (conf->slots < 2 || conf->slots > MOSN_MAX_SLOTS
        || (conf->slots & (conf->slots - 1)) != 0)
    {
        mosn_err(err, errlen,
                 "slot count %u is not a power of two in 2..%u",
                 conf->slots, MOSN_MAX_SLOTS);
        return -1;
    }

    if (conf->slot_size < MOSN_MIN_SLOT_SIZE
        || conf->slot_size > MOSN_MAX_SLOT_SIZE
        || conf->slot_size % MOSN_CACHELINE != 0)
    {
        mosn_err(err, errlen, "slot size %u is not a multiple of %u "
                 "in %u..%u", conf->slot_size, MOSN_CACHELINE,
                 MOSN_MIN_SLOT_SIZE, MOSN_MAX_SLOT_SIZE);
        return -1;
    }

    return 0;
}


static void
mosn_layout(const mosn_region_conf_t *conf, mosn_shm_header_t *h)
{
    uint64_t  off;

    h->header_size = (uint32_t) mosn_align(sizeof(mosn_shm_header_t),
                                           MOSN_CACHELINE);
    h->nproducers = conf->nproducers;
    h->nconsumers = conf->nconsumers;
    h->slots = conf->slots;
    h->slot_size = conf->slot_size;

    off = h->header_size;
    h->producers_off = off;
    off += mosn_align(sizeof(mosn_producer_t), MOSN_CACHELINE)
           * conf->nproducers;
    h->consumers_off = off;
    off += mosn_align(sizeof(mosn_consumer_t), MOSN_CACHELINE)
           * conf->nconsumers;
    h->rings_off = off;
    h->ring_bytes = mosn_align(sizeof(mosn_ring_t)
                               + (uint64_t) conf->slots * sizeof(uint64_t),
                               MOSN_CACHELINE);
    off += h->ring_bytes * 2 * conf->nproducers * conf->nconsumers;
    off = mosn_align(off, 4096);
    h->slots_off = off;
    off += (uint64_t) conf->slot_size * conf->slots * conf->nproducers;
    off = mosn_align(off, 4096);
    h->endpoints_off = off;
    h->ep_apps = MOSN_EP_APPS;
    h->ep_app_size = sizeof(mosn_ep_app_t);
    off += (uint64_t) sizeof(mosn_ep_app_t) * MOSN_EP_APPS;
    h->region_size = mosn_align(off, 4096);
}


size_t
mosn_region_size(const mosn_region_conf_t *conf)
{
    mosn_shm_header_t  h;

    if (mosn_conf_check(conf, NULL, 0) != 0) {
        return 0;
    }

    memset(&h, 0, sizeof(h));
    mosn_layout(conf, &h);

    return h.region_size;
}


/*
 * Takes the region image at base into rg: the layout is taken from one
 * copy of the header, checked, and kept in rg; the live header is never
 * trusted for an address again.  rg->name and rg->wake_dir are left as
 * they were (attach and create set them).
 */

int
mosn_region_load(mosn_region_t *rg, void *base, size_t size, char *err,
    size_t errlen)
{
    mosn_shm_header_t   h, layout;
    mosn_region_conf_t  conf;

    if (size < sizeof(mosn_shm_header_t)) {
        mosn_err(err, errlen, "region is %zu bytes, smaller than its "
                 "header (%zu bytes)", size, sizeof(mosn_shm_header_t));
        return -1;
    }

    /* the magic is stored last: a reader that sees it sees the layout */
    h.magic = mosn_load(&((const mosn_shm_header_t *) base)->magic);

    if (h.magic != MOSN_RING_MAGIC) {
        mosn_err(err, errlen, "region has no ring magic (found 0x%llx)",
                 (unsigned long long) h.magic);
        return -1;
    }

    memcpy(&h, base, sizeof(h));

    if (h.abi_version != MOSN_RING_ABI_VERSION) {
        mosn_err(err, errlen, "region speaks ring ABI version %u, this "
                 "build speaks version %u: rebuild the nginx module and "
                 "the Python extension from the same source",
                 h.abi_version, MOSN_RING_ABI_VERSION);
        return -1;
    }

    if (h.region_size != size) {
        mosn_err(err, errlen, "region is %zu bytes but its header says "
                 "%llu bytes", size, (unsigned long long) h.region_size);
        return -1;
    }

    conf.nproducers = h.nproducers;
    conf.nconsumers = h.nconsumers;
    conf.slots = h.slots;
    conf.slot_size = h.slot_size;

    if (mosn_conf_check(&conf, err, errlen) != 0) {
        return -1;
    }

    memset(&layout, 0, sizeof(layout));
    mosn_layout(&conf, &layout);

    if (layout.region_size != h.region_size
        || layout.header_size != h.header_size
        || layout.producers_off != h.producers_off
        || layout.consumers_off != h.consumers_off
        || layout.rings_off != h.rings_off
        || layout.ring_bytes != h.ring_bytes
        || layout.slots_off != h.slots_off)
    {
        mosn_err(err, errlen, "region layout does not match its sizes");
        return -1;
    }

    if (h.ep_apps != layout.ep_apps || h.ep_app_size != layout.ep_app_size
        || h.endpoints_off != layout.endpoints_off)
    {
        mosn_err(err, errlen, "region endpoint table (%u apps of %u bytes "
                 "at %llu) is not this build's (%u apps of %u bytes at "
                 "%llu): rebuild the nginx module and the Python extension "
                 "from the same source", h.ep_apps, h.ep_app_size,
                 (unsigned long long) h.endpoints_off, layout.ep_apps,
                 layout.ep_app_size,
                 (unsigned long long) layout.endpoints_off);
        return -1;
    }

    /* from the recomputed layout: the same numbers, now known to be ours */
    rg->nproducers = layout.nproducers;
    rg->nconsumers = layout.nconsumers;
    rg->slots = layout.slots;
    rg->slot_size = layout.slot_size;
    rg->producers_off = layout.producers_off;
    rg->consumers_off = layout.consumers_off;
    rg->rings_off = layout.rings_off;
    rg->ring_bytes = layout.ring_bytes;
    rg->slots_off = layout.slots_off;
    rg->endpoints_off = layout.endpoints_off;
    rg->hdr = base;
    rg->size = size;

    return 0;
}


int
mosn_region_check(const void *base, size_t size, char *err, size_t errlen)
{
    mosn_region_t  rg;

    return mosn_region_load(&rg, (void *) base, size, err, errlen);
}


/* writes a fresh region's header at base, zeroed and mosn_region_size() */

int
mosn_region_format(void *base, size_t size, const mosn_region_conf_t *conf,
    char *err, size_t errlen)
{
    mosn_shm_header_t  *h;

    if (mosn_conf_check(conf, err, errlen) != 0) {
        return -1;
    }

    if (size != mosn_region_size(conf)) {
        mosn_err(err, errlen, "region of %zu bytes is not %zu", size,
                 mosn_region_size(conf));
        return -1;
    }

    h = base;
    mosn_layout(conf, h);
    h->abi_version = MOSN_RING_ABI_VERSION;
    h->created_ns = (uint64_t) time(NULL) * 1000000000ULL;

    /* the magic goes last: a reader that sees it sees the layout */
    mosn_store(&h->magic, MOSN_RING_MAGIC);

    return 0;
}


/* "/dev/shm/NAME.wake" for the shm name "/NAME" */

static int
mosn_wake_dir_name(mosn_region_t *rg, const char *name, char *err,
    size_t errlen)
{
    int     n;
    size_t  len;

    len = strlen(name);

    if (len == 0 || len >= MOSN_NAME_MAX) {
        mosn_err(err, errlen, "region name \"%.*s\" is %s (1..%d bytes)",
                 (int) (len < 128 ? len : 128), name,
                 len ? "too long" : "empty", MOSN_NAME_MAX - 1);
        return -1;
    }

    memcpy(rg->name, name, len + 1);

    while (*name == '/') {
        name++;
    }

    n = snprintf(rg->wake_dir, sizeof(rg->wake_dir), "/dev/shm/%s%s", name,
                 MOSN_WAKE_DIR_SUFFIX);

    if (n < 0 || (size_t) n >= sizeof(rg->wake_dir)) {
        mosn_err(err, errlen, "region name \"%s\" is too long", rg->name);
        return -1;
    }

    rg->wake_dir_len = (size_t) n;

    return 0;
}


static const char *
mosn_in_the_way(int err)
{
    switch (err) {

    case ELOOP:
        return "it is a symbolic link";

    case ENOTDIR:
        return "it is not a directory";

    default:
        return strerror(err);
    }
}


/* removes what a directory holds (wake-up sockets), not what is beyond */

static void
mosn_wake_dir_clear(int fd)
{
    int             dfd;
    DIR            *dir;
    struct dirent  *de;

    dfd = dup(fd);
    if (dfd == -1) {
        return;
    }

    dir = fdopendir(dfd);
    if (dir == NULL) {
        close(dfd);
        return;
    }

    while ((de = readdir(dir)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
            continue;
        }

        if (unlinkat(fd, de->d_name, 0) == -1 && errno == EISDIR) {
            (void) unlinkat(fd, de->d_name, AT_REMOVEDIR);
        }
    }

    closedir(dir);
}


/*
 * Makes the wake-up directory, or takes over one left by an earlier run
 * of the same owner.  Anything else at its name is in the way: /dev/shm is
 * writable by all, and a directory or link of another user's there must
 * not become ours.
 */

static int
mosn_wake_dir_make(mosn_region_t *rg, uid_t uid, gid_t gid, char *err,
    size_t errlen)
{
    int          fd;
    uid_t        owner;
    struct stat  st;

    owner = (uid != (uid_t) -1) ? uid : geteuid();

    if (mkdir(rg->wake_dir, 0700) == -1 && errno != EEXIST) {
        mosn_err(err, errlen, "mkdir(\"%s\") failed: %s", rg->wake_dir,
                 strerror(errno));
        return -1;
    }

    fd = open(rg->wake_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd == -1) {
        mosn_err(err, errlen, "\"%s\" is in the way: %s; remove it",
                 rg->wake_dir, mosn_in_the_way(errno));
        return -1;
    }

    if (fstat(fd, &st) == -1) {
        mosn_err(err, errlen, "fstat(\"%s\") failed: %s", rg->wake_dir,
                 strerror(errno));
        goto failed;
    }

    if (st.st_uid != owner && st.st_uid != geteuid()) {
        mosn_err(err, errlen, "\"%s\" is in the way: it belongs to uid %u; "
                 "remove it", rg->wake_dir, (unsigned) st.st_uid);
        goto failed;
    }

    if (fchown(fd, owner, gid) == -1 || fchmod(fd, 0700) == -1) {
        mosn_err(err, errlen, "cannot make \"%s\" a directory of uid %u "
                 "of mode 0700: %s", rg->wake_dir, (unsigned) owner,
                 strerror(errno));
        goto failed;
    }

    mosn_wake_dir_clear(fd);
    close(fd);

    return 0;

failed:

    close(fd);

    return -1;
}


/* the directory must be the region owner's, and closed to everyone else */

static int
mosn_wake_dir_check(mosn_region_t *rg, uid_t owner, char *err,
    size_t errlen)
{
    struct stat  st;

    if (lstat(rg->wake_dir, &st) == -1) {
        mosn_err(err, errlen, "the wake-up directory \"%s\" of the region "
                 "is missing: %s", rg->wake_dir, strerror(errno));
        return -1;
    }

    if (!S_ISDIR(st.st_mode)) {
        mosn_err(err, errlen, "\"%s\" is in the way: %s", rg->wake_dir,
                 S_ISLNK(st.st_mode) ? "it is a symbolic link"
                                     : "it is not a directory");
        return -1;
    }

    if (st.st_uid != owner || (st.st_mode & 0077) != 0) {
        mosn_err(err, errlen, "\"%s\" is in the way: uid %u mode %04o, "
                 "not uid %u mode 0700 as the region's owner would make it",
                 rg->wake_dir, (unsigned) st.st_uid,
                 (unsigned) (st.st_mode & 07777), (unsigned) owner);
        return -1;
    }

    return 0;
}


int
mosn_region_create(mosn_region_t *rg, const char *name,
    const mosn_region_conf_t *conf, uid_t uid, gid_t gid,
    char *err, size_t errlen)
{
    int                 fd;
    void               *base;
    mosn_region_t       r;
    mosn_shm_header_t   layout, *h;

    if (mosn_conf_check(conf, err, errlen) != 0) {
        return -1;
    }

    memset(&r, 0, sizeof(r));

    if (mosn_wake_dir_name(&r, name, err, errlen) != 0) {
        return -1;
    }

    memset(&layout, 0, sizeof(layout));
    mosn_layout(conf, &layout);

    (void) shm_unlink(name);

    /* glibc's shm_open() adds O_NOFOLLOW; O_EXCL: never someone else's */
    fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd == -1) {
        mosn_err(err, errlen, "shm_open(\"%s\") failed: %s%s", name,
                 strerror(errno), errno == EEXIST ? " (it belongs to "
                 "another user: remove it)" : "");
        return -1;
    }

    if (uid != (uid_t) -1 && fchown(fd, uid, gid) == -1) {
        mosn_err(err, errlen, "fchown(\"%s\") failed: %s", name,
                 strerror(errno));
        goto failed;
    }

    if (mosn_wake_dir_make(&r, uid, gid, err, errlen) != 0) {
        goto failed;
    }

    if (ftruncate(fd, (off_t) layout.region_size) == -1) {
        mosn_err(err, errlen, "ftruncate(\"%s\", %llu) failed: %s", name,
                 (unsigned long long) layout.region_size, strerror(errno));
        goto failed_dir;
    }

    base = mmap(NULL, layout.region_size, PROT_READ | PROT_WRITE,
                MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        mosn_err(err, errlen, "mmap(\"%s\") failed: %s", name,
                 strerror(errno));
        goto failed_dir;
    }

    close(fd);

    h = base;
    snprintf(h->name, sizeof(h->name), "%s", name);

    if (mosn_region_format(base, layout.region_size, conf, err, errlen) != 0
        || mosn_region_load(&r, base, layout.region_size, err, errlen) != 0)
    {
        munmap(base, layout.region_size);
        (void) mosn_region_unlink(name);
        return -1;
    }

    *rg = r;

    return 0;

failed_dir:

    close(fd);
    (void) mosn_region_unlink(name);

    return -1;

failed:

    close(fd);
    (void) shm_unlink(name);

    return -1;
}


int
mosn_region_attach(mosn_region_t *rg, const char *name, char *err,
    size_t errlen)
{
    int            fd;
    void          *base;
    struct stat    st;
    mosn_region_t  r;

    memset(&r, 0, sizeof(r));

    if (mosn_wake_dir_name(&r, name, err, errlen) != 0) {
        return -1;
    }

    fd = shm_open(name, O_RDWR, 0);
    if (fd == -1) {
        mosn_err(err, errlen, "shm_open(\"%s\") failed: %s", name,
                 strerror(errno));
        return -1;
    }

    if (fstat(fd, &st) == -1) {
        mosn_err(err, errlen, "fstat(\"%s\") failed: %s", name,
                 strerror(errno));
        close(fd);
        return -1;
    }

    if (st.st_size <= 0) {
        mosn_err(err, errlen, "region \"%s\" is empty", name);
        close(fd);
        return -1;
    }

    if (mosn_wake_dir_check(&r, st.st_uid, err, errlen) != 0) {
        close(fd);
        return -1;
    }

    base = mmap(NULL, (size_t) st.st_size, PROT_READ | PROT_WRITE,
                MAP_SHARED, fd, 0);
    close(fd);

    if (base == MAP_FAILED) {
        mosn_err(err, errlen, "mmap(\"%s\") failed: %s", name,
                 strerror(errno));
        return -1;
    }

    if (mosn_region_load(&r, base, (size_t) st.st_size, err, errlen) != 0) {
        munmap(base, (size_t) st.st_size);
        return -1;
    }

    *rg = r;

    return 0;
}


void
mosn_region_detach(mosn_region_t *rg)
{
    if (rg->hdr != NULL) {
        munmap(rg->hdr, rg->size);
        rg->hdr = NULL;
    }
}


/* the region and its wake-up directory: 0, or -1 if no region was there */

int
mosn_region_unlink(const char *name)
{
    int            fd, rc;
    mosn_region_t  r;

    rc = shm_unlink(name);

    if (mosn_wake_dir_name(&r, name, NULL, 0) != 0) {
        return rc;
    }

    fd = open(r.wake_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

    if (fd != -1) {
        mosn_wake_dir_clear(fd);
        close(fd);
        (void) rmdir(r.wake_dir);
    }

    return rc;
}


mosn_producer_t *
mosn_producer(mosn_region_t *rg, uint32_t p)
{
    return (mosn_producer_t *) ((uint8_t *) rg->hdr + rg->producers_off
           + mosn_align(sizeof(mosn_producer_t), MOSN_CACHELINE) * p);
}


mosn_consumer_t *
mosn_consumer(mosn_region_t *rg, uint32_t c)
{
    return (mosn_consumer_t *) ((uint8_t *) rg->hdr + rg->consumers_off
           + mosn_align(sizeof(mosn_consumer_t), MOSN_CACHELINE) * c);
}


mosn_ring_t *
mosn_submit_ring(mosn_region_t *rg, uint32_t p, uint32_t c)
{
    return (mosn_ring_t *) ((uint8_t *) rg->hdr + rg->rings_off
           + rg->ring_bytes * (2 * ((uint64_t) p * rg->nconsumers + c)));
}


mosn_ring_t *
mosn_completion_ring(mosn_region_t *rg, uint32_t p, uint32_t c)
{
    return (mosn_ring_t *) ((uint8_t *) rg->hdr + rg->rings_off
           + rg->ring_bytes * (2 * ((uint64_t) p * rg->nconsumers + c) + 1));
}


mosn_slot_t *
mosn_slot(mosn_region_t *rg, uint32_t p, uint32_t s)
{
    return (mosn_slot_t *) ((uint8_t *) rg->hdr + rg->slots_off
           + (uint64_t) rg->slot_size * ((uint64_t) p * rg->slots + s));
}


uint64_t
mosn_now_ns(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}


/*
 * A process is named by its pid and its start time (field 22 of
 * /proc/PID/stat), so a recycled pid is not taken for the dead process.
 * A zombie counts as dead: it writes no more.
 */

int
mosn_proc_starttime(pid_t pid, uint64_t *starttime)
{
    int      fd, field;
    char     path[64], buf[1024], *p, state;
    ssize_t  n;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return -1;
    }

    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);

    if (n <= 0) {
        return -1;
    }

    buf[n] = '\0';

    /* the command name may hold spaces and parentheses */
    p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ') {
        return -1;
    }

    p += 2;
    state = *p;

    if (state == 'Z' || state == 'X' || state == 'x') {
        return -1;
    }

    for (field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (p == NULL) {
            return -1;
        }
        p++;
    }

    *starttime = strtoull(p, NULL, 10);

    return 0;
}


int
mosn_proc_alive(pid_t pid, uint64_t starttime)
{
    uint64_t  now;

    if (pid <= 0) {
        return 0;
    }

    if (mosn_proc_starttime(pid, &now) != 0) {
        return 0;
    }

    return starttime == 0 || now == starttime;
}


/* futexes in shared memory: not FUTEX_PRIVATE_FLAG */

static int
mosn_futex_wait(uint32_t *addr, uint32_t val, int timeout_ms)
{
    struct timespec  ts, *tsp;

    tsp = NULL;

    if (timeout_ms >= 0) {
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = (long) (timeout_ms % 1000) * 1000000L;
        tsp = &ts;
    }

    return (int) syscall(SYS_futex, addr, FUTEX_WAIT, val, tsp, NULL, 0);
}


static void
mosn_futex_wake(uint32_t *addr)
{
    (void) syscall(SYS_futex, addr, FUTEX_WAKE, 1, NULL, NULL, 0);
}


static int
mosn_consumer_alive(mosn_region_t *rg, uint32_t c, uint32_t inc)
{
    uint32_t          st;
    mosn_consumer_t  *cons;

    if (c >= rg->nconsumers) {
        return 0;
    }

    cons = mosn_consumer(rg, c);
    st = mosn_load(&cons->state);

    return (st == MOSN_CONS_LIVE || st == MOSN_CONS_DRAINING)
           && (mosn_load(&cons->incarnation) & 0xffff) == inc;
}


/* producer side */

static int mosn_producer_claim_free(mosn_region_t *rg, pid_t pid);
static int mosn_reap_channel(mosn_region_t *rg, uint32_t p);

int
mosn_producer_claim(mosn_region_t *rg, pid_t pid)
{
    int       p;
    uint32_t  freed;

    p = mosn_producer_claim_free(rg, pid);

    /* none free: take back those of dead owners (no supervisor may run) */
    if (p < 0) {
        (void) mosn_reap_producers(rg, &freed);

        if (freed) {
            p = mosn_producer_claim_free(rg, pid);
        }
    }

    return p;
}


static int
mosn_producer_claim_free(mosn_region_t *rg, pid_t pid)
{
    uint32_t          p;
    uint64_t          expect, starttime;
    mosn_producer_t  *prod;

    if (mosn_proc_starttime(pid, &starttime) != 0) {
        starttime = 0;
    }

    for (p = 0; p < rg->nproducers; p++) {
        prod = mosn_producer(rg, p);
        expect = MOSN_OWNER(0, MOSN_CHAN_FREE);

        if (!__atomic_compare_exchange_n(&prod->owner, &expect,
                                         MOSN_OWNER(pid, MOSN_CHAN_CLAIMING),
                                         0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
        {
            continue;
        }

        prod->starttime = starttime;
        prod->epoch++;
        prod->need_wakeup = 0;
        prod->in_use = 0;
        prod->waiting = 0;
        prod->notify_fd = -1;

        mosn_store(&prod->owner, MOSN_OWNER(pid, MOSN_CHAN_OWNED));

        return (int) p;
    }

    return -1;
}


void
mosn_producer_release(mosn_region_t *rg, uint32_t p)
{
    mosn_producer_t  *prod;

    prod = mosn_producer(rg, p);

    /* the reaper hands the channel on once every slot is back */
    mosn_store(&prod->owner,
               MOSN_OWNER(MOSN_OWNER_PID(prod->owner), MOSN_CHAN_DRAINING));
}


int
mosn_producer_pick(mosn_region_t *rg, uint32_t p, uint32_t *rr,
    uint32_t *inc)
{
    int               best;
    uint32_t          i, c, n, pending, best_pending, st;
    mosn_ring_t      *ring;
    mosn_consumer_t  *cons;

    n = rg->nconsumers;
    best = -1;
    best_pending = UINT32_MAX;

    for (i = 0; i < n; i++) {
        c = (*rr + i) % n;
        cons = mosn_consumer(rg, c);
        st = mosn_load(&cons->state);

        if (st != MOSN_CONS_LIVE) {
            continue;
        }

        ring = mosn_submit_ring(rg, p, c);
        pending = ring->head - mosn_load(&ring->tail);

        if (pending < best_pending) {
            best = (int) c;
            best_pending = pending;
            *inc = mosn_load(&cons->incarnation) & 0xffff;

            if (pending == 0) {
                break;
            }
        }
    }

    if (best >= 0) {
        *rr = (uint32_t) best + 1;
    }

    return best;
}


static int
mosn_ring_room(mosn_region_t *rg, mosn_ring_t *ring)
{
    return ring->head - mosn_load(&ring->tail) < rg->slots;
}


static int
mosn_ring_push(mosn_region_t *rg, mosn_ring_t *ring, uint64_t entry)
{
    uint32_t  head;

    head = ring->head;

    if (head - mosn_load(&ring->tail) >= rg->slots) {
        return -1;
    }

    ring->entries[head & (rg->slots - 1)] = entry;
    mosn_store(&ring->head, head + 1);

    return 0;
}


static void mosn_consumer_doorbell_ring(mosn_region_t *rg, uint32_t c);
static int mosn_ring_socket(void);
static void mosn_ring_producers(mosn_region_t *rg, int sock);


static void
mosn_wake_consumer(mosn_region_t *rg, uint32_t p, uint32_t c)
{
    uint32_t          how;
    mosn_consumer_t  *cons;

    cons = mosn_consumer(rg, c);

    /* pairs with the fence in mosn_consumer_wait() and _arm() */
    mosn_full_fence();

    if (mosn_load_relaxed(&cons->sleeping) == MOSN_SLEEP_NONE) {
        return;
    }

    how = __atomic_exchange_n(&cons->sleeping, MOSN_SLEEP_NONE,
                              __ATOMIC_ACQ_REL);

    if (how == MOSN_SLEEP_NONE) {
        return;
    }

    if (how == MOSN_SLEEP_FD) {
        mosn_consumer_doorbell_ring(rg, c);

    } else {
        __atomic_add_fetch(&cons->futex, 1, __ATOMIC_RELEASE);
        mosn_futex_wake(&cons->futex);
    }

    mosn_producer(rg, p)->futex_wakes++;
}


/*
 * Publishes a filled slot to consumer c without waking it: an nginx worker
 * publishes every request of one event loop iteration, then wakes each
 * consumer once with mosn_producer_wake().
 */

int
mosn_producer_publish(mosn_region_t *rg, uint32_t p, uint32_t s, uint32_t c,
    uint32_t inc, uint32_t *gen)
{
    uint32_t          g;
    uint64_t          w;
    mosn_slot_t      *slot;
    mosn_ring_t      *ring;
    mosn_producer_t  *prod;

    slot = mosn_slot(rg, p, s);
    ring = mosn_submit_ring(rg, p, c);

    if (ring->head - mosn_load(&ring->tail) >= rg->slots) {
        return -1;
    }

    w = slot->state;
    g = MOSN_SW_GEN(w) + 1;

    slot->submit_ns = mosn_now_ns();
    mosn_store(&slot->state, MOSN_SW(g, inc, c, MOSN_SLOT_SUBMITTED));

    (void) mosn_ring_push(rg, ring, MOSN_ENTRY(s, g));

    prod = mosn_producer(rg, p);
    prod->submitted++;
    prod->in_use++;

    *gen = g;

    return 0;
}


void
mosn_producer_wake(mosn_region_t *rg, uint32_t p, uint32_t c)
{
    mosn_wake_consumer(rg, p, c);
}


int
mosn_producer_submit(mosn_region_t *rg, uint32_t p, uint32_t s, uint32_t c,
    uint32_t inc, uint32_t *gen)
{
    if (mosn_producer_publish(rg, p, s, c, inc, gen) != 0) {
        return -1;
    }

    mosn_wake_consumer(rg, p, c);

    return 0;
}


void
mosn_producer_free(mosn_region_t *rg, uint32_t p, uint32_t s)
{
    uint64_t          w;
    mosn_slot_t      *slot;
    mosn_producer_t  *prod;

    slot = mosn_slot(rg, p, s);
    w = mosn_load(&slot->state);

    mosn_store(&slot->state, MOSN_SW(MOSN_SW_GEN(w), 0, 0, MOSN_SLOT_FREE));

    prod = mosn_producer(rg, p);
    prod->in_use--;
}


/*
 * The producer gave up on slot s of generation gen (a timeout, a client
 * gone): the consumer that holds it is told, so that it can stop work
 * nobody waits for.  The slot stays the consumer's until it completes it.
 */

void
mosn_producer_abandon(mosn_region_t *rg, uint32_t p, uint32_t s,
    uint32_t gen)
{
    uint32_t      c, st;
    uint64_t      w;
    mosn_slot_t  *slot;

    slot = mosn_slot(rg, p, s);
    w = mosn_load(&slot->state);
    st = MOSN_SW_STATE(w);
    c = MOSN_SW_CONSUMER(w);

    if (MOSN_SW_GEN(w) != gen
        || (st != MOSN_SLOT_SUBMITTED && st != MOSN_SLOT_TAKEN)
        || c >= rg->nconsumers)
    {
        return;
    }

    mosn_store(&slot->abandoned, gen);
    __atomic_add_fetch(&mosn_consumer(rg, c)->abandons, 1, __ATOMIC_RELEASE);
}


int
mosn_producer_poll(mosn_region_t *rg, uint32_t p, uint64_t *out, int max)
{
    int               n;
    uint32_t          c, s, tail, head, mask;
    uint64_t          e, w;
    mosn_ring_t      *ring;
    mosn_producer_t  *prod;

    n = 0;
    mask = rg->slots - 1;
    prod = mosn_producer(rg, p);

    for (c = 0; c < rg->nconsumers && n < max; c++) {
        ring = mosn_completion_ring(rg, p, c);
        tail = MOSN_READ_ONCE(ring->tail);
        head = mosn_load(&ring->head);

        if (head - tail > rg->slots) {
            /* no ring holds more than a channel's slots: a scribble */
            prod->forged++;
            mosn_store(&ring->tail, head);
            continue;
        }

        while (tail != head && n < max) {
            e = MOSN_READ_ONCE(ring->entries[tail & mask]);
            tail++;

            s = MOSN_ENTRY_SLOT(e);

            if (s >= rg->slots) {
                prod->forged++;
                continue;
            }

            w = mosn_load(&mosn_slot(rg, p, s)->state);

            if (MOSN_SW_STATE(w) != MOSN_SLOT_DONE
                || MOSN_SW_GEN(w) != MOSN_ENTRY_GEN(e))
            {
                prod->stale++;
                continue;
            }

            out[n++] = e;
        }

        mosn_store(&ring->tail, tail);
    }

    prod->completed += (uint64_t) n;

    return n;
}


int
mosn_producer_arm(mosn_region_t *rg, uint32_t p)
{
    uint32_t          c;
    mosn_ring_t      *ring;
    mosn_producer_t  *prod;

    prod = mosn_producer(rg, p);
    mosn_store(&prod->need_wakeup, 1);

    /* pairs with the fence in mosn_consumer_flush() */
    mosn_full_fence();

    for (c = 0; c < rg->nconsumers; c++) {
        ring = mosn_completion_ring(rg, p, c);

        if (mosn_load(&ring->head) != ring->tail) {
            return 1;
        }
    }

    return 0;
}


static int
mosn_ring_holds(mosn_region_t *rg, mosn_ring_t *ring, uint32_t s,
    uint32_t gen)
{
    uint32_t  tail, head, mask;

    mask = rg->slots - 1;
    head = mosn_load(&ring->head);
    tail = mosn_load(&ring->tail);

    if (head - tail > rg->slots) {
        return 0;
    }

    for ( /* void */ ; tail != head; tail++) {
        if (ring->entries[tail & mask] == MOSN_ENTRY(s, gen)) {
            return 1;
        }
    }

    return 0;
}


/*
 * Called by a producer when a consumer has left, for a slot it holds in
 * flight at generation gen: a slot that a dead consumer incarnation held
 * goes to a live consumer; a verdict written but never published is
 * MOSN_RESCUE_DONE; a slot that cannot be re-queued, or whose state is
 * not the producer's (another generation, or FREE: a scribble), is
 * MOSN_RESCUE_LOST, and the request takes the fallback.
 */

int
mosn_producer_rescue_slot(mosn_region_t *rg, uint32_t p, uint32_t s,
    uint32_t gen, uint32_t *rr)
{
    int               c2;
    uint32_t          c, inc, inc2, st;
    uint64_t          w;
    mosn_slot_t      *slot;
    mosn_producer_t  *prod;

    if (s >= rg->slots) {
        return MOSN_RESCUE_NONE;
    }

    prod = mosn_producer(rg, p);
    slot = mosn_slot(rg, p, s);
    w = mosn_load(&slot->state);
    st = MOSN_SW_STATE(w);
    c = MOSN_SW_CONSUMER(w);
    inc = MOSN_SW_INC(w);

    if (MOSN_SW_GEN(w) != gen || st == MOSN_SLOT_FREE) {
        prod->forged++;
        return MOSN_RESCUE_LOST;
    }

    if (mosn_consumer_alive(rg, c, inc)) {
        return MOSN_RESCUE_NONE;
    }

    if (st == MOSN_SLOT_DONE) {
        if (c < rg->nconsumers
            && mosn_ring_holds(rg, mosn_completion_ring(rg, p, c), s, gen))
        {
            /* poll will see it */
            return MOSN_RESCUE_NONE;
        }

        return MOSN_RESCUE_DONE;
    }

    c2 = mosn_producer_pick(rg, p, rr, &inc2);

    /*
     * Room is checked before the slot names c2: c2's ring may still hold
     * an entry for this very (slot, gen) from an incarnation that died,
     * so c2 can take the slot as soon as the state names it, and the
     * state must not be taken back after that.  Only this producer pushes
     * to the ring, so the room cannot vanish before the push.
     */
    if (c2 >= 0 && mosn_ring_room(rg, mosn_submit_ring(rg, p, (uint32_t) c2)))
    {
        mosn_store(&slot->state, MOSN_SW(gen, inc2, c2, MOSN_SLOT_SUBMITTED));
        (void) mosn_ring_push(rg, mosn_submit_ring(rg, p, (uint32_t) c2),
                              MOSN_ENTRY(s, gen));
        prod->requeued++;
        mosn_wake_consumer(rg, p, (uint32_t) c2);
        return MOSN_RESCUE_REQUEUED;
    }

    /* no consumer or no room: mark it done by nobody, it is lost */
    mosn_store(&slot->state, MOSN_SW(gen, 0, 0, MOSN_SLOT_TAKEN));

    return MOSN_RESCUE_LOST;
}


/*
 * The rescue of every slot of the channel, taking each slot's own
 * generation as the producer's: for a producer that keeps no account of
 * its slots (tools, tests).  Verdicts to collect come back as entries,
 * lost slots flagged MOSN_RESCUE_FAILED.
 */

int
mosn_producer_rescue(mosn_region_t *rg, uint32_t p, uint32_t *rr,
    uint64_t *out, int max)
{
    int       n;
    uint32_t  s, gen;
    uint64_t  w;

    n = 0;

    for (s = 0; s < rg->slots && n < max; s++) {
        w = mosn_load(&mosn_slot(rg, p, s)->state);

        if (MOSN_SW_STATE(w) == MOSN_SLOT_FREE) {
            continue;
        }

        gen = MOSN_SW_GEN(w);

        switch (mosn_producer_rescue_slot(rg, p, s, gen, rr)) {

        case MOSN_RESCUE_DONE:
            out[n++] = MOSN_ENTRY(s, gen);
            break;

        case MOSN_RESCUE_LOST:
            out[n++] = MOSN_ENTRY(s | MOSN_RESCUE_FAILED, gen);
            break;

        default:
            break;
        }
    }

    return n;
}


/*
 * The doorbell of channel p: the datagram socket WAKE_DIR "/p" P, in the
 * region's wake-up directory, which only the region's owner may enter;
 * consumer c's is WAKE_DIR "/c" C.  Built by hand: a consumer builds it
 * on every ring, and snprintf() showed in profiles.
 */

_Static_assert(MOSN_WAKE_DIR_MAX + sizeof("/p4294967295")
               <= sizeof(((struct sockaddr_un *) 0)->sun_path),
               "a doorbell's path fits in sun_path");

static socklen_t
mosn_doorbell_name_of(mosn_region_t *rg, char kind, uint32_t n,
    struct sockaddr_un *sa)
{
    char    *d, digits[10];
    size_t   i;

    sa->sun_family = AF_UNIX;

    /* the name was checked to fit with room to spare at create/attach */
    d = sa->sun_path;
    memcpy(d, rg->wake_dir, rg->wake_dir_len);
    d += rg->wake_dir_len;
    *d++ = '/';
    *d++ = kind;

    i = 0;

    do {
        digits[i++] = (char) ('0' + n % 10);
        n /= 10;
    } while (n);

    while (i) {
        *d++ = digits[--i];
    }

    *d = '\0';

    return (socklen_t) (offsetof(struct sockaddr_un, sun_path)
                        + (size_t) (d - sa->sun_path) + 1);
}


static socklen_t
mosn_doorbell_name(mosn_region_t *rg, uint32_t p, struct sockaddr_un *sa)
{
    return mosn_doorbell_name_of(rg, 'p', p, sa);
}


/* binds a doorbell, taking over the name a crashed owner left */

static int
mosn_doorbell_bind(struct sockaddr_un *sa, socklen_t len, char *err,
    size_t errlen)
{
    int  fd;

    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        mosn_err(err, errlen, "socket() failed: %s", strerror(errno));
        return -1;
    }

    /* the directory is the owner's alone: what is there is a leftover */
    (void) unlink(sa->sun_path);

    if (bind(fd, (struct sockaddr *) sa, len) == -1) {
        mosn_err(err, errlen, "cannot bind the doorbell \"%s\": %s",
                 sa->sun_path, strerror(errno));
        close(fd);
        return -1;
    }

    return fd;
}


int
mosn_doorbell_open(mosn_region_t *rg, uint32_t p, char *err, size_t errlen)
{
    socklen_t           len;
    struct sockaddr_un  sa;

    len = mosn_doorbell_name(rg, p, &sa);

    return mosn_doorbell_bind(&sa, len, err, errlen);
}


void
mosn_doorbell_unlink(mosn_region_t *rg, uint32_t p)
{
    struct sockaddr_un  sa;

    (void) mosn_doorbell_name(rg, p, &sa);
    (void) unlink(sa.sun_path);
}


#define MOSN_DRAIN_BATCH  16

int
mosn_doorbell_drain(int fd)
{
    int             n, i, got;
    char            buf[MOSN_DRAIN_BATCH];
    struct iovec    iov[MOSN_DRAIN_BATCH];
    struct mmsghdr  msg[MOSN_DRAIN_BATCH];

    /* one system call for the usual single wake-up, not two */
    memset(msg, 0, sizeof(msg));

    for (i = 0; i < MOSN_DRAIN_BATCH; i++) {
        iov[i].iov_base = &buf[i];
        iov[i].iov_len = 1;
        msg[i].msg_hdr.msg_iov = &iov[i];
        msg[i].msg_hdr.msg_iovlen = 1;
    }

    n = 0;

    do {
        got = recvmmsg(fd, msg, MOSN_DRAIN_BATCH, MSG_DONTWAIT, NULL);

        if (got <= 0) {
            break;
        }

        n += got;

    } while (got == MOSN_DRAIN_BATCH);

    return n;
}


/*
 * A producer's eventfd: what a consumer writes to wake it when it has a
 * copy of it (a doorbell datagram costs about 7 us more per round trip).
 * Its number is published in the channel; a consumer copies it with
 * pidfd_getfd(), which the kernel allows a process of the owner's user
 * only (nginx workers stay dumpable after setuid), once per owner.
 */

int
mosn_producer_notify_open(mosn_region_t *rg, uint32_t p)
{
    int  fd;

    fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd == -1) {
        return -1;
    }

    mosn_store(&mosn_producer(rg, p)->notify_fd, fd);

    return fd;
}


int
mosn_notify_drain(int fd)
{
    uint64_t  n;

    if (read(fd, &n, sizeof(n)) != (ssize_t) sizeof(n)) {
        return 0;
    }

    return n > INT_MAX ? INT_MAX : (int) n;
}


typedef struct {
    mosn_shm_header_t      *hdr;            /* NULL: no copy taken */
    uint64_t                owner;          /* the owner it was taken of */
    uint32_t                epoch;
    int                     fd;             /* the copy, or -1 */
} mosn_notify_copy_t;

static mosn_notify_copy_t  mosn_notify_copies[MOSN_MAX_PRODUCERS];


static int
mosn_notify_take(mosn_producer_t *prod, uint64_t owner)
{
#if defined(SYS_pidfd_open) && defined(SYS_pidfd_getfd)
    int      pidfd, fd, target;
    char     path[64], link[32];
    pid_t    pid;
    ssize_t  n;

    pid = MOSN_OWNER_PID(owner);
    target = mosn_load(&prod->notify_fd);

    if (MOSN_OWNER_STATE(owner) != MOSN_CHAN_OWNED || pid <= 0
        || target < 0)
    {
        return -1;
    }

    pidfd = (int) syscall(SYS_pidfd_open, pid, 0);
    if (pidfd == -1) {
        return -1;
    }

    /* the pidfd names whoever had the pid: the owner, if it started then */
    if (!mosn_proc_alive(pid, prod->starttime)) {
        close(pidfd);
        return -1;
    }

    fd = (int) syscall(SYS_pidfd_getfd, pidfd, target, 0);
    close(pidfd);

    if (fd == -1) {
        return -1;
    }

    /* the number comes from the region: write to nothing but an eventfd */
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    n = readlink(path, link, sizeof(link));

    if (n != sizeof("anon_inode:[eventfd]") - 1
        || memcmp(link, "anon_inode:[eventfd]", n) != 0)
    {
        close(fd);
        return -1;
    }

    return fd;
#else
    (void) prod;
    (void) owner;
    return -1;
#endif
}


static int
mosn_notify_fd(mosn_region_t *rg, uint32_t p)
{
    uint32_t             epoch;
    uint64_t             owner;
    mosn_producer_t     *prod;
    mosn_notify_copy_t  *copy;

    if (p >= MOSN_MAX_PRODUCERS) {
        return -1;
    }

    copy = &mosn_notify_copies[p];
    prod = mosn_producer(rg, p);
    owner = mosn_load(&prod->owner);
    epoch = mosn_load(&prod->epoch);

    if (copy->hdr == rg->hdr && copy->owner == owner
        && copy->epoch == epoch)
    {
        return copy->fd;
    }

    if (copy->hdr != NULL && copy->fd >= 0) {
        close(copy->fd);
    }

    copy->hdr = rg->hdr;
    copy->owner = owner;
    copy->epoch = epoch;
    copy->fd = mosn_notify_take(prod, owner);

    return copy->fd;
}


/* wakes producer p: through its eventfd if we can, else its doorbell */

static int
mosn_producer_notify(mosn_region_t *rg, int sock, uint32_t p)
{
    int       fd;
    uint64_t  one;

    fd = mosn_notify_fd(rg, p);

    if (fd >= 0) {
        one = 1;

        if (write(fd, &one, sizeof(one)) == (ssize_t) sizeof(one)) {
            return 0;
        }
    }

    return mosn_doorbell_ring(rg, sock, p);
}


int
mosn_doorbell_ring(mosn_region_t *rg, int sock, uint32_t p)
{
    char                b;
    socklen_t           len;
    struct sockaddr_un  sa;

    len = mosn_doorbell_name(rg, p, &sa);
    b = 1;

    /* a full socket buffer already holds a wake-up */
    if (sendto(sock, &b, 1, MSG_DONTWAIT, (struct sockaddr *) &sa, len)
        == -1 && errno != EAGAIN)
    {
        return -1;
    }

    return 0;
}


/* consumer side */

int
mosn_consumer_start(mosn_region_t *rg, uint32_t c, pid_t pid)
{
    uint64_t          starttime;
    mosn_consumer_t  *cons;

    if (c >= rg->nconsumers) {
        return -1;
    }

    cons = mosn_consumer(rg, c);

    if (mosn_proc_starttime(pid, &starttime) != 0) {
        starttime = 0;
    }

    cons->pid = (uint32_t) pid;
    cons->starttime = starttime;
    cons->sleeping = MOSN_SLEEP_NONE;
    __atomic_add_fetch(&cons->incarnation, 1, __ATOMIC_ACQ_REL);
    mosn_store(&cons->state, MOSN_CONS_LIVE);

    /* producers holding requests for a worker submit them now */
    mosn_ring_producers(rg, mosn_ring_socket());

    return (int) (cons->incarnation & 0xffff);
}


int
mosn_consumer_take(mosn_region_t *rg, uint32_t c, uint64_t *out, int max)
{
    int               n;
    uint32_t          p, s, inc, tail, head, mask, np;
    uint64_t          e, w;
    mosn_slot_t      *slot;
    mosn_ring_t      *ring;
    mosn_consumer_t  *cons;

    n = 0;
    np = rg->nproducers;
    mask = rg->slots - 1;
    cons = mosn_consumer(rg, c);
    inc = cons->incarnation & 0xffff;

    for (p = 0; p < np && n < max; p++) {
        ring = mosn_submit_ring(rg, p, c);
        tail = ring->tail;
        head = mosn_load(&ring->head);

        if (head - tail > rg->slots) {
            /* a producer scribbled: skip what cannot be real */
            tail = head;
        }

        while (tail != head && n < max) {
            e = ring->entries[tail & mask];
            tail++;

            s = MOSN_ENTRY_SLOT(e);

            if (s >= rg->slots) {
                continue;
            }

            slot = mosn_slot(rg, p, s);
            w = mosn_load(&slot->state);

            if (MOSN_SW_STATE(w) != MOSN_SLOT_SUBMITTED
                || MOSN_SW_CONSUMER(w) != c || MOSN_SW_INC(w) != inc
                || MOSN_SW_GEN(w) != MOSN_ENTRY_GEN(e))
            {
                continue;
            }

            mosn_store(&slot->state,
                       MOSN_SW(MOSN_ENTRY_GEN(e), inc, c, MOSN_SLOT_TAKEN));
            out[n++] = MOSN_PS(p, s);
        }

        /* the slot is marked taken before the entry leaves the ring */
        mosn_store(&ring->tail, tail);
    }

    if (n) {
        cons->taken += (uint64_t) n;
        cons->batches++;
    }

    return n;
}


int
mosn_consumer_complete(mosn_region_t *rg, uint32_t c, uint32_t p,
    uint32_t s, uint64_t *wake_mask)
{
    uint64_t          w;
    mosn_slot_t      *slot;
    mosn_consumer_t  *cons;

    if (p >= rg->nproducers || s >= rg->slots) {
        return -1;
    }

    cons = mosn_consumer(rg, c);
    slot = mosn_slot(rg, p, s);
    w = slot->state;

    if (MOSN_SW_STATE(w) != MOSN_SLOT_TAKEN || MOSN_SW_CONSUMER(w) != c
        || MOSN_SW_INC(w) != (cons->incarnation & 0xffff))
    {
        cons->errors++;
        return -1;
    }

    mosn_store(&slot->state, MOSN_SW(MOSN_SW_GEN(w), MOSN_SW_INC(w), c,
                                     MOSN_SLOT_DONE));

    if (mosn_ring_push(rg, mosn_completion_ring(rg, p, c),
                       MOSN_ENTRY(s, MOSN_SW_GEN(w)))
        != 0)
    {
        cons->errors++;
        return -1;
    }

    cons->completed++;
    wake_mask[p / 64] |= 1ULL << (p % 64);

    return 0;
}


int
mosn_consumer_flush(mosn_region_t *rg, uint32_t c, int sock,
    uint64_t *wake_mask)
{
    int               n;
    uint32_t          p, i;
    uint64_t          bits;
    mosn_producer_t  *prod;

    bits = 0;

    for (i = 0; i < MOSN_WAKE_WORDS; i++) {
        bits |= wake_mask[i];
    }

    if (bits == 0) {
        return 0;
    }

    /* pairs with the fence in mosn_producer_arm() */
    mosn_full_fence();

    n = 0;

    for (p = 0; p < rg->nproducers; p++) {
        if (!(wake_mask[p / 64] & (1ULL << (p % 64)))) {
            continue;
        }

        prod = mosn_producer(rg, p);

        if (mosn_load_relaxed(&prod->need_wakeup)
            && __atomic_exchange_n(&prod->need_wakeup, 0, __ATOMIC_ACQ_REL))
        {
            (void) mosn_producer_notify(rg, sock, p);
            n++;
        }
    }

    for (i = 0; i < MOSN_WAKE_WORDS; i++) {
        wake_mask[i] = 0;
    }

    mosn_consumer(rg, c)->doorbells += (uint64_t) n;

    return n;
}


int
mosn_consumer_pending(mosn_region_t *rg, uint32_t c)
{
    uint32_t      p;
    mosn_ring_t  *ring;

    for (p = 0; p < rg->nproducers; p++) {
        ring = mosn_submit_ring(rg, p, c);

        if (mosn_load(&ring->head) != ring->tail) {
            return 1;
        }
    }

    return 0;
}


static uint64_t  mosn_spin_ns;


void
mosn_consumer_spin(uint64_t ns)
{
    mosn_spin_ns = ns;
}


int
mosn_consumer_wait(mosn_region_t *rg, uint32_t c, int timeout_ms)
{
    uint32_t          seq;
    uint64_t          until;
    mosn_consumer_t  *cons;

    cons = mosn_consumer(rg, c);

    /* under load the next request comes soon: look again before sleeping */
    if (mosn_spin_ns > 0) {
        until = mosn_now_ns() + mosn_spin_ns;

        do {
            if (mosn_consumer_pending(rg, c)) {
                return 1;
            }

#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif

        } while (mosn_now_ns() < until);
    }

    mosn_store(&cons->sleeping, MOSN_SLEEP_FUTEX);

    /* pairs with the fence in mosn_wake_consumer() */
    mosn_full_fence();

    seq = mosn_load(&cons->futex);

    if (mosn_consumer_pending(rg, c)) {
        mosn_store(&cons->sleeping, MOSN_SLEEP_NONE);
        return 1;
    }

    cons->sleeps++;
    (void) mosn_futex_wait(&cons->futex, seq, timeout_ms);
    mosn_store(&cons->sleeping, MOSN_SLEEP_NONE);

    return mosn_consumer_pending(rg, c);
}


/*
 * A consumer that runs an event loop sleeps in that loop, not on its
 * futex: it polls its doorbell socket, and producers ring it as they
 * would wake the futex, only when the consumer said it sleeps (arm).
 *
 *     fd = mosn_consumer_doorbell_open(rg, c);     once, into the loop
 *     ...
 *     serve until nothing is left;
 *     if (mosn_consumer_arm(rg, c)) serve again;   else back to the loop
 *     ...
 *     fd readable: mosn_consumer_disarm(rg, c, fd); serve
 */

int
mosn_consumer_doorbell_open(mosn_region_t *rg, uint32_t c)
{
    int                 fd;
    socklen_t           len;
    struct sockaddr_un  sa;

    if (c >= rg->nconsumers) {
        errno = EINVAL;
        return -1;
    }

    len = mosn_doorbell_name_of(rg, 'c', c, &sa);
    fd = mosn_doorbell_bind(&sa, len, NULL, 0);

    return fd;
}


int
mosn_consumer_arm(mosn_region_t *rg, uint32_t c)
{
    mosn_consumer_t  *cons;

    cons = mosn_consumer(rg, c);

    mosn_store(&cons->sleeping, MOSN_SLEEP_FD);

    /* pairs with the fence in mosn_wake_consumer() */
    mosn_full_fence();

    if (mosn_consumer_pending(rg, c)) {
        mosn_store(&cons->sleeping, MOSN_SLEEP_NONE);
        return 1;
    }

    cons->sleeps++;

    return 0;
}


int
mosn_consumer_disarm(mosn_region_t *rg, uint32_t c, int fd)
{
    mosn_consumer_t  *cons;

    cons = mosn_consumer(rg, c);

    /* awake: producers need not ring while it serves */
    mosn_store(&cons->sleeping, MOSN_SLEEP_NONE);

    if (fd >= 0) {
        (void) mosn_doorbell_drain(fd);
    }

    return mosn_consumer_pending(rg, c);
}


/*
 * Producers ring consumers' doorbells from one unbound socket of their
 * own, made when first needed: the nginx module's callers keep their
 * signatures, and a process that never wakes an event-loop consumer
 * never makes it.
 */

static int  mosn_ring_sock = -1;


static int
mosn_ring_socket(void)
{
    if (mosn_ring_sock == -1) {
        mosn_ring_sock = socket(AF_UNIX,
                                SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    }

    return mosn_ring_sock;
}


static void
mosn_consumer_doorbell_ring(mosn_region_t *rg, uint32_t c)
{
    char                b;
    socklen_t           len;
    struct sockaddr_un  sa;

    if (mosn_ring_socket() == -1) {
        return;
    }

    len = mosn_doorbell_name_of(rg, 'c', c, &sa);
    b = 1;

    /* a full socket buffer already holds a wake-up */
    (void) sendto(mosn_ring_sock, &b, 1, MSG_DONTWAIT,
                  (struct sockaddr *) &sa, len);
}


/* supervisor side */

int
mosn_consumer_alloc(mosn_region_t *rg)
{
    uint32_t          c, st;
    mosn_consumer_t  *cons;

    for (c = 0; c < rg->nconsumers; c++) {
        cons = mosn_consumer(rg, c);
        st = mosn_load(&cons->state);

        if (st == MOSN_CONS_EMPTY || st == MOSN_CONS_DEAD) {
            mosn_store(&cons->state, MOSN_CONS_STARTING);
            return (int) c;
        }
    }

    return -1;
}


static void
mosn_ring_producers(mosn_region_t *rg, int sock)
{
    uint32_t  p;

    for (p = 0; p < rg->nproducers; p++) {
        if (MOSN_OWNER_STATE(mosn_load(&mosn_producer(rg, p)->owner))
            == MOSN_CHAN_OWNED)
        {
            (void) mosn_doorbell_ring(rg, sock, p);
        }
    }
}


void
mosn_consumer_retire(mosn_region_t *rg, uint32_t c, int sock)
{
    if (c >= rg->nconsumers) {
        return;
    }

    mosn_store(&mosn_consumer(rg, c)->state, MOSN_CONS_DEAD);
    __atomic_add_fetch(&rg->hdr->consumer_epoch, 1, __ATOMIC_ACQ_REL);

    /* producers re-queue what the consumer held */
    mosn_ring_producers(rg, sock);
}


/*
 * Hands the channel of a dead producer back once nothing is in flight:
 * completions are drained, slots of dead consumers and slots never
 * published are freed, slots with live consumers are waited for.
 */

static int
mosn_reap_channel(mosn_region_t *rg, uint32_t p)
{
    int               busy;
    uint32_t          s, c, st, gen;
    uint64_t          w, expect, owner;
    mosn_slot_t      *slot;
    mosn_ring_t      *ring;
    mosn_producer_t  *prod;

    prod = mosn_producer(rg, p);
    busy = 0;

    /* one reaper at a time: the supervisor, or an nginx worker claiming */
    expect = mosn_load(&prod->owner);
    owner = expect;

    if (MOSN_OWNER_STATE(expect) != MOSN_CHAN_DRAINING
        || !__atomic_compare_exchange_n(&prod->owner, &expect,
                                        MOSN_OWNER(getpid(),
                                                   MOSN_CHAN_REAPING),
                                        0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
    {
        return 1;
    }

    for (c = 0; c < rg->nconsumers; c++) {
        ring = mosn_completion_ring(rg, p, c);
        mosn_store(&ring->tail, mosn_load(&ring->head));
    }

    for (s = 0; s < rg->slots; s++) {
        slot = mosn_slot(rg, p, s);
        w = mosn_load(&slot->state);
        st = MOSN_SW_STATE(w);
        c = MOSN_SW_CONSUMER(w);
        gen = MOSN_SW_GEN(w);

        if (st == MOSN_SLOT_FREE) {
            continue;
        }

        if (st == MOSN_SLOT_DONE
            || !mosn_consumer_alive(rg, c, MOSN_SW_INC(w)))
        {
            mosn_store(&slot->state, MOSN_SW(gen, 0, 0, MOSN_SLOT_FREE));
            continue;
        }

        /*
         * Never published, or the entry left the ring: a live consumer
         * may have taken it after w was read (it marks the slot before it
         * moves the tail), so free it only if the state is still w.
         */
        if (st == MOSN_SLOT_SUBMITTED
            && !mosn_ring_holds(rg, mosn_submit_ring(rg, p, c), s, gen)
            && __atomic_compare_exchange_n(&slot->state, &w,
                                           MOSN_SW(gen, 0, 0, MOSN_SLOT_FREE),
                                           0, __ATOMIC_ACQ_REL,
                                           __ATOMIC_ACQUIRE))
        {
            continue;
        }

        busy++;
    }

    if (busy) {
        /* a live consumer holds some: another pass, later */
        mosn_store(&prod->owner, owner);
        return busy;
    }

    for (c = 0; c < rg->nconsumers; c++) {
        ring = mosn_completion_ring(rg, p, c);
        mosn_store(&ring->tail, mosn_load(&ring->head));
    }

    prod->in_use = 0;
    prod->waiting = 0;
    prod->notify_fd = -1;
    prod->need_wakeup = 0;

    mosn_store(&prod->owner, MOSN_OWNER(0, MOSN_CHAN_FREE));

    return 0;
}


/*
 * Channels whose owner died (or whose reaper did) are drained and handed
 * back: by the supervisor, and by an nginx worker that finds no free
 * channel, so that crashed workers' channels come back with no
 * supervisor running.  Returns how many dead owners it found; *freed
 * counts the channels that came free.
 */

int
mosn_reap_producers(mosn_region_t *rg, uint32_t *freed)
{
    int               reaped;
    uint32_t          p;
    uint64_t          w;
    mosn_producer_t  *prod;

    reaped = 0;
    *freed = 0;

    for (p = 0; p < rg->nproducers; p++) {
        prod = mosn_producer(rg, p);
        w = mosn_load(&prod->owner);

        switch (MOSN_OWNER_STATE(w)) {

        case MOSN_CHAN_OWNED:
            if (mosn_proc_alive(MOSN_OWNER_PID(w),
                                MOSN_READ_ONCE(prod->starttime)))
            {
                continue;
            }

            break;

        case MOSN_CHAN_CLAIMING:
        case MOSN_CHAN_REAPING:
            if (mosn_proc_alive(MOSN_OWNER_PID(w), 0)) {
                continue;
            }

            break;

        case MOSN_CHAN_DRAINING:
            *freed += (mosn_reap_channel(rg, p) == 0);
            continue;

        default:
            continue;
        }

        if (__atomic_compare_exchange_n(&prod->owner, &w,
                                        MOSN_OWNER(MOSN_OWNER_PID(w),
                                                   MOSN_CHAN_DRAINING),
                                        0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
        {
            reaped++;
            *freed += (mosn_reap_channel(rg, p) == 0);
        }
    }

    return reaped;
}


int
mosn_reap(mosn_region_t *rg, int sock)
{
    int               reaped;
    uint32_t          c, st, freed;
    mosn_consumer_t  *cons;

    reaped = 0;

    for (c = 0; c < rg->nconsumers; c++) {
        cons = mosn_consumer(rg, c);
        st = mosn_load(&cons->state);

        if ((st == MOSN_CONS_LIVE || st == MOSN_CONS_DRAINING)
            && !mosn_proc_alive((pid_t) cons->pid, cons->starttime))
        {
            mosn_consumer_retire(rg, c, sock);
            reaped++;
        }
    }

    return reaped + mosn_reap_producers(rg, &freed);
}


uint32_t
mosn_slots_in_use(mosn_region_t *rg)
{
    uint32_t  p, s, n;

    n = 0;

    for (p = 0; p < rg->nproducers; p++) {
        for (s = 0; s < rg->slots; s++) {
            if (MOSN_SW_STATE(mosn_load(&mosn_slot(rg, p, s)->state))
                != MOSN_SLOT_FREE)
            {
                n++;
            }
        }
    }

    return n;
}
