/* limiter.h -- adaptive rate limiter core
 *
 * A limiter admits requests against token-bucket pools and adapts the rates
 * of those pools to what the provider says (quota headers, Retry-After,
 * 429, 418) and to latency. It knows nothing about event loops or Lua: time
 * is always passed in, and waiting is expressed as tickets that the caller
 * wakes by polling. Not thread-safe; one limiter belongs to one thread.
 *
 * Time. `now` is monotonic seconds (any origin >= 0, e.g. the loop's
 * cached time; never going backwards: a smaller or non-finite `now` is
 * treated as the largest seen so far).
 * `wall_now` is epoch seconds, used only to report or persist absolute
 * deadlines (ban_until, backoff_until, snapshots).
 *
 * Pools. Every request is charged `cost` tokens in:
 *  - the global pool (rate = the global adaptive rate, burst = options.burst);
 *  - its endpoint's pool, when an endpoint is named (rate = that endpoint's
 *    adaptive rate, burst = options.burst unless set by set_endpoint);
 *  - each declared pool (sl_limiter_add_pool), with the request's cost or a
 *    per-pool cost (0 = that pool is not charged).
 * A pool allows a charge of c when its debt minus what has drained since is
 * at most max(0, burst - c): with burst 1, N requests of cost 1 at rate r go
 * at 0, 1/r, ..., (N-1)/r, and a request of cost c delays the next by c/r.
 * A request is admitted only when all its pools allow it at the same
 * instant; all are then charged together (atomic, nothing is held while
 * waiting).
 *
 * Waiting. Tickets wait in arrival order. A waiting ticket claims every pool
 * that currently refuses it; later requests that need a claimed pool wait
 * behind it (FIFO per pool), requests that need none of them pass. So an
 * endpoint waiting out a Retry-After never holds up other endpoints. A
 * ticket that is cancelled or times out never charged anything: its place
 * goes to the next in line.
 *
 * Adaptation, per scope (the global scope and each endpoint):
 *  - Quota headers: rate = remaining * utilization / seconds-to-reset (or
 *    limit * utilization / window), clamped to [min_rate, max_rate]; with
 *    remaining 0 the pool is closed until the reset. Retry-After, when
 *    present, takes precedence over remaining/reset: the scope is closed for
 *    exactly that long (capped at max_backoff).
 *  - 429 (and 418, and observation.throttled): the backoff multiplier
 *    doubles (max 16), the rate halves (never below min_rate), the scope
 *    waits out Retry-After. Closed loop, for providers that send no quota
 *    headers: the ceiling estimate becomes what was actually sent just
 *    before the 429 (the cost admitted over the last 1 s, or 2 s / ~4 s at
 *    low rates, spread over the time actually observed when the history is
 *    younger than that: the first requests, or the first after a pause of
 *    more than 1 s and two intervals; capped by the rate being held, if
 *    any). After the pause the rate climbs back with time constant 0.1 s *
 *    multiplier towards a set-point: 0.9 * ceiling at first; then, each
 *    time a set-point is held 10 s under demand without a 429 it becomes
 *    the floor and the next set-point is floor + (ceiling - floor) / 4,
 *    until floor and ceiling are within 1%. A 429 while holding lowers the
 *    ceiling to that set-point. So 429s alone converge just under the real
 *    limit. A 429 for a request sent before the previous violation
 *    (observation.sent_at) is counted but does not escalate again.
 *  - Revisiting the ceiling: once a set-point is proven and no 429 has come
 *    for 20 s, the ceiling expires and the set-points probe past it: +5% of
 *    the floor, then the step doubles with each probe that holds (+10%,
 *    +20%, ... up to x2 per 10 s). A 429 while probing sets a new ceiling;
 *    when it is within 10% of the expired one, that one is confirmed and the
 *    next expiry waits twice as long (up to `quiet`), else 20 s again. A
 *    probe that fails (a 429 while holding a set-point above a proven
 *    floor) halves the rate but recovers with time constant 0.1 s and does
 *    not double the multiplier. So a ceiling learned wrong (too low) is
 *    outgrown, and a right one costs a failed probe at 20, 40, 80, ... s.
 *  - Latency (not while paused or recovering, at most every 0.25 s): above
 *    slow_latency (2 s) the rate is multiplied by 0.8; below fast_latency
 *    (0.5 s), when requests have been waiting on the limiter in the last
 *    second, by 1.1, up to the set-point (or max_rate before any is known).
 *  - 418 (Binance IP ban): the global pool (hence every request) stops until
 *    Retry-After, or ban_time when absent; the verdict reports it.
 *  - Scopes hit: headers and Retry-After apply to the observed endpoint (the
 *    global scope when none is named); 429/418 escalate both the endpoint
 *    and the global scope. X-MBX-USED-WEIGHT-<w> sets the declared pool
 *    whose weight_window is w to (limit * utilization - used) over what is
 *    left of the wall-clock-aligned window (server Date when present), or
 *    closes it until the window turns when nothing is left.
 *  - rate_adjustments counts every adaptation that changed a rate (a
 *    recovery ramp counts once, at its 429).
 *
 * Endpoints. Names are copied (at most SL_LIMITER_ENDPOINT_MAX - 1 bytes;
 * longer names are an error). The limiter tracks at most max_endpoints
 * (and at most SL_LIMITER_ENDPOINTS_LIMIT). When the table is full, a new
 * endpoint replaces an idle one, whose state is what a new endpoint's
 * would be but for its request count: it has learned nothing and adapted
 * nothing (no 429, quota headers, slow response, set_endpoint, restore, no
 * request of it ever waited, rate and burst as configured), its pool is
 * full again, nothing blocks it, and it has sent nothing for 4 s (and two
 * intervals at its rate). Eviction is thus invisible to admission; only
 * that endpoint's requests_made leaves the statistics, and its place in
 * the creation order goes to the endpoint that replaced it. Each new
 * endpoint looks at the next 8 endpoints (round robin) for an idle one;
 * when none is, its requests go through the global and declared pools
 * only, untracked. Other endpoint state lives until sl_limiter_free().
 * Lookups are O(1) (hash table); polling is O(waiting tickets * pools).
 *
 * Memory: an empty limiter allocates one block (about 0.7 KiB); the
 * endpoint table comes with the first endpoint, the declared pools with
 * the first pool. An endpoint costs about 190 bytes with a name of up to
 * 24 bytes, plus about 170 once it adapts (tests/bench/limiter/scale.lua).
 */
