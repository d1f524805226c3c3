/* limiter_internal.h -- the limiter's private types, shared by its files
 *
 * limiter.c: the public API of limiter.h, the ticket queue and admission,
 * statistics, snapshots. limiter_endpoints.c: the endpoint table (lookup,
 * creation, eviction) and the endpoints' adapt blocks. limiter_scope.c: a
 * scope's rate and how it adapts (quota headers, 429s, latency, the
 * ceiling and its probing), and the rates of declared pools. Private to
 * those three files.
 *
 * Ownership: a limiter owns everything here. The global scope and its
 * adapt block live inside it; the declared pools in one array allocated by
 * the first sl_limiter_add_pool (all SL_LIMITER_MAX_POOLS at once: tickets
 * point into it); endpoint scopes are malloc'd with their names (in one
 * block) and freed when evicted or by sl_limiter_free; endpoints' adapt
 * blocks in one array (lim->xs, indexed, so it may move when it grows: hold
 * no adapt pointer across sl_limiter_scope_adapt) freed by sl_limiter_free;
 * tickets are malloc'd by acquire and freed when reported or cancelled.
 *
 * Size: 100,000 endpoints must fit in 200 bytes each (issue 22), so an
 * endpoint's scope holds only what every request touches (its pool, its
 * request count, its admission history); what it learns lives in an adapt
 * block it gets the first time it adapts (see sl_limiter_scope_adapt).
 *
 * Time: `now` is monotonic seconds as clock_in (limiter.c) returns it, never
 * decreasing; NEVER stands for "no such time".
 */
#ifndef SLUICE_LIMITER_INTERNAL_H
#define SLUICE_LIMITER_INTERNAL_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "limiter.h"

#define NEVER (-1e18)     /* "no such time" for monotonic stamps */
#define EPS 1e-9          /* slack on time and token comparisons */
#define NBINS 16          /* admission history: 16 bins of 0.25 s ... */
#define HBINS (NBINS - 1) /* ... of which a measurement reads at most 15 */

typedef struct pool {
    double rate, burst;
    double debt, t; /* tokens owed as of time t */
    double blocked_until, ban_until;
    unsigned long claim; /* == lim->gen: claimed in the current walk */
} pool;

/* What a scope has learned and how it adapts. An endpoint has none until it
 * first adapts: sl_limiter_set_endpoint, a 429, quota headers, a slow
 * response, a request it made wait, or a restore. Until then every field
 * reads as adapt_none (limiter_scope.c) has it. */
typedef struct adapt {
    double max_rate;
    double mult, hi, lo, target; /* target 0: no set-point */
    double rec_t0, rec_r0, rec_tau;
    double hold_since, hold_cost;
    double last_violation, last_calm, last_adjust, last_limited;
    double revisit, step, old_hi; /* ceiling expiry and probing past it */
    double quota_until, remaining;
    long long violations;
    int recovering;
} adapt;

/* An endpoint's name follows its scope in the same block (scope_name). */
typedef struct scope {
    pool p;
    long long requests;
    double meas_since, last_admit; /* admission history covers [since, now] */
    /* cost admitted per 0.25 s bin, for the HBINS bins up to last_admit's
     * (slot k % HBINS); float: sums of request costs, read as rates */
    float bins[HBINS];
    uint32_t xi; /* its adapt block is lim->xs[xi - 1]; 0: none yet */
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
    adapt gx;     /* the global scope's adapt block */
    xpool *pools; /* NULL until the first pool is added */
    int npools;
    adapt *xs; /* endpoints' adapt blocks, nxs used of xcap */
    size_t nxs, xcap;
    scope **eps; /* in creation order (an evicted endpoint's place goes to
                    the one that replaced it); NULL until the first */
    size_t neps, epcap;
    /* open addressing, linear probing, load <= 3/4: (fingerprint << 24) |
     * (index into eps + 1), 0 = empty; NULL until the first endpoint */
    uint32_t *slots;
    size_t nslots;
    size_t hand; /* where the search for an idle endpoint to evict resumes */
    sl_limiter_ticket *head, *tail;
    long long nwaiting;
    unsigned long gen;
    double last_now;
    long long total_requests, total_violations, rate_adjustments;
    double total_wait, min_seen, max_seen;
};

