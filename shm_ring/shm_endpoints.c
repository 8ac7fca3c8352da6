
/*
 * The endpoint table of the region: service discovery for the module's
 * balancer.  One writer (the Python supervisor) and many readers (the
 * nginx workers) meet at a seqlock per app; see shm_ring.h.
 *
 * Readers trust nothing they read: counts and indexes are checked before
 * use, a copy is used only if the seqlock says it is whole, and a reader
 * that never gets a stable read (a writer that died in the middle of a
 * write) gives up after MOSN_EP_SPINS attempts.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <stdio.h>
#include <string.h>

#include "shm_core.h"


#define MOSN_EP_SPINS       1000


#if defined(__x86_64__) || defined(__i386__)
#define mosn_cpu_relax()    __asm__ __volatile__("pause")
#elif defined(__aarch64__)
#define mosn_cpu_relax()    __asm__ __volatile__("yield")
#else
#define mosn_cpu_relax()
#endif


_Static_assert(sizeof(mosn_endpoint_t) == 24, "mosn_endpoint_t");
_Static_assert(sizeof(mosn_ep_site_t) == 40, "mosn_ep_site_t");
_Static_assert(offsetof(mosn_ep_app_t, rr) % MOSN_CACHELINE == 0,
               "mosn_ep_app_t.rr");
_Static_assert(offsetof(mosn_ep_app_t, sites) % MOSN_CACHELINE == 0,
               "mosn_ep_app_t.sites");
_Static_assert(sizeof(mosn_ep_app_t) % MOSN_CACHELINE == 0,
               "mosn_ep_app_t");
_Static_assert(MOSN_EP_MAX <= 65535 && MOSN_EP_SITES <= 255,
               "endpoint indexes fit their fields");


mosn_ep_app_t *
mosn_ep_app(mosn_region_t *rg, uint32_t app)
{
    /* the table's offset was copied and checked at create/attach */
    if (app >= MOSN_EP_APPS) {
        return NULL;
    }

    return (mosn_ep_app_t *) ((uint8_t *) rg->hdr + rg->endpoints_off
                              + sizeof(mosn_ep_app_t) * (uint64_t) app);
}


int
mosn_endpoint_same(const mosn_endpoint_t *a, const mosn_endpoint_t *b)
{
    return a->family == b->family && a->port == b->port
           && memcmp(a->addr, b->addr,
                     a->family == MOSN_EP_INET ? 4 : 16) == 0;
}


static int
mosn_endpoint_valid(const mosn_endpoint_t *ep)
{
    return (ep->family == MOSN_EP_INET || ep->family == MOSN_EP_INET6)
           && ep->port != 0;
}


/* a reader's seqlock section: begin, copy, then mosn_ep_read_end() */

static int
mosn_ep_read_begin(mosn_ep_app_t *a, uint32_t *seq)
{
    int  spins;

    for (spins = 0; spins < MOSN_EP_SPINS; spins++) {
        *seq = mosn_load(&a->seq);

        if ((*seq & 1) == 0) {
            return 0;
        }

        mosn_cpu_relax();
    }

    return -1;
}


static int
mosn_ep_read_end(mosn_ep_app_t *a, uint32_t seq)
{
    /* the copies above are done before seq is read again */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);

    return mosn_load_relaxed(&a->seq) == seq;
}


/*
 * The entry of the app named (app, app_len): its index, -1 if no entry
 * has that name, -2 if none has and an entry could not be read.
 */

int
mosn_endpoints_find(mosn_region_t *rg, const char *app, size_t app_len)
{
    uint32_t        i, seq, len;
    mosn_ep_app_t  *a;
    char            name[MOSN_EP_APP_NAME_MAX];
    int             spins, found, unread;

    if (app_len == 0 || app_len >= MOSN_EP_APP_NAME_MAX) {
        return -1;
    }

    if (mosn_ep_app(rg, 0) == NULL) {
        return -2;
    }

    unread = 0;

    for (i = 0; i < MOSN_EP_APPS; i++) {
        a = mosn_ep_app(rg, i);

        for (spins = 0; spins < MOSN_EP_SPINS; spins++) {
            if (mosn_ep_read_begin(a, &seq) != 0) {
                spins = MOSN_EP_SPINS;
                break;
            }

            len = a->name_len;
            found = 0;

            if (len == app_len) {
                memcpy(name, a->name, app_len);
                found = memcmp(name, app, app_len) == 0;
            }

            if (mosn_ep_read_end(a, seq)) {
                if (found) {
                    return (int) i;
                }

                break;
            }
        }

        if (spins == MOSN_EP_SPINS) {
            unread = 1;
        }
    }

    return unread ? -2 : -1;
}


/*
 * A whole copy of an app's entry, checked: 0, or -1 if no stable copy
 * could be had or what was copied is not a valid table.
 */

