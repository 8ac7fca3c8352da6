
/*
 * ngx_http_mosn_module: hands requests to MOSN-style Python stream
 * filters over a shared-memory ring, and applies their verdicts.
 */

#ifndef _NGX_HTTP_MOSN_MODULE_H_INCLUDED_
#define _NGX_HTTP_MOSN_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "shm_core.h"


#define NGX_HTTP_MOSN_FALLBACK_CONTINUE   0

#define NGX_HTTP_MOSN_OVERSIZE_FALLBACK   0
#define NGX_HTTP_MOSN_OVERSIZE_AUTO       1

/* $mosn_status */
#define NGX_HTTP_MOSN_NONE                0
#define NGX_HTTP_MOSN_FILTERED            1
#define NGX_HTTP_MOSN_FALLBACK            2
#define NGX_HTTP_MOSN_TIMEOUT             3
#define NGX_HTTP_MOSN_ERROR               4

/* ctx states, of each phase */
#define NGX_HTTP_MOSN_NEW                 0    /* not handed over yet */
#define NGX_HTTP_MOSN_WAITING             1
#define NGX_HTTP_MOSN_DONE                2
#define NGX_HTTP_MOSN_APPLIED             3
#define NGX_HTTP_MOSN_COLLECTING          4    /* the response body */

/* mosn_response_oversize */
#define NGX_HTTP_MOSN_OVERSIZE_PASS       0

/* the room mosn_slot_size keeps for a response's headers besides the
 * body, which it holds twice: as the filters get it, as they return it */
#define NGX_HTTP_MOSN_HEADERS_ROOM        4096

/* RFC 6585; nginx 1.22 has no name for it */
#define NGX_HTTP_MOSN_HEADER_FIELDS_TOO_LARGE  431

/*
 * r->buffered: the response is held while the sender filters decide.
 * The field is 4 bits wide; nginx's own filters take 0x01 (SSI), 0x02
 * (sub_filter) and 0x04 (copy), and the 0x08 of image_filter is in
 * c->buffered: 0x08 is the one bit of r->buffered no stock module sets.
 */
#define NGX_HTTP_MOSN_BUFFERED            0x08

#if (NGX_HTTP_MOSN_BUFFERED & (NGX_HTTP_SSI_BUFFERED|NGX_HTTP_SUB_BUFFERED \
                               |NGX_HTTP_COPY_BUFFERED))
#error "NGX_HTTP_MOSN_BUFFERED takes a bit of r->buffered nginx uses"
#endif


typedef struct {
    ngx_str_t                 config;        /* the MOSN JSON file */
    ngx_str_t                 python;
    ngx_str_t                 shm_name;
    ngx_uint_t                workers;
    ngx_uint_t                slots;
    size_t                    slot_size;
    ngx_flag_t                spawn;
    ngx_uint_t                queue;         /* waiting requests, a worker */
    ngx_array_t               chains;        /* of ngx_str_t, distinct */
    ngx_flag_t                enabled;
} ngx_http_mosn_main_conf_t;


typedef struct {
    ngx_str_t                 chain;         /* a MOSN listener name */
    ngx_msec_t                timeout;
    ngx_int_t                 fallback;      /* 0: continue, or a status */
    ngx_int_t                 oversize;      /* 0: fallback, or a status */
    ngx_uint_t                max_headers;
    ngx_flag_t                request_phase; /* the request to filters */
    ngx_flag_t                body;          /* request body to filters */
    size_t                    max_body;
    ngx_flag_t                response_body; /* response body to filters */
    size_t                    max_response_body;
    ngx_int_t                 response_oversize; /* 0: pass, or a status */
} ngx_http_mosn_loc_conf_t;


typedef struct {
    ngx_http_request_t       *request;
    ngx_str_t                 chain;         /* the listener, both phases */
    ngx_uint_t                state;         /* of the request phase */
    ngx_uint_t                resp_state;    /* of the response phase */
    ngx_uint_t                status;        /* $mosn_status */
    uint32_t                  slot;
    uint32_t                  gen;
    uint64_t                  request_id;
    uint64_t                  start_ns;
    uint64_t                  cost_ns;
    ngx_event_t               timer;         /* mosn_timeout, both phases */
    ngx_queue_t               queue;         /* waiting for a slot/worker */

    /* the verdict, copied out of shared memory and checked */
    u_char                   *verdict;
    size_t                    verdict_len;
    ngx_str_t                 upstream;
    ngx_uint_t                action;
    ngx_uint_t                reply_status;

    /* the response phase: its cost, and the body held meanwhile */
    uint64_t                  resp_cost_ns;
    ngx_chain_t              *held;

    /* the response body collected for the filters, a copy in one buffer */
    ngx_buf_t                *resp_body;

    unsigned                  body_done:1;
    unsigned                  body_waiting:1;
    unsigned                  senders:1;     /* the verdict asked for it */
    unsigned                  decode:1;      /* ... and for coded bodies */
    unsigned                  discard:1;     /* the response was replaced */
    unsigned                  queued:1;      /* in the wait queue */
} ngx_http_mosn_ctx_t;


