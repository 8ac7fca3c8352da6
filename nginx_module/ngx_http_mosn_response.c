
/*
 * The response phase: the header and body filters.  Response headers
 * from the request's verdict are added here.  When that verdict asked
 * for the sender filters, the response's status and headers go to Python
 * as a response record, and the response is held, as a slow client
 * holds it: the header is not passed on, body buffers are kept unsent
 * (the upstream sees them busy and stops reading when its buffers are
 * full) and r->buffered keeps the request from finishing.  The verdict
 * edits the headers and releases the lot.
 *
 * With mosn_response_body on, the body goes to Python too: it is copied
 * into one buffer of the request's pool as it comes (the upstream's
 * buffers are free again at once), up to mosn_max_response_body, and the
 * record goes when the last byte is in.  A body past the bound goes on
 * unchanged behind its filtered header, or takes the status
 * mosn_response_oversize names.  Streams that must not wait (HEAD,
 * 204, 304, upgrades, server-sent events) and compressed bodies no filter
 * asked to have decoded are never held whole.
 */

#include "ngx_http_mosn_module.h"


/* whether the body filter holds a response's body for the filters */
#define NGX_HTTP_MOSN_BODY_NO      0
#define NGX_HTTP_MOSN_BODY_YES     1
#define NGX_HTTP_MOSN_BODY_OVER    2

/* the first piece of a body of unknown length */
#define NGX_HTTP_MOSN_BODY_FIRST   8192


static ngx_int_t ngx_http_mosn_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_mosn_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_uint_t ngx_http_mosn_body_wanted(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_http_mosn_loc_conf_t *mlcf);
static ngx_int_t ngx_http_mosn_collect(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_chain_t *in);
static ngx_int_t ngx_http_mosn_body_add(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_buf_t *b, off_t size);
static ngx_int_t ngx_http_mosn_body_over(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_http_mosn_loc_conf_t *mlcf,
    ngx_chain_t *rest, const char *why);
static ngx_int_t ngx_http_mosn_response_hold(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_chain_t *held);
static ngx_int_t ngx_http_mosn_response_send(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_chain_t *held);
static ngx_chain_t *ngx_http_mosn_body_chain(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_chain_t *next);
static ngx_int_t ngx_http_mosn_body_replace(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, u_char *verdict, size_t len,
    ngx_chain_t **out);
static void ngx_http_mosn_response_replace(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_uint_t status);
static void ngx_http_mosn_consume(ngx_chain_t *cl);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


