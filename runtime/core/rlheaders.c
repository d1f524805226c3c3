/* rlheaders.c -- rate-limit response header parsing */
#include "rlheaders.h"

#include <string.h>

#define MAX_INT_DIGITS 15
#define MAX_FRAC_DIGITS 9

enum { F_LIMIT = 0, F_REMAINING = 1, F_RESET = 2 };

/* ---- small lexical helpers -------------------------------------------- */

typedef struct cur {
    const char *s;
    size_t n, i;
} cur;

static int peek(const cur *c) {
    return c->i < c->n ? (unsigned char)c->s[c->i] : -1;
}

static int eat(cur *c, int ch) {
    if (peek(c) != ch)
        return 0;
    c->i++;
    return 1;
}

static int isdig(int ch) { return ch >= '0' && ch <= '9'; }
static int isalp(int ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}
static int lower(int ch) { return (ch >= 'A' && ch <= 'Z') ? ch + 32 : ch; }

static void skip_ows(cur *c) {
    while (peek(c) == ' ' || peek(c) == '\t')
        c->i++;
}

static int spaces(cur *c) {
    int k = 0;
    while (eat(c, ' '))
        k++;
    return k;
}

/* Reads between min and max digits as an int. */
static int digits(cur *c, int min, int max, int *out) {
    int v = 0, k = 0;
    while (k < max && isdig(peek(c))) {
        v = v * 10 + (c->s[c->i++] - '0');
        k++;
    }
    if (k < min)
        return -1;
    *out = v;
    return 0;
}

/* Case-insensitive equality of (s, n) with a lower-case literal. */
static int ieq(const char *s, size_t n, const char *lit) {
    size_t i, m = strlen(lit);
    if (n != m)
        return 0;
    for (i = 0; i < n; i++)
        if (lower((unsigned char)s[i]) != lit[i])
            return 0;
    return 1;
}

static int iprefix(const char *s, size_t n, const char *lit) {
    size_t m = strlen(lit);
    return n >= m && ieq(s, m, lit);
}

/* Plain decimal: digits [ "." digits ]. No sign, exponent, hex, inf or nan;
 * at most 15 integer digits, fraction digits beyond 9 are read and dropped. */
static int scan_num(cur *c, double *out) {
    double v = 0, frac = 0, scale = 1;
    int nd = 0, fd = 0;
    while (isdig(peek(c))) {
        if (++nd > MAX_INT_DIGITS)
            return -1;
        v = v * 10 + (c->s[c->i++] - '0');
    }
    if (nd == 0)
        return -1;
    if (eat(c, '.')) {
        while (isdig(peek(c))) {
            if (fd < MAX_FRAC_DIGITS) {
                frac = frac * 10 + (c->s[c->i] - '0');
                scale *= 10;
            }
            c->i++;
            fd++;
        }
        if (fd == 0)
            return -1;
        v += frac / scale;
    }
    *out = v;
    return 0;
}

/* A whole header value that is one number. With list_ok, the number may be
 * followed by "," or ";" and anything (old drafts: "10, 10;w=1"). */
static int num_value(const char *s, size_t n, int list_ok, double *out) {
    cur c = {s, n, 0};
    double v;
    skip_ows(&c);
    if (scan_num(&c, &v) < 0)
        return -1;
    skip_ows(&c);
    if (c.i != c.n && !(list_ok && (peek(&c) == ',' || peek(&c) == ';')))
        return -1;
    *out = v;
    return 0;
}

/* ---- HTTP-date ---------------------------------------------------------- */

static const char months[] = "janfebmaraprmayjunjulaugsepoctnovdec";
static const char wdays[] = "monthuwedthufrisatsun";

/* Reads a run of letters, lower-cased, into buf (cap bytes incl. NUL). */
static int word(cur *c, char *buf, size_t cap) {
    size_t k = 0;
    while (isalp(peek(c))) {
        if (k + 1 >= cap)
            return -1;
        buf[k++] = (char)lower(c->s[c->i++]);
    }
    buf[k] = '\0';
    return (int)k;
}

