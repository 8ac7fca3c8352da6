
/*
 * From the master: the shared-memory region, the check of the MOSN config
 * (so "nginx -t" and a reload refuse a broken one), and the Python
 * supervisor that keeps the worker pool alive.
 *
 * The supervisor is one of the master's processes, spawned and respawned
 * as nginx spawns its cache manager: a slot of ngx_processes[] with
 * NGX_PROCESS_RESPAWN, so ngx_reap_children() starts a new one when it
 * dies and nginx's own channel tells it to quit, terminate or reopen its
 * logs.  Everything a supervisor, which runs as root, acts on comes from
 * the master: its arguments, and on reload the orders the master sends
 * over a socket only the two of them hold.  The region is never asked.
 */

#include "ngx_http_mosn_module.h"

#include <dirent.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>


#define NGX_HTTP_MOSN_CHECK_TIMEOUT  30000
#define NGX_HTTP_MOSN_CHECK_OUTPUT   16384

/* the fds a supervisor finds nginx's channel and the master's orders on */
#define NGX_HTTP_MOSN_CHANNEL_FD     3
#define NGX_HTTP_MOSN_ORDERS_FD      4

/* how long the first start waits for the pool before nginx's workers */
#define NGX_HTTP_MOSN_START_WAIT     10000

/* a supervisor that failed to start waits this long before the next */
#define NGX_HTTP_MOSN_RESPAWN_DELAY  1000


static ngx_pid_t ngx_http_mosn_spawn(ngx_cycle_t *cycle, char *const *argv,
    int out_fd);
static char *ngx_http_mosn_prefix(ngx_cycle_t *cycle);
static void ngx_http_mosn_clean_stale(ngx_log_t *log, uid_t owner);
static ngx_int_t ngx_http_mosn_pid_gone(ngx_pid_t pid);
static ngx_int_t ngx_http_mosn_supervisor_alive(void);
static ngx_int_t ngx_http_mosn_supervisor_start(ngx_cycle_t *cycle,
    ngx_int_t respawn);
static void ngx_http_mosn_supervisor_process(ngx_cycle_t *cycle, void *data);
static ngx_int_t ngx_http_mosn_daemon(ngx_cycle_t *cycle,
    ngx_core_conf_t *ccf);
static void ngx_http_mosn_report_started(void);
static void ngx_http_mosn_wait_pool(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_mosn_send_orders(ngx_cycle_t *cycle,
    ngx_http_mosn_main_conf_t *mmcf);
static void ngx_http_mosn_unlink(void);
static void ngx_http_mosn_atexit(void);
static ngx_int_t ngx_http_mosn_region_in_use(const char *name);


/* the slot of ngx_processes[] the supervisor has, and how it got it */
static ngx_int_t  ngx_http_mosn_slot = -1;
static ngx_pid_t  ngx_http_mosn_spawned = NGX_INVALID_PID;

/*
 * A shared lock on the region, taken by the master that made it and held
 * by every nginx process of it (the workers inherit it), so that another
 * nginx started with the same mosn_shm_name does not take a running
 * gateway's region away; the kernel drops it with the last of them.
 */
static int        ngx_http_mosn_lock = -1;

/* the master's own copy of the region's name: never read back */
static char       ngx_http_mosn_shm[MOSN_NAME_MAX];
static ngx_uint_t ngx_http_mosn_max_workers;
static ngx_pid_t  ngx_http_mosn_owner = NGX_INVALID_PID;

/*
 * The master's orders to the supervisor: one datagram per reload,
 * "SEQ WORKERS CONFIG".  Both ends stay open in the master, so a
 * supervisor respawned by ngx_reap_children() inherits the same socket;
 * it was started with the newest SEQ and skips older orders.
 */
static int        ngx_http_mosn_orders[2] = { -1, -1 };
static ngx_uint_t ngx_http_mosn_seq;

/* the daemon's report to the process that started it, till it is sent */
static int        ngx_http_mosn_started = -1;


/*
 * fork and exec in a clean state: no nginx fds, no blocked signals, and
 * the nginx prefix as the working directory, so that relative paths in
 * the MOSN config mean what they mean in nginx.conf
 */

static ngx_pid_t
ngx_http_mosn_spawn(ngx_cycle_t *cycle, char *const *argv, int out_fd)
{
    char      *dir;
    ngx_pid_t  pid;
    sigset_t   set;

    dir = ngx_http_mosn_prefix(cycle);
    if (dir == NULL) {
        return NGX_INVALID_PID;
    }

    pid = fork();

    if (pid == -1) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno,
                      "mosn: fork() failed");
        return NGX_INVALID_PID;
    }

    if (pid > 0) {
        return pid;
    }

    sigemptyset(&set);
    sigprocmask(SIG_SETMASK, &set, NULL);
    signal(SIGPIPE, SIG_DFL);

    if (out_fd != -1) {
        dup2(out_fd, STDOUT_FILENO);
        dup2(out_fd, STDERR_FILENO);
    }

    setsid();

    if (chdir(dir) == -1) {
        dprintf(STDERR_FILENO, "mosn: chdir(\"%s\") failed: %s\n", dir,
                strerror(errno));
        _exit(126);
    }

    /* the listening sockets and log files stay with nginx */
    close_range(3, ~0U, 0);

    execvp(argv[0], argv);

    dprintf(STDERR_FILENO, "mosn: cannot run \"%s\": %s\n", argv[0],
            strerror(errno));

    _exit(127);
}


