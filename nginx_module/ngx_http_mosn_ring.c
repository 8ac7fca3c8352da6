
/*
 * This nginx worker as a producer on the ring: its channel, its doorbell
 * in the event loop, request records into slots, completions back into
 * parked requests.
 */

#include "ngx_http_mosn_module.h"


#define NGX_HTTP_MOSN_BATCH  64

/* how often requests waiting for a Python worker look for one */
#define NGX_HTTP_MOSN_RETRY  50

/* ngx_http_mosn_publish(): why a request could not be handed over now */
#define NGX_HTTP_MOSN_NO_SLOT    NGX_AGAIN
#define NGX_HTTP_MOSN_NO_WORKER  NGX_BUSY


static void ngx_http_mosn_doorbell_handler(ngx_event_t *ev);
static void ngx_http_mosn_wake_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_mosn_publish(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_http_mosn_loc_conf_t *mlcf,
    ngx_uint_t response);
static ngx_int_t ngx_http_mosn_enqueue(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_http_mosn_loc_conf_t *mlcf,
    ngx_uint_t response, ngx_int_t why);
static void ngx_http_mosn_dequeue(void);
static void ngx_http_mosn_unqueue(ngx_http_mosn_ctx_t *ctx);
static void ngx_http_mosn_queue_fail(ngx_http_mosn_ctx_t *ctx,
    ngx_uint_t status, const char *why);
static void ngx_http_mosn_retry_handler(ngx_event_t *ev);
static ngx_uint_t ngx_http_mosn_consumer_live(void);
static void ngx_http_mosn_drain(void);
static void ngx_http_mosn_rescue(void);
static void ngx_http_mosn_complete(uint32_t s, uint32_t gen,
    ngx_uint_t failed);
static void ngx_http_mosn_release(uint32_t s);
static ngx_int_t ngx_http_mosn_claim(ngx_log_t *log);
static ngx_connection_t *ngx_http_mosn_notify_open(ngx_log_t *log,
    uint32_t p);
static ngx_int_t ngx_http_mosn_write_record(ngx_http_request_t *r,
    ngx_http_mosn_ctx_t *ctx, ngx_http_mosn_loc_conf_t *mlcf,
    mosn_slot_t *slot, ngx_uint_t response);


ngx_http_mosn_worker_t  ngx_http_mosn_worker = { .p = -1 };


ngx_int_t
ngx_http_mosn_ring_init_process(ngx_cycle_t *cycle)
{
    ngx_http_mosn_main_conf_t  *mmcf;
    ngx_http_mosn_worker_t     *w = &ngx_http_mosn_worker;

    if (w->rg.hdr == NULL) {
        return NGX_OK;
    }

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    /* the supervisor watches the master through this */
    w->rg.hdr->master_pid = (uint32_t) (ngx_process == NGX_PROCESS_WORKER
                                        ? getppid() : ngx_pid);

    w->free = ngx_alloc(sizeof(uint32_t) * w->rg.slots, cycle->log);
    w->inflight = ngx_alloc(sizeof(ngx_http_mosn_ctx_t *) * w->rg.slots,
                            cycle->log);
    w->inflight_gen = ngx_alloc(sizeof(uint32_t) * w->rg.slots,
                                cycle->log);
    w->held = ngx_alloc(w->rg.slots, cycle->log);

    if (w->free == NULL || w->inflight == NULL || w->inflight_gen == NULL
        || w->held == NULL)
    {
        return NGX_ERROR;
    }

    mmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_mosn_module);

    ngx_queue_init(&w->waiting);
    w->nwaiting = 0;
    w->max_waiting = mmcf->queue;
    w->retry.handler = ngx_http_mosn_retry_handler;
    w->retry.log = cycle->log;
    w->retry.cancelable = 1;

    (void) ngx_http_mosn_claim(cycle->log);

    return NGX_OK;
}