ngx_int_t
ngx_http_mosn_response_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_mosn_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_mosn_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_mosn_header_filter(ngx_http_request_t *r)
{
    ngx_uint_t                 wanted;
    ngx_http_mosn_ctx_t       *ctx;
    ngx_http_mosn_loc_conf_t  *mlcf;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    /* an error page's internal redirect does not lose the verdict */
    ctx = ngx_http_mosn_get_ctx(r);

    if (ctx == NULL || ctx->status != NGX_HTTP_MOSN_FILTERED
        || ctx->resp_state != NGX_HTTP_MOSN_NEW)
    {
        return ngx_http_next_header_filter(r);
    }

    if (ngx_http_mosn_add_response_headers(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    /* an upgrade's bytes go to the client past the filters, at once: its
     * header cannot wait for the sender filters */
    if (!ctx->senders
        || r->headers_out.status == NGX_HTTP_SWITCHING_PROTOCOLS)
    {
        ctx->resp_state = NGX_HTTP_MOSN_APPLIED;
        return ngx_http_next_header_filter(r);
    }

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mosn_module);

    wanted = ngx_http_mosn_body_wanted(r, ctx, mlcf);

    if (wanted == NGX_HTTP_MOSN_BODY_YES) {
        /*
         * The header waits for the body, which the body filter collects.
         * r->buffered is left alone: an upstream that fails before the
         * last byte (proxy_read_timeout) finalizes the request, which
         * then ends, the client seeing the connection close, as it would
         * see a body cut short.
         */
        ctx->resp_state = NGX_HTTP_MOSN_COLLECTING;
        return NGX_OK;
    }

    if (wanted == NGX_HTTP_MOSN_BODY_OVER) {
        return ngx_http_mosn_body_over(r, ctx, mlcf, NULL,
                                       "its Content-Length is over "
                                       "mosn_max_response_body");
    }

    if (ngx_http_mosn_response_hold(r, ctx, NULL) != NGX_OK) {
        return ngx_http_next_header_filter(r);
    }

    /* held: the header goes on once the verdict is in */
    return NGX_OK;
}


/*
 * Whether the filters get this response's body: only where the location
 * asks for it, only for responses that have one and end, and never past
 * the bound.
 */

static ngx_uint_t
ngx_http_mosn_body_wanted(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_http_mosn_loc_conf_t *mlcf)
{
    ngx_str_t        *type;
    ngx_uint_t        status;
    ngx_table_elt_t  *enc;

    if (!mlcf->response_body) {
        return NGX_HTTP_MOSN_BODY_NO;
    }

    status = r->headers_out.status;

    if (r->header_only || r->method == NGX_HTTP_HEAD
        || status < NGX_HTTP_OK || status == NGX_HTTP_NO_CONTENT
        || status == NGX_HTTP_NOT_MODIFIED)
    {
        return NGX_HTTP_MOSN_BODY_NO;
    }

    /* server-sent events: a stream that may never end */
    type = &r->headers_out.content_type;

    if (type->len >= sizeof("text/event-stream") - 1
        && ngx_strncasecmp(type->data, (u_char *) "text/event-stream",
                           sizeof("text/event-stream") - 1) == 0)
    {
        ngx_log_error(NGX_LOG_DEBUG, r->connection->log, 0,
                      "mosn: request %uL: an event stream, its body is "
                      "not held", ctx->request_id);
        return NGX_HTTP_MOSN_BODY_NO;
    }

    enc = r->headers_out.content_encoding;

    if (enc != NULL && enc->hash != 0
        && !(enc->value.len == sizeof("identity") - 1
             && ngx_strncasecmp(enc->value.data, (u_char *) "identity",
                                enc->value.len) == 0))
    {
        if (!ctx->decode
            || !((enc->value.len == 4
                  && ngx_strncasecmp(enc->value.data, (u_char *) "gzip", 4)
                     == 0)
                 || (enc->value.len == 6
                     && ngx_strncasecmp(enc->value.data,
                                        (u_char *) "x-gzip", 6) == 0)
                 || (enc->value.len == 7
                     && ngx_strncasecmp(enc->value.data,
                                        (u_char *) "deflate", 7) == 0)))
        {
            ngx_log_error(NGX_LOG_DEBUG, r->connection->log, 0,
                          "mosn: request %uL: the response body is "
                          "\"%V\"-encoded and passes unchanged (no sender "
                          "filter asks for it decoded)", ctx->request_id,
                          &enc->value);
            return NGX_HTTP_MOSN_BODY_NO;
        }
    }

    if (r->headers_out.content_length_n > (off_t) mlcf->max_response_body) {
        return NGX_HTTP_MOSN_BODY_OVER;
    }

    return NGX_HTTP_MOSN_BODY_YES;
}


static ngx_int_t
ngx_http_mosn_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_http_mosn_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_body_filter(r, in);
    }

    /* the header filter found it again after an internal redirect */
    ctx = ngx_http_get_module_ctx(r, ngx_http_mosn_module);

    if (ctx == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    if (ctx->resp_state == NGX_HTTP_MOSN_COLLECTING) {
        return ngx_http_mosn_collect(r, ctx, in);
    }

    if (ctx->resp_state == NGX_HTTP_MOSN_WAITING) {
        if (in != NULL
            && ngx_chain_add_copy(r->pool, &ctx->held, in) != NGX_OK)
        {
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (ctx->discard) {
        ngx_http_mosn_consume(in);
        return NGX_OK;
    }

    return ngx_http_next_body_filter(r, in);
}


/*
 * The body as it comes, copied: the upstream's buffers are marked sent,
 * so it reads on into them, and nothing but the copy is held.
 */

static ngx_int_t
ngx_http_mosn_collect(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_chain_t *in)
{
    off_t                      size;
    ngx_int_t                  rc;
    ngx_buf_t                 *b;
    ngx_chain_t               *cl, *held;
    ngx_http_mosn_loc_conf_t  *mlcf;

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mosn_module);

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;
        size = ngx_buf_size(b);

        if (size > 0) {
            if ((ctx->resp_body ? ctx->resp_body->last - ctx->resp_body->pos
                                : 0)
                + size > (off_t) mlcf->max_response_body)
            {
                return ngx_http_mosn_body_over(r, ctx, mlcf, cl,
                                               "it is longer than "
                                               "mosn_max_response_body");
            }

            if (ngx_http_mosn_body_add(r, ctx, b, size) != NGX_OK) {
                return NGX_ERROR;
            }
        }

        if (!b->last_buf) {
            continue;
        }

        /* the whole body is in: to the filters with the headers */
        if (ctx->resp_body == NULL) {
            ctx->resp_body = ngx_calloc_buf(r->pool);
            if (ctx->resp_body == NULL) {
                return NGX_ERROR;
            }
        }

        rc = ngx_http_mosn_response_hold(r, ctx, NULL);

        if (rc == NGX_OK) {
            return NGX_OK;
        }

        if (rc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE) {
            held = ngx_http_mosn_body_chain(r, ctx, NULL);
            if (held == NULL) {
                return NGX_ERROR;
            }

            return ngx_http_mosn_body_over(r, ctx, mlcf, held,
                                           "it does not fit in a slot "
                                           "with the headers (see "
                                           "mosn_slot_size)");
        }

        /* no verdict will come: the response goes on as it is */
        held = ngx_http_mosn_body_chain(r, ctx, NULL);
        if (held == NULL) {
            return NGX_ERROR;
        }

        return ngx_http_mosn_response_send(r, ctx, held);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_mosn_body_add(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_buf_t *b, off_t size)
{
    off_t                      want;
    size_t                     have;
    ssize_t                    n;
    ngx_buf_t                 *body;
    ngx_http_mosn_loc_conf_t  *mlcf;

    body = ctx->resp_body;
    have = body ? (size_t) (body->last - body->pos) : 0;

    if (body == NULL || (off_t) (body->end - body->last) < size) {
        mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mosn_module);

        /* the length the upstream gave, else doubling up to the bound */
        want = r->headers_out.content_length_n;

        if (want < (off_t) have + size) {
            want = ngx_max((off_t) have * 2, NGX_HTTP_MOSN_BODY_FIRST);
            want = ngx_max(want, (off_t) have + size);
            want = ngx_min(want, (off_t) mlcf->max_response_body);
        }

        body = ngx_create_temp_buf(r->pool, (size_t) want);
        if (body == NULL) {
            return NGX_ERROR;
        }

        if (ctx->resp_body != NULL) {
            body->last = ngx_cpymem(body->pos, ctx->resp_body->pos, have);
            ngx_pfree(r->pool, ctx->resp_body->start);
        }

        ctx->resp_body = body;
    }

    if (ngx_buf_in_memory(b)) {
        body->last = ngx_cpymem(body->last, b->pos, size);
        b->pos = b->last;

    } else {
        n = ngx_read_file(b->file, body->last, (size_t) size, b->file_pos);

        if (n != (ssize_t) size) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "mosn: request %uL: cannot read the response "
                          "body from \"%V\"", ctx->request_id,
                          &b->file->name);
            return NGX_ERROR;
        }

        body->last += n;
    }

    b->file_pos = b->file_last;

    return NGX_OK;
}