int
mosn_endpoints_read(mosn_region_t *rg, uint32_t app, mosn_ep_app_t *copy)
{
    int             spins;
    uint32_t        seq, i, n;
    mosn_ep_app_t  *a;

    a = mosn_ep_app(rg, app);
    if (a == NULL) {
        return -1;
    }

    for (spins = 0; spins < MOSN_EP_SPINS; spins++) {
        if (mosn_ep_read_begin(a, &seq) != 0) {
            return -1;
        }

        memcpy(copy, a, sizeof(mosn_ep_app_t));

        if (mosn_ep_read_end(a, seq)) {
            break;
        }
    }

    if (spins == MOSN_EP_SPINS) {
        return -1;
    }

    copy->seq = seq;
    n = copy->nendpoints;

    if (n > MOSN_EP_MAX || copy->name_len >= MOSN_EP_APP_NAME_MAX) {
        return -1;
    }

    for (i = 0; i < MOSN_EP_SITES; i++) {
        if (copy->sites[i].name_len >= MOSN_EP_SITE_MAX
            || (uint32_t) copy->sites[i].first + copy->sites[i].count > n)
        {
            return -1;
        }
    }

    for (i = 0; i < n; i++) {
        if (!mosn_endpoint_valid(&copy->endpoints[i])
            || copy->endpoints[i].site >= MOSN_EP_SITES)
        {
            return -1;
        }
    }

    return 0;
}


/* whether entry a, in a read section, is the app's */

static int
mosn_ep_named(mosn_ep_app_t *a, const char *app, size_t app_len)
{
    char  name[MOSN_EP_APP_NAME_MAX];

    if (a->name_len != app_len) {
        return 0;
    }

    memcpy(name, a->name, app_len);

    return memcmp(name, app, app_len) == 0;
}


int
mosn_endpoints_count(mosn_region_t *rg, const char *app, size_t app_len,
    uint32_t *gen)
{
    int             spins, idx, named;
    uint32_t        seq, n, g;
    mosn_ep_app_t  *a;

    idx = mosn_endpoints_find(rg, app, app_len);

    for (spins = 0; idx >= 0 && spins < MOSN_EP_SPINS; spins++) {
        a = mosn_ep_app(rg, (uint32_t) idx);

        if (mosn_ep_read_begin(a, &seq) != 0) {
            return -1;
        }

        named = mosn_ep_named(a, app, app_len);
        n = a->nendpoints;
        g = a->generation;

        if (!mosn_ep_read_end(a, seq)) {
            continue;
        }

        if (!named) {
            /* the entry went to another app meanwhile */
            idx = mosn_endpoints_find(rg, app, app_len);
            continue;
        }

        if (gen) {
            *gen = g;
        }

        return n > MOSN_EP_MAX ? -1 : (int) n;
    }

    if (idx == -1) {
        if (gen) {
            *gen = 0;
        }

        return 0;
    }

    return -1;
}


static int
mosn_ep_tried(const mosn_endpoint_t *ep, const mosn_endpoint_t *tried,
    uint32_t ntried)
{
    uint32_t  i;

    for (i = 0; i < ntried; i++) {
        if (mosn_endpoint_same(ep, &tried[i])) {
            return 1;
        }
    }

    return 0;
}


/*
 * Round robin over endpoints first .. first + count - 1 from the counter
 * *rr, skipping those tried; the endpoint is copied to *out.  Called in a
 * read section: what it copies is used only if the section holds.
 */

static int
mosn_ep_round(mosn_ep_app_t *a, uint32_t first, uint32_t count,
    uint32_t *rr, const mosn_endpoint_t *tried, uint32_t ntried,
    mosn_endpoint_t *out)
{
    uint32_t  k, start;

    if (count == 0) {
        return 0;
    }

    start = __atomic_fetch_add(rr, 1, __ATOMIC_RELAXED);

    for (k = 0; k < count; k++) {
        memcpy(out, &a->endpoints[first + (start + k) % count],
               sizeof(mosn_endpoint_t));

        if (ntried == 0 || !mosn_ep_tried(out, tried, ntried)) {
            return 1;
        }
    }

    return 0;
}


/*
 * Picks an endpoint of the app named (app, app_len): of the site named
 * (site, site_len) if it has one not tried yet, else of any site (Envoy's
 * subset fallback ANY_ENDPOINT).  Returns MOSN_EP_SITE, MOSN_EP_ANY,
 * MOSN_EP_NONE (no such app, no endpoint, or all tried) or MOSN_EP_BUSY.
 */

