/* lua_limiter.c -- sluice._limiter: the native half of require "sluice.limiter"
 *
 * A userdata owns one sl_limiter (runtime/core/limiter.c) and one libevent
 * timer. A task that must wait gets a ticket; the timer is armed for the
 * limiter's next deadline, and when it fires, poll() says which tickets may
 * go; their tasks are queued (never resumed here). Every call that can
 * change rates re-arms the timer, as limiter.h asks.
 *
 * Ownership: a waiter (malloc'd) links a ticket to its task. It is freed
 * when poll() reports the ticket, when the task is killed (the ticket is
 * cancelled, giving its place back), or when the limiter is collected
 * (its tasks are woken with nil, "closed" first).
 *
 * Anchoring: a waiting task's stack does not keep the limiter alive (a
 * yielding C function drops its arguments, and lim:wait is a tail call),
 * so while it has waiters the limiter holds a registry reference to
 * itself, dropped when the last waiter leaves. Collection with waiters
 * therefore only happens at lua_close.
 *
 * Clock: sl_now()/sl_time(), or a Lua function given as opts.clock (tests)
 * that stands for both (as the breaker's does). It is read once per method
 * call on that call's thread and once per timer firing on the main thread;
 * an error in it, or a non-number, leaves the last reading in place.
 *
 * close() wakes the waiters with nil, "closed", stops the timer and lets go
 * of the clock; the core stays until __gc so that name() and stats() still
 * answer. Every other method of a closed limiter raises.
 */
#include <event2/event.h>
#include <event2/event_struct.h>
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/limiter.h"
#include "core/log.h"
#include "core/rlheaders.h"
#include "core/timeout.h"
#include "host/modules.h"
#include "host/runtime.h"
#include "host/task.h"

#define LIMITER_MT "sluice.limiter"

typedef struct waiter waiter;

typedef struct llimiter {
    sl_limiter *lim;
    sl_rlh_options rlh;
    struct event timer;
    int timer_ready, timer_set;
    waiter *waiters;   /* every ticket in the core's queue, for __gc */
    int self_ref;      /* registry anchor while waiters is not empty */
    int npools;        /* declared pools; their names are the core's */
    int clock_ref;     /* opts.clock, or LUA_NOREF (none, or closed) */
    int injected;      /* a clock was given: last_clock is the time */
    double last_clock; /* the injected clock's last reading */
    int closed;
} llimiter;

struct waiter {
    llimiter *owner;
    sl_limiter_ticket *ticket;
    sl_task *task;
    double started;
    waiter *prev, *next;
};

static void waiter_unlink(waiter *w) {
    if (w->prev)
        w->prev->next = w->next;
    else
        w->owner->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
}

static void rearm(llimiter *ll);

/* The limiter's monotonic time. With an injected clock, L reads it (NULL:
 * the reading of the call in progress). */
static double clock_now(llimiter *ll, lua_State *L) {
    if (!ll->injected)
        return sl_now();
    if (L && ll->clock_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, ll->clock_ref);
        if (lua_pcall(L, 0, 1, 0) == 0 && lua_type(L, -1) == LUA_TNUMBER &&
            isfinite(lua_tonumber(L, -1)))
            ll->last_clock = lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    return ll->last_clock;
}

/* Epoch seconds at `now`: the injected clock stands for both. */
static double clock_wall(llimiter *ll, double now) {
    return ll->injected ? now : sl_time();
}

/* Drops the anchor once no task waits any more. Call it last: the limiter
 * may be collected at the next allocation. */
static void release_if_idle(llimiter *ll) {
    if (ll->waiters || ll->self_ref == LUA_NOREF)
        return;
    luaL_unref(sl_rt.L, LUA_REGISTRYINDEX, ll->self_ref);
    ll->self_ref = LUA_NOREF;
}

/* Pushes a wait()'s outcome onto L: seconds waited, or nil, reason,
 * seconds until it could go. */
