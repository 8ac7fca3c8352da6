
/*
 * ngx_http_mosn_module: the directives, their configuration, and the
 * module's life (init module, process, exit).  The request path is in
 * ngx_http_mosn_handler.c, the request body in
 * ngx_http_mosn_request_body.c, the variables in
 * ngx_http_mosn_variables.c.
 */

#include "ngx_http_mosn_module.h"


static void *ngx_http_mosn_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_mosn_init_main_conf(ngx_conf_t *cf, void *conf);
static ngx_int_t ngx_http_mosn_check_shm_name(ngx_conf_t *cf,
    ngx_str_t *name);
static char *ngx_http_mosn_check_timeout(ngx_conf_t *cf, void *post,
    void *data);
static void *ngx_http_mosn_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_mosn_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_mosn_chain(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_mosn_status_or(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_mosn_response_body_fits(ngx_conf_t *cf,
    ngx_http_mosn_loc_conf_t *mlcf, ngx_http_mosn_main_conf_t *mmcf);
static ngx_int_t ngx_http_mosn_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_mosn_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_mosn_init_process(ngx_cycle_t *cycle);
static void ngx_http_mosn_exit_process(ngx_cycle_t *cycle);
static void ngx_http_mosn_exit_master(ngx_cycle_t *cycle);


static ngx_conf_num_bounds_t  ngx_http_mosn_workers_bounds = {
    ngx_conf_check_num_bounds, 1, MOSN_MAX_CONSUMERS / 2 - 1
};

static ngx_conf_num_bounds_t  ngx_http_mosn_slots_bounds = {
    ngx_conf_check_num_bounds, 2, MOSN_MAX_SLOTS
};

static ngx_conf_num_bounds_t  ngx_http_mosn_queue_bounds = {
    ngx_conf_check_num_bounds, 0, 1048576
};

static ngx_conf_num_bounds_t  ngx_http_mosn_headers_bounds = {
    ngx_conf_check_num_bounds, 1, 10000
};

static ngx_conf_post_t  ngx_http_mosn_timeout_post = {
    ngx_http_mosn_check_timeout
};


static ngx_command_t  ngx_http_mosn_commands[] = {

    { ngx_string("mosn_config"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_mosn_main_conf_t, config),
      NULL },

    { ngx_string("mosn_workers"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_mosn_main_conf_t, workers),
      &ngx_http_mosn_workers_bounds },

    { ngx_string("mosn_python"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_mosn_main_conf_t, python),
      NULL },

    { ngx_string("mosn_shm_name"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_mosn_main_conf_t, shm_name),
      NULL },

    { ngx_string("mosn_slots"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_mosn_main_conf_t, slots),
      &ngx_http_mosn_slots_bounds },

    { ngx_string("mosn_slot_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_mosn_main_conf_t, slot_size),
      NULL },

    { ngx_string("mosn_spawn"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_mosn_main_conf_t, spawn),
      NULL },

    { ngx_string("mosn_queue"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_mosn_main_conf_t, queue),
      &ngx_http_mosn_queue_bounds },

    { ngx_string("mosn_filter_chain"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_mosn_chain,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("mosn_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mosn_loc_conf_t, timeout),
      &ngx_http_mosn_timeout_post },

    { ngx_string("mosn_fallback"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_mosn_status_or,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mosn_loc_conf_t, fallback),
      "continue" },

    { ngx_string("mosn_oversize"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_mosn_status_or,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mosn_loc_conf_t, oversize),
      "fallback" },

    { ngx_string("mosn_request_phase"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mosn_loc_conf_t, request_phase),
      NULL },

    { ngx_string("mosn_request_body"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mosn_loc_conf_t, body),
      NULL },

    { ngx_string("mosn_max_body"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mosn_loc_conf_t, max_body),
      NULL },

    { ngx_string("mosn_response_body"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mosn_loc_conf_t, response_body),
      NULL },

    { ngx_string("mosn_max_response_body"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mosn_loc_conf_t, max_response_body),
      NULL },

    { ngx_string("mosn_response_oversize"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_mosn_status_or,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mosn_loc_conf_t, response_oversize),
      "pass" },

    { ngx_string("mosn_max_headers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_mosn_loc_conf_t, max_headers),
      &ngx_http_mosn_headers_bounds },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_mosn_module_ctx = {
    ngx_http_mosn_add_variables,           /* preconfiguration */
    ngx_http_mosn_init,                    /* postconfiguration */

    ngx_http_mosn_create_main_conf,        /* create main configuration */
    ngx_http_mosn_init_main_conf,          /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_mosn_create_loc_conf,         /* create location configuration */
    ngx_http_mosn_merge_loc_conf           /* merge location configuration */
};


ngx_module_t  ngx_http_mosn_module = {
    NGX_MODULE_V1,
    &ngx_http_mosn_module_ctx,             /* module context */
    ngx_http_mosn_commands,                /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_mosn_init_module,             /* init module */
    ngx_http_mosn_init_process,            /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_mosn_exit_process,            /* exit process */
    ngx_http_mosn_exit_master,             /* exit master */
    NGX_MODULE_V1_PADDING
};


static void *
ngx_http_mosn_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_mosn_main_conf_t  *mmcf;

    mmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_mosn_main_conf_t));
    if (mmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     mmcf->config = { 0, NULL };
     *     mmcf->python = { 0, NULL };
     *     mmcf->shm_name = { 0, NULL };
     *     mmcf->enabled = 0;
     */

    mmcf->workers = NGX_CONF_UNSET_UINT;
    mmcf->slots = NGX_CONF_UNSET_UINT;
    mmcf->slot_size = NGX_CONF_UNSET_SIZE;
    mmcf->spawn = NGX_CONF_UNSET;
    mmcf->queue = NGX_CONF_UNSET_UINT;

    if (ngx_array_init(&mmcf->chains, cf->pool, 4, sizeof(ngx_str_t))
        != NGX_OK)
    {
        return NULL;
    }

    return mmcf;
}


static char *
ngx_http_mosn_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_mosn_main_conf_t  *mmcf = conf;

    ngx_conf_init_uint_value(mmcf->workers, 1);
    ngx_conf_init_uint_value(mmcf->slots, 256);
    ngx_conf_init_size_value(mmcf->slot_size, 16384);
    ngx_conf_init_value(mmcf->spawn, 1);
    ngx_conf_init_uint_value(mmcf->queue, 4096);

    if (mmcf->python.len == 0) {
        ngx_str_set(&mmcf->python, "python3");
    }

    if ((mmcf->slots & (mmcf->slots - 1)) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"mosn_slots\" must be a power of two, not %ui",
                           mmcf->slots);
        return NGX_CONF_ERROR;
    }

    if (mmcf->slot_size < MOSN_MIN_SLOT_SIZE
        || mmcf->slot_size > MOSN_MAX_SLOT_SIZE)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"mosn_slot_size\" must be in %uz..%uz",
                           (size_t) MOSN_MIN_SLOT_SIZE,
                           (size_t) MOSN_MAX_SLOT_SIZE);
        return NGX_CONF_ERROR;
    }

    mmcf->slot_size = ngx_align(mmcf->slot_size, MOSN_CACHELINE);

    if (ngx_http_mosn_check_shm_name(cf, &mmcf->shm_name) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (mmcf->config.len
        && ngx_conf_full_name(cf->cycle, &mmcf->config, 1) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    /* the region keeps it with its NUL; the supervisor gets it in argv */
    if (mmcf->config.len >= MOSN_PATH_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "the \"mosn_config\" path \"%V\" is %uz bytes "
                           "long, more than %d", &mmcf->config,
                           mmcf->config.len, MOSN_PATH_MAX - 1);
        return NGX_CONF_ERROR;
    }

    if (mmcf->python.len && ngx_strchr(mmcf->python.data, '/') != NULL
        && ngx_conf_full_name(cf->cycle, &mmcf->python, 0) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* "/" NAME names the region, NAME.wake its wake-up directory */

static ngx_int_t
ngx_http_mosn_check_shm_name(ngx_conf_t *cf, ngx_str_t *name)
{
    u_char      c;
    ngx_uint_t  i;

    if (name->len == 0) {
        return NGX_OK;
    }

    if (name->len > MOSN_NAME_MAX - 2) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"mosn_shm_name\" \"%V\" is %uz bytes long, "
                           "more than %d", name, name->len,
                           MOSN_NAME_MAX - 2);
        return NGX_ERROR;
    }

    for (i = 0; i < name->len; i++) {
        c = name->data[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '_' || c == '-'
              || (c == '.' && i > 0)))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"mosn_shm_name\" \"%V\" may hold letters, "
                               "digits, \"_\", \"-\" and \".\" (not first) "
                               "only", name);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* no time to wait is no filtering at all: every request would fall back */

static char *
ngx_http_mosn_check_timeout(ngx_conf_t *cf, void *post, void *data)
{
    ngx_msec_t  *timeout = data;

    if (*timeout == 0) {
        return "must be more than 0: no request would wait for its verdict";
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_mosn_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_mosn_loc_conf_t  *mlcf;

    mlcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_mosn_loc_conf_t));
    if (mlcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     mlcf->chain = { 0, NULL };
     */

    mlcf->chain.len = NGX_CONF_UNSET_SIZE;
    mlcf->timeout = NGX_CONF_UNSET_MSEC;
    mlcf->fallback = NGX_CONF_UNSET;
    mlcf->oversize = NGX_CONF_UNSET;
    mlcf->max_headers = NGX_CONF_UNSET_UINT;
    mlcf->request_phase = NGX_CONF_UNSET;
    mlcf->body = NGX_CONF_UNSET;
    mlcf->max_body = NGX_CONF_UNSET_SIZE;
    mlcf->response_body = NGX_CONF_UNSET;
    mlcf->max_response_body = NGX_CONF_UNSET_SIZE;
    mlcf->response_oversize = NGX_CONF_UNSET;

    return mlcf;
}


static char *
ngx_http_mosn_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_mosn_loc_conf_t *prev = parent;
    ngx_http_mosn_loc_conf_t *conf = child;

    ngx_uint_t                  i;
    ngx_str_t                  *name;
    ngx_http_mosn_main_conf_t  *mmcf;

    if (conf->chain.len == NGX_CONF_UNSET_SIZE) {
        conf->chain = prev->chain;
    }

    if (conf->chain.len == NGX_CONF_UNSET_SIZE) {
        conf->chain.len = 0;
        conf->chain.data = NULL;
    }

    ngx_conf_merge_msec_value(conf->timeout, prev->timeout, 1000);
    ngx_conf_merge_value(conf->fallback, prev->fallback,
                         NGX_HTTP_MOSN_FALLBACK_CONTINUE);
    ngx_conf_merge_value(conf->oversize, prev->oversize,
                         NGX_HTTP_MOSN_OVERSIZE_AUTO);
    ngx_conf_merge_uint_value(conf->max_headers, prev->max_headers, 100);
    ngx_conf_merge_value(conf->request_phase, prev->request_phase, 1);
    ngx_conf_merge_value(conf->body, prev->body, 0);
    ngx_conf_merge_size_value(conf->max_body, prev->max_body, 65536);
    ngx_conf_merge_value(conf->response_body, prev->response_body, 0);
    ngx_conf_merge_size_value(conf->max_response_body,
                              prev->max_response_body, 65536);
    ngx_conf_merge_value(conf->response_oversize, prev->response_oversize,
                         NGX_HTTP_MOSN_OVERSIZE_PASS);

    if (conf->chain.len == 0) {
        return NGX_CONF_OK;
    }

    mmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_mosn_module);
    mmcf->enabled = 1;

    if (!conf->request_phase && conf->body) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "\"mosn_request_body on\" has no effect where "
                           "\"mosn_request_phase\" is off: the request "
                           "does not go to the filters");
    }

    if (conf->response_body
        && ngx_http_mosn_response_body_fits(cf, conf, mmcf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    name = mmcf->chains.elts;

    for (i = 0; i < mmcf->chains.nelts; i++) {
        if (name[i].len == conf->chain.len
            && ngx_strncmp(name[i].data, conf->chain.data, conf->chain.len)
               == 0)
        {
            return NGX_CONF_OK;
        }
    }

    name = ngx_array_push(&mmcf->chains);
    if (name == NULL) {
        return NGX_CONF_ERROR;
    }

    *name = conf->chain;

    return NGX_CONF_OK;
}


static char *
ngx_http_mosn_chain(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_mosn_loc_conf_t *mlcf = conf;

    ngx_str_t  *value;
    ngx_uint_t  i;

    if (mlcf->chain.len != NGX_CONF_UNSET_SIZE) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        mlcf->chain.len = 0;
        mlcf->chain.data = NULL;
        return NGX_CONF_OK;
    }

    if (value[1].len > 255) {
        return "is too long a listener name";
    }

    for (i = 0; i < value[1].len; i++) {
        if (value[1].data[i] < 0x21 || value[1].data[i] > 0x7e) {
            return "must be a printable listener name";
        }
    }

    mlcf->chain = value[1];

    return NGX_CONF_OK;
}


