/* limiter_scope.c -- a limiter scope's rate and how it adapts
 *
 * A scope (the global one, or an endpoint's) holds a token pool whose rate
 * follows what the provider says: quota headers, Retry-After, 429s, and
 * latency; limiter.h describes the behaviour, limiter_internal.h the types.
 * Declared pools' rates (X-MBX-USED-WEIGHT) are set here too.
 */
#include "limiter_internal.h"

#include <math.h>
#include <string.h>

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

/* ---- scopes: rates and adaptation --------------------------------------- */

void sl_limiter_scope_init(scope *s, const sl_limiter_options *o) {
    memset(s, 0, sizeof *s);
    pool_init(&s->p, o->rate, o->burst);
    s->meas_since = s->last_admit = NEVER;
}

void sl_limiter_adapt_init(adapt *x, const sl_limiter_options *o) {
    memset(x, 0, sizeof *x);
    x->max_rate = o->max_rate;
    x->mult = 1;
    x->last_violation = x->last_calm = x->last_adjust = NEVER;
    x->last_limited = x->quota_until = x->hold_since = NEVER;
    x->revisit = REVISIT0;
    x->step = PROBE_STEP;
    x->remaining = -1;
}

/* An adapt block as sl_limiter_adapt_init leaves it, but for max_rate: the
 * options' max_rate caps every rate anyway. */
static const adapt adapt_none = {
    .max_rate = INFINITY,
    .mult = 1,
    .hold_since = NEVER,
    .last_violation = NEVER,
    .last_calm = NEVER,
    .last_adjust = NEVER,
    .last_limited = NEVER,
    .revisit = REVISIT0,
    .step = PROBE_STEP,
    .quota_until = NEVER,
    .remaining = -1,
};

const adapt *sl_limiter_scope_xr(sl_limiter *lim, const scope *s) {
    const adapt *x = scope_x(lim, s);
    return x ? x : &adapt_none;
}

static double clamp_rate(sl_limiter *lim, const scope *s, double r) {
    double max = dmin(sl_limiter_scope_xr(lim, s)->max_rate, lim->o.max_rate);
    if (!(r >= lim->o.min_rate))
        r = lim->o.min_rate;
    return r > max ? max : r;
}

void sl_limiter_scope_set_rate(sl_limiter *lim, scope *s, double r, double now,
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
    long long m = b % HBINS;
    return (int)(m < 0 ? m + HBINS : m);
}

static long long bin_of(double t) { return (long long)floor(t / BIN); }

/* The bins hold the HBINS bins up to last_admit's: bin k's cost, 0 for a
 * bin outside them (older, or after the last admission). */
static double bin_cost(const scope *s, long long k) {
    long long b0 = bin_of(s->last_admit);
    return k <= b0 && k > b0 - HBINS ? (double)s->bins[slot(k)] : 0;
}

/* Cost admitted per second over the last `span` seconds (whole bins, at
 * most NBINS - 1 of them); *sum gets the cost. When the history is younger
 * than the span (the first requests, or the first after a pause), the cost
 * is spread over the time actually observed, not over the whole span: ten
 * requests in the first 0.1 s are 100 r/s, not 10. */
static double meas_rate(scope *s, double now, double span, double *sum) {
    long long b = bin_of(now), first = bin_of(now - span) + 1, k;
    double dur = now - dmax((double)first * BIN, s->meas_since);
    *sum = 0;
    for (k = first; k <= b; k++)
        *sum += bin_cost(s, k);
    return dur > 0 ? *sum / dur : 0;
}

static double next_target(const adapt *x) {
    if (x->hi <= 0)
        return x->lo * (1 + x->step);
    if (x->lo <= 0)
        return x->hi * FIRST_TARGET;
    if (x->hi - x->lo <= CONVERGED * x->hi)
        return x->lo;
    return x->lo + (x->hi - x->lo) * BISECT;
}

