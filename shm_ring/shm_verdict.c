
/*
 * The verdict decoder.  A verdict comes from a Python worker, which is
 * trusted no more than the network: every length is checked against the
 * buffer, every name and value against what HTTP allows, before the
 * nginx module applies any of it.
 */

#include <string.h>

#include "shm_core.h"


/* RFC 9110 token characters */

static const uint8_t  mosn_tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1,
    ['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1,
    ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1,
    ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,
    ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1,
    ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1,
    ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
    ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1,
    ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,
    ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};


int
mosn_header_name_valid(const uint8_t *p, size_t len)
{
    size_t  i;

    if (len == 0 || len > 255) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!mosn_tchar[p[i]]) {
            return 0;
        }
    }

    return 1;
}


int
mosn_header_value_valid(const uint8_t *p, size_t len)
{
    size_t  i;

    for (i = 0; i < len; i++) {
        if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0') {
            return 0;
        }
    }

    return 1;
}


static int
mosn_meta_key_valid(const uint8_t *p, size_t len)
{
    size_t  i;

    if (len == 0 || len > MOSN_META_KEY_MAX) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z')
              || (p[i] >= '0' && p[i] <= '9') || p[i] == '_'))
        {
            return 0;
        }
    }

    return 1;
}


static int
mosn_upstream_valid(const uint8_t *p, size_t len)
{
    size_t  i;

    if (len == 0 || len > 255) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z')
              || (p[i] >= '0' && p[i] <= '9') || p[i] == '_'
              || p[i] == '-' || p[i] == '.' || p[i] == ':'
              || p[i] == '[' || p[i] == ']'))
        {
            return 0;
        }
    }

    return 1;
}


/*
 * Starts a walk over a verdict.  On -1 the iterator is still set, to an
 * ERROR verdict with no record, so that a caller that walks it anyway
 * reads nothing.
 */

int
mosn_verdict_begin(mosn_verdict_iter_t *it, const uint8_t *buf, size_t len)
{
    mosn_verdict_t  v;

    it->pos = buf;
    it->end = buf;
    it->left = 0;
    it->action = MOSN_ACTION_ERROR;
    it->status = 0;
    it->flags = 0;

    if (len < sizeof(mosn_verdict_t)) {
        return -1;
    }

    memcpy(&v, buf, sizeof(v));

    if (v.len != len || v.nrecords > MOSN_VERDICT_MAX_RECORDS) {
        return -1;
    }

    it->pos = buf + sizeof(mosn_verdict_t);
    it->end = buf + len;
    it->left = v.nrecords;
    it->action = v.action;
    it->status = v.status;
    it->flags = v.flags;

    return 0;
}


/* returns 1 with a record, 0 at the end, -1 on a malformed record */

int
mosn_verdict_next(mosn_verdict_iter_t *it, mosn_rec_view_t *rec)
{
    size_t         room;
    mosn_record_t  r;

    if (it->left == 0) {
        return it->pos == it->end ? 0 : -1;
    }

    room = (size_t) (it->end - it->pos);

    if (room < sizeof(mosn_record_t)) {
        return -1;
    }

    memcpy(&r, it->pos, sizeof(r));
    room -= sizeof(mosn_record_t);

    if (r.key_len > room || r.value_len > room - r.key_len) {
        return -1;
    }

    rec->type = r.type;
    rec->key = it->pos + sizeof(mosn_record_t);
    rec->key_len = r.key_len;
    rec->value = rec->key + r.key_len;
    rec->value_len = r.value_len;

    it->pos = rec->value + r.value_len;
    it->left--;

    return 1;
}


int
mosn_verdict_validate(const uint8_t *buf, size_t len, const char **why)
{
    int                  rc, bodies, resp_bodies, upstreams;
    mosn_rec_view_t      rec;
    mosn_verdict_iter_t  it;

    if (mosn_verdict_begin(&it, buf, len) != 0) {
        *why = "verdict header does not match its length";
        return -1;
    }

    switch (it.action) {

    case MOSN_ACTION_CONTINUE:
    case MOSN_ACTION_ERROR:
        break;

    case MOSN_ACTION_REPLY:
        if (it.status < 200 || it.status > 599) {
            *why = "reply status is not in 200..599";
            return -1;
        }
        break;

    default:
        *why = "unknown verdict action";
        return -1;
    }

    bodies = 0;
    resp_bodies = 0;
    upstreams = 0;

    while ((rc = mosn_verdict_next(&it, &rec)) == 1) {

        switch (rec.type) {

        case MOSN_REC_UPSTREAM:
            if (rec.key_len != 0 || ++upstreams > 1
                || !mosn_upstream_valid(rec.value, rec.value_len))
            {
                *why = "bad upstream name";
                return -1;
            }
            break;

        case MOSN_REC_META:
            if (!mosn_meta_key_valid(rec.key, rec.key_len)
                || !mosn_header_value_valid(rec.value, rec.value_len))
            {
                *why = "bad metadata key or value";
                return -1;
            }
            break;

        case MOSN_REC_REQ_SET:
        case MOSN_REC_RESP_ADD:
        case MOSN_REC_RESP_SET:
        case MOSN_REC_REPLY_HEADER:
            if (!mosn_header_name_valid(rec.key, rec.key_len)
                || !mosn_header_value_valid(rec.value, rec.value_len))
            {
                *why = "bad header name or value";
                return -1;
            }
            break;

        case MOSN_REC_REQ_DEL:
        case MOSN_REC_RESP_DEL:
            if (!mosn_header_name_valid(rec.key, rec.key_len)
                || rec.value_len != 0)
            {
                *why = "bad header name to remove";
                return -1;
            }
            break;

        case MOSN_REC_REPLY_BODY:
            if (rec.key_len != 0 || ++bodies > 1) {
                *why = "bad reply body record";
                return -1;
            }
            break;

        case MOSN_REC_RESP_BODY:
            if (rec.key_len != 0 || ++resp_bodies > 1) {
                *why = "bad response body record";
                return -1;
            }
            break;

        case MOSN_REC_LOG:
            if (rec.key_len != 0) {
                *why = "bad log record";
                return -1;
            }
            break;

        default:
            *why = "unknown record type";
            return -1;
        }
    }

    if (rc != 0) {
        *why = "record lengths overrun the verdict";
        return -1;
    }

    return 0;
}
