
/*
 * libFuzzer target for the endpoint table's readers (shm_endpoints.c):
 * what nginx reads when it balances an upstream over the service file.
 *
 * The table lives in a heap region of exactly its size.  A valid table is
 * written first (two apps, a few sites), then the input's bytes are laid
 * over one app entry from an offset it chooses, as a writer that died
 * mid-write or a hostile process would leave it.  Every reader runs on
 * it; what they hand back must name an endpoint inside the entry.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shm_core.h"


#define mosn_fuzz_assert(expr)                                                \
    if (!(expr)) {                                                            \
        abort();                                                              \
    }


static size_t    fuzz_size;
static uint8_t  *fuzz_base, *fuzz_pristine;

static void
fuzz_spec(mosn_ep_spec_t *spec, uint32_t i, const char *site)
{
    memset(spec, 0, sizeof(*spec));
    spec->ep.family = MOSN_EP_INET;
    spec->ep.port = (uint16_t) (3450 + i);
    spec->ep.addr[0] = 127;
    spec->ep.addr[3] = (uint8_t) (1 + i);
    spec->site = site;
    spec->site_len = strlen(site);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                  rc, app;
    size_t               off, n;
    uint8_t             *base;
    uint32_t             i, gen, ntried;
    mosn_region_t        rg;
    mosn_ep_app_t        copy;
    mosn_ep_spec_t       spec[6];
    mosn_endpoint_t      out, tried[4];
    mosn_region_conf_t   conf;
    static const char   *sites[] = { "s1", "s1", "s2", "s3", "s3", "s3" };

    conf.nproducers = 1;
    conf.nconsumers = 1;
    conf.slots = 2;
    conf.slot_size = 1024;

    /* one region of exactly its size, its table laid fresh each time */
    if (fuzz_base == NULL) {
        fuzz_size = mosn_region_size(&conf);
        fuzz_base = calloc(1, fuzz_size);
        fuzz_pristine = calloc(1, fuzz_size);
        mosn_fuzz_assert(fuzz_base != NULL && fuzz_pristine != NULL);
        mosn_fuzz_assert(mosn_region_format(fuzz_pristine, fuzz_size, &conf,
                                            NULL, 0)
                         == 0);
        memset(&rg, 0, sizeof(rg));
        mosn_fuzz_assert(mosn_region_load(&rg, fuzz_pristine, fuzz_size,
                                          NULL, 0)
                         == 0);

        for (i = 0; i < 6; i++) {
            fuzz_spec(&spec[i], i, sites[i]);
        }

        mosn_fuzz_assert(mosn_endpoints_set(&rg, "test", 4, spec, 6, NULL,
                                            0)
                         >= 0);
        mosn_fuzz_assert(mosn_endpoints_set(&rg, "other", 5, spec, 2, NULL,
                                            0)
                         >= 0);
        memcpy(fuzz_base, fuzz_pristine, fuzz_size);
    }

    base = fuzz_base;
    memset(&rg, 0, sizeof(rg));
    mosn_fuzz_assert(mosn_region_load(&rg, base, fuzz_size, NULL, 0) == 0);

    /* the two apps written, laid fresh: the input reaches nothing else */
    memcpy(mosn_ep_app(&rg, 0),
           fuzz_pristine + ((uint8_t *) mosn_ep_app(&rg, 0) - base),
           2 * sizeof(mosn_ep_app_t));

    /* the input over an app entry, from the offset its first bytes say */
    if (size >= 3) {
        app = data[0] % 2;
        off = (size_t) (data[1] | (data[2] << 8)) % sizeof(mosn_ep_app_t);
        n = size - 3;

        if (n > sizeof(mosn_ep_app_t) - off) {
            n = sizeof(mosn_ep_app_t) - off;
        }

        memcpy((uint8_t *) mosn_ep_app(&rg, (uint32_t) app) + off, data + 3,
               n);
    }

    for (i = 0; i < MOSN_EP_APPS; i++) {
        if (mosn_endpoints_read(&rg, i, &copy) == 0) {
            mosn_fuzz_assert(copy.nendpoints <= MOSN_EP_MAX);
            mosn_fuzz_assert(copy.name_len < MOSN_EP_APP_NAME_MAX);
        }
    }

    (void) mosn_ep_app(&rg, MOSN_EP_APPS);
    (void) mosn_endpoints_find(&rg, "test", 4);
    (void) mosn_endpoints_find(&rg, "", 0);
    (void) mosn_endpoints_count(&rg, "test", 4, &gen);
    (void) mosn_endpoints_count(&rg, "other", 5, &gen);

    ntried = 0;

    for (i = 0; i < 8; i++) {
        rc = mosn_endpoints_pick(&rg, "test", 4, i & 1 ? "s3" : "s1", 2,
                                 tried, ntried, &out);

        mosn_fuzz_assert(rc == MOSN_EP_NONE || rc == MOSN_EP_SITE
                         || rc == MOSN_EP_ANY || rc == MOSN_EP_BUSY);

        if (rc == MOSN_EP_SITE || rc == MOSN_EP_ANY) {
            mosn_fuzz_assert(out.family == MOSN_EP_INET
                             || out.family == MOSN_EP_INET6);

            if (ntried < 4) {
                tried[ntried++] = out;
            }
        }
    }

    (void) mosn_endpoints_pick(&rg, "other", 5, "", 0, NULL, 0, &out);
    (void) mosn_endpoints_pick(&rg, "nope", 4, "s1", 2, NULL, 0, &out);

    return 0;
}
