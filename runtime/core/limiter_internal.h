/* limiter_internal.h -- the limiter's private types, shared by its two files
 *
 * limiter.c: the public API of limiter.h, endpoints, the ticket queue and
 * admission, statistics, snapshots. limiter_scope.c: a scope's rate and how
 * it adapts (quota headers, 429s, latency, the ceiling and its probing),
 * and the rates of declared pools. Private to those two files.
 *
 * Ownership: a limiter owns everything here. The global scope and the
 * declared pools live inside it; endpoint scopes are malloc'd with their
 * names (in one block) and freed by sl_limiter_free; tickets are malloc'd
 * by acquire and freed when reported or cancelled.
 *
 * Time: `now` is monotonic seconds as clock_in (limiter.c) returns it, never
 * decreasing; NEVER stands for "no such time".
 */
#ifndef SLUICE_LIMITER_INTERNAL_H
#define SLUICE_LIMITER_INTERNAL_H

#include <string.h>

#include "limiter.h"

#define NEVER (-1e18) /* "no such time" for monotonic stamps */
#define EPS 1e-9      /* slack on time and token comparisons */
#define NBINS 16      /* admission history: 16 bins of 0.25 s */

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

static inline double dmin(double a, double b) { return a < b ? a : b; }
static inline double dmax(double a, double b) { return a > b ? a : b; }

/* ---- token pools -------------------------------------------------------- */

static inline void pool_init(pool *p, double rate, double burst) {
    memset(p, 0, sizeof *p);
    p->rate = rate;
    p->burst = burst;
    p->t = p->blocked_until = p->ban_until = NEVER;
}

static inline void pool_settle(pool *p, double now) {
    if (now > p->t) {
        p->debt -= (now - p->t) * p->rate;
        if (p->debt < 0)
            p->debt = 0;
        p->t = now;
    }
}

/* Earliest time the pool allows a charge of c. */
static inline double pool_ready(const pool *p, double c) {
    double allow = p->burst - c, ready = p->t;
    if (allow < 0)
        allow = 0;
    if (p->debt > allow)
        ready = p->t + (p->debt - allow) / p->rate;
    return dmax(ready, p->blocked_until);
}

static inline void pool_rate(pool *p, double r, double now) {
    pool_settle(p, now);
    p->rate = r;
}

static inline void pool_block(pool *p, double until) {
    if (until > p->blocked_until)
        p->blocked_until = until;
}

/* ---- wall-clock stamps in snapshots ------------------------------------- */

/* A monotonic stamp as epoch seconds; 0 for NEVER (and, with future, for a
 * time already past). */
static inline double to_epoch(double t, double now, double wall_now,
                              int future) {
    if (t <= NEVER / 2 || (future && t <= now))
        return 0;
    return wall_now + (t - now);
}

/* The monotonic stamp of epoch seconds e; NEVER for 0. */
static inline double from_epoch(double e, double now, double wall_now) {
    return e > 0 ? now + (e - wall_now) : NEVER;
}

/* ---- scopes (limiter_scope.c) ------------------------------------------- */

void sl_limiter_scope_init(scope *s, const sl_limiter_options *o);

/* Sets s's rate to r, clamped to [min_rate, max_rate]; count: it is an
 * adaptation (rate_adjustments). */
void sl_limiter_scope_set_rate(sl_limiter *lim, scope *s, double r, double now,
                               int count);

/* Advances the time-driven parts of a scope to `now`. Idempotent for equal
 * `now`: the recovery ramp is a function of time, not of call count. */
void sl_limiter_scope_tick(sl_limiter *lim, scope *s, double now);

/* Counts an admitted request of the given cost in s's history. */
void sl_limiter_scope_admit(scope *s, double cost, double now);

/* A 429 (or 418, or a throttled observation) for a request sent at sent_at
 * (< 0: unknown). */
void sl_limiter_scope_violate(sl_limiter *lim, scope *s, double now,
                              double sent_at);

/* A response latency in seconds. */
void sl_limiter_scope_latency(sl_limiter *lim, scope *s, double lat,
                              double now);

/* Quota headers: spread what remains over the time to reset. */
void sl_limiter_scope_quota(sl_limiter *lim, scope *s, const sl_rlh_result *h,
                            double now, int has_retry_after);

/* When s's backoff ends (a block or a recovery ramp), or 0 if not backing
 * off. */
double sl_limiter_scope_backoff_until(const scope *s, double now);

void sl_limiter_scope_save(const scope *s, double now, double wall_now,
                           sl_limiter_scope_snapshot *o);
void sl_limiter_scope_load(sl_limiter *lim, scope *s,
                           const sl_limiter_scope_snapshot *o, double now,
                           double wall_now);

/* Declared pools: the end of a temporary rate, and X-MBX-USED-WEIGHT. */
void sl_limiter_pools_tick(sl_limiter *lim, double now);
void sl_limiter_pools_weights(sl_limiter *lim, const sl_rlh_result *h,
                              const double *pool_costs, double now,
                              double wall_now);

#endif