/*
 * A response body reaches the filters in the response record and comes
 * back in the verdict, after the record in the same slot: the slot holds
 * it twice, with room for the headers.
 */

static ngx_int_t
ngx_http_mosn_response_body_fits(ngx_conf_t *cf,
    ngx_http_mosn_loc_conf_t *mlcf, ngx_http_mosn_main_conf_t *mmcf)
{
    size_t  data, need;

    data = MOSN_SLOT_DATA_SIZE(mmcf->slot_size);
    need = 2 * mlcf->max_response_body + NGX_HTTP_MOSN_HEADERS_ROOM;

    if (mlcf->max_response_body <= MOSN_MAX_SLOT_SIZE && need <= data) {
        return NGX_OK;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"mosn_max_response_body\" %uzk does not fit in a "
                       "slot of \"mosn_slot_size\" %uzk: a slot holds the "
                       "body twice (as the filters get it and as they "
                       "return it) and %uzk of headers, so raise "
                       "\"mosn_slot_size\" to %uzk or lower "
                       "\"mosn_max_response_body\" to %uz",
                       (mlcf->max_response_body + 1023) / 1024,
                       mmcf->slot_size / 1024,
                       (size_t) NGX_HTTP_MOSN_HEADERS_ROOM / 1024,
                       (need + MOSN_SLOT_HEADER_SIZE + 1023) / 1024,
                       data > NGX_HTTP_MOSN_HEADERS_ROOM
                       ? (data - NGX_HTTP_MOSN_HEADERS_ROOM) / 2 : 0);

    return NGX_ERROR;
}


