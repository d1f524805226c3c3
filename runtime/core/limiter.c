/* limiter.c -- adaptive rate limiter core */
#include "limiter.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NEVER (-1e18) /* "no such time" for monotonic stamps */
#define EPS 1e-9      /* slack on time and token comparisons */
#define NBINS 16      /* admission history: 16 bins of 0.25 s */
#define BIN 0.25
#define MEAS_MIN 4.0 /* cost units needed to trust the measurement */
#define ADJ_INTERVAL 0.25
#define RATE_UP 1.1
#define RATE_DOWN 0.8
#define DEMAND_WINDOW 1.0
#define TAU0 0.1        /* recovery time constant per multiplier unit */
#define PROVE 10.0      /* seconds held without a 429 to prove a rate */
#define CONVERGED 0.01  /* floor within 1% of ceiling: stop bisecting */
#define PROBE_STEP 0.05 /* first growth step past a forgotten ceiling */
#define PROBE_MAX 1.0   /* the step doubles per proof up to this: x2 */
#define REVISIT0 20.0   /* a ceiling held this long without a 429 expires */
/* a probe failing within 10% above an expired ceiling confirms it: the next
 * expiry waits twice as long */
#define REVISIT_NEAR 0.1
#define FIRST_TARGET 0.9 /* set-point when only the ceiling is known */
/* probe a quarter into the gap: a failed probe costs a 429, a slow success
 * only time */
#define BISECT 0.25
#define MAX_MULT 16.0

typedef struct pool {
    double rate, burst;
    double debt, t; /* tokens owed as of time t */
    double blocked_until, ban_until;
    unsigned long claim; /* == lim->gen: claimed in the current walk */
} pool;

typedef struct scope {
    pool p;
    char *name; /* NULL for the global scope; else just after the struct */
    double max_rate;
    double mult, hi, lo, target; /* target 0: no set-point */
    int recovering;
    double rec_t0, rec_r0, rec_tau;
    double hold_since, hold_cost;
    double last_violation, last_calm, last_adjust, last_limited;
    double meas_since, last_admit; /* admission history covers [since, now] */
    double revisit, step, old_hi;  /* ceiling expiry and probing past it */
    double quota_until, remaining;
    double bins[NBINS];
    long long bin0;
    long long requests, violations;
} scope;

typedef struct xpool {
    pool p;
    char name[SL_LIMITER_NAME_MAX];
    double limit, window, base_rate, weight_window, rate_until;
} xpool;

#define TPOOLS (2 + SL_LIMITER_MAX_POOLS)

struct sl_limiter_ticket {
    sl_limiter_ticket *prev, *next;
    void *privdata;
    double created, deadline, cost;
    scope *scopes[2]; /* global, endpoint (may be NULL) */
    int npools;
    pool *pools[TPOOLS];
    double costs[TPOOLS];
};

struct sl_limiter {
    sl_limiter_options o;
    char name[SL_LIMITER_NAME_MAX];
    scope global;
    xpool pools[SL_LIMITER_MAX_POOLS];
    int npools;
    scope **eps; /* in creation order; capacity nslots / 2 */
    size_t neps;
    size_t *slots; /* open addressing: index into eps + 1, 0 = empty */
    size_t nslots;
    sl_limiter_ticket *head, *tail;
    long long nwaiting;
    unsigned long gen;
    double last_now;
    long long total_requests, total_violations, rate_adjustments;
    double total_wait, min_seen, max_seen;
};