/*
 * The body does not go to the filters after all (why says why): it goes
 * on unchanged behind the filtered header, or the response is replaced
 * by mosn_response_oversize's status.  What was collected, then rest,
 * not yet seen, follow the header.
 */

static ngx_int_t
ngx_http_mosn_body_over(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_http_mosn_loc_conf_t *mlcf, ngx_chain_t *rest, const char *why)
{
    ngx_chain_t  *held, *ln;

    held = NULL;

    if (rest != NULL && ngx_chain_add_copy(r->pool, &held, rest) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ctx->resp_body != NULL
        && ctx->resp_body->last != ctx->resp_body->pos)
    {
        ln = ngx_http_mosn_body_chain(r, ctx, held);
        if (ln == NULL) {
            return NGX_ERROR;
        }

        /* not the last: the rest follows */
        ln->buf->last_buf = 0;
        ln->buf->last_in_chain = 0;
        held = ln;
    }

    ctx->resp_body = NULL;

    if (mlcf->response_oversize == NGX_HTTP_MOSN_OVERSIZE_PASS) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "mosn: request %uL: the response body passes "
                      "unchanged, the filters see the headers only: %s",
                      ctx->request_id, why);

        if (ngx_http_mosn_response_hold(r, ctx, held) == NGX_OK) {
            return NGX_OK;
        }

        return ngx_http_mosn_response_send(r, ctx, held);
    }

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "mosn: request %uL: the response takes status %i "
                  "(mosn_response_oversize): its body %s",
                  ctx->request_id, mlcf->response_oversize, why);

    ngx_http_mosn_response_replace(r, ctx, mlcf->response_oversize);

    return ngx_http_mosn_response_send(r, ctx, held);
}


