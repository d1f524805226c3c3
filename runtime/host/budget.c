/* budget.c -- CPU and wall-clock budgets for tasks, enforced by a watchdog */
#include "budget.h"

#include <errno.h>
#include <event2/event.h>
#include <lauxlib.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime.h"

enum { TRIP_NONE, TRIP_CPU, TRIP_WALL };

/* How often the watchdog looks at the running task: the precision of CPU
 * budgets, and of wall-clock deadlines for a task that spins. */
#define TICK 0.05

struct sl_budget {
    sl_task *task;
    double cpu, wall;      /* limits, 0 for none */
    double cpu_used;       /* over finished resumes */
    double cpu_mark;       /* thread CPU clock when the resume began */
    double cpu_stop;       /* thread CPU clock at which this resume is over */
    double deadline;       /* monotonic */
    struct event *wall_ev; /* kills the task at the deadline while it waits */
    volatile sig_atomic_t tripped;
    char cpu_msg[256], wall_msg[256]; /* formatted ahead for the hook */
};

static const char *message(const sl_budget *b) {
    return b->tripped == TRIP_CPU ? b->cpu_msg : b->wall_msg;
}

/* The budget of the task running now, for the signal handler. */
static sl_budget *volatile running;
static int watchdog_ready; /* 1 set up, -1 failed */
static timer_t tick_timer;
static long live_budgets; /* the tick runs while this is > 0 */

static double clock_of(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct timespec timespec_of(double s) {
    struct timespec ts;
    double whole = floor(s);
    ts.tv_sec = (time_t)whole;
    ts.tv_nsec = (long)((s - whole) * 1e9);
    return ts;
}

/* --- running out while the task runs ------------------------------------- */
static void budget_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    sl_budget *b = running;
    if (!b || !b->tripped) { /* a late signal: nothing to stop */
        lua_sethook(L, NULL, 0, 0);
        return;
    }
    if (L == b->task->co && lua_isyieldable(L)) {
        /* The scheduler sees a yield from a tripped task and ends it. */
        lua_sethook(L, NULL, 0, 0);
        lua_yield(L, 0);
        return;
    }
    /* A coroutine of the task's own, or below a C call boundary: unwind to
     * where the task's coroutine can be yielded. Every 1000 instructions,
     * so that error handlers get to run. */
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1000);
    luaL_error(L, "%s", message(b));
}