static ngx_int_t
ngx_http_mosn_claim(ngx_log_t *log)
{
    int                      fd, p;
    char                     err[256];
    uint32_t                 s;
    ngx_event_t             *rev;
    ngx_connection_t        *c;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    w->claim_tried = ngx_time();

    p = mosn_producer_claim(&w->rg, ngx_pid);

    if (p < 0) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "mosn: no free producer channel in \"%s\" (%uD in "
                      "use); requests take the fallback until one frees",
                      w->rg.name, w->rg.nproducers);
        return NGX_DECLINED;
    }

    fd = mosn_doorbell_open(&w->rg, (uint32_t) p, err, sizeof(err));

    if (fd == -1) {
        ngx_log_error(NGX_LOG_ERR, log, 0, "mosn: channel %d: %s; requests "
                      "take the fallback", p, err);
        mosn_producer_release(&w->rg, (uint32_t) p);
        return NGX_DECLINED;
    }

    c = ngx_get_connection(fd, log);
    if (c == NULL) {
        close(fd);
        mosn_doorbell_unlink(&w->rg, (uint32_t) p);
        mosn_producer_release(&w->rg, (uint32_t) p);
        return NGX_DECLINED;
    }

    rev = c->read;
    rev->handler = ngx_http_mosn_doorbell_handler;
    rev->log = log;
    c->log = log;

    if (ngx_add_event(rev, NGX_READ_EVENT, 0) != NGX_OK) {
        ngx_close_connection(c);
        mosn_doorbell_unlink(&w->rg, (uint32_t) p);
        mosn_producer_release(&w->rg, (uint32_t) p);
        return NGX_DECLINED;
    }

    for (s = 0; s < w->rg.slots; s++) {
        w->free[s] = w->rg.slots - 1 - s;
        w->inflight[s] = NULL;
        w->inflight_gen[s] = 0;
        w->held[s] = 0;
    }

    w->nfree = w->rg.slots;
    w->doorbell = c;
    w->notify = ngx_http_mosn_notify_open(log, (uint32_t) p);
    w->wake.handler = ngx_http_mosn_wake_handler;
    w->wake.log = log;
    w->wake_mask = 0;
    w->p = p;
    w->epoch = w->rg.hdr->consumer_epoch;
    w->next_id = ((uint64_t) (uint32_t) ngx_pid << 32) + 1;

    (void) mosn_producer_arm(&w->rg, (uint32_t) p);

    ngx_log_error(NGX_LOG_INFO, log, 0, "mosn: worker took channel %d of "
                  "\"%s\"", p, w->rg.name);

    return NGX_OK;
}


/*
 * The channel's eventfd, beside its doorbell: Python workers that can
 * copy it wake this worker through it, more cheaply than with a
 * datagram.  Without it they ring the doorbell.
 */

static ngx_connection_t *
ngx_http_mosn_notify_open(ngx_log_t *log, uint32_t p)
{
    int                      fd;
    ngx_connection_t        *c;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    fd = mosn_producer_notify_open(&w->rg, p);
    if (fd == -1) {
        ngx_log_error(NGX_LOG_WARN, log, ngx_errno,
                      "mosn: eventfd() failed, Python workers will wake "
                      "this worker by its doorbell");
        return NULL;
    }

    c = ngx_get_connection(fd, log);
    if (c == NULL) {
        goto failed;
    }

    c->read->handler = ngx_http_mosn_doorbell_handler;
    c->read->log = log;
    c->log = log;

    if (ngx_add_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
        ngx_close_connection(c);
        goto failed_closed;
    }

    return c;

failed:

    close(fd);

failed_closed:

    mosn_producer(&w->rg, p)->notify_fd = -1;

    return NULL;
}


void
ngx_http_mosn_ring_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    if (w->p < 0) {
        return;
    }

    if (w->wake.posted) {
        ngx_delete_posted_event(&w->wake);
    }

    if (w->retry.timer_set) {
        ngx_del_timer(&w->retry);
    }

    if (w->retry.posted) {
        ngx_delete_posted_event(&w->retry);
    }

    /* nginx counts a socket left open at exit as a leak */
    ngx_close_connection(w->doorbell);
    w->doorbell = NULL;

    if (w->notify) {
        mosn_producer(&w->rg, (uint32_t) w->p)->notify_fd = -1;
        ngx_close_connection(w->notify);
        w->notify = NULL;
    }

    /* before the release: the channel's next owner binds the name anew */
    mosn_doorbell_unlink(&w->rg, (uint32_t) w->p);

    /* the reaper hands the channel on once its slots are back */
    mosn_producer_release(&w->rg, (uint32_t) w->p);
    w->p = -1;
}


ngx_int_t
ngx_http_mosn_ring_ready(ngx_log_t *log)
{
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    if (w->rg.hdr == NULL || w->free == NULL) {
        return NGX_DECLINED;
    }

    if (w->p >= 0) {
        return NGX_OK;
    }

    if (ngx_time() - w->claim_tried < 1) {
        return NGX_DECLINED;
    }

    return ngx_http_mosn_claim(log);
}


/*
 * Hands the request (or, with response set, its response) to the
 * filters: into a slot now, or into the wait queue when no slot is free
 * or no Python worker is live yet.  NGX_OK: parked either way, under the
 * caller's mosn_timeout timer.  NGX_DECLINED: neither is possible (the
 * queue is full, or no worker can be expected), take the fallback.  431
 * and 413: the record does not fit in a slot.
 */

