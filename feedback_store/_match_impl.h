/* Included twice by _match.c: CH is the character type (uint8_t for rows that are all ASCII,
 * where a byte is a code point; uint32_t for decoded code points), FN(x) names the variant. */

typedef struct { CH *p; int64_t n, cap; } FN(vec);
typedef struct { const CH *p; int64_t n; } FN(view);
#define VEC FN(vec)

static int FN(vreserve)(VEC *v, int64_t need) {
    return grow((void **)&v->p, &v->cap, need, sizeof(CH));
}

/* Append characters to an output column as UTF-8. */
static int FN(put)(bytes *out, const CH *p, int64_t n) {
    if (sizeof(CH) == 4) return encode(out, (const uint32_t *)(const void *)p, n);
    if (breserve(out, out->n + n)) return -1;
    for (int64_t i = 0; i < n; i++) out->p[out->n + i] = (uint8_t)p[i];
    out->n += n;
    return 0;
}

static void FN(scratch_free)(void *s);

static int64_t FN(nonblank)(const CH *p, int64_t n) {
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) k += !is_space(p[i]);
    return k;
}

/* First occurrence of needle in hay from 0, or -1 (Python str.find). */
static int64_t FN(find)(const CH *hay, int64_t hn, const CH *needle, int64_t nn) {
    if (nn == 0) return 0;
    if (nn > hn) return -1;
    /* memmem over the bytes (fast); a hit must start on a code point */
    const char *base = (const char *)hay, *end = base + hn * (int64_t)sizeof(CH);
    const char *from = base;
    while (from < end) {
        const char *hit = memmem(from, (size_t)(end - from), needle, (size_t)nn * sizeof(CH));
        if (!hit) return -1;
        if ((hit - base) % (int64_t)sizeof(CH) == 0) return (hit - base) / (int64_t)sizeof(CH);
        from = hit + 1;
    }
    return -1;
}

/* normalize_code: runs of " \t\r\f\v" become one space, one space either side of a line break
 * goes, then leading and trailing spaces and line breaks go. */