static char *
ngx_http_mosn_prefix(ngx_cycle_t *cycle)
{
    char  *dir;

    dir = ngx_pnalloc(cycle->pool, cycle->prefix.len + 2);
    if (dir == NULL) {
        return NULL;
    }

    if (cycle->prefix.len == 0) {
        dir[0] = '.';
        dir[1] = '\0';

    } else {
        (void) ngx_cpystrn((u_char *) dir, cycle->prefix.data,
                           cycle->prefix.len + 1);
    }

    return dir;
}


ngx_int_t
ngx_http_mosn_pool_check(ngx_conf_t *cf, ngx_http_mosn_main_conf_t *mmcf)
{
    int          fds[2], status;
    char       **argv, *line, *next;
    u_char      *out;
    size_t       len;
    ssize_t      n;
    ngx_int_t    rc;
    ngx_str_t   *chain;
    ngx_pid_t    pid;
    ngx_uint_t   i, argc;
    ngx_msec_t   deadline;
    struct pollfd  pfd;

    if (ngx_process == NGX_PROCESS_SIGNALLER) {
        return NGX_OK;
    }

    argc = 8 + 2 * mmcf->chains.nelts;
    argv = ngx_pcalloc(cf->pool, sizeof(char *) * (argc + 1));
    out = ngx_pnalloc(cf->pool, NGX_HTTP_MOSN_CHECK_OUTPUT + 1);

    if (argv == NULL || out == NULL) {
        return NGX_ERROR;
    }

    argc = 0;
    argv[argc++] = (char *) mmcf->python.data;
    argv[argc++] = "-P";        /* not the working directory's modules */
    argv[argc++] = "-m";
    argv[argc++] = "pyworker";
    argv[argc++] = "check";
    argv[argc++] = "--nginx";
    argv[argc++] = (char *) mmcf->config.data;

    chain = mmcf->chains.elts;

    for (i = 0; i < mmcf->chains.nelts; i++) {
        argv[argc++] = "--listener";
        argv[argc] = ngx_pnalloc(cf->pool, chain[i].len + 1);
        if (argv[argc] == NULL) {
            return NGX_ERROR;
        }

        (void) ngx_cpystrn((u_char *) argv[argc], chain[i].data,
                           chain[i].len + 1);
        argc++;
    }

    argv[argc] = NULL;

    if (pipe2(fds, O_CLOEXEC) == -1) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, ngx_errno,
                      "mosn: pipe() failed");
        return NGX_ERROR;
    }

    pid = ngx_http_mosn_spawn(cf->cycle, argv, fds[1]);
    close(fds[1]);

    if (pid == NGX_INVALID_PID) {
        close(fds[0]);
        return NGX_ERROR;
    }

    len = 0;
    deadline = ngx_current_msec + NGX_HTTP_MOSN_CHECK_TIMEOUT;
    rc = NGX_OK;

    for ( ;; ) {
        pfd.fd = fds[0];
        pfd.events = POLLIN;

        ngx_time_update();

        if ((ngx_msec_int_t) (deadline - ngx_current_msec) <= 0) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "mosn: checking \"%V\" took over %d s",
                          &mmcf->config, NGX_HTTP_MOSN_CHECK_TIMEOUT / 1000);
            kill(pid, SIGKILL);
            rc = NGX_ERROR;
            break;
        }

        if (poll(&pfd, 1, (int) (deadline - ngx_current_msec)) <= 0) {
            continue;
        }

        n = read(fds[0], out + len, NGX_HTTP_MOSN_CHECK_OUTPUT - len);

        if (n <= 0) {
            break;
        }

        len += n;

        if (len == NGX_HTTP_MOSN_CHECK_OUTPUT) {
            break;
        }
    }

    close(fds[0]);

    while (waitpid(pid, &status, 0) == -1 && ngx_errno == NGX_EINTR) {
        /* void */
    }

    if (rc == NGX_OK && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        return NGX_OK;
    }

    out[len] = '\0';

    for (line = (char *) out; line && *line; line = next) {
        next = strchr(line, '\n');

        if (next) {
            *next++ = '\0';
        }

        if (*line) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0, "mosn: %s", line);
        }
    }

    ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                  "mosn: the MOSN config \"%V\" is refused by \"%s -m "
                  "pyworker check\"", &mmcf->config, mmcf->python.data);

    return NGX_ERROR;
}