static void trip(sl_budget *b, int why) {
    if (b->tripped)
        return;
    b->tripped = why;
    lua_sethook(sl_rt.L, budget_hook,
                LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* Async-signal-safe: reads clocks, sets flags and the hook. The tick
 * fires every TICK seconds while any budget is live, whichever task runs:
 * it only acts when the running task's budget is spent. */
static void on_tick(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)si;
    (void)uc;
    int saved = errno;
    sl_budget *b = running;
    if (b && !b->tripped) {
        if (b->cpu > 0 && clock_of(CLOCK_THREAD_CPUTIME_ID) >= b->cpu_stop)
            trip(b, TRIP_CPU);
        else if (b->wall > 0 && clock_of(CLOCK_MONOTONIC) >= b->deadline)
            trip(b, TRIP_WALL);
    }
    errno = saved;
}

static int watchdog_init(char *err, size_t errlen) {
    if (watchdog_ready)
        goto done;
    watchdog_ready = -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_tick;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD_ID; /* the loop thread, not a helper */
    sev.sigev_signo = SIGRTMIN + 4;
#ifdef sigev_notify_thread_id
    sev.sigev_notify_thread_id = gettid();
#else
    sev._sigev_un._tid = gettid(); /* glibc names no accessor */
#endif
    if (sigaction(sev.sigev_signo, &sa, NULL) == 0 &&
        timer_create(CLOCK_MONOTONIC, &sev, &tick_timer) == 0)
        watchdog_ready = 1;
done:
    if (watchdog_ready < 0)
        snprintf(err, errlen, "cannot set up the budget watchdog: %s",
                 strerror(errno));
    return watchdog_ready > 0 ? 0 : -1;
}

/* The tick runs only while some budget is live: a run, not a resume, pays
 * for arming it. */
static void tick(int on) {
    struct itimerspec its;
    memset(&its, 0, sizeof(its));
    if (on)
        its.it_value = its.it_interval = timespec_of(TICK);
    timer_settime(tick_timer, 0, &its, NULL);
}

void sl_budget_enter(sl_budget *b) {
    b->cpu_mark = clock_of(CLOCK_THREAD_CPUTIME_ID);
    b->cpu_stop = b->cpu_mark + (b->cpu - b->cpu_used);
    running = b;
    if ((b->cpu > 0 && b->cpu_used >= b->cpu) ||
        (b->wall > 0 && sl_now() >= b->deadline))
        trip(b, b->cpu > 0 && b->cpu_used >= b->cpu ? TRIP_CPU : TRIP_WALL);
}

const char *sl_budget_leave(sl_budget *b) {
    running = NULL;
    b->cpu_used += clock_of(CLOCK_THREAD_CPUTIME_ID) - b->cpu_mark;
    if (!b->tripped)
        return NULL;
    lua_sethook(sl_rt.L, NULL, 0, 0); /* if it did not fire yet */
    return message(b);
}

/* --- running out while the task waits ------------------------------------ */
static void wall_passed(evutil_socket_t fd, short what, void *arg) {
    sl_budget *b = arg;
    (void)fd;
    (void)what;
    sl_task *t = b->task;
    if (t->state != SL_TASK_SUSPENDED && t->state != SL_TASK_READY)
        return; /* running: the watchdog stops it */
    char msg[sizeof(b->wall_msg)];
    memcpy(msg, b->wall_msg, sizeof(msg));
    sl_task_kill(t, msg); /* frees b */
}

static void budget_done(sl_task *t, int ok, void *privdata) {
    sl_budget *b = privdata;
    (void)ok;
    if (running == b)
        running = NULL;
    if (b->wall_ev)
        event_free(b->wall_ev);
    t->budget = NULL;
    t->on_done = NULL;
    t->on_done_data = NULL;
    free(b);
    if (--live_budgets == 0)
        tick(0);
}

int sl_budget_attach(sl_task *t, double cpu, double wall, const char *label,
                     char *err, size_t errlen) {
    if (t->state == SL_TASK_DONE || t->state == SL_TASK_RUNNING) {
        snprintf(err, errlen, "the task is %s",
                 t->state == SL_TASK_DONE ? "finished" : "running");
        return -1;
    }
    if (t->budget || t->on_done) {
        snprintf(err, errlen, "the task already has %s",
                 t->budget ? "a budget" : "an on_done callback");
        return -1;
    }
    if (watchdog_init(err, errlen) != 0)
        return -1;
    sl_budget *b = calloc(1, sizeof(*b));
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    b->task = t;
    b->cpu = cpu;
    b->wall = wall;
    snprintf(b->cpu_msg, sizeof(b->cpu_msg),
             "%s exceeded its CPU budget of %g s", label, cpu);
    snprintf(b->wall_msg, sizeof(b->wall_msg),
             "%s exceeded its wall-clock deadline of %g s", label, wall);
    if (wall > 0) {
        b->deadline = sl_now() + wall;
        b->wall_ev = evtimer_new(sl_rt.base, wall_passed, b);
        struct timeval tv;
        tv.tv_sec = (time_t)floor(wall);
        tv.tv_usec = (suseconds_t)((wall - floor(wall)) * 1e6);
        if (!b->wall_ev || evtimer_add(b->wall_ev, &tv) != 0) {
            if (b->wall_ev)
                event_free(b->wall_ev);
            free(b);
            snprintf(err, errlen, "cannot arm the deadline timer");
            return -1;
        }
    }
    t->budget = b;
    t->on_done = budget_done;
    t->on_done_data = b;
    if (live_budgets++ == 0)
        tick(1);
    return 0;
}
