/* Dates as people write them, translated into ISO 8601 (2026-11-23) with attention.

     ./build/seq2seq_dates [flags]        (--help lists them, with defaults and ranges)

   DATA. The inputs are real: strftime renders random dates in every UTF-8
   locale that `locale -a` lists (Debian's locales-all installs a few hundred)
   in several formats each: the locale's own date (%x, %Ex), its date and
   time (%c) without the time, and fixed patterns of names and numbers
   ("%A %d %B %Y", "%d %b %Y", ...). Months and weekdays come in dozens of
   languages and scripts, and digits in several (Persian, Burmese, Oriya,
   Chinese numerals; Buddhist and Japanese era years). Without locales-all
   only the C locale's formats remain. Dates run from 1969 to 2068, the years
   a two-digit %y stands for in POSIX strptime. The models read Unicode
   code points (UTF-8 decoded; one token per character, whatever its script)
   and write the ten characters of the ISO date.

   Test sets, never seen in training: held-out dates (10% of the days, drawn
   at random) in the formats trained on, and held-out formats: a tenth of the
   (locale, format) pairs, whole, also on held-out dates. Pairs that render
   every probe date alike count as one format (es_AR and es_CL write %x the
   same way), so a held-out format is one that no training pair writes.

   MODELS, both trained in one run and saved in OUT:
   - rnn: a bidirectional GRU encoder and a GRU decoder with additive
     (Bahdanau) attention, one step at a time (Bahdanau et al., 2015);
   - transformer: a small encoder-decoder Transformer (Vaswani et al., 2017)
     with sinusoidal positions; greedy decoding with the KV cache, or beam
     search (--beam).
   Prints the exact-match accuracy on both test sets, writes heatmaps of the
   decoder's attention over the input for a few test dates (the Transformer's
   is the last decoder layer's cross-attention, averaged over heads), and a
   final "summary: {...}" line.

   USE. --load MODEL translates each line of standard input (or --input TEXT)
   and prints the ISO date; with --steps N it trains N more steps instead. */
#define _POSIX_C_SOURCE 200809L
#define ATTNVAE_IMPLEMENTATION
#include <langinfo.h>
#include <limits.h>
#include <locale.h>
#include "common.h"

#define FIRST_YEAR 1969
#define LAST_YEAR 2068
#define MAX_SRC 64      /* code points of an input, at most */
#define TEXT_BYTES 512  /* bytes of a rendered date, at most */
#define TGT_LEN 10      /* YYYY-MM-DD */
#define N_FORMATS 9
#define NO_DAY INT_MIN  /* the day of a user's input: no target (days before 1970 are negative) */

/* ---- the calendar ----------------------------------------------------------
   Days since 1970-01-01 and back (H. Hinnant's civil-date algorithms). */