ngx_int_t
ngx_http_mosn_ring_submit(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_http_mosn_loc_conf_t *mlcf, ngx_uint_t response)
{
    ngx_int_t                rc;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    if (w->rg.hdr->consumer_epoch != w->epoch) {
        ngx_http_mosn_rescue();

        /* slots the rescue freed go to those waiting, from the loop */
        if (w->nwaiting && w->nfree && !w->retry.posted) {
            ngx_post_event(&w->retry, &ngx_posted_events);
        }
    }

    /* those already waiting go first */
    if (w->nwaiting == 0) {
        rc = ngx_http_mosn_publish(r, ctx, mlcf, response);

        if (rc != NGX_HTTP_MOSN_NO_SLOT && rc != NGX_HTTP_MOSN_NO_WORKER) {
            return rc;
        }

    } else {
        rc = ngx_http_mosn_consumer_live() ? NGX_HTTP_MOSN_NO_SLOT
                                           : NGX_HTTP_MOSN_NO_WORKER;
    }

    return ngx_http_mosn_enqueue(r, ctx, mlcf, response, rc);
}


static ngx_int_t
ngx_http_mosn_publish(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_http_mosn_loc_conf_t *mlcf, ngx_uint_t response)
{
    int                      c;
    uint32_t                 s, inc, gen;
    ngx_int_t                rc;
    mosn_slot_t             *slot;
    ngx_msec_int_t           left;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    if (w->nfree == 0) {
        return NGX_HTTP_MOSN_NO_SLOT;
    }

    c = mosn_producer_pick(&w->rg, (uint32_t) w->p, &w->rr, &inc);

    if (c < 0) {
        return NGX_HTTP_MOSN_NO_WORKER;
    }

    s = w->free[w->nfree - 1];
    slot = mosn_slot(&w->rg, (uint32_t) w->p, s);

    /* both phases of a request go by one id */
    if (ctx->request_id == 0) {
        ctx->request_id = w->next_id++;
    }

    rc = ngx_http_mosn_write_record(r, ctx, mlcf, slot, response);

    if (rc != NGX_OK) {
        return rc;
    }

    ((mosn_req_t *) slot->data)->request_id = ctx->request_id;
    slot->request_id = ctx->request_id;

    /*
     * filters that await are cancelled when nginx stops waiting: at
     * mosn_timeout, or for a request that waited for its slot, what is
     * left of it
     */
    left = mlcf->timeout;

    if (ctx->timer.timer_set) {
        left = (ngx_msec_int_t) (ctx->timer.timer.key - ngx_current_msec);
        left = ngx_max(left, 0);
    }

    slot->deadline_ns = mosn_now_ns() + (uint64_t) left * 1000000;

    if (mosn_producer_publish(&w->rg, (uint32_t) w->p, s, (uint32_t) c, inc,
                              &gen)
        != 0)
    {
        /* cannot be: a ring holds as many entries as there are slots */
        return NGX_HTTP_MOSN_NO_SLOT;
    }

    /* one wake-up per consumer per event loop iteration, at its end */
    w->wake_mask |= 1ULL << c;

    if (!w->wake.posted) {
        ngx_post_event(&w->wake, &ngx_posted_events);
    }

    w->nfree--;
    w->inflight[s] = ctx;
    w->inflight_gen[s] = gen;
    w->held[s] = 1;

    ctx->slot = s;
    ctx->gen = gen;
    ctx->start_ns = mosn_now_ns();

    ngx_log_debug5(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "mosn request %uL%s in slot %uD gen %uD to consumer %d",
                   ctx->request_id, response ? " (response)" : "", s, gen,
                   c);

    return NGX_OK;
}


/*
 * No slot is free, or no Python worker is live: the request waits in
 * arrival order, up to mosn_queue of them, each until its own
 * mosn_timeout.  Without a live worker it waits only if one is expected
 * (the pool is starting or replacing workers).
 */

static ngx_int_t
ngx_http_mosn_enqueue(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_http_mosn_loc_conf_t *mlcf, ngx_uint_t response, ngx_int_t why)
{
    ngx_int_t                rc;
    mosn_producer_t         *prod;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    prod = mosn_producer(&w->rg, (uint32_t) w->p);

    if (why == NGX_HTTP_MOSN_NO_WORKER && !ngx_http_mosn_ring_expected()) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "mosn: no Python worker is alive and none is "
                      "expected (the pool is %s), taking the fallback",
                      w->rg.hdr->pool_state == MOSN_POOL_FAILED
                      ? "failing to start workers" : "stopped");
        return NGX_DECLINED;
    }

    if (w->nwaiting >= w->max_waiting) {
        prod->queue_full++;
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "mosn: %s and %ui requests already wait (see "
                      "mosn_queue), taking the fallback",
                      why == NGX_HTTP_MOSN_NO_WORKER
                      ? "no Python worker is alive yet"
                      : "all slots of this worker are in flight",
                      w->nwaiting);
        return NGX_DECLINED;
    }

    /* checked now, as it would be in a slot: the answer does not wait */
    rc = ngx_http_mosn_write_record(r, ctx, mlcf, NULL, response);

    if (rc != NGX_OK) {
        return rc;
    }

    ngx_queue_insert_tail(&w->waiting, &ctx->queue);
    w->nwaiting++;
    prod->queued++;
    prod->waiting = (uint32_t) w->nwaiting;

    ctx->queued = 1;
    ctx->start_ns = mosn_now_ns();

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "mosn: request waits for a %s, %ui waiting",
                   why == NGX_HTTP_MOSN_NO_WORKER ? "worker" : "slot",
                   w->nwaiting);

    if (why == NGX_HTTP_MOSN_NO_WORKER && !w->retry.timer_set) {
        ngx_add_timer(&w->retry, NGX_HTTP_MOSN_RETRY);
    }

    return NGX_OK;
}


