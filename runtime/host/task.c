/* task.c -- tasks: coroutines scheduled on the loop through a ready queue */
#include "task.h"

#include <lauxlib.h>
#include <string.h>

#include "budget.h"
#include "core/log.h"
#include "core/timeout.h"
#include "runtime.h"

#define TASK_MT "sluice.task"

static sl_task *live_head;         /* every live task */
static sl_task *rq_head, *rq_tail; /* ready queue, FIFO */
static long rq_len;
static sl_task *current;
static struct event *drain_ev;
static int drain_pending;
static int draining; /* inside drain(): it schedules the next pass */
static uint64_t next_id = 1;
static sl_task_counts counts;

/* --- ready queue --------------------------------------------------------- */
static void drain(evutil_socket_t fd, short what, void *arg);

static void rq_push(sl_task *t) {
    t->state = SL_TASK_READY;
    t->rq_next = NULL;
    t->rq_prev = rq_tail;
    if (rq_tail)
        rq_tail->rq_next = t;
    else
        rq_head = t;
    rq_tail = t;
    rq_len++;
    counts.ready++;
    if (!drain_pending && !draining) { /* a drain re-arms itself */
        drain_pending = 1;
        event_active(drain_ev, EV_TIMEOUT, 0);
    }
}

static void rq_remove(sl_task *t) {
    if (t->rq_prev)
        t->rq_prev->rq_next = t->rq_next;
    else
        rq_head = t->rq_next;
    if (t->rq_next)
        t->rq_next->rq_prev = t->rq_prev;
    else
        rq_tail = t->rq_prev;
    t->rq_prev = t->rq_next = NULL;
    rq_len--;
    counts.ready--;
}

/* --- finishing ----------------------------------------------------------- */

/* Pushes onto L the outcome of the finished task whose handle is at idx:
 * true, results... or false, error. When L has no room for all the
 * results, pushes false and a message saying so. Never raises (finish()
 * calls it on the main state, outside any protected call). Returns the
 * number of values. */
static int push_outcome(lua_State *L, int idx, sl_task *t) {
    if (!lua_checkstack(L, 3))
        return 0; /* cannot happen: every caller has a few slots */
    if (!t->results) {
        lua_pushboolean(L, t->ok);
        return 1;
    }
    lua_getfenv(L, idx);
    lua_getfield(L, -1, "n");
    int n = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (!lua_checkstack(L, n + 2)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 0);
        lua_pushfstring(L,
                        "sluice.wait: too many results to return (task %d "
                        "returned %d values)",
                        (int)t->id, n);
        return 2;
    }
    lua_pushboolean(L, t->ok);
    for (int i = 1; i <= n; i++)
        lua_rawgeti(L, -1 - i, i);
    lua_remove(L, -n - 2);
    return n + 1;
}