#ifndef SLUICE_LIMITER_H
#define SLUICE_LIMITER_H

#include <stddef.h>

#include "rlheaders.h"

#define SL_LIMITER_NAME_MAX 64      /* names are truncated to 63 bytes */
#define SL_LIMITER_ENDPOINT_MAX 256 /* longer endpoint names are an error */
#define SL_LIMITER_MAX_POOLS 8      /* declared pools per limiter */
#define SL_LIMITER_SNAPSHOT_VERSION 1
#define SL_LIMITER_ENDPOINTS_LIMIT 0xffffff /* most endpoints tracked */

/* acquire() results and event statuses */
#define SL_LIMITER_GO 0      /* admitted: send the request now */
#define SL_LIMITER_WAIT 1    /* a ticket was queued */
#define SL_LIMITER_TIMEOUT 2 /* cannot be admitted within max_wait */
#define SL_LIMITER_BANNED 3  /* a needed pool is banned (418) past max_wait */

typedef struct sl_limiter sl_limiter;
typedef struct sl_limiter_ticket sl_limiter_ticket;

typedef struct sl_limiter_options {
    const char *name;     /* copied; default "unknown" */
    double rate;          /* initial rate, requests (cost units) / s: 10 */
    double burst;         /* tokens per scope pool: 1 */
    double window;        /* quota window when headers state none, s: 60 */
    double max_rate;      /* 100 */
    double min_rate;      /* 0.1 (must be > 0) */
    double utilization;   /* share of a stated quota to use: 0.9 */
    double max_backoff;   /* cap on Retry-After and bans, s: 3600 */
    double max_wait;      /* default bound on waiting, s: 300; 0 = never
                             wait; INFINITY = unbounded */
    double ban_time;      /* 418 without Retry-After, s: 120 */
    double quiet;         /* recovery period without violations, s: 300 */
    double slow_latency;  /* s: 2.0 */
    double fast_latency;  /* s: 0.5 */
    size_t max_endpoints; /* 1024 */
} sl_limiter_options;