/* hands waiting requests over while slots and a worker are there */

static void
ngx_http_mosn_dequeue(void)
{
    ngx_int_t                  rc;
    ngx_queue_t               *q;
    ngx_http_request_t        *r;
    ngx_http_mosn_ctx_t       *ctx;
    ngx_http_mosn_loc_conf_t  *mlcf;
    ngx_http_mosn_worker_t    *w = &ngx_http_mosn_worker;

    while (w->nwaiting && w->nfree && w->p >= 0) {
        q = ngx_queue_head(&w->waiting);
        ctx = ngx_queue_data(q, ngx_http_mosn_ctx_t, queue);
        r = ctx->request;
        mlcf = ngx_http_get_module_loc_conf(r, ngx_http_mosn_module);

        rc = ngx_http_mosn_publish(r, ctx, mlcf,
                                   ctx->resp_state == NGX_HTTP_MOSN_WAITING);

        if (rc == NGX_HTTP_MOSN_NO_WORKER) {
            if (!ngx_http_mosn_ring_expected()) {
                /* the pool gave up: nobody waits for it any more */
                while (w->nwaiting) {
                    q = ngx_queue_head(&w->waiting);
                    ctx = ngx_queue_data(q, ngx_http_mosn_ctx_t, queue);
                    ngx_http_mosn_unqueue(ctx);
                    ngx_http_mosn_queue_fail(ctx, NGX_HTTP_MOSN_FALLBACK,
                                             "no Python worker can be "
                                             "expected");
                }

                return;
            }

            if (!w->retry.timer_set) {
                ngx_add_timer(&w->retry, NGX_HTTP_MOSN_RETRY);
            }

            return;
        }

        ngx_http_mosn_unqueue(ctx);

        if (rc != NGX_OK) {
            ngx_http_mosn_queue_fail(ctx, NGX_HTTP_MOSN_ERROR,
                                     "its record could not be written");
        }
    }
}


static void
ngx_http_mosn_unqueue(ngx_http_mosn_ctx_t *ctx)
{
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    ngx_queue_remove(&ctx->queue);
    w->nwaiting--;
    ctx->queued = 0;

    mosn_producer(&w->rg, (uint32_t) w->p)->waiting = (uint32_t) w->nwaiting;
}


/* a waiting request that will get no verdict: it goes on as a timeout */

static void
ngx_http_mosn_queue_fail(ngx_http_mosn_ctx_t *ctx, ngx_uint_t status,
    const char *why)
{
    if (ctx->resp_state == NGX_HTTP_MOSN_WAITING) {
        ngx_http_mosn_response_done(ctx, NULL, 0, why);
        return;
    }

    ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                  "mosn: request %uL: %s, taking the fallback",
                  ctx->request_id, why);

    ctx->status = status;
    ctx->cost_ns = 0;
    ctx->state = NGX_HTTP_MOSN_DONE;

    ngx_http_mosn_resume(ctx);
}


static void
ngx_http_mosn_retry_handler(ngx_event_t *ev)
{
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    if (w->p < 0) {
        return;
    }

    if (w->rg.hdr->consumer_epoch != w->epoch) {
        ngx_http_mosn_rescue();
    }

    ngx_http_mosn_dequeue();
}


static ngx_uint_t
ngx_http_mosn_consumer_live(void)
{
    uint32_t                 c;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    for (c = 0; c < w->rg.nconsumers; c++) {
        if (mosn_consumer(&w->rg, c)->state == MOSN_CONS_LIVE) {
            return 1;
        }
    }

    return 0;
}


/*
 * Whether a Python worker can be expected when none is live: the pool
 * is configured, and its supervisor has not stopped it or given up on
 * starting workers.
 */

