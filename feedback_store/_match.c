/* The exact-anchor path of feedback_queries.match_later_text, compiled (see _native.py).
 *
 * Python's match_later_text is the reference: this file follows it step by step, over code
 * points (Python str indices), so every position, length and slice means the same thing. It
 * decides the rows whose exact left anchor is found; for the others it only says whether a
 * fuzzy anchor or a move is possible at all (the whitespace-free containment test of the SQL
 * path), and Python decides those.
 *
 * Inputs are Arrow large_string columns (int64 offsets, UTF-8 data); outputs are per-row flags,
 * the similarity, and three large_string columns built here and freed by gm_free.
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
enum { F_FOUND = 1, F_COMPLETE = 2, F_CLEAN = 4, F_MOVED = 8, F_POSSIBLE = 16 };
enum { OUT_TEXT, OUT_FROM, OUT_TO, N_OUT };

typedef struct { uint32_t *p; int64_t n, cap; } vec;
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

static int vreserve(vec *v, int64_t need) { return grow((void **)&v->p, &v->cap, need, 4); }
static int breserve(bytes *b, int64_t need) { return grow((void **)&b->p, &b->cap, need, 1); }

/* Valid UTF-8 (Arrow strings are) to code points. */
static int decode(const uint8_t *s, int64_t len, vec *out) {
    if (vreserve(out, len + 1)) return -1;
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

static int64_t nonblank(const uint32_t *p, int64_t n) {
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) k += !is_space(p[i]);
    return k;
}

/* First occurrence of needle in hay from 0, or -1 (Python str.find). */
static int64_t find(const uint32_t *hay, int64_t hn, const uint32_t *needle, int64_t nn) {
    if (nn == 0) return 0;
    if (nn > hn) return -1;
    /* memmem over the bytes (fast); a hit must start on a code point */
    const char *base = (const char *)hay, *end = base + hn * 4;
    const char *from = base;
    while (from < end) {
        const char *hit = memmem(from, (size_t)(end - from), needle, (size_t)nn * 4);
        if (!hit) return -1;
        if ((hit - base) % 4 == 0) return (hit - base) / 4;
        from = hit + 1;
    }
    return -1;
}

/* normalize_code: runs of " \t\r\f\v" become one space, one space either side of a line break
 * goes, then leading and trailing spaces and line breaks go. */
static int normalize(const uint32_t *p, int64_t n, vec *out) {
    if (vreserve(out, n + 1)) return -1;
    int64_t k = 0;
    int skip_space = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t c = p[i];
        if (is_line_ws(c)) {
            while (i + 1 < n && is_line_ws(p[i + 1])) i++;
            if (skip_space) {
                skip_space = 0;
                continue;
            }
            out->p[k++] = ' ';
        } else if (c == '\n') {
            if (k > 0 && out->p[k - 1] == ' ' && !skip_space) k--;
            out->p[k++] = '\n';
            skip_space = 1;
        } else {
            out->p[k++] = c;
            skip_space = 0;
        }
    }
    int64_t a = 0;
    while (a < k && (out->p[a] == ' ' || out->p[a] == '\n')) a++;
    while (k > a && (out->p[k - 1] == ' ' || out->p[k - 1] == '\n')) k--;
    if (a) memmove(out->p, out->p + a, (size_t)(k - a) * 4);
    out->n = k - a;
    return 0;
}

static int equal(const uint32_t *a, int64_t an, const uint32_t *b, int64_t bn) {
    return an == bn && (an == 0 || memcmp(a, b, (size_t)an * 4) == 0);
}

static int squeeze_append(vec *out, const uint32_t *p, int64_t n) {
    if (vreserve(out, out->n + n + 1)) return -1;
    for (int64_t i = 0; i < n; i++)
        if (!is_space(p[i])) out->p[out->n++] = p[i];
    return 0;
}

typedef struct {
    vec in[N_IN], later, norm_a, norm_b, work, rest_anchor, key, later_sq, elsewhere;
    int64_t *row;
} scratch;