static double recovery_end(const scope *s, const adapt *x) {
    return dmax(x->rec_t0, s->p.blocked_until) + 5 * x->rec_tau;
}

/* Forgets the ceiling: the next set-points probe past it, growing faster
 * each time one holds. `confirmable`: the ceiling was not disproved, so a
 * 429 just above it confirms it (see violate). */
static void expire(adapt *x, int confirmable) {
    x->old_hi = confirmable ? x->hi : 0;
    if (!confirmable)
        x->revisit = REVISIT0;
    x->hi = 0;
    x->step = PROBE_STEP;
}

/* Advances the time-driven parts of a scope to `now`. Idempotent for equal
 * `now`: the recovery ramp is a function of time, not of call count. */
void sl_limiter_scope_tick(sl_limiter *lim, scope *s, double now) {
    double q = lim->o.quiet;
    adapt *x = scope_x(lim, s);
    if (x == NULL) /* nothing learned, nothing time-driven */
        return;
    if (x->recovering) {
        double start = dmax(x->rec_t0, s->p.blocked_until);
        if (now >= recovery_end(s, x)) {
            sl_limiter_scope_set_rate(lim, s, x->target, now, 0);
            x->recovering = 0;
            x->hold_since = now;
            x->hold_cost = 0;
        } else if (now > start) {
            sl_limiter_scope_set_rate(lim, s,
                                      x->target -
                                          (x->target - x->rec_r0) *
                                              exp(-(now - start) / x->rec_tau),
                                      now, 0);
        }
    }
    if ((x->mult > 1 || x->hi > 0) && now - x->last_calm >= q) {
        double k = floor((now - x->last_calm) / q);
        x->last_calm += k * q;
        x->mult = k >= 4 ? 1 : dmax(1, x->mult / pow(2, k));
        if (x->hi > 0) { /* forget the ceiling: grow again from here */
            expire(x, 1);
            x->lo = dmax(x->lo, x->recovering ? x->target : s->p.rate);
            x->target = clamp_rate(lim, s, x->lo);
        }
    }
    if (x->recovering)
        return;
    if (now < x->quota_until || now < s->p.blocked_until ||
        (x->hi <= 0 && x->lo <= 0) || now - x->hold_since < PROVE)
        return;
    if (x->hold_cost >= 0.9 * s->p.rate * (now - x->hold_since)) {
        int probed = x->hi <= 0 && s->p.rate > x->lo;
        x->lo = dmax(x->lo, s->p.rate);
        if (x->hi > 0 && x->lo >= x->hi)
            expire(x, 0); /* held above the ceiling: it was wrong */
        else if (x->hi > 0 && now - x->last_violation >= x->revisit)
            expire(x, 1); /* held long enough: revisit it */
        else if (probed)  /* past the ceiling and it held: grow faster */
            x->step = dmin(PROBE_MAX, x->step * 2);
        x->target = clamp_rate(lim, s, next_target(x));
        sl_limiter_scope_set_rate(lim, s, x->target, now, 1);
    }
    x->hold_since = now;
    x->hold_cost = 0;
}

void sl_limiter_pools_tick(sl_limiter *lim, double now) {
    int i;
    for (i = 0; i < lim->npools; i++) {
        xpool *x = &lim->pools[i];
        if (x->rate_until > NEVER && now >= x->rate_until) {
            pool_rate(&x->p, x->base_rate, now);
            x->rate_until = NEVER;
        }
    }
}