ngx_int_t
ngx_http_mosn_pool_start(ngx_cycle_t *cycle, ngx_http_mosn_main_conf_t *mmcf)
{
    int                      uid, gid;
    char                     err[256], name[MOSN_NAME_MAX];
    uid_t                    owner;
    uint32_t                 suffix;
    ngx_uint_t               i, nworkers;
    ngx_core_conf_t         *ccf;
    mosn_region_conf_t       conf;
    mosn_shm_header_t       *h;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);
    nworkers = ccf->master ? (ngx_uint_t) ccf->worker_processes : 1;

    conf.nproducers = ngx_min(MOSN_MAX_PRODUCERS,
                              ngx_max(4, 2 * nworkers + 2));
    conf.nconsumers = ngx_min(MOSN_MAX_CONSUMERS,
                              ngx_max(4, 2 * mmcf->workers + 2));
    conf.slots = (uint32_t) mmcf->slots;
    conf.slot_size = (uint32_t) mmcf->slot_size;

    if (w->rg.hdr == NULL) {

        /*
         * also without a pool: the process that forks the daemon must not
         * be the region's owner, or its exit would remove the region
         */

        if (ngx_process == NGX_PROCESS_SINGLE
            && ccf->daemon && !ngx_inherited
            && ngx_http_mosn_daemon(cycle, ccf) != NGX_OK)
        {
            return NGX_ERROR;
        }

        uid = -1;
        gid = -1;

        /* workers and Python workers run as the "user" of nginx */
        if (geteuid() == 0) {
            uid = (int) ccf->user;
            gid = (int) ccf->group;
        }

        owner = (uid != -1) ? (uid_t) uid : geteuid();

        if (mmcf->shm_name.len) {
            ngx_snprintf((u_char *) name, sizeof(name), "/%V%Z",
                         &mmcf->shm_name);

        } else {
            ngx_http_mosn_clean_stale(cycle->log, owner);
            ngx_snprintf((u_char *) name, sizeof(name), "/ngx_mosn.%P%Z",
                         ngx_pid);

            /*
             * a name another user took first: the default one may be
             * any, one that cannot be guessed ahead
             */

            for (i = 0; i < 8 && mosn_region_foreign(name, owner, err,
                                                     sizeof(err));
                 i++)
            {
                ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                              "mosn: %s; the region takes another name",
                              err);

                /* the kernel's randomness: random() is seeded with the pid */
                if (getrandom(&suffix, sizeof(suffix), 0)
                    != (ssize_t) sizeof(suffix))
                {
                    suffix = (uint32_t) ngx_random();
                }

                ngx_snprintf((u_char *) name, sizeof(name),
                             "/ngx_mosn.%P.%08xD%Z", ngx_pid, suffix);
            }
        }

        if (mosn_region_foreign(name, owner, err, sizeof(err))) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "mosn: %s: remove it, or give this nginx another "
                          "mosn_shm_name", err);
            return NGX_ERROR;
        }

        if (ngx_http_mosn_region_in_use(name)) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "mosn: the region \"%s\" is in use by another "
                          "running nginx: stop it first, or give this one "
                          "another mosn_shm_name", name);
            return NGX_ERROR;
        }

        if (mosn_region_create(&w->rg, name, &conf, uid, gid, err,
                               sizeof(err))
            != 0)
        {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "mosn: %s", err);
            return NGX_ERROR;
        }

        if (ngx_http_mosn_lock == -1) {
            ngx_http_mosn_lock = shm_open(name, O_RDONLY, 0);

            if (ngx_http_mosn_lock == -1
                || flock(ngx_http_mosn_lock, LOCK_SH | LOCK_NB) == -1)
            {
                ngx_log_error(NGX_LOG_WARN, cycle->log, ngx_errno,
                              "mosn: cannot lock the region \"%s\": "
                              "another nginx with the same "
                              "mosn_shm_name could take it over", name);
            }
        }

        (void) ngx_cpystrn((u_char *) ngx_http_mosn_shm, (u_char *) name,
                           sizeof(ngx_http_mosn_shm));

        /* a consumer entry for each worker and one for each replacement */
        ngx_http_mosn_max_workers = conf.nconsumers / 2 - 1;

        /* a start that fails from here on leaves no region behind */
        if (ngx_http_mosn_owner == NGX_INVALID_PID) {
            (void) atexit(ngx_http_mosn_atexit);
        }

        ngx_http_mosn_owner = ngx_pid;

        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "mosn: region \"%s\": %uD bytes, %uD producers, "
                      "%uD consumers, %uD slots of %uD bytes each",
                      name, (uint32_t) w->rg.size, conf.nproducers,
                      conf.nconsumers, conf.slots, conf.slot_size);

    } else if (w->rg.slots != conf.slots
               || w->rg.slot_size != conf.slot_size
               || w->rg.nproducers < conf.nproducers
               || w->rg.nconsumers < conf.nconsumers)
    {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "mosn: mosn_slots, mosn_slot_size, mosn_workers "
                      "and worker_processes beyond the region's room "
                      "take effect on restart, not on reload");
    }

    /* for tools only: no process acts on these */
    h = w->rg.hdr;

    ngx_snprintf((u_char *) h->config_path, MOSN_PATH_MAX - 1, "%V%Z",
                 &mmcf->config);
    h->config_path[MOSN_PATH_MAX - 1] = '\0';
    h->desired_workers = (uint32_t) ngx_min(mmcf->workers,
                                            ngx_http_mosn_max_workers);
    __atomic_add_fetch(&h->reload_seq, 1, __ATOMIC_RELEASE);

    if (!mmcf->spawn) {
        ngx_http_mosn_report_started();
        return NGX_OK;
    }

    ngx_http_mosn_seq++;

    if (ngx_http_mosn_supervisor_alive()) {

        /*
         * A reload: the running supervisor rolls its workers onto the new
         * config; the shutdown that ngx_signal_worker_processes() sends
         * to the old cycle's processes is not for it.
         */

        ngx_processes[ngx_http_mosn_slot].just_spawn = 1;

        return ngx_http_mosn_send_orders(cycle, mmcf);
    }

    if (ngx_http_mosn_supervisor_start(cycle,
                                       ngx_process == NGX_PROCESS_MASTER
                                       ? NGX_PROCESS_JUST_RESPAWN
                                       : NGX_PROCESS_RESPAWN)
        != NGX_OK)
    {
        ngx_http_mosn_unlink();
        return NGX_ERROR;
    }

    ngx_http_mosn_report_started();

    if (ngx_process == NGX_PROCESS_SINGLE && ccf->master) {
        ngx_http_mosn_wait_pool(cycle);
    }

    return NGX_OK;
}


