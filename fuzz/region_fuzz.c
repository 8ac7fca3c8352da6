
/*
 * libFuzzer target for the region check (mosn_region_check() and
 * mosn_region_load(), what create and attach run): the input is laid
 * over the header of a valid region image, from an offset it chooses.
 * An image the check accepts must have a layout whose every producer,
 * consumer, ring and slot lies inside the image: each is touched at both
 * ends, so AddressSanitizer sees a layout that points past it.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shm_core.h"


#define mosn_fuzz_assert(expr)                                                \
    if (!(expr)) {                                                            \
        abort();                                                              \
    }


static volatile uint8_t   fuzz_sink;
static uint8_t           *fuzz_base[27], *fuzz_pristine[27];


static void
fuzz_touch(mosn_region_t *rg, const void *p, size_t len)
{
    const uint8_t  *b = p, *base = (const uint8_t *) rg->hdr;

    mosn_fuzz_assert(b >= base && len <= rg->size
                     && (size_t) (b - base) <= rg->size - len);

    fuzz_sink ^= b[0] ^ b[len - 1];
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char                 err[256];
    size_t               n, off, len, k;
    uint8_t             *base;
    uint32_t             p, c, s;
    mosn_region_t        rg;
    mosn_region_conf_t   conf;

    if (size < 2) {
        return 0;
    }

    /* a small valid image of the sizes the first byte picks */
    conf.nproducers = 1 + data[0] % 3;
    conf.nconsumers = 1 + data[0] / 3 % 3;
    conf.slots = 2u << (data[0] / 9 % 3);
    conf.slot_size = 1024;

    /* an image of each size, of exactly its size, laid fresh each time */
    k = data[0] % 27;
    n = mosn_region_size(&conf);

    if (fuzz_base[k] == NULL) {
        fuzz_base[k] = calloc(1, n);
        fuzz_pristine[k] = calloc(1, n);
        mosn_fuzz_assert(fuzz_base[k] != NULL && fuzz_pristine[k] != NULL);
        mosn_fuzz_assert(mosn_region_format(fuzz_pristine[k], n, &conf, NULL,
                                            0)
                         == 0);
    }

    base = fuzz_base[k];
    memcpy(base, fuzz_pristine[k], sizeof(mosn_shm_header_t));

    off = data[1] % sizeof(mosn_shm_header_t);
    len = size - 2;

    if (len > sizeof(mosn_shm_header_t) - off) {
        len = sizeof(mosn_shm_header_t) - off;
    }

    memcpy(base + off, data + 2, len);

    memset(&rg, 0, sizeof(rg));

    if (mosn_region_load(&rg, base, n, err, sizeof(err)) == 0) {
        mosn_fuzz_assert(mosn_region_check(base, n, NULL, 0) == 0);

        for (p = 0; p < rg.nproducers; p++) {
            fuzz_touch(&rg, mosn_producer(&rg, p), sizeof(mosn_producer_t));

            for (s = 0; s < rg.slots; s++) {
                fuzz_touch(&rg, mosn_slot(&rg, p, s), rg.slot_size);
            }

            for (c = 0; c < rg.nconsumers; c++) {
                fuzz_touch(&rg, mosn_submit_ring(&rg, p, c),
                           sizeof(mosn_ring_t) + 8 * rg.slots);
                fuzz_touch(&rg, mosn_completion_ring(&rg, p, c),
                           sizeof(mosn_ring_t) + 8 * rg.slots);
            }
        }

        for (c = 0; c < rg.nconsumers; c++) {
            fuzz_touch(&rg, mosn_consumer(&rg, c), sizeof(mosn_consumer_t));
        }

        fuzz_touch(&rg, mosn_ep_app(&rg, 0),
                   sizeof(mosn_ep_app_t) * MOSN_EP_APPS);

    } else {
        mosn_fuzz_assert(err[0] != '\0');
        mosn_fuzz_assert(mosn_region_check(base, n, NULL, 0) != 0);
    }

    /* a short image of the input itself is refused, never read past */
    (void) mosn_region_check(data, size, NULL, 0);

    return 0;
}