static int FN(normalize)(const CH *p, int64_t n, VEC *out) {
    if (FN(vreserve)(out, n + 1)) return -1;
    int64_t k = 0;
    int skip_space = 0;
    for (int64_t i = 0; i < n; i++) {
        CH c = p[i];
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
    if (a) memmove(out->p, out->p + a, (size_t)(k - a) * sizeof(CH));
    out->n = k - a;
    return 0;
}

static int FN(equal)(const CH *a, int64_t an, const CH *b, int64_t bn) {
    return an == bn && (an == 0 || memcmp(a, b, (size_t)an * sizeof(CH)) == 0);
}

static int FN(squeeze_append)(VEC *out, const CH *p, int64_t n) {
    if (FN(vreserve)(out, out->n + n + 1)) return -1;
    for (int64_t i = 0; i < n; i++)
        if (!is_space(p[i])) out->p[out->n++] = p[i];
    return 0;
}

typedef struct {
    VEC later, norm_a, norm_b, work, rest_anchor, key, later_sq, elsewhere;
    int64_t *row;
} FN(scratch);

static double FN(similarity)(FN(scratch) *s, const CH *a, int64_t an, const CH *b,
                         int64_t bn, int64_t max_chars) {
    if (FN(equal)(a, an, b, bn)) return 1.0;
    if (FN(normalize)(a, an < max_chars ? an : max_chars, &s->norm_a)) return -1.0;
    if (FN(normalize)(b, bn < max_chars ? bn : max_chars, &s->norm_b)) return -1.0;
    const CH *x = s->norm_a.p, *y = s->norm_b.p;
    int64_t xn = s->norm_a.n, yn = s->norm_b.n;
    if (FN(equal)(x, xn, y, yn)) return 1.0;
    if (xn < yn) {
        const CH *t = x; x = y; y = t;
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

static int FN(emit)(result *r, int k, int64_t i, const CH *p, int64_t n) {
    if (p && FN(put)(&r->data[k], p, n)) return -1;
    r->offsets[k][i + 1] = r->data[k].n;
    return 0;
}

/* One row; returns -1 on allocation failure. */
static int FN(match_row)(FN(scratch) *s, const FN(view) *in, const int64_t *prm, int accepted, uint8_t *flag, double *sim,
                     result *r, int64_t i) {
    const FN(view) *I = &in[IN_INSERTED], *P = &in[IN_PREFIX], *X = &in[IN_SUFFIX];
    const FN(view) *LP = &in[IN_LATER_PREFIX], *LS = &in[IN_LATER_SUFFIX];
    *flag = 0;
    *sim = 0.0;
    int64_t ptc = prm[P_PREFIX_TAIL];
    int truncated = P->n > ptc;
    const CH *tail = P->p + (P->n > ptc ? P->n - ptc : 0);
    int64_t tail_n = P->n > ptc ? ptc : P->n;
    int64_t lp_start = LP->n > prm[P_LATER_PREFIX] ? LP->n - prm[P_LATER_PREFIX] : 0;
    int64_t cursor = LP->n - lp_start;
    int64_t ls_n = LS->n < prm[P_LATER_SUFFIX] ? LS->n : prm[P_LATER_SUFFIX];
    VEC *O = &s->later;
    if (FN(vreserve)(O, cursor + ls_n + 1)) return -1;
    memcpy(O->p, LP->p + lp_start, (size_t)cursor * sizeof(CH));
    memcpy(O->p + cursor, LS->p, (size_t)ls_n * sizeof(CH));
    O->n = cursor + ls_n;
    /* rest of the cursor line, and the right anchor (first non-blank line after it) */
    int64_t head_n = X->n < prm[P_SUFFIX_HEAD] ? X->n : prm[P_SUFFIX_HEAD];
    int64_t nl = -1;
    for (int64_t j = 0; j < head_n; j++)
        if (X->p[j] == '\n') { nl = j; break; }
    int64_t rest_n = nl < 0 ? head_n : nl;
    const CH *rest = X->p;
    int has_anchor = 0;
    s->rest_anchor.n = 0;
    if (nl >= 0) {
        int64_t a = nl + 1;
        while (a <= head_n) {
            int64_t b = a;
            while (b < head_n && X->p[b] != '\n') b++;
            if (FN(normalize)(X->p + a, b - a, &s->rest_anchor)) return -1;
            if (s->rest_anchor.n > 0) {
                has_anchor = FN(nonblank)(s->rest_anchor.p, s->rest_anchor.n) >= prm[P_RIGHT_MIN];
                break;
            }
            a = b + 1;
        }
    }
    int64_t ac = prm[P_ANCHOR];
    const CH *anchor = tail + (tail_n > ac ? tail_n - ac : 0);
    int64_t anchor_n = ac ? (tail_n > ac ? ac : tail_n) : 0;
    int64_t at = -1;
    if (FN(nonblank)(anchor, anchor_n) >= prm[P_MIN_ANCHOR]) at = FN(find)(O->p, O->n, anchor, anchor_n);
    if (at < 0) {
        /* Not decided here: is a fuzzy anchor or a move possible at all? */
        s->later_sq.n = 0;
        if (FN(squeeze_append)(&s->later_sq, O->p, O->n)) return -1;
        s->key.n = 0;
        int64_t lines_taken = 0;
        /* complete lines of the tail, the last fuzzy_lines non-blank ones, squeezed */
        int64_t end = -1; /* index of the last '\n' of the tail */
        for (int64_t j = tail_n - 1; j >= 0; j--)
            if (tail[j] == '\n') { end = j; break; }
        /* lines run [start, e) for each '\n' at e <= end; skip the first if truncated */
        int64_t stops[64];
        int64_t count = 0;
        VEC *w = &s->work;
        w->n = 0;
        for (int64_t e = end; e >= 0 && lines_taken < prm[P_FUZZY_LINES];) {
            int64_t b = e - 1;
            while (b >= 0 && tail[b] != '\n') b--;
            int64_t start = b + 1;
            if (truncated && start == 0) break; /* the first line of a cut tail is partial */
            if (FN(nonblank)(tail + start, e - start) > 0 && count < 64) {
                stops[count++] = start;
                stops[count++] = e;
                lines_taken++;
            }
            e = b;
        }
        for (int64_t c = count - 2; c >= 0; c -= 2)
            if (FN(squeeze_append)(&s->key, tail + stops[c], stops[c + 1] - stops[c])) return -1;
        int possible = s->key.n > 0 && FN(find)(s->later_sq.p, s->later_sq.n, s->key.p, s->key.n) >= 0;
        if (!possible && accepted && FN(nonblank)(I->p, I->n) >= prm[P_MOVED_MIN]) {
            w->n = 0;
            if (FN(squeeze_append)(w, I->p, I->n)) return -1;
            possible = FN(find)(s->later_sq.p, s->later_sq.n, w->p, w->n) >= 0;
        }
        if (possible) *flag |= F_POSSIBLE;
        for (int k = 0; k < N_OUT; k++)
            if (FN(emit)(r, k, i, NULL, 0)) return -1;
        return 0;
    }
    /* _span_at */
    int64_t start = at + anchor_n;
    int64_t want = I->n + rest_n + prm[P_SLACK];
    int64_t window_end = start + want < O->n ? start + want : O->n;
    const CH *win = O->p + start;
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
            if (FN(normalize)(win + a, b - a, &s->norm_a)) return -1;
            if (FN(equal)(s->norm_a.p, s->norm_a.n, s->rest_anchor.p, s->rest_anchor.n)) {
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
    const CH *rs = rest;
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
    } else if (sr_n >= rs_n && memcmp(win + sr_n - rs_n, rs, (size_t)rs_n * sizeof(CH)) == 0) {
        clean = 1;
        text_n = sr_n - rs_n;
    } else {
        clean = 0;
        text_n = span_n;
    }
    /* compare_from: inserted (+ rest when not clean); compare_to: text or span */
    VEC *from = &s->work;
    if (FN(vreserve)(from, I->n + rest_n + 1)) return -1;
    memcpy(from->p, I->p, (size_t)I->n * sizeof(CH));
    from->n = I->n;
    if (!clean) {
        memcpy(from->p + from->n, rest, (size_t)rest_n * sizeof(CH));
        from->n += rest_n;
    }
    int64_t to_n = clean ? text_n : span_n;
    *flag |= F_FOUND | (complete ? F_COMPLETE : 0) | (clean ? F_CLEAN : 0);
    if (accepted && FN(nonblank)(I->p, I->n) >= prm[P_MOVED_MIN]) {
        int unchanged = 0;
        if (complete) {
            if (FN(normalize)(from->p, from->n, &s->norm_a)) return -1;
            if (FN(normalize)(win, to_n, &s->norm_b)) return -1;
            unchanged = FN(equal)(s->norm_a.p, s->norm_a.n, s->norm_b.p, s->norm_b.n);
        }
        if (!unchanged) {
            VEC *e = &s->elsewhere;
            if (FN(vreserve)(e, O->n + 1)) return -1;
            memcpy(e->p, O->p, (size_t)start * sizeof(CH));
            int64_t after = start + span_n < O->n ? start + span_n : O->n;
            memcpy(e->p + start, O->p + after, (size_t)(O->n - after) * sizeof(CH));
            e->n = start + (O->n - after);
            if (FN(normalize)(e->p, e->n, &s->norm_b)) return -1;
            if (FN(normalize)(I->p, I->n, &s->norm_a)) return -1;
            if (FN(find)(s->norm_b.p, s->norm_b.n, s->norm_a.p, s->norm_a.n) >= 0) *flag |= F_MOVED;
        }
    }
    *sim = FN(similarity)(s, from->p, from->n, win, to_n, prm[P_MAX_COMPARE]);
    if (*sim < 0) return -1;
    if (FN(emit)(r, OUT_TEXT, i, win, text_n)) return -1;
    if (FN(emit)(r, OUT_FROM, i, from->p, from->n)) return -1;
    if (FN(emit)(r, OUT_TO, i, win, to_n)) return -1;
    return 0;
}


static void FN(scratch_free)(void *p) {
    FN(scratch) *s = p;
    free(s->later.p); free(s->norm_a.p); free(s->norm_b.p); free(s->work.p);
    free(s->rest_anchor.p); free(s->key.p); free(s->later_sq.p); free(s->elsewhere.p);
    free(s->row);
}

#undef VEC