/*
 * nginx daemonizes after the modules are initialised: a supervisor started
 * before that would be a child of the process that exits, and no master
 * could reap or respawn it.  So the first start forks into the daemon
 * here, as main() would have.  The process that started nginx exits with
 * the start's outcome, as a stock nginx's does: the daemon reports over a
 * pipe once its region and supervisor are up, and one that fails before
 * that closes the pipe by exiting.
 */

static ngx_int_t
ngx_http_mosn_daemon(ngx_cycle_t *cycle, ngx_core_conf_t *ccf)
{
    int        fd[2], null;
    u_char     ok;
    ssize_t    n;
    ngx_pid_t  pid;

    if (pipe2(fd, O_CLOEXEC) == -1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "mosn: pipe2() failed");
        return NGX_ERROR;
    }

    /*
     * ngx_daemon() of its own: a stock nginx's exits in the parent at
     * once, where this parent waits for the daemon's report
     */

    pid = fork();

    if (pid == -1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno, "fork() failed");
        (void) close(fd[0]);
        (void) close(fd[1]);
        return NGX_ERROR;
    }

    if (pid > 0) {
        (void) close(fd[1]);

        do {
            n = read(fd[0], &ok, 1);
        } while (n == -1 && ngx_errno == NGX_EINTR);

        if (n != 1) {
            /* the daemon wrote the pid file before it failed */
            (void) ngx_delete_file(ccf->pid.data);
            exit(1);
        }

        /* the pid file is there when the command that started nginx ends */
        ngx_pid = pid;
        exit(ngx_create_pidfile(&ccf->pid, cycle->log) == NGX_OK ? 0 : 1);
    }

    (void) close(fd[0]);
    ngx_http_mosn_started = fd[1];

    ngx_parent = ngx_pid;
    ngx_pid = ngx_getpid();

    if (setsid() == -1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno, "setsid() failed");
        return NGX_ERROR;
    }

    umask(0);

    /* stderr stays: the errors of the rest of the start reach the user */
    null = open("/dev/null", O_RDWR);

    if (null == -1
        || dup2(null, STDIN_FILENO) == -1
        || dup2(null, STDOUT_FILENO) == -1)
    {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "mosn: cannot open \"/dev/null\"");
        return NGX_ERROR;
    }

    if (null > STDERR_FILENO) {
        (void) close(null);
    }

    ngx_daemonized = 1;
    ccf->daemon = 0;

    /* as early as a stock nginx would: "nginx -s" finds it */
    (void) ngx_create_pidfile(&ccf->pid, cycle->log);

    return NGX_OK;
}


