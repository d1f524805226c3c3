/* limiter.c -- adaptive rate limiter core
 *
 * The public API of limiter.h: endpoints, the ticket queue and admission,
 * statistics, snapshots. How a scope's rate adapts is in limiter_scope.c,
 * the endpoint table (lookup, creation, eviction) in limiter_endpoints.c;
 * the types the three files share are in limiter_internal.h.
 */
#include "limiter.h"
#include "limiter_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static double clock_in(sl_limiter *lim, double now) {
    if (isfinite(now) && now > lim->last_now)
        lim->last_now = now;
    return lim->last_now;
}

/* ---- admission and the FIFO walk ---------------------------------------- */

static void tick_ticket(sl_limiter *lim, sl_limiter_ticket *t, double now) {
    sl_limiter_scope_tick(lim, t->scopes[0], now);
    if (t->scopes[1])
        sl_limiter_scope_tick(lim, t->scopes[1], now);
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

/* The ticket's scopes have their adapt blocks (acquire gives them). */
static void mark_limited(sl_limiter *lim, sl_limiter_ticket *t, double now) {
    int i, j;
    for (i = 0; i < 2; i++)
        for (j = 0; t->scopes[i] && j < t->npools; j++)
            if (t->pools[j] == &t->scopes[i]->p &&
                pool_ready(t->pools[j], t->costs[j]) > now + EPS)
                scope_x(lim, t->scopes[i])->last_limited = now;
}

static void admit(sl_limiter *lim, sl_limiter_ticket *t, double now) {
    int i;
    for (i = 0; i < t->npools; i++) {
        pool_settle(t->pools[i], now);
        t->pools[i]->debt += t->costs[i];
    }
    for (i = 0; i < 2; i++)
        if (t->scopes[i])
            sl_limiter_scope_admit(lim, t->scopes[i], t->cost, now);
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
                /* a queued ticket's scopes have their adapt blocks */
                lim->gx.last_limited = now;
                if (t->scopes[1])
                    scope_x(lim, t->scopes[1])->last_limited = now;
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
    /* the endpoint table and the pools come with the first of each */
    if ((lim = calloc(1, sizeof *lim)) == NULL) {
        fail(err, errlen, "out of memory");
        return NULL;
    }
    lim->o = *o;
    snprintf(lim->name, sizeof lim->name, "%s", o->name ? o->name : "unknown");
    lim->o.name = lim->name;
    sl_limiter_scope_init(&lim->global, &lim->o);
    sl_limiter_adapt_init(&lim->gx, &lim->o);
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
    free(lim->xs);
    free(lim->pools);
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
    /* all at once: queued tickets point at pools, which must not move */
    if (lim->pools == NULL &&
        (lim->pools = calloc(SL_LIMITER_MAX_POOLS, sizeof *lim->pools)) == NULL)
        return fail(err, errlen, "out of memory");
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
    if (sl_limiter_endpoint(lim, name, 1, now, &s, err, errlen) < 0)
        return -1;
    if (s == NULL)
        return fail(err, errlen, "no endpoint name, or endpoint table full");
    if (sl_limiter_scope_adapt(lim, s) < 0)
        return fail(err, errlen, "out of memory");
    scope_x(lim, s)->max_rate = rate;
    sl_limiter_scope_set_rate(lim, s, rate, now, 0);
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
    if (sl_limiter_endpoint(lim, req->endpoint, 1, now, &tmp.scopes[1], err,
                            errlen) < 0)
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
    sl_limiter_pools_tick(lim, now);
    tick_ticket(lim, &tmp, now);
    walk(lim, now, NULL, 0, NULL); /* claims of those already waiting */
    ready = ticket_ready(lim, &tmp, &claimed);
    if (!claimed && ready <= now + EPS) {
        admit(lim, &tmp, now);
        if (ready_at)
            *ready_at = now;
        return SL_LIMITER_GO;
    }
    /* made to wait: the endpoint notes when (last_limited), its ticket
     * will (walk) */
    if (tmp.scopes[1] && sl_limiter_scope_adapt(lim, tmp.scopes[1]) < 0)
        return fail(err, errlen, "out of memory");
    mark_limited(lim, &tmp, now);
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
    sl_limiter_pools_tick(lim, now);
    return walk(lim, now, ev, max, NULL);
}

double sl_limiter_next_deadline(sl_limiter *lim, double now) {
    double next;
    now = clock_in(lim, now);
    if (lim->head == NULL)
        return -1;
    sl_limiter_pools_tick(lim, now);
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
    if (sl_limiter_endpoint(lim, obs->endpoint, 1, now, &ep, err, errlen) < 0)
        return -1;
    s = ep ? ep : g;
    /* what the endpoint is about to learn needs its adapt block (a fast
     * response acts only on one that has it: see scope_latency) */
    if (ep &&
        (obs->status == 429 || obs->status == 418 || obs->throttled ||
         (h && h->source != SL_RLH_SRC_NONE) ||
         obs->latency > lim->o.slow_latency) &&
        sl_limiter_scope_adapt(lim, ep) < 0)
        return fail(err, errlen, "out of memory");
    sl_limiter_scope_tick(lim, g, now);
    if (ep)
        sl_limiter_scope_tick(lim, ep, now);
    sl_limiter_pools_tick(lim, now);
    if (h && h->retry_after >= 0)
        ra = dmin(h->retry_after, lim->o.max_backoff);
    if (h) {
        sl_limiter_scope_quota(lim, s, h, now, ra >= 0);
        sl_limiter_pools_weights(lim, h, obs->pool_costs, now, wall_now);
    }
    if (obs->status == 429 || obs->status == 418 || obs->throttled) {
        lim->total_violations++;
        sl_limiter_scope_violate(lim, g, now, obs->sent_at);
        if (ep)
            sl_limiter_scope_violate(lim, ep, now, obs->sent_at);
        v->throttled = obs->status != 418;
    } else if (obs->latency >= 0) {
        sl_limiter_scope_latency(lim, g, obs->latency, now);
        if (ep)
            sl_limiter_scope_latency(lim, ep, obs->latency, now);
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
    adapt *x;
    now = clock_in(lim, now);
    if (!(factor > 0) || !isfinite(factor))
        return fail(err, errlen, "factor must be a positive number");
    if (sl_limiter_endpoint(lim, name, 1, now, &s, err, errlen) < 0)
        return -1;
    if (s == NULL)
        s = &lim->global;
    sl_limiter_scope_tick(lim, s, now);
    sl_limiter_scope_set_rate(lim, s, s->p.rate * factor, now, 1);
    if ((x = scope_x(lim, s)) != NULL && x->target > 0)
        x->target = s->p.rate;
    return 0;
}

double sl_limiter_rate(sl_limiter *lim, const char *name, double now) {
    scope *s = &lim->global;
    now = clock_in(lim, now);
    if (name && name[0] &&
        (sl_limiter_endpoint(lim, name, 0, now, &s, NULL, 0) < 0 || s == NULL))
        return -1;
    sl_limiter_scope_tick(lim, s, now);
    return s->p.rate;
}

void sl_limiter_get_stats(sl_limiter *lim, double now, sl_limiter_stats *st) {
    now = clock_in(lim, now);
    sl_limiter_scope_tick(lim, &lim->global, now);
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
    st->backoff_multiplier = lim->gx.mult;
    st->waiting = lim->nwaiting;
}

size_t sl_limiter_endpoint_count(const sl_limiter *lim) { return lim->neps; }

const char *sl_limiter_name(const sl_limiter *lim) { return lim->name; }

const char *sl_limiter_pool_name(const sl_limiter *lim, int i) {
    return lim->pools[i].name;
}

int sl_limiter_get_endpoint_stats(sl_limiter *lim, size_t i, double now,
                                  double wall_now,
                                  sl_limiter_endpoint_stats *st) {
    scope *s;
    const adapt *x;
    double until;
    if (i >= lim->neps)
        return -1;
    s = lim->eps[i];
    now = clock_in(lim, now);
    sl_limiter_scope_tick(lim, s, now);
    until = sl_limiter_scope_backoff_until(lim, s, now);
    x = sl_limiter_scope_xr(lim, s);
    memset(st, 0, sizeof *st);
    st->endpoint = scope_name(lim, s);
    st->rate = s->p.rate;
    st->requests_made = s->requests;
    st->violations = x->violations;
    st->rate_limit_remaining = x->remaining;
    st->in_backoff = until > 0;
    st->backoff_until = until > 0 ? wall_now + (until - now) : 0;
    st->backoff_multiplier = x->mult;
    st->ceiling = x->hi;
    return 0;
}

/* ---- snapshot / restore ------------------------------------------------- */

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
    sl_limiter_scope_tick(lim, &lim->global, now);
    sl_limiter_scope_save(lim, &lim->global, now, wall_now, &out->global);
    if (lim->neps &&
        (out->endpoints = calloc(lim->neps, sizeof *out->endpoints)) == NULL)
        return fail(err, errlen, "out of memory");
    out->nendpoints = lim->neps;
    for (i = 0; i < lim->neps; i++) {
        sl_limiter_scope_tick(lim, lim->eps[i], now);
        sl_limiter_scope_save(lim, lim->eps[i], now, wall_now,
                              &out->endpoints[i]);
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
    sl_limiter_scope_load(lim, &lim->global, &s->global, now, wall_now);
    for (i = 0; i < s->nendpoints && s->endpoints; i++) {
        const sl_limiter_scope_snapshot *o = &s->endpoints[i];
        if (memchr(o->endpoint, '\0', sizeof o->endpoint) == NULL)
            return fail(err, errlen, "snapshot endpoint name unterminated");
        if (sl_limiter_endpoint(lim, o->endpoint, 1, now, &ep, err, errlen) < 0)
            return -1;
        if (ep == NULL)
            return fail(err, errlen, "endpoint table full");
        if (sl_limiter_scope_adapt(lim, ep) < 0)
            return fail(err, errlen, "out of memory");
        sl_limiter_scope_load(lim, ep, o, now, wall_now);
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