/*
 * The response record goes to Python, and the response waits for its
 * verdict with held, the body seen so far.  If no verdict can be had,
 * mosn_fallback is applied and NGX_DECLINED returned: the caller sends
 * the response on.  NGX_HTTP_REQUEST_ENTITY_TOO_LARGE: the body did not
 * fit in a slot with the headers; nothing was done.
 */

static ngx_int_t
ngx_http_mosn_response_hold(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_chain_t *held)
{
    ngx_int_t                  rc;
    ngx_http_mosn_loc_conf_t  *mlcf;

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mosn_module);

    if (ngx_http_mosn_ring_ready(r->connection->log) != NGX_OK) {
        rc = NGX_DECLINED;

    } else {
        rc = ngx_http_mosn_ring_submit(r, ctx, mlcf, 1);
    }

    if (rc == NGX_OK) {
        ctx->resp_state = NGX_HTTP_MOSN_WAITING;
        ctx->held = held;

        /* the timer's handler and data were set by the request phase */
        ngx_add_timer(&ctx->timer, mlcf->timeout);

        r->buffered |= NGX_HTTP_MOSN_BUFFERED;

        return NGX_OK;
    }

    if (rc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE) {
        return rc;
    }

    if (rc == NGX_HTTP_REQUEST_HEADER_TOO_LARGE) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "mosn: response headers do not fit in a slot (see "
                      "mosn_slot_size, mosn_max_headers)");
    }

    /* the ring is full, no worker is alive, or the record is too big */
    if (mlcf->fallback != NGX_HTTP_MOSN_FALLBACK_CONTINUE) {
        ngx_http_mosn_response_replace(r, ctx, mlcf->fallback);
    }

    ctx->resp_state = NGX_HTTP_MOSN_APPLIED;
    r->buffered &= ~NGX_HTTP_MOSN_BUFFERED;

    return NGX_DECLINED;
}


/* the header, then what was held: the response leaves the module */

static ngx_int_t
ngx_http_mosn_response_send(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_chain_t *held)
{
    ngx_int_t  rc;

    ctx->resp_state = NGX_HTTP_MOSN_APPLIED;
    r->buffered &= ~NGX_HTTP_MOSN_BUFFERED;

    rc = ngx_http_next_header_filter(r);

    if (rc == NGX_ERROR || rc > NGX_OK) {
        ngx_http_mosn_consume(held);
        return NGX_ERROR;
    }

    if (held == NULL) {
        return rc;
    }

    /* HEAD, a status of the module's own, a response with no body */
    if (r->header_only) {
        ngx_http_mosn_consume(held);
        return rc;
    }

    return ngx_http_next_body_filter(r, held);
}


/* the collected body as a chain link of its own, the last, before next */

static ngx_chain_t *
ngx_http_mosn_body_chain(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_chain_t *next)
{
    ngx_chain_t  *cl;

    cl = ngx_alloc_chain_link(r->pool);
    if (cl == NULL) {
        return NULL;
    }

    cl->buf = ctx->resp_body;
    cl->buf->last_buf = 1;
    cl->buf->last_in_chain = 1;
    cl->next = next;

    ctx->resp_body = NULL;

    return cl;
}


/*
 * The verdict came (verdict is its checked copy), or none will (verdict
 * is NULL, why says what happened): the header goes on, edited or as it
 * was or replaced by the fallback, and the body held meanwhile, or the
 * filters' new one, follows it.
 */