static double similarity(scratch *s, const uint32_t *a, int64_t an, const uint32_t *b,
                         int64_t bn, int64_t max_chars) {
    if (equal(a, an, b, bn)) return 1.0;
    if (normalize(a, an < max_chars ? an : max_chars, &s->norm_a)) return -1.0;
    if (normalize(b, bn < max_chars ? bn : max_chars, &s->norm_b)) return -1.0;
    const uint32_t *x = s->norm_a.p, *y = s->norm_b.p;
    int64_t xn = s->norm_a.n, yn = s->norm_b.n;
    if (equal(x, xn, y, yn)) return 1.0;
    if (xn < yn) {
        const uint32_t *t = x; x = y; y = t;
        int64_t tn = xn; xn = yn; yn = tn;
    }
    int64_t *row = realloc(s->row, (size_t)(yn + 1) * sizeof(int64_t));
    if (!row) return -1.0;
    s->row = row;
    for (int64_t j = 0; j <= yn; j++) row[j] = j;
    for (int64_t i = 1; i <= xn; i++) {
        int64_t diagonal = row[0];
        row[0] = i;
        for (int64_t j = 1; j <= yn; j++) {
            int64_t above = row[j];
            int64_t best = above + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            int64_t swap = diagonal + (x[i - 1] != y[j - 1]);
            if (swap < best) best = swap;
            diagonal = above;
            row[j] = best;
        }
    }
    return 1.0 - (double)row[yn] / (double)xn;
}

static int emit(result *r, int k, int64_t i, const uint32_t *p, int64_t n) {
    if (p && encode(&r->data[k], p, n)) return -1;
    r->offsets[k][i + 1] = r->data[k].n;
    return 0;
}

