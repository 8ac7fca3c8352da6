
/*
 * ngx_http_mosn_upstream_module: "mosn_subset", a balancer for upstream
 * blocks over the endpoint table of the region, which the Python
 * supervisor fills from MOE's service file.  Endpoints change with the
 * file, without a reload.
 *
 *     upstream test {
 *         mosn_subset  test key=$mosn_meta_UNIT;
 *         server       0.0.0.1;    # a placeholder, never used
 *     }
 *
 * An endpoint of the app whose site is the key's value is picked round
 * robin (one counter per site in shared memory, so every nginx worker
 * takes its turn from it); with no key value, or no endpoint of that
 * site left to try, any endpoint of the app is (Envoy's subset load
 * balancer with fallback_policy ANY_ENDPOINT).  A request that
 * proxy_next_upstream sends on goes to an endpoint it has not tried.
 */

#include "ngx_http_mosn_module.h"


typedef struct {
    ngx_str_t                     app;
    ngx_http_complex_value_t     *key;
} ngx_http_mosn_subset_conf_t;


typedef struct {
    ngx_http_mosn_subset_conf_t  *conf;
    ngx_http_request_t           *request;
    ngx_str_t                    *upstream;      /* its name */
    ngx_str_t                     site;

    /* endpoints tried, for proxy_next_upstream */
    mosn_endpoint_t              *tried;
    ngx_uint_t                    ntried;
    ngx_uint_t                    nalloc;

    mosn_endpoint_t               current;
    ngx_uint_t                    picked;
} ngx_http_mosn_subset_peer_data_t;


typedef struct {
    ngx_sockaddr_t                sockaddr;
    ngx_str_t                     name;
    u_char                        text[NGX_SOCKADDR_STRLEN];
} ngx_http_mosn_subset_addr_t;


static ngx_int_t ngx_http_mosn_subset_init_upstream(ngx_conf_t *cf,
    ngx_http_upstream_srv_conf_t *us);
static ngx_int_t ngx_http_mosn_subset_init_peer(ngx_http_request_t *r,
    ngx_http_upstream_srv_conf_t *us);
static ngx_int_t ngx_http_mosn_subset_get_peer(ngx_peer_connection_t *pc,
    void *data);
static void ngx_http_mosn_subset_free_peer(ngx_peer_connection_t *pc,
    void *data, ngx_uint_t state);
static ngx_int_t ngx_http_mosn_subset_addr(ngx_peer_connection_t *pc,
    ngx_http_mosn_subset_peer_data_t *pd, mosn_endpoint_t *ep);

#if (NGX_HTTP_SSL)
static ngx_int_t ngx_http_mosn_subset_set_session(ngx_peer_connection_t *pc,
    void *data);
static void ngx_http_mosn_subset_save_session(ngx_peer_connection_t *pc,
    void *data);
#endif

