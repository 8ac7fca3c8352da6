
/*
 * The region: creating, checking and attaching the shared memory and its
 * wake-up directory, the addresses of its parts, and what every side
 * needs of a process (its start time, whether it lives) and of a futex.
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

#include "shm_core.h"


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

    /* what a run before left is replaced; another user's is left alone */
    if (mosn_region_foreign(name, uid != (uid_t) -1 ? uid : geteuid(), err,
                            errlen))
    {
        return -1;
    }

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


/*
 * Something at a region's name, or at its wake-up directory's, that is
 * neither the owner's nor this process's: another local user took the
 * name first.  /dev/shm is writable by all; such a thing is never removed
 * nor used.  1 (err says what and whose), or 0.
 */

int
mosn_region_foreign(const char *name, uid_t owner, char *err, size_t errlen)
{
    int            i;
    char           path[sizeof("/dev/shm") + MOSN_NAME_MAX];
    const char    *at[2];
    struct stat    st;
    mosn_region_t  r;

    if (mosn_wake_dir_name(&r, name, NULL, 0) != 0) {
        /* not a name: creating the region says why */
        return 0;
    }

    (void) snprintf(path, sizeof(path), "/dev/shm/%s",
                    name + strspn(name, "/"));

    at[0] = path;
    at[1] = r.wake_dir;

    for (i = 0; i < 2; i++) {
        if (lstat(at[i], &st) == -1) {
            continue;
        }

        if (st.st_uid != owner && st.st_uid != geteuid()) {
            mosn_err(err, errlen, "\"%s\" is in the way: it belongs to "
                     "uid %u (another user took the name first)", at[i],
                     (unsigned) st.st_uid);
            return 1;
        }
    }

    return 0;
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

int
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


void
mosn_futex_wake(uint32_t *addr)
{
    (void) syscall(SYS_futex, addr, FUTEX_WAKE, 1, NULL, NULL, 0);
}