static int push_outcome(lua_State *L, int status, double waited,
                        double ready_in) {
    if (status == SL_LIMITER_GO) {
        lua_pushnumber(L, waited);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, status == SL_LIMITER_BANNED ? "banned" : "timeout");
    lua_pushnumber(L, ready_in > 0 ? ready_in : 0);
    return 3;
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
    llimiter *ll = arg;
    (void)fd;
    (void)what;
    ll->timer_set = 0;
    double now = clock_now(ll, sl_rt.L);
    sl_limiter_event ev[64];
    int n;
    do {
        n = sl_limiter_poll(ll->lim, now, ev, 64);
        for (int i = 0; i < n; i++) {
            waiter *w = ev[i].privdata;
            waiter_unlink(w);
            lua_State *co = sl_task_thread(w->task);
            int nres = push_outcome(co, ev[i].status, ev[i].waited,
                                    ev[i].ready_at - now);
            sl_task_wake(w->task, nres);
            free(w);
        }
    } while (n == 64);
    rearm(ll);
    release_if_idle(ll);
}

static void rearm(llimiter *ll) {
    double now = clock_now(ll, NULL);
    double t = sl_limiter_next_deadline(ll->lim, now);
    if (ll->timer_set) {
        evtimer_del(&ll->timer);
        ll->timer_set = 0;
    }
    if (t < 0)
        return;
    /* Rounded up to the microsecond (a timer that fires early only
     * re-arms); a deadline at infinity arms nothing. */
    struct timeval tv;
    if (!sl_timeout_tv(t - now, &tv))
        return;
    evtimer_add(&ll->timer, &tv);
    ll->timer_set = 1;
}

static void cancel_wait(sl_task *t, void *op) {
    waiter *w = op;
    (void)t;
    llimiter *ll = w->owner;
    sl_limiter_cancel(ll->lim, w->ticket);
    waiter_unlink(w);
    free(w);
    rearm(ll);
    release_if_idle(ll);
}

/* Arg 1 as a limiter; unless closed_ok, one that is not closed. */
static llimiter *check_handle(lua_State *L, int closed_ok) {
    llimiter *ll = lua_touserdata(L, 1);
    if (!ll || !lua_getmetatable(L, 1) ||
        !lua_rawequal(L, -1, lua_upvalueindex(1)))
        luaL_typerror(L, 1, LIMITER_MT);
    lua_pop(L, 1);
    if (!ll->lim || (ll->closed && !closed_ok))
        luaL_error(L, "sluice.limiter: limiter '%s' is closed",
                   ll->lim ? sl_limiter_name(ll->lim) : "?");
    return ll;
}

static llimiter *check(lua_State *L) { return check_handle(L, 0); }

static double opt_field(lua_State *L, int t, const char *k, double def) {
    lua_getfield(L, t, k);
    double v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : def;
    lua_pop(L, 1);
    return v;
}

/* new(opts): opts validated by the wrapper; pools = { {name, limit, window,
 * burst, weight_window}, ... }; endpoints = { [name] = {rate, burst} }. */