static void *ngx_http_mosn_subset_create_conf(ngx_conf_t *cf);
static char *ngx_http_mosn_subset(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


static ngx_command_t  ngx_http_mosn_upstream_commands[] = {

    { ngx_string("mosn_subset"),
      NGX_HTTP_UPS_CONF|NGX_CONF_TAKE12,
      ngx_http_mosn_subset,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_mosn_upstream_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    ngx_http_mosn_subset_create_conf,      /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_mosn_upstream_module = {
    NGX_MODULE_V1,
    &ngx_http_mosn_upstream_module_ctx,    /* module context */
    ngx_http_mosn_upstream_commands,       /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_mosn_subset_init_upstream(ngx_conf_t *cf,
    ngx_http_upstream_srv_conf_t *us)
{
    /* the "server" lines are placeholders: the table has the endpoints */

    us->peer.init = ngx_http_mosn_subset_init_peer;

    return NGX_OK;
}


static ngx_int_t
ngx_http_mosn_subset_init_peer(ngx_http_request_t *r,
    ngx_http_upstream_srv_conf_t *us)
{
    int                                n;
    ngx_http_upstream_t               *u;
    ngx_http_mosn_subset_conf_t       *scf;
    ngx_http_mosn_subset_peer_data_t  *pd;
    ngx_http_mosn_worker_t            *w = &ngx_http_mosn_worker;

    scf = ngx_http_conf_upstream_srv_conf(us, ngx_http_mosn_upstream_module);

    pd = ngx_pcalloc(r->pool, sizeof(ngx_http_mosn_subset_peer_data_t));
    if (pd == NULL) {
        return NGX_ERROR;
    }

    pd->conf = scf;
    pd->request = r;
    pd->upstream = &us->host;

    if (scf->key != NULL
        && ngx_http_complex_value(r, scf->key, &pd->site) != NGX_OK)
    {
        return NGX_ERROR;
    }

    n = 0;

    if (w->rg.hdr != NULL) {
        n = mosn_endpoints_count(&w->rg, (char *) scf->app.data,
                                 scf->app.len, NULL);
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "mosn_subset: app \"%V\" site \"%V\", %d endpoints",
                   &scf->app, &pd->site, n);

    u = r->upstream;

    u->peer.data = pd;
    u->peer.get = ngx_http_mosn_subset_get_peer;
    u->peer.free = ngx_http_mosn_subset_free_peer;

    /* every endpoint once at most; one try finds out there is none */
    u->peer.tries = n > 0 ? (ngx_uint_t) n : 1;

#if (NGX_HTTP_SSL)
    u->peer.set_session = ngx_http_mosn_subset_set_session;
    u->peer.save_session = ngx_http_mosn_subset_save_session;
#endif

    return NGX_OK;
}


static ngx_int_t
ngx_http_mosn_subset_get_peer(ngx_peer_connection_t *pc, void *data)
{
    ngx_http_mosn_subset_peer_data_t  *pd = data;

    int                      rc;
    mosn_endpoint_t          ep;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    pc->cached = 0;
    pc->connection = NULL;
    pd->picked = 0;

    if (w->rg.hdr == NULL) {
        ngx_log_error(NGX_LOG_ERR, pc->log, 0,
                      "mosn_subset: no endpoint table: the mosn region is "
                      "not attached in this process");
        pc->name = pd->upstream;
        return NGX_BUSY;
    }

    rc = mosn_endpoints_pick(&w->rg, (char *) pd->conf->app.data,
                             pd->conf->app.len, (char *) pd->site.data,
                             pd->site.len, pd->tried, (uint32_t) pd->ntried,
                             &ep);

    switch (rc) {

    case MOSN_EP_SITE:
    case MOSN_EP_ANY:
        break;

    case MOSN_EP_NONE:
        if (pd->ntried == 0) {
            ngx_log_error(NGX_LOG_ERR, pc->log, 0,
                          "mosn_subset: app \"%V\" has no endpoint in the "
                          "service discovery table", &pd->conf->app);

        } else {
            ngx_log_error(NGX_LOG_ERR, pc->log, 0,
                          "mosn_subset: every endpoint of app \"%V\" was "
                          "tried (%ui)", &pd->conf->app, pd->ntried);
        }

        pc->name = pd->upstream;
        return NGX_BUSY;

    default: /* MOSN_EP_BUSY */
        ngx_log_error(NGX_LOG_ERR, pc->log, 0,
                      "mosn_subset: the endpoints of app \"%V\" could not "
                      "be read: a write that never ended, or a corrupt "
                      "table", &pd->conf->app);
        pc->name = pd->upstream;
        return NGX_BUSY;
    }

    if (ngx_http_mosn_subset_addr(pc, pd, &ep) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, pc->log, 0,
                   "mosn_subset: app \"%V\" site \"%V\": %V%s",
                   &pd->conf->app, &pd->site, pc->name,
                   rc == MOSN_EP_ANY ? " (any endpoint)" : "");

    pd->current = ep;
    pd->picked = 1;

    return NGX_OK;
}


/*
 * A sockaddr and a name of their own for every try: $upstream_addr lists
 * the name of each one tried.
 */

static ngx_int_t
ngx_http_mosn_subset_addr(ngx_peer_connection_t *pc,
    ngx_http_mosn_subset_peer_data_t *pd, mosn_endpoint_t *ep)
{
    socklen_t                     socklen;
    ngx_http_mosn_subset_addr_t  *a;

    a = ngx_pcalloc(pd->request->pool, sizeof(ngx_http_mosn_subset_addr_t));
    if (a == NULL) {
        return NGX_ERROR;
    }

    switch (ep->family) {

#if (NGX_HAVE_INET6)
    case MOSN_EP_INET6:
        a->sockaddr.sockaddr_in6.sin6_family = AF_INET6;
        a->sockaddr.sockaddr_in6.sin6_port = htons(ep->port);
        ngx_memcpy(&a->sockaddr.sockaddr_in6.sin6_addr, ep->addr, 16);
        socklen = sizeof(struct sockaddr_in6);
        break;
#endif

    case MOSN_EP_INET:
        a->sockaddr.sockaddr_in.sin_family = AF_INET;
        a->sockaddr.sockaddr_in.sin_port = htons(ep->port);
        ngx_memcpy(&a->sockaddr.sockaddr_in.sin_addr, ep->addr, 4);
        socklen = sizeof(struct sockaddr_in);
        break;

    default:
        ngx_log_error(NGX_LOG_ERR, pc->log, 0,
                      "mosn_subset: an endpoint of app \"%V\" has an "
                      "address family this nginx cannot use",
                      &pd->conf->app);
        return NGX_ERROR;
    }

    a->name.data = a->text;
    a->name.len = ngx_sock_ntop(&a->sockaddr.sockaddr, socklen, a->text,
                                NGX_SOCKADDR_STRLEN, 1);

    pc->sockaddr = &a->sockaddr.sockaddr;
    pc->socklen = socklen;
    pc->name = &a->name;

    return NGX_OK;
}


static void
ngx_http_mosn_subset_free_peer(ngx_peer_connection_t *pc, void *data,
    ngx_uint_t state)
{
    ngx_http_mosn_subset_peer_data_t  *pd = data;

    ngx_uint_t        n;
    mosn_endpoint_t  *tried;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, pc->log, 0,
                   "mosn_subset: free peer, tries %ui, state %ui",
                   pc->tries, state);

    if (pd->picked && (state & (NGX_PEER_FAILED|NGX_PEER_NEXT))) {

        /* the next try goes elsewhere */

        if (pd->ntried == pd->nalloc && pd->nalloc < MOSN_EP_MAX) {
            n = pd->nalloc ? ngx_min(2 * pd->nalloc, MOSN_EP_MAX) : 4;

            tried = ngx_palloc(pd->request->pool,
                               n * sizeof(mosn_endpoint_t));
            if (tried != NULL) {
                if (pd->ntried) {
                    ngx_memcpy(tried, pd->tried,
                               pd->ntried * sizeof(mosn_endpoint_t));
                }

                pd->tried = tried;
                pd->nalloc = n;
            }
        }

        if (pd->ntried < pd->nalloc) {
            pd->tried[pd->ntried++] = pd->current;
        }
    }

    pd->picked = 0;

    if (pc->tries) {
        pc->tries--;
    }
}


#if (NGX_HTTP_SSL)

/* no session reuse: a session belongs to an endpoint that may be gone */

static ngx_int_t
ngx_http_mosn_subset_set_session(ngx_peer_connection_t *pc, void *data)
{
    return NGX_OK;
}


static void
ngx_http_mosn_subset_save_session(ngx_peer_connection_t *pc, void *data)
{
    return;
}

#endif


static void *
ngx_http_mosn_subset_create_conf(ngx_conf_t *cf)
{
    ngx_http_mosn_subset_conf_t  *scf;

    scf = ngx_pcalloc(cf->pool, sizeof(ngx_http_mosn_subset_conf_t));
    if (scf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     scf->app = { 0, NULL };
     *     scf->key = NULL;
     */

    return scf;
}


/* "mosn_subset APP [key=VALUE]", in an upstream block */

static char *
ngx_http_mosn_subset(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_mosn_subset_conf_t *scf = conf;

    ngx_str_t                         *value, v;
    ngx_uint_t                         i;
    ngx_http_mosn_main_conf_t         *mmcf;
    ngx_http_upstream_srv_conf_t      *uscf;
    ngx_http_compile_complex_value_t   ccv;

    if (scf->app.data != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0 || value[1].len >= MOSN_EP_APP_NAME_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"mosn_subset\" takes an app name of 1..%d "
                           "bytes, not \"%V\"", MOSN_EP_APP_NAME_MAX - 1,
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    for (i = 0; i < value[1].len; i++) {
        if (value[1].data[i] < 0x21 || value[1].data[i] > 0x7e) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"mosn_subset\" takes a printable app name, "
                               "not \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    scf->app = value[1];

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "key=", 4) != 0
            || value[i].len == 4)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\": \"mosn_subset\" "
                               "takes an app name and key=VALUE",
                               &value[i]);
            return NGX_CONF_ERROR;
        }

        if (scf->key != NULL) {
            return "has a duplicate \"key\"";
        }

        v.data = value[i].data + 4;
        v.len = value[i].len - 4;

        scf->key = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
        if (scf->key == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

        ccv.cf = cf;
        ccv.value = &v;
        ccv.complex_value = scf->key;

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }

    uscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_upstream_module);

    if (uscf->peer.init_upstream) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "load balancing method redefined");
    }

    uscf->peer.init_upstream = ngx_http_mosn_subset_init_upstream;

    /* "server" is a placeholder here: no weight, backup and the like */
    uscf->flags = NGX_HTTP_UPSTREAM_CREATE;

    /* the region, and the supervisor that fills its endpoint table */
    mmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_mosn_module);
    mmcf->enabled = 1;

    return NGX_CONF_OK;
}
