/* timer.c -- sluice.after and sluice.every: callbacks run as tasks */
#include "timer.h"

#include <event2/event.h>
#include <event2/event_struct.h>
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/timeout.h"
#include "runtime.h"
#include "task.h"

#define TIMER_MT "sluice.timer"

typedef struct sl_timer sl_timer;
struct sl_timer {
    struct event ev;
    int self_ref; /* registry anchor while armed or running */
    int fn_ref;   /* the callback */
    int args_ref; /* table of extra arguments (after), or LUA_NOREF */
    double period, jitter;
    int every;
    int armed, running, stopped;
    double due;            /* monotonic time of the run in progress or next */
    sl_timer *prev, *next; /* list of anchored timers */
};

static sl_timer *active;

static void anchor(lua_State *L, sl_timer *tm, int idx) {
    lua_pushvalue(L, idx);
    tm->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    tm->next = active;
    tm->prev = NULL;
    if (active)
        active->prev = tm;
    active = tm;
    sl_loop_ref();
}

/* A timer that will not run again lets go of its callback and arguments at
 * once, not when its handle is collected: so the type needs no __gc, whose
 * cost LuaJIT pays in the GC's one non-incremental step for every handle
 * made (a collector's schedule makes one a run). */
static void forget(sl_timer *tm) {
    luaL_unref(sl_rt.L, LUA_REGISTRYINDEX, tm->fn_ref);
    luaL_unref(sl_rt.L, LUA_REGISTRYINDEX, tm->args_ref);
    tm->fn_ref = tm->args_ref = LUA_NOREF;
}

/* Unanchors a timer that will not run again (fired once, or stopped). */
static void release(sl_timer *tm) {
    forget(tm);
    if (tm->self_ref == LUA_NOREF)
        return;
    if (tm->prev)
        tm->prev->next = tm->next;
    else
        active = tm->next;
    if (tm->next)
        tm->next->prev = tm->prev;
    tm->prev = tm->next = NULL;
    luaL_unref(sl_rt.L, LUA_REGISTRYINDEX, tm->self_ref);
    tm->self_ref = LUA_NOREF;
    sl_loop_unref();
}

/* delay is finite (after and every refuse anything else); a huge one is
 * clamped, a negative one is 0. */
static void arm(sl_timer *tm, double delay) {
    struct timeval tv;
    sl_timeout_tv(delay, &tv);
    evtimer_add(&tm->ev, &tv);
    tm->armed = 1;
}

/* The next period, stretched or shrunk by up to jitter * period. */
static double next_period(const sl_timer *tm) {
    if (tm->jitter <= 0)
        return tm->period;
    double u = (double)random() / (double)RAND_MAX * 2.0 - 1.0;
    return tm->period * (1.0 + tm->jitter * u);
}

static void every_done(sl_task *t, int ok, void *privdata) {
    sl_timer *tm = privdata;
    (void)t;
    (void)ok;
    tm->running = 0;
    if (tm->stopped || sl_rt.stopping) {
        release(tm);
        return;
    }
    /* Fixed rate without overlap: a run that overran its period delays the
     * next tick to now; missed ticks are not replayed. */
    tm->due += next_period(tm);
    double now = sl_now();
    if (tm->due < now)
        tm->due = now;
    arm(tm, tm->due - now);
}

/* Spawns the callback as a task: fn(premature, args...). */
static sl_task *run(sl_timer *tm, int premature) {
    lua_State *L = sl_rt.L;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, tm->fn_ref);
    lua_pushboolean(L, premature);
    int nargs = 1;
    if (tm->args_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, tm->args_ref);
        int n = (int)lua_objlen(L, -1);
        luaL_checkstack(L, n, "too many timer arguments");
        for (int i = 1; i <= n; i++)
            lua_rawgeti(L, top + 3, i);
        lua_remove(L, top + 3);
        nargs += n;
    }
    sl_task *t = sl_task_spawn(L, nargs);
    lua_settop(L, top);
    return t;
}

static void fire(evutil_socket_t fd, short what, void *arg) {
    sl_timer *tm = arg;
    (void)fd;
    (void)what;
    tm->armed = 0;
    sl_task *t = run(tm, 0);
    if (tm->every) {
        tm->running = 1;
        t->on_done = every_done;
        t->on_done_data = tm;
    } else {
        release(tm);
    }
}

