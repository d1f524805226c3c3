/* lua_breaker.c -- sluice._breaker: the native half of require "sluice.breaker"
 *
 * A userdata owns one sl_breaker (runtime/core/breaker.c) and frees it in
 * __gc. The Lua wrapper validates options before they reach here. State
 * changes are logged here, synchronously, and handed to Lua's on_change
 * callbacks by spawning a task running the dispatcher the wrapper installed:
 * never by calling Lua from inside the breaker's callback.
 *
 * close() stops the state-change callback and lets go of the clock; the
 * core stays until __gc so that name() and stats() still answer. Every
 * other method of a closed breaker raises.
 */
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/breaker.h"
#include "core/log.h"
#include "host/modules.h"
#include "host/runtime.h"
#include "host/task.h"

#define BREAKER_MT "sluice.breaker"

typedef struct lbreaker {
    sl_breaker *b;
    int clock_ref; /* Lua clock function (tests), or LUA_NOREF */
    lua_State *L;  /* the thread of the method in progress; its arg 1 is us */
    double last_clock;
    int closed;
} lbreaker;

static int dispatcher_ref = LUA_NOREF; /* set by the Lua wrapper */

static double real_mono(void *ud) {
    (void)ud;
    return sl_now();
}

static double real_wall(void *ud) {
    (void)ud;
    return sl_time();
}

/* An injected clock returns the same seconds for both clocks. Errors in it
 * are not allowed to unwind through the breaker: the last value stands. */
static double lua_clock(void *ud) {
    lbreaker *lb = ud;
    lua_State *L = lb->L;
    if (lb->clock_ref == LUA_NOREF) /* closed: time stands still */
        return lb->last_clock;
    lua_rawgeti(L, LUA_REGISTRYINDEX, lb->clock_ref);
    if (lua_pcall(L, 0, 1, 0) == 0 && lua_type(L, -1) == LUA_TNUMBER)
        lb->last_clock = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return lb->last_clock;
}

static void on_change(sl_breaker *b, sl_breaker_state from, sl_breaker_state to,
                      const char *reason, void *privdata) {
    lbreaker *lb = privdata;
    const char *name = sl_breaker_name(b);
    const char *f = sl_breaker_state_name(from), *t = sl_breaker_state_name(to);
    sl_log_field fields[] = {
        {.key = "breaker",
         .type = SL_LOG_STR,
         .str = name,
         .len = strlen(name)},
        {.key = "from", .type = SL_LOG_STR, .str = f, .len = strlen(f)},
        {.key = "to", .type = SL_LOG_STR, .str = t, .len = strlen(t)},
        {.key = "reason",
         .type = SL_LOG_STR,
         .str = reason,
         .len = strlen(reason)},
    };
    sl_log_write(SL_LOG_WARNING, sl_log_clock(), "circuit breaker state change",
                 fields, 4);
    if (dispatcher_ref == LUA_NOREF || !lb->L)
        return;
    lua_State *L = lb->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, dispatcher_ref);
    lua_pushvalue(L, 1);
    lua_pushstring(L, f);
    lua_pushstring(L, t);
    lua_pushstring(L, reason);
    sl_task_spawn(L, 4);
    lua_pop(L, 1);
}

/* Methods carry the metatable as upvalue 1: comparing against it is much
 * cheaper than luaL_checkudata's registry lookup by name, and allow() +
 * success() is the hot path of every request. */
static lbreaker *check_handle(lua_State *L, int closed_ok) {
    lbreaker *lb = lua_touserdata(L, 1);
    if (!lb || !lua_getmetatable(L, 1) ||
        !lua_rawequal(L, -1, lua_upvalueindex(1)))
        luaL_typerror(L, 1, BREAKER_MT);
    lua_pop(L, 1);
    if (!lb->b)
        luaL_error(L, "sluice.breaker: breaker is freed");
    if (lb->closed && !closed_ok)
        luaL_error(L, "sluice.breaker: breaker '%s' is closed",
                   sl_breaker_name(lb->b));
    lb->L = L;
    return lb;
}

