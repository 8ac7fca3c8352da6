
/*
 * The request body, read whole before the request goes to the filters
 * (mosn_request_body on), up to mosn_max_body.
 */

#include "ngx_http_mosn_module.h"


static void ngx_http_mosn_body_read(ngx_http_request_t *r);


/*
 * The body is read before the request goes to the filters, as in
 * lua-nginx-module's access phase: the post handler balances the count
 * taken by ngx_http_read_client_request_body() and resumes the phases
 * if the body came late.
 */

ngx_int_t
ngx_http_mosn_read_body(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_http_mosn_loc_conf_t *mlcf)
{
    ngx_int_t  rc;

    if (r->headers_in.content_length_n > (off_t) mlcf->max_body) {
        return ngx_http_mosn_oversize(r, ctx, mlcf,
                                      NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                      "the request body is larger than "
                                      "mosn_max_body");
    }

    if (r->headers_in.content_length_n <= 0 && !r->headers_in.chunked) {
        ctx->body_done = 1;
        return NGX_OK;
    }

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_mosn_body_read);

    if (rc == NGX_ERROR || rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    if (!ctx->body_done) {
        ctx->body_waiting = 1;
        return NGX_DONE;
    }

    return NGX_OK;
}


static void
ngx_http_mosn_body_read(ngx_http_request_t *r)
{
    ngx_http_mosn_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_mosn_module);

    r->main->count--;

    if (ctx == NULL) {
        return;
    }

    ctx->body_done = 1;

    if (ctx->body_waiting) {
        ctx->body_waiting = 0;
        r->write_event_handler = ngx_http_core_run_phases;
        ngx_http_core_run_phases(r);
    }
}
