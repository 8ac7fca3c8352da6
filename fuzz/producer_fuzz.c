
/*
 * libFuzzer target for what an nginx worker reads from the region: the
 * region check, the producer's poll and rescue, and the reaper, over slot
 * states, rings, consumer entries and channel owners written by a hostile
 * process.
 *
 * The region lives in heap memory of exactly its size (so that
 * AddressSanitizer sees any access past it), formatted once per input.
 * The input is a list of scribbles: (offset, 8 bytes) pairs written over
 * the shared part of the region, the slot states and ring words weighted
 * so that the fuzzer reaches them quickly.  Then the producer polls,
 * rescues each slot it "holds" at a generation taken from the input,
 * arms, and the reaper runs; what comes back is checked against the
 * channel's bounds, and the layout kept in the region handle must not
 * have moved whatever the header now says.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shm_core.h"


#define mosn_fuzz_assert(expr)                                                \
    if (!(expr)) {                                                            \
        abort();                                                              \
    }

#define FUZZ_PRODUCERS   2
#define FUZZ_CONSUMERS   3
#define FUZZ_SLOTS       8
#define FUZZ_SLOT_SIZE   1024


static size_t    fuzz_size, fuzz_dirty;
static uint8_t  *fuzz_base, *fuzz_pristine;


static uint64_t
fuzz_u64(const uint8_t *p)
{
    uint64_t  v;

    memcpy(&v, p, sizeof(v));

    return v;
}


/* a word of the region chosen by kind, so that scribbles land where read */