static lbreaker *check(lua_State *L) { return check_handle(L, 0); }

static double opt_num(lua_State *L, int t, const char *k, double def) {
    lua_getfield(L, t, k);
    double v = lua_isnil(L, -1) ? def : lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

static sl_breaker_mode parse_mode(const char *s) {
    if (strcmp(s, "metrics_only") == 0)
        return SL_BREAKER_MODE_METRICS_ONLY;
    if (strcmp(s, "disabled") == 0)
        return SL_BREAKER_MODE_DISABLED;
    return SL_BREAKER_MODE_NORMAL;
}

/* new(opts) with opts already validated by the wrapper; window options
 * flattened (window_type, window_size, window_min_calls, failure_rate). */
static int l_new(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    sl_breaker_options o;
    sl_breaker_options_default(&o);
    lua_getfield(L, 1, "name");
    o.name = lua_isnil(L, -1) ? o.name : luaL_checkstring(L, -1);
    o.failure_threshold =
        (int)opt_num(L, 1, "failure_threshold", o.failure_threshold);
    o.timeout = opt_num(L, 1, "timeout", o.timeout);
    o.half_open_max_calls =
        (int)opt_num(L, 1, "half_open_max_calls", o.half_open_max_calls);
    o.half_open_success_threshold = (int)opt_num(
        L, 1, "half_open_success_threshold", o.half_open_success_threshold);
    o.backoff_multiplier =
        opt_num(L, 1, "backoff_multiplier", o.backoff_multiplier);
    o.max_timeout = opt_num(L, 1, "max_timeout", o.max_timeout);
    o.permit_timeout = opt_num(L, 1, "permit_timeout", o.permit_timeout);
    lua_getfield(L, 1, "window_type");
    if (lua_isstring(L, -1))
        o.window_type = strcmp(lua_tostring(L, -1), "time") == 0
                            ? SL_BREAKER_WINDOW_TIME
                            : SL_BREAKER_WINDOW_COUNT;
    lua_pop(L, 1);
    o.window_size = (int)opt_num(L, 1, "window_size", o.window_size);
    o.window_min_calls =
        (int)opt_num(L, 1, "window_min_calls", o.window_min_calls);
    o.failure_rate = opt_num(L, 1, "failure_rate", o.failure_rate);
    o.slow_call_duration =
        opt_num(L, 1, "slow_call_duration", o.slow_call_duration);
    o.slow_call_rate = opt_num(L, 1, "slow_call_rate", o.slow_call_rate);
    o.jitter = opt_num(L, 1, "jitter", o.jitter);
    /* Breakers that jitter must not all reopen in step: each gets its own
     * seed unless a test pins one. */
    o.seed = (uint64_t)opt_num(L, 1, "seed", 0);
    if (o.seed == 0)
        o.seed = ((uint64_t)random() << 31) ^ (uint64_t)random() ^
                 (uint64_t)(sl_time() * 1e6);
    lua_getfield(L, 1, "mode");
    if (lua_isstring(L, -1))
        o.mode = parse_mode(lua_tostring(L, -1));
    lua_pop(L, 1);

    lbreaker *lb = lua_newuserdata(L, sizeof(*lb));
    memset(lb, 0, sizeof(*lb));
    lb->clock_ref = LUA_NOREF;
    lb->L = L;
    luaL_getmetatable(L, BREAKER_MT);
    lua_setmetatable(L, -2);
    sl_breaker_clock clock = {real_mono, real_wall, NULL};
    lua_getfield(L, 1, "clock");
    if (lua_isfunction(L, -1)) {
        lb->clock_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        lb->last_clock = 0;
        clock = (sl_breaker_clock){lua_clock, lua_clock, lb};
        lb->last_clock = lua_clock(lb);
    } else {
        lua_pop(L, 1);
    }
    char err[256];
    lb->b = sl_breaker_new(&o, &clock, err, sizeof(err));
    if (!lb->b)
        return luaL_error(L, "sluice.breaker.new: %s", err);
    sl_breaker_set_callback(lb->b, on_change, lb);
    return 1;
}

static int l_gc(lua_State *L) {
    lbreaker *lb = luaL_checkudata(L, 1, BREAKER_MT);
    sl_breaker_free(lb->b);
    lb->b = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, lb->clock_ref);
    lb->clock_ref = LUA_NOREF;
    return 0;
}