typedef struct sl_limiter_pool_options {
    const char *name;     /* required, unique, copied */
    double limit;         /* cost units per window, > 0 */
    double window;        /* seconds, > 0 */
    double burst;         /* tokens; <= 0 means 1 */
    double weight_window; /* Binance X-MBX-USED-WEIGHT window (s) that
                             syncs this pool, 0 = none */
} sl_limiter_pool_options;

typedef struct sl_limiter_request {
    const char *endpoint;     /* NULL or "": global and declared pools only */
    double cost;              /* > 0; 0 means 1 */
    const double *pool_costs; /* NULL: `cost` in every declared pool; else
                                 one entry (>= 0) per declared pool, in the
                                 order they were added; 0 = not charged */
    double max_wait;          /* < 0: options.max_wait; semantics as there */
    void *privdata;           /* handed back in the ticket's event */
} sl_limiter_request;

/* What poll() reports for a ticket. The ticket itself is already freed. */
typedef struct sl_limiter_event {
    void *privdata;
    int status;      /* SL_LIMITER_GO, _TIMEOUT or _BANNED */
    double waited;   /* seconds since acquire */
    double ready_at; /* TIMEOUT/BANNED: earliest known time it could go */
} sl_limiter_event;

typedef struct sl_limiter_observation {
    const char *endpoint;         /* as in the request; NULL: global */
    int status;                   /* HTTP status, 0 = none (transport error,
                                     or headers only) */
    const sl_rlh_result *headers; /* parsed response headers, or NULL */
    double latency;               /* seconds, < 0 unknown */
    double sent_at;               /* `now` the request was admitted at,
                                     < 0 unknown */
    int throttled;                /* the caller classified the response as
                                     throttled whatever its status (an API
                                     error code in a 200): handled exactly
                                     as a 429 */
    const double *pool_costs;     /* what the request was charged per pool,
                                     as in sl_limiter_request (NULL: every
                                     pool): weight headers (X-MBX-USED-
                                     WEIGHT-*) update only pools charged > 0,
                                     so APIs with quotas of their own that
                                     answer with the same header (Binance
                                     spot and futures) keep them apart */
} sl_limiter_observation;

typedef struct sl_limiter_verdict {
    int throttled;      /* status was 429, or observation.throttled */
    int banned;         /* status was 418: everything stops until ban_until */
    double ban_until;   /* epoch seconds (for breaker open_until), 0 = none */
    double retry_after; /* Retry-After applied (capped), -1 none */
    double pause_until; /* monotonic: the observed endpoint may not go before
                           (0 = not paused) */
} sl_limiter_verdict;

typedef struct sl_limiter_stats {
    const char *limiter_name; /* valid until sl_limiter_free() */
    double default_rate;
    double current_global_rate;
    long long total_requests; /* admitted */
    long long total_violations;
    double total_wait_time; /* seconds waited by admitted tickets */
    long long rate_adjustments;
    double min_rate_seen;
    double max_rate_seen;
    long long endpoints_tracked;
    double backoff_multiplier; /* global */
    long long waiting;         /* tickets queued now */
} sl_limiter_stats;