int
mosn_endpoints_pick(mosn_region_t *rg, const char *app, size_t app_len,
    const char *site, size_t site_len, const mosn_endpoint_t *tried,
    uint32_t ntried, mosn_endpoint_t *out)
{
    int             spins, rc, idx, named;
    uint32_t        seq, n, i, first, count, len;
    mosn_ep_app_t  *a;
    char            name[MOSN_EP_SITE_MAX];

    idx = mosn_endpoints_find(rg, app, app_len);

    for (spins = 0; idx >= 0 && spins < MOSN_EP_SPINS; spins++) {
        a = mosn_ep_app(rg, (uint32_t) idx);

        if (mosn_ep_read_begin(a, &seq) != 0) {
            return MOSN_EP_BUSY;
        }

        named = mosn_ep_named(a, app, app_len);
        n = a->nendpoints;
        rc = MOSN_EP_NONE;

        if (!named || n > MOSN_EP_MAX) {
            goto next;
        }

        if (site_len > 0 && site_len < MOSN_EP_SITE_MAX) {

            for (i = 0; i < MOSN_EP_SITES; i++) {
                len = a->sites[i].name_len;

                if (len != site_len) {
                    continue;
                }

                memcpy(name, a->sites[i].name, site_len);

                if (memcmp(name, site, site_len) != 0) {
                    continue;
                }

                first = a->sites[i].first;
                count = a->sites[i].count;

                if (first + count > n) {
                    n = MOSN_EP_MAX + 1;
                    goto next;
                }

                if (mosn_ep_round(a, first, count, &a->rr[i], tried, ntried,
                                  out))
                {
                    rc = MOSN_EP_SITE;
                }

                break;
            }
        }

        if (rc == MOSN_EP_NONE
            && mosn_ep_round(a, 0, n, &a->rr[MOSN_EP_RR_ANY], tried, ntried,
                             out))
        {
            rc = MOSN_EP_ANY;
        }

    next:

        if (!mosn_ep_read_end(a, seq)) {
            continue;
        }

        if (!named) {
            /* the entry went to another app meanwhile */
            idx = mosn_endpoints_find(rg, app, app_len);
            continue;
        }

        if (n > MOSN_EP_MAX) {
            return MOSN_EP_BUSY;
        }

        if (rc != MOSN_EP_NONE && !mosn_endpoint_valid(out)) {
            return MOSN_EP_BUSY;
        }

        return rc;
    }

    return idx == -1 ? MOSN_EP_NONE : MOSN_EP_BUSY;
}


/* the writer: the supervisor, alone */

static int
mosn_ep_site_index(const mosn_ep_site_t *sites, const char *name,
    size_t len)
{
    int  i;

    for (i = 0; i < MOSN_EP_SITES; i++) {
        if (sites[i].name_len == len
            && memcmp(sites[i].name, name, len) == 0)
        {
            return i;
        }
    }

    return -1;
}


/* whether a site of the table is named in spec[0 .. n - 1] */