static void
ngx_http_mosn_report_started(void)
{
    if (ngx_http_mosn_started == -1) {
        return;
    }

    /*
     * a parent killed while it waits must not take the daemon with it:
     * nginx ignores SIGPIPE, but only once the modules are initialised
     */
    signal(SIGPIPE, SIG_IGN);

    (void) write(ngx_http_mosn_started, "1", 1);
    (void) close(ngx_http_mosn_started);
    ngx_http_mosn_started = -1;
}


/*
 * On the first start nginx's workers come after the pool serves: the
 * listening sockets are open, so the first connections wait in the listen
 * queue for a worker that finds the filters ready, instead of waiting at
 * the filters within mosn_timeout.  The state is only a cue to go on: a
 * region that lies about it costs at most the bound.
 *
 * nginx has no signal handlers yet: the signals its master acts on are
 * blocked here as its master process cycle blocks them, and reach it when
 * that cycle first waits for signals, not the default action now.
 */

static void
ngx_http_mosn_wait_pool(ngx_cycle_t *cycle)
{
    sigset_t                 set;
    ngx_pid_t                pid;
    ngx_msec_t               waited;
    siginfo_t                info;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, ngx_signal_value(NGX_RECONFIGURE_SIGNAL));
    sigaddset(&set, ngx_signal_value(NGX_REOPEN_SIGNAL));
    sigaddset(&set, ngx_signal_value(NGX_NOACCEPT_SIGNAL));
    sigaddset(&set, ngx_signal_value(NGX_TERMINATE_SIGNAL));
    sigaddset(&set, ngx_signal_value(NGX_SHUTDOWN_SIGNAL));
    sigaddset(&set, ngx_signal_value(NGX_CHANGEBIN_SIGNAL));

    if (sigprocmask(SIG_BLOCK, &set, NULL) == -1) {
        return;
    }

    pid = ngx_http_mosn_spawned;

    for (waited = 0; waited < NGX_HTTP_MOSN_START_WAIT; waited += 10) {

        if (w->rg.hdr->pool_state != MOSN_POOL_STARTING) {
            return;
        }

        /* dead already: nginx reaps and respawns it once it runs */
        info.si_pid = 0;

        if (waitid(P_PID, pid, &info, WEXITED | WNOHANG | WNOWAIT) == -1
            || info.si_pid == pid)
        {
            return;
        }

        ngx_msleep(10);
    }

    ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                  "mosn: no Python worker serves after %d s; nginx starts "
                  "and requests wait for one within mosn_timeout",
                  NGX_HTTP_MOSN_START_WAIT / 1000);
}