static sl_timer *new_timer(lua_State *L, double delay, int every) {
    sl_timer *tm = lua_newuserdata(L, sizeof(*tm));
    memset(tm, 0, sizeof(*tm));
    tm->self_ref = tm->fn_ref = tm->args_ref = LUA_NOREF;
    tm->every = every;
    event_assign(&tm->ev, sl_rt.base, -1, 0, fire, tm);
    luaL_getmetatable(L, TIMER_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, 2);
    tm->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    tm->due = sl_now() + delay;
    return tm;
}

int sl_timer_after(lua_State *L) {
    double delay = luaL_checknumber(L, 1);
    luaL_argcheck(L, delay >= 0 && isfinite(delay), 1,
                  "delay must be a finite number >= 0");
    luaL_checktype(L, 2, LUA_TFUNCTION);
    int nextra = lua_gettop(L) - 2;
    if (sl_rt.stopping) {
        /* Too late to wait: run it now, prematurely, as on shutdown. */
        lua_pushvalue(L, 2);
        lua_pushboolean(L, 1);
        for (int i = 3; i < 3 + nextra; i++)
            lua_pushvalue(L, i);
        sl_task_spawn(L, nextra + 1);
        lua_pop(L, 1);
    }
    sl_timer *tm = new_timer(L, delay, 0);
    if (sl_rt.stopping) {
        tm->stopped = 1;
        forget(tm);
        return 1;
    }
    if (nextra > 0) {
        lua_createtable(L, nextra, 0);
        for (int i = 1; i <= nextra; i++) {
            lua_pushvalue(L, 2 + i);
            lua_rawseti(L, -2, i);
        }
        tm->args_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    anchor(L, tm, -1);
    arm(tm, delay);
    return 1;
}

int sl_timer_every(lua_State *L) {
    double period = luaL_checknumber(L, 1);
    luaL_argcheck(L, period > 0 && isfinite(period), 1,
                  "period must be a finite number > 0");
    luaL_checktype(L, 2, LUA_TFUNCTION);
    double jitter = luaL_optnumber(L, 3, 0);
    luaL_argcheck(L, jitter >= 0 && jitter < 1, 3, "jitter must be in [0, 1)");
    lua_settop(L, 2);
    sl_timer *tm = new_timer(L, 0, 1);
    tm->period = period;
    tm->jitter = jitter;
    if (sl_rt.stopping) {
        tm->stopped = 1;
        forget(tm);
        return 1;
    }
    double first = next_period(tm);
    tm->due = sl_now() + first;
    anchor(L, tm, -1);
    arm(tm, first);
    return 1;
}

static sl_timer *check_timer(lua_State *L) {
    return luaL_checkudata(L, 1, TIMER_MT);
}

/* timer:cancel() -> true if it was armed or running. A run in progress
 * finishes; no further run starts. */
static int timer_cancel(lua_State *L) {
    sl_timer *tm = check_timer(L);
    int was = tm->armed || tm->running;
    tm->stopped = 1;
    if (tm->armed) {
        event_del(&tm->ev);
        tm->armed = 0;
    }
    if (!tm->running)
        release(tm);
    lua_pushboolean(L, was);
    return 1;
}

static int timer_active(lua_State *L) {
    sl_timer *tm = check_timer(L);
    lua_pushboolean(L, !tm->stopped && (tm->armed || tm->running));
    return 1;
}

static int timer_tostring(lua_State *L) {
    sl_timer *tm = check_timer(L);
    lua_pushfstring(L, "timer (%s, %s)", tm->every ? "every" : "after",
                    tm->running ? "running"
                    : tm->armed ? "armed"
                                : "stopped");
    return 1;
}

void sl_timer_init(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"cancel", timer_cancel},
        {"active", timer_active},
        {NULL, NULL},
    };
    luaL_newmetatable(L, TIMER_MT); /* no __gc: see forget() */
    lua_pushcfunction(L, timer_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

void sl_timer_shutdown(void) {
    sl_timer *tm = active;
    while (tm) {
        sl_timer *next = tm->next;
        tm->stopped = 1;
        if (tm->armed) {
            event_del(&tm->ev);
            tm->armed = 0;
            run(tm, 1);
            release(tm);
        }
        tm = next;
    }
}

void sl_timer_close(void) {
    for (sl_timer *tm = active; tm; tm = tm->next) {
        if (tm->armed)
            event_del(&tm->ev);
        tm->armed = 0;
    }
}