/* One row; returns -1 on allocation failure. */
static int match_row(scratch *s, const int64_t *prm, int accepted, uint8_t *flag, double *sim,
                     result *r, int64_t i) {
    vec *I = &s->in[IN_INSERTED], *P = &s->in[IN_PREFIX], *X = &s->in[IN_SUFFIX];
    vec *LP = &s->in[IN_LATER_PREFIX], *LS = &s->in[IN_LATER_SUFFIX];
    *flag = 0;
    *sim = 0.0;
    int64_t ptc = prm[P_PREFIX_TAIL];
    int truncated = P->n > ptc;
    const uint32_t *tail = P->p + (P->n > ptc ? P->n - ptc : 0);
    int64_t tail_n = P->n > ptc ? ptc : P->n;
    int64_t lp_start = LP->n > prm[P_LATER_PREFIX] ? LP->n - prm[P_LATER_PREFIX] : 0;
    int64_t cursor = LP->n - lp_start;
    int64_t ls_n = LS->n < prm[P_LATER_SUFFIX] ? LS->n : prm[P_LATER_SUFFIX];
    vec *O = &s->later;
    if (vreserve(O, cursor + ls_n + 1)) return -1;
    memcpy(O->p, LP->p + lp_start, (size_t)cursor * 4);
    memcpy(O->p + cursor, LS->p, (size_t)ls_n * 4);
    O->n = cursor + ls_n;
    /* rest of the cursor line, and the right anchor (first non-blank line after it) */
    int64_t head_n = X->n < prm[P_SUFFIX_HEAD] ? X->n : prm[P_SUFFIX_HEAD];
    int64_t nl = -1;
    for (int64_t j = 0; j < head_n; j++)
        if (X->p[j] == '\n') { nl = j; break; }
    int64_t rest_n = nl < 0 ? head_n : nl;
    const uint32_t *rest = X->p;
    int has_anchor = 0;
    s->rest_anchor.n = 0;
    if (nl >= 0) {
        int64_t a = nl + 1;
        while (a <= head_n) {
            int64_t b = a;
            while (b < head_n && X->p[b] != '\n') b++;
            if (normalize(X->p + a, b - a, &s->rest_anchor)) return -1;
            if (s->rest_anchor.n > 0) {
                has_anchor = nonblank(s->rest_anchor.p, s->rest_anchor.n) >= prm[P_RIGHT_MIN];
                break;
            }
            a = b + 1;
        }
    }
    int64_t ac = prm[P_ANCHOR];
    const uint32_t *anchor = tail + (tail_n > ac ? tail_n - ac : 0);
    int64_t anchor_n = ac ? (tail_n > ac ? ac : tail_n) : 0;
    int64_t at = -1;
    if (nonblank(anchor, anchor_n) >= prm[P_MIN_ANCHOR]) at = find(O->p, O->n, anchor, anchor_n);
    if (at < 0) {
        /* Not decided here: is a fuzzy anchor or a move possible at all? */
        s->later_sq.n = 0;
        if (squeeze_append(&s->later_sq, O->p, O->n)) return -1;
        s->key.n = 0;
        int64_t lines_taken = 0;
        /* complete lines of the tail, the last fuzzy_lines non-blank ones, squeezed */
        int64_t end = -1; /* index of the last '\n' of the tail */
        for (int64_t j = tail_n - 1; j >= 0; j--)
            if (tail[j] == '\n') { end = j; break; }
        int64_t first_line_end = -1;
        for (int64_t j = 0; j < tail_n; j++)
            if (tail[j] == '\n') { first_line_end = j; break; }
        /* lines run [start, e) for each '\n' at e <= end; skip the first if truncated */
        int64_t stops[64];
        int64_t count = 0;
        vec *w = &s->work;
        w->n = 0;
        for (int64_t e = end; e >= 0 && lines_taken < prm[P_FUZZY_LINES];) {
            int64_t b = e - 1;
            while (b >= 0 && tail[b] != '\n') b--;
            int64_t start = b + 1;
            if (truncated && start == 0) break; /* the first line of a cut tail is partial */
            (void)first_line_end;
            if (nonblank(tail + start, e - start) > 0 && count < 64) {
                stops[count++] = start;
                stops[count++] = e;
                lines_taken++;
            }
            e = b;
        }
        for (int64_t c = count - 2; c >= 0; c -= 2)
            if (squeeze_append(&s->key, tail + stops[c], stops[c + 1] - stops[c])) return -1;
        int possible = s->key.n > 0 && find(s->later_sq.p, s->later_sq.n, s->key.p, s->key.n) >= 0;
        if (!possible && accepted && nonblank(I->p, I->n) >= prm[P_MOVED_MIN]) {
            w->n = 0;
            if (squeeze_append(w, I->p, I->n)) return -1;
            possible = find(s->later_sq.p, s->later_sq.n, w->p, w->n) >= 0;
        }
        if (possible) *flag |= F_POSSIBLE;
        for (int k = 0; k < N_OUT; k++)
            if (emit(r, k, i, NULL, 0)) return -1;
        return 0;
    }
    /* _span_at */
    int64_t start = at + anchor_n;
    int64_t want = I->n + rest_n + prm[P_SLACK];
    int64_t window_end = start + want < O->n ? start + want : O->n;
    const uint32_t *win = O->p + start;
    int64_t win_n = window_end > start ? window_end - start : 0;
    int64_t newlines = 0;
    for (int64_t j = 0; j < I->n; j++) newlines += I->p[j] == '\n';
    /* parts: split win on '\n' */
    int64_t parts = 1;
    for (int64_t j = 0; j < win_n; j++) parts += win[j] == '\n';
    int64_t cut = -1;
    if (has_anchor) {
        int64_t a = 0;
        for (int64_t index = 0; index < parts && index < newlines + 1; index++) {
            int64_t b = a;
            while (b < win_n && win[b] != '\n') b++;
            if (normalize(win + a, b - a, &s->norm_a)) return -1;
            if (equal(s->norm_a.p, s->norm_a.n, s->rest_anchor.p, s->rest_anchor.n)) {
                cut = index;
                break;
            }
            a = b + 1;
        }
    }
    int64_t lines = cut >= 0 ? cut : newlines + 1;
    /* span: the first `lines` parts joined (the text up to the lines-th '\n') */
    int64_t span_n = 0;
    if (lines > 0) {
        int64_t seen = 0;
        span_n = win_n;
        for (int64_t j = 0; j < win_n; j++) {
            if (win[j] == '\n' && ++seen == lines) { span_n = j; break; }
        }
    }
    int ended = cut >= 0 || parts > newlines + 1;
    int complete = ended && (cursor <= start || cursor > start + span_n);
    const uint32_t *rs = rest;
    int64_t rs_n = rest_n;
    while (rs_n > 0 && is_line_ws(rs[0])) { rs++; rs_n--; }
    while (rs_n > 0 && is_line_ws(rs[rs_n - 1])) rs_n--;
    int64_t sr_n = span_n;
    while (sr_n > 0 && is_line_ws(win[sr_n - 1])) sr_n--;
    int clean;
    int64_t text_n;
    if (rs_n == 0) {
        clean = 1;
        text_n = span_n;
    } else if (sr_n >= rs_n && memcmp(win + sr_n - rs_n, rs, (size_t)rs_n * 4) == 0) {
        clean = 1;
        text_n = sr_n - rs_n;
    } else {
        clean = 0;
        text_n = span_n;
    }
    /* compare_from: inserted (+ rest when not clean); compare_to: text or span */
    vec *from = &s->work;
    if (vreserve(from, I->n + rest_n + 1)) return -1;
    memcpy(from->p, I->p, (size_t)I->n * 4);
    from->n = I->n;
    if (!clean) {
        memcpy(from->p + from->n, rest, (size_t)rest_n * 4);
        from->n += rest_n;
    }
    int64_t to_n = clean ? text_n : span_n;
    *flag |= F_FOUND | (complete ? F_COMPLETE : 0) | (clean ? F_CLEAN : 0);
    if (accepted && nonblank(I->p, I->n) >= prm[P_MOVED_MIN]) {
        int unchanged = 0;
        if (complete) {
            if (normalize(from->p, from->n, &s->norm_a)) return -1;
            if (normalize(win, to_n, &s->norm_b)) return -1;
            unchanged = equal(s->norm_a.p, s->norm_a.n, s->norm_b.p, s->norm_b.n);
        }
        if (!unchanged) {
            vec *e = &s->elsewhere;
            if (vreserve(e, O->n + 1)) return -1;
            memcpy(e->p, O->p, (size_t)start * 4);
            int64_t after = start + span_n < O->n ? start + span_n : O->n;
            memcpy(e->p + start, O->p + after, (size_t)(O->n - after) * 4);
            e->n = start + (O->n - after);
            if (normalize(e->p, e->n, &s->norm_b)) return -1;
            if (normalize(I->p, I->n, &s->norm_a)) return -1;
            if (find(s->norm_b.p, s->norm_b.n, s->norm_a.p, s->norm_a.n) >= 0) *flag |= F_MOVED;
        }
    }
    *sim = similarity(s, from->p, from->n, win, to_n, prm[P_MAX_COMPARE]);
    if (*sim < 0) return -1;
    if (emit(r, OUT_TEXT, i, win, text_n)) return -1;
    if (emit(r, OUT_FROM, i, from->p, from->n)) return -1;
    if (emit(r, OUT_TO, i, win, to_n)) return -1;
    return 0;
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
    scratch s;
    memset(&s, 0, sizeof(s));
    for (int64_t i = 0; i < n && !r->failed; i++) {
        for (int k = 0; k < N_IN; k++) {
            int64_t a = at_offset(offsets[k], wide[k], i);
            int64_t b = at_offset(offsets[k], wide[k], i + 1);
            if (decode(data[k] + a, b - a, &s.in[k])) {
                r->failed = 1;
                break;
            }
        }
        if (!r->failed && match_row(&s, prm, accepted[i], &flags[i], &sims[i], r, i))
            r->failed = 1;
    }
    for (int k = 0; k < N_IN; k++) free(s.in[k].p);
    free(s.later.p); free(s.norm_a.p); free(s.norm_b.p); free(s.work.p);
    free(s.rest_anchor.p); free(s.key.p); free(s.later_sq.p); free(s.elsewhere.p);
    free(s.row);
    return r;
}