/* the master's own bookkeeping: never a pid read from anywhere else */

static ngx_int_t
ngx_http_mosn_supervisor_alive(void)
{
    ngx_process_t  *p;

    if (ngx_http_mosn_slot < 0 || ngx_http_mosn_slot >= ngx_last_process) {
        return 0;
    }

    p = &ngx_processes[ngx_http_mosn_slot];

    return p->proc == ngx_http_mosn_supervisor_process
           && p->pid != NGX_INVALID_PID && !p->exited && !p->exiting;
}


static ngx_int_t
ngx_http_mosn_supervisor_start(ngx_cycle_t *cycle, ngx_int_t respawn)
{
    ngx_pid_t  pid;

    if (ngx_http_mosn_orders[0] != -1) {
        /* orders for the one before stay unread: start afresh */
        close(ngx_http_mosn_orders[0]);
        close(ngx_http_mosn_orders[1]);
    }

    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0,
                   ngx_http_mosn_orders)
        == -1)
    {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "mosn: socketpair() failed");
        ngx_http_mosn_orders[0] = -1;
        ngx_http_mosn_orders[1] = -1;
        return NGX_ERROR;
    }

    pid = ngx_spawn_process(cycle, ngx_http_mosn_supervisor_process, NULL,
                            "mosn supervisor process", respawn);

    if (pid == NGX_INVALID_PID) {
        return NGX_ERROR;
    }

    ngx_http_mosn_slot = ngx_process_slot;
    ngx_http_mosn_spawned = pid;

    return NGX_OK;
}


/*
 * In the child, at every (re)spawn: the arguments come from the cycle the
 * master runs now, so a respawned supervisor starts on the current config.
 */