static int days_from_civil(int y, int m, int d) {
    int era, yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* The struct tm of a day: every field strftime may read. */
static struct tm tm_of_day(int day) {
    struct tm tm;
    int z = day + 719468, era = (z >= 0 ? z : z - 146096) / 146097, doe = z - era * 146097;
    int yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365, doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int mp = (5 * doy + 2) / 153, d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9, y = yoe + era * 400 + (m <= 2);
    memset(&tm, 0, sizeof tm);
    tm.tm_year = y - 1900;
    tm.tm_mon = m - 1;
    tm.tm_mday = d;
    tm.tm_wday = ((day % 7) + 11) % 7; /* 1970-01-01 was a Thursday */
    tm.tm_yday = day - days_from_civil(y, 1, 1);
    tm.tm_isdst = -1;
    return tm;
}

static void iso_of_day(int day, char out[TGT_LEN + 1]) {
    struct tm tm = tm_of_day(day);
    char text[48];
    snprintf(text, sizeof text, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    memcpy(out, text, TGT_LEN);
    out[TGT_LEN] = 0;
}

/* ---- UTF-8 ------------------------------------------------------------------ */
/* Decodes s into at most cap code points; a malformed byte becomes U+FFFD.
   Returns the count, or -1 if s has more than cap. */
static int utf8_decode(const char *s, uint32_t *cp, int cap) {
    const unsigned char *p = (const unsigned char *)s;
    int n = 0;
    while (*p) {
        uint32_t c = *p, min;
        int extra = c < 0x80 ? 0 : c >= 0xC2 && c < 0xE0 ? 1 : c >= 0xE0 && c < 0xF0 ? 2 : c >= 0xF0 && c < 0xF5 ? 3 : -1, k;
        if (n == cap) return -1;
        if (extra < 0) { cp[n++] = 0xFFFD; p++; continue; }
        c = extra ? c & (0x3F >> extra) : c;
        for (k = 1; k <= extra && (p[k] & 0xC0) == 0x80; k++) c = c << 6 | (p[k] & 0x3F);
        min = extra == 2 ? 0x800 : extra == 3 ? 0x10000 : 0;
        if (k <= extra || c < min || c > 0x10FFFF || (c >= 0xD800 && c < 0xE000)) { cp[n++] = 0xFFFD; p++; continue; }
        cp[n++] = c;
        p += extra + 1;
    }
    return n;
}

/* In place: no-break and thin spaces, tabs and line ends become spaces,
   runs of spaces one, and the ends are trimmed. strftime pads %e with a
   space, locales separate fields with U+00A0, and people type one space. */
static void squeeze_spaces(char *s) {
    unsigned char *r = (unsigned char *)s, *w = r, *start = r;
    while (*r) {
        int n = *r == ' ' || *r == '\t' || *r == '\n' || *r == '\r' ? 1
              : r[0] == 0xC2 && r[1] == 0xA0                                           ? 2 /* U+00A0 */
              : r[0] == 0xE2 && r[1] == 0x80 && (r[2] == 0xAF || r[2] == 0x89)         ? 3 /* U+202F, U+2009 */
                                                                                        : 0;
        if (!n) { *w++ = *r++; continue; }
        r += n;
        if (w > start && w[-1] != ' ') *w++ = ' ';
    }
    while (w > start && w[-1] == ' ') w--;
    *w = 0;
}

/* ---- locales and formats -------------------------------------------------- */
/* The patterns: FMT_C stands for the locale's %c with the time taken out. */
enum { FMT_C = 1 };
static const char *const formats[N_FORMATS] = {"%x", "%c", "%Ex", "%A %d %B %Y", "%d %b %Y", "%e %B %Y", "%B %e, %Y",
                                                "%a %e %b %Y", "%A, %d. %B %Y"};

/* The locale's %c without its time. %x inside is spelled out first. A
   time at the end goes with all after it ("%H時%M分%S秒", " %Z") and with
   the word before it if that stands alone ("kl." in "%Y kl. %H.%M") or is
   a separator ("," in "%Y, %T"); a time before the date goes with the
   separators after it ("%T, %d %B"). */
static int is_separator(const char *from, const char *to) {
    static const char *const separators[] = {",", "\xD8\x8C" /* Arabic comma */, "T" /* ISO 8601 */};
    size_t k;
    for (k = 0; k < sizeof separators / sizeof *separators; k++)
        if (strlen(separators[k]) == (size_t)(to - from) && strncmp(from, separators[k], (size_t)(to - from)) == 0) return 1;
    return 0;
}

static int strip_time(const char *dt_fmt, const char *d_fmt, char *out, size_t cap) {
    char full[TEXT_BYTES];
    const char *tok[TEXT_BYTES + 1];
    int is_conv[TEXT_BYTES], is_time[TEXT_BYTES], keep[TEXT_BYTES], n = 0, first = -1, last = -1, i, date_after = 0;
    size_t len = 0;
    const char *p;
    for (p = dt_fmt; *p;) { /* %x -> the locale's date format */
        int x = p[0] == '%' && (p[1] == 'x' || (p[1] == 'E' && p[2] == 'x'));
        const char *piece = x ? d_fmt : p;
        size_t k = x ? strlen(d_fmt) : 1;
        if (len + k >= sizeof full) return -1;
        memcpy(full + len, piece, k);
        len += k;
        p += x ? (p[1] == 'x' ? 2 : 3) : 1;
    }
    full[len] = 0;
    squeeze_spaces(full);
    for (p = full; *p; n++) { /* tokens: a conversion, or one byte of text */
        tok[n] = p;
        is_conv[n] = *p == '%' && p[1];
        is_time[n] = 0;
        keep[n] = 1;
        if (!is_conv[n]) { p++; continue; }
        p++;
        while (*p && strchr("_-0^#", *p)) p++;
        while (*p >= '0' && *p <= '9') p++;
        if (*p == 'E' || *p == 'O') p++;
        is_time[n] = *p && strchr("HIklMSpPrRTXzZs", *p) != NULL;
        if (*p) p++;
    }
    tok[n] = p;
    for (i = 0; i < n; i++)
        if (is_time[i]) { first = first < 0 ? i : first; last = i; }
    for (i = last + 1; first >= 0 && i < n; i++) date_after |= is_conv[i];
    for (i = first; first >= 0 && i < n && (i <= last || !date_after); i++) keep[i] = 0;
    if (first >= 0 && date_after) /* the separators after the time */
        for (i = last + 1; i < n && !is_conv[i] && strchr(" ,;:", *tok[i]); i++) keep[i] = 0;
    if (first >= 0 && !date_after) { /* the word before the time, if a word of its own or a separator */
        int end, start;
        for (end = first - 1; end >= 0 && !is_conv[end] && *tok[end] == ' '; end--) continue;
        for (start = end; start >= 0 && !is_conv[start] && *tok[start] != ' '; start--) continue;
        if (start < end && (start < 0 || !is_conv[start] || is_separator(tok[start + 1], tok[end + 1])))
            for (i = start + 1; i <= end; i++) keep[i] = 0;
    }
    len = 0;
    for (i = 0; i < n; i++) {
        size_t k = (size_t)(tok[i + 1] - tok[i]);
        if (!keep[i]) continue;
        if (len + k >= cap) return -1;
        memcpy(out + len, tok[i], k);
        len += k;
    }
    out[len] = 0;
    squeeze_spaces(out);
    return out[0] ? 0 : -1;
}

/* A (locale, format) pair: what strftime_l gets. */
typedef struct style {
    int locale, format, held_out;
    char fmt[160];
} style;

typedef struct date_data {
    int n_locales, n_styles, n_formats, n_held_styles;  /* n_formats: distinct ones */
    char (*locale_name)[64];
    locale_t *locale;
    style *styles;
    int *days[2], n_days[2];     /* [0] training days, [1] held-out days */
    int *styles_of[2], n_of[2];  /* [0] training styles, [1] held-out ones */
    uint32_t *vocab;             /* code points the models know, sorted */
    int n_vocab;
} date_data;

/* Renders day in a style, spaces squeezed; 0, or -1 if it does not fit. */
static int render(const date_data *d, const style *s, int day, char out[TEXT_BYTES]) {
    struct tm tm = tm_of_day(day);
    if (strftime_l(out, TEXT_BYTES, s->fmt, &tm, d->locale[s->locale]) == 0) return -1;
    squeeze_spaces(out);
    return 0;
}

/* Probe dates: every month, every weekday, days above 12, years of both
   centuries and of each last digit. */
static int probe_day(int i) {
    return days_from_civil(FIRST_YEAR + (i * 37) % (LAST_YEAR - FIRST_YEAR + 1), i % 12 + 1, 1 + (i * 11) % 28);
}
#define N_PROBES 40

/* A style is usable when its renderings fit and tell dates apart: changing
   the year, the month or the day changes the text. Its signature (FNV-1a of
   the probe renderings) groups styles that write dates alike. */
static int style_check(const date_data *d, const style *s, uint64_t *signature) {
    static const int steps[][3] = {{1, 0, 0}, {10, 0, 0}, {0, 1, 0}, {0, 0, 1}, {0, 0, 10}};
    char a[TEXT_BYTES], b[TEXT_BYTES];
    uint32_t cp[MAX_SRC];
    uint64_t h = 1469598103934665603ull;
    int i, k;
    for (i = 0; i < N_PROBES; i++) {
        struct tm tm = tm_of_day(probe_day(i));
        const char *q;
        if (render(d, s, probe_day(i), a) || utf8_decode(a, cp, MAX_SRC) < 1) return 0;
        for (q = a; *q; q++) h = (h ^ (unsigned char)*q) * 1099511628211ull;
        h = (h ^ 0xff) * 1099511628211ull;
        for (k = 0; k < 5; k++) {
            int y = tm.tm_year + 1900 + steps[k][0], m = tm.tm_mon + 1 + steps[k][1], day = tm.tm_mday + steps[k][2];
            if (y > LAST_YEAR) y -= 2 * steps[k][0];
            if (render(d, s, days_from_civil(y, m, day), b) || strcmp(a, b) == 0) return 0;
        }
    }
    *signature = h;
    return 1;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }
/* Locale names from `locale -a`, sorted (byte order), UTF-8 ones only, "C" first. */
static int list_locales(date_data *d) {
    char line[256], *names[4096];
    int n = 0, i;
    FILE *p = popen("locale -a 2>/dev/null", "r");
    while (p && n < 4096 && fgets(line, sizeof line, p)) {
        line[strcspn(line, "\r\n")] = 0;
        if (line[0] && strcmp(line, "C") && strcmp(line, "POSIX") && (names[n] = strdup(line))) n++;
    }
    if (p) pclose(p);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    d->locale_name = (char(*)[64])calloc((size_t)n + 1, 64);
    d->locale = (locale_t *)calloc((size_t)n + 1, sizeof(locale_t));
    if (d->locale_name && d->locale && (d->locale[0] = newlocale(LC_ALL_MASK, "C", (locale_t)0)) != (locale_t)0) {
        strcpy(d->locale_name[0], "C");
        d->n_locales = 1;
    }
    for (i = 0; i < n; i++) {
        locale_t loc = d->n_locales && strlen(names[i]) < 64 ? newlocale(LC_ALL_MASK, names[i], (locale_t)0) : (locale_t)0;
        if (loc != (locale_t)0 && strcmp(nl_langinfo_l(CODESET, loc), "UTF-8") == 0) {
            strcpy(d->locale_name[d->n_locales], names[i]);
            d->locale[d->n_locales++] = loc;
        } else if (loc != (locale_t)0) {
            freelocale(loc);
        }
        free(names[i]);
    }
    return d->n_locales ? 0 : -1;
}

typedef struct sig_entry { uint64_t signature; int style; } sig_entry;
static int cmp_sig(const void *a, const void *b) {
    const sig_entry *x = (const sig_entry *)a, *y = (const sig_entry *)b;
    return x->signature != y->signature ? (x->signature < y->signature ? -1 : 1) : x->style - y->style;
}

static void data_free(date_data *d) {
    int i;
    for (i = 0; d->locale && i < d->n_locales; i++) freelocale(d->locale[i]);
    free(d->locale);
    free(d->locale_name);
    free(d->styles);
    for (i = 0; i < 2; i++) { free(d->days[i]); free(d->styles_of[i]); }
    free(d->vocab);
    memset(d, 0, sizeof *d);
}

/* Locales, usable styles, the held-out formats and days. Deterministic for a
   seed and a set of installed locales. Returns 0, or -1 after a message. */
static int data_build(date_data *d, double held_formats, double held_days, uint64_t seed) {
    int first = days_from_civil(FIRST_YEAR, 1, 1), n_days = days_from_civil(LAST_YEAR + 1, 1, 1) - first;
    int i, j, k, n_sig = 0, *order = NULL, *group_of = NULL, n_groups = 0;
    unsigned char *held;
    sig_entry *sig = NULL;
    av_rng rng;
    memset(d, 0, sizeof *d);
    av_rng_seed(&rng, seed);
    if (list_locales(d)) { fprintf(stderr, "error: cannot open even the C locale\n"); return -1; }
    d->styles = (style *)calloc((size_t)d->n_locales * N_FORMATS, sizeof(style));
    sig = (sig_entry *)calloc((size_t)d->n_locales * N_FORMATS, sizeof(sig_entry));
    group_of = (int *)calloc((size_t)d->n_locales * N_FORMATS, sizeof(int));
    held = (unsigned char *)calloc((size_t)d->n_locales * N_FORMATS, 1);
    order = (int *)malloc((size_t)(n_days > d->n_locales * N_FORMATS ? n_days : d->n_locales * N_FORMATS) * sizeof(int));
    for (i = 0; i < 2; i++) {
        d->days[i] = (int *)malloc((size_t)n_days * sizeof(int));
        d->styles_of[i] = (int *)malloc((size_t)d->n_locales * N_FORMATS * sizeof(int));
    }
    if (!d->styles || !sig || !group_of || !held || !order || !d->days[0] || !d->days[1] || !d->styles_of[0] || !d->styles_of[1]) {
        fprintf(stderr, "error: out of memory for the data\n");
        free(sig); free(group_of); free(held); free(order);
        return -1;
    }
    for (i = 0; i < d->n_locales; i++)
        for (j = 0; j < N_FORMATS; j++) {
            style *s = &d->styles[d->n_styles];
            s->locale = i;
            s->format = j;
            if (j == FMT_C) {
                if (strip_time(nl_langinfo_l(D_T_FMT, d->locale[i]), nl_langinfo_l(D_FMT, d->locale[i]), s->fmt,
                               sizeof s->fmt))
                    continue;
            } else {
                snprintf(s->fmt, sizeof s->fmt, "%s", formats[j]);
            }
            if (!style_check(d, s, &sig[n_sig].signature)) continue;
            sig[n_sig].style = d->n_styles++;
            n_sig++;
        }
    /* group styles by signature, then hold out whole groups */
    qsort(sig, (size_t)n_sig, sizeof *sig, cmp_sig);
    for (i = 0; i < n_sig; i++) {
        if (i == 0 || sig[i].signature != sig[i - 1].signature) n_groups++;
        group_of[sig[i].style] = n_groups - 1;
    }
    d->n_formats = n_groups;
    ex_shuffle(order, n_groups, &rng);
    k = (int)(held_formats * n_groups + 0.5);
    if (held_formats > 0 && k == 0) k = 1;
    if (k >= n_groups) k = n_groups - 1;
    for (i = 0; i < n_groups; i++) held[order[i]] = i < k;
    for (i = 0; i < d->n_styles; i++) {
        style *s = &d->styles[i];
        s->held_out = held[group_of[i]];
        d->styles_of[s->held_out][d->n_of[s->held_out]++] = i;
    }
    d->n_held_styles = d->n_of[1];
    ex_shuffle(order, n_days, &rng);
    k = (int)(held_days * n_days + 0.5);
    for (i = 0; i < n_days; i++) {
        int h = i < k;
        d->days[h][d->n_days[h]++] = first + order[i];
    }
    free(sig);
    free(group_of);
    free(held);
    free(order);
    return 0;
}

/* ---- tokens ------------------------------------------------------------------ */
/* Source: PAD, UNK (a character no training input has), then the vocabulary.
   Target: the digits, '-', end and begin. */
enum { SRC_PAD = 0, SRC_UNK = 1, SRC_FIRST = 2 };
enum { TGT_DASH = 10, TGT_EOS = 11, TGT_BOS = 12, TGT_VOCAB = 13 };

/* The characters of every training style on 100 dates that cover all days,
   months and years: the source vocabulary, sorted. */
static int vocab_build(date_data *d) {
    unsigned char *seen = (unsigned char *)calloc(0x110000 / 8, 1);
    uint32_t cp[MAX_SRC], c;
    char text[TEXT_BYTES];
    int i, k, m, j;
    if (!seen) { fprintf(stderr, "error: out of memory for the vocabulary\n"); return -1; }
    for (i = 0; i < d->n_of[0]; i++)
        for (k = 0; k < 100; k++) {
            int day = days_from_civil(FIRST_YEAR + k, k % 12 + 1, 1 + (k * 7) % 28 + k % 4);
            if (render(d, &d->styles[d->styles_of[0][i]], day, text)) continue;
            for (m = utf8_decode(text, cp, MAX_SRC), j = 0; j < m; j++) seen[cp[j] >> 3] |= (unsigned char)(1 << (cp[j] & 7));
        }
    for (c = 0, d->n_vocab = 0; c < 0x110000; c++) d->n_vocab += seen[c >> 3] >> (c & 7) & 1;
    if (!(d->vocab = (uint32_t *)malloc((size_t)d->n_vocab * sizeof(uint32_t)))) {
        fprintf(stderr, "error: out of memory for the vocabulary\n");
        free(seen);
        return -1;
    }
    for (c = 0, k = 0; c < 0x110000; c++)
        if (seen[c >> 3] >> (c & 7) & 1) d->vocab[k++] = c;
    free(seen);
    return 0;
}

static int src_token(const uint32_t *vocab, int n_vocab, uint32_t cp) {
    int lo = 0, hi = n_vocab - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (vocab[mid] == cp) return SRC_FIRST + mid;
        if (vocab[mid] < cp) lo = mid + 1;
        else hi = mid - 1;
    }
    return SRC_UNK;
}

static int tgt_token(char ch) { return ch == '-' ? TGT_DASH : ch - '0'; }
static char tgt_char(int token) { return token >= 0 && token < 10 ? (char)('0' + token) : token == TGT_DASH ? '-' : '?'; }

/* ---- batches ------------------------------------------------------------------ */
/* Rows of (style, day) as model inputs: src [B, S] (PAD after each length),
   tgt [B, TGT_LEN + 1] (the ISO characters, then EOS). */
typedef struct batch {
    int B, S, cap;
    int *src, *len, *tgt, *style, *day;
} batch;

static int batch_init(batch *b, int cap) {
    memset(b, 0, sizeof *b);
    b->cap = cap;
    b->src = (int *)malloc((size_t)cap * MAX_SRC * sizeof(int));
    b->len = (int *)malloc((size_t)cap * sizeof(int));
    b->tgt = (int *)malloc((size_t)cap * (TGT_LEN + 1) * sizeof(int));
    b->style = (int *)malloc((size_t)cap * sizeof(int));
    b->day = (int *)malloc((size_t)cap * sizeof(int));
    return b->src && b->len && b->tgt && b->style && b->day ? 0 : -1;
}

static void batch_free(batch *b) {
    free(b->src); free(b->len); free(b->tgt); free(b->style); free(b->day);
    memset(b, 0, sizeof *b);
}

/* Adds a row: the text's characters as tokens of the vocabulary (at most
   MAX_SRC of them) and, unless day is NO_DAY, its target. */
static void batch_add(batch *b, const uint32_t *vocab, int n_vocab, const char *text, int style_id, int day) {
    uint32_t cp[MAX_SRC + 1];
    int r = b->B++, n = utf8_decode(text, cp, MAX_SRC + 1), i;
    char iso[TGT_LEN + 1];
    n = n < 0 || n > MAX_SRC ? MAX_SRC : n;
    for (i = 0; i < n; i++) b->src[r * MAX_SRC + i] = src_token(vocab, n_vocab, cp[i]);
    b->len[r] = n > 0 ? n : 1;
    if (n == 0) b->src[r * MAX_SRC] = SRC_UNK; /* an empty line still has a token */
    b->style[r] = style_id;
    b->day[r] = day;
    if (day != NO_DAY) {
        iso_of_day(day, iso);
        for (i = 0; i < TGT_LEN; i++) b->tgt[r * (TGT_LEN + 1) + i] = tgt_token(iso[i]);
        b->tgt[r * (TGT_LEN + 1) + TGT_LEN] = TGT_EOS;
    }
}

/* Packs the rows to S = the longest length: src becomes [B, S]. */
static void batch_pack(batch *b) {
    int r, i;
    b->S = 1;
    for (r = 0; r < b->B; r++) b->S = b->len[r] > b->S ? b->len[r] : b->S;
    for (r = 0; r < b->B; r++)
        for (i = 0; i < b->S; i++) b->src[r * b->S + i] = i < b->len[r] ? b->src[r * MAX_SRC + i] : SRC_PAD;
}

/* A random example of the split: a style of styles_of[held_style], a day of days[held_day]. */
static void sample_pair(const date_data *d, int held_style, int held_day, av_rng *rng, int *style_id, int *day) {
    *style_id = d->styles_of[held_style][av_rng_u64(rng) % (uint64_t)d->n_of[held_style]];
    *day = d->days[held_day][av_rng_u64(rng) % (uint64_t)d->n_days[held_day]];
}

/* B rows given as (style, day) pairs, in a vocabulary. */
static void batch_fill(batch *b, const date_data *d, const uint32_t *vocab, int n_vocab, const int *style_ids,
                       const int *days, int B) {
    char text[TEXT_BYTES];
    int r;
    b->B = 0;
    for (r = 0; r < B; r++) {
        if (render(d, &d->styles[style_ids[r]], days[r], text)) text[0] = 0; /* checked styles always fit */
        batch_add(b, vocab, n_vocab, text, style_ids[r], days[r]);
    }
    batch_pack(b);
}

/* n random examples of a split (see sample_pair) into style_ids and days,
   sorted by length so that batches of neighbours pad little. */
typedef struct sized { int len, style, day; } sized;
static int cmp_len(const void *a, const void *b) {
    const sized *x = (const sized *)a, *y = (const sized *)b;
    if (x->len != y->len) return x->len - y->len;
    return x->style != y->style ? x->style - y->style : x->day - y->day;
}

static int sample_sorted(const date_data *d, int held_style, int held_day, int n, av_rng *rng, int *style_ids, int *days) {
    sized *rows = (sized *)malloc((size_t)n * sizeof(sized));
    char text[TEXT_BYTES];
    uint32_t cp[MAX_SRC];
    int i;
    if (!rows) { fprintf(stderr, "error: out of memory\n"); return -1; }
    for (i = 0; i < n; i++) {
        sample_pair(d, held_style, held_day, rng, &rows[i].style, &rows[i].day);
        rows[i].len = render(d, &d->styles[rows[i].style], rows[i].day, text) ? 0 : utf8_decode(text, cp, MAX_SRC);
    }
    qsort(rows, (size_t)n, sizeof *rows, cmp_len);
    for (i = 0; i < n; i++) { style_ids[i] = rows[i].style; days[i] = rows[i].day; }
    free(rows);
    return 0;
}

/* ---- the models ---------------------------------------------------------------- */
enum { NET_RNN = 0, NET_TRANSFORMER = 1 };
static const char *const net_names[2] = {"rnn", "transformer"};
/* Sizes, saved with the weights as the buffer "config" so that --load
   rebuilds the same network: kind, then for the rnn embed, hidden (each
   direction of the encoder; the decoder has twice that), attention; for
   the transformer d_model, heads, feed-forward, layers (of each stack). */
enum { CFG_KIND, CFG_A, CFG_B, CFG_C, CFG_D, N_CFG };

typedef struct net {
    int cfg[N_CFG];
    av_model *m;
    const uint32_t *vocab;     /* the source characters it knows: the buffer "src_vocab", decoded */
    uint32_t *vocab_store;
    int n_vocab;
    av_embedding_layer src_embed, tgt_embed;
    av_linear_layer generator;
    av_transformer tf;
    av_rnn encoder;          /* rnn: a bidirectional GRU */
    av_linear_layer bridge;  /* rnn: the decoder's first state from the encoder's last ones */
    av_attention attention;  /* rnn: additive scores */
    av_rnn_cell decoder;     /* rnn: a GRU cell */
} net;

static void net_free(net *n) {
    av_model_free(n->m);
    free(n->vocab_store);
    memset(n, 0, sizeof *n);
}

/* A new network for a vocabulary; parameters drawn from seed. 0, or -1 after a message. */
static int net_new(net *n, const int *cfg, const uint32_t *vocab, int n_vocab, uint64_t seed) {
    av_tensor *config, *voc;
    int i, d = cfg[CFG_A];
    memset(n, 0, sizeof *n);
    memcpy(n->cfg, cfg, sizeof n->cfg);
    n->m = av_model_new(seed);
    n->vocab_store = (uint32_t *)malloc((size_t)n_vocab * sizeof(uint32_t));
    if (!n->m || !n->vocab_store) { fprintf(stderr, "error: out of memory for the model\n"); net_free(n); return -1; }
    memcpy(n->vocab_store, vocab, (size_t)n_vocab * sizeof(uint32_t));
    n->vocab = n->vocab_store;
    n->n_vocab = n_vocab;
    config = av_buffer(n->m, "config", AV_INIT_ZEROS, 0, 1, N_CFG);
    voc = av_buffer(n->m, "src_vocab", AV_INIT_ZEROS, 0, 1, n_vocab);
    if (config) for (i = 0; i < N_CFG; i++) config->data[i] = (float)cfg[i];
    if (voc) for (i = 0; i < n_vocab; i++) voc->data[i] = (float)vocab[i]; /* code points < 2^24 are exact */
    n->src_embed = av_embedding_new(n->m, "src_embed", SRC_FIRST + n_vocab, d);
    n->tgt_embed = av_embedding_new(n->m, "tgt_embed", TGT_VOCAB, d);
    if (cfg[CFG_KIND] == NET_TRANSFORMER) {
        av_transformer_config tc = av_transformer_defaults(d, cfg[CFG_B]);
        tc.dim_feedforward = cfg[CFG_C];
        tc.dropout = 0.0f; /* the data never repeat: nothing to regularise */
        tc.norm_first = 1;
        n->tf = av_transformer_new(n->m, "transformer", &tc, cfg[CFG_D], cfg[CFG_D]);
        n->generator = av_linear_layer_new(n->m, "generator", d, TGT_VOCAB, 1);
    } else {
        int H = cfg[CFG_B];
        n->encoder = av_gru_new(n->m, "encoder", d, H, 1, 1, 0.0f);
        n->bridge = av_linear_layer_new(n->m, "bridge", 2 * H, H, 1);
        n->attention = av_attention_new(n->m, "attention", AV_SCORE_ADDITIVE, H, 2 * H, cfg[CFG_C], 0);
        n->decoder = av_gru_cell_new(n->m, "decoder", d + 2 * H, H);
        n->generator = av_linear_layer_new(n->m, "generator", 3 * H, TGT_VOCAB, 1);
    }
    if (av_model_error(n->m)) { fprintf(stderr, "error: %s\n", av_error()); net_free(n); return -1; }
    return 0;
}

/* Rebuilds a saved network: its config and vocabulary first, then the weights. */
static int net_load(net *n, const char *path, uint64_t seed) {
    static const int lo[N_CFG] = {0, 1, 1, 1, 1}, hi[N_CFG] = {1, 4096, 4096, 65536, AV_MAX_TRANSFORMER_LAYERS};
    av_st_file *f = NULL;
    float cfgf[N_CFG], *vocf = NULL;
    uint32_t *vocab = NULL;
    int cfg[N_CFG], ic, iv, n_vocab = 0, i, rc = -1;
    char why[600] = "";
    if (av_st_open(path, &f)) { fprintf(stderr, "error: %s\n", av_error()); return -1; }
    ic = av_st_find(f, "config");
    iv = av_st_find(f, "src_vocab");
    if (ic < 0 || iv < 0 || av_st_numel(f, ic) != N_CFG || av_st_ndim(f, iv) != 1 || av_st_numel(f, iv) < 1 ||
        av_st_numel(f, iv) > 0x110000)
        snprintf(why, sizeof why, "no config [%d] and src_vocab [n] tensors: not a seq2seq_dates model", N_CFG);
    else if (av_st_read(f, ic, cfgf, N_CFG))
        snprintf(why, sizeof why, "%s", av_error());
    for (i = 0; !why[0] && i < N_CFG; i++) {
        cfg[i] = (int)cfgf[i];
        if (!(cfgf[i] == cfg[i] && cfg[i] >= lo[i] && cfg[i] <= hi[i]))
            snprintf(why, sizeof why, "config[%d] is %g, not a whole number in %d..%d", i, (double)cfgf[i], lo[i], hi[i]);
    }
    if (!why[0]) {
        n_vocab = (int)av_st_numel(f, iv);
        vocf = (float *)malloc((size_t)n_vocab * sizeof(float));
        vocab = (uint32_t *)malloc((size_t)n_vocab * sizeof(uint32_t));
        if (!vocf || !vocab) snprintf(why, sizeof why, "out of memory");
        else if (av_st_read(f, iv, vocf, n_vocab)) snprintf(why, sizeof why, "%s", av_error());
    }
    for (i = 0; !why[0] && i < n_vocab; i++) {
        vocab[i] = (uint32_t)vocf[i];
        if (!(vocf[i] >= 0 && vocf[i] < 0x110000 && (float)vocab[i] == vocf[i] && (i == 0 || vocab[i] > vocab[i - 1])))
            snprintf(why, sizeof why, "src_vocab[%d] is %g: not increasing code points", i, (double)vocf[i]);
    }
    if (!why[0] && cfg[CFG_KIND] == NET_TRANSFORMER && cfg[CFG_A] % cfg[CFG_B])
        snprintf(why, sizeof why, "d_model %d is not a multiple of the %d heads", cfg[CFG_A], cfg[CFG_B]);
    av_st_close(f);
    if (why[0]) fprintf(stderr, "error: %s: %s\n", path, why);
    else if (net_new(n, cfg, vocab, n_vocab, seed) == 0 && (rc = av_model_load(n->m, path)) != 0) {
        fprintf(stderr, "error: %s\n", av_error());
        net_free(n);
    }
    free(vocf);
    free(vocab);
    return rc ? -1 : 0;
}

static int net_save(const net *n, const char *path) {
    if (av_model_save(n->m, path) == 0) return 0;
    fprintf(stderr, "error: %s\n", av_error());
    return -1;
}

/* ---- the Transformer ---- */
/* token embeddings plus sinusoidal positions from start: [B, T, d] */
static av_tensor *tf_embed(av_ctx *c, const av_embedding_layer *e, const int *ids, int B, int T, int start) {
    int d = e->weight->shape[1];
    return av_add(c, av_embedding_forward(c, e, ids, B, T), av_sinusoidal_positions(c, T, d, start));
}

/* The encoder's output [B, S, d] and the source's padding mask [B, S]. */
static av_tensor *tf_encode(av_ctx *c, const net *n, const batch *b, av_tensor **pad) {
    *pad = av_reshape(c, av_key_padding_mask(c, b->len, b->B, b->S), 2, b->B, b->S);
    return av_transformer_encoder_forward(c, &n->tf.encoder, tf_embed(c, &n->src_embed, b->src, b->B, b->S, 0), NULL, *pad, 0);
}

/* The decoder's inputs for teacher forcing: BOS then the first TGT_LEN outputs of each row. */
static int *shifted_right(av_ctx *c, const int *out, int B) {
    int *in = (int *)av_ctx_alloc(c, (size_t)B * (TGT_LEN + 1) * sizeof(int)), r, t;
    for (r = 0; r < B; r++)
        for (t = 0; t <= TGT_LEN; t++) in[r * (TGT_LEN + 1) + t] = t ? out[r * (TGT_LEN + 1) + t - 1] : TGT_BOS;
    return in;
}

/* logits [B (TGT_LEN + 1), TGT_VOCAB] of teacher-forced decoding */
static av_tensor *tf_logits(av_ctx *c, const net *n, const batch *b) {
    av_tensor *pad, *memory = tf_encode(c, n, b, &pad), *y;
    y = tf_embed(c, &n->tgt_embed, shifted_right(c, b->tgt, b->B), b->B, TGT_LEN + 1, 0);
    y = av_transformer_decoder_forward(c, &n->tf.decoder, y, memory, NULL, NULL, 1, NULL, pad);
    return av_reshape(c, av_linear_forward(c, &n->generator, y), 2, b->B * (TGT_LEN + 1), TGT_VOCAB);
}

/* The last decoder layer's cross-attention, averaged over heads, for the
   decoder inputs `in` [B, TGT_LEN + 1]: weights [B, TGT_LEN + 1, S]. The
   layers before it run whole; of the last, the self-attention block runs
   as av_decoder_layer_forward runs it (pre-LN, no dropout), then the
   cross-attention gives its weights. */
static void tf_cross_weights(av_ctx *c, const net *n, const batch *b, const int *in, float *weights) {
    const av_transformer_decoder *dec = &n->tf.decoder;
    const av_decoder_layer *last = &dec->layers[dec->num_layers - 1];
    av_tensor *pad, *memory = tf_encode(c, n, b, &pad), *x = tf_embed(c, &n->tgt_embed, in, b->B, TGT_LEN + 1, 0), *h, *w;
    int i;
    for (i = 0; i < dec->num_layers - 1; i++) x = av_decoder_layer_forward(c, &dec->layers[i], x, memory, NULL, NULL, 1, NULL, pad);
    h = av_layer_norm_forward(c, &last->norm1, x);
    x = av_add(c, x, av_mha_forward(c, &last->self_attn, h, h, h, NULL, NULL, 1, NULL));
    h = av_layer_norm_forward(c, &last->norm2, x);
    av_mha_forward(c, &last->multihead_attn, h, memory, memory, pad, NULL, 0, &w);
    w = av_mean(c, w, 1, 0);
    memcpy(weights, w->data, (size_t)w->size * sizeof(float));
}

/* ---- the recurrent network with attention (Bahdanau et al., 2015) ---- */
/* The encoder's outputs h [B, S, 2H] as the attention's memory (keys W1 h
   made once), and the decoder's first state tanh(bridge [h_fwd; h_bwd])
   [B, H] from the encoder's final states. */
static av_attn_memory rnn_encode(av_ctx *c, const net *n, const batch *b, av_tensor **s0) {
    static const int to_batch_first[3] = {1, 0, 2};
    int H = n->cfg[CFG_B];
    av_tensor *h_n, *x = av_embedding_forward(c, &n->src_embed, b->src, b->B, b->S);
    av_tensor *h = av_rnn_forward(c, &n->encoder, x, NULL, NULL, b->len, &h_n, NULL); /* h_n [2, B, H] */
    av_tensor *last = av_reshape(c, av_permute(c, h_n, to_batch_first), 2, b->B, 2 * H);
    *s0 = av_tanh(c, av_linear_forward(c, &n->bridge, last));
    return av_attention_memory(c, &n->attention, h, NULL, b->len);
}

/* One decoder step: the context from state s [B, H] attending over the
   memory, then s' = GRU([embedding of the last token; context], s).
   Returns s'; *features gets [s'; context] [B, 3H], the generator's input,
   and *weights (if not NULL) the attention [B, S]. */
static av_tensor *rnn_step_core(av_ctx *c, const net *n, const av_attn_memory *mem, av_tensor *s, av_tensor *embedded,
                                av_tensor **features, av_tensor **weights) {
    av_tensor *context = av_attention_forward(c, &n->attention, mem, s, weights), *parts[2];
    parts[0] = embedded;
    parts[1] = context;
    s = av_gru_cell(c, &n->decoder, av_concat(c, parts, 2, 1), s);
    parts[0] = s;
    *features = av_concat(c, parts, 2, 1);
    return s;
}

/* Teacher-forced decoding of the inputs `in` [B, TGT_LEN + 1]: logits
   [B (TGT_LEN + 1), TGT_VOCAB]; weights, if not NULL, gets each step's
   attention [B, TGT_LEN + 1, S]. */
static av_tensor *rnn_forced(av_ctx *c, const net *n, const batch *b, const int *in, float *weights) {
    av_tensor *s, *features[TGT_LEN + 1], *f, *w, *embedded;
    av_attn_memory mem = rnn_encode(c, n, b, &s);
    int t, r, E = n->cfg[CFG_A];
    embedded = av_embedding_forward(c, &n->tgt_embed, in, b->B, TGT_LEN + 1);
    for (t = 0; t <= TGT_LEN; t++) {
        s = rnn_step_core(c, n, &mem, s, av_reshape(c, av_slice(c, embedded, 1, t, t + 1), 2, b->B, E), &f, &w);
        features[t] = av_reshape(c, f, 3, b->B, 1, f->shape[1]);
        for (r = 0; weights && r < b->B; r++)
            memcpy(weights + ((size_t)r * (TGT_LEN + 1) + t) * b->S, w->data + (size_t)r * b->S, (size_t)b->S * sizeof(float));
    }
    f = av_concat(c, features, TGT_LEN + 1, 1);
    return av_reshape(c, av_linear_forward(c, &n->generator, f), 2, b->B * (TGT_LEN + 1), TGT_VOCAB);
}

/* ---- decoding ---------------------------------------------------------------------- */
/* What av_decode_greedy and av_decode_beam step: the encoder's side of the
   rows, made once, and the decoder's state. */
typedef struct dec_state {
    const net *n;
    int rows, t;              /* t: tokens fed so far */
    av_tensor *pad;           /* transformer: the source's padding mask [rows, S] */
    av_decoder_cache cache;   /* transformer: the keys and values of every layer */
    av_attn_memory mem;       /* rnn: the encoder's outputs and their keys */
    float *s, *spare;         /* rnn: the decoder's state [rows, H] across steps, and room to reorder it */
} dec_state;

static av_tensor *tf_step(av_ctx *c, const int *tokens, int rows, void *state) {
    dec_state *st = (dec_state *)state;
    av_tensor *x = tf_embed(c, &st->n->tgt_embed, tokens, rows, 1, st->t++);
    x = av_transformer_decoder_step(c, &st->n->tf.decoder, x, &st->cache, st->pad);
    return av_reshape(c, av_linear_forward(c, &st->n->generator, x), 2, rows, TGT_VOCAB);
}

static void tf_reorder(void *state, const int *rows, int n) { av_decoder_cache_reorder(&((dec_state *)state)->cache, rows, n); }

static av_tensor *rnn_step(av_ctx *c, const int *tokens, int rows, void *state) {
    dec_state *st = (dec_state *)state;
    const net *n = st->n;
    int H = n->cfg[CFG_B];
    av_tensor *f, *s = av_from(c, st->s, 2, rows, H);
    s = rnn_step_core(c, n, &st->mem, s, av_embedding_forward(c, &n->tgt_embed, tokens, 0, rows), &f, NULL);
    memcpy(st->s, s->data, (size_t)rows * H * sizeof(float));
    return av_linear_forward(c, &n->generator, f);
}

static void rnn_reorder(void *state, const int *rows, int n) {
    dec_state *st = (dec_state *)state;
    size_t H = (size_t)st->n->cfg[CFG_B];
    float *t = st->s;
    int r;
    for (r = 0; r < n; r++) memcpy(st->spare + r * H, st->s + rows[r] * H, H * sizeof(float));
    st->s = st->spare;
    st->spare = t;
}

/* x [1, ...] repeated k times along the first axis (NULL stays NULL) */
static av_tensor *repeat_row(av_ctx *c, av_tensor *x, int k) {
    av_tensor **xs = (av_tensor **)av_ctx_alloc(c, (size_t)k * sizeof(av_tensor *));
    int i;
    for (i = 0; i < k; i++) xs[i] = x;
    return k == 1 || !x ? x : av_concat(c, xs, k, 0);
}

static void dec_end(dec_state *st) {
    av_decoder_cache_free(&st->cache);
    free(st->s < st->spare ? st->s : st->spare); /* one block holds both */
}

/* Encodes b's rows (a single row repeated `repeat` times, for a beam) and
   readies the decoder. 0, or -1 after a message. */
static int dec_begin(av_ctx *c, const net *n, const batch *b, int repeat, dec_state *st, av_decoder *d) {
    memset(st, 0, sizeof *st);
    st->n = n;
    st->rows = b->B * repeat;
    d->state = st;
    if (n->cfg[CFG_KIND] == NET_RNN) {
        size_t H = (size_t)n->cfg[CFG_B];
        av_tensor *s0;
        st->mem = rnn_encode(c, n, b, &s0);
        st->mem.values = repeat_row(c, st->mem.values, repeat);
        st->mem.keys = repeat_row(c, st->mem.keys, repeat);
        st->mem.mask = repeat_row(c, st->mem.mask, repeat);
        s0 = repeat_row(c, s0, repeat);
        if (!(st->s = (float *)malloc(2 * (size_t)st->rows * H * sizeof(float)))) {
            fprintf(stderr, "error: out of memory\n");
            return -1;
        }
        st->spare = st->s + (size_t)st->rows * H;
        memcpy(st->s, s0->data, (size_t)st->rows * H * sizeof(float));
        d->step = rnn_step;
        d->reorder = rnn_reorder;
        return 0;
    }
    {
        av_tensor *memory = repeat_row(c, tf_encode(c, n, b, &st->pad), repeat);
        st->pad = repeat_row(c, st->pad, repeat);
        if (av_decoder_cache_init(&st->cache, &n->tf.decoder, st->rows, TGT_LEN + 1) ||
            av_decoder_cache_set_memory(c, &st->cache, &n->tf.decoder, memory)) {
            fprintf(stderr, "error: %s\n", av_error());
            dec_end(st);
            return -1;
        }
    }
    d->step = tf_step;
    d->reorder = tf_reorder;
    return 0;
}

/* Decodes b's rows into out [B, TGT_LEN + 1] (-1 after EOS): greedy, or
   with beam > 1 a beam search for each row. weights, if not NULL, gets the
   attention over the input for each output [B, TGT_LEN + 1, b->S]: the
   rnn's, or the transformer's last cross-attention averaged over heads. */
static int net_decode(av_ctx *c, const net *n, const batch *b, int beam, int *out, float *weights) {
    int prev_grad = av_set_grad_enabled(c, 0), prev_train = av_set_training(c, 0), r, t, rc = 0;
    int *lengths = (int *)av_ctx_alloc(c, (size_t)b->B * sizeof(int)), *in;
    dec_state st;
    av_decoder d;
    if (beam == 1 && (rc = dec_begin(c, n, b, 1, &st, &d)) == 0) {
        if ((rc = av_decode_greedy(c, &d, b->B, TGT_BOS, TGT_EOS, TGT_LEN + 1, out, lengths)) != 0)
            fprintf(stderr, "error: %s\n", av_error());
        dec_end(&st);
    }
    for (r = 0; beam > 1 && r < b->B && !rc; r++) {
        batch one = *b;
        one.B = 1;
        one.src = b->src + (size_t)r * b->S;
        one.len = b->len + r;
        if ((rc = dec_begin(c, n, &one, beam, &st, &d)) == 0) {
            av_decode_beam(c, &d, beam, TGT_BOS, TGT_EOS, TGT_LEN + 1, 0.0f, out + r * (TGT_LEN + 1), NULL);
            dec_end(&st);
        }
    }
    if (!rc && weights) { /* teacher-forced on the outputs: BOS, then each output (EOS after the end) */
        in = (int *)av_ctx_alloc(c, (size_t)b->B * (TGT_LEN + 1) * sizeof(int));
        for (r = 0; r < b->B; r++)
            for (t = 0; t <= TGT_LEN; t++) {
                int prev = t ? out[r * (TGT_LEN + 1) + t - 1] : TGT_BOS;
                in[r * (TGT_LEN + 1) + t] = prev < 0 ? TGT_EOS : prev;
            }
        if (n->cfg[CFG_KIND] == NET_RNN) rnn_forced(c, n, b, in, weights);
        else tf_cross_weights(c, n, b, in, weights);
    }
    av_set_grad_enabled(c, prev_grad);
    av_set_training(c, prev_train);
    return rc;
}

/* ---- training ------------------------------------------------------------------------ */
static av_tensor *net_logits(av_ctx *c, const net *n, const batch *b) {
    return n->cfg[CFG_KIND] == NET_RNN ? rnn_forced(c, n, b, shifted_right(c, b->tgt, b->B), NULL) : tf_logits(c, n, b);
}

/* Cross-entropy against targets smoothed by eps: (1 - eps) CE + eps mean(-log p). */
static av_tensor *smoothed_loss(av_ctx *c, av_tensor *logits, const int *labels, float eps) {
    av_tensor *loss = av_cross_entropy(c, logits, labels, AV_MEAN);
    if (eps == 0.0f) return loss;
    return av_add(c, av_scale(c, loss, 1.0f - eps), av_scale(c, av_mean_all(c, av_log_softmax(c, logits)), -eps));
}

/* Rows of b whose every output token is the argmax of its logits. */
static int exact_rows(const av_tensor *logits, const batch *b) {
    int r, t, k, exact = 0;
    for (r = 0; r < b->B; r++) {
        int ok = 1;
        for (t = 0; t <= TGT_LEN && ok; t++) {
            const float *row = logits->data + (size_t)(r * (TGT_LEN + 1) + t) * TGT_VOCAB;
            int best = 0;
            for (k = 1; k < TGT_VOCAB; k++) best = row[k] > row[best] ? k : best;
            ok = best == b->tgt[r * (TGT_LEN + 1) + t];
        }
        exact += ok;
    }
    return exact;
}

typedef struct train_opts { int steps, batch, warmup; float lr, smoothing, clip; } train_opts;

/* Trains on fresh random training examples each step, Adam with warm-up
   and a cosine decay. The examples come in pools of POOL batches sorted by
   length (a batch pads little), the batches of a pool in random order.
   Returns 0, or -1 after a message. */
#define POOL 16
static int train(av_ctx *c, net *n, const date_data *d, const train_opts *o, av_rng *rng, batch *b, double *seconds) {
    const char *name = net_names[n->cfg[CFG_KIND]];
    av_optim opt = av_adam(o->lr);
    double t0 = ex_now(), loss_avg = 0, exact_avg = 0, seen = 0;
    int *styles = (int *)malloc((size_t)o->batch * POOL * 2 * sizeof(int)), *days = styles + o->batch * POOL, order[POOL];
    int step, rc = 0;
    if (!styles) { fprintf(stderr, "error: out of memory\n"); return -1; }
    for (step = 0; step < o->steps && !rc; step++) {
        av_tensor *logits, *loss;
        double exact;
        char info[96];
        int at;
        if (step % POOL == 0) {
            if (sample_sorted(d, 0, 0, o->batch * POOL, rng, styles, days)) { rc = -1; break; }
            ex_shuffle(order, POOL, rng);
        }
        at = o->batch * order[step % POOL];
        av_ctx_reset(c);
        batch_fill(b, d, n->vocab, n->n_vocab, styles + at, days + at, o->batch);
        logits = net_logits(c, n, b);
        loss = smoothed_loss(c, logits, b->tgt, o->smoothing);
        if (!isfinite(av_item(loss))) {
            fprintf(stderr, "\nerror: %s: the loss is not finite at step %d\n", name, step);
            rc = -1;
            break;
        }
        exact = (double)exact_rows(logits, b) / b->B;
        loss_avg = step ? 0.98 * loss_avg + 0.02 * av_item(loss) : av_item(loss);
        exact_avg = step ? 0.98 * exact_avg + 0.02 * exact : exact;
        av_model_zero_grad(n->m);
        av_backward(c, loss);
        if (o->clip > 0) av_clip_grad_norm(n->m, o->clip);
        opt.lr = av_lr_warmup_cosine(step, o->warmup, o->steps, o->lr, o->lr * 0.02);
        if (av_optim_step(n->m, &opt)) { fprintf(stderr, "\nerror: %s: %s\n", name, av_error()); rc = -1; }
        seen += b->B;
        snprintf(info, sizeof info, "loss %.4f exact %.3f", loss_avg, exact_avg);
        if (step % 20 == 0 || step + 1 == o->steps) ex_progress(name, step + 1, o->steps, info);
        if ((step + 1) % (o->steps / 10 > 0 ? o->steps / 10 : 1) == 0 && step + 1 < o->steps && !isatty(2))
            printf("%-11s step %6d/%d  loss %.4f  exact %.3f (training batches)  %.0f dates/s\n", name, step + 1, o->steps,
                   loss_avg, exact_avg, seen / (ex_now() - t0));
    }
    *seconds = ex_now() - t0;
    if (!rc) printf("%-11s trained %d steps of %d in %.0f s: loss %.4f, %.0f dates/s\n", name, o->steps, o->batch, *seconds,
                    loss_avg, seen / *seconds);
    free(styles);
    return rc;
}

/* ---- evaluation -------------------------------------------------------------------- */
typedef struct eval_set { int n, *style, *day; double best; } eval_set;

/* Some inputs are ambiguous: "05/06/20" is 5 June 2020 in en_GB and 6 May
   in en_US. Of the dates whose year (two digits), month and day are this
   day's in another order, this counts the training styles that write each
   one as text; a model that knew the training data by heart would answer
   the date most of them mean. Returns that answer's expected exactness: 1
   when the day wins (or no training style writes any of them so), 1/k for
   a tie of k, 0 when another date wins. */
static double best_possible(const date_data *d, const char *text, int day) {
    static const int order[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    struct tm tm = tm_of_day(day);
    int field[3], date[6], votes[6], n = 0, best = 0, ties = 0, mine = 0, i, k;
    char other[TEXT_BYTES];
    field[0] = (tm.tm_year + 1900) % 100;
    field[1] = tm.tm_mon + 1;
    field[2] = tm.tm_mday;
    for (k = 0; k < 6; k++) {
        int yy = field[order[k][0]], m = field[order[k][1]], dd = field[order[k][2]], y = yy >= FIRST_YEAR % 100 ? 1900 + yy : 2000 + yy;
        int when = days_from_civil(y, m, dd), seen = 0;
        struct tm back = tm_of_day(when);
        if (m < 1 || m > 12 || dd < 1 || back.tm_mday != dd) continue; /* not a date */
        for (i = 0; i < n; i++) seen |= date[i] == when;
        if (!seen) date[n++] = when;
    }
    for (k = 0; k < n; k++) {
        votes[k] = 0;
        for (i = 0; n > 1 && i < d->n_of[0]; i++)
            votes[k] += render(d, &d->styles[d->styles_of[0][i]], date[k], other) == 0 && strcmp(other, text) == 0;
        if (date[k] == day) mine = votes[k];
        best = votes[k] > best ? votes[k] : best;
    }
    for (k = 0; k < n; k++) ties += votes[k] == best;
    return n == 1 || best == 0 ? 1.0 : mine == best ? 1.0 / ties : 0.0;
}

/* n held-out days in the training styles (held_style 0) or the held-out
   ones (1), and the best exact-match share that any model could reach on them. */
static int eval_set_make(eval_set *e, const date_data *d, int held_style, int n, av_rng *rng) {
    char text[TEXT_BYTES];
    int i;
    e->n = n;
    e->best = 0;
    if (!(e->style = (int *)malloc((size_t)n * 2 * sizeof(int)))) { fprintf(stderr, "error: out of memory\n"); return -1; }
    e->day = e->style + n;
    if (sample_sorted(d, held_style, 1, n, rng, e->style, e->day)) return -1;
    for (i = 0; i < n; i++)
        e->best += render(d, &d->styles[e->style[i]], e->day[i], text) ? 1.0 : best_possible(d, text, e->day[i]);
    e->best /= n;
    return 0;
}

/* The decoded ISO text of row r: the characters before EOS. */
static void output_text(const int *out, int r, char text[TGT_LEN + 2]) {
    int t;
    for (t = 0; t <= TGT_LEN && out[r * (TGT_LEN + 1) + t] >= 0 && out[r * (TGT_LEN + 1) + t] != TGT_EOS; t++)
        text[t] = tgt_char(out[r * (TGT_LEN + 1) + t]);
    text[t] = 0;
}

/* Exact-match accuracy of the decoded dates; prints the first `misses` misses. -1 on an error. */
static double evaluate(av_ctx *c, const net *n, const date_data *d, const eval_set *e, int beam, int misses,
                       batch *b, const char *label) {
    int start, step = 200, exact = 0, shown = 0, r, t;
    int *out = (int *)malloc((size_t)step * (TGT_LEN + 1) * sizeof(int));
    char got[TGT_LEN + 2], want[TGT_LEN + 1], text[TEXT_BYTES];
    if (!out) { fprintf(stderr, "error: out of memory\n"); return -1; }
    for (start = 0; start < e->n; start += step) {
        int count = e->n - start < step ? e->n - start : step;
        av_ctx_reset(c);
        batch_fill(b, d, n->vocab, n->n_vocab, e->style + start, e->day + start, count);
        if (net_decode(c, n, b, beam, out, NULL)) { free(out); return -1; }
        for (r = 0; r < count; r++) {
            int ok = 1;
            for (t = 0; t <= TGT_LEN && ok; t++) ok = out[r * (TGT_LEN + 1) + t] == b->tgt[r * (TGT_LEN + 1) + t];
            exact += ok;
            if (!ok && shown < misses) {
                const style *s = &d->styles[b->style[r]];
                render(d, s, b->day[r], text);
                output_text(out, r, got);
                iso_of_day(b->day[r], want);
                printf("  miss (%s): %s '%s': \"%s\" -> %s, not %s\n", label, d->locale_name[s->locale], s->fmt, text, got,
                       want);
                shown++;
            }
        }
        ex_progress(label, start + count, e->n, "");
    }
    free(out);
    return (double)exact / e->n;
}

/* ---- attention heatmaps --------------------------------------------------------- */
/* One panel per example, stacked: a caption, the input's characters along
   the top (a box for a character outside ASCII), the output's ten down the
   left, and each cell shaded by the weight that output gave that input
   character, from white (0) to dark blue (1). */
#define CELL 16
#define FONT_SCALE 2
typedef struct panel {
    char caption[200], input[TEXT_BYTES], output[TGT_LEN + 2];
    int S;
    float w[(TGT_LEN + 1) * MAX_SRC]; /* [output, input] */
} panel;

static int write_heatmap(const char *path, const panel *p, int n) {
    static const unsigned char ink[3] = {0, 0, 0}, grey[3] = {90, 90, 90};
    const int caption_h = 24, label_h = CELL + 4, left = CELL + 8, panel_h = caption_h + label_h + TGT_LEN * CELL + 16;
    int width = 0, height = n * panel_h, i, rc;
    unsigned char *pix;
    for (i = 0; i < n; i++) {
        int w = left + p[i].S * CELL + 8, wc = ex_text_width(p[i].caption, FONT_SCALE) + 16;
        width = w > width ? w : width;
        width = wc > width ? wc : width;
    }
    if (!(pix = (unsigned char *)malloc((size_t)width * height * 3))) { fprintf(stderr, "error: out of memory\n"); return -1; }
    memset(pix, 255, (size_t)width * height * 3);
    for (i = 0; i < n; i++) {
        int y0 = i * panel_h, top = y0 + caption_h + label_h, t, j;
        const char *s = p[i].input;
        char one[8];
        ex_draw_text(pix, width, height, 8, y0 + 6, p[i].caption, grey, FONT_SCALE);
        for (j = 0; j < p[i].S && *s; j++) { /* the input, one character a column */
            const char *from = s;
            ex_next_glyph(&s);
            memcpy(one, from, (size_t)(s - from) < sizeof one ? (size_t)(s - from) : sizeof one - 1);
            one[(size_t)(s - from) < sizeof one ? (size_t)(s - from) : sizeof one - 1] = 0;
            ex_draw_text(pix, width, height, left + j * CELL + 3, top - label_h + 2, one, ink, FONT_SCALE);
        }
        for (t = 0; t < TGT_LEN && p[i].output[t]; t++) {
            one[0] = p[i].output[t];
            one[1] = 0;
            ex_draw_text(pix, width, height, 4, top + t * CELL + 1, one, ink, FONT_SCALE);
            for (j = 0; j < p[i].S; j++) {
                float v = p[i].w[t * p[i].S + j];
                unsigned char rgb[3];
                v = v > 0 ? (v < 1 ? v : 1) : 0;
                rgb[0] = (unsigned char)(255 - v * (255 - 8));
                rgb[1] = (unsigned char)(255 - v * (255 - 48));
                rgb[2] = (unsigned char)(255 - v * (255 - 107));
                ex_fill_rect(pix, width, height, left + j * CELL, top + t * CELL, CELL - 1, CELL - 1, rgb);
            }
        }
    }
    rc = ex__write_png(path, width, height, 3, pix);
    free(pix);
    return rc;
}

/* Examples to draw, on held-out days: a few locales and formats if they
   are installed, a held-out format, then any training formats up to max. */
static int heatmap_examples(const date_data *d, int *style_ids, int *days, int max) {
    static const struct { const char *locale; int format; } wanted[] = {
        {"en_US.utf8", 0}, {"de_DE.utf8", 3}, {"ru_RU.utf8", FMT_C}, {"ja_JP.utf8", 0}};
    int n = 0, i, k;
    for (k = 0; k < (int)(sizeof wanted / sizeof *wanted) && n < max - 1; k++)
        for (i = 0; i < d->n_styles; i++)
            if (d->styles[i].format == wanted[k].format && strcmp(d->locale_name[d->styles[i].locale], wanted[k].locale) == 0) {
                style_ids[n++] = i;
                break;
            }
    if (d->n_of[1] && n < max) style_ids[n++] = d->styles_of[1][0];
    for (i = 0; n < max && i < d->n_of[0]; i++) style_ids[n++] = d->styles_of[0][i];
    for (i = 0; i < n; i++) days[i] = d->days[1][i % d->n_days[1]];
    return n;
}

/* Decodes the examples with their attention and writes the panels to path. */
static int draw_attention(av_ctx *c, const net *n, const date_data *d, batch *b, const char *path) {
    enum { MAX_PANELS = 5 };
    int style_ids[MAX_PANELS], days[MAX_PANELS], out[MAX_PANELS * (TGT_LEN + 1)], k, i, t, j, rc;
    panel *p = (panel *)calloc(MAX_PANELS, sizeof(panel));
    float *w = (float *)malloc((size_t)MAX_PANELS * (TGT_LEN + 1) * MAX_SRC * sizeof(float));
    if (!p || !w) { free(p); free(w); fprintf(stderr, "error: out of memory\n"); return -1; }
    k = heatmap_examples(d, style_ids, days, MAX_PANELS);
    av_ctx_reset(c);
    batch_fill(b, d, n->vocab, n->n_vocab, style_ids, days, k);
    rc = net_decode(c, n, b, 1, out, w);
    for (i = 0; i < k && !rc; i++) {
        const style *s = &d->styles[style_ids[i]];
        render(d, s, days[i], p[i].input);
        output_text(out, i, p[i].output);
        snprintf(p[i].caption, sizeof p[i].caption, "%s '%s'%s -> %s", d->locale_name[s->locale], s->fmt,
                 s->held_out ? " (held-out format)" : "", p[i].output);
        p[i].S = b->len[i];
        for (t = 0; t < TGT_LEN; t++)
            for (j = 0; j < p[i].S; j++) p[i].w[t * p[i].S + j] = w[((size_t)i * (TGT_LEN + 1) + t) * b->S + j];
    }
    if (!rc) rc = write_heatmap(path, p, k);
    free(p);
    free(w);
    return rc;
}

/* ---- translating the user's dates -------------------------------------------------- */
/* Each line of --input or of standard input, as ISO; 0, or -1 on an error. */
static int translate(av_ctx *c, const net *n, const char *input, int beam) {
    enum { ROWS = 64 };
    char line[TEXT_BYTES], iso[TGT_LEN + 2];
    int out[ROWS * (TGT_LEN + 1)], r, rc = 0, more = 1;
    batch b;
    if (batch_init(&b, ROWS)) { fprintf(stderr, "error: out of memory\n"); return -1; }
    while (more && !rc) {
        b.B = 0;
        while (b.B < ROWS && more) {
            if (input) {
                snprintf(line, sizeof line, "%s", input);
                more = 0;
            } else if (!fgets(line, sizeof line, stdin)) {
                more = 0;
                break;
            } else if (!strchr(line, '\n') && !feof(stdin)) { /* too long a line: its start is enough */
                int ch;
                while ((ch = getchar()) != EOF && ch != '\n') continue;
            }
            squeeze_spaces(line);
            batch_add(&b, n->vocab, n->n_vocab, line, -1, NO_DAY);
        }
        if (!b.B) break;
        batch_pack(&b);
        av_ctx_reset(c);
        rc = net_decode(c, n, &b, beam, out, NULL);
        for (r = 0; r < b.B && !rc; r++) {
            output_text(out, r, iso);
            printf("%s\n", iso);
        }
        fflush(stdout);
    }
    batch_free(&b);
    return rc;
}

/* ---- the program ------------------------------------------------------------------- */
typedef struct result { int trained, steps; double exact_dates, exact_formats, seconds; long params; } result;

/* Trains (or goes on training) one network, evaluates it, saves it and draws its attention. */
static int run_model(av_ctx *c, net *n, const date_data *d, const train_opts *o, const eval_set *test, int beam,
                     int misses, const char *out_dir, av_rng *rng, result *res) {
    const char *name = net_names[n->cfg[CFG_KIND]];
    char path[1100];
    batch b;
    int rc = batch_init(&b, o->batch > 200 ? o->batch : 200);
    if (rc) { fprintf(stderr, "error: out of memory\n"); return -1; }
    res->params = av_model_num_values(n->m);
    res->steps = o->steps;
    printf("%-11s %ld parameters\n", name, res->params);
    if (o->steps > 0) rc = train(c, n, d, o, rng, &b, &res->seconds);
    if (!rc && o->steps > 0) {
        snprintf(path, sizeof path, "%s/%s.safetensors", out_dir, name);
        if ((rc = net_save(n, path)) == 0) printf("saved %s\n", path);
    }
    if (!rc) {
        res->exact_dates = evaluate(c, n, d, &test[0], beam, misses, &b, "held-out dates");
        res->exact_formats = evaluate(c, n, d, &test[1], beam, misses, &b, "held-out formats");
        rc = res->exact_dates < 0 || res->exact_formats < 0 ? -1 : 0;
    }
    if (!rc) printf("%-11s exact match: held-out dates %.4f (%d), held-out formats %.4f (%d)%s\n", name, res->exact_dates,
                    test[0].n, res->exact_formats, test[1].n, beam > 1 ? ", beam search" : "");
    if (!rc) {
        snprintf(path, sizeof path, "%s/attention_%s.png", out_dir, name);
        if ((rc = draw_attention(c, n, d, &b, path)) == 0) printf("picture: %s\n", path);
    }
    res->trained = !rc;
    batch_free(&b);
    return rc;
}

int main(int argc, char **argv) {
    const char *out_dir, *load, *input, *which;
    int rnn_steps, tf_steps, batch_size, warmup, d_model, heads, ff, layers, embed, hidden, attn, n_test, beam, misses,
        show, seed, quick;
    float lr, smoothing, held_formats, held_days, clip;
    ex_flag flags[] = {
        EX_STRING_FLAG("out", &out_dir, "out/dates", "directory for the models (rnn.safetensors, transformer.safetensors) and the heatmaps"),
        EX_STRING_FLAG("model", &which, "both", "which to train: rnn, transformer or both"),
        EX_STRING_FLAG("load", &load, NULL, "a saved model: translate standard input (or --input), or train it on with --*-steps"),
        EX_STRING_FLAG("input", &input, NULL, "with --load, translate this text instead of standard input"),
        EX_INT_FLAG("rnn-steps", &rnn_steps, "3000", 0, 10000000, "training steps of the rnn; 40 with --quick"),
        EX_INT_FLAG("transformer-steps", &tf_steps, "3000", 0, 10000000, "training steps of the transformer; 40 with --quick"),
        EX_INT_FLAG("batch", &batch_size, "64", 1, 4096, "dates per training step"),
        EX_FLOAT_FLAG("lr", &lr, "1e-3", 1e-7, 1, "peak Adam learning rate (warm-up, then cosine decay)"),
        EX_INT_FLAG("warmup", &warmup, "200", 0, 10000000, "warm-up steps"),
        EX_FLOAT_FLAG("clip", &clip, "1", 0, 1000, "gradient norm clipping; 0: none"),
        EX_FLOAT_FLAG("smoothing", &smoothing, "0", 0, 0.5, "label smoothing"),
        EX_INT_FLAG("d-model", &d_model, "64", 1, 4096, "transformer: width"),
        EX_INT_FLAG("heads", &heads, "4", 1, 64, "transformer: attention heads"),
        EX_INT_FLAG("ff", &ff, "256", 1, 65536, "transformer: feed-forward width"),
        EX_INT_FLAG("layers", &layers, "2", 1, AV_MAX_TRANSFORMER_LAYERS, "transformer: layers of the encoder and of the decoder"),
        EX_INT_FLAG("embed", &embed, "64", 1, 4096, "rnn: character embedding size"),
        EX_INT_FLAG("hidden", &hidden, "128", 1, 4096, "rnn: GRU state of each encoder direction (the decoder's is twice this)"),
        EX_INT_FLAG("attn", &attn, "128", 1, 4096, "rnn: additive attention size"),
        EX_INT_FLAG("test", &n_test, "5000", 1, 1000000, "dates in each test set; 200 with --quick"),
        EX_FLOAT_FLAG("held-formats", &held_formats, "0.1", 0, 0.5, "share of the formats held out for testing"),
        EX_FLOAT_FLAG("held-days", &held_days, "0.1", 0.01, 0.5, "share of the days held out for testing"),
        EX_INT_FLAG("beam", &beam, "1", 1, 64, "beam width when decoding; 1 is greedy"),
        EX_INT_FLAG("misses", &misses, "3", 0, 1000000, "print this many wrong translations of each test set"),
        EX_INT_FLAG("show", &show, "0", 0, 1000000, "print this many training examples and exit"),
        EX_INT_FLAG("seed", &seed, "1", 0, 2147483647, "seed of the data split, the examples and the weights"),
        EX_SWITCH_FLAG("quick", &quick, "a short run for tests: 40 steps per model, 200 test dates each"),
    };
    date_data d;
    eval_set test[2];
    net nets[2];
    result res[2];
    int kinds[2], n_kinds = 0, k, rc = 0, status;
    av_ctx *c = NULL;
    av_rng rng;
    train_opts o;

    status = ex_parse(argc, argv, "Translates dates written in many languages into ISO 8601 with attention.", flags,
                      EX_COUNT(flags));
    if (status >= 0) return status;
    setvbuf(stdout, NULL, _IOLBF, 0); /* a log shows each line as training goes */
    if (strcmp(which, "both") && strcmp(which, "rnn") && strcmp(which, "transformer")) {
        fprintf(stderr, "seq2seq_dates: --model: '%s' is not rnn, transformer or both\n", which);
        return 2;
    }
    if (input && !load) { fprintf(stderr, "seq2seq_dates: --input needs --load MODEL\n"); return 2; }
    if (d_model % heads) { fprintf(stderr, "seq2seq_dates: --d-model %d is not a multiple of --heads %d\n", d_model, heads); return 2; }
    if (quick) {
        if (!ex_given(flags, EX_COUNT(flags), "rnn-steps")) rnn_steps = 40;
        if (!ex_given(flags, EX_COUNT(flags), "transformer-steps")) tf_steps = 40;
        if (!ex_given(flags, EX_COUNT(flags), "test")) n_test = 200;
        if (!ex_given(flags, EX_COUNT(flags), "warmup")) warmup = 10;
    }
    memset(nets, 0, sizeof nets);
    memset(res, 0, sizeof res);
    memset(test, 0, sizeof test);
    c = av_ctx_new();
    av_ctx_seed(c, (uint64_t)seed);
    if (load) { /* translate, or train on when steps are given for its kind */
        int given;
        if (net_load(&nets[0], load, (uint64_t)seed)) { av_ctx_free(c); return 1; }
        given = ex_given(flags, EX_COUNT(flags), nets[0].cfg[CFG_KIND] == NET_RNN ? "rnn-steps" : "transformer-steps");
        if (!given) {
            rc = translate(c, &nets[0], input, beam);
            net_free(&nets[0]);
            av_ctx_free(c);
            return rc ? 1 : 0;
        }
        kinds[n_kinds++] = nets[0].cfg[CFG_KIND];
    } else {
        if (strcmp(which, "transformer")) kinds[n_kinds++] = NET_RNN;
        if (strcmp(which, "rnn")) kinds[n_kinds++] = NET_TRANSFORMER;
    }
    if (data_build(&d, held_formats, held_days, (uint64_t)seed) || vocab_build(&d)) {
        data_free(&d);
        net_free(&nets[0]);
        av_ctx_free(c);
        return 1;
    }
    printf("seq2seq_dates: %d locales, %d (locale, format) pairs writing %d formats; %d pairs (%d formats) held out; "
           "%d of %d days held out; %d characters\n", d.n_locales, d.n_styles, d.n_formats, d.n_held_styles,
           (int)(held_formats * d.n_formats + 0.5), d.n_days[1], d.n_days[0] + d.n_days[1], d.n_vocab);
    if (d.n_locales < 3)
        printf("note: only the C locale is installed, so the dates are in English only: install Debian's locales-all "
               "(make deps) for a few hundred locales\n");
    av_rng_seed(&rng, (uint64_t)seed * 7919 + 11);
    for (k = 0; k < show; k++) {
        int s, day;
        char text[TEXT_BYTES], iso[TGT_LEN + 1];
        sample_pair(&d, 0, 0, &rng, &s, &day);
        render(&d, &d.styles[s], day, text);
        iso_of_day(day, iso);
        printf("%-18s %-22s %s -> %s\n", d.locale_name[d.styles[s].locale], d.styles[s].fmt, text, iso);
    }
    if (show) { data_free(&d); net_free(&nets[0]); av_ctx_free(c); return 0; }
    if (ex_out_dir(out_dir) || eval_set_make(&test[0], &d, 0, n_test, &rng) || eval_set_make(&test[1], &d, 1, n_test, &rng))
        rc = 1;
    if (!rc)
        printf("best possible exact match (some inputs are ambiguous: 05/06/20 is 5 June or May 6): held-out dates %.4f, "
               "held-out formats %.4f\n", test[0].best, test[1].best);
    o.batch = batch_size;
    o.lr = lr;
    o.warmup = warmup;
    o.smoothing = smoothing;
    o.clip = clip;
    for (k = 0; k < n_kinds && !rc; k++) {
        int cfg[N_CFG], kind = kinds[k];
        cfg[CFG_KIND] = kind;
        cfg[CFG_A] = kind == NET_RNN ? embed : d_model;
        cfg[CFG_B] = kind == NET_RNN ? hidden : heads;
        cfg[CFG_C] = kind == NET_RNN ? attn : ff;
        cfg[CFG_D] = kind == NET_RNN ? 1 : layers;
        if (!load && net_new(&nets[k], cfg, d.vocab, d.n_vocab, (uint64_t)seed + 100 * (uint64_t)kind)) { rc = 1; break; }
        o.steps = kind == NET_RNN ? rnn_steps : tf_steps;
        if (run_model(c, &nets[k], &d, &o, test, beam, misses, out_dir, &rng, &res[kind])) rc = 1;
    }
    if (!rc) {
        printf("summary: {");
        for (k = 0; k < 2; k++)
            if (res[k].trained)
                printf("\"%s\": {\"exact_dates\": %.4f, \"exact_formats\": %.4f, \"steps\": %d, \"train_seconds\": %.1f, "
                       "\"params\": %ld}, ", net_names[k], res[k].exact_dates, res[k].exact_formats, res[k].steps,
                       res[k].seconds, res[k].params);
        printf("\"best_possible\": {\"exact_dates\": %.4f, \"exact_formats\": %.4f}, \"locales\": %d, \"pairs\": %d, "
               "\"formats\": %d, \"held_out_pairs\": %d, \"test_dates\": %d, \"characters\": %d, \"beam\": %d}\n",
               test[0].best, test[1].best, d.n_locales, d.n_styles, d.n_formats, d.n_held_styles, n_test, d.n_vocab, beam);
    }
    for (k = 0; k < 2; k++) { free(test[k].style); net_free(&nets[k]); }
    data_free(&d);
    av_ctx_free(c);
    return rc;
}
