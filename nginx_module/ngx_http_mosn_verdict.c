
/*
 * Applying a verdict: request headers set or removed before proxying,
 * response headers added, or a direct reply.  The verdict is copied out
 * of shared memory and checked whole before any of it is used.
 */

#include "ngx_http_mosn_module.h"


static ngx_int_t ngx_http_mosn_protected(mosn_rec_view_t *rec);
static ngx_int_t ngx_http_mosn_edit_headers(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_uint_t edits);
static ngx_int_t ngx_http_mosn_link_headers_in(ngx_http_request_t *r);
static ngx_int_t ngx_http_mosn_reply(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx);


static ngx_str_t  ngx_http_mosn_protected_headers[] = {
    ngx_string("Host"),
    ngx_string("Content-Length"),
    ngx_string("Transfer-Encoding"),
    ngx_string("Connection"),
    ngx_null_string
};


/* the next element of a header list, or NULL: nginx's list walk, once */

ngx_table_elt_t *
ngx_http_mosn_list_next(ngx_list_part_t **part, ngx_uint_t *i)
{
    ngx_table_elt_t  *h;

    while (*i >= (*part)->nelts) {
        if ((*part)->next == NULL) {
            return NULL;
        }

        *part = (*part)->next;
        *i = 0;
    }

    h = (*part)->elts;

    return &h[(*i)++];
}


/*
 * Copies a verdict out of its slot and checks it whole: Python may still
 * write to the slot, so only the copy is used.
 */

ngx_int_t
ngx_http_mosn_verdict_copy(ngx_http_mosn_ctx_t *ctx, const u_char *buf,
    size_t len, u_char **copy)
{
    u_char      *p;
    const char  *why;

    p = ngx_pnalloc(ctx->request->pool, len ? len : 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, buf, len);

    if (mosn_verdict_validate(p, len, &why) != 0) {
        ngx_log_error(NGX_LOG_ERR, ctx->request->connection->log, 0,
                      "mosn: refused the verdict for request %uL: %s",
                      ctx->request_id, why);
        return NGX_DECLINED;
    }

    *copy = p;

    return NGX_OK;
}


/*
 * A log record: why a filter failed (warn), or what it wants said
 * (info).  Its text comes from Python: control bytes (CR and LF that
 * would start a forged log line, ESC for a terminal) are written as
 * \xHH, and it is cut at NGX_HTTP_MOSN_LOG_MAX bytes.
 */

#define NGX_HTTP_MOSN_LOG_MAX  1024

static void
ngx_http_mosn_log_record(ngx_http_mosn_ctx_t *ctx, ngx_uint_t action,
    mosn_rec_view_t *rec)
{
    u_char         *p, *last;
    ngx_uint_t      level, i;
    u_char          text[NGX_HTTP_MOSN_LOG_MAX];
    static u_char   hex[] = "0123456789abcdef";

    level = (action == MOSN_ACTION_ERROR) ? NGX_LOG_WARN : NGX_LOG_INFO;

    p = text;
    last = text + NGX_HTTP_MOSN_LOG_MAX;

    for (i = 0; i < rec->value_len; i++) {
        if (rec->value[i] >= 0x20 && rec->value[i] != 0x7f) {
            if (p == last) {
                break;
            }

            *p++ = rec->value[i];
            continue;
        }

        if (last - p < 4) {
            break;
        }

        *p++ = '\\';
        *p++ = 'x';
        *p++ = hex[rec->value[i] >> 4];
        *p++ = hex[rec->value[i] & 0xf];
    }

    ngx_log_error(level, ctx->request->connection->log, 0,
                  "mosn: request %uL: %*s%s", ctx->request_id,
                  (size_t) (p - text), text,
                  i < rec->value_len ? "..." : "");
}


void
ngx_http_mosn_verdict_log(ngx_http_mosn_ctx_t *ctx, u_char *verdict,
    size_t len)
{
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    if (mosn_verdict_begin(&it, verdict, len) != 0) {
        return;
    }

    while (mosn_verdict_next(&it, &rec) == 1) {
        if (rec.type == MOSN_REC_LOG) {
            ngx_http_mosn_log_record(ctx, it.action, &rec);
        }
    }
}


