
/*
 * libFuzzer target for the verdict decoder (shm_verdict.c).
 *
 * The input is taken as a verdict written by a Python worker.  It is
 * copied into a buffer of exactly its size, as the nginx module copies
 * it out of the slot, so that AddressSanitizer sees a read of even one
 * byte past the end.  When mosn_verdict_validate() accepts the verdict,
 * every record is walked the way the module walks it, every byte of
 * every key and value is read, and what validation promised is checked
 * again independently: a broken promise aborts.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shm_core.h"


#define mosn_fuzz_assert(expr)                                                \
    if (!(expr)) {                                                            \
        abort();                                                              \
    }


static volatile uint32_t  mosn_fuzz_sink;


static uint32_t
mosn_fuzz_touch(const uint8_t *p, size_t len)
{
    size_t    i;
    uint32_t  sum;

    sum = 0;

    for (i = 0; i < len; i++) {
        sum = sum * 31 + p[i];
    }

    return sum;
}


static int
mosn_fuzz_clean_value(const uint8_t *p, size_t len)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0') {
            return 0;
        }
    }

    return 1;
}


static void
mosn_fuzz_walk(const uint8_t *buf, size_t len)
{
    int                  rc;
    uint32_t             n, sum, nrecords, upstreams, bodies, resp_bodies;
    const uint8_t       *end;
    mosn_verdict_t       v;
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    mosn_fuzz_assert(len >= sizeof(mosn_verdict_t));
    memcpy(&v, buf, sizeof(v));
    mosn_fuzz_assert(v.len == len);

    nrecords = v.nrecords;
    mosn_fuzz_assert(nrecords <= MOSN_VERDICT_MAX_RECORDS);
    mosn_fuzz_assert(v.action == MOSN_ACTION_CONTINUE
                     || v.action == MOSN_ACTION_REPLY
                     || v.action == MOSN_ACTION_ERROR);
    mosn_fuzz_assert(v.action != MOSN_ACTION_REPLY
                     || (v.status >= 200 && v.status <= 599));

    mosn_fuzz_assert(mosn_verdict_begin(&it, buf, len) == 0);
    mosn_fuzz_assert(it.action == v.action && it.status == v.status);

    end = buf + len;
    n = 0;
    sum = 0;
    upstreams = 0;
    bodies = 0;
    resp_bodies = 0;

    while ((rc = mosn_verdict_next(&it, &rec)) == 1) {
        n++;

        /* the views lie inside the verdict, in order, without overlap */
        mosn_fuzz_assert(rec.key >= buf + sizeof(mosn_verdict_t)
                         + sizeof(mosn_record_t));
        mosn_fuzz_assert(rec.key <= end
                         && rec.key_len <= (size_t) (end - rec.key));
        mosn_fuzz_assert(rec.value == rec.key + rec.key_len);
        mosn_fuzz_assert(rec.value_len <= (size_t) (end - rec.value));
        mosn_fuzz_assert(it.pos == rec.value + rec.value_len);

        sum += mosn_fuzz_touch(rec.key, rec.key_len);
        sum += mosn_fuzz_touch(rec.value, rec.value_len);

        switch (rec.type) {

        case MOSN_REC_UPSTREAM:
            mosn_fuzz_assert(rec.key_len == 0 && rec.value_len > 0
                             && rec.value_len <= 255);
            mosn_fuzz_assert(++upstreams == 1);
            break;

        case MOSN_REC_META:
            mosn_fuzz_assert(rec.key_len > 0
                             && rec.key_len <= MOSN_META_KEY_MAX);
            mosn_fuzz_assert(mosn_fuzz_clean_value(rec.value,
                                                   rec.value_len));
            break;

        case MOSN_REC_REQ_SET:
        case MOSN_REC_RESP_ADD:
        case MOSN_REC_RESP_SET:
        case MOSN_REC_REPLY_HEADER:
            mosn_fuzz_assert(mosn_header_name_valid(rec.key, rec.key_len));
            mosn_fuzz_assert(mosn_fuzz_clean_value(rec.key, rec.key_len));
            mosn_fuzz_assert(mosn_fuzz_clean_value(rec.value,
                                                   rec.value_len));
            break;

        case MOSN_REC_REQ_DEL:
        case MOSN_REC_RESP_DEL:
            mosn_fuzz_assert(mosn_header_name_valid(rec.key, rec.key_len));
            mosn_fuzz_assert(rec.value_len == 0);
            break;

        case MOSN_REC_REPLY_BODY:
            mosn_fuzz_assert(rec.key_len == 0);
            mosn_fuzz_assert(++bodies == 1);
            break;

        case MOSN_REC_RESP_BODY:
            mosn_fuzz_assert(rec.key_len == 0);
            mosn_fuzz_assert(++resp_bodies == 1);
            break;

        case MOSN_REC_LOG:
            mosn_fuzz_assert(rec.key_len == 0);
            break;

        default:
            abort();
        }
    }

    /* a valid verdict is exactly its records, and walks to its end */
    mosn_fuzz_assert(rc == 0);
    mosn_fuzz_assert(n == nrecords);
    mosn_fuzz_assert(it.pos == end);

    /* a finished walk stays finished */
    mosn_fuzz_assert(mosn_verdict_next(&it, &rec) == 0);

    mosn_fuzz_sink += sum;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                  rc;
    uint8_t             *buf;
    const char          *why;
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    /* an exact copy: one byte past it is a heap overflow for ASan */
    buf = malloc(size ? size : 1);
    if (buf == NULL) {
        return 0;
    }

    memcpy(buf, data, size);

    why = NULL;
    rc = mosn_verdict_validate(buf, size, &why);

    if (rc == 0) {
        mosn_fuzz_walk(buf, size);

    } else {
        mosn_fuzz_assert(rc == -1 && why != NULL && why[0] != '\0');

        /* the iterator alone must also stay inside the buffer */
        if (mosn_verdict_begin(&it, buf, size) == 0) {
            while (mosn_verdict_next(&it, &rec) == 1) {
                mosn_fuzz_sink += mosn_fuzz_touch(rec.key, rec.key_len);
                mosn_fuzz_sink += mosn_fuzz_touch(rec.value, rec.value_len);
            }
        }
    }

    free(buf);

    return 0;
}