ngx_uint_t
ngx_http_mosn_ring_expected(void)
{
    uint32_t                 state;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    if (w->rg.hdr == NULL || w->rg.hdr->desired_workers == 0) {
        return 0;
    }

    state = w->rg.hdr->pool_state;

    return state != MOSN_POOL_FAILED && state != MOSN_POOL_STOPPED;
}


void
ngx_http_mosn_ring_abandon(ngx_http_mosn_ctx_t *ctx)
{
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    /* a client gone while it waited leaves the queue at once */
    if (ctx->queued) {
        ngx_http_mosn_unqueue(ctx);
        return;
    }

    if (w->p >= 0 && w->inflight[ctx->slot] == ctx) {
        w->inflight[ctx->slot] = NULL;

        /* the Python worker may be awaiting on its behalf: tell it */
        mosn_producer_abandon(&w->rg, (uint32_t) w->p, ctx->slot, ctx->gen);
    }
}


void
ngx_http_mosn_ring_timed_out(ngx_http_mosn_ctx_t *ctx)
{
    uint64_t                 sw;
    uint32_t                 c;
    mosn_consumer_t         *cons;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    if (w->p < 0) {
        return;
    }

    mosn_producer(&w->rg, (uint32_t) w->p)->timeouts++;

    if (ctx->queued) {
        ngx_http_mosn_unqueue(ctx);
        return;
    }

    ngx_http_mosn_ring_abandon(ctx);

    /* a consumer that died unseen (no supervisor) is retired here */
    sw = mosn_slot(&w->rg, (uint32_t) w->p, ctx->slot)->state;
    c = MOSN_SW_CONSUMER(sw);

    if (MOSN_SW_STATE(sw) == MOSN_SLOT_FREE || c >= w->rg.nconsumers) {
        return;
    }

    cons = mosn_consumer(&w->rg, c);

    if (cons->state == MOSN_CONS_LIVE
        && !mosn_proc_alive((pid_t) cons->pid, cons->starttime))
    {
        ngx_log_error(NGX_LOG_WARN, ctx->timer.log, 0,
                      "mosn: Python worker %uD (pid %uD) is gone", c,
                      cons->pid);
        mosn_consumer_retire(&w->rg, c, -1);
    }
}


static void
ngx_http_mosn_wake_handler(ngx_event_t *ev)
{
    uint32_t                 c;
    uint64_t                 mask;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    mask = w->wake_mask;
    w->wake_mask = 0;

    if (w->p < 0) {
        return;
    }

    for (c = 0; mask; c++, mask >>= 1) {
        if (mask & 1) {
            mosn_producer_wake(&w->rg, (uint32_t) w->p, c);
        }
    }
}


static void
ngx_http_mosn_doorbell_handler(ngx_event_t *ev)
{
    ngx_connection_t        *c = ev->data;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    if (w->p < 0) {
        return;
    }

    mosn_producer(&w->rg, (uint32_t) w->p)->doorbells +=
                              (c == w->notify) ? mosn_notify_drain(c->fd)
                                               : mosn_doorbell_drain(c->fd);

    if (w->rg.hdr->consumer_epoch != w->epoch) {
        ngx_http_mosn_rescue();
    }

    ngx_http_mosn_drain();

    /* slots freed, or a worker came: those waiting go in */
    if (w->nwaiting) {
        ngx_http_mosn_dequeue();
    }
}


static void
ngx_http_mosn_drain(void)
{
    int                      n, i;
    uint64_t                 out[NGX_HTTP_MOSN_BATCH];
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    for ( ;; ) {
        n = mosn_producer_poll(&w->rg, (uint32_t) w->p, out,
                               NGX_HTTP_MOSN_BATCH);

        for (i = 0; i < n; i++) {
            ngx_http_mosn_complete(MOSN_ENTRY_SLOT(out[i]),
                                   MOSN_ENTRY_GEN(out[i]), 0);
        }

        if (n == NGX_HTTP_MOSN_BATCH) {
            continue;
        }

        /* tell consumers to ring, then look once more */
        if (!mosn_producer_arm(&w->rg, (uint32_t) w->p)) {
            break;
        }
    }
}


/*
 * A consumer left: each slot this worker holds is looked at once, with the
 * generation this worker published it at, whatever the region says.
 */

static void
ngx_http_mosn_rescue(void)
{
    uint32_t                 s, gen;
    static ngx_uint_t        rescuing;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    /* a request resumed below may submit and find the epoch moved again */
    if (rescuing) {
        return;
    }

    rescuing = 1;
    w->epoch = MOSN_READ_ONCE(w->rg.hdr->consumer_epoch);

    for (s = 0; s < w->rg.slots && w->p >= 0; s++) {
        if (!w->held[s]) {
            continue;
        }

        gen = w->inflight_gen[s];

        switch (mosn_producer_rescue_slot(&w->rg, (uint32_t) w->p, s, gen,
                                          &w->rr))
        {
        case MOSN_RESCUE_DONE:
            ngx_http_mosn_complete(s, gen, 0);
            break;

        case MOSN_RESCUE_LOST:
            ngx_http_mosn_complete(s, gen, 1);
            break;

        default:
            break;
        }
    }

    rescuing = 0;
}