static int l_new(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    sl_limiter_options o;
    sl_limiter_options_init(&o);
    lua_getfield(L, 1, "name");
    if (lua_isstring(L, -1))
        o.name = lua_tostring(L, -1);
    o.rate = opt_field(L, 1, "rate", o.rate);
    o.burst = opt_field(L, 1, "burst", o.burst);
    o.window = opt_field(L, 1, "window", o.window);
    o.max_rate = opt_field(L, 1, "max_rate", o.max_rate);
    o.min_rate = opt_field(L, 1, "min_rate", o.min_rate);
    o.utilization = opt_field(L, 1, "utilization", o.utilization);
    o.max_backoff = opt_field(L, 1, "max_backoff", o.max_backoff);
    o.max_wait = opt_field(L, 1, "max_wait", o.max_wait);
    o.ban_time = opt_field(L, 1, "ban_time", o.ban_time);
    o.quiet = opt_field(L, 1, "quiet", o.quiet);
    o.slow_latency = opt_field(L, 1, "slow_latency", o.slow_latency);
    o.fast_latency = opt_field(L, 1, "fast_latency", o.fast_latency);
    o.max_endpoints =
        (size_t)opt_field(L, 1, "max_endpoints", (double)o.max_endpoints);

    llimiter *ll = lua_newuserdata(L, sizeof(*ll));
    memset(ll, 0, sizeof(*ll));
    ll->self_ref = LUA_NOREF;
    ll->clock_ref = LUA_NOREF;
    luaL_getmetatable(L, LIMITER_MT);
    lua_setmetatable(L, -2);
    int ud = lua_gettop(L);
    lua_getfield(L, 1, "clock");
    if (lua_isfunction(L, -1)) {
        ll->clock_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        ll->injected = 1;
    } else {
        lua_pop(L, 1);
    }
    sl_rlh_options_init(&ll->rlh);
    ll->rlh.max_backoff = o.max_backoff;
    lua_getfield(L, 1, "reset");
    if (lua_isstring(L, -1)) {
        const char *r = lua_tostring(L, -1);
        ll->rlh.reset_mode = strcmp(r, "epoch") == 0 ? SL_RLH_RESET_EPOCH
                             : strcmp(r, "epoch_ms") == 0
                                 ? SL_RLH_RESET_EPOCH_MS
                             : strcmp(r, "delta") == 0 ? SL_RLH_RESET_DELTA
                                                       : SL_RLH_RESET_AUTO;
    }
    lua_pop(L, 1);

    char err[256];
    ll->lim = sl_limiter_new(&o, err, sizeof(err));
    if (!ll->lim)
        return luaL_error(L, "sluice.limiter.new: %s", err);
    event_assign(&ll->timer, sl_rt.base, -1, 0, on_timer, ll);
    ll->timer_ready = 1;
    double now = clock_now(ll, L);

    lua_getfield(L, 1, "pools");
    if (lua_istable(L, -1)) {
        int pools = lua_gettop(L);
        int n = (int)lua_objlen(L, pools);
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, pools, i);
            int p = lua_gettop(L);
            sl_limiter_pool_options po = {0};
            lua_getfield(L, p, "name");
            po.name = lua_tostring(L, -1);
            po.limit = opt_field(L, p, "limit", 0);
            po.window = opt_field(L, p, "window", 60);
            po.burst = opt_field(L, p, "burst", 0);
            po.weight_window = opt_field(L, p, "weight_window", 0);
            if (!po.name)
                return luaL_error(L,
                                  "sluice.limiter.new: pools[%d] needs a "
                                  "name",
                                  i);
            int idx = sl_limiter_add_pool(ll->lim, &po, now, err, sizeof(err));
            if (idx < 0)
                return luaL_error(L, "sluice.limiter.new: pools[%d]: %s", i,
                                  err);
            ll->npools = idx + 1;
            lua_settop(L, pools);
        }
    }
    lua_pop(L, 1);
    lua_getfield(L, 1, "endpoints");
    if (lua_istable(L, -1)) {
        int eps = lua_gettop(L);
        for (lua_pushnil(L); lua_next(L, eps); lua_pop(L, 1)) {
            const char *name = lua_tostring(L, -2);
            double rate = lua_istable(L, -1) ? opt_field(L, -1, "rate", 0) : 0;
            double burst =
                lua_istable(L, -1) ? opt_field(L, -1, "burst", 0) : 0;
            if (sl_limiter_set_endpoint(ll->lim, name, rate, burst, now, err,
                                        sizeof(err)) != 0)
                return luaL_error(L, "sluice.limiter.new: endpoints.%s: %s",
                                  name, err);
        }
    }
    lua_settop(L, ud);
    return 1;
}

static int l_gc(lua_State *L) {
    llimiter *ll = luaL_checkudata(L, 1, LIMITER_MT);
    if (ll->timer_set)
        evtimer_del(&ll->timer);
    ll->timer_set = 0;
    /* Waiters anchor the limiter, so some can be left here only at
     * lua_close, and the runtime kills every task before that (each kill
     * cancels its ticket). Whatever remains is woken with nil, "closed":
     * the wake makes its task forget the waiter freed here. */
    while (ll->waiters) {
        waiter *w = ll->waiters;
        waiter_unlink(w);
        lua_State *co = sl_task_thread(w->task);
        if (w->task->state == SL_TASK_SUSPENDED && lua_checkstack(co, 2)) {
            lua_pushnil(co);
            lua_pushliteral(co, "closed");
            sl_task_wake(w->task, 2);
        }
        free(w);
    }
    if (ll->lim)
        sl_limiter_free(ll->lim);
    ll->lim = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, ll->clock_ref);
    ll->clock_ref = LUA_NOREF;
    return 0;
}

/* close() -> true, or false when already closed. Wakes every waiter with
 * nil, "closed" (its ticket given back) and stops the timer. */
