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

typedef struct {
    VEC later, norm_a, norm_b, work, rest_anchor, elsewhere, key_text, line_text;
    ivec key_at, line_at;
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

/* _after_partial: index in line just after the non-whitespace characters of partial (in order,
 * whitespace skipped), plus following line whitespace when partial ended in whitespace; -1. */
static int64_t FN(after_partial)(const CH *line, int64_t n, const CH *partial, int64_t pn) {
    int64_t at = 0;
    int wanted = 0;
    for (int64_t j = 0; j < pn; j++) {
        if (is_space(partial[j])) continue;
        wanted = 1;
        while (at < n && is_space(line[at])) at++;
        if (at >= n || line[at] != partial[j]) return -1;
        at++;
    }
    if (!wanted || is_space(partial[pn - 1]))
        while (at < n && is_line_ws(line[at])) at++;
    return at;
}

/* Append the normalized line [a, b) of p to text; its (start, end, index) to at when not blank.
 * Returns 1 when appended, 0 when blank, -1 on allocation failure. */
static int FN(add_line)(FN(scratch) *s, VEC *text, ivec *at, const CH *p, int64_t a, int64_t b,
                        int64_t index) {
    if (FN(normalize)(p + a, b - a, &s->norm_a)) return -1;
    if (s->norm_a.n == 0) return 0;
    if (FN(vreserve)(text, text->n + s->norm_a.n + 1)) return -1;
    if (ireserve(at, at->n + 3)) return -1;
    memcpy(text->p + text->n, s->norm_a.p, (size_t)s->norm_a.n * sizeof(CH));
    at->p[at->n++] = text->n;
    text->n += s->norm_a.n;
    at->p[at->n++] = text->n;
    at->p[at->n++] = index;
    return 1;
}

/* _fuzzy_start: the insertion point in O by the last complete non-blank lines of the prefix
 * tail (normalized), -1 when there is none, -2 on allocation failure. */
static int64_t FN(fuzzy_start)(FN(scratch) *s, const CH *tail, int64_t tail_n, int truncated,
                               const CH *O, int64_t on, const int64_t *prm) {
    int64_t last_nl = -1;
    for (int64_t j = tail_n - 1; j >= 0; j--)
        if (tail[j] == '\n') { last_nl = j; break; }
    if (last_nl < 0) return -1; /* no complete line */
    const CH *partial = tail + last_nl + 1;
    int64_t partial_n = tail_n - last_nl - 1;
    /* complete lines, newest first: [start, e) ending at each '\n' */
    s->key_text.n = 0;
    s->key_at.n = 0;
    int64_t blanks_after = 0, counting_blanks = 1, taken = 0, chars = 0;
    for (int64_t e = last_nl; e >= 0 && taken < prm[P_FUZZY_LINES];) {
        int64_t b = e - 1;
        while (b >= 0 && tail[b] != '\n') b--;
        int64_t start = b + 1;
        if (truncated && start == 0) break; /* the first line of a cut tail is partial */
        int added = FN(add_line)(s, &s->key_text, &s->key_at, tail, start, e, 0);
        if (added < 0) return -2;
        if (added) {
            counting_blanks = 0;
            taken++;
            chars += FN(nonblank)(tail + start, e - start);
        } else if (counting_blanks) {
            blanks_after++;
        }
        e = b;
    }
    if (taken == 0 || chars < prm[P_MIN_ANCHOR]) return -1;
    /* the later text's non-blank lines, normalized, with their line numbers */
    s->line_text.n = 0;
    s->line_at.n = 0;
    int64_t lines = 0;
    for (int64_t a = 0;; lines++) {
        int64_t b = a;
        while (b < on && O[b] != '\n') b++;
        if (FN(add_line)(s, &s->line_text, &s->line_at, O, a, b, lines) < 0) return -2;
        if (b >= on) { lines++; break; }
        a = b + 1;
    }
    int64_t have = s->line_at.n / 3;
    /* key lines were added newest first: key line q (oldest first) is entry taken - 1 - q */
    for (int64_t k = 0; k + taken <= have; k++) {
        int match = 1;
        for (int64_t q = 0; q < taken && match; q++) {
            const int64_t *kl = s->key_at.p + 3 * (taken - 1 - q);
            const int64_t *ll = s->line_at.p + 3 * (k + q);
            match = FN(equal)(s->key_text.p + kl[0], kl[1] - kl[0], s->line_text.p + ll[0],
                              ll[1] - ll[0]);
        }
        if (!match) continue;
        int64_t target = s->line_at.p[3 * (k + taken - 1) + 2] + 1 + blanks_after;
        if (target >= lines) return -1;
        int64_t line_start = 0, seen = 0;
        for (int64_t j = 0; j < on && seen < target; j++)
            if (O[j] == '\n') { seen++; line_start = j + 1; }
        int64_t line_end = line_start;
        while (line_end < on && O[line_end] != '\n') line_end++;
        int64_t offset = FN(after_partial)(O + line_start, line_end - line_start, partial,
                                           partial_n);
        return offset < 0 ? -1 : line_start + offset;
    }
    return -1;
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
    int64_t start = at >= 0 ? at + anchor_n : -1;
    int fuzzy = 0;
    if (start < 0) {
        start = FN(fuzzy_start)(s, tail, tail_n, truncated, O->p, O->n, prm);
        if (start == -2) return -1;
        fuzzy = start >= 0;
    }
    if (start < 0) {
        /* Nothing stands at the insertion point; the text may have moved. */
        if (accepted && FN(nonblank)(I->p, I->n) >= prm[P_MOVED_MIN]) {
            if (FN(normalize)(O->p, O->n, &s->norm_b)) return -1;
            if (FN(normalize)(I->p, I->n, &s->norm_a)) return -1;
            if (FN(find)(s->norm_b.p, s->norm_b.n, s->norm_a.p, s->norm_a.n) >= 0) *flag |= F_MOVED;
        }
        for (int k = 0; k < N_OUT; k++)
            if (FN(emit)(r, k, i, NULL, 0)) return -1;
        return 0;
    }
    /* _span_at */
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
    *flag |= F_FOUND | (fuzzy ? F_FUZZY : 0) | (complete ? F_COMPLETE : 0) | (clean ? F_CLEAN : 0);
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
    free(s->rest_anchor.p); free(s->elsewhere.p);
    free(s->key_text.p); free(s->line_text.p); free(s->key_at.p); free(s->line_at.p);
    free(s->row);
}

#undef VEC