/*
 * A verdict arrived for slot s, or the slot could not be re-queued.  Only
 * a slot this worker holds in flight, at the generation it published, is
 * taken back: anything else a consumer pushed is forged, counted, and
 * left alone (it is not freed a second time).  Every value read from the
 * slot is read once into a local, checked, and only the local is used.
 */

static void
ngx_http_mosn_complete(uint32_t s, uint32_t gen, ngx_uint_t failed)
{
    size_t                   room;
    u_char                  *verdict;
    uint32_t                 off, len;
    uint64_t                 cost;
    ngx_int_t                rc;
    const char              *why;
    mosn_slot_t             *slot;
    mosn_producer_t         *prod;
    ngx_http_mosn_ctx_t     *ctx;
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    prod = mosn_producer(&w->rg, (uint32_t) w->p);

    if (s >= w->rg.slots || !w->held[s] || w->inflight_gen[s] != gen) {
        prod->forged++;
        return;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "mosn verdict in slot %uD gen %uD%s", s, gen,
                   failed ? ", its worker died" : "");

    slot = mosn_slot(&w->rg, (uint32_t) w->p, s);
    ctx = w->inflight[s];

    /* the lengths come from Python: read once, checked, then only used */
    room = MOSN_SLOT_DATA_SIZE(w->rg.slot_size);
    off = MOSN_READ_ONCE(slot->verdict_off);
    len = MOSN_READ_ONCE(slot->verdict_len);

    if (!failed && (off > room || len > room - off)) {
        prod->refused++;
        failed = 2;
    }

    if (ctx == NULL) {
        /* late: the request timed out or its client went away */
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                       "mosn verdict in slot %uD is late, dropped", s);
        prod->stale++;
        ngx_http_mosn_release(s);
        return;
    }

    w->inflight[s] = NULL;

    cost = mosn_now_ns() - ctx->start_ns;
    prod->cost_ns += cost;

    verdict = NULL;

    if (ctx->resp_state == NGX_HTTP_MOSN_WAITING) {
        ctx->resp_cost_ns = cost;

        if (failed == 0) {
            rc = ngx_http_mosn_verdict_copy(ctx, slot->data + off, len,
                                            &verdict);
            if (rc != NGX_OK) {
                prod->refused += (rc == NGX_DECLINED);
                verdict = NULL;
            }
        }

        ngx_http_mosn_release(s);

        why = (failed == 1) ? "its Python worker died"
                            : "the verdict was refused";

        ngx_http_mosn_response_done(ctx, verdict, verdict ? len : 0, why);
        return;
    }

    ctx->cost_ns = cost;

    if (failed == 1) {
        ctx->status = NGX_HTTP_MOSN_ERROR;
        ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                      "mosn: request %uL was in flight on a Python worker "
                      "that died and could not be re-queued",
                      ctx->request_id);

    } else if (failed == 2) {
        ctx->status = NGX_HTTP_MOSN_ERROR;
        ngx_log_error(NGX_LOG_ERR, ctx->request->connection->log, 0,
                      "mosn: refused the verdict for request %uL: %uD bytes "
                      "at %uD overrun the slot", ctx->request_id, len, off);

    } else {
        rc = ngx_http_mosn_verdict_take(ctx, slot->data + off, len);

        if (rc == NGX_DECLINED) {
            prod->refused++;
        }

        /* NGX_ERROR: a filter failed and said so, the fallback too */
        ctx->status = (rc == NGX_OK) ? NGX_HTTP_MOSN_FILTERED
                                     : NGX_HTTP_MOSN_ERROR;
    }

    ctx->state = NGX_HTTP_MOSN_DONE;

    ngx_http_mosn_release(s);

    ngx_http_mosn_resume(ctx);
}


/* slot s is no longer in flight: back to the region and the free list */

static void
ngx_http_mosn_release(uint32_t s)
{
    ngx_http_mosn_worker_t  *w = &ngx_http_mosn_worker;

    w->held[s] = 0;
    w->inflight[s] = NULL;

    mosn_producer_free(&w->rg, (uint32_t) w->p, s);
    w->free[w->nfree++] = s;
}


static u_char *
ngx_http_mosn_put(u_char *base, u_char *p, mosn_field_t *f, ngx_str_t *s)
{
    f->off = (uint32_t) (p - base);
    f->len = (uint32_t) s->len;

    return ngx_cpymem(p, s->data, s->len);
}