typedef struct sl_limiter_endpoint_stats {
    const char *endpoint; /* valid until a call that may add an endpoint
                             (and so evict this one) or sl_limiter_free() */
    double rate;
    long long requests_made;
    long long violations;
    double rate_limit_remaining; /* last stated remaining, -1 unknown */
    int in_backoff;              /* paused or recovering from a violation */
    double backoff_until;        /* epoch seconds, 0 when not in backoff */
    double backoff_multiplier;
    double ceiling; /* learned from 429s, 0 unknown */
} sl_limiter_endpoint_stats;

/* Snapshots: plain data, safe to serialise field by field. Absolute times
 * are epoch seconds (0 = none) so they survive a restart. */
typedef struct sl_limiter_scope_snapshot {
    char endpoint[SL_LIMITER_ENDPOINT_MAX]; /* "" for the global scope */
    double rate;
    double backoff_multiplier;
    double ceiling, floor; /* closed-loop bounds, 0 unknown */
    double backoff_until;  /* epoch */
    double ban_until;      /* epoch */
    double last_violation; /* epoch */
    double remaining;      /* -1 unknown */
    long long requests_made;
    long long violations;
} sl_limiter_scope_snapshot;

typedef struct sl_limiter_pool_snapshot {
    char name[SL_LIMITER_NAME_MAX];
    double blocked_until; /* epoch */
    double ban_until;     /* epoch */
} sl_limiter_pool_snapshot;

typedef struct sl_limiter_snapshot {
    int version; /* SL_LIMITER_SNAPSHOT_VERSION */
    char name[SL_LIMITER_NAME_MAX];
    double saved_at; /* epoch */
    long long total_requests, total_violations, rate_adjustments;
    double total_wait_time, min_rate_seen, max_rate_seen;
    sl_limiter_scope_snapshot global;
    size_t nendpoints;
    sl_limiter_scope_snapshot *endpoints; /* owned by the snapshot */
    size_t npools;
    sl_limiter_pool_snapshot pools[SL_LIMITER_MAX_POOLS];
} sl_limiter_snapshot;

/* Fills o with the defaults documented on sl_limiter_options. */
void sl_limiter_options_init(sl_limiter_options *o);

/* Creates a limiter (o may be NULL for defaults; it is copied). Returns
 * NULL and fills err on invalid options or out of memory. */
sl_limiter *sl_limiter_new(const sl_limiter_options *o, char *err,
                           size_t errlen);

/* Frees the limiter and every ticket still queued (their privdata is not
 * touched: the caller must already have dealt with the waiting tasks). */
void sl_limiter_free(sl_limiter *lim);

/* Declares a pool of `limit` cost units per `window` seconds, admitted at
 * limit * utilization / window with the given burst. Returns the pool's
 * index (its position in request.pool_costs), or -1 with err filled. */
int sl_limiter_add_pool(sl_limiter *lim, const sl_limiter_pool_options *o,
                        double now, char *err, size_t errlen);

/* Fixes an endpoint's pool: rate becomes its current rate and its maximum
 * (adaptation never exceeds it); burst <= 0 keeps the current burst. Creates
 * the endpoint. Returns 0, or -1 with err filled. */
int sl_limiter_set_endpoint(sl_limiter *lim, const char *endpoint, double rate,
                            double burst, double now, char *err, size_t errlen);

/* Asks to send one request at `now`.
 *  SL_LIMITER_GO: admitted and charged; *ready_at = now.
 *  SL_LIMITER_WAIT: *ticket is queued; *ready_at is the earliest time it
 *    could be granted (a lower bound: others ahead may push it later).
 *  SL_LIMITER_TIMEOUT / SL_LIMITER_BANNED: it could not go before
 *    now + max_wait (BANNED: because a pool it needs is under a 418 ban);
 *    nothing is queued or charged; *ready_at says when it could.
 *  -1: invalid request (bad cost, endpoint too long) or out of memory; err
 *    is filled, nothing is queued.
 * ticket and ready_at may be NULL only if the caller passes max_wait 0.
 * A ticket is owned by the limiter. It stays valid until poll() reports it
 * (it is freed before the event is returned) or the caller cancels it. */
