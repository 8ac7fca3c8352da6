
/*
 * The response phase: the header and body filters.  Response headers
 * from the request's verdict are added here.  When that verdict asked
 * for the sender filters, the response's status and headers go to Python
 * as a response record, and the response is held, as a slow client
 * holds it: the header is not passed on, body buffers are kept unsent
 * (the upstream sees them busy and stops reading when its buffers are
 * full) and r->buffered keeps the request from finishing.  The verdict
 * edits the headers and releases the lot.
 */

#include "ngx_http_mosn_module.h"


static ngx_int_t ngx_http_mosn_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_mosn_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_mosn_response_hold(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx);
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
    ngx_http_mosn_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    /* an error page's internal redirect does not lose the verdict */
    ctx = ngx_http_mosn_get_ctx(r);

    if (ctx == NULL || ctx->status != NGX_HTTP_MOSN_FILTERED
        || ctx->resp_state != 0)
    {
        return ngx_http_next_header_filter(r);
    }

    if (ngx_http_mosn_add_response_headers(r, ctx) != NGX_OK) {
        return NGX_ERROR;
    }

    if (!ctx->senders || ngx_http_mosn_response_hold(r, ctx) != NGX_OK) {
        ctx->resp_state = NGX_HTTP_MOSN_APPLIED;
        return ngx_http_next_header_filter(r);
    }

    /* held: the header goes on once the verdict is in */
    return NGX_OK;
}


static ngx_int_t
ngx_http_mosn_response_hold(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx)
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

        /* the timer's handler and data were set by the request phase */
        ngx_add_timer(&ctx->timer, mlcf->timeout);

        r->buffered |= NGX_HTTP_MOSN_BUFFERED;

        return NGX_OK;
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

    return NGX_DECLINED;
}


/*
 * The verdict on the response came (verdict is its checked copy), or
 * none will (verdict is NULL, why says what happened): the header goes
 * on, edited or as it was or replaced by the fallback, and the body
 * held meanwhile follows it.
 */

void
ngx_http_mosn_response_done(ngx_http_mosn_ctx_t *ctx, u_char *verdict,
    size_t len, const char *why)
{
    ngx_int_t                  rc;
    ngx_chain_t               *held;
    ngx_connection_t          *c;
    ngx_http_request_t        *r;
    mosn_verdict_iter_t        it;
    ngx_http_mosn_loc_conf_t  *mlcf;

    r = ctx->request;
    c = r->connection;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    ctx->resp_state = NGX_HTTP_MOSN_APPLIED;
    r->buffered &= ~NGX_HTTP_MOSN_BUFFERED;

    if (verdict != NULL) {
        ngx_http_mosn_verdict_log(ctx, verdict, len);

        if (mosn_verdict_begin(&it, verdict, len) != 0) {
            verdict = NULL;

        } else if (it.action != MOSN_ACTION_CONTINUE) {
            verdict = NULL;
            why = "a sender filter failed";
        }
    }

    rc = NGX_OK;

    if (verdict != NULL) {
        rc = ngx_http_mosn_response_edit(r, ctx, verdict, len);

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

    if (rc == NGX_OK) {
        rc = ngx_http_next_header_filter(r);
    }

    held = ctx->held;
    ctx->held = NULL;

    if (rc == NGX_ERROR || rc > NGX_OK) {
        ngx_http_mosn_consume(held);
        ngx_http_finalize_request(r, NGX_ERROR);
        ngx_http_run_posted_requests(c);
        return;
    }

    if (held != NULL) {
        if (r->header_only || ctx->discard) {
            ngx_http_mosn_consume(held);

        } else if (ngx_http_next_body_filter(r, held) == NGX_ERROR) {
            ngx_http_finalize_request(r, NGX_ERROR);
            ngx_http_run_posted_requests(c);
            return;
        }
    }

    /* whoever drives the request (the upstream, or the writer that waits
     * for r->buffered to clear) goes on from here */
    ngx_post_event(c->write, &ngx_posted_events);
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


/* marks buffers sent, so that their owner can reuse them */

static void
ngx_http_mosn_consume(ngx_chain_t *cl)
{
    for ( /* void */ ; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;
    }
}