/*
 * The header lines a record carries: the request's, or the response's
 * list without the deleted lines (hash 0) and with the two headers nginx
 * keeps outside it, Content-Type and Content-Length.
 */

static ngx_uint_t
ngx_http_mosn_header_lines(ngx_http_request_t *r, ngx_uint_t response,
    ngx_table_elt_t *extra, size_t *size)
{
    u_char           *p;
    ngx_uint_t        i, n, nextra;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    n = 0;
    nextra = 0;

    if (response) {
        if (r->headers_out.content_type.len) {
            ngx_str_set(&extra[nextra].key, "Content-Type");
            extra[nextra].value = r->headers_out.content_type;
            extra[nextra].hash = 1;
            nextra++;
        }

        if (r->headers_out.content_length == NULL
            && r->headers_out.content_length_n >= 0)
        {
            p = ngx_pnalloc(r->pool, NGX_OFF_T_LEN);
            if (p == NULL) {
                return (ngx_uint_t) -1;
            }

            ngx_str_set(&extra[nextra].key, "Content-Length");
            extra[nextra].value.data = p;
            extra[nextra].value.len = ngx_sprintf(p, "%O",
                                         r->headers_out.content_length_n)
                                      - p;
            extra[nextra].hash = 1;
            nextra++;
        }

        part = &r->headers_out.headers.part;

    } else {
        part = &r->headers_in.headers.part;
    }

    for (i = 0; i < nextra; i++) {
        *size += sizeof(mosn_header_entry_t) + extra[i].key.len
                 + extra[i].value.len;
    }

    n = nextra;
    i = 0;

    while ((h = ngx_http_mosn_list_next(&part, &i)) != NULL) {

        if (response && h->hash == 0) {
            continue;
        }

        n++;
        *size += sizeof(mosn_header_entry_t) + h->key.len + h->value.len;
    }

    return n;
}


static u_char *
ngx_http_mosn_put_header(u_char *base, u_char *p, mosn_header_entry_t *e,
    ngx_table_elt_t *h)
{
    e->off = (uint32_t) (p - base);
    e->name_len = (uint32_t) h->key.len;
    e->value_len = (uint32_t) h->value.len;

    p = ngx_cpymem(p, h->key.data, h->key.len);

    return ngx_cpymem(p, h->value.data, h->value.len);
}


/* the request's metadata for the response phase, "key=value\n" each */

static size_t
ngx_http_mosn_meta_size(ngx_http_mosn_ctx_t *ctx)
{
    size_t               size;
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    size = 0;

    if (ctx->verdict == NULL
        || mosn_verdict_begin(&it, ctx->verdict, ctx->verdict_len) != 0)
    {
        return 0;
    }

    while (mosn_verdict_next(&it, &rec) == 1) {
        if (rec.type == MOSN_REC_META) {
            size += rec.key_len + rec.value_len + 2;
        }
    }

    return size;
}


static u_char *
ngx_http_mosn_put_meta(ngx_http_mosn_ctx_t *ctx, u_char *p)
{
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    if (mosn_verdict_begin(&it, ctx->verdict, ctx->verdict_len) != 0) {
        return p;
    }

    while (mosn_verdict_next(&it, &rec) == 1) {
        if (rec.type == MOSN_REC_META) {
            p = ngx_cpymem(p, rec.key, rec.key_len);
            *p++ = '=';
            p = ngx_cpymem(p, rec.value, rec.value_len);
            *p++ = '\n';
        }
    }

    return p;
}