int sl_limiter_acquire(sl_limiter *lim, const sl_limiter_request *req,
                       double now, sl_limiter_ticket **ticket, double *ready_at,
                       char *err, size_t errlen);

/* Grants the tickets that may go at `now`, in FIFO order, and fails those
 * whose max_wait has passed (or that cannot go before it). Writes at most
 * max events and returns how many; when it returns max, call again. */
int sl_limiter_poll(sl_limiter *lim, double now, sl_limiter_event *ev, int max);

/* When poll() has something to do: the earliest grant or deadline among
 * queued tickets (<= now: poll now), or -1 when nothing waits. Rates can
 * change on any call, so re-read it after every call that mutates the
 * limiter and re-arm one timer. Invariant: if it returns t <= now, then
 * poll(now) reports at least one event. */
double sl_limiter_next_deadline(sl_limiter *lim, double now);

/* Removes a queued ticket (the waiting task was killed). Its place goes to
 * the next in line. Must not be called for a ticket poll() has reported. */
void sl_limiter_cancel(sl_limiter *lim, sl_limiter_ticket *t);

/* Feeds one response back. v may be NULL. Returns 0, or -1 (err filled)
 * when the endpoint name is too long. */
int sl_limiter_observe(sl_limiter *lim, const sl_limiter_observation *obs,
                       double now, double wall_now, sl_limiter_verdict *v,
                       char *err, size_t errlen);

/* Reference aliases. record_429: a 429 with Retry-After seconds (< 0: none).
 * adjust_rate: multiplies the rate (and set-point) of the endpoint, or the
 * global rate when endpoint is NULL, clamped to [min_rate, max_rate]. */
int sl_limiter_record_429(sl_limiter *lim, const char *endpoint,
                          double retry_after, double now, double wall_now,
                          char *err, size_t errlen);
int sl_limiter_adjust_rate(sl_limiter *lim, const char *endpoint, double factor,
                           double now, char *err, size_t errlen);

/* Rate of the endpoint, or global when NULL (-1: unknown endpoint). */
double sl_limiter_rate(sl_limiter *lim, const char *endpoint, double now);

void sl_limiter_get_stats(sl_limiter *lim, double now, sl_limiter_stats *s);
/* The limiter's name, and declared pool i's (i in [0, pools added)): valid
 * until sl_limiter_free(). */
const char *sl_limiter_name(const sl_limiter *lim);
const char *sl_limiter_pool_name(const sl_limiter *lim, int i);
size_t sl_limiter_endpoint_count(const sl_limiter *lim);
/* Endpoint i in creation order. Returns 0, or -1 when i is out of range. */
int sl_limiter_get_endpoint_stats(sl_limiter *lim, size_t i, double now,
                                  double wall_now,
                                  sl_limiter_endpoint_stats *s);

/* Fills out (endpoints allocated; release with sl_limiter_snapshot_free()).
 * Returns 0, or -1 with err filled on out of memory. */
int sl_limiter_save(sl_limiter *lim, double now, double wall_now,
                    sl_limiter_snapshot *out, char *err, size_t errlen);
void sl_limiter_snapshot_free(sl_limiter_snapshot *s);

/* Applies a snapshot to a limiter made with the same options: counters,
 * rates, learned bounds, and deadlines still in the future (pauses, bans).
 * Endpoints are created as needed; pools are matched by name. Returns 0,
 * or -1 with err filled (wrong version, endpoint table full). */
int sl_limiter_restore(sl_limiter *lim, const sl_limiter_snapshot *s,
                       double now, double wall_now, char *err, size_t errlen);

#endif