static void unlink_live(sl_task *t) {
    if (t->prev)
        t->prev->next = t->next;
    else
        live_head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

static void waiter_unlink(sl_task *target, sl_task *w) {
    if (w->wait_prev)
        w->wait_prev->wait_next = w->wait_next;
    else
        target->waiters = w->wait_next;
    if (w->wait_next)
        w->wait_next->wait_prev = w->wait_prev;
    w->wait_prev = w->wait_next = NULL;
}

/* Tears down the operation t is suspended on (or that a native left
 * attached), exactly once. */
static void cancel_op(sl_task *t) {
    sl_task_cancel_fn cancel = t->cancel;
    void *op = t->op;
    t->cancel = NULL;
    t->op = NULL;
    if (cancel)
        cancel(t, op);
}

/* Ends t with nres values on top of t->co as its results (or its error).
 * Runs on the main state outside any protected call, so nothing here may
 * raise: the results move into a table one at a time, however many. */
static void finish(sl_task *t, int ok, int nres) {
    lua_State *L = sl_rt.L;
    lua_checkstack(L, 8); /* the main state's stack is all but empty here */
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->self_ref);
    int h = lua_gettop(L);
    if (nres > 0) {
        lua_createtable(L, nres, 1);
        for (int i = nres; i >= 1; i--) {
            lua_xmove(t->co, L, 1);
            lua_rawseti(L, h + 1, i);
        }
        lua_pushinteger(L, nres);
        lua_setfield(L, h + 1, "n");
        lua_setfenv(L, h);
        t->results = 1;
    }
    lua_settop(t->co, 0);
    t->ok = ok;
    t->state = SL_TASK_DONE;
    cancel_op(t); /* defence in depth: nothing outlives its task */
    t->nowait = 0;
    if (t->timer_set) {
        event_del(&t->timer);
        t->timer_set = 0;
    }
    unlink_live(t);
    counts.running--;
    if (!ok)
        counts.failed += !t->killed;

    while (t->waiters) {
        sl_task *w = t->waiters;
        waiter_unlink(t, w);
        /* Straight onto the waiter's stack, which push_outcome checks:
         * lua_xmove does not. */
        lua_State *wco = w->co;
        lua_checkstack(wco, 4);
        lua_rawgeti(wco, LUA_REGISTRYINDEX, t->self_ref);
        int wh = lua_gettop(wco);
        int n = push_outcome(wco, wh, t);
        lua_remove(wco, wh);
        w->cancel = NULL;
        w->op = NULL;
        sl_task_wake(w, n);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, t->co_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, t->self_ref);
    t->co_ref = t->self_ref = LUA_NOREF;
    t->co = NULL;
    sl_budget_finish(t);
    if (t->on_done)
        t->on_done(t, ok, t->on_done_data);
    lua_settop(L, h - 1);
    sl_loop_unref();
}

/* Logs a task's error with its traceback; the error value stays on co. */
static void report_error(sl_task *t) {
    lua_State *L = sl_rt.L;
    lua_State *co = t->co;
    int top = lua_gettop(L);
    lua_getglobal(L, "tostring");
    lua_pushvalue(co, -1);
    lua_xmove(co, L, 1);
    /* tostring honours __tostring; if that fails too, say what it was. */
    if (lua_pcall(L, 1, 1, 0) != 0 || !lua_isstring(L, -1)) {
        lua_pop(L, 1);
        lua_pushfstring(L, "(error object is a %s value)",
                        luaL_typename(co, -1));
    }
    luaL_traceback(L, co, NULL, 0);
    size_t errlen, tblen;
    const char *err = lua_tolstring(L, top + 1, &errlen);
    const char *tb = lua_tolstring(L, top + 2, &tblen);
    sl_log_field fields[] = {
        {.key = "task", .type = SL_LOG_NUM, .num = (double)t->id},
        {.key = "error", .type = SL_LOG_STR, .str = err, .len = errlen},
        {.key = "traceback", .type = SL_LOG_STR, .str = tb, .len = tblen},
    };
    sl_log_write(SL_LOG_ERROR, sl_log_clock(), "task failed", fields, 3);
    lua_settop(L, top);
}