void
ngx_http_mosn_response_done(ngx_http_mosn_ctx_t *ctx, u_char *verdict,
    size_t len, const char *why)
{
    ngx_int_t                  rc;
    ngx_chain_t               *held, *body;
    ngx_connection_t          *c;
    ngx_http_request_t        *r;
    mosn_verdict_iter_t        it;
    ngx_http_mosn_loc_conf_t  *mlcf;

    r = ctx->request;
    c = r->connection;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    if (verdict != NULL) {
        ngx_http_mosn_verdict_log(ctx, verdict, len);

        if (mosn_verdict_begin(&it, verdict, len) != 0) {
            verdict = NULL;

        } else if (it.action != MOSN_ACTION_CONTINUE) {
            verdict = NULL;
            why = "a sender filter failed";
        }
    }

    /* what the upstream sent, in order: the collected body, or what was
     * held past the header */
    held = ctx->held;
    ctx->held = NULL;

    if (ctx->resp_body != NULL) {
        held = ngx_http_mosn_body_chain(r, ctx, held);
        if (held == NULL) {
            rc = NGX_ERROR;
            goto failed;
        }
    }

    body = NULL;
    rc = NGX_OK;

    if (verdict != NULL) {
        rc = ngx_http_mosn_body_replace(r, ctx, verdict, len, &body);

        if (rc == NGX_OK) {
            rc = ngx_http_mosn_response_edit(r, ctx, verdict, len);
        }

    } else {
        mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mosn_module);

        ngx_log_error(NGX_LOG_WARN, c->log, 0,
                      "mosn: request %uL: %s, the response goes %s",
                      ctx->request_id, why,
                      mlcf->fallback == NGX_HTTP_MOSN_FALLBACK_CONTINUE
                      ? "on unfiltered" : "out as the fallback status");

        if (mlcf->fallback != NGX_HTTP_MOSN_FALLBACK_CONTINUE) {
            ngx_http_mosn_response_replace(r, ctx, mlcf->fallback);
        }
    }

    if (rc != NGX_OK) {
        goto failed;
    }

    if (body != NULL) {
        /* the upstream's body is thrown away, the new one goes */
        ngx_http_mosn_consume(held);
        held = body;
    }

    if (ngx_http_mosn_response_send(r, ctx, held) == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        ngx_http_run_posted_requests(c);
        return;
    }

    /* whoever drives the request (the upstream, or the writer that waits
     * for r->buffered to clear) goes on from here */
    ngx_post_event(c->write, &ngx_posted_events);

    return;

failed:

    ctx->resp_state = NGX_HTTP_MOSN_APPLIED;
    r->buffered &= ~NGX_HTTP_MOSN_BUFFERED;

    ngx_http_mosn_consume(held);
    ngx_http_finalize_request(r, NGX_ERROR);
    ngx_http_run_posted_requests(c);
}


/*
 * A new body from the sender filters: nginx frames it (Content-Length,
 * which the chunked filter honours) and the validators of the old one
 * go.  The body points into the verdict's copy, which lives with the
 * request.
 */

static ngx_int_t
ngx_http_mosn_body_replace(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    u_char *verdict, size_t len, ngx_chain_t **out)
{
    ngx_buf_t            *b;
    ngx_uint_t            found;
    ngx_chain_t          *cl;
    mosn_rec_view_t       rec;
    mosn_verdict_iter_t   it;

    found = 0;

    (void) mosn_verdict_begin(&it, verdict, len);

    while (mosn_verdict_next(&it, &rec) == 1) {
        if (rec.type == MOSN_REC_RESP_BODY) {
            found = 1;
            break;
        }
    }

    if (!found) {
        return NGX_OK;
    }

    ngx_http_clear_content_length(r);
    ngx_http_clear_last_modified(r);
    ngx_http_clear_etag(r);

    r->headers_out.content_length_n = rec.value_len;

    /* what the upstream has yet to send is thrown away */
    ctx->discard = 1;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    if (rec.value_len) {
        b->pos = (u_char *) rec.value;
        b->last = b->pos + rec.value_len;
        b->memory = 1;
    }

    b->last_buf = 1;
    b->last_in_chain = 1;

    cl = ngx_alloc_chain_link(r->pool);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    cl->buf = b;
    cl->next = NULL;

    *out = cl;

    return NGX_OK;
}


/* the fallback status instead of the response, which is thrown away */

static void
ngx_http_mosn_response_replace(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_uint_t status)
{
    ngx_http_clean_header(r);

    r->headers_out.status = status;
    r->headers_out.content_length_n = 0;
    r->headers_out.last_modified_time = -1;
    r->header_only = 1;

    ctx->discard = 1;
}


/* marks buffers sent, so that their owner can reuse them */

static void
ngx_http_mosn_consume(ngx_chain_t *cl)
{
    for ( /* void */ ; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;
    }
}