static uint8_t *
fuzz_target(mosn_region_t *rg, uint8_t kind, uint16_t idx)
{
    uint32_t      p, c, s;
    mosn_ring_t  *ring;

    p = idx % FUZZ_PRODUCERS;
    c = (idx / FUZZ_PRODUCERS) % FUZZ_CONSUMERS;
    s = (idx / 8) % FUZZ_SLOTS;

    switch (kind % 10) {

    case 0:
        return (uint8_t *) &mosn_slot(rg, p, s)->state;

    case 1:
        ring = mosn_completion_ring(rg, p, c);
        return (uint8_t *) &ring->head;

    case 2:
        ring = mosn_completion_ring(rg, p, c);
        return (uint8_t *) &ring->entries[s];

    case 3:
        ring = mosn_submit_ring(rg, p, c);
        return (idx & 1) ? (uint8_t *) &ring->tail
                         : (uint8_t *) &ring->entries[s];

    case 4:
        return (uint8_t *) &mosn_consumer(rg, c)->state;

    case 5:
        return (uint8_t *) &mosn_consumer(rg, c)->pid;

    case 6:
        return (uint8_t *) &mosn_producer(rg, p)->owner;

    case 7:
        return (uint8_t *) &mosn_slot(rg, p, s)->verdict_off;

    case 8:
        /* the header: the layout fields a forger would aim at */
        return (uint8_t *) rg->hdr + (idx % (sizeof(mosn_shm_header_t) - 8));

    default:
        /* anywhere before the endpoint table, which has its own target */
        return (uint8_t *) rg->hdr + (idx * 8) % (rg->endpoints_off - 8);
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                  n, i, rc;
    uint8_t             *base, *dst;
    uint32_t             rr, s, gen, p;
    uint64_t             out[FUZZ_SLOTS * 2], e, w;
    mosn_region_t        rg, before;
    mosn_region_conf_t   conf;

    conf.nproducers = FUZZ_PRODUCERS;
    conf.nconsumers = FUZZ_CONSUMERS;
    conf.slots = FUZZ_SLOTS;
    conf.slot_size = FUZZ_SLOT_SIZE;

    /* one region of exactly its size, laid fresh from a pristine copy */
    if (fuzz_base == NULL) {
        fuzz_size = mosn_region_size(&conf);
        fuzz_base = calloc(1, fuzz_size);
        fuzz_pristine = calloc(1, fuzz_size);
        mosn_fuzz_assert(fuzz_base != NULL && fuzz_pristine != NULL);
        mosn_fuzz_assert(mosn_region_format(fuzz_pristine, fuzz_size, &conf,
                                            NULL, 0)
                         == 0);
        memcpy(fuzz_base, fuzz_pristine, fuzz_size);
        fuzz_dirty = ((mosn_shm_header_t *) fuzz_pristine)->endpoints_off;
    }

    /* the scribbles reach no further than the endpoint table */
    base = fuzz_base;
    memcpy(base, fuzz_pristine, fuzz_dirty);

    memset(&rg, 0, sizeof(rg));
    mosn_fuzz_assert(mosn_region_load(&rg, base, fuzz_size, NULL, 0) == 0);

    before = rg;

    /* a live channel for producer 0, in flight on every slot */
    p = 0;
    mosn_producer(&rg, p)->owner = MOSN_OWNER(1, MOSN_CHAN_OWNED);

    for (s = 0; s < FUZZ_SLOTS; s++) {
        mosn_slot(&rg, p, s)->state = MOSN_SW(s + 1, 1, s % FUZZ_CONSUMERS,
                                              MOSN_SLOT_TAKEN);
    }

    /* the scribbles: (kind, index, 8 bytes) each */
    for (i = 0; (size_t) i + 11 <= size; i += 11) {
        dst = fuzz_target(&rg, data[i],
                          (uint16_t) (data[i + 1] | (data[i + 2] << 8)));
        memcpy(dst, &data[i + 3], 8);
    }

    /* a region that no longer checks is refused at attach, nothing more */
    (void) mosn_region_check(base, fuzz_size, NULL, 0);

    /* the handle's layout is a copy: scribbles on the header move nothing */
    mosn_fuzz_assert(memcmp(&before, &rg, sizeof(rg)) == 0);

    for (p = 0; p < FUZZ_PRODUCERS; p++) {
        n = mosn_producer_poll(&rg, p, out, FUZZ_SLOTS);
        mosn_fuzz_assert(n >= 0 && n <= FUZZ_SLOTS);

        for (i = 0; i < n; i++) {
            e = out[i];
            s = MOSN_ENTRY_SLOT(e);
            mosn_fuzz_assert(s < FUZZ_SLOTS);
            w = mosn_slot(&rg, p, s)->state;
            mosn_fuzz_assert(MOSN_SW_STATE(w) == MOSN_SLOT_DONE);
        }

        /* the rescue of every slot, at the generation the input says */
        rr = (size >= 8) ? fuzz_u64(data) & 0xff : 0;

        for (s = 0; s < FUZZ_SLOTS; s++) {
            gen = (size > s) ? data[size - 1 - s] % 10 : s + 1;
            rc = mosn_producer_rescue_slot(&rg, p, s, gen, &rr);
            mosn_fuzz_assert(rc >= MOSN_RESCUE_NONE
                             && rc <= MOSN_RESCUE_LOST);
        }

        (void) mosn_producer_rescue_slot(&rg, p, FUZZ_SLOTS, 1, &rr);

        n = mosn_producer_rescue(&rg, p, &rr, out, FUZZ_SLOTS);
        mosn_fuzz_assert(n >= 0 && n <= FUZZ_SLOTS);

        for (i = 0; i < n; i++) {
            mosn_fuzz_assert((MOSN_ENTRY_SLOT(out[i]) & ~MOSN_RESCUE_FAILED)
                             < FUZZ_SLOTS);
        }

        (void) mosn_producer_arm(&rg, p);
        (void) mosn_producer_pick(&rg, p, &rr, &gen);
    }

    (void) mosn_consumer_take(&rg, 0, out, FUZZ_SLOTS);
    (void) mosn_reap(&rg, -1);
    (void) mosn_slots_in_use(&rg);

    mosn_fuzz_assert(memcmp(&before, &rg, sizeof(rg)) == 0);

    return 0;
}