ngx_int_t
ngx_http_mosn_verdict_take(ngx_http_mosn_ctx_t *ctx, const u_char *buf,
    size_t len)
{
    u_char              *copy;
    ngx_int_t            rc;
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    rc = ngx_http_mosn_verdict_copy(ctx, buf, len, &copy);

    if (rc != NGX_OK) {
        return rc;
    }

    if (mosn_verdict_begin(&it, copy, len) != 0) {
        return NGX_DECLINED;
    }

    ctx->verdict = copy;
    ctx->verdict_len = len;

    ctx->action = it.action;
    ctx->reply_status = it.status;
    ctx->senders = (it.action == MOSN_ACTION_CONTINUE
                    && (it.flags & MOSN_VERDICT_F_SENDERS));
    ctx->decode = (ctx->senders && (it.flags & MOSN_VERDICT_F_DECODE));

    while (mosn_verdict_next(&it, &rec) == 1) {
        if (rec.type == MOSN_REC_UPSTREAM) {
            ctx->upstream.data = (u_char *) rec.value;
            ctx->upstream.len = rec.value_len;

        } else if (rec.type == MOSN_REC_LOG) {
            ngx_http_mosn_log_record(ctx, ctx->action, &rec);
        }
    }

    if (ctx->action == MOSN_ACTION_ERROR) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_mosn_verdict_find(ngx_http_mosn_ctx_t *ctx, ngx_uint_t type,
    ngx_str_t *key, ngx_str_t *value)
{
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    if (ctx->verdict == NULL
        || mosn_verdict_begin(&it, ctx->verdict, ctx->verdict_len) != 0)
    {
        return NGX_DECLINED;
    }

    while (mosn_verdict_next(&it, &rec) == 1) {
        if (rec.type == type && rec.key_len == key->len
            && ngx_strncasecmp((u_char *) rec.key, key->data, key->len) == 0)
        {
            value->data = (u_char *) rec.value;
            value->len = rec.value_len;
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


ngx_int_t
ngx_http_mosn_verdict_apply(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx)
{
    ngx_uint_t           edits;
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    if (ctx->action == MOSN_ACTION_REPLY) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "mosn request %uL: hijack reply", ctx->request_id);

        return ngx_http_mosn_reply(r, ctx);
    }

    edits = 0;

    if (mosn_verdict_begin(&it, ctx->verdict, ctx->verdict_len) != 0) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    while (mosn_verdict_next(&it, &rec) == 1) {

        if (rec.type != MOSN_REC_REQ_SET && rec.type != MOSN_REC_REQ_DEL) {
            continue;
        }

        if (ngx_http_mosn_protected(&rec)) {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "mosn: request %uL: filters may not change the "
                          "\"%*s\" header, ignored", ctx->request_id,
                          (size_t) rec.key_len, rec.key);
            continue;
        }

        edits++;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "mosn request %uL: continue, %ui header edit(s)",
                   ctx->request_id, edits);

    if (edits && ngx_http_mosn_edit_headers(r, ctx, edits) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_mosn_protected(mosn_rec_view_t *rec)
{
    ngx_str_t  *h;

    for (h = ngx_http_mosn_protected_headers; h->len; h++) {
        if (h->len == rec->key_len
            && ngx_strncasecmp(h->data, (u_char *) rec->key, h->len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/* the last edit (set or remove) that names a header, or 0 */

static ngx_uint_t
ngx_http_mosn_last_edit(ngx_http_mosn_ctx_t *ctx, u_char *name, size_t len,
    ngx_str_t *value)
{
    ngx_uint_t           type;
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    type = 0;

    if (mosn_verdict_begin(&it, ctx->verdict, ctx->verdict_len) != 0) {
        return 0;
    }

    while (mosn_verdict_next(&it, &rec) == 1) {
        if ((rec.type == MOSN_REC_REQ_SET || rec.type == MOSN_REC_REQ_DEL)
            && rec.key_len == len
            && ngx_strncasecmp((u_char *) rec.key, name, len) == 0
            && !ngx_http_mosn_protected(&rec))
        {
            type = rec.type;
            value->data = (u_char *) rec.value;
            value->len = rec.value_len;
        }
    }

    return type;
}


static ngx_table_elt_t *
ngx_http_mosn_list_find(ngx_list_t *list, u_char *name, size_t len)
{
    ngx_uint_t        i;
    ngx_table_elt_t  *h;

    /* the list is one part: it was sized for every element */
    h = list->part.elts;

    for (i = 0; i < list->part.nelts; i++) {
        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, name, len) == 0)
        {
            return &h[i];
        }
    }

    return NULL;
}


/* a copy that ends in NUL, as nginx's own header names and values do */

static u_char *
ngx_http_mosn_strdup(ngx_pool_t *pool, const uint8_t *s, size_t len)
{
    u_char  *p;

    p = ngx_pnalloc(pool, len + 1);
    if (p == NULL) {
        return NULL;
    }

    ngx_memcpy(p, s, len);
    p[len] = '\0';

    return p;
}


/*
 * The edited request headers replace the list where it lives, in
 * r->headers_in, in one part sized for every element: later pushes (the
 * Lua module, headers-more) then go on from it.  The old elements stay
 * in the pool; nginx's shortcuts into the list move to the new ones.
 */

static ngx_int_t
ngx_http_mosn_edit_headers(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_uint_t edits)
{
    ngx_str_t            value;
    ngx_uint_t           i, n, type;
    ngx_list_t          *list, old;
    ngx_list_part_t     *part;
    ngx_table_elt_t     *h, *nh;
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    list = &r->headers_in.headers;
    old = *list;

    n = edits;

    for (part = &old.part; part; part = part->next) {
        n += part->nelts;
    }

    if (ngx_list_init(list, r->pool, n ? n : 1, sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    part = &old.part;
    i = 0;

    while ((h = ngx_http_mosn_list_next(&part, &i)) != NULL) {

        type = ngx_http_mosn_last_edit(ctx, h->key.data, h->key.len, &value);

        if (type == MOSN_REC_REQ_DEL
            || (type == MOSN_REC_REQ_SET
                && ngx_http_mosn_list_find(list, h->key.data, h->key.len)))
        {
            continue;
        }

        nh = ngx_list_push(list);
        if (nh == NULL) {
            return NGX_ERROR;
        }

        *nh = *h;

        if (type == MOSN_REC_REQ_SET) {
            nh->value.len = value.len;
            nh->value.data = ngx_http_mosn_strdup(r->pool, value.data,
                                                  value.len);
            if (nh->value.data == NULL) {
                return NGX_ERROR;
            }
        }
    }

    /* headers set that were not there come last, in verdict order */
    if (mosn_verdict_begin(&it, ctx->verdict, ctx->verdict_len) != 0) {
        return NGX_ERROR;
    }

    while (mosn_verdict_next(&it, &rec) == 1) {
        if (rec.type != MOSN_REC_REQ_SET
            || ngx_http_mosn_protected(&rec)
            || ngx_http_mosn_list_find(list, (u_char *) rec.key,
                                       rec.key_len)
            || ngx_http_mosn_last_edit(ctx, (u_char *) rec.key, rec.key_len,
                                       &value)
               != MOSN_REC_REQ_SET)
        {
            continue;
        }

        nh = ngx_list_push(list);
        if (nh == NULL) {
            return NGX_ERROR;
        }

        nh->key.len = rec.key_len;
        nh->key.data = ngx_http_mosn_strdup(r->pool, rec.key, rec.key_len);
        nh->value.len = value.len;
        nh->value.data = ngx_http_mosn_strdup(r->pool, value.data,
                                              value.len);
        nh->lowcase_key = ngx_pnalloc(r->pool, rec.key_len + 1);

        if (nh->key.data == NULL || nh->value.data == NULL
            || nh->lowcase_key == NULL)
        {
            return NGX_ERROR;
        }

        nh->hash = ngx_hash_strlow(nh->lowcase_key, nh->key.data,
                                   rec.key_len);
        nh->lowcase_key[rec.key_len] = '\0';
#if (nginx_version >= 1023000)
        nh->next = NULL;
#endif
    }

    return ngx_http_mosn_link_headers_in(r);
}


#if (nginx_version < 1023000)

/* nginx 1.22 keeps these two as arrays of pointers, the rest as one */

static ngx_array_t *
ngx_http_mosn_headers_in_array(ngx_http_request_t *r, ngx_uint_t offset)
{
    if (offset == offsetof(ngx_http_headers_in_t, cookies)
#if (NGX_HTTP_X_FORWARDED_FOR)
        || offset == offsetof(ngx_http_headers_in_t, x_forwarded_for)
#endif
       )
    {
        return (ngx_array_t *) ((char *) &r->headers_in + offset);
    }

    return NULL;
}

#endif


/*
 * nginx's shortcuts into the request headers (r->headers_in.cookie,
 * .user_agent, ...) are made again from the list, as nginx made them
 * when it read the request: one pointer to the first line on 1.22, or
 * an array of them (Cookie, X-Forwarded-For); every line of the name,
 * chained through "next", on 1.23 and later.  What nginx derived from
 * them goes with them: the browser flags from User-Agent, the user and
 * password from Authorization, the links between repeated lines.
 */

static ngx_int_t
ngx_http_mosn_link_headers_in(ngx_http_request_t *r)
{
    ngx_uint_t                  i;
    ngx_list_part_t            *part;
    ngx_table_elt_t            *h, **ph;
    ngx_http_header_t          *hh;
    ngx_http_core_main_conf_t  *cmcf;
#if (nginx_version < 1023000)
    ngx_array_t                *a;
#endif

    for (hh = ngx_http_headers_in; hh->name.len; hh++) {
#if (nginx_version < 1023000)
        a = ngx_http_mosn_headers_in_array(r, hh->offset);

        if (a != NULL) {
            /* nginx's word for none: no array at all */
            a->elts = NULL;
            a->nelts = 0;
            continue;
        }
#endif
        ph = (ngx_table_elt_t **) ((char *) &r->headers_in + hh->offset);
        *ph = NULL;
    }

    r->headers_in.msie = 0;
    r->headers_in.msie6 = 0;
    r->headers_in.opera = 0;
    r->headers_in.gecko = 0;
    r->headers_in.chrome = 0;
    r->headers_in.safari = 0;
    r->headers_in.konqueror = 0;

    /* parsed again from Authorization when asked for */
    ngx_str_null(&r->headers_in.user);
    ngx_str_null(&r->headers_in.passwd);

#if (nginx_version >= 1023000)
    r->headers_in.multi = 0;
    r->headers_in.multi_linked = 0;
#endif

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_core_module);

    part = &r->headers_in.headers.part;
    i = 0;

    while ((h = ngx_http_mosn_list_next(&part, &i)) != NULL) {

#if (nginx_version >= 1023000)
        h->next = NULL;
#endif

        hh = ngx_hash_find(&cmcf->headers_in_hash, h->hash, h->lowcase_key,
                           h->key.len);
        if (hh == NULL) {
            continue;
        }

#if (nginx_version < 1023000)
        a = ngx_http_mosn_headers_in_array(r, hh->offset);

        if (a != NULL) {
            if (a->elts == NULL
                && ngx_array_init(a, r->pool, 1, sizeof(ngx_table_elt_t *))
                   != NGX_OK)
            {
                return NGX_ERROR;
            }

            ph = ngx_array_push(a);
            if (ph == NULL) {
                return NGX_ERROR;
            }

            *ph = h;
            continue;
        }
#endif

        if (hh->offset == offsetof(ngx_http_headers_in_t, user_agent)) {
            /* nginx's own handler: the shortcut and the browser flags */
            if (hh->handler(r, h, hh->offset) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }

        ph = (ngx_table_elt_t **) ((char *) &r->headers_in + hh->offset);

#if (nginx_version >= 1023000)
        while (*ph) { ph = &(*ph)->next; }
        *ph = h;
#else
        if (*ph == NULL) {
            *ph = h;
        }
#endif
    }

    return NGX_OK;
}


/* a response header line of the verdict's */

static ngx_int_t
ngx_http_mosn_push_header(ngx_http_request_t *r, mosn_rec_view_t *rec)
{
    ngx_table_elt_t  *h;

    if (rec->key_len == sizeof("Content-Type") - 1
        && ngx_strncasecmp((u_char *) rec->key, (u_char *) "Content-Type",
                           rec->key_len) == 0)
    {
        r->headers_out.content_type.data = (u_char *) rec->value;
        r->headers_out.content_type.len = rec->value_len;
        r->headers_out.content_type_len = rec->value_len;
        r->headers_out.content_type_lowcase = NULL;
        return NGX_OK;
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.len = rec->key_len;
    h->key.data = ngx_http_mosn_strdup(r->pool, rec->key, rec->key_len);
    h->value.len = rec->value_len;
    h->value.data = ngx_http_mosn_strdup(r->pool, rec->value,
                                         rec->value_len);
    h->lowcase_key = ngx_pnalloc(r->pool, rec->key_len + 1);

    if (h->key.data == NULL || h->value.data == NULL
        || h->lowcase_key == NULL)
    {
        return NGX_ERROR;
    }

    ngx_strlow(h->lowcase_key, h->key.data, h->key.len + 1);
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    return NGX_OK;
}


/*
 * The shortcuts nginx keeps into the response headers, by name: the
 * header filter writes Server, Date and Location from them, expires
 * rewrites Cache-Control through them, gzip looks at Content-Encoding.
 * Cache-Control and Link are arrays of pointers on nginx 1.22.
 */

static ngx_http_header_out_t  ngx_http_mosn_headers_out[] = {
    { ngx_string("Server"), offsetof(ngx_http_headers_out_t, server) },
    { ngx_string("Date"), offsetof(ngx_http_headers_out_t, date) },
    { ngx_string("Content-Encoding"),
                 offsetof(ngx_http_headers_out_t, content_encoding) },
    { ngx_string("Location"), offsetof(ngx_http_headers_out_t, location) },
    { ngx_string("Refresh"), offsetof(ngx_http_headers_out_t, refresh) },
    { ngx_string("Last-Modified"),
                 offsetof(ngx_http_headers_out_t, last_modified) },
    { ngx_string("Content-Range"),
                 offsetof(ngx_http_headers_out_t, content_range) },
    { ngx_string("Accept-Ranges"),
                 offsetof(ngx_http_headers_out_t, accept_ranges) },
    { ngx_string("WWW-Authenticate"),
                 offsetof(ngx_http_headers_out_t, www_authenticate) },
    { ngx_string("Expires"), offsetof(ngx_http_headers_out_t, expires) },
    { ngx_string("ETag"), offsetof(ngx_http_headers_out_t, etag) },
#if (nginx_version >= 1023000)
    { ngx_string("Cache-Control"),
                 offsetof(ngx_http_headers_out_t, cache_control) },
    { ngx_string("Link"), offsetof(ngx_http_headers_out_t, link) },
#endif
    { ngx_null_string, 0 }
};

#if (nginx_version < 1023000)

static ngx_http_header_out_t  ngx_http_mosn_headers_out_arrays[] = {
    { ngx_string("Cache-Control"),
                 offsetof(ngx_http_headers_out_t, cache_control) },
    { ngx_string("Link"), offsetof(ngx_http_headers_out_t, link) },
    { ngx_null_string, 0 }
};

#endif


/*
 * After an edit of a response header, its shortcut is made again from
 * the lines left in the list (a hidden line has hash 0): the first on
 * 1.22, or all of them in an array; all of them, chained, on 1.23+.
 */

static ngx_int_t
ngx_http_mosn_link_header_out(ngx_http_request_t *r, const uint8_t *name,
    size_t len)
{
    ngx_uint_t              i;
    ngx_list_part_t        *part;
    ngx_table_elt_t        *h, **ph;
    ngx_http_header_out_t  *hh;
#if (nginx_version < 1023000)
    ngx_array_t            *a;
#endif

    for (hh = ngx_http_mosn_headers_out; hh->name.len; hh++) {
        if (hh->name.len == len
            && ngx_strncasecmp(hh->name.data, (u_char *) name, len) == 0)
        {
            break;
        }
    }

#if (nginx_version < 1023000)
    a = NULL;

    if (hh->name.len == 0) {
        for (hh = ngx_http_mosn_headers_out_arrays; hh->name.len; hh++) {
            if (hh->name.len == len
                && ngx_strncasecmp(hh->name.data, (u_char *) name, len) == 0)
            {
                a = (ngx_array_t *) ((char *) &r->headers_out + hh->offset);
                a->elts = NULL;
                a->nelts = 0;
                break;
            }
        }
    }
#endif

    if (hh->name.len == 0) {
        return NGX_OK;
    }

    ph = (ngx_table_elt_t **) ((char *) &r->headers_out + hh->offset);

#if (nginx_version < 1023000)
    if (a == NULL) {
        *ph = NULL;
    }
#else
    *ph = NULL;
#endif

    part = &r->headers_out.headers.part;
    i = 0;

    while ((h = ngx_http_mosn_list_next(&part, &i)) != NULL) {
        if (h->hash == 0 || h->key.len != len
            || ngx_strncasecmp(h->key.data, (u_char *) name, len) != 0)
        {
            continue;
        }

#if (nginx_version < 1023000)
        if (a != NULL) {
            if (a->elts == NULL
                && ngx_array_init(a, r->pool, 1, sizeof(ngx_table_elt_t *))
                   != NGX_OK)
            {
                return NGX_ERROR;
            }

            ph = ngx_array_push(a);
            if (ph == NULL) {
                return NGX_ERROR;
            }

            *ph = h;

        } else if (*ph == NULL) {
            *ph = h;
        }
#else
        *ph = h;
        ph = &h->next;
        h->next = NULL;
#endif
    }

    return NGX_OK;
}


/* pushes the verdict's lines of one type, then links their shortcuts */

static ngx_int_t
ngx_http_mosn_push_headers(ngx_http_request_t *r, u_char *verdict,
    size_t len, ngx_uint_t type)
{
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    if (mosn_verdict_begin(&it, verdict, len) != 0) {
        return NGX_ERROR;
    }

    while (mosn_verdict_next(&it, &rec) == 1) {
        if (rec.type == type
            && !ngx_http_mosn_protected(&rec)
            && ngx_http_mosn_push_header(r, &rec) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    if (mosn_verdict_begin(&it, verdict, len) != 0) {
        return NGX_ERROR;
    }

    while (mosn_verdict_next(&it, &rec) == 1) {
        if (rec.type == type
            && ngx_http_mosn_link_header_out(r, rec.key, rec.key_len)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_mosn_add_response_headers(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx)
{
    if (ctx->verdict == NULL || ctx->action != MOSN_ACTION_CONTINUE) {
        return NGX_OK;
    }

    return ngx_http_mosn_push_headers(r, ctx->verdict, ctx->verdict_len,
                                      MOSN_REC_RESP_ADD);
}


static ngx_uint_t
ngx_http_mosn_is(mosn_rec_view_t *rec, const char *name, size_t len)
{
    return rec->key_len == len
           && ngx_strncasecmp((u_char *) rec->key, (u_char *) name, len) == 0;
}


/* every line of one response header goes, including nginx's own copies */

static void
ngx_http_mosn_response_drop(ngx_http_request_t *r, mosn_rec_view_t *rec)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    if (ngx_http_mosn_is(rec, "Content-Type", sizeof("Content-Type") - 1)) {
        ngx_str_null(&r->headers_out.content_type);
        ngx_str_null(&r->headers_out.charset);
        r->headers_out.content_type_len = 0;
        r->headers_out.content_type_lowcase = NULL;
        return;
    }

    if (ngx_http_mosn_is(rec, "Last-Modified", sizeof("Last-Modified") - 1))
    {
        /* else the header filter writes it again from the time */
        r->headers_out.last_modified_time = -1;
    }

    part = &r->headers_out.headers.part;
    i = 0;

    while ((h = ngx_http_mosn_list_next(&part, &i)) != NULL) {
        if (h->key.len == rec->key_len
            && ngx_strncasecmp(h->key.data, (u_char *) rec->key,
                               rec->key_len) == 0)
        {
            h->hash = 0;
        }
    }
}


/*
 * The response phase's edits: every line of a name set or removed goes,
 * the lines set for it take its place, then the added lines follow.
 * nginx's own pointers into the list (Location, Cache-Control, ...) then
 * follow the lines they name.
 */

ngx_int_t
ngx_http_mosn_response_edit(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    u_char *verdict, size_t len)
{
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    if (mosn_verdict_begin(&it, verdict, len) != 0) {
        return NGX_ERROR;
    }

    while (mosn_verdict_next(&it, &rec) == 1) {

        if (rec.type != MOSN_REC_RESP_SET && rec.type != MOSN_REC_RESP_DEL
            && rec.type != MOSN_REC_RESP_ADD)
        {
            continue;
        }

        if (ngx_http_mosn_protected(&rec)) {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "mosn: request %uL: filters may not change the "
                          "\"%*s\" response header, ignored",
                          ctx->request_id, (size_t) rec.key_len, rec.key);
            continue;
        }

        if (rec.type != MOSN_REC_RESP_ADD) {
            ngx_http_mosn_response_drop(r, &rec);
        }
    }

    if (ngx_http_mosn_push_headers(r, verdict, len, MOSN_REC_RESP_SET)
        != NGX_OK
        || ngx_http_mosn_push_headers(r, verdict, len, MOSN_REC_RESP_ADD)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* names removed and not set again */
    if (mosn_verdict_begin(&it, verdict, len) != 0) {
        return NGX_ERROR;
    }

    while (mosn_verdict_next(&it, &rec) == 1) {
        if (rec.type == MOSN_REC_RESP_DEL
            && ngx_http_mosn_link_header_out(r, rec.key, rec.key_len)
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_mosn_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;
    r->headers_out.content_length_n = body->len;

    if (r->headers_out.content_type.len == 0
        && ngx_http_set_content_type(r) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (body->len == 0 || r->method == NGX_HTTP_HEAD) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body->data;
    b->last = body->data + body->len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static ngx_int_t
ngx_http_mosn_reply(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx)
{
    ngx_int_t            rc;
    ngx_str_t            body;
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_str_null(&body);

    if (mosn_verdict_begin(&it, ctx->verdict, ctx->verdict_len) != 0) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    while (mosn_verdict_next(&it, &rec) == 1) {
        if (rec.type == MOSN_REC_REPLY_BODY) {
            body.data = (u_char *) rec.value;
            body.len = rec.value_len;
        }
    }

    if (ngx_http_mosn_push_headers(r, ctx->verdict, ctx->verdict_len,
                                   MOSN_REC_REPLY_HEADER)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_mosn_send(r, ctx->reply_status, &body);

    ngx_http_finalize_request(r, rc);

    return NGX_DONE;
}


/* a status of the module's own: 431 for headers too large, fallbacks */

ngx_int_t
ngx_http_mosn_send_status(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *text)
{
    ngx_int_t  rc;
    ngx_str_t  body;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (status == NGX_HTTP_REQUEST_HEADER_TOO_LARGE) {
        /*
         * 494 is nginx's own code: the client (HTTP/2 sends the number
         * alone) and $status get RFC 6585's 431
         */
        status = NGX_HTTP_MOSN_HEADER_FIELDS_TOO_LARGE;
        ngx_str_set(&r->headers_out.status_line,
                    "431 Request Header Fields Too Large");
        ngx_str_set(&body, "request header fields too large for the "
                    "filters\n");

    } else if (text != NULL) {
        body = *text;

    } else if (status >= NGX_HTTP_OK && status < NGX_HTTP_MOVED_PERMANENTLY)
    {
        ngx_str_null(&body);

    } else {
        /* nginx's own error pages for the common codes */
        return status;
    }

    ngx_str_set(&r->headers_out.content_type, "text/plain");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_mosn_send(r, status, &body);

    ngx_http_finalize_request(r, rc);

    return NGX_DONE;
}