static int fail(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static double clock_in(sl_limiter *lim, double now) {
    if (isfinite(now) && now > lim->last_now)
        lim->last_now = now;
    return lim->last_now;
}

static double dmin(double a, double b) { return a < b ? a : b; }
static double dmax(double a, double b) { return a > b ? a : b; }

/* ---- token pools -------------------------------------------------------- */

static void pool_init(pool *p, double rate, double burst) {
    memset(p, 0, sizeof *p);
    p->rate = rate;
    p->burst = burst;
    p->t = p->blocked_until = p->ban_until = NEVER;
}

static void pool_settle(pool *p, double now) {
    if (now > p->t) {
        p->debt -= (now - p->t) * p->rate;
        if (p->debt < 0)
            p->debt = 0;
        p->t = now;
    }
}

/* Earliest time the pool allows a charge of c. */
static double pool_ready(const pool *p, double c) {
    double allow = p->burst - c, ready = p->t;
    if (allow < 0)
        allow = 0;
    if (p->debt > allow)
        ready = p->t + (p->debt - allow) / p->rate;
    return dmax(ready, p->blocked_until);
}

static void pool_rate(pool *p, double r, double now) {
    pool_settle(p, now);
    p->rate = r;
}

static void pool_block(pool *p, double until) {
    if (until > p->blocked_until)
        p->blocked_until = until;
}

/* ---- scopes: rates and adaptation --------------------------------------- */

static void scope_init(scope *s, const sl_limiter_options *o) {
    memset(s, 0, sizeof *s);
    pool_init(&s->p, o->rate, o->burst);
    s->max_rate = o->max_rate;
    s->mult = 1;
    s->last_violation = s->last_calm = s->last_adjust = NEVER;
    s->last_limited = s->quota_until = s->hold_since = NEVER;
    s->meas_since = s->last_admit = NEVER;
    s->revisit = REVISIT0;
    s->step = PROBE_STEP;
    s->remaining = -1;
    s->bin0 = (long long)(NEVER / BIN);
}

static double clamp_rate(const sl_limiter *lim, const scope *s, double r) {
    double max = dmin(s->max_rate, lim->o.max_rate);
    if (!(r >= lim->o.min_rate))
        r = lim->o.min_rate;
    return r > max ? max : r;
}

static void set_rate(sl_limiter *lim, scope *s, double r, double now,
                     int count) {
    r = clamp_rate(lim, s, r);
    if (r == s->p.rate)
        return;
    pool_rate(&s->p, r, now);
    if (count)
        lim->rate_adjustments++;
    lim->min_seen = dmin(lim->min_seen, r);
    lim->max_seen = dmax(lim->max_seen, r);
}

static int slot(long long b) {
    long long m = b % NBINS;
    return (int)(m < 0 ? m + NBINS : m);
}

static long long bin_of(double t) { return (long long)floor(t / BIN); }

static void meas_advance(scope *s, long long b) {
    long long k;
    if (b <= s->bin0)
        return;
    if (b - s->bin0 >= NBINS)
        memset(s->bins, 0, sizeof s->bins);
    else
        for (k = s->bin0 + 1; k <= b; k++)
            s->bins[slot(k)] = 0;
    s->bin0 = b;
}

/* Cost admitted per second over the last `span` seconds (whole bins, at
 * most NBINS - 1 of them); *sum gets the cost. When the history is younger
 * than the span (the first requests, or the first after a pause), the cost
 * is spread over the time actually observed, not over the whole span: ten
 * requests in the first 0.1 s are 100 r/s, not 10. */
static double meas_rate(scope *s, double now, double span, double *sum) {
    long long b = bin_of(now), first = bin_of(now - span) + 1, k;
    double dur = now - dmax((double)first * BIN, s->meas_since);
    meas_advance(s, b);
    *sum = 0;
    for (k = first; k <= b; k++)
        *sum += s->bins[slot(k)];
    return dur > 0 ? *sum / dur : 0;
}

static double next_target(const scope *s) {
    if (s->hi <= 0)
        return s->lo * (1 + s->step);
    if (s->lo <= 0)
        return s->hi * FIRST_TARGET;
    if (s->hi - s->lo <= CONVERGED * s->hi)
        return s->lo;
    return s->lo + (s->hi - s->lo) * BISECT;
}

static double recovery_end(const scope *s) {
    return dmax(s->rec_t0, s->p.blocked_until) + 5 * s->rec_tau;
}

/* Forgets the ceiling: the next set-points probe past it, growing faster
 * each time one holds. `confirmable`: the ceiling was not disproved, so a
 * 429 just above it confirms it (see violate). */
static void expire(scope *s, int confirmable) {
    s->old_hi = confirmable ? s->hi : 0;
    if (!confirmable)
        s->revisit = REVISIT0;
    s->hi = 0;
    s->step = PROBE_STEP;
}

/* Advances the time-driven parts of a scope to `now`. Idempotent for equal
 * `now`: the recovery ramp is a function of time, not of call count. */
static void scope_tick(sl_limiter *lim, scope *s, double now) {
    double q = lim->o.quiet;
    if (s->recovering) {
        double start = dmax(s->rec_t0, s->p.blocked_until);
        if (now >= recovery_end(s)) {
            set_rate(lim, s, s->target, now, 0);
            s->recovering = 0;
            s->hold_since = now;
            s->hold_cost = 0;
        } else if (now > start) {
            set_rate(lim, s,
                     s->target - (s->target - s->rec_r0) *
                                     exp(-(now - start) / s->rec_tau),
                     now, 0);
        }
    }
    if ((s->mult > 1 || s->hi > 0) && now - s->last_calm >= q) {
        double k = floor((now - s->last_calm) / q);
        s->last_calm += k * q;
        s->mult = k >= 4 ? 1 : dmax(1, s->mult / pow(2, k));
        if (s->hi > 0) { /* forget the ceiling: grow again from here */
            expire(s, 1);
            s->lo = dmax(s->lo, s->recovering ? s->target : s->p.rate);
            s->target = clamp_rate(lim, s, s->lo);
        }
    }
    if (s->recovering)
        return;
    if (now < s->quota_until || now < s->p.blocked_until ||
        (s->hi <= 0 && s->lo <= 0) || now - s->hold_since < PROVE)
        return;
    if (s->hold_cost >= 0.9 * s->p.rate * (now - s->hold_since)) {
        int probed = s->hi <= 0 && s->p.rate > s->lo;
        s->lo = dmax(s->lo, s->p.rate);
        if (s->hi > 0 && s->lo >= s->hi)
            expire(s, 0); /* held above the ceiling: it was wrong */
        else if (s->hi > 0 && now - s->last_violation >= s->revisit)
            expire(s, 1); /* held long enough: revisit it */
        else if (probed)  /* past the ceiling and it held: grow faster */
            s->step = dmin(PROBE_MAX, s->step * 2);
        s->target = clamp_rate(lim, s, next_target(s));
        set_rate(lim, s, s->target, now, 1);
    }
    s->hold_since = now;
    s->hold_cost = 0;
}

static void xpool_tick(sl_limiter *lim, double now) {
    int i;
    for (i = 0; i < lim->npools; i++) {
        xpool *x = &lim->pools[i];
        if (x->rate_until > NEVER && now >= x->rate_until) {
            pool_rate(&x->p, x->base_rate, now);
            x->rate_until = NEVER;
        }
    }
}

static void violate(sl_limiter *lim, scope *s, double now, double sent_at) {
    double sum, m, w, span;
    /* a probe failed: it was holding a set-point above a proven floor
     * (its own, not one quota headers set) */
    int probe = !s->recovering && now >= s->quota_until && s->lo > 0 &&
                s->p.rate > s->lo;
    s->violations++;
    if (sent_at >= 0 && sent_at < s->last_violation)
        return; /* sent before the last violation was handled */
    /* the ceiling is what was actually sent: the rate itself may already
     * be halved by a 429 moments ago while the provider's window is still
     * exhausted; at low rates the span widens to see MEAS_MIN requests */
    w = s->p.rate;
    for (span = 1; span < NBINS * BIN; span *= 2) {
        m = meas_rate(s, now, dmin(span, (NBINS - 1) * BIN), &sum);
        if (sum >= MEAS_MIN) {
            w = m;
            break;
        }
    }
    if (!s->recovering && s->p.rate < w)
        w = s->p.rate;               /* it was holding this rate: too high */
    if (s->hi <= 0 && s->old_hi > 0) /* a probe past an expired ceiling */
        s->revisit = w <= s->old_hi * (1 + REVISIT_NEAR)
                         ? dmin(lim->o.quiet, s->revisit * 2)
                         : REVISIT0;
    s->old_hi = 0;
    s->step = PROBE_STEP;
    if (s->hi <= 0 || w < s->hi)
        s->hi = w;
    if (s->lo >= s->hi) /* the floor was proven too high: just under */
        s->lo = s->hi * (1 - 2 * CONVERGED);
    s->target = clamp_rate(lim, s, next_target(s));
    if (!probe)
        s->mult = dmin(MAX_MULT, s->mult * 2);
    set_rate(lim, s, s->p.rate * 0.5, now, 1);
    s->recovering = 1;
    s->rec_t0 = now;
    s->rec_r0 = s->p.rate;
    s->rec_tau = TAU0 * (probe ? 1 : s->mult);
    s->last_violation = s->last_calm = now;
    s->quota_until = NEVER;
}

static void on_latency(sl_limiter *lim, scope *s, double lat, double now) {
    double cap;
    if (!(lat >= 0) || !isfinite(lat) || s->recovering ||
        now < s->p.blocked_until || now - s->last_adjust < ADJ_INTERVAL)
        return;
    if (lat > lim->o.slow_latency) {
        set_rate(lim, s, s->p.rate * RATE_DOWN, now, 1);
    } else if (lat < lim->o.fast_latency &&
               now - s->last_limited <= DEMAND_WINDOW) {
        cap = s->target > 0 ? s->target : lim->o.max_rate;
        if (s->p.rate >= cap)
            return;
        set_rate(lim, s, dmin(cap, s->p.rate * RATE_UP), now, 1);
    } else {
        return;
    }
    s->last_adjust = now;
}

/* Quota headers: spread what remains over the time to reset. */
static void apply_quota(sl_limiter *lim, scope *s, const sl_rlh_result *h,
                        double now, int has_retry_after) {
    double util = lim->o.utilization, r = -1, span;
    double win = h->window > 0 ? h->window : lim->o.window;
    if (h->source == SL_RLH_SRC_NONE)
        return;
    span = h->reset >= 0 ? h->reset : win;
    if (h->remaining >= 0) {
        s->remaining = h->remaining;
        if (h->remaining < 1 && span > 0) {
            if (!has_retry_after)
                pool_block(&s->p, now + span);
            r = h->limit > 0 ? h->limit * util / win : -1;
        } else if (span > 0) {
            r = h->remaining * util / span;
        } else if (h->limit > 0) {
            r = h->limit * util / win;
        }
    } else if (h->limit > 0) {
        r = h->limit * util / win;
    }
    if (r < 0)
        return;
    s->target = clamp_rate(lim, s, r);
    s->recovering = 0;
    s->quota_until = now + (span > 0 ? span : win);
    set_rate(lim, s, s->target, now, 1);
}

/* Binance X-MBX-USED-WEIGHT: what is left of the declared pool's limit in
 * the current (wall-clock aligned) window. */
static void apply_weights(sl_limiter *lim, const sl_rlh_result *h, double now,
                          double wall_now) {
    double server = h->date >= 0 ? h->date : wall_now;
    int i, j;
    for (i = 0; i < h->nweights; i++) {
        for (j = 0; j < lim->npools; j++) {
            xpool *x = &lim->pools[j];
            double w = h->weights[i].window, cap, left, budget;
            if (x->weight_window <= 0 || x->weight_window != w)
                continue;
            cap = x->limit * lim->o.utilization;
            left = server > 0 ? w - fmod(server, w) : w;
            budget = cap - h->weights[i].used;
            x->rate_until = now + left;
            if (budget < 1)
                pool_block(&x->p, now + left);
            else
                pool_rate(&x->p,
                          dmax(lim->o.min_rate, dmin(cap, budget / left)), now);
        }
    }
}

/* ---- endpoints ---------------------------------------------------------- */

static size_t hash(const char *s) {
    unsigned long long h = 1469598103934665603ULL;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
    return (size_t)h;
}

/* The slot holding `name`, or the empty slot where it would go. */
static size_t probe(scope *const *eps, const size_t *slots, size_t nslots,
                    const char *name) {
    size_t i = hash(name) & (nslots - 1);
    while (slots[i] && strcmp(eps[slots[i] - 1]->name, name) != 0)
        i = (i + 1) & (nslots - 1);
    return i;
}

/* Doubles the table (and the endpoint array, kept at half its size). */
static int grow(sl_limiter *lim) {
    size_t n = lim->nslots * 2, i, *slots = calloc(n, sizeof *slots);
    scope **eps = slots ? realloc(lim->eps, n / 2 * sizeof *eps) : NULL;
    if (eps == NULL) {
        free(slots);
        return -1;
    }
    for (i = 0; i < lim->neps; i++)
        slots[probe(eps, slots, n, eps[i]->name)] = i + 1;
    free(lim->slots);
    lim->slots = slots;
    lim->nslots = n;
    lim->eps = eps;
    return 0;
}

/* *out = the endpoint's scope, or NULL for no endpoint or when the table is
 * full. Returns -1 only for an overlong name or out of memory. */
static int endpoint(sl_limiter *lim, const char *name, int create, scope **out,
                    char *err, size_t errlen) {
    size_t i, n;
    scope *s;
    *out = NULL;
    if (name == NULL || name[0] == '\0')
        return 0;
    if (memchr(name, '\0', SL_LIMITER_ENDPOINT_MAX) == NULL)
        return fail(err, errlen, "endpoint name longer than %d bytes",
                    SL_LIMITER_ENDPOINT_MAX - 1);
    i = probe(lim->eps, lim->slots, lim->nslots, name);
    if (lim->slots[i] || !create || lim->neps >= lim->o.max_endpoints) {
        *out = lim->slots[i] ? lim->eps[lim->slots[i] - 1] : NULL;
        return 0;
    }
    n = strlen(name) + 1;
    if ((lim->neps + 1) * 2 > lim->nslots && grow(lim) < 0)
        return fail(err, errlen, "out of memory");
    if ((s = malloc(sizeof *s + n)) == NULL)
        return fail(err, errlen, "out of memory");
    scope_init(s, &lim->o);
    s->name = memcpy((char *)(s + 1), name, n);
    lim->eps[lim->neps++] = s;
    lim->slots[probe(lim->eps, lim->slots, lim->nslots, name)] = lim->neps;
    *out = s;
    return 0;
}

/* ---- admission and the FIFO walk ---------------------------------------- */

static void tick_ticket(sl_limiter *lim, sl_limiter_ticket *t, double now) {
    scope_tick(lim, t->scopes[0], now);
    if (t->scopes[1])
        scope_tick(lim, t->scopes[1], now);
}

/* Earliest time all the ticket's pools allow it; *claimed when one of them
 * is claimed by an earlier ticket in the current walk. */
static double ticket_ready(const sl_limiter *lim, const sl_limiter_ticket *t,
                           int *claimed) {
    double r = NEVER;
    int i;
    *claimed = 0;
    for (i = 0; i < t->npools; i++) {
        r = dmax(r, pool_ready(t->pools[i], t->costs[i]));
        if (t->pools[i]->claim == lim->gen)
            *claimed = 1;
    }
    return r;
}

static void claim(sl_limiter *lim, sl_limiter_ticket *t, double now, int all) {
    int i;
    for (i = 0; i < t->npools; i++)
        if (all || pool_ready(t->pools[i], t->costs[i]) > now + EPS)
            t->pools[i]->claim = lim->gen;
}

static int ticket_banned(const sl_limiter_ticket *t, double now) {
    int i;
    for (i = 0; i < t->npools; i++)
        if (t->pools[i]->ban_until > now)
            return 1;
    return 0;
}

static void mark_limited(sl_limiter_ticket *t, double now) {
    int i, j;
    for (i = 0; i < 2; i++)
        for (j = 0; t->scopes[i] && j < t->npools; j++)
            if (t->pools[j] == &t->scopes[i]->p &&
                pool_ready(t->pools[j], t->costs[j]) > now + EPS)
                t->scopes[i]->last_limited = now;
}

static void admit(sl_limiter *lim, sl_limiter_ticket *t, double now) {
    int i;
    for (i = 0; i < t->npools; i++) {
        pool_settle(t->pools[i], now);
        t->pools[i]->debt += t->costs[i];
    }
    for (i = 0; i < 2; i++) {
        scope *s = t->scopes[i];
        if (s == NULL)
            continue;
        s->requests++;
        s->hold_cost += t->cost;
        /* a pause longer than two intervals at this rate (and a second):
         * the history restarts, what came before says nothing of demand */
        if (now - s->last_admit > dmax(DEMAND_WINDOW, 2 / s->p.rate))
            s->meas_since = now;
        s->last_admit = now;
        meas_advance(s, bin_of(now));
        s->bins[slot(bin_of(now))] += t->cost;
    }
    lim->total_requests++;
}

static void unlink_ticket(sl_limiter *lim, sl_limiter_ticket *t) {
    if (t->prev)
        t->prev->next = t->next;
    else
        lim->head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        lim->tail = t->prev;
    lim->nwaiting--;
}

/* Reports a ticket in *ev and frees it. */
static void report(sl_limiter *lim, sl_limiter_ticket *t, sl_limiter_event *ev,
                   int status, double now, double ready) {
    ev->privdata = t->privdata;
    ev->status = status;
    ev->waited = now - t->created;
    ev->ready_at = ready;
    unlink_ticket(lim, t);
    free(t);
}

/* One pass over the queue in arrival order. With ev: grants and fails
 * tickets, writing events. Without: only marks claims (for acquire) and
 * computes *next. A ticket that may go claims all its pools; one that may
 * not claims the pools that refuse it. */
static int walk(sl_limiter *lim, double now, sl_limiter_event *ev, int max,
                double *next) {
    sl_limiter_ticket *t, *nx;
    int n = 0, have = 0, claimed;
    double best = -1, ready, cand;
    lim->gen++;
    for (t = lim->head; t; t = nx) {
        nx = t->next;
        tick_ticket(lim, t, now);
        ready = ticket_ready(lim, t, &claimed);
        if (!claimed && ready <= now + EPS) {
            if (ev) {
                if (n >= max)
                    break;
                admit(lim, t, now);
                t->scopes[0]->last_limited = now;
                if (t->scopes[1])
                    t->scopes[1]->last_limited = now;
                lim->total_wait += now - t->created;
                report(lim, t, &ev[n++], SL_LIMITER_GO, now, now);
                continue;
            }
            claim(lim, t, now, 1);
            cand = now;
        } else if (now + EPS >= t->deadline || ready > t->deadline + EPS) {
            if (ev) {
                if (n >= max)
                    break;
                report(lim, t, &ev[n++],
                       ticket_banned(t, now) ? SL_LIMITER_BANNED
                                             : SL_LIMITER_TIMEOUT,
                       now, ready);
                continue;
            }
            cand = now;
        } else {
            claim(lim, t, now, 0);
            cand = claimed ? t->deadline : dmin(ready, t->deadline);
        }
        if (!have || cand < best)
            best = cand;
        have = 1;
    }
    if (next)
        *next = have ? best : -1;
    return n;
}

/* ---- public API --------------------------------------------------------- */

void sl_limiter_options_init(sl_limiter_options *o) {
    static const sl_limiter_options defaults = {"unknown", 10,  1,    60,  100,
                                                0.1,       0.9, 3600, 300, 120,
                                                300,       2.0, 0.5,  1024};
    *o = defaults;
}

sl_limiter *sl_limiter_new(const sl_limiter_options *o, char *err,
                           size_t errlen) {
    sl_limiter_options d;
    sl_limiter *lim;
    if (o == NULL) {
        sl_limiter_options_init(&d);
        o = &d;
    }
    if (!(o->min_rate > 0) || !(o->max_rate >= o->min_rate) ||
        !isfinite(o->max_rate) || !(o->rate >= o->min_rate) ||
        !(o->rate <= o->max_rate)) {
        fail(err, errlen,
             "rates must satisfy 0 < min_rate <= rate <= max_rate");
        return NULL;
    }
    if (!(o->burst > 0 && o->burst < 1e12) || !(o->window > 0) ||
        !isfinite(o->window) || !(o->utilization > 0) ||
        !(o->utilization <= 1) || !(o->max_backoff >= 0) ||
        !(o->max_wait >= 0) || !(o->ban_time >= 0) || !(o->quiet > 0) ||
        !(o->slow_latency >= 0) || !(o->fast_latency >= 0)) {
        fail(err, errlen,
             "invalid burst, window, utilization, max_backoff, "
             "max_wait, ban_time, quiet or latency option");
        return NULL;
    }
    if ((lim = calloc(1, sizeof *lim)) == NULL ||
        (lim->slots = calloc(16, sizeof *lim->slots)) == NULL ||
        (lim->eps = malloc(8 * sizeof *lim->eps)) == NULL) {
        sl_limiter_free(lim);
        fail(err, errlen, "out of memory");
        return NULL;
    }
    lim->nslots = 16;
    lim->o = *o;
    snprintf(lim->name, sizeof lim->name, "%s", o->name ? o->name : "unknown");
    lim->o.name = lim->name;
    scope_init(&lim->global, &lim->o);
    lim->last_now = NEVER;
    lim->min_seen = lim->max_seen = o->rate;
    return lim;
}

void sl_limiter_free(sl_limiter *lim) {
    sl_limiter_ticket *t, *nx;
    size_t i;
    if (lim == NULL)
        return;
    for (t = lim->head; t; t = nx) {
        nx = t->next;
        free(t);
    }
    for (i = 0; i < lim->neps; i++)
        free(lim->eps[i]); /* the name lives in the same block */
    free(lim->eps);
    free(lim->slots);
    free(lim);
}

int sl_limiter_add_pool(sl_limiter *lim, const sl_limiter_pool_options *o,
                        double now, char *err, size_t errlen) {
    xpool *x;
    int i;
    (void)clock_in(lim, now);
    if (o == NULL || o->name == NULL || o->name[0] == '\0')
        return fail(err, errlen, "pool needs a name");
    if (!(o->limit > 0) || !isfinite(o->limit) || !(o->window > 0) ||
        !isfinite(o->window) || !(o->weight_window >= 0) || !(o->burst <= 1e12))
        return fail(err, errlen, "pool %s: limit and window must be > 0",
                    o->name);
    if (lim->npools >= SL_LIMITER_MAX_POOLS)
        return fail(err, errlen, "at most %d pools", SL_LIMITER_MAX_POOLS);
    for (i = 0; i < lim->npools; i++)
        if (strncmp(lim->pools[i].name, o->name, SL_LIMITER_NAME_MAX - 1) == 0)
            return fail(err, errlen, "pool %s already exists", o->name);
    x = &lim->pools[lim->npools];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", o->name);
    x->limit = o->limit;
    x->window = o->window;
    x->base_rate = o->limit * lim->o.utilization / o->window;
    x->weight_window = o->weight_window;
    x->rate_until = NEVER;
    pool_init(&x->p, x->base_rate, o->burst > 0 ? o->burst : 1);
    return lim->npools++;
}

int sl_limiter_set_endpoint(sl_limiter *lim, const char *name, double rate,
                            double burst, double now, char *err,
                            size_t errlen) {
    scope *s;
    now = clock_in(lim, now);
    if (!(rate > 0) || !isfinite(rate) || !(burst <= 1e12))
        return fail(err, errlen, "endpoint rate must be > 0");
    if (endpoint(lim, name, 1, &s, err, errlen) < 0)
        return -1;
    if (s == NULL)
        return fail(err, errlen, "no endpoint name, or endpoint table full");
    s->max_rate = rate;
    set_rate(lim, s, rate, now, 0);
    if (burst > 0) {
        pool_settle(&s->p, now);
        s->p.burst = burst;
    }
    return 0;
}

int sl_limiter_acquire(sl_limiter *lim, const sl_limiter_request *req,
                       double now, sl_limiter_ticket **ticket, double *ready_at,
                       char *err, size_t errlen) {
    sl_limiter_ticket tmp, *t;
    double cost, maxw, ready;
    int i, claimed;

    if (ticket)
        *ticket = NULL;
    if (req == NULL)
        return fail(err, errlen, "no request");
    cost = req->cost == 0 ? 1 : req->cost;
    if (!(cost > 0) || !(cost <= 1e12))
        return fail(err, errlen, "cost must be a positive number");
    now = clock_in(lim, now);
    memset(&tmp, 0, sizeof tmp);
    if (endpoint(lim, req->endpoint, 1, &tmp.scopes[1], err, errlen) < 0)
        return -1;
    tmp.scopes[0] = &lim->global;
    tmp.cost = cost;
    tmp.pools[0] = &lim->global.p;
    tmp.costs[0] = cost;
    tmp.npools = 1;
    if (tmp.scopes[1]) {
        tmp.pools[1] = &tmp.scopes[1]->p;
        tmp.costs[1] = cost;
        tmp.npools = 2;
    }
    for (i = 0; i < lim->npools; i++) {
        double c = req->pool_costs ? req->pool_costs[i] : cost;
        if (!(c >= 0) || !(c <= 1e12))
            return fail(err, errlen, "pool %s: cost must be >= 0",
                        lim->pools[i].name);
        if (c > 0) {
            tmp.pools[tmp.npools] = &lim->pools[i].p;
            tmp.costs[tmp.npools++] = c;
        }
    }
    xpool_tick(lim, now);
    tick_ticket(lim, &tmp, now);
    walk(lim, now, NULL, 0, NULL); /* claims of those already waiting */
    ready = ticket_ready(lim, &tmp, &claimed);
    if (!claimed && ready <= now + EPS) {
        admit(lim, &tmp, now);
        if (ready_at)
            *ready_at = now;
        return SL_LIMITER_GO;
    }
    mark_limited(&tmp, now);
    maxw = (req->max_wait >= 0) ? req->max_wait : lim->o.max_wait;
    if (ready_at)
        *ready_at = ready;
    if (maxw <= 0 || ready > now + maxw + EPS)
        return ticket_banned(&tmp, now) ? SL_LIMITER_BANNED
                                        : SL_LIMITER_TIMEOUT;
    if (ticket == NULL)
        return fail(err, errlen, "a ticket pointer is needed to wait");
    if ((t = malloc(sizeof *t)) == NULL)
        return fail(err, errlen, "out of memory");
    *t = tmp;
    t->privdata = req->privdata;
    t->created = now;
    t->deadline = now + maxw;
    t->next = NULL;
    t->prev = lim->tail;
    if (lim->tail)
        lim->tail->next = t;
    else
        lim->head = t;
    lim->tail = t;
    lim->nwaiting++;
    *ticket = t;
    return SL_LIMITER_WAIT;
}

int sl_limiter_poll(sl_limiter *lim, double now, sl_limiter_event *ev,
                    int max) {
    if (ev == NULL || max <= 0)
        return 0;
    now = clock_in(lim, now);
    xpool_tick(lim, now);
    return walk(lim, now, ev, max, NULL);
}

double sl_limiter_next_deadline(sl_limiter *lim, double now) {
    double next;
    now = clock_in(lim, now);
    if (lim->head == NULL)
        return -1;
    xpool_tick(lim, now);
    walk(lim, now, NULL, 0, &next);
    return next;
}

void sl_limiter_cancel(sl_limiter *lim, sl_limiter_ticket *t) {
    if (t == NULL)
        return;
    unlink_ticket(lim, t);
    free(t);
}

int sl_limiter_observe(sl_limiter *lim, const sl_limiter_observation *obs,
                       double now, double wall_now, sl_limiter_verdict *v,
                       char *err, size_t errlen) {
    sl_limiter_verdict dummy;
    const sl_rlh_result *h = obs ? obs->headers : NULL;
    scope *ep, *s, *g = &lim->global;
    double ra = -1, pause;

    if (v == NULL)
        v = &dummy;
    memset(v, 0, sizeof *v);
    v->retry_after = -1;
    if (obs == NULL)
        return fail(err, errlen, "no observation");
    now = clock_in(lim, now);
    if (endpoint(lim, obs->endpoint, 1, &ep, err, errlen) < 0)
        return -1;
    s = ep ? ep : g;
    scope_tick(lim, g, now);
    if (ep)
        scope_tick(lim, ep, now);
    xpool_tick(lim, now);
    if (h && h->retry_after >= 0)
        ra = dmin(h->retry_after, lim->o.max_backoff);
    if (h) {
        apply_quota(lim, s, h, now, ra >= 0);
        apply_weights(lim, h, now, wall_now);
    }
    if (obs->status == 429 || obs->status == 418 || obs->throttled) {
        lim->total_violations++;
        violate(lim, g, now, obs->sent_at);
        if (ep)
            violate(lim, ep, now, obs->sent_at);
        v->throttled = obs->status != 418;
    } else if (obs->latency >= 0) {
        on_latency(lim, g, obs->latency, now);
        if (ep)
            on_latency(lim, ep, obs->latency, now);
    }
    if (ra >= 0) {
        pool_block(&s->p, now + ra);
        v->retry_after = ra;
    }
    if (obs->status == 418) {
        double d = ra >= 0 ? ra : dmin(lim->o.ban_time, lim->o.max_backoff);
        pool_block(&g->p, now + d);
        g->p.ban_until = dmax(g->p.ban_until, now + d);
        v->banned = 1;
        v->ban_until = wall_now + (g->p.ban_until - now);
    }
    pause = dmax(s->p.blocked_until, g->p.blocked_until);
    v->pause_until = pause > now ? pause : 0;
    return 0;
}

int sl_limiter_record_429(sl_limiter *lim, const char *endpoint_name,
                          double retry_after, double now, double wall_now,
                          char *err, size_t errlen) {
    sl_limiter_observation obs;
    sl_rlh_result h;
    sl_rlh_parse(NULL, 429, NULL, 0, wall_now, &h);
    h.retry_after = retry_after >= 0 ? retry_after : -1;
    memset(&obs, 0, sizeof obs);
    obs.endpoint = endpoint_name;
    obs.status = 429;
    obs.headers = &h;
    obs.latency = obs.sent_at = -1;
    return sl_limiter_observe(lim, &obs, now, wall_now, NULL, err, errlen);
}

int sl_limiter_adjust_rate(sl_limiter *lim, const char *name, double factor,
                           double now, char *err, size_t errlen) {
    scope *s;
    now = clock_in(lim, now);
    if (!(factor > 0) || !isfinite(factor))
        return fail(err, errlen, "factor must be a positive number");
    if (endpoint(lim, name, 1, &s, err, errlen) < 0)
        return -1;
    if (s == NULL)
        s = &lim->global;
    scope_tick(lim, s, now);
    set_rate(lim, s, s->p.rate * factor, now, 1);
    if (s->target > 0)
        s->target = s->p.rate;
    return 0;
}

double sl_limiter_rate(sl_limiter *lim, const char *name, double now) {
    scope *s = &lim->global;
    now = clock_in(lim, now);
    if (name && name[0] &&
        (endpoint(lim, name, 0, &s, NULL, 0) < 0 || s == NULL))
        return -1;
    scope_tick(lim, s, now);
    return s->p.rate;
}

void sl_limiter_get_stats(sl_limiter *lim, double now, sl_limiter_stats *st) {
    now = clock_in(lim, now);
    scope_tick(lim, &lim->global, now);
    memset(st, 0, sizeof *st);
    st->limiter_name = lim->name;
    st->default_rate = lim->o.rate;
    st->current_global_rate = lim->global.p.rate;
    st->total_requests = lim->total_requests;
    st->total_violations = lim->total_violations;
    st->total_wait_time = lim->total_wait;
    st->rate_adjustments = lim->rate_adjustments;
    st->min_rate_seen = lim->min_seen;
    st->max_rate_seen = lim->max_seen;
    st->endpoints_tracked = (long long)lim->neps;
    st->backoff_multiplier = lim->global.mult;
    st->waiting = lim->nwaiting;
}

size_t sl_limiter_endpoint_count(const sl_limiter *lim) { return lim->neps; }

static double backoff_until(const scope *s, double now) {
    double until =
        dmax(s->p.blocked_until, s->recovering ? recovery_end(s) : NEVER);
    return until > now ? until : 0;
}

int sl_limiter_get_endpoint_stats(sl_limiter *lim, size_t i, double now,
                                  double wall_now,
                                  sl_limiter_endpoint_stats *st) {
    scope *s;
    double until;
    if (i >= lim->neps)
        return -1;
    s = lim->eps[i];
    now = clock_in(lim, now);
    scope_tick(lim, s, now);
    until = backoff_until(s, now);
    memset(st, 0, sizeof *st);
    st->endpoint = s->name;
    st->rate = s->p.rate;
    st->requests_made = s->requests;
    st->violations = s->violations;
    st->rate_limit_remaining = s->remaining;
    st->in_backoff = until > 0;
    st->backoff_until = until > 0 ? wall_now + (until - now) : 0;
    st->backoff_multiplier = s->mult;
    st->ceiling = s->hi;
    return 0;
}

/* ---- snapshot / restore ------------------------------------------------- */

static double to_epoch(double t, double now, double wall_now, int future) {
    if (t <= NEVER / 2 || (future && t <= now))
        return 0;
    return wall_now + (t - now);
}

static double from_epoch(double e, double now, double wall_now) {
    return e > 0 ? now + (e - wall_now) : NEVER;
}

static void scope_save(const scope *s, double now, double wall_now,
                       sl_limiter_scope_snapshot *o) {
    memset(o, 0, sizeof *o);
    if (s->name)
        memcpy(o->endpoint, s->name, strlen(s->name) + 1);
    o->rate = s->p.rate;
    o->backoff_multiplier = s->mult;
    o->ceiling = s->hi;
    o->floor = s->lo;
    o->backoff_until = to_epoch(s->p.blocked_until, now, wall_now, 1);
    o->ban_until = to_epoch(s->p.ban_until, now, wall_now, 1);
    o->last_violation = to_epoch(s->last_violation, now, wall_now, 0);
    o->remaining = s->remaining;
    o->requests_made = s->requests;
    o->violations = s->violations;
}

static void scope_load(sl_limiter *lim, scope *s,
                       const sl_limiter_scope_snapshot *o, double now,
                       double wall_now) {
    s->mult = (o->backoff_multiplier >= 1 && o->backoff_multiplier <= MAX_MULT)
                  ? o->backoff_multiplier
                  : 1;
    s->hi = o->ceiling > 0 && isfinite(o->ceiling) ? o->ceiling : 0;
    s->lo = o->floor > 0 && isfinite(o->floor) ? o->floor : 0;
    set_rate(lim, s, o->rate, now, 0);
    pool_block(&s->p, from_epoch(o->backoff_until, now, wall_now));
    s->p.ban_until =
        dmax(s->p.ban_until, from_epoch(o->ban_until, now, wall_now));
    s->last_violation = from_epoch(o->last_violation, now, wall_now);
    s->last_calm = dmin(now, s->last_violation);
    s->remaining = o->remaining >= 0 ? o->remaining : -1;
    s->requests = o->requests_made;
    s->violations = o->violations;
    if (s->hi > 0 || s->lo > 0) { /* climb back to the learned set-point */
        s->target = clamp_rate(lim, s, next_target(s));
        s->recovering = 1;
        s->rec_t0 = now;
        s->rec_r0 = s->p.rate;
        s->rec_tau = TAU0 * s->mult;
    }
}

int sl_limiter_save(sl_limiter *lim, double now, double wall_now,
                    sl_limiter_snapshot *out, char *err, size_t errlen) {
    size_t i;
    int j;
    now = clock_in(lim, now);
    memset(out, 0, sizeof *out);
    out->version = SL_LIMITER_SNAPSHOT_VERSION;
    memcpy(out->name, lim->name, sizeof out->name);
    out->saved_at = wall_now;
    out->total_requests = lim->total_requests;
    out->total_violations = lim->total_violations;
    out->rate_adjustments = lim->rate_adjustments;
    out->total_wait_time = lim->total_wait;
    out->min_rate_seen = lim->min_seen;
    out->max_rate_seen = lim->max_seen;
    scope_tick(lim, &lim->global, now);
    scope_save(&lim->global, now, wall_now, &out->global);
    if (lim->neps &&
        (out->endpoints = calloc(lim->neps, sizeof *out->endpoints)) == NULL)
        return fail(err, errlen, "out of memory");
    out->nendpoints = lim->neps;
    for (i = 0; i < lim->neps; i++) {
        scope_tick(lim, lim->eps[i], now);
        scope_save(lim->eps[i], now, wall_now, &out->endpoints[i]);
    }
    out->npools = (size_t)lim->npools;
    for (j = 0; j < lim->npools; j++) {
        memcpy(out->pools[j].name, lim->pools[j].name, SL_LIMITER_NAME_MAX);
        out->pools[j].blocked_until =
            to_epoch(lim->pools[j].p.blocked_until, now, wall_now, 1);
        out->pools[j].ban_until =
            to_epoch(lim->pools[j].p.ban_until, now, wall_now, 1);
    }
    return 0;
}

void sl_limiter_snapshot_free(sl_limiter_snapshot *s) {
    if (s == NULL)
        return;
    free(s->endpoints);
    s->endpoints = NULL;
    s->nendpoints = 0;
}

int sl_limiter_restore(sl_limiter *lim, const sl_limiter_snapshot *s,
                       double now, double wall_now, char *err, size_t errlen) {
    size_t i, k;
    int j;
    scope *ep;
    if (s == NULL || s->version != SL_LIMITER_SNAPSHOT_VERSION)
        return fail(err, errlen, "unsupported limiter snapshot version");
    now = clock_in(lim, now);
    lim->total_requests = s->total_requests;
    lim->total_violations = s->total_violations;
    lim->rate_adjustments = s->rate_adjustments;
    lim->total_wait = s->total_wait_time;
    lim->min_seen = dmin(lim->min_seen, s->min_rate_seen);
    lim->max_seen = dmax(lim->max_seen, s->max_rate_seen);
    scope_load(lim, &lim->global, &s->global, now, wall_now);
    for (i = 0; i < s->nendpoints && s->endpoints; i++) {
        const sl_limiter_scope_snapshot *o = &s->endpoints[i];
        if (memchr(o->endpoint, '\0', sizeof o->endpoint) == NULL)
            return fail(err, errlen, "snapshot endpoint name unterminated");
        if (endpoint(lim, o->endpoint, 1, &ep, err, errlen) < 0)
            return -1;
        if (ep == NULL)
            return fail(err, errlen, "endpoint table full");
        scope_load(lim, ep, o, now, wall_now);
    }
    for (k = 0; k < s->npools && k < SL_LIMITER_MAX_POOLS; k++)
        for (j = 0; j < lim->npools; j++)
            if (strncmp(lim->pools[j].name, s->pools[k].name,
                        SL_LIMITER_NAME_MAX) == 0) {
                pool *p = &lim->pools[j].p;
                pool_block(
                    p, from_epoch(s->pools[k].blocked_until, now, wall_now));
                p->ban_until =
                    dmax(p->ban_until,
                         from_epoch(s->pools[k].ban_until, now, wall_now));
            }
    return 0;
}