static void resume(sl_task *t) {
    int nargs = t->nargs;
    t->nargs = 0;
    t->state = SL_TASK_RUNNING;
    sl_task *prev = current;
    current = t;
    sl_budget *b = t->budget;
    if (b)
        sl_budget_enter(b);
    int rc = lua_resume(t->co, nargs);
    b = t->budget; /* a region may have opened or closed meanwhile */
    const char *over = b ? sl_budget_leave(b) : NULL;
    current = prev;
    const char *spent = b ? sl_budget_refusal(b) : NULL;
    if (spent && rc == LUA_YIELD && t->state == SL_TASK_SUSPENDED) {
        /* Its region ran out just as it began to wait: the wait ends now
         * with the error, and the region unwinds from there. */
        sl_task_interrupt(t, spent);
        return;
    }
    if (over && rc == LUA_YIELD) {
        /* Out of budget (see budget.h): the watchdog's hook yielded the
         * task, or it ran out just as it began to wait. Either way it ends
         * here with the budget error; the coroutine is never resumed, so no
         * pcall inside it can swallow the error. */
        if (t->state == SL_TASK_SUSPENDED) {
            sl_task_kill(t, over);
            return;
        }
        lua_settop(t->co, 0);
        lua_pushstring(t->co, over);
        report_error(t);
        finish(t, 0, 1);
        return;
    }
    if (rc == LUA_YIELD) {
        /* A plain coroutine.yield() from the task's own body: give the other
         * ready tasks a turn and continue. Suspending natives have already
         * moved the task to SUSPENDED. */
        if (t->state == SL_TASK_RUNNING) {
            lua_settop(t->co, 0);
            rq_push(t);
        }
        return;
    }
    if (rc == 0) {
        finish(t, 1, lua_gettop(t->co));
    } else {
        report_error(t);
        finish(t, 0, 1); /* the error value is on top of co */
    }
}

/* Resumes the tasks that were ready when the drain began; tasks they make
 * ready wait for the next pass, so timers and I/O are never starved. The
 * next pass is a zero timeout, not event_active: libevent runs events made
 * active by a callback in the same pass over its active queue, without
 * polling, so tasks that keep yielding would starve sockets and signals. */
static void drain(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    (void)arg;
    drain_pending = 0;
    draining = 1;
    long budget = rq_len;
    while (budget-- > 0 && rq_head) {
        sl_task *t = rq_head;
        rq_remove(t);
        resume(t);
    }
    draining = 0;
    if (rq_head && !drain_pending) {
        static const struct timeval now = {0, 0};
        drain_pending = 1;
        evtimer_add(drain_ev, &now);
    }
}

/* --- public API ---------------------------------------------------------- */
static const char *state_name(const sl_task *t) {
    switch (t->state) {
    case SL_TASK_READY:
        return "ready";
    case SL_TASK_RUNNING:
        return "running";
    case SL_TASK_SUSPENDED:
        return "waiting";
    case SL_TASK_DONE:
        return t->killed ? "killed" : t->ok ? "done" : "failed";
    }
    return "?";
}

static int task_tostring(lua_State *L) {
    sl_task *t = luaL_checkudata(L, 1, TASK_MT);
    lua_pushfstring(L, "task %d (%s)", (int)t->id, state_name(t));
    return 1;
}

sl_task *sl_task_check(lua_State *L, int idx) {
    return luaL_checkudata(L, idx, TASK_MT);
}