static inline const char *scope_name(const sl_limiter *lim, const scope *s) {
    return s == &lim->global ? NULL : (const char *)(s + 1);
}

/* The scope's adapt block, or NULL when it has none yet. */
static inline adapt *scope_x(sl_limiter *lim, const scope *s) {
    if (s == &lim->global)
        return &lim->gx;
    return s->xi ? &lim->xs[s->xi - 1] : NULL;
}

/* Fills err (when given) and returns -1. */
static inline int fail(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

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

/* ---- endpoints (limiter_endpoints.c) ------------------------------------ */

/* *out = the endpoint's scope, or NULL for no endpoint or when the table is
 * full (and no endpoint in it is idle); create: make it when it is not
 * there. Returns -1 only for an overlong name or out of memory. */
int sl_limiter_endpoint(sl_limiter *lim, const char *name, int create,
                        double now, scope **out, char *err, size_t errlen);

/* Gives s its adapt block if it has none. Returns 0, or -1 out of memory.
 * Moves lim->xs: re-read scope_x() after it. */
int sl_limiter_scope_adapt(sl_limiter *lim, scope *s);

/* ---- scopes (limiter_scope.c) ------------------------------------------- */

void sl_limiter_scope_init(scope *s, const sl_limiter_options *o);

/* The initial adapt block for options o. */
void sl_limiter_adapt_init(adapt *x, const sl_limiter_options *o);

/* The scope's adapt block as read: adapt_none when it has none yet. */
const adapt *sl_limiter_scope_xr(sl_limiter *lim, const scope *s);

/* Sets s's rate to r, clamped to [min_rate, max_rate]; count: it is an
 * adaptation (rate_adjustments). */
void sl_limiter_scope_set_rate(sl_limiter *lim, scope *s, double r, double now,
                               int count);

/* Advances the time-driven parts of a scope to `now`. Idempotent for equal
 * `now`: the recovery ramp is a function of time, not of call count. */
void sl_limiter_scope_tick(sl_limiter *lim, scope *s, double now);

/* Counts an admitted request of the given cost in s's history. */
void sl_limiter_scope_admit(sl_limiter *lim, scope *s, double cost, double now);

/* True when s's state is what a new endpoint's would be at `now` (bar its
 * request count): no adapt block, initial rate and burst, pool refilled,
 * not blocked, history empty. Such an endpoint may be evicted. */
int sl_limiter_scope_idle(const sl_limiter *lim, const scope *s, double now);

/* A 429 (or 418, or a throttled observation) for a request sent at sent_at
 * (< 0: unknown). s must have its adapt block. */
void sl_limiter_scope_violate(sl_limiter *lim, scope *s, double now,
                              double sent_at);

/* A response latency in seconds. A scope without an adapt block has never
 * made a request wait, so only a slow response acts on it: give it one
 * first when lat > slow_latency. */
void sl_limiter_scope_latency(sl_limiter *lim, scope *s, double lat,
                              double now);

/* Quota headers: spread what remains over the time to reset. s must have
 * its adapt block when h->source is not SL_RLH_SRC_NONE. */
void sl_limiter_scope_quota(sl_limiter *lim, scope *s, const sl_rlh_result *h,
                            double now, int has_retry_after);

/* When s's backoff ends (a block or a recovery ramp), or 0 if not backing
 * off. */
double sl_limiter_scope_backoff_until(sl_limiter *lim, const scope *s,
                                      double now);

void sl_limiter_scope_save(sl_limiter *lim, const scope *s, double now,
                           double wall_now, sl_limiter_scope_snapshot *o);
/* s must have its adapt block. */
void sl_limiter_scope_load(sl_limiter *lim, scope *s,
                           const sl_limiter_scope_snapshot *o, double now,
                           double wall_now);

/* Declared pools: the end of a temporary rate, and X-MBX-USED-WEIGHT. */
void sl_limiter_pools_tick(sl_limiter *lim, double now);
void sl_limiter_pools_weights(sl_limiter *lim, const sl_rlh_result *h,
                              const double *pool_costs, double now,
                              double wall_now);

#endif