static int l_tostring(lua_State *L) {
    lbreaker *lb = luaL_checkudata(L, 1, BREAKER_MT);
    if (!lb->b)
        lua_pushliteral(L, "breaker (freed)");
    else
        lua_pushfstring(L, "breaker %s (%s)", sl_breaker_name(lb->b),
                        sl_breaker_state_name(sl_breaker_get_state(lb->b)));
    return 1;
}

/* allow() -> permit | nil, why */
static int l_allow(lua_State *L) {
    lbreaker *lb = check(L);
    const char *why = NULL;
    sl_breaker_permit p = sl_breaker_allow(lb->b, &why);
    if (p == SL_BREAKER_NO_PERMIT) {
        lua_pushnil(L);
        lua_pushstring(L, why ? why : "open");
        return 2;
    }
    lua_pushnumber(L, (lua_Number)p);
    return 1;
}

static sl_breaker_permit opt_permit(lua_State *L, int idx) {
    lua_Number n = lua_tonumber(L, idx);
    if (n > 0 && n == floor(n)) /* the hot path: a permit from allow() */
        return (sl_breaker_permit)n;
    if (lua_isnoneornil(L, idx))
        return SL_BREAKER_NO_PERMIT;
    luaL_argcheck(L, lua_type(L, idx) == LUA_TNUMBER && n == 0, idx,
                  "not a permit");
    return SL_BREAKER_NO_PERMIT;
}

static int report(lua_State *L, int failed) {
    lbreaker *lb = check(L);
    sl_breaker_permit p = opt_permit(L, 2);
    double duration = lua_type(L, 3) == LUA_TNUMBER ? lua_tonumber(L, 3)
                                                    : luaL_optnumber(L, 3, 0);
    int rc = failed ? sl_breaker_failure(lb->b, p, duration)
                    : sl_breaker_success(lb->b, p, duration);
    if (rc < 0)
        return luaL_error(L, "sluice.breaker: called from its own callback");
    lua_pushboolean(L, rc == 1);
    return 1;
}

static int l_success(lua_State *L) { return report(L, 0); }
static int l_failure(lua_State *L) { return report(L, 1); }

static int l_release(lua_State *L) {
    lbreaker *lb = check(L);
    int rc = sl_breaker_release(lb->b, opt_permit(L, 2));
    lua_pushboolean(L, rc == 1);
    return 1;
}

static int control(lua_State *L, int (*fn)(sl_breaker *)) {
    lbreaker *lb = check(L);
    if (fn(lb->b) < 0)
        return luaL_error(L, "sluice.breaker: called from its own callback");
    lua_settop(L, 1);
    return 1;
}

static int l_force_open(lua_State *L) {
    return control(L, sl_breaker_force_open);
}
static int l_force_close(lua_State *L) {
    return control(L, sl_breaker_force_close);
}
static int l_reset(lua_State *L) { return control(L, sl_breaker_reset); }

static int l_open_until(lua_State *L) {
    lbreaker *lb = check(L);
    double epoch = luaL_checknumber(L, 2);
    luaL_argcheck(L, isfinite(epoch), 2, "must be a finite epoch time");
    if (sl_breaker_open_until(lb->b, epoch) < 0)
        return luaL_error(L, "sluice.breaker: called from its own callback");
    lua_settop(L, 1);
    return 1;
}