static int
mosn_ep_spec_has(const mosn_ep_spec_t *spec, uint32_t n,
    const mosn_ep_site_t *site)
{
    uint32_t  k;

    for (k = 0; k < n; k++) {
        if (spec[k].site_len == site->name_len
            && memcmp(spec[k].site, site->name, site->name_len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


int
mosn_endpoints_set(mosn_region_t *rg, const char *app, size_t app_len,
    const mosn_ep_spec_t *spec, uint32_t n, char *err, size_t errlen)
{
    int              idx, s, i, free_app, empty_app;
    uint8_t          used[MOSN_EP_SITES], order[MOSN_EP_SITES];
    uint32_t         k, j, nsites, seq, pos;
    mosn_ep_app_t   *a;
    mosn_ep_site_t   sites[MOSN_EP_SITES];
    mosn_endpoint_t  eps[MOSN_EP_MAX];

    if (app_len == 0 || app_len >= MOSN_EP_APP_NAME_MAX) {
        mosn_err(err, errlen, "app name must be 1..%d bytes, not %zu",
                    MOSN_EP_APP_NAME_MAX - 1, app_len);
        return -1;
    }

    if (memchr(app, '\0', app_len) != NULL) {
        mosn_err(err, errlen, "app name holds a NUL byte");
        return -1;
    }

    if (n > MOSN_EP_MAX) {
        mosn_err(err, errlen, "app \"%.*s\": %u endpoints, at most %d "
                    "fit", (int) app_len, app, n, MOSN_EP_MAX);
        return -1;
    }

    for (k = 0; k < n; k++) {
        if (!mosn_endpoint_valid(&spec[k].ep)) {
            mosn_err(err, errlen, "app \"%.*s\": endpoint %u has no "
                        "address family or no port", (int) app_len, app, k);
            return -1;
        }

        if (spec[k].site_len == 0 || spec[k].site_len >= MOSN_EP_SITE_MAX
            || memchr(spec[k].site, '\0', spec[k].site_len) != NULL)
        {
            mosn_err(err, errlen, "app \"%.*s\": endpoint %u: a site "
                        "name is 1..%d bytes, no NUL", (int) app_len, app,
                        k, MOSN_EP_SITE_MAX - 1);
            return -1;
        }
    }

    if (mosn_ep_app(rg, 0) == NULL) {
        mosn_err(err, errlen, "the region has no endpoint table");
        return -1;
    }

    /* the app's entry: its own, else an unused one */

    idx = -1;
    free_app = -1;
    empty_app = -1;

    for (i = 0; i < MOSN_EP_APPS; i++) {
        a = mosn_ep_app(rg, (uint32_t) i);

        if (a->name_len == app_len && memcmp(a->name, app, app_len) == 0) {
            idx = i;
            break;
        }

        if (a->name_len == 0 && free_app < 0) {
            free_app = i;
        }

        if (a->nendpoints == 0 && empty_app < 0) {
            empty_app = i;
        }
    }

    if (idx < 0) {
        if (free_app < 0) {
            free_app = empty_app;
        }

        if (free_app < 0) {
            mosn_err(err, errlen, "app \"%.*s\": the endpoint table is "
                        "full (%d apps)", (int) app_len, app, MOSN_EP_APPS);
            return -1;
        }

        idx = free_app;
    }

    a = mosn_ep_app(rg, (uint32_t) idx);

    /*
     * Sites keep their entries: a site named before keeps its index, and
     * so its round-robin counter; a new one takes an unused entry, else
     * one whose site is gone.  Sites go in the order they first appear.
     */

    if (a->name_len == app_len && memcmp(a->name, app, app_len) == 0) {
        memcpy(sites, a->sites, sizeof(sites));

        for (i = 0; i < MOSN_EP_SITES; i++) {
            if (sites[i].name_len >= MOSN_EP_SITE_MAX) {
                /* scribbled: the entry is made unused again */
                memset(&sites[i], 0, sizeof(mosn_ep_site_t));
            }
        }

    } else {
        /* a new app, or one that takes the entry of an app gone */
        memset(sites, 0, sizeof(sites));
    }

    memset(used, 0, sizeof(used));
    nsites = 0;

    for (k = 0; k < n; k++) {
        s = mosn_ep_site_index(sites, spec[k].site, spec[k].site_len);

        if (s >= 0 && used[s]) {
            continue;
        }

        if (s < 0) {
            for (i = 0; i < MOSN_EP_SITES; i++) {
                if (sites[i].name_len == 0) {
                    break;
                }
            }

            if (i == MOSN_EP_SITES) {
                for (i = 0; i < MOSN_EP_SITES; i++) {
                    if (!used[i] && !mosn_ep_spec_has(spec + k, n - k,
                                                      &sites[i]))
                    {
                        break;
                    }
                }
            }

            if (i == MOSN_EP_SITES) {
                mosn_err(err, errlen, "app \"%.*s\": more than %d "
                            "sites", (int) app_len, app, MOSN_EP_SITES);
                return -1;
            }

            s = i;
            memset(&sites[s], 0, sizeof(mosn_ep_site_t));
            memcpy(sites[s].name, spec[k].site, spec[k].site_len);
            sites[s].name_len = (uint32_t) spec[k].site_len;
        }

        used[s] = 1;
        order[nsites++] = (uint8_t) s;
    }

    pos = 0;

    for (j = 0; j < nsites; j++) {
        s = order[j];
        sites[s].first = (uint16_t) pos;
        sites[s].count = 0;

        for (k = 0; k < n; k++) {
            if (spec[k].site_len == sites[s].name_len
                && memcmp(spec[k].site, sites[s].name, spec[k].site_len) == 0)
            {
                eps[pos] = spec[k].ep;
                eps[pos].site = (uint8_t) s;
                eps[pos].flags = 0;
                pos++;
                sites[s].count++;
            }
        }
    }

    for (i = 0; i < MOSN_EP_SITES; i++) {
        if (!used[i]) {
            sites[i].first = 0;
            sites[i].count = 0;
        }
    }

    /* the write: seq odd, the entry, generation, seq even */

    seq = mosn_load_relaxed(&a->seq) | 1;
    __atomic_store_n(&a->seq, seq, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);

    a->nendpoints = n;
    memcpy(a->sites, sites, sizeof(sites));
    memcpy(a->endpoints, eps, sizeof(mosn_endpoint_t) * n);
    memset(&a->endpoints[n], 0, sizeof(mosn_endpoint_t) * (MOSN_EP_MAX - n));

    if (a->name_len != app_len || memcmp(a->name, app, app_len) != 0) {
        memset(a->name, 0, sizeof(a->name));
        memcpy(a->name, app, app_len);
        a->name_len = (uint32_t) app_len;
    }

    a->generation++;

    mosn_store(&a->seq, seq + 1);

    return idx;
}
