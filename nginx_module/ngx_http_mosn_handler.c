
/*
 * The preaccess handler: parks a request while the Python filters decide,
 * resumes it when the verdict comes or mosn_timeout passes, and takes the
 * fallback when no verdict can be had.
 */

#include "ngx_http_mosn_module.h"


static void ngx_http_mosn_cleanup(void *data);
static void ngx_http_mosn_timeout_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_mosn_finish(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_http_mosn_loc_conf_t *mlcf);
static ngx_int_t ngx_http_mosn_fallback(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_http_mosn_loc_conf_t *mlcf,
    ngx_uint_t why);
static ngx_int_t ngx_http_mosn_response_only(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_http_mosn_loc_conf_t *mlcf);
static void ngx_http_mosn_timer_init(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx);


ngx_int_t
ngx_http_mosn_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_pool_cleanup_t        *cln;
    ngx_http_mosn_ctx_t       *ctx;
    ngx_http_mosn_loc_conf_t  *mlcf;

    /* subrequests ride on their parent's verdict */
    if (r != r->main) {
        return NGX_DECLINED;
    }

    mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mosn_module);

    ctx = ngx_http_mosn_get_ctx(r);

    if (ctx != NULL) {
        switch (ctx->state) {

        case NGX_HTTP_MOSN_NEW:
            /* back from reading the body */
            break;

        case NGX_HTTP_MOSN_WAITING:
            return NGX_AGAIN;

        case NGX_HTTP_MOSN_DONE:
            ctx->state = NGX_HTTP_MOSN_APPLIED;
            return ngx_http_mosn_finish(r, ctx, mlcf);

        default:
            /* an internal redirect: filtered once is enough */
            return NGX_DECLINED;
        }

    } else {
        if (mlcf->chain.len == 0) {
            return NGX_DECLINED;
        }

        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_mosn_ctx_t));
        if (ctx == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cln->handler = ngx_http_mosn_cleanup;
        cln->data = ctx;

        ctx->request = r;
        ctx->chain = mlcf->chain;
        ngx_http_set_ctx(r, ctx, ngx_http_mosn_module);

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "mosn handler, chain \"%V\"", &ctx->chain);
    }

    if (!mlcf->request_phase) {
        return ngx_http_mosn_response_only(r, ctx, mlcf);
    }

    if (mlcf->body && !ctx->body_done) {
        rc = ngx_http_mosn_read_body(r, ctx, mlcf);

        if (rc != NGX_OK) {
            return rc;
        }
    }

    if (ngx_http_mosn_ring_ready(r->connection->log) != NGX_OK) {
        ctx->state = NGX_HTTP_MOSN_APPLIED;
        return ngx_http_mosn_fallback(r, ctx, mlcf, NGX_HTTP_MOSN_FALLBACK);
    }

    rc = ngx_http_mosn_ring_submit(r, ctx, mlcf, 0);

    if (rc == NGX_DECLINED) {
        /* the wait queue is full, or no worker can be expected */
        ctx->state = NGX_HTTP_MOSN_APPLIED;
        return ngx_http_mosn_fallback(r, ctx, mlcf, NGX_HTTP_MOSN_FALLBACK);
    }

    if (rc == NGX_HTTP_REQUEST_HEADER_TOO_LARGE) {
        return ngx_http_mosn_oversize(r, ctx, mlcf,
                                      NGX_HTTP_REQUEST_HEADER_TOO_LARGE,
                                      "request headers do not fit in a slot "
                                      "(see mosn_slot_size, "
                                      "mosn_max_headers)");
    }

    if (rc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE) {
        return ngx_http_mosn_oversize(r, ctx, mlcf,
                                      NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                      "the request body does not fit in a "
                                      "slot (see mosn_slot_size)");
    }

    if (rc != NGX_OK) {
        ctx->state = NGX_HTTP_MOSN_APPLIED;
        return ngx_http_mosn_fallback(r, ctx, mlcf, NGX_HTTP_MOSN_ERROR);
    }

    /* in a slot or waiting for one: the same deadline either way */
    ctx->state = NGX_HTTP_MOSN_WAITING;

    ngx_http_mosn_timer_init(r, ctx);
    ngx_add_timer(&ctx->timer, mlcf->timeout);

    /* parked: notice a client that goes away, run nothing else */
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "mosn request %uL parked for %M ms", ctx->request_id,
                   mlcf->timeout);

    return NGX_AGAIN;
}


/*
 * mosn_request_phase off: the request goes to the upstream at once, as
 * if its verdict were a plain CONTINUE that asked for the response phase,
 * and the sender filters get the response in the one round trip.  Nothing
 * tells nginx whether the filters want a coded body decoded: it passes
 * as it is.
 */

static ngx_int_t
ngx_http_mosn_response_only(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_http_mosn_loc_conf_t *mlcf)
{
    if (ctx->state != NGX_HTTP_MOSN_NEW) {
        return NGX_DECLINED;
    }

    ctx->state = NGX_HTTP_MOSN_APPLIED;
    ctx->status = NGX_HTTP_MOSN_FILTERED;
    ctx->action = MOSN_ACTION_CONTINUE;
    ctx->senders = 1;

    ngx_http_mosn_timer_init(r, ctx);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "mosn request phase off, chain \"%V\": on to the "
                   "response", &ctx->chain);

    return NGX_DECLINED;
}