static int l_set_mode(lua_State *L) {
    lbreaker *lb = check(L);
    sl_breaker_set_mode(lb->b, parse_mode(luaL_checkstring(L, 2)));
    lua_settop(L, 1);
    return 1;
}

static int l_state(lua_State *L) {
    lbreaker *lb = check(L);
    lua_pushstring(L, sl_breaker_state_name(sl_breaker_get_state(lb->b)));
    return 1;
}

static int l_name(lua_State *L) {
    lbreaker *lb = check_handle(L, 1);
    lua_pushstring(L, sl_breaker_name(lb->b));
    return 1;
}

static void set_num(lua_State *L, const char *k, double v) {
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

/* A timestamp field, or nothing for "never" (the reference's None). */
static void set_time(lua_State *L, const char *k, double epoch) {
    char buf[SL_BREAKER_ISO8601_LEN];
    if (epoch == SL_BREAKER_NEVER ||
        sl_breaker_iso8601(epoch, buf, sizeof(buf)) != 0)
        return;
    lua_pushstring(L, buf);
    lua_setfield(L, -2, k);
}

static void push_statistics(lua_State *L, const sl_breaker_stats *s, int iso) {
    lua_createtable(L, 0, 7);
    set_num(L, "total_failures", (double)s->total_failures);
    set_num(L, "total_successes", (double)s->total_successes);
    set_num(L, "circuit_opens", (double)s->circuit_opens);
    set_num(L, "successful_recoveries", (double)s->successful_recoveries);
    set_num(L, "failed_recoveries", (double)s->failed_recoveries);
    set_num(L, "time_in_open_state", s->time_in_open_state);
    if (iso)
        set_time(L, "last_open_time", s->last_open_time);
    else if (s->last_open_time != SL_BREAKER_NEVER)
        set_num(L, "last_open_time", s->last_open_time);
}

/* The reference get_status() shape, exactly. */
static void push_status(lua_State *L, const sl_breaker_status *st) {
    lua_createtable(L, 0, 11);
    lua_pushstring(L, sl_breaker_state_name(st->state));
    lua_setfield(L, -2, "state");
    lua_pushstring(L, st->name);
    lua_setfield(L, -2, "collector_name");
    set_num(L, "failure_count", st->failure_count);
    set_num(L, "consecutive_successes", (double)st->consecutive_successes);
    set_num(L, "failure_threshold", st->failure_threshold);
    set_num(L, "timeout_seconds", st->timeout_seconds);
    set_time(L, "last_failure_time", st->last_failure_time);
    set_time(L, "last_state_change", st->last_state_change);
    if (st->state == SL_BREAKER_HALF_OPEN) {
        lua_createtable(L, 0, 5);
        set_num(L, "attempts", st->half_open_attempts);
        set_num(L, "successes", st->half_open_successes);
        set_num(L, "max_calls", st->half_open_max_calls);
        set_num(L, "success_threshold", st->half_open_success_threshold);
        set_num(L, "success_rate", st->half_open_success_rate);
        lua_setfield(L, -2, "half_open");
    }
    push_statistics(L, &st->statistics, 1);
    lua_setfield(L, -2, "statistics");
    set_num(L, "health_score", st->health_score);
}

/* status() -> the reference get_status() shape. */
static int l_status(lua_State *L) {
    lbreaker *lb = check(L);
    sl_breaker_status st;
    sl_breaker_get_status(lb->b, &st);
    push_status(L, &st);
    return 1;
}

/* What goes beyond the reference shape, into the table on top. */
static void set_metrics(lua_State *L, const sl_breaker_status *st) {
    lua_pushstring(L, sl_breaker_mode_name(st->mode));
    lua_setfield(L, -2, "mode");
    if (st->open_until != SL_BREAKER_NEVER)
        set_num(L, "open_until", st->open_until);
    set_num(L, "rejected", (double)st->statistics.rejected);
    set_num(L, "ignored_results", (double)st->statistics.ignored_results);
    set_num(L, "permit_timeouts", (double)st->statistics.permit_timeouts);
    set_num(L, "slow_calls", (double)st->statistics.slow_calls);
    set_num(L, "window_calls", (double)st->window_calls);
    set_num(L, "window_failures", (double)st->window_failures);
    set_num(L, "window_slow_calls", (double)st->window_slow_calls);
    set_num(L, "half_open_outstanding", st->half_open_outstanding);
    set_num(L, "generation", (double)st->generation);
}

/* metrics() -> what goes beyond the reference shape. */
static int l_metrics(lua_State *L) {
    lbreaker *lb = check(L);
    sl_breaker_status st;
    sl_breaker_get_status(lb->b, &st);
    lua_createtable(L, 0, 10);
    set_metrics(L, &st);
    return 1;
}

/* stats() -> status() and metrics() in one table, with name (also once
 * closed). */
static int l_stats(lua_State *L) {
    lbreaker *lb = check_handle(L, 1);
    sl_breaker_status st;
    sl_breaker_get_status(lb->b, &st);
    push_status(L, &st);
    set_metrics(L, &st);
    lua_pushstring(L, sl_breaker_name(lb->b));
    lua_setfield(L, -2, "name");
    return 1;
}

/* close() -> true, or false when already closed. */
static int l_close(lua_State *L) {
    lbreaker *lb = check_handle(L, 1);
    if (lb->closed) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lb->closed = 1;
    sl_breaker_set_callback(lb->b, NULL, NULL);
    luaL_unref(L, LUA_REGISTRYINDEX, lb->clock_ref);
    lb->clock_ref = LUA_NOREF;
    lua_pushboolean(L, 1);
    return 1;
}

/* snapshot() -> a plain table of numbers and strings (epoch seconds). */
static int l_snapshot(lua_State *L) {
    lbreaker *lb = check(L);
    sl_breaker_snapshot s;
    sl_breaker_get_snapshot(lb->b, &s);
    lua_createtable(L, 0, 9);
    lua_pushstring(L, sl_breaker_name(lb->b));
    lua_setfield(L, -2, "name");
    lua_pushstring(L, sl_breaker_state_name(s.state));
    lua_setfield(L, -2, "state");
    set_num(L, "failure_count", s.failure_count);
    set_num(L, "consecutive_successes", (double)s.consecutive_successes);
    set_num(L, "timeout", s.timeout);
    if (s.open_until != SL_BREAKER_NEVER)
        set_num(L, "open_until", s.open_until);
    if (s.last_failure_time != SL_BREAKER_NEVER)
        set_num(L, "last_failure_time", s.last_failure_time);
    set_num(L, "last_state_change", s.last_state_change);
    push_statistics(L, &s.statistics, 0);
    set_num(L, "rejected", (double)s.statistics.rejected);
    set_num(L, "ignored_results", (double)s.statistics.ignored_results);
    set_num(L, "permit_timeouts", (double)s.statistics.permit_timeouts);
    set_num(L, "slow_calls", (double)s.statistics.slow_calls);
    lua_setfield(L, -2, "statistics");
    return 1;
}

static double field(lua_State *L, int t, const char *k, double def) {
    lua_getfield(L, t, k);
    double v = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : def;
    lua_pop(L, 1);
    return v;
}

/* restore(snapshot) -> self; raises on an inconsistent snapshot. */
static int l_restore(lua_State *L) {
    lbreaker *lb = check(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    sl_breaker_snapshot s;
    memset(&s, 0, sizeof(s));
    lua_getfield(L, 2, "state");
    const char *state = luaL_optstring(L, -1, "closed");
    s.state = strcmp(state, "open") == 0        ? SL_BREAKER_OPEN
              : strcmp(state, "half-open") == 0 ? SL_BREAKER_HALF_OPEN
                                                : SL_BREAKER_CLOSED;
    if (strcmp(state, "open") && strcmp(state, "half-open") &&
        strcmp(state, "closed"))
        return luaL_error(L, "sluice.breaker.restore: bad state '%s'", state);
    lua_pop(L, 1);
    s.failure_count = (int)field(L, 2, "failure_count", 0);
    s.consecutive_successes = (uint64_t)field(L, 2, "consecutive_successes", 0);
    s.timeout = field(L, 2, "timeout", sl_breaker_get_options(lb->b)->timeout);
    s.open_until = field(L, 2, "open_until", SL_BREAKER_NEVER);
    s.last_failure_time = field(L, 2, "last_failure_time", SL_BREAKER_NEVER);
    s.last_state_change = field(L, 2, "last_state_change", sl_time());
    lua_getfield(L, 2, "statistics");
    if (lua_istable(L, -1)) {
        int t = lua_gettop(L);
        sl_breaker_stats *st = &s.statistics;
        st->total_failures = (uint64_t)field(L, t, "total_failures", 0);
        st->total_successes = (uint64_t)field(L, t, "total_successes", 0);
        st->circuit_opens = (uint64_t)field(L, t, "circuit_opens", 0);
        st->successful_recoveries =
            (uint64_t)field(L, t, "successful_recoveries", 0);
        st->failed_recoveries = (uint64_t)field(L, t, "failed_recoveries", 0);
        st->time_in_open_state = field(L, t, "time_in_open_state", 0);
        st->last_open_time = field(L, t, "last_open_time", SL_BREAKER_NEVER);
        st->rejected = (uint64_t)field(L, t, "rejected", 0);
        st->ignored_results = (uint64_t)field(L, t, "ignored_results", 0);
        st->permit_timeouts = (uint64_t)field(L, t, "permit_timeouts", 0);
        st->slow_calls = (uint64_t)field(L, t, "slow_calls", 0);
    } else {
        s.statistics.last_open_time = SL_BREAKER_NEVER;
    }
    lua_pop(L, 1);
    char err[256];
    if (sl_breaker_restore(lb->b, &s, err, sizeof(err)) != 0)
        return luaL_error(L, "sluice.breaker.restore: %s", err);
    lua_settop(L, 1);
    return 1;
}

static int l_set_dispatcher(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    luaL_unref(L, LUA_REGISTRYINDEX, dispatcher_ref);
    dispatcher_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

int luaopen_sluice_breaker(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"allow", l_allow},
        {"success", l_success},
        {"failure", l_failure},
        {"release", l_release},
        {"force_open", l_force_open},
        {"force_close", l_force_close},
        {"reset", l_reset},
        {"open_until", l_open_until},
        {"set_mode", l_set_mode},
        {"state", l_state},
        {"name", l_name},
        {"status", l_status},
        {"metrics", l_metrics},
        {"snapshot", l_snapshot},
        {"restore", l_restore},
        {"stats", l_stats},
        {"close", l_close},
        {NULL, NULL},
    };
    static const luaL_Reg fns[] = {
        {"new", l_new},
        {"set_dispatcher", l_set_dispatcher},
        {NULL, NULL},
    };
    luaL_newmetatable(L, BREAKER_MT);
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_newtable(L);
    lua_pushvalue(L, -2);
    luaL_openlib(L, NULL, methods, 1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    /* The method table, so the wrapper can add aliases and Lua methods. */
    luaL_getmetatable(L, BREAKER_MT);
    lua_getfield(L, -1, "__index");
    lua_setfield(L, -3, "methods");
    lua_pop(L, 1);
    /* The core's bounds, so the wrapper's option schema states them. */
    lua_pushinteger(L, SL_BREAKER_MAX_TRIALS);
    lua_setfield(L, -2, "MAX_TRIALS");
    lua_pushinteger(L, SL_BREAKER_MAX_WINDOW);
    lua_setfield(L, -2, "MAX_WINDOW");
    return 1;
}
