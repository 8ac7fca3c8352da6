
/*
 * Applying a verdict: request headers set or removed before proxying,
 * response headers added, or a direct reply.  The verdict is copied out
 * of shared memory and checked whole before any of it is used.
 */

#include "ngx_http_mosn_module.h"


static ngx_int_t ngx_http_mosn_protected(mosn_rec_view_t *rec);
static ngx_int_t ngx_http_mosn_edit_headers(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx);
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
        return NGX_ERROR;
    }

    *copy = p;

    return NGX_OK;
}


/* a log record: why a filter failed (warn), or what it wants said (info) */

static void
ngx_http_mosn_log_record(ngx_http_mosn_ctx_t *ctx, ngx_uint_t action,
    mosn_rec_view_t *rec)
{
    ngx_uint_t  level;

    level = (action == MOSN_ACTION_ERROR) ? NGX_LOG_WARN : NGX_LOG_INFO;

    ngx_log_error(level, ctx->request->connection->log, 0,
                  "mosn: request %uL: %*s",
                  ctx->request_id, (size_t) ngx_min(rec->value_len, 1024),
                  rec->value);
}


void
ngx_http_mosn_verdict_log(ngx_http_mosn_ctx_t *ctx, u_char *verdict,
    size_t len)
{
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    (void) mosn_verdict_begin(&it, verdict, len);

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
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    if (ngx_http_mosn_verdict_copy(ctx, buf, len, &copy) != NGX_OK) {
        return NGX_ERROR;
    }

    ctx->verdict = copy;
    ctx->verdict_len = len;

    (void) mosn_verdict_begin(&it, copy, len);

    ctx->action = it.action;
    ctx->reply_status = it.status;
    ctx->senders = (it.action == MOSN_ACTION_CONTINUE
                    && (it.flags & MOSN_VERDICT_F_SENDERS));

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
        return ngx_http_mosn_reply(r, ctx);
    }

    edits = 0;

    (void) mosn_verdict_begin(&it, ctx->verdict, ctx->verdict_len);

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

    if (edits && ngx_http_mosn_edit_headers(r, ctx) != NGX_OK) {
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

    (void) mosn_verdict_begin(&it, ctx->verdict, ctx->verdict_len);

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


/*
 * The edited request headers are built as a new list in one part: nginx
 * code walks lists assuming no part is empty, so parts are never split.
 * nginx's own pointers into the old list then move to the new elements.
 */

static ngx_int_t
ngx_http_mosn_edit_headers(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx)
{
    ngx_str_t            value;
    ngx_uint_t           i, n, type;
    ngx_list_t           list;
    ngx_list_part_t     *part;
    ngx_table_elt_t     *h, *nh, **ph;
    mosn_rec_view_t      rec;
    ngx_http_header_t   *hh;
    mosn_verdict_iter_t  it;

    n = 0;

    for (part = &r->headers_in.headers.part; part; part = part->next) {
        n += part->nelts;
    }

    n += MOSN_VERDICT_MAX_RECORDS;

    if (ngx_list_init(&list, r->pool, n, sizeof(ngx_table_elt_t)) != NGX_OK) {
        return NGX_ERROR;
    }

    part = &r->headers_in.headers.part;
    i = 0;

    while ((h = ngx_http_mosn_list_next(&part, &i)) != NULL) {

        type = ngx_http_mosn_last_edit(ctx, h->key.data, h->key.len, &value);

        if (type == MOSN_REC_REQ_DEL
            || (type == MOSN_REC_REQ_SET
                && ngx_http_mosn_list_find(&list, h->key.data,
                                           h->key.len)))
        {
            continue;
        }

        nh = ngx_list_push(&list);
        if (nh == NULL) {
            return NGX_ERROR;
        }

        *nh = *h;

        if (type == MOSN_REC_REQ_SET) {
            nh->value = value;
        }
    }

    /* headers set that were not there come last, in verdict order */
    (void) mosn_verdict_begin(&it, ctx->verdict, ctx->verdict_len);

    while (mosn_verdict_next(&it, &rec) == 1) {
        if (rec.type != MOSN_REC_REQ_SET
            || ngx_http_mosn_protected(&rec)
            || ngx_http_mosn_list_find(&list, (u_char *) rec.key,
                                       rec.key_len)
            || ngx_http_mosn_last_edit(ctx, (u_char *) rec.key, rec.key_len,
                                       &value)
               != MOSN_REC_REQ_SET)
        {
            continue;
        }

        nh = ngx_list_push(&list);
        if (nh == NULL) {
            return NGX_ERROR;
        }

        nh->key.data = (u_char *) rec.key;
        nh->key.len = rec.key_len;
        nh->value = value;
        nh->lowcase_key = ngx_pnalloc(r->pool, rec.key_len);
        if (nh->lowcase_key == NULL) {
            return NGX_ERROR;
        }

        nh->hash = ngx_hash_strlow(nh->lowcase_key, (u_char *) rec.key,
                                   rec.key_len);
    }

    for (hh = ngx_http_headers_in; hh->name.len; hh++) {

        /* these two keep arrays of pointers, not one pointer */
        if (hh->offset == 0
            || (hh->name.len == 6
                && ngx_strncasecmp(hh->name.data, (u_char *) "Cookie", 6)
                   == 0)
            || (hh->name.len == 15
                && ngx_strncasecmp(hh->name.data,
                                   (u_char *) "X-Forwarded-For", 15) == 0))
        {
            continue;
        }

        ph = (ngx_table_elt_t **) ((char *) &r->headers_in + hh->offset);

        if (*ph != NULL) {
            *ph = ngx_http_mosn_list_find(&list, hh->name.data, hh->name.len);
        }
    }

    r->headers_in.headers = list;

    return NGX_OK;
}


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
    h->key.data = (u_char *) rec->key;
    h->key.len = rec->key_len;
    h->value.data = (u_char *) rec->value;
    h->value.len = rec->value_len;

    return NGX_OK;
}