sl_task *sl_task_spawn(lua_State *L, int nargs) {
    int fn = lua_gettop(L) - nargs;
    luaL_checktype(L, fn, LUA_TFUNCTION);
    lua_State *co = lua_newthread(L);
    int co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    sl_task *t = lua_newuserdata(L, sizeof(*t));
    memset(t, 0, sizeof(*t));
    t->co = co;
    t->co_ref = co_ref;
    t->id = next_id++;
    luaL_getmetatable(L, TASK_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_insert(L, fn); /* handle below the function and its arguments */
    lua_xmove(L, co, nargs + 1);
    t->nargs = nargs;
    if (current && current->budget && sl_budget_spawned(current->budget))
        t->spawned_in = current->budget;
    t->next = live_head;
    if (live_head)
        live_head->prev = t;
    live_head = t;
    counts.created++;
    counts.running++;
    sl_loop_ref();
    rq_push(t);
    return t;
}

sl_task *sl_task_current(lua_State *L) {
    return current && current->co == L ? current : NULL;
}

/* Raises "<what>: cannot wait ..." when the running task t cannot yield to
 * the loop from L; returns otherwise. */
static void check_can_wait(lua_State *L, sl_task *t, const char *what) {
    const char *spent = t->budget ? sl_budget_refusal(t->budget) : NULL;
    if (spent)
        luaL_error(L, "%s", spent);
    if (t->nowait)
        luaL_error(L, "%s: cannot wait inside %s", what, t->nowait_what);
    if (!lua_isyieldable(L))
        luaL_error(L,
                   "%s: cannot wait here: called through a C function that "
                   "Lua cannot yield across (a table.sort comparator, a "
                   "string.gsub callback, a __tostring that string.format "
                   "calls, a module being required); wait outside it",
                   what);
}

sl_task *sl_task_check_yieldable(lua_State *L, const char *what) {
    sl_task *t = sl_task_current(L);
    if (!t)
        luaL_error(L,
                   "%s: not called from a task (run it inside sluice.spawn; "
                   "coroutines a task creates itself cannot wait)",
                   what);
    check_can_wait(L, t, what);
    return t;
}

int sl_task_pcall_nowait(lua_State *L, int nargs, const char *what) {
    sl_task *t = sl_task_current(L);
    const char *outer = NULL;
    if (t) {
        outer = t->nowait_what;
        if (t->nowait++ == 0)
            t->nowait_what = what;
    }
    int rc = lua_pcall(L, nargs, LUA_MULTRET, 0);
    if (t) { /* still running: it could not have waited */
        t->nowait--;
        t->nowait_what = t->nowait ? outer : NULL;
    }
    return rc;
}

int sl_task_suspend(lua_State *L, sl_task *t, sl_task_cancel_fn cancel,
                    void *op) {
    if (t->nowait || !lua_isyieldable(L)) {
        /* A native that did not check first: undo its operation before
         * raising, or it would stay armed on a task that runs on. */
        t->cancel = cancel;
        t->op = op;
        cancel_op(t);
        check_can_wait(L, t, "sluice");
    }
    t->state = SL_TASK_SUSPENDED;
    t->cancel = cancel;
    t->op = op;
    counts.waiting++;
    return lua_yield(L, 0);
}

lua_State *sl_task_thread(sl_task *t) { return t->co; }

void sl_task_wake(sl_task *t, int nresults) {
    if (t->state != SL_TASK_SUSPENDED)
        return;
    counts.waiting--;
    t->cancel = NULL;
    t->op = NULL;
    t->nargs = nresults;
    rq_push(t);
}

void sl_task_kill(sl_task *t, const char *reason) {
    if (t->state == SL_TASK_DONE || t->state == SL_TASK_RUNNING)
        return;
    if (t->state == SL_TASK_READY) {
        rq_remove(t);
    } else {
        counts.waiting--;
        cancel_op(t);
    }
    t->killed = 1;
    counts.killed++;
    lua_settop(t->co, 0);
    lua_pushstring(t->co, reason);
    finish(t, 0, 1);
}

void sl_task_interrupt(sl_task *t, const char *msg) {
    if (t->state != SL_TASK_SUSPENDED)
        return;
    cancel_op(t); /* it will not wake t now: the results are these */
    lua_pushnil(t->co);
    lua_pushstring(t->co, msg);
    sl_task_wake(t, 2);
}

sl_task *sl_task_first_live(void) { return live_head; }

sl_task_counts sl_task_stats(void) { return counts; }

/* --- sleep --------------------------------------------------------------- */
static void sleep_done(evutil_socket_t fd, short what, void *arg) {
    sl_task *t = arg;
    (void)fd;
    (void)what;
    t->timer_set = 0;
    lua_pushboolean(t->co, 1);
    sl_task_wake(t, 1);
}

static void sleep_cancel(sl_task *t, void *op) {
    (void)op;
    if (t->timer_set) {
        event_del(&t->timer);
        t->timer_set = 0;
    }
}

/* Arms t's timer to call cb after s seconds; +infinity arms nothing. */
static void arm_timer(sl_task *t, double s, event_callback_fn cb) {
    struct timeval tv;
    if (!sl_timeout_tv(s, &tv))
        return;
    event_assign(&t->timer, sl_rt.base, -1, 0, cb, t);
    evtimer_add(&t->timer, &tv);
    t->timer_set = 1;
}

int sl_task_sleep(lua_State *L, sl_task *t, double s) {
    arm_timer(t, s, sleep_done); /* negative: 0, due at once */
    return sl_task_suspend(L, t, sleep_cancel, NULL);
}

/* --- park ---------------------------------------------------------------- */
static void park_timeout(evutil_socket_t fd, short what, void *arg) {
    sl_task *t = arg;
    (void)fd;
    (void)what;
    t->timer_set = 0;
    lua_pushboolean(t->co, 0);
    lua_pushliteral(t->co, "timeout");
    sl_task_wake(t, 2);
}

/* A parked task is suspended with this cancel function: unpark and the
 * shutdown wake-up recognise it by it. The timer is the sleep timer. */
static void park_cancel(sl_task *t, void *op) { sleep_cancel(t, op); }

int sl_task_park(lua_State *L, sl_task *t, double timeout) {
    if (timeout >= 0)
        arm_timer(t, timeout, park_timeout);
    return sl_task_suspend(L, t, park_cancel, NULL);
}

int sl_task_unpark(sl_task *t, lua_State *from, int first, int n) {
    if (t->state != SL_TASK_SUSPENDED || t->cancel != park_cancel)
        return 0;
    park_cancel(t, NULL);
    lua_pushboolean(t->co, 1);
    for (int i = 0; i < n; i++) {
        lua_pushvalue(from, first + i);
        lua_xmove(from, t->co, 1);
    }
    sl_task_wake(t, 1 + n);
    return 1;
}

void sl_task_wake_sleepers(void) {
    for (sl_task *t = live_head; t; t = t->next) {
        if (t->state != SL_TASK_SUSPENDED ||
            (t->cancel != sleep_cancel && t->cancel != park_cancel))
            continue;
        sleep_cancel(t, NULL);
        lua_pushboolean(t->co, 0);
        lua_pushliteral(t->co, "shutdown");
        sl_task_wake(t, 2);
    }
}

/* --- wait ---------------------------------------------------------------- */
static void wait_cancel(sl_task *t, void *op) { waiter_unlink(op, t); }

int sl_task_wait(lua_State *L) {
    sl_task *target = sl_task_check(L, 1);
    if (target->state == SL_TASK_DONE)
        return push_outcome(L, 1, target);
    sl_task *self = sl_task_check_yieldable(L, "sluice.wait");
    if (self == target)
        return luaL_argerror(L, 1, "a task cannot wait for itself");
    self->wait_prev = NULL;
    self->wait_next = target->waiters;
    if (target->waiters)
        target->waiters->wait_prev = self;
    target->waiters = self;
    return sl_task_suspend(L, self, wait_cancel, target);
}

int sl_task_push_status(lua_State *L, int idx) {
    lua_pushstring(L, state_name(sl_task_check(L, idx)));
    return 1;
}

/* --- lifecycle ----------------------------------------------------------- */
void sl_task_init(void) {
    lua_State *L = sl_rt.L;
    /* No __gc: a finished task holds nothing to free, and a live one is
     * killed before the state closes (sl_task_shutdown_kill_all). LuaJIT
     * walks and finalizes userdata with __gc in one non-incremental step of
     * each cycle, and a collector makes tasks at every run. */
    luaL_newmetatable(L, TASK_MT);
    lua_pushcfunction(L, task_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    drain_ev = event_new(sl_rt.base, -1, 0, drain, NULL);
}

void sl_task_shutdown_kill_all(void) {
    for (;;) {
        /* (a running task cannot be killed; from the loop there is none) */
        sl_task *t = live_head;
        while (t && t->state == SL_TASK_RUNNING)
            t = t->next;
        if (!t)
            break;
        sl_task_kill(t, "killed at shutdown deadline");
    }
}

void sl_task_close(void) {
    if (drain_ev)
        event_free(drain_ev);
    drain_ev = NULL;
}