static int find3(const char *table, int count, const char *w) {
    int i;
    for (i = 0; i < count; i++)
        if (memcmp(table + 3 * i, w, 3) == 0)
            return i;
    return -1;
}

static int month(cur *c) {
    char w[8];
    if (word(c, w, sizeof w) != 3)
        return -1;
    return find3(months, 12, w);
}

static int leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

static int mdays(int y, int m) {
    static const int d[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 1 && leap(y) ? 29 : d[m];
}

/* Days since 1970-01-01 of a proleptic Gregorian date (m is 1..12). */
static long days_from_civil(long y, long m, long d) {
    long era, yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int hms(cur *c, int *h, int *mi, int *s) {
    if (digits(c, 2, 2, h) < 0 || !eat(c, ':') || digits(c, 2, 2, mi) < 0 ||
        !eat(c, ':') || digits(c, 2, 2, s) < 0)
        return -1;
    return 0;
}

static int gmt(cur *c) {
    char w[8];
    int n = word(c, w, sizeof w);
    return (n == 3 && (strcmp(w, "gmt") == 0 || strcmp(w, "utc") == 0)) ? 0
                                                                        : -1;
}

int sl_rlh_http_date(const char *s, size_t len, double *epoch) {
    cur c = {s, len, 0};
    char wd[16];
    int y, mo, d, h, mi, sec, n;

    if (len > 64)
        return -1;
    skip_ows(&c);
    n = word(&c, wd, sizeof wd);
    if (n < 3 || find3(wdays, 7, wd) < 0)
        return -1;
    if (eat(&c, ',')) {
        if (spaces(&c) < 1 || digits(&c, 1, 2, &d) < 0)
            return -1;
        if (eat(&c, ' ')) { /* IMF-fixdate: 06 Nov 1994 08:49:37 GMT */
            if ((mo = month(&c)) < 0 || !eat(&c, ' ') ||
                digits(&c, 4, 4, &y) < 0)
                return -1;
        } else if (eat(&c, '-')) { /* RFC 850: 06-Nov-94 08:49:37 GMT */
            if ((mo = month(&c)) < 0 || !eat(&c, '-') ||
                digits(&c, 2, 4, &y) < 0)
                return -1;
            if (y < 100)
                y += y >= 70 ? 1900 : 2000;
        } else {
            return -1;
        }
        if (spaces(&c) < 1 || hms(&c, &h, &mi, &sec) < 0 || spaces(&c) < 1 ||
            gmt(&c) < 0)
            return -1;
    } else { /* asctime: Sun Nov  6 08:49:37 1994 */
        if (spaces(&c) < 1 || (mo = month(&c)) < 0 || spaces(&c) < 1 ||
            digits(&c, 1, 2, &d) < 0 || spaces(&c) < 1 ||
            hms(&c, &h, &mi, &sec) < 0 || spaces(&c) < 1 ||
            digits(&c, 4, 4, &y) < 0)
            return -1;
    }
    skip_ows(&c);
    if (c.i != c.n || y < 1900 || d < 1 || d > mdays(y, mo) || h > 23 ||
        mi > 59 || sec > 60)
        return -1;
    *epoch = (double)days_from_civil(y, mo + 1, d) * 86400.0 + h * 3600.0 +
             mi * 60.0 + sec;
    return 0;
}

/* ---- structured fields (RFC 8941 subset) ------------------------------- */

typedef struct item {
    int kind; /* 0 none, 1 string/token, 2 number, 3 other */
    const char *str;
    size_t len;
    double num; /* < 0 when the number was negative */
} item;

static int istchar(int ch) {
    return isalp(ch) || isdig(ch) ||
           (ch > 0 && strchr(":/!#$%&'*+-.^_`|~", ch));
}

static int bare_item(cur *c, item *it) {
    int ch = peek(c), neg = 0;
    memset(it, 0, sizeof *it);
    if (ch == '"') {
        c->i++;
        it->kind = 1;
        it->str = c->s + c->i;
        for (;;) {
            ch = peek(c);
            if (ch < 0x20 || ch > 0x7e)
                return -1; /* unterminated or control */
            if (ch == '"')
                break;
            if (ch == '\\') {
                c->i++;
                if (peek(c) != '"' && peek(c) != '\\')
                    return -1;
            }
            c->i++;
        }
        it->len = (size_t)(c->s + c->i - it->str);
        c->i++;
        return 0;
    }
    if (isalp(ch) || ch == '*') {
        it->kind = 1;
        it->str = c->s + c->i;
        while (istchar(peek(c)))
            c->i++;
        it->len = (size_t)(c->s + c->i - it->str);
        return 0;
    }
    if (ch == '-' || isdig(ch)) {
        neg = eat(c, '-');
        if (scan_num(c, &it->num) < 0)
            return -1;
        it->kind = 2;
        if (neg)
            it->num = -1;
        return 0;
    }
    if (ch == '?' || ch == ':') { /* boolean or byte sequence: skipped */
        c->i++;
        while (peek(c) > 0x20 && peek(c) != ';' && peek(c) != ',')
            c->i++;
        it->kind = 3;
        return 0;
    }
    return -1;
}

static int sf_key(cur *c, const char **k, size_t *klen) {
    int ch = peek(c);
    if (!(isalp(ch) || ch == '*'))
        return -1;
    *k = c->s + c->i;
    while (isalp(peek(c)) || isdig(peek(c)) || peek(c) == '_' ||
           peek(c) == '-' || peek(c) == '.' || peek(c) == '*')
        c->i++;
    *klen = (size_t)(c->s + c->i - *k);
    return 0;
}

/* One parsed member: what RateLimit and RateLimit-Policy care about. */
typedef struct member {
    item head;         /* the item (or dictionary key) */
    item value;        /* dictionary member value, kind 0 for list members */
    double q, w, r, t; /* parameters, -1 when absent or invalid */
} member;

#define MAX_MEMBERS (SL_RLH_MAX_POLICIES * 2)

static double param_num(const item *v) {
    return (v->kind == 2 && v->num >= 0) ? v->num : -1;
}

/* Parses a list or dictionary. Returns the member count, or -1 when the
 * field is malformed (the whole field is then ignored, as RFC 8941 says). */
static int sf_parse(const char *s, size_t n, member *m, int max) {
    cur c = {s, n, 0};
    int count = 0;
    skip_ows(&c);
    if (c.i == c.n)
        return -1;
    for (;;) {
        member tmp, *mb = count < max ? &m[count] : &tmp;
        const char *k;
        size_t klen;
        item v;
        memset(mb, 0, sizeof *mb);
        mb->q = mb->w = mb->r = mb->t = -1;
        if (bare_item(&c, &mb->head) < 0)
            return -1;
        if (eat(&c, '=')) {
            if (mb->head.kind != 1 || bare_item(&c, &mb->value) < 0)
                return -1;
        }
        while (eat(&c, ';')) {
            skip_ows(&c);
            if (sf_key(&c, &k, &klen) < 0)
                return -1;
            v.kind = 2;
            v.num = 1; /* a bare key is boolean true */
            if (eat(&c, '=') && bare_item(&c, &v) < 0)
                return -1;
            if (ieq(k, klen, "q"))
                mb->q = param_num(&v);
            else if (ieq(k, klen, "w"))
                mb->w = param_num(&v);
            else if (ieq(k, klen, "r"))
                mb->r = param_num(&v);
            else if (ieq(k, klen, "t"))
                mb->t = param_num(&v);
        }
        count++;
        skip_ows(&c);
        if (c.i == c.n)
            return count;
        if (!eat(&c, ','))
            return -1;
        skip_ows(&c);
        if (c.i == c.n)
            return -1; /* trailing comma */
    }
}

static sl_rlh_policy *policy_for(sl_rlh_parser *p, const item *head) {
    char name[SL_RLH_NAME_MAX] = "";
    sl_rlh_policy *pol;
    int i;
    if (head->kind == 1) {
        size_t len =
            head->len < SL_RLH_NAME_MAX - 1 ? head->len : SL_RLH_NAME_MAX - 1;
        memcpy(name, head->str, len);
        name[len] = '\0';
        for (i = 0; name[0] && i < p->npolicies; i++)
            if (strcmp(p->policies[i].name, name) == 0)
                return &p->policies[i];
    }
    if (p->npolicies >= SL_RLH_MAX_POLICIES) {
        p->ignored++;
        return NULL;
    }
    pol = &p->policies[p->npolicies++];
    memcpy(pol->name, name, sizeof name);
    pol->quota = pol->window = pol->remaining = pol->reset = -1;
    return pol;
}

static int feed_sf(sl_rlh_parser *p, const char *v, size_t n, int policy) {
    member m[MAX_MEMBERS];
    int count = sf_parse(v, n, m, MAX_MEMBERS), i, used = 0;
    double *fam = p->fam[SL_RLH_SRC_RATELIMIT];
    if (count < 0)
        return -1;
    if (count > MAX_MEMBERS) {
        p->ignored += count - MAX_MEMBERS;
        count = MAX_MEMBERS;
    }
    for (i = 0; i < count; i++) {
        member *mb = &m[i];
        sl_rlh_policy *pol;
        if (mb->value.kind != 0) { /* draft-07 "limit=100, remaining=50" */
            double x = param_num(&mb->value);
            int f = ieq(mb->head.str, mb->head.len, "limit")       ? F_LIMIT
                    : ieq(mb->head.str, mb->head.len, "remaining") ? F_REMAINING
                    : ieq(mb->head.str, mb->head.len, "reset")     ? F_RESET
                                                                   : -1;
            if (policy || f < 0 || x < 0)
                continue;
            if (fam[f] < 0)
                fam[f] = x;
            used = 1;
            continue;
        }
        if (mb->head.kind != 1 && !(policy && mb->head.kind == 2))
            continue;
        if (policy ? (mb->q < 0 && mb->head.kind != 2) : mb->r < 0)
            continue; /* nothing we can use */
        if ((pol = policy_for(p, &mb->head)) == NULL)
            continue;
        if (policy) {
            pol->quota = mb->head.kind == 2 ? param_num(&mb->head) : mb->q;
            if (mb->w > 0)
                pol->window = mb->w;
        } else {
            pol->remaining = mb->r;
            if (mb->t >= 0)
                pol->reset = mb->t;
        }
        used = 1;
    }
    return used ? 0 : -1;
}

/* ---- per-header dispatch ------------------------------------------------ */

static int set_first(double *slot, const char *v, size_t n, int list_ok) {
    double x;
    if (num_value(v, n, list_ok, &x) < 0)
        return -1;
    if (*slot < 0)
        *slot = x;
    return 0;
}

/* "limit" / "remaining" / "reset" suffix after a family prefix. */
static int triplet(double *fam, const char *s, size_t n, const char *v,
                   size_t vn) {
    if (ieq(s, n, "limit"))
        return set_first(&fam[F_LIMIT], v, vn, 1);
    if (ieq(s, n, "remaining"))
        return set_first(&fam[F_REMAINING], v, vn, 1);
    if (ieq(s, n, "reset"))
        return set_first(&fam[F_RESET], v, vn, 1);
    return -2;
}

static int binance_weight(sl_rlh_parser *p, const char *s, size_t n,
                          const char *v, size_t vn) {
    cur c = {s, n, 0};
    int count;
    double used, unit;
    if (digits(&c, 1, 4, &count) < 0 || count < 1 || c.i + 1 != c.n)
        return -2;
    switch (lower(peek(&c))) {
    case 's':
        unit = 1;
        break;
    case 'm':
        unit = 60;
        break;
    case 'h':
        unit = 3600;
        break;
    case 'd':
        unit = 86400;
        break;
    default:
        return -2;
    }
    if (num_value(v, vn, 0, &used) < 0)
        return -1;
    if (p->nweights >= SL_RLH_MAX_WEIGHTS)
        return -1;
    p->weights[p->nweights].used = used;
    p->weights[p->nweights].window = count * unit;
    p->nweights++;
    return 0;
}

/* Returns 0 used, -1 recognised but rejected, -2 not ours. */
static int dispatch(sl_rlh_parser *p, const char *k, size_t kn, const char *v,
                    size_t vn) {
    double x;
    if (ieq(k, kn, "retry-after")) {
        if (num_value(v, vn, 0, &x) == 0) {
            if (p->ra_delta < 0 && p->ra_date < 0)
                p->ra_delta = x;
            return 0;
        }
        if (sl_rlh_http_date(v, vn, &x) == 0) {
            if (p->ra_delta < 0 && p->ra_date < 0)
                p->ra_date = x;
            return 0;
        }
        return -1;
    }
    if (ieq(k, kn, "date")) {
        if (sl_rlh_http_date(v, vn, &x) < 0)
            return -1;
        if (p->date < 0)
            p->date = x;
        return 0;
    }
    if (iprefix(k, kn, "x-ratelimit-") || iprefix(k, kn, "x-rate-limit-")) {
        size_t off = iprefix(k, kn, "x-ratelimit-") ? 12 : 13;
        if (ieq(k + off, kn - off, "reset-after"))
            return set_first(&p->reset_after, v, vn, 0);
        return triplet(p->fam[SL_RLH_SRC_XRATELIMIT], k + off, kn - off, v, vn);
    }
    if (ieq(k, kn, "ratelimit"))
        return feed_sf(p, v, vn, 0);
    if (ieq(k, kn, "ratelimit-policy"))
        return feed_sf(p, v, vn, 1);
    if (iprefix(k, kn, "ratelimit-"))
        return triplet(p->fam[SL_RLH_SRC_RATELIMIT], k + 10, kn - 10, v, vn);
    /* Bitget's, before Binance's X-MBX-USED-WEIGHT-* prefix (it is no
     * weight: the requests left this second) */
    if (ieq(k, kn, "x-mbx-used-remain-limit"))
        return set_first(&p->fam[SL_RLH_SRC_BITGET][F_REMAINING], v, vn, 0);
    if (iprefix(k, kn, "x-mbx-used-weight-"))
        return binance_weight(p, k + 18, kn - 18, v, vn);
    if (ieq(k, kn, "x-bapi-limit"))
        return set_first(&p->fam[SL_RLH_SRC_BYBIT][F_LIMIT], v, vn, 0);
    if (ieq(k, kn, "x-bapi-limit-status"))
        return set_first(&p->fam[SL_RLH_SRC_BYBIT][F_REMAINING], v, vn, 0);
    if (ieq(k, kn, "x-bapi-limit-reset-timestamp"))
        return set_first(&p->bybit_reset_ms, v, vn, 0);
    if (ieq(k, kn, "x-gate-ratelimit-limit"))
        return set_first(&p->fam[SL_RLH_SRC_GATE][F_LIMIT], v, vn, 0);
    if (ieq(k, kn, "x-gate-ratelimit-requests-remain"))
        return set_first(&p->fam[SL_RLH_SRC_GATE][F_REMAINING], v, vn, 0);
    if (ieq(k, kn, "x-gate-ratelimit-reset-timestamp"))
        return set_first(&p->fam[SL_RLH_SRC_GATE][F_RESET], v, vn, 0);
    if (ieq(k, kn, "x-hb-ratelimit-requests-remain"))
        return set_first(&p->fam[SL_RLH_SRC_HTX][F_REMAINING], v, vn, 0);
    if (ieq(k, kn, "x-hb-ratelimit-requests-expire"))
        return set_first(&p->fam[SL_RLH_SRC_HTX][F_RESET], v, vn, 0);
    return -2;
}

void sl_rlh_options_init(sl_rlh_options *o) {
    o->reset_mode = SL_RLH_RESET_AUTO;
    o->max_backoff = 3600;
    o->max_reset = 31 * 86400;
}

void sl_rlh_begin(sl_rlh_parser *p, const sl_rlh_options *o) {
    int i, j;
    memset(p, 0, sizeof *p);
    if (o)
        p->opt = *o;
    else
        sl_rlh_options_init(&p->opt);
    if (!(p->opt.max_backoff >= 0))
        p->opt.max_backoff = 3600;
    if (!(p->opt.max_reset >= 0))
        p->opt.max_reset = 31 * 86400;
    for (i = 0; i < SL_RLH_NSOURCES; i++)
        for (j = 0; j < 3; j++)
            p->fam[i][j] = -1;
    p->reset_after = p->bybit_reset_ms = -1;
    p->ra_delta = p->ra_date = p->date = -1;
}

int sl_rlh_feed(sl_rlh_parser *p, const char *name, size_t name_len,
                const char *value, size_t value_len) {
    int rc;
    if (name == NULL || (value == NULL && value_len > 0))
        return 0;
    if (value == NULL)
        value = "";
    rc = (value_len > SL_RLH_VALUE_MAX)
             ? (dispatch(p, name, name_len, "", 0) == -2 ? -2 : -1)
             : dispatch(p, name, name_len, value, value_len);
    if (rc == 0)
        p->recognised++;
    else if (rc == -1)
        p->ignored++;
    return rc == 0;
}

/* ---- normalisation ------------------------------------------------------ */

static double cap(double x, double max) { return x > max ? max : x; }

/* An absolute time (epoch s) to seconds from `base`; -1 when unknown or
 * more than max_reset in the past (garbage rather than a stale reset). */
static double until(double at, double base, double max) {
    double d;
    if (base < 0)
        return -1;
    d = at - base;
    if (d < -max)
        return -1;
    return cap(d < 0 ? 0 : d, max);
}

static double reset_secs(double raw, sl_rlh_reset_mode mode, double base,
                         double max) {
    if (raw < 0)
        return -1;
    if (mode == SL_RLH_RESET_AUTO)
        mode = raw >= 1e12  ? SL_RLH_RESET_EPOCH_MS
               : raw >= 1e9 ? SL_RLH_RESET_EPOCH
                            : SL_RLH_RESET_DELTA;
    switch (mode) {
    case SL_RLH_RESET_EPOCH:
        return until(raw, base, max);
    case SL_RLH_RESET_EPOCH_MS:
        return until(raw / 1000.0, base, max);
    default:
        return cap(raw, max);
    }
}

/* The most restrictive IETF policy: the least remaining per second left,
 * else the smallest quota per window, else the first. */
static const sl_rlh_policy *tightest(const sl_rlh_result *r) {
    const sl_rlh_policy *best = NULL;
    double best_x = 0;
    int i, with_r = 0;
    for (i = 0; i < r->npolicies; i++)
        with_r |= r->policies[i].remaining >= 0;
    for (i = 0; i < r->npolicies; i++) {
        const sl_rlh_policy *p = &r->policies[i];
        double x, span = p->reset > 0    ? p->reset
                         : p->window > 0 ? p->window
                                         : 1;
        if (with_r) {
            if (p->remaining < 0)
                continue;
            x = p->remaining / span;
        } else {
            if (p->quota < 0)
                continue;
            x = p->quota / (p->window > 0 ? p->window : 1);
        }
        if (best == NULL || x < best_x) {
            best = p;
            best_x = x;
        }
    }
    return best;
}

void sl_rlh_finish(const sl_rlh_parser *p, int status, double wall_now,
                   sl_rlh_result *out) {
    const sl_rlh_options *o = &p->opt;
    double base = p->date >= 0 ? p->date : (wall_now > 0 ? wall_now : -1);
    const double *f;
    int i, src;

    memset(out, 0, sizeof *out);
    out->limit = out->remaining = out->reset = out->window = -1;
    out->retry_after = -1;
    out->date = p->date;
    out->status = status;
    out->throttled = status == 429;
    out->banned = status == 418;
    out->recognised = p->recognised;
    out->ignored = p->ignored;

    if (p->ra_delta >= 0)
        out->retry_after = cap(p->ra_delta, o->max_backoff);
    else if (p->ra_date >= 0 && base >= 0)
        out->retry_after =
            cap(p->ra_date > base ? p->ra_date - base : 0, o->max_backoff);

    out->npolicies = p->npolicies;
    for (i = 0; i < p->npolicies; i++) {
        out->policies[i] = p->policies[i];
        if (out->policies[i].reset >= 0)
            out->policies[i].reset = cap(out->policies[i].reset, o->max_reset);
    }
    out->nweights = p->nweights;
    memcpy(out->weights, p->weights, sizeof p->weights);

    for (src = SL_RLH_SRC_XRATELIMIT; src <= SL_RLH_SRC_BITGET; src++) {
        f = p->fam[src];
        if (src == SL_RLH_SRC_IETF) {
            const sl_rlh_policy *t = tightest(out);
            if (t == NULL)
                continue;
            out->source = SL_RLH_SRC_IETF;
            out->limit = t->quota;
            out->remaining = t->remaining;
            out->reset = t->reset;
            out->window = t->window;
            break;
        }
        if (f[F_LIMIT] < 0 && f[F_REMAINING] < 0 && f[F_RESET] < 0 &&
            !(src == SL_RLH_SRC_XRATELIMIT && p->reset_after >= 0) &&
            !(src == SL_RLH_SRC_BYBIT && p->bybit_reset_ms >= 0))
            continue;
        out->source = (sl_rlh_source)src;
        out->limit = f[F_LIMIT];
        out->remaining = f[F_REMAINING];
        if (src == SL_RLH_SRC_BYBIT || src == SL_RLH_SRC_GATE) {
            /* epoch timestamps only: a small number is no time of theirs */
            double r = src == SL_RLH_SRC_BYBIT ? p->bybit_reset_ms : f[F_RESET];
            out->reset =
                r >= 1e9 ? reset_secs(r, SL_RLH_RESET_AUTO, base, o->max_reset)
                         : -1;
        } else if (src == SL_RLH_SRC_BITGET) {
            out->reset = 1; /* a per-second window */
        } else if (src == SL_RLH_SRC_HTX) {
            double r = f[F_RESET];
            out->reset =
                r >= 1e9 ? reset_secs(r, SL_RLH_RESET_AUTO, base, o->max_reset)
                : r >= 0 ? cap(r / 1000.0, o->max_reset)
                         : -1;
        } else {
            out->reset =
                reset_secs(f[F_RESET], o->reset_mode, base, o->max_reset);
            if (out->reset < 0 && src == SL_RLH_SRC_XRATELIMIT &&
                p->reset_after >= 0)
                out->reset = cap(p->reset_after, o->max_reset);
        }
        break;
    }
}

void sl_rlh_parse(const sl_rlh_options *o, int status, const sl_rlh_header *h,
                  size_t n, double wall_now, sl_rlh_result *out) {
    sl_rlh_parser p;
    size_t i;
    sl_rlh_begin(&p, o);
    for (i = 0; h != NULL && i < n; i++)
        sl_rlh_feed(&p, h[i].name, h[i].name_len, h[i].value, h[i].value_len);
    sl_rlh_finish(&p, status, wall_now, out);
}