static void
ngx_http_mosn_supervisor_process(ngx_cycle_t *cycle, void *data)
{
    int                         fd, ch, od, status;
    char                       *argv[24], *dir, workers[NGX_INT_T_LEN + 1],
                                uid[NGX_INT_T_LEN + 1],
                                gid[NGX_INT_T_LEN + 1],
                                seq[NGX_INT_T_LEN + 1],
                                channel[NGX_INT_T_LEN + 1],
                                orders[NGX_INT_T_LEN + 1];
    sigset_t                    set;
    ngx_uint_t                  argc, n;
    ngx_process_t              *prev;
    ngx_core_conf_t            *ccf;
    ngx_http_mosn_main_conf_t  *mmcf;

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);
    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_mosn_module);

    /* the kernel ends the supervisor if the master is killed */
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) == -1 || getppid() != ngx_parent) {
        _exit(2);
    }

    /*
     * One that exited by itself failed to start (a supervisor only exits
     * when told to): the next try waits, as nginx has no delay of its own.
     */
    prev = &ngx_processes[ngx_process_slot];
    status = prev->status;

    if (prev->proc == ngx_http_mosn_supervisor_process && prev->exited
        && WIFEXITED(status) && WEXITSTATUS(status) != 0)
    {
        ngx_msleep(NGX_HTTP_MOSN_RESPAWN_DELAY);
    }

    dir = ngx_http_mosn_prefix(cycle);
    if (mmcf == NULL || dir == NULL || chdir(dir) == -1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "mosn: cannot start the Python supervisor in \"%s\"",
                      dir ? dir : "");
        _exit(2);
    }

    n = ngx_min(mmcf->workers, ngx_http_mosn_max_workers);

    ngx_snprintf((u_char *) workers, sizeof(workers), "%ui%Z", n);
    ngx_snprintf((u_char *) seq, sizeof(seq), "%ui%Z", ngx_http_mosn_seq);
    ngx_snprintf((u_char *) channel, sizeof(channel), "%d%Z",
                 NGX_HTTP_MOSN_CHANNEL_FD);
    ngx_snprintf((u_char *) orders, sizeof(orders), "%d%Z",
                 NGX_HTTP_MOSN_ORDERS_FD);

    argc = 0;
    argv[argc++] = (char *) mmcf->python.data;
    argv[argc++] = "-P";        /* not the working directory's modules */
    argv[argc++] = "-m";
    argv[argc++] = "pyworker";
    argv[argc++] = "serve";
    argv[argc++] = "--shm";
    argv[argc++] = ngx_http_mosn_shm;
    argv[argc++] = "--config";
    argv[argc++] = (char *) mmcf->config.data;
    argv[argc++] = "--workers";
    argv[argc++] = workers;
    argv[argc++] = "--nginx-channel";
    argv[argc++] = channel;
    argv[argc++] = "--orders";
    argv[argc++] = orders;
    argv[argc++] = "--orders-seq";
    argv[argc++] = seq;

    if (geteuid() == 0) {
        ngx_snprintf((u_char *) uid, sizeof(uid), "%d%Z", (int) ccf->user);
        ngx_snprintf((u_char *) gid, sizeof(gid), "%d%Z", (int) ccf->group);

        argv[argc++] = "--uid";
        argv[argc++] = uid;
        argv[argc++] = "--gid";
        argv[argc++] = gid;
    }

    argv[argc] = NULL;

    /*
     * nginx's channel and the orders on fixed fds; the pool's stdout and
     * stderr are nginx's error_log (the Python side logs its warnings and
     * errors to stderr); nothing else of nginx's crosses the exec
     */

    fd = ngx_log_get_file_log(cycle->log)->file->fd;

    if ((fd != STDERR_FILENO && dup2(fd, STDERR_FILENO) == -1)
        || dup2(STDERR_FILENO, STDOUT_FILENO) == -1)
    {
        _exit(2);
    }

    /* out of the way first: either may sit on the other's number */
    ch = fcntl(ngx_channel, F_DUPFD, NGX_HTTP_MOSN_ORDERS_FD + 1);
    od = fcntl(ngx_http_mosn_orders[1], F_DUPFD, NGX_HTTP_MOSN_ORDERS_FD + 1);

    if (ch == -1 || od == -1
        || dup2(ch, NGX_HTTP_MOSN_CHANNEL_FD) == -1
        || dup2(od, NGX_HTTP_MOSN_ORDERS_FD) == -1)
    {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "mosn: dup2() failed");
        _exit(2);
    }

    fd = open("/dev/null", O_RDONLY);
    if (fd != -1) {
        (void) dup2(fd, STDIN_FILENO);
    }

    close_range(NGX_HTTP_MOSN_ORDERS_FD + 1, ~0U, 0);

    sigemptyset(&set);
    sigprocmask(SIG_SETMASK, &set, NULL);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGSYS, SIG_DFL);

    /* Ctrl-C in a terminal is for nginx: the master stops the pool */
    setsid();

    execvp(argv[0], argv);

    ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                  "mosn: cannot run \"%s\"", argv[0]);

    /* nginx respawns anything but this */
    _exit(2);
}


static ngx_int_t
ngx_http_mosn_send_orders(ngx_cycle_t *cycle, ngx_http_mosn_main_conf_t *mmcf)
{
    u_char  *buf, *p;
    size_t   len;

    len = 2 * NGX_INT_T_LEN + 2 + mmcf->config.len;

    buf = ngx_pnalloc(cycle->pool, len);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    p = ngx_snprintf(buf, len, "%ui %ui %V", ngx_http_mosn_seq,
                     ngx_min(mmcf->workers, ngx_http_mosn_max_workers),
                     &mmcf->config);

    if (send(ngx_http_mosn_orders[0], buf, p - buf, 0) == -1) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno,
                      "mosn: cannot send the Python supervisor %P its "
                      "orders; it keeps its workers on the old config",
                      ngx_processes[ngx_http_mosn_slot].pid);
        return NGX_OK;
    }

    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "mosn: asked the Python supervisor %P to reload",
                  ngx_processes[ngx_http_mosn_slot].pid);

    return NGX_OK;
}


void
ngx_http_mosn_pool_stop(ngx_cycle_t *cycle)
{
    /*
     * The master leaves after its processes, the supervisor among them;
     * without a master (master_process off) nothing else tells it.
     */

    if (ngx_http_mosn_supervisor_alive()) {
        (void) kill(ngx_processes[ngx_http_mosn_slot].pid, SIGTERM);
    }

    ngx_http_mosn_unlink();
}