/* the producer side of this nginx worker */
typedef struct {
    mosn_region_t             rg;
    ngx_int_t                 p;             /* channel, -1 if none */
    ngx_connection_t         *doorbell;
    ngx_connection_t         *notify;        /* eventfd, or NULL */
    uint32_t                  rr;
    uint32_t                  epoch;
    uint32_t                 *free;
    ngx_uint_t                nfree;
    ngx_http_mosn_ctx_t     **inflight;      /* by slot */
    uint32_t                 *inflight_gen;
    u_char                   *held;          /* by slot: ours, in flight */
    uint64_t                  next_id;
    time_t                    claim_tried;
    uint64_t                  wake_mask;     /* consumers to wake */
    ngx_event_t               wake;          /* posted: wakes them once */

    /* requests waiting for a free slot or a live Python worker, in order */
    ngx_queue_t               waiting;
    ngx_uint_t                nwaiting;
    ngx_uint_t                max_waiting;   /* mosn_queue */
    ngx_event_t               retry;         /* looks for a worker again */
} ngx_http_mosn_worker_t;


extern ngx_module_t            ngx_http_mosn_module;
extern ngx_http_mosn_worker_t  ngx_http_mosn_worker;


/* ngx_http_mosn_ring.c: this worker as a producer */
ngx_int_t ngx_http_mosn_ring_init_process(ngx_cycle_t *cycle);
void ngx_http_mosn_ring_exit_process(ngx_cycle_t *cycle);
ngx_int_t ngx_http_mosn_ring_ready(ngx_log_t *log);
ngx_int_t ngx_http_mosn_ring_submit(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_http_mosn_loc_conf_t *mlcf,
    ngx_uint_t response);
void ngx_http_mosn_ring_abandon(ngx_http_mosn_ctx_t *ctx);
void ngx_http_mosn_ring_timed_out(ngx_http_mosn_ctx_t *ctx);
ngx_uint_t ngx_http_mosn_ring_expected(void);

/* ngx_http_mosn_verdict.c: applying what the filters decided */
ngx_int_t ngx_http_mosn_verdict_take(ngx_http_mosn_ctx_t *ctx,
    const u_char *buf, size_t len);
ngx_int_t ngx_http_mosn_verdict_apply(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx);
ngx_int_t ngx_http_mosn_verdict_find(ngx_http_mosn_ctx_t *ctx,
    ngx_uint_t type, ngx_str_t *key, ngx_str_t *value);
ngx_int_t ngx_http_mosn_add_response_headers(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx);
ngx_int_t ngx_http_mosn_send_status(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *text);
ngx_table_elt_t *ngx_http_mosn_list_next(ngx_list_part_t **part,
    ngx_uint_t *i);
ngx_int_t ngx_http_mosn_verdict_copy(ngx_http_mosn_ctx_t *ctx,
    const u_char *buf, size_t len, u_char **copy);
void ngx_http_mosn_verdict_log(ngx_http_mosn_ctx_t *ctx, u_char *verdict,
    size_t len);
ngx_int_t ngx_http_mosn_response_edit(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, u_char *verdict, size_t len);

/* ngx_http_mosn_response.c: the response phase (sender filters) */
ngx_int_t ngx_http_mosn_response_init(ngx_conf_t *cf);
void ngx_http_mosn_response_done(ngx_http_mosn_ctx_t *ctx, u_char *verdict,
    size_t len, const char *why);

/* ngx_http_mosn_pool.c: the region and the Python pool, from the master */
ngx_int_t ngx_http_mosn_pool_check(ngx_conf_t *cf,
    ngx_http_mosn_main_conf_t *mmcf);
ngx_int_t ngx_http_mosn_pool_start(ngx_cycle_t *cycle,
    ngx_http_mosn_main_conf_t *mmcf);
void ngx_http_mosn_pool_stop(ngx_cycle_t *cycle);

/* ngx_http_mosn_handler.c: the request parked, resumed, or let go */
ngx_int_t ngx_http_mosn_handler(ngx_http_request_t *r);
void ngx_http_mosn_resume(ngx_http_mosn_ctx_t *ctx);
ngx_http_mosn_ctx_t *ngx_http_mosn_get_ctx(ngx_http_request_t *r);
ngx_int_t ngx_http_mosn_oversize(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_http_mosn_loc_conf_t *mlcf,
    ngx_uint_t status, const char *what);

/* ngx_http_mosn_request_body.c: the request body for the filters */
ngx_int_t ngx_http_mosn_read_body(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_http_mosn_loc_conf_t *mlcf);

/* ngx_http_mosn_variables.c */
ngx_int_t ngx_http_mosn_add_variables(ngx_conf_t *cf);

extern ngx_str_t  ngx_http_mosn_status_names[];


#endif /* _NGX_HTTP_MOSN_MODULE_H_INCLUDED_ */