static int l_close(lua_State *L) {
    llimiter *ll = check_handle(L, 1);
    if (ll->closed) {
        lua_pushboolean(L, 0);
        return 1;
    }
    ll->closed = 1;
    if (ll->timer_set)
        evtimer_del(&ll->timer);
    ll->timer_set = 0;
    while (ll->waiters) {
        waiter *w = ll->waiters;
        waiter_unlink(w);
        sl_limiter_cancel(ll->lim, w->ticket);
        lua_State *co = sl_task_thread(w->task);
        if (w->task->state == SL_TASK_SUSPENDED && lua_checkstack(co, 2)) {
            lua_pushnil(co);
            lua_pushliteral(co, "closed");
            sl_task_wake(w->task, 2);
        }
        free(w);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, ll->clock_ref);
    ll->clock_ref = LUA_NOREF;
    release_if_idle(ll);
    lua_pushboolean(L, 1);
    return 1;
}

/* name() -> the limiter's name (also once closed). */
static int l_name(lua_State *L) {
    lua_pushstring(L, sl_limiter_name(check_handle(L, 1)->lim));
    return 1;
}

/* Costs per declared pool: a table {pool_name = cost}; absent pools are
 * charged the request's cost. */
static const double *pool_costs(lua_State *L, llimiter *ll, int idx,
                                double cost, double *buf) {
    if (!lua_istable(L, idx) || ll->npools == 0)
        return NULL;
    for (int i = 0; i < ll->npools; i++) {
        lua_getfield(L, idx, sl_limiter_pool_name(ll->lim, i));
        buf[i] = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : cost;
        lua_pop(L, 1);
    }
    return buf;
}