static void
ngx_http_mosn_unlink(void)
{
    if (ngx_http_mosn_shm[0] != '\0' && ngx_pid == ngx_http_mosn_owner) {
        (void) mosn_region_unlink(ngx_http_mosn_shm);
        ngx_http_mosn_shm[0] = '\0';
    }
}


/*
 * A region whose lock is held belongs to a gateway that runs: its name is
 * not taken over (a region left by a crash holds no lock).
 */

static ngx_int_t
ngx_http_mosn_region_in_use(const char *name)
{
    int  fd, held;

    fd = shm_open(name, O_RDONLY, 0);

    if (fd == -1) {
        return 0;
    }

    held = (flock(fd, LOCK_EX | LOCK_NB) == -1 && errno == EWOULDBLOCK);

    /* closing it drops the lock just taken, if any */
    close(fd);

    return held;
}


/* nginx's worker processes exit too: only the master unlinks */

static void
ngx_http_mosn_atexit(void)
{
    if (getpid() == ngx_http_mosn_owner) {
        ngx_http_mosn_unlink();
    }
}


/*
 * Regions left by masters that were killed: named after their pid (and,
 * where another user had taken that name, a random suffix); only those
 * of this gateway's owner.
 */

static void
ngx_http_mosn_clean_stale(ngx_log_t *log, uid_t owner)
{
    DIR            *dir;
    char            path[MOSN_NAME_MAX + 1], err[256];
    size_t          len, digits;
    ngx_int_t       pid;
    struct dirent  *de;

    dir = opendir("/dev/shm");
    if (dir == NULL) {
        return;
    }

    while ((de = readdir(dir)) != NULL) {
        if (ngx_strncmp(de->d_name, "ngx_mosn.", 9) != 0
            || ngx_strlen(de->d_name) >= MOSN_NAME_MAX)
        {
            continue;
        }

        /* the region "ngx_mosn.PID", or its "ngx_mosn.PID.wake" */
        len = ngx_strlen(de->d_name + 9);

        if (len > sizeof(MOSN_WAKE_DIR_SUFFIX) - 1
            && ngx_strcmp(de->d_name + 9 + len
                          - (sizeof(MOSN_WAKE_DIR_SUFFIX) - 1),
                          MOSN_WAKE_DIR_SUFFIX) == 0)
        {
            len -= sizeof(MOSN_WAKE_DIR_SUFFIX) - 1;
        }

        /* "PID", or "PID.SUFFIX" of 8 hex digits */
        digits = strspn(de->d_name + 9, "0123456789");

        if (digits < len
            && (len - digits != 9 || de->d_name[9 + digits] != '.'
                || strspn(de->d_name + 10 + digits, "0123456789abcdef") < 8))
        {
            continue;
        }

        pid = ngx_atoi((u_char *) de->d_name + 9, digits);

        if (pid <= 0 || !ngx_http_mosn_pid_gone((ngx_pid_t) pid)) {
            continue;
        }

        ngx_snprintf((u_char *) path, sizeof(path), "/%*s%Z",
                     (size_t) 9 + len, de->d_name);

        /* another user's, or a running gateway's of that very name */
        if (mosn_region_foreign(path, owner, err, sizeof(err))
            || ngx_http_mosn_region_in_use(path))
        {
            continue;
        }

        if (mosn_region_unlink(path) == 0) {
            ngx_log_error(NGX_LOG_NOTICE, log, 0,
                          "mosn: removed the stale region \"%s\"", path);
        }
    }

    closedir(dir);
}


/* a killed master may wait as a zombie for its reaper: that is gone too */

static ngx_int_t
ngx_http_mosn_pid_gone(ngx_pid_t pid)
{
    int      fd;
    char     path[32], buf[512], *p;
    ssize_t  n;

    if (kill(pid, 0) == -1) {
        return ngx_errno == ESRCH;
    }

    ngx_snprintf((u_char *) path, sizeof(path), "/proc/%P/stat%Z", pid);

    fd = open(path, O_RDONLY);
    if (fd == -1) {
        return 0;
    }

    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);

    if (n <= 0) {
        return 0;
    }

    buf[n] = '\0';
    p = strrchr(buf, ')');

    return p != NULL && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}