ngx_int_t
ngx_http_mosn_add_response_headers(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx)
{
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    if (ctx->verdict == NULL || ctx->action != MOSN_ACTION_CONTINUE
        || mosn_verdict_begin(&it, ctx->verdict, ctx->verdict_len) != 0)
    {
        return NGX_OK;
    }

    while (mosn_verdict_next(&it, &rec) == 1) {
        if (rec.type == MOSN_REC_RESP_ADD
            && ngx_http_mosn_push_header(r, &rec) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_uint_t
ngx_http_mosn_is(mosn_rec_view_t *rec, const char *name, size_t len)
{
    return rec->key_len == len
           && ngx_strncasecmp((u_char *) rec->key, (u_char *) name, len) == 0;
}


static ngx_table_elt_t *
ngx_http_mosn_response_find(ngx_http_request_t *r, ngx_str_t *name)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_out.headers.part;
    i = 0;

    while ((h = ngx_http_mosn_list_next(&part, &i)) != NULL) {
        if (h->hash != 0 && h->key.len == name->len
            && ngx_strncasecmp(h->key.data, name->data, name->len) == 0)
        {
            return h;
        }
    }

    return NULL;
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
 * nginx's own pointers into the list (Location, ETag, ...) then follow
 * the lines they name.
 */

ngx_int_t
ngx_http_mosn_response_edit(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    u_char *verdict, size_t len)
{
    ngx_table_elt_t        **ph;
    mosn_rec_view_t          rec;
    mosn_verdict_iter_t      it;
    ngx_http_header_out_t   *hh;

    (void) mosn_verdict_begin(&it, verdict, len);

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

    (void) mosn_verdict_begin(&it, verdict, len);

    while (mosn_verdict_next(&it, &rec) == 1) {
        if ((rec.type == MOSN_REC_RESP_SET || rec.type == MOSN_REC_RESP_ADD)
            && !ngx_http_mosn_protected(&rec)
            && ngx_http_mosn_push_header(r, &rec) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    for (hh = ngx_http_headers_out; hh->name.len; hh++) {
        ph = (ngx_table_elt_t **) ((char *) &r->headers_out + hh->offset);

        if (*ph != NULL && (*ph)->hash == 0) {
            *ph = ngx_http_mosn_response_find(r, &hh->name);
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

    (void) mosn_verdict_begin(&it, ctx->verdict, ctx->verdict_len);

    while (mosn_verdict_next(&it, &rec) == 1) {

        if (rec.type == MOSN_REC_REPLY_BODY) {
            body.data = (u_char *) rec.value;
            body.len = rec.value_len;

        } else if (rec.type == MOSN_REC_REPLY_HEADER
                   && !ngx_http_mosn_protected(&rec)
                   && ngx_http_mosn_push_header(r, &rec) != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
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
