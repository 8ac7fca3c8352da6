
/*
 * From the master: the shared-memory region, the check of the MOSN config
 * (so "nginx -t" and a reload refuse a broken one), and the Python
 * supervisor that keeps the worker pool alive.
 */

#include "ngx_http_mosn_module.h"

#include <dirent.h>
#include <poll.h>


#define NGX_HTTP_MOSN_CHECK_TIMEOUT  30000
#define NGX_HTTP_MOSN_CHECK_OUTPUT   16384


static ngx_pid_t ngx_http_mosn_spawn(ngx_cycle_t *cycle, char *const *argv,
    int out_fd);
static char *ngx_http_mosn_prefix(ngx_cycle_t *cycle);
static void ngx_http_mosn_clean_stale(ngx_log_t *log);
static ngx_int_t ngx_http_mosn_supervisor_start(ngx_cycle_t *cycle,
    ngx_http_mosn_main_conf_t *mmcf);


static ngx_pid_t  ngx_http_mosn_supervisor = -1;


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
    ngx_uint_t               nworkers;
    ngx_core_conf_t         *ccf;
    mosn_region_conf_t       conf;
    mosn_shm_header_t       *h;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);
    nworkers = ccf->master ? (ngx_uint_t) ccf->worker_processes : 1;

    conf.nproducers = ngx_min(MOSN_MAX_PRODUCERS, ngx_max(4, 2 * nworkers + 2));
    conf.nconsumers = ngx_min(MOSN_MAX_CONSUMERS,
                              ngx_max(4, 2 * mmcf->workers + 2));
    conf.slots = (uint32_t) mmcf->slots;
    conf.slot_size = (uint32_t) mmcf->slot_size;

    if (w->rg.hdr == NULL) {

        if (mmcf->shm_name.len) {
            ngx_snprintf((u_char *) name, sizeof(name), "/%V%Z",
                         &mmcf->shm_name);

        } else {
            ngx_http_mosn_clean_stale(cycle->log);
            ngx_snprintf((u_char *) name, sizeof(name), "/ngx_mosn.%P%Z",
                         ngx_pid);
        }

        uid = -1;
        gid = -1;

        /* workers and Python workers run as the "user" of nginx */
        if (geteuid() == 0) {
            uid = (int) ccf->user;
            gid = (int) ccf->group;
        }

        if (mosn_region_create(&w->rg, name, &conf, uid, gid, err,
                               sizeof(err))
            != 0)
        {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "mosn: %s", err);
            return NGX_ERROR;
        }

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

    h = w->rg.hdr;

    ngx_snprintf((u_char *) h->config_path, MOSN_PATH_MAX, "%V%Z",
                 &mmcf->config);
    h->desired_workers = (uint32_t) ngx_min(mmcf->workers,
                                            w->rg.nconsumers / 2 - 1);
    __atomic_add_fetch(&h->reload_seq, 1, __ATOMIC_RELEASE);

    if (!mmcf->spawn) {
        return NGX_OK;
    }

    if (ngx_http_mosn_supervisor > 0
        && kill(ngx_http_mosn_supervisor, SIGHUP) == 0)
    {
        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "mosn: asked the Python supervisor %P to reload",
                      ngx_http_mosn_supervisor);
        return NGX_OK;
    }

    return ngx_http_mosn_supervisor_start(cycle, mmcf);
}


static ngx_int_t
ngx_http_mosn_supervisor_start(ngx_cycle_t *cycle,
    ngx_http_mosn_main_conf_t *mmcf)
{
    char                    *argv[16], workers[NGX_INT_T_LEN + 1],
                             uid[NGX_INT_T_LEN + 1], gid[NGX_INT_T_LEN + 1];
    ngx_uint_t               argc;
    ngx_core_conf_t         *ccf;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    ngx_snprintf((u_char *) workers, sizeof(workers), "%uD%Z",
                 w->rg.hdr->desired_workers);

    argc = 0;
    argv[argc++] = (char *) mmcf->python.data;
    argv[argc++] = "-P";
    argv[argc++] = "-m";
    argv[argc++] = "pyworker";
    argv[argc++] = "serve";
    argv[argc++] = "--shm";
    argv[argc++] = w->rg.name;
    argv[argc++] = "--config";
    argv[argc++] = (char *) mmcf->config.data;
    argv[argc++] = "--workers";
    argv[argc++] = workers;

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
     * The pool's stderr is nginx's error_log: this runs before nginx
     * points its own stderr there on the first start, and the Python side
     * logs its warnings and errors to stderr.
     */

    ngx_http_mosn_supervisor = ngx_http_mosn_spawn(cycle, argv,
                               ngx_log_get_file_log(cycle->log)->file->fd);

    if (ngx_http_mosn_supervisor == NGX_INVALID_PID) {
        return NGX_ERROR;
    }

    w->rg.hdr->supervisor_pid = (uint32_t) ngx_http_mosn_supervisor;

    ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                  "mosn: started the Python supervisor %P with %uD workers",
                  ngx_http_mosn_supervisor, w->rg.hdr->desired_workers);

    return NGX_OK;
}


void
ngx_http_mosn_pool_stop(ngx_cycle_t *cycle)
{
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    if (ngx_http_mosn_supervisor > 0) {
        (void) kill(ngx_http_mosn_supervisor, SIGTERM);
        ngx_http_mosn_supervisor = -1;
    }

    if (w->rg.hdr != NULL) {
        (void) mosn_region_unlink(w->rg.name);
    }
}


/* regions left by masters that were killed: named after their pid */

static void
ngx_http_mosn_clean_stale(ngx_log_t *log)
{
    DIR            *dir;
    char            path[MOSN_NAME_MAX + 1];
    size_t          len;
    ngx_int_t       pid;
    struct dirent  *de;

    dir = opendir("/dev/shm");
    if (dir == NULL) {
        return;
    }

    while ((de = readdir(dir)) != NULL) {
        if (ngx_strncmp(de->d_name, "ngx_mosn.", 9) != 0) {
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

        pid = ngx_atoi((u_char *) de->d_name + 9, len);

        if (pid <= 0 || kill((pid_t) pid, 0) == 0 || ngx_errno != ESRCH) {
            continue;
        }

        ngx_snprintf((u_char *) path, sizeof(path), "/ngx_mosn.%i%Z", pid);

        if (mosn_region_unlink(path) == 0) {
            ngx_log_error(NGX_LOG_NOTICE, log, 0,
                          "mosn: removed the stale region \"%s\"", path);
        }
    }

    closedir(dir);
}
