/* feedback_queries.match_later_text, compiled (see _native.py).
 *
 * Python's match_later_text is the reference: this file follows it step by step (exact anchor,
 * fuzzy anchor, span, moved text, similarity), over code points (Python str indices), so every
 * position, length and slice means the same thing. Rows that are all ASCII are handled on their
 * bytes (a byte is a code point there), others on decoded code points (_match_impl.h is
 * included once for each).
 *
 * Inputs are Arrow string or large_string columns (offsets, UTF-8 data); outputs are per-row
 * flags, the similarity, and three large_string columns built here and freed by gm_free.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { IN_INSERTED, IN_PREFIX, IN_SUFFIX, IN_LATER_PREFIX, IN_LATER_SUFFIX, N_IN };
enum {
    P_ANCHOR, P_MIN_ANCHOR, P_FUZZY_LINES, P_RIGHT_MIN, P_MOVED_MIN, P_PREFIX_TAIL,
    P_SUFFIX_HEAD, P_LATER_PREFIX, P_LATER_SUFFIX, P_SLACK, P_MAX_COMPARE, N_PARAMS
};
enum { F_FOUND = 1, F_COMPLETE = 2, F_CLEAN = 4, F_MOVED = 8, F_FUZZY = 32 };
enum { OUT_TEXT, OUT_FROM, OUT_TO, N_OUT };

typedef struct { uint8_t *p; int64_t n, cap; } bytes;

typedef struct {
    bytes data[N_OUT];
    int64_t *offsets[N_OUT];
    int failed;
} result;

static int grow(void **p, int64_t *cap, int64_t need, size_t size) {
    if (need <= *cap) return 0;
    int64_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * size);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int breserve(bytes *b, int64_t need) { return grow((void **)&b->p, &b->cap, need, 1); }

typedef struct { int64_t *p; int64_t n, cap; } ivec;
static int ireserve(ivec *v, int64_t need) { return grow((void **)&v->p, &v->cap, need, 8); }

static int encode(bytes *out, const uint32_t *p, int64_t n) {
    if (breserve(out, out->n + 4 * n)) return -1;
    uint8_t *d = out->p + out->n;
    for (int64_t i = 0; i < n; i++) {
        uint32_t c = p[i];
        if (c < 0x80) {
            *d++ = (uint8_t)c;
        } else if (c < 0x800) {
            *d++ = (uint8_t)(0xC0 | (c >> 6));
            *d++ = (uint8_t)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            *d++ = (uint8_t)(0xE0 | (c >> 12));
            *d++ = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
            *d++ = (uint8_t)(0x80 | (c & 0x3F));
        } else {
            *d++ = (uint8_t)(0xF0 | (c >> 18));
            *d++ = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
            *d++ = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
            *d++ = (uint8_t)(0x80 | (c & 0x3F));
        }
    }
    out->n = d - out->p;
    return 0;
}

static int is_space(uint32_t c) { /* " \t\n\r\f\v" */
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
static int is_line_ws(uint32_t c) { /* " \t\r\f\v" */
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

#define CH uint8_t
#define FN(x) x##_8
#include "_match_impl.h"
#undef CH
#undef FN
#define CH uint32_t
#define FN(x) x##_32
#include "_match_impl.h"
#undef CH
#undef FN

/* Valid UTF-8 (Arrow strings are) to code points. */
static int decode(const uint8_t *s, int64_t len, vec_32 *out) {
    if (vreserve_32(out, len + 1)) return -1;
    int64_t n = 0, i = 0;
    while (i < len) {
        /* ASCII runs, eight bytes at a time (code is mostly ASCII) */
        while (i + 8 <= len) {
            uint64_t word;
            memcpy(&word, s + i, 8);
            if (word & 0x8080808080808080ULL) break;
            for (int k = 0; k < 8; k++) out->p[n + k] = s[i + k];
            n += 8;
            i += 8;
        }
        if (i >= len) break;
        uint32_t c = s[i];
        if (c < 0x80) {
            out->p[n++] = c;
            i += 1;
        } else if (c < 0xE0 && i + 1 < len) {
            out->p[n++] = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F);
            i += 2;
        } else if (c < 0xF0 && i + 2 < len) {
            out->p[n++] = ((c & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
            i += 3;
        } else if (i + 3 < len) {
            out->p[n++] = ((c & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) |
                          ((s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
            i += 4;
        } else {
            out->p[n++] = 0xFFFD;
            i = len;
        }
    }
    out->n = n;
    return 0;
}

static int is_ascii(const uint8_t *s, int64_t n) {
    int64_t i = 0;
    uint64_t any = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, s + i, 8);
        any |= word;
    }
    for (; i < n; i++) any |= s[i];
    return (any & 0x8080808080808080ULL) == 0;
}

void gm_free(result *r) {
    if (!r) return;
    for (int k = 0; k < N_OUT; k++) {
        free(r->data[k].p);
        free(r->offsets[k]);
    }
    free(r);
}

int64_t gm_out_size(result *r, int k) { return r->data[k].n; }
const uint8_t *gm_out_data(result *r, int k) { return r->data[k].p; }
const int64_t *gm_out_offsets(result *r, int k) { return r->offsets[k]; }
int gm_failed(result *r) { return r->failed; }

static int64_t at_offset(const void *offsets, uint8_t wide, int64_t i) {
    return wide ? ((const int64_t *)offsets)[i] : (int64_t)((const int32_t *)offsets)[i];
}

/* Match n rows. offsets[k] points at n + 1 offsets into data[k] (column k of N_IN), int64 when
 * wide[k] (Arrow large_string), else int32 (Arrow string). */
result *gm_match(int64_t n, const void *const *offsets, const uint8_t *wide,
                 const uint8_t *const *data, const uint8_t *accepted, const int64_t *prm,
                 uint8_t *flags, double *sims) {
    result *r = calloc(1, sizeof(result));
    if (!r) return NULL;
    for (int k = 0; k < N_OUT; k++) {
        r->offsets[k] = calloc((size_t)n + 1, sizeof(int64_t));
        if (!r->offsets[k]) { r->failed = 1; return r; }
    }
    scratch_8 s8;
    scratch_32 s32;
    vec_32 decoded[N_IN];
    memset(&s8, 0, sizeof(s8));
    memset(&s32, 0, sizeof(s32));
    memset(decoded, 0, sizeof(decoded));
    for (int64_t i = 0; i < n && !r->failed; i++) {
        const uint8_t *p[N_IN];
        int64_t len[N_IN];
        int ascii = 1;
        for (int k = 0; k < N_IN; k++) {
            int64_t a = at_offset(offsets[k], wide[k], i);
            p[k] = data[k] + a;
            len[k] = at_offset(offsets[k], wide[k], i + 1) - a;
            if (ascii && !is_ascii(p[k], len[k])) ascii = 0;
        }
        int failed;
        if (ascii) {
            view_8 in[N_IN];
            for (int k = 0; k < N_IN; k++) {
                in[k].p = p[k];
                in[k].n = len[k];
            }
            failed = match_row_8(&s8, in, prm, accepted[i], &flags[i], &sims[i], r, i);
        } else {
            view_32 in[N_IN];
            failed = 0;
            for (int k = 0; k < N_IN && !failed; k++) {
                failed = decode(p[k], len[k], &decoded[k]);
                in[k].p = decoded[k].p;
                in[k].n = decoded[k].n;
            }
            if (!failed)
                failed = match_row_32(&s32, in, prm, accepted[i], &flags[i], &sims[i], r, i);
        }
        if (failed) r->failed = 1;
    }
    for (int k = 0; k < N_IN; k++) free(decoded[k].p);
    scratch_free_8(&s8);
    scratch_free_32(&s32);
    return r;
}