/* wait(endpoint, cost, max_wait, pool_costs) -> waited | nil, reason, in */
static int l_wait(lua_State *L) {
    llimiter *ll = check(L);
    const char *endpoint = luaL_optstring(L, 2, NULL);
    double cost = luaL_optnumber(L, 3, 1);
    double max_wait = luaL_optnumber(L, 4, -1);
    double costs[SL_LIMITER_MAX_POOLS];
    sl_limiter_request req = {
        .endpoint = endpoint,
        .cost = cost,
        .pool_costs = pool_costs(L, ll, 5, cost, costs),
        .max_wait = max_wait,
    };
    sl_task *t = sl_task_current(L);
    if (t) /* before taking a ticket: a refusal must leave none behind */
        sl_task_check_yieldable(L, "sluice.limiter.wait");
    double now = clock_now(ll, L), ready_at = now;
    sl_limiter_ticket *ticket = NULL;
    char err[256];
    waiter *w = NULL;
    if (t) {
        if (!(w = calloc(1, sizeof(*w))))
            return luaL_error(L, "sluice.limiter: out of memory");
        req.privdata = w;
    } else {
        req.max_wait = 0; /* cannot wait outside a task: go now or say when */
    }
    int rc = sl_limiter_acquire(ll->lim, &req, now, t ? &ticket : NULL,
                                &ready_at, err, sizeof(err));
    if (rc != SL_LIMITER_WAIT)
        free(w);
    if (rc < 0)
        return luaL_error(L, "sluice.limiter.wait: %s", err);
    if (rc != SL_LIMITER_WAIT) {
        rearm(ll);
        return push_outcome(L, rc, 0, ready_at - now);
    }
    if (!ll->waiters) {
        lua_pushvalue(L, 1);
        ll->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    w->owner = ll;
    w->ticket = ticket;
    w->task = t;
    w->started = now;
    w->next = ll->waiters;
    if (ll->waiters)
        ll->waiters->prev = w;
    ll->waiters = w;
    rearm(ll);
    return sl_task_suspend(L, t, cancel_wait, w);
}

static void set_num(lua_State *L, const char *k, double v) {
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

/* observe(endpoint, status, headers, latency, sent_at, verdict, pools) ->
 * verdict table; verdict "throttled": the caller classified the response as
 * throttled (handled as a 429 whatever the status); pools: what the request
 * was charged per pool, as wait() took it ({pool_name = cost}, absent pools
 * the cost 1): weight headers update only the pools charged. */
static int l_observe(lua_State *L) {
    llimiter *ll = check(L);
    const char *endpoint = luaL_optstring(L, 2, NULL);
    int status = (int)luaL_optinteger(L, 3, 0);
    double latency = luaL_optnumber(L, 5, -1);
    double sent_at = luaL_optnumber(L, 6, -1);
    const char *verdict = luaL_optstring(L, 7, NULL);
    if (verdict && strcmp(verdict, "throttled") != 0)
        return luaL_error(L, "sluice.limiter.observe: bad argument #6 "
                             "'verdict' (\"throttled\" or nil expected)");
    double now = clock_now(ll, L), wall = clock_wall(ll, now);
    sl_rlh_result parsed;
    int have_headers = 0;
    if (lua_istable(L, 4)) {
        sl_rlh_parser p;
        sl_rlh_begin(&p, &ll->rlh);
        for (lua_pushnil(L); lua_next(L, 4); lua_pop(L, 1)) {
            if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
                continue;
            size_t nl, vl;
            const char *n = lua_tolstring(L, -2, &nl);
            const char *v = lua_tolstring(L, -1, &vl);
            sl_rlh_feed(&p, n, nl, v, vl);
        }
        sl_rlh_finish(&p, status, wall, &parsed);
        have_headers = 1;
    }
    double costs[SL_LIMITER_MAX_POOLS];
    sl_limiter_observation obs = {
        .pool_costs = pool_costs(L, ll, 8, 1, costs),
        .endpoint = endpoint,
        .status = status,
        .headers = have_headers ? &parsed : NULL,
        .latency = latency,
        .sent_at = sent_at,
        .throttled = verdict != NULL,
    };
    sl_limiter_verdict v;
    char err[256];
    if (sl_limiter_observe(ll->lim, &obs, now, wall, &v, err, sizeof(err)) != 0)
        return luaL_error(L, "sluice.limiter.observe: %s", err);
    rearm(ll);
    lua_createtable(L, 0, 5);
    lua_pushboolean(L, v.throttled);
    lua_setfield(L, -2, "throttled");
    lua_pushboolean(L, v.banned);
    lua_setfield(L, -2, "banned");
    if (v.ban_until > 0)
        set_num(L, "ban_until", v.ban_until);
    if (v.retry_after >= 0)
        set_num(L, "retry_after", v.retry_after);
    if (v.pause_until > 0)
        set_num(L, "pause_for", v.pause_until - now);
    return 1;
}

static int l_record_429(lua_State *L) {
    llimiter *ll = check(L);
    char err[256];
    double now = clock_now(ll, L);
    if (sl_limiter_record_429(ll->lim, luaL_optstring(L, 2, NULL),
                              luaL_optnumber(L, 3, -1), now,
                              clock_wall(ll, now), err, sizeof(err)) != 0)
        return luaL_error(L, "sluice.limiter.record_429: %s", err);
    rearm(ll);
    return 0;
}

static int l_adjust_rate(lua_State *L) {
    llimiter *ll = check(L);
    double factor = luaL_checknumber(L, 2);
    luaL_argcheck(L, factor > 0 && isfinite(factor), 2, "must be > 0");
    char err[256];
    if (sl_limiter_adjust_rate(ll->lim, luaL_optstring(L, 3, NULL), factor,
                               clock_now(ll, L), err, sizeof(err)) != 0)
        return luaL_error(L, "sluice.limiter.adjust_rate: %s", err);
    rearm(ll);
    return 0;
}

static int l_rate(lua_State *L) {
    llimiter *ll = check(L);
    double r =
        sl_limiter_rate(ll->lim, luaL_optstring(L, 2, NULL), clock_now(ll, L));
    if (r < 0)
        return 0;
    lua_pushnumber(L, r);
    return 1;
}

/* stats() -> the reference get_stats() keys, numbers for values (also once
 * closed). */
static int l_stats(lua_State *L) {
    llimiter *ll = check_handle(L, 1);
    double now = clock_now(ll, L), wall = clock_wall(ll, now);
    sl_limiter_stats s;
    sl_limiter_get_stats(ll->lim, now, &s);
    lua_createtable(L, 0, 12);
    lua_pushstring(L, s.limiter_name);
    lua_setfield(L, -2, "limiter_name");
    set_num(L, "default_rate", s.default_rate);
    set_num(L, "current_global_rate", s.current_global_rate);
    set_num(L, "total_requests", (double)s.total_requests);
    set_num(L, "total_violations", (double)s.total_violations);
    set_num(L, "total_wait_time", s.total_wait_time);
    set_num(L, "rate_adjustments", (double)s.rate_adjustments);
    set_num(L, "min_rate_seen", s.min_rate_seen);
    set_num(L, "max_rate_seen", s.max_rate_seen);
    set_num(L, "endpoints_tracked", (double)s.endpoints_tracked);
    size_t n = sl_limiter_endpoint_count(ll->lim);
    lua_createtable(L, 0, (int)n);
    for (size_t i = 0; i < n; i++) {
        sl_limiter_endpoint_stats e;
        if (sl_limiter_get_endpoint_stats(ll->lim, i, now, wall, &e) != 0)
            continue;
        lua_createtable(L, 0, 6);
        set_num(L, "rate", e.rate);
        set_num(L, "requests_made", (double)e.requests_made);
        set_num(L, "violations", (double)e.violations);
        if (e.rate_limit_remaining >= 0)
            set_num(L, "rate_limit_remaining", e.rate_limit_remaining);
        lua_pushboolean(L, e.in_backoff);
        lua_setfield(L, -2, "in_backoff");
        if (e.backoff_until > 0)
            set_num(L, "backoff_until", e.backoff_until);
        lua_setfield(L, -2, e.endpoint);
    }
    lua_setfield(L, -2, "endpoints");
    return 1;
}

/* metrics() -> what goes beyond the reference shape. */
static int l_metrics(lua_State *L) {
    llimiter *ll = check(L);
    sl_limiter_stats s;
    sl_limiter_get_stats(ll->lim, clock_now(ll, L), &s);
    lua_createtable(L, 0, 2);
    set_num(L, "backoff_multiplier", s.backoff_multiplier);
    set_num(L, "waiting", (double)s.waiting);
    return 1;
}

static void push_scope(lua_State *L, const sl_limiter_scope_snapshot *s) {
    lua_createtable(L, 0, 10);
    lua_pushstring(L, s->endpoint);
    lua_setfield(L, -2, "endpoint");
    set_num(L, "rate", s->rate);
    set_num(L, "backoff_multiplier", s->backoff_multiplier);
    set_num(L, "ceiling", s->ceiling);
    set_num(L, "floor", s->floor);
    set_num(L, "backoff_until", s->backoff_until);
    set_num(L, "ban_until", s->ban_until);
    set_num(L, "last_violation", s->last_violation);
    set_num(L, "remaining", s->remaining);
    set_num(L, "requests_made", (double)s->requests_made);
    set_num(L, "violations", (double)s->violations);
}

static void read_scope(lua_State *L, int t, sl_limiter_scope_snapshot *s) {
    memset(s, 0, sizeof(*s));
    lua_getfield(L, t, "endpoint");
    snprintf(s->endpoint, sizeof(s->endpoint), "%s",
             lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
    lua_pop(L, 1);
    s->rate = opt_field(L, t, "rate", 0);
    s->backoff_multiplier = opt_field(L, t, "backoff_multiplier", 1);
    s->ceiling = opt_field(L, t, "ceiling", 0);
    s->floor = opt_field(L, t, "floor", 0);
    s->backoff_until = opt_field(L, t, "backoff_until", 0);
    s->ban_until = opt_field(L, t, "ban_until", 0);
    s->last_violation = opt_field(L, t, "last_violation", 0);
    s->remaining = opt_field(L, t, "remaining", -1);
    s->requests_made = (long long)opt_field(L, t, "requests_made", 0);
    s->violations = (long long)opt_field(L, t, "violations", 0);
}

/* snapshot() -> a plain table (epoch seconds for deadlines). */
static int l_snapshot(lua_State *L) {
    llimiter *ll = check(L);
    sl_limiter_snapshot s;
    char err[256];
    double now = clock_now(ll, L);
    if (sl_limiter_save(ll->lim, now, clock_wall(ll, now), &s, err,
                        sizeof(err)))
        return luaL_error(L, "sluice.limiter.snapshot: %s", err);
    lua_createtable(L, 0, 10);
    set_num(L, "version", s.version);
    lua_pushstring(L, s.name);
    lua_setfield(L, -2, "name");
    set_num(L, "saved_at", s.saved_at);
    set_num(L, "total_requests", (double)s.total_requests);
    set_num(L, "total_violations", (double)s.total_violations);
    set_num(L, "rate_adjustments", (double)s.rate_adjustments);
    set_num(L, "total_wait_time", s.total_wait_time);
    set_num(L, "min_rate_seen", s.min_rate_seen);
    set_num(L, "max_rate_seen", s.max_rate_seen);
    push_scope(L, &s.global);
    lua_setfield(L, -2, "global");
    lua_createtable(L, (int)s.nendpoints, 0);
    for (size_t i = 0; i < s.nendpoints; i++) {
        push_scope(L, &s.endpoints[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "endpoints");
    lua_createtable(L, (int)s.npools, 0);
    for (size_t i = 0; i < s.npools; i++) {
        lua_createtable(L, 0, 3);
        lua_pushstring(L, s.pools[i].name);
        lua_setfield(L, -2, "name");
        set_num(L, "blocked_until", s.pools[i].blocked_until);
        set_num(L, "ban_until", s.pools[i].ban_until);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "pools");
    sl_limiter_snapshot_free(&s);
    return 1;
}

static int l_restore(lua_State *L) {
    llimiter *ll = check(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    sl_limiter_snapshot s;
    memset(&s, 0, sizeof(s));
    s.version = (int)opt_field(L, 2, "version", SL_LIMITER_SNAPSHOT_VERSION);
    lua_getfield(L, 2, "name");
    snprintf(s.name, sizeof(s.name), "%s",
             lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
    lua_pop(L, 1);
    s.saved_at = opt_field(L, 2, "saved_at", 0);
    s.total_requests = (long long)opt_field(L, 2, "total_requests", 0);
    s.total_violations = (long long)opt_field(L, 2, "total_violations", 0);
    s.rate_adjustments = (long long)opt_field(L, 2, "rate_adjustments", 0);
    s.total_wait_time = opt_field(L, 2, "total_wait_time", 0);
    s.min_rate_seen = opt_field(L, 2, "min_rate_seen", 0);
    s.max_rate_seen = opt_field(L, 2, "max_rate_seen", 0);
    lua_getfield(L, 2, "global");
    if (lua_istable(L, -1))
        read_scope(L, lua_gettop(L), &s.global);
    lua_pop(L, 1);
    lua_getfield(L, 2, "endpoints");
    size_t n = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
    s.endpoints = n ? calloc(n, sizeof(*s.endpoints)) : NULL;
    if (n && !s.endpoints)
        return luaL_error(L, "sluice.limiter.restore: out of memory");
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        if (lua_istable(L, -1))
            read_scope(L, lua_gettop(L), &s.endpoints[s.nendpoints++]);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_getfield(L, 2, "pools");
    size_t np = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
    for (size_t i = 0; i < np && i < SL_LIMITER_MAX_POOLS; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        if (lua_istable(L, -1)) {
            int t = lua_gettop(L);
            lua_getfield(L, t, "name");
            snprintf(s.pools[s.npools].name, SL_LIMITER_NAME_MAX, "%s",
                     lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
            lua_pop(L, 1);
            s.pools[s.npools].blocked_until =
                opt_field(L, t, "blocked_until", 0);
            s.pools[s.npools].ban_until = opt_field(L, t, "ban_until", 0);
            s.npools++;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    char err[256];
    double now = clock_now(ll, L);
    int rc = sl_limiter_restore(ll->lim, &s, now, clock_wall(ll, now), err,
                                sizeof(err));
    free(s.endpoints);
    if (rc != 0)
        return luaL_error(L, "sluice.limiter.restore: %s", err);
    rearm(ll);
    lua_settop(L, 1);
    return 1;
}

int luaopen_sluice_limiter(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"wait", l_wait},
        {"observe", l_observe},
        {"record_429", l_record_429},
        {"adjust_rate", l_adjust_rate},
        {"rate", l_rate},
        {"stats", l_stats},
        {"metrics", l_metrics},
        {"snapshot", l_snapshot},
        {"restore", l_restore},
        {"name", l_name},
        {"close", l_close},
        {NULL, NULL},
    };
    luaL_newmetatable(L, LIMITER_MT);
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    lua_pushvalue(L, -2);
    luaL_openlib(L, NULL, methods, 1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "new");
    luaL_getmetatable(L, LIMITER_MT);
    lua_getfield(L, -1, "__index");
    lua_setfield(L, -3, "methods");
    lua_pop(L, 1);
    return 1;
}