/* "mosn_fallback continue | CODE" and "mosn_oversize fallback | CODE" */

static char *
ngx_http_mosn_status_or(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    ngx_int_t   *np, n;
    ngx_str_t   *value;

    np = (ngx_int_t *) (p + cmd->offset);

    if (*np != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, cmd->post) == 0) {
        *np = 0;
        return NGX_CONF_OK;
    }

    n = ngx_atoi(value[1].data, value[1].len);

    if (n < 200 || n > 599) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" takes \"%s\" or a status in 200..599, "
                           "not \"%V\"", &cmd->name, (char *) cmd->post,
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    *np = n;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_mosn_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;
    ngx_http_mosn_main_conf_t  *mmcf;

    mmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_mosn_module);

    if (!mmcf->enabled) {
        return NGX_OK;
    }

    if (mmcf->config.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"mosn_filter_chain\" or \"mosn_subset\" is "
                           "used but no \"mosn_config\" names the MOSN "
                           "config file");
        return NGX_ERROR;
    }

    if (ngx_http_mosn_pool_check(cf, mmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PREACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_mosn_handler;

    return ngx_http_mosn_response_init(cf);
}


static ngx_int_t
ngx_http_mosn_init_module(ngx_cycle_t *cycle)
{
    ngx_core_conf_t            *ccf;
    ngx_http_mosn_main_conf_t  *mmcf;

    if (ngx_process == NGX_PROCESS_SIGNALLER) {
        return NGX_OK;
    }

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_mosn_module);

    if (mmcf == NULL || !mmcf->enabled) {
        return NGX_OK;
    }

    /* old and new workers side by side on reload: a channel each */
    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    if (ccf->master && 2 * (ngx_uint_t) ccf->worker_processes + 2
                       > MOSN_MAX_PRODUCERS)
    {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "mosn: worker_processes %i needs %i ring channels "
                      "(each worker one, twice over while a reload rolls "
                      "the workers), more than the ring's %d: use at most "
                      "%d worker processes", ccf->worker_processes,
                      2 * ccf->worker_processes + 2, MOSN_MAX_PRODUCERS,
                      MOSN_MAX_PRODUCERS / 2 - 1);
        return NGX_ERROR;
    }

    if (ngx_test_config) {
        return NGX_OK;
    }

    return ngx_http_mosn_pool_start(cycle, mmcf);
}


static ngx_int_t
ngx_http_mosn_init_process(ngx_cycle_t *cycle)
{
    return ngx_http_mosn_ring_init_process(cycle);
}


static void
ngx_http_mosn_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_mosn_ring_exit_process(cycle);
}


static void
ngx_http_mosn_exit_master(ngx_cycle_t *cycle)
{
    ngx_http_mosn_pool_stop(cycle);
}