void sl_limiter_scope_violate(sl_limiter *lim, scope *s, double now,
                              double sent_at) {
    double sum, m, w, span;
    adapt *x = scope_x(lim, s);
    /* a probe failed: it was holding a set-point above a proven floor
     * (its own, not one quota headers set) */
    int probe = !x->recovering && now >= x->quota_until && x->lo > 0 &&
                s->p.rate > x->lo;
    x->violations++;
    if (sent_at >= 0 && sent_at < x->last_violation)
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
    if (!x->recovering && s->p.rate < w)
        w = s->p.rate;               /* it was holding this rate: too high */
    if (x->hi <= 0 && x->old_hi > 0) /* a probe past an expired ceiling */
        x->revisit = w <= x->old_hi * (1 + REVISIT_NEAR)
                         ? dmin(lim->o.quiet, x->revisit * 2)
                         : REVISIT0;
    x->old_hi = 0;
    x->step = PROBE_STEP;
    if (x->hi <= 0 || w < x->hi)
        x->hi = w;
    if (x->lo >= x->hi) /* the floor was proven too high: just under */
        x->lo = x->hi * (1 - 2 * CONVERGED);
    x->target = clamp_rate(lim, s, next_target(x));
    if (!probe)
        x->mult = dmin(MAX_MULT, x->mult * 2);
    sl_limiter_scope_set_rate(lim, s, s->p.rate * 0.5, now, 1);
    x->recovering = 1;
    x->rec_t0 = now;
    x->rec_r0 = s->p.rate;
    x->rec_tau = TAU0 * (probe ? 1 : x->mult);
    x->last_violation = x->last_calm = now;
    x->quota_until = NEVER;
}

void sl_limiter_scope_latency(sl_limiter *lim, scope *s, double lat,
                              double now) {
    double cap;
    adapt *x = scope_x(lim, s);
    if (x == NULL) /* never made to wait, and not slow (see the header) */
        return;
    if (!(lat >= 0) || !isfinite(lat) || x->recovering ||
        now < s->p.blocked_until || now - x->last_adjust < ADJ_INTERVAL)
        return;
    if (lat > lim->o.slow_latency) {
        sl_limiter_scope_set_rate(lim, s, s->p.rate * RATE_DOWN, now, 1);
    } else if (lat < lim->o.fast_latency &&
               now - x->last_limited <= DEMAND_WINDOW) {
        cap = x->target > 0 ? x->target : lim->o.max_rate;
        if (s->p.rate >= cap)
            return;
        sl_limiter_scope_set_rate(lim, s, dmin(cap, s->p.rate * RATE_UP), now,
                                  1);
    } else {
        return;
    }
    x->last_adjust = now;
}

