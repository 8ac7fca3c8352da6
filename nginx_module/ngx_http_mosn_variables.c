
/*
 * The variables: $mosn_upstream and $mosn_meta_NAME from the verdict,
 * $mosn_status, $mosn_cost_us and $mosn_request_id.
 */

#include "ngx_http_mosn_module.h"


static ngx_int_t ngx_http_mosn_upstream_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_mosn_meta_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_mosn_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_mosn_number_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


static ngx_http_variable_t  ngx_http_mosn_vars[] = {

    { ngx_string("mosn_upstream"), NULL, ngx_http_mosn_upstream_variable,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("mosn_meta_"), NULL, ngx_http_mosn_meta_variable,
      0, NGX_HTTP_VAR_NOCACHEABLE|NGX_HTTP_VAR_PREFIX, 0 },

    { ngx_string("mosn_status"), NULL, ngx_http_mosn_status_variable,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("mosn_cost_us"), NULL, ngx_http_mosn_number_variable,
      0, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("mosn_request_id"), NULL, ngx_http_mosn_number_variable,
      1, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_str_t  ngx_http_mosn_status_names[] = {
    ngx_string("-"),
    ngx_string("filtered"),
    ngx_string("fallback"),
    ngx_string("timeout"),
    ngx_string("error"),
};


/* every mosn variable changes after the verdict: none is cached */

static ngx_int_t
ngx_http_mosn_variable_set(ngx_http_variable_value_t *v, u_char *data,
    size_t len)
{
    v->data = data;
    v->len = len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_mosn_upstream_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_mosn_ctx_t  *ctx;

    ctx = ngx_http_mosn_get_ctx(r->main);

    if (ctx == NULL || ctx->upstream.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    return ngx_http_mosn_variable_set(v, ctx->upstream.data,
                                      ctx->upstream.len);
}


static ngx_int_t
ngx_http_mosn_meta_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t            *name = (ngx_str_t *) data;
    ngx_str_t             key, value;
    ngx_http_mosn_ctx_t  *ctx;

    ctx = ngx_http_mosn_get_ctx(r->main);

    key.data = name->data + sizeof("mosn_meta_") - 1;
    key.len = name->len - (sizeof("mosn_meta_") - 1);

    if (ctx == NULL || ctx->status != NGX_HTTP_MOSN_FILTERED
        || ngx_http_mosn_verdict_find(ctx, MOSN_REC_META, &key, &value)
           != NGX_OK)
    {
        v->not_found = 1;
        return NGX_OK;
    }

    return ngx_http_mosn_variable_set(v, value.data, value.len);
}


static ngx_int_t
ngx_http_mosn_status_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_uint_t            status;
    ngx_http_mosn_ctx_t  *ctx;

    ctx = ngx_http_mosn_get_ctx(r->main);
    status = ctx ? ctx->status : NGX_HTTP_MOSN_NONE;

    return ngx_http_mosn_variable_set(v,
                                      ngx_http_mosn_status_names[status].data,
                                      ngx_http_mosn_status_names[status].len);
}


static ngx_int_t
ngx_http_mosn_number_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char               *p;
    ngx_http_mosn_ctx_t  *ctx;

    ctx = ngx_http_mosn_get_ctx(r->main);

    if (ctx == NULL || ctx->request_id == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    return ngx_http_mosn_variable_set(v, p,
               (data == 0 ? ngx_sprintf(p, "%uL", ctx->cost_ns / 1000)
                          : ngx_sprintf(p, "%uL", ctx->request_id)) - p);
}


ngx_int_t
ngx_http_mosn_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_mosn_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}