static ngx_int_t
ngx_http_mosn_write_record(ngx_http_request_t *r, ngx_http_mosn_ctx_t *ctx,
    ngx_http_mosn_loc_conf_t *mlcf, mosn_slot_t *slot, ngx_uint_t response)
{
    off_t                       size;
    size_t                      need, room;
    ssize_t                     n2;
    u_char                     *base, *p;
    ngx_buf_t                  *b;
    ngx_str_t                  *addr;
    ngx_uint_t                  body;
    size_t                      meta;
    ngx_chain_t                *cl;
    mosn_req_t                 *req;
    ngx_uint_t                  i, n, nextra;
    ngx_list_part_t            *part;
    ngx_table_elt_t            *h, extra[2];
    mosn_header_entry_t        *e;
    ngx_http_mosn_worker_t     *w = &ngx_http_mosn_worker;

    room = MOSN_SLOT_DATA_SIZE(w->rg.slot_size);

    /* keep a quarter of the slot, and at least 512 bytes, for the verdict */
    room -= ngx_max(room / 4, 512);

    addr = &r->connection->addr_text;

    need = sizeof(mosn_req_t) + ctx->chain.len + r->method_name.len
           + r->uri.len + r->args.len + addr->len + r->http_protocol.len + 3;

    ngx_memzero(extra, sizeof(extra));

    n = ngx_http_mosn_header_lines(r, response, extra, &need);

    if (n == (ngx_uint_t) -1) {
        return NGX_ERROR;
    }

    if (n > mlcf->max_headers || need > room) {
        return NGX_HTTP_REQUEST_HEADER_TOO_LARGE;
    }

    body = 0;
    meta = 0;

    if (response) {
        meta = ngx_http_mosn_meta_size(ctx);

        if (need + meta > room) {
            return NGX_HTTP_REQUEST_HEADER_TOO_LARGE;
        }

        /* the response body, held whole by the body filter */
        if (ctx->resp_body != NULL) {
            if (need + meta
                + (size_t) (ctx->resp_body->last - ctx->resp_body->pos)
                > room)
            {
                return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
            }

            body = 1;
        }

    } else if (mlcf->body && r->request_body && r->request_body->bufs) {
        body = 1;
        size = 0;

        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            size += ngx_buf_size(cl->buf);
        }

        if (size > (off_t) mlcf->max_body || need + size > room) {
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }
    }

    if (slot == NULL) {
        /* a waiting request: checked, written once it has a slot */
        return NGX_OK;
    }

    base = slot->data;
    req = (mosn_req_t *) base;
    ngx_memzero(req, sizeof(mosn_req_t));

    req->nheaders = (uint32_t) n;

    if (response) {
        req->flags |= MOSN_REQ_F_RESPONSE;
        req->status = (uint32_t) r->headers_out.status;
    }

    p = base + sizeof(mosn_req_t);
    p = ngx_http_mosn_put(base, p, &req->field[MOSN_REQ_CHAIN], &ctx->chain);
    p = ngx_http_mosn_put(base, p, &req->field[MOSN_REQ_METHOD],
                          &r->method_name);
    p = ngx_http_mosn_put(base, p, &req->field[MOSN_REQ_PATH], &r->uri);
    p = ngx_http_mosn_put(base, p, &req->field[MOSN_REQ_QUERY], &r->args);
    p = ngx_http_mosn_put(base, p, &req->field[MOSN_REQ_ADDR], addr);
    p = ngx_http_mosn_put(base, p, &req->field[MOSN_REQ_PROTOCOL],
                          &r->http_protocol);

    /* the header table is read as an array: 4-byte aligned */
    p = base + ngx_align((size_t) (p - base), 4);

    req->field[MOSN_REQ_HEADERS].off = (uint32_t) (p - base);
    req->field[MOSN_REQ_HEADERS].len =
                                  (uint32_t) (n * sizeof(mosn_header_entry_t));

    e = (mosn_header_entry_t *) p;
    p += n * sizeof(mosn_header_entry_t);

    nextra = 0;

    while (nextra < 2 && extra[nextra].hash) {
        p = ngx_http_mosn_put_header(base, p, e++, &extra[nextra++]);
    }

    part = response ? &r->headers_out.headers.part
                    : &r->headers_in.headers.part;
    i = 0;

    while ((h = ngx_http_mosn_list_next(&part, &i)) != NULL) {
        if (!response || h->hash != 0) {
            p = ngx_http_mosn_put_header(base, p, e++, h);
        }
    }

    if (response && meta) {
        req->flags |= MOSN_REQ_F_META;
        req->field[MOSN_REQ_META].off = (uint32_t) (p - base);
        p = ngx_http_mosn_put_meta(ctx, p);
        req->field[MOSN_REQ_META].len = (uint32_t) (p - base)
                                        - req->field[MOSN_REQ_META].off;
    }

    req->field[MOSN_REQ_BODY].off = (uint32_t) (p - base);

    if (body && response) {
        req->flags |= MOSN_REQ_F_BODY;

        if (ctx->resp_body->last != ctx->resp_body->pos) {
            p = ngx_cpymem(p, ctx->resp_body->pos,
                           ctx->resp_body->last - ctx->resp_body->pos);
        }

    } else if (body) {
        req->flags |= MOSN_REQ_F_BODY;

        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            b = cl->buf;

            if (b->in_file) {
                n2 = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                                   b->file_pos);
                if (n2 != b->file_last - b->file_pos) {
                    return NGX_ERROR;
                }

                p += n2;

            } else {
                p = ngx_cpymem(p, b->pos, b->last - b->pos);
            }
        }
    }

    req->field[MOSN_REQ_BODY].len = (uint32_t) (p - base)
                                    - req->field[MOSN_REQ_BODY].off;

    req->len = (uint32_t) (p - base);
    slot->req_len = req->len;
    slot->verdict_off = 0;
    slot->verdict_len = 0;

    return NGX_OK;
}