/* Quota headers: spread what remains over the time to reset. */
void sl_limiter_scope_quota(sl_limiter *lim, scope *s, const sl_rlh_result *h,
                            double now, int has_retry_after) {
    double util = lim->o.utilization, r = -1, span;
    double win = h->window > 0 ? h->window : lim->o.window;
    adapt *x;
    if (h->source == SL_RLH_SRC_NONE)
        return;
    x = scope_x(lim, s);
    span = h->reset >= 0 ? h->reset : win;
    if (h->remaining >= 0) {
        x->remaining = h->remaining;
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
    x->target = clamp_rate(lim, s, r);
    x->recovering = 0;
    x->quota_until = now + (span > 0 ? span : win);
    sl_limiter_scope_set_rate(lim, s, x->target, now, 1);
}

/* Binance X-MBX-USED-WEIGHT: what is left of the declared pool's limit in
 * the current (wall-clock aligned) window, for the pools the request was
 * charged in (pool_costs as in sl_limiter_request; NULL: all of them). */
void sl_limiter_pools_weights(sl_limiter *lim, const sl_rlh_result *h,
                              const double *pool_costs, double now,
                              double wall_now) {
    double server = h->date >= 0 ? h->date : wall_now;
    int i, j;
    for (i = 0; i < h->nweights; i++) {
        for (j = 0; j < lim->npools; j++) {
            xpool *x = &lim->pools[j];
            double w = h->weights[i].window, cap, left, budget;
            if (x->weight_window <= 0 || x->weight_window != w)
                continue;
            if (pool_costs && !(pool_costs[j] > 0))
                continue; /* another API's quota */
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

double sl_limiter_scope_backoff_until(sl_limiter *lim, const scope *s,
                                      double now) {
    const adapt *x = sl_limiter_scope_xr(lim, s);
    double until =
        dmax(s->p.blocked_until, x->recovering ? recovery_end(s, x) : NEVER);
    return until > now ? until : 0;
}

/* Counts an admitted request of the given cost in s's history. */
void sl_limiter_scope_admit(sl_limiter *lim, scope *s, double cost,
                            double now) {
    adapt *x = scope_x(lim, s);
    long long b = bin_of(now), b0 = bin_of(s->last_admit), k;
    s->requests++;
    if (x) /* read only once a violation has set hold_since */
        x->hold_cost += cost;
    /* a pause longer than two intervals at this rate (and a second):
     * the history restarts, what came before says nothing of demand */
    if (now - s->last_admit > dmax(DEMAND_WINDOW, 2 / s->p.rate))
        s->meas_since = now;
    if (b - b0 >= HBINS)
        memset(s->bins, 0, sizeof s->bins);
    else
        for (k = b0 + 1; k <= b; k++)
            s->bins[slot(k)] = 0;
    s->last_admit = now;
    s->bins[slot(b)] += (float)cost;
}

int sl_limiter_scope_idle(const sl_limiter *lim, const scope *s, double now) {
    const pool *p = &s->p;
    return s->xi == 0 && p->rate == lim->o.rate && p->burst == lim->o.burst &&
           p->blocked_until <= now && p->ban_until <= now &&
           p->debt <= (now - p->t) * p->rate &&
           /* the history is empty and would restart (scope_admit) */
           now - s->last_admit > dmax(NBINS * BIN, 2 / p->rate);
}

/* ---- snapshots of a scope ----------------------------------------------- */

void sl_limiter_scope_save(sl_limiter *lim, const scope *s, double now,
                           double wall_now, sl_limiter_scope_snapshot *o) {
    const adapt *x = sl_limiter_scope_xr(lim, s);
    const char *name = scope_name(lim, s);
    memset(o, 0, sizeof *o);
    if (name)
        memcpy(o->endpoint, name, strlen(name) + 1);
    o->rate = s->p.rate;
    o->backoff_multiplier = x->mult;
    o->ceiling = x->hi;
    o->floor = x->lo;
    o->backoff_until = to_epoch(s->p.blocked_until, now, wall_now, 1);
    o->ban_until = to_epoch(s->p.ban_until, now, wall_now, 1);
    o->last_violation = to_epoch(x->last_violation, now, wall_now, 0);
    o->remaining = x->remaining;
    o->requests_made = s->requests;
    o->violations = x->violations;
}

void sl_limiter_scope_load(sl_limiter *lim, scope *s,
                           const sl_limiter_scope_snapshot *o, double now,
                           double wall_now) {
    adapt *x = scope_x(lim, s);
    x->mult = (o->backoff_multiplier >= 1 && o->backoff_multiplier <= MAX_MULT)
                  ? o->backoff_multiplier
                  : 1;
    x->hi = o->ceiling > 0 && isfinite(o->ceiling) ? o->ceiling : 0;
    x->lo = o->floor > 0 && isfinite(o->floor) ? o->floor : 0;
    sl_limiter_scope_set_rate(lim, s, o->rate, now, 0);
    pool_block(&s->p, from_epoch(o->backoff_until, now, wall_now));
    s->p.ban_until =
        dmax(s->p.ban_until, from_epoch(o->ban_until, now, wall_now));
    x->last_violation = from_epoch(o->last_violation, now, wall_now);
    x->last_calm = dmin(now, x->last_violation);
    x->remaining = o->remaining >= 0 ? o->remaining : -1;
    s->requests = o->requests_made;
    x->violations = o->violations;
    if (x->hi > 0 || x->lo > 0) { /* climb back to the learned set-point */
        x->target = clamp_rate(lim, s, next_target(x));
        x->recovering = 1;
        x->rec_t0 = now;
        x->rec_r0 = s->p.rate;
        x->rec_tau = TAU0 * x->mult;
    }
}