static void
ngx_http_mosn_timer_init(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx)
{
    ctx->timer.handler = ngx_http_mosn_timeout_handler;
    ctx->timer.data = ctx;
    ctx->timer.log = r->connection->log;
}


ngx_int_t
ngx_http_mosn_oversize(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_http_mosn_loc_conf_t *mlcf, ngx_uint_t status, const char *what)
{
    ctx->state = NGX_HTTP_MOSN_APPLIED;

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0, "mosn: %s", what);

    if (mlcf->oversize == NGX_HTTP_MOSN_OVERSIZE_FALLBACK) {
        return ngx_http_mosn_fallback(r, ctx, mlcf, NGX_HTTP_MOSN_FALLBACK);
    }

    ctx->status = NGX_HTTP_MOSN_FALLBACK;

    if (mlcf->oversize != NGX_HTTP_MOSN_OVERSIZE_AUTO) {
        status = mlcf->oversize;
    }

    return ngx_http_mosn_send_status(r, status, NULL);
}


/*
 * The ctx outlives internal redirects, which clear r->ctx: it is found
 * again through its pool cleanup, as the realip module does.
 */

ngx_http_mosn_ctx_t *
ngx_http_mosn_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t   *cln;
    ngx_http_mosn_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_mosn_module);

    if (ctx == NULL && (r->internal || r->filter_finalize)) {
        for (cln = r->pool->cleanup; cln; cln = cln->next) {
            if (cln->handler == ngx_http_mosn_cleanup) {
                ctx = cln->data;
                ngx_http_set_ctx(r, ctx, ngx_http_mosn_module);
                break;
            }
        }
    }

    return ctx;
}


static void
ngx_http_mosn_cleanup(void *data)
{
    ngx_http_mosn_ctx_t  *ctx = data;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    /* the client went away: the late verdict will free the slot */

    if (ctx->state == NGX_HTTP_MOSN_WAITING) {
        ngx_http_mosn_ring_abandon(ctx);
        ctx->state = NGX_HTTP_MOSN_APPLIED;
    }

    if (ctx->resp_state == NGX_HTTP_MOSN_WAITING) {
        ngx_http_mosn_ring_abandon(ctx);
        ctx->resp_state = NGX_HTTP_MOSN_APPLIED;
    }
}


static void
ngx_http_mosn_timeout_handler(ngx_event_t *ev)
{
    ngx_http_mosn_ctx_t  *ctx = ev->data;

    if (ctx->resp_state == NGX_HTTP_MOSN_WAITING) {
        ngx_http_mosn_ring_timed_out(ctx);
        ngx_http_mosn_response_done(ctx, NULL, 0, "no verdict on the "
                                    "response within mosn_timeout");
        return;
    }

    if (ctx->state != NGX_HTTP_MOSN_WAITING) {
        return;
    }

    if (ctx->queued) {
        ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                      "mosn: a request waited mosn_timeout for %s, taking "
                      "the fallback",
                      ngx_http_mosn_worker.nfree
                      ? "a Python worker to start" : "a free slot");

    } else {
        ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                      "mosn: no verdict for request %uL within "
                      "mosn_timeout, taking the fallback", ctx->request_id);
    }

    ngx_http_mosn_ring_timed_out(ctx);

    ctx->status = NGX_HTTP_MOSN_TIMEOUT;
    ctx->cost_ns = mosn_now_ns() - ctx->start_ns;
    ctx->state = NGX_HTTP_MOSN_DONE;

    ngx_http_mosn_resume(ctx);
}


void
ngx_http_mosn_resume(ngx_http_mosn_ctx_t *ctx)
{
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->request;
    c = r->connection;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_mosn_finish(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_http_mosn_loc_conf_t *mlcf)
{
    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "mosn request %uL resumes: %V", ctx->request_id,
                   &ngx_http_mosn_status_names[ctx->status]);

    if (ctx->status != NGX_HTTP_MOSN_FILTERED) {
        return ngx_http_mosn_fallback(r, ctx, mlcf, ctx->status);
    }

    return ngx_http_mosn_verdict_apply(r, ctx);
}


static ngx_int_t
ngx_http_mosn_fallback(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_http_mosn_loc_conf_t *mlcf, ngx_uint_t why)
{
    ctx->status = why;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "mosn request %uL takes the fallback: %V",
                   ctx->request_id, &ngx_http_mosn_status_names[why]);

    if (ngx_http_mosn_worker.p >= 0) {
        mosn_producer(&ngx_http_mosn_worker.rg,
                      (uint32_t) ngx_http_mosn_worker.p)->fallbacks++;
    }

    if (mlcf->fallback == NGX_HTTP_MOSN_FALLBACK_CONTINUE) {
        return NGX_DECLINED;
    }

    return ngx_http_mosn_send_status(r, mlcf->fallback, NULL);
}
