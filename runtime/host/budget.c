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
    int region;            /* 1: a region of the task's work, not the task */
    int boundary;          /* region: the stack depth of its entry */
    double cpu, wall;      /* limits, 0 for none */
    double cpu_used;       /* over finished resumes */
    double cpu_mark;       /* thread CPU clock when the resume began */
    double cpu_stop;       /* thread CPU clock at which this resume is over */
    double deadline;       /* monotonic */
    struct event *wall_ev; /* at the deadline, while the task waits: kills
                              it, or ends a region's wait (wall_passed) */
    volatile sig_atomic_t tripped;
    long spawned; /* region: tasks it spawned (their spawned_in is b) */
    char label[160];
    char msg[256]; /* formatted when first needed, never in the handler */
};

/* The error of a tripped budget. Not async-signal-safe: the hook, the
 * scheduler and the deadline timer call it, never the signal handler. */
static const char *message(sl_budget *b) {
    if (!b->msg[0]) {
        if (b->tripped == TRIP_CPU)
            snprintf(b->msg, sizeof(b->msg),
                     "%s exceeded its CPU budget of %g s", b->label, b->cpu);
        else
            snprintf(b->msg, sizeof(b->msg),
                     "%s exceeded its wall-clock deadline of %g s", b->label,
                     b->wall);
    }
    return b->msg;
}

/* The budget of the task running now, for the signal handler. */
static sl_budget *volatile running;
static int watchdog_ready; /* 1 set up, -1 failed */
static timer_t tick_timer;
/* Budgets allocated, and whether the tick is armed: the tick stops itself
 * at the first tick that finds no budget live (see tick below). Written on
 * the loop thread, read by the handler. */
static volatile sig_atomic_t live_budgets;
static volatile sig_atomic_t ticking;

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
/* Whether L runs inside b's region: in a coroutine of the task's own, or in
 * the task's coroutine deeper than the frame that entered the region (the
 * region's pcall and what it called). */
static int inside_region(lua_State *L, sl_budget *b) {
    lua_Debug ar;
    return L != b->task->co || lua_getstack(L, b->boundary, &ar);
}

static void budget_hook(lua_State *L, lua_Debug *ar);

static void arm_hook(void) {
    lua_sethook(sl_rt.L, budget_hook,
                LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    sl_budget *b = running;
    if (!b || !b->tripped) { /* a late signal: nothing to stop */
        lua_sethook(L, NULL, 0, 0);
        return;
    }
    if (b->region) {
        /* Back in the code that entered the region: its leave ends it. */
        if (!inside_region(L, b))
            return;
    } else if (L == b->task->co && lua_isyieldable(L)) {
        /* The scheduler sees a yield from a tripped task and ends it. */
        lua_sethook(L, NULL, 0, 0);
        lua_yield(L, 0);
        return;
    }
    /* A coroutine of the task's own, or below a C call boundary: unwind to
     * where the task's coroutine can be yielded, every 1000 instructions so
     * that error handlers get to run. Inside a region: at every call,
     * return and instruction, since the region can only end by unwinding
     * (`while true do pcall(spin) end` would catch one error in 1000). */
    if (b->region)
        arm_hook();
    else
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1000);
    luaL_error(L, "%s", message(b));
}

/* Marks b spent while its task is not running: no hook to arm. */
static void trip_quietly(sl_budget *b, int why) {
    if (!b->tripped)
        b->tripped = why;
}

static void trip(sl_budget *b, int why) {
    if (b->tripped)
        return;
    b->tripped = why;
    arm_hook();
}

/* Arms (on) or disarms the tick. It runs while budgets are live, and a
 * little longer: made when a budget is and none ticks, stopped by the
 * first tick that finds none live (up to TICK later), so that runs back to
 * back, each with a budget of its own, pay no system call for it. */
static void tick(int on) {
    struct itimerspec its;
    memset(&its, 0, sizeof(its));
    if (on)
        its.it_value = its.it_interval = timespec_of(TICK);
    timer_settime(tick_timer, 0, &its, NULL);
}

/* Async-signal-safe: reads clocks, sets flags and the hook. The tick
 * fires every TICK seconds while any budget is live, whichever task runs:
 * it only acts when the running task's budget is spent. */
static void on_tick(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)si;
    (void)uc;
    int saved = errno;
    if (live_budgets == 0) {
        tick(0); /* timer_settime is async-signal-safe */
        ticking = 0;
        errno = saved;
        return;
    }
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

void sl_budget_enter(sl_budget *b) {
    b->cpu_mark = clock_of(CLOCK_THREAD_CPUTIME_ID);
    b->cpu_stop = b->cpu_mark + (b->cpu - b->cpu_used);
    running = b;
    if (b->tripped) /* a region tripped while it waited: unwind it now */
        arm_hook();
    else if ((b->cpu > 0 && b->cpu_used >= b->cpu) ||
             (b->wall > 0 && sl_now() >= b->deadline))
        trip(b, b->cpu > 0 && b->cpu_used >= b->cpu ? TRIP_CPU : TRIP_WALL);
}

const char *sl_budget_leave(sl_budget *b) {
    running = NULL;
    b->cpu_used += clock_of(CLOCK_THREAD_CPUTIME_ID) - b->cpu_mark;
    if (!b->tripped)
        return NULL;
    lua_sethook(sl_rt.L, NULL, 0, 0); /* if it did not fire yet */
    /* A region's trip ends the region (its leave reports it), never the
     * task; enter arms the hook again at the next resume. */
    return b->region ? NULL : message(b);
}

const char *sl_budget_refusal(sl_budget *b) {
    return b->region && b->tripped ? message(b) : NULL;
}

/* --- running out while the task waits ------------------------------------ */
static void wall_passed(evutil_socket_t fd, short what, void *arg) {
    sl_budget *b = arg;
    (void)fd;
    (void)what;
    sl_task *t = b->task;
    if (t->state != SL_TASK_SUSPENDED && t->state != SL_TASK_READY)
        return; /* running: the watchdog stops it */
    trip_quietly(b, TRIP_WALL);
    if (b->region) {
        /* The wait ends with the error (a ready task trips when resumed):
         * its operation is cancelled, the task goes on. */
        sl_task_interrupt(t, message(b));
        return;
    }
    char msg[sizeof(b->msg)];
    memcpy(msg, message(b), sizeof(msg));
    sl_task_kill(t, msg); /* frees b */
}

int sl_budget_spawned(sl_budget *b) {
    if (!b->region)
        return 0;
    b->spawned++;
    return 1;
}

/* The tasks region b spawned: killed with its error when it ran out
 * (over), else let go. */
static void let_go_of_spawned(sl_budget *b, int over) {
    char msg[sizeof(b->msg)];
    if (over)
        snprintf(msg, sizeof(msg), "%s", message(b));
    b->spawned = 0;
    sl_task *next;
    for (sl_task *t = sl_task_first_live(); t; t = next) {
        next = t->next;
        if (t->spawned_in != b)
            continue;
        t->spawned_in = NULL;
        if (over && t->state != SL_TASK_RUNNING)
            sl_task_kill(t, msg);
    }
}

/* Frees b and stops the tick when it was the last live budget. */
static void release(sl_budget *b) {
    if (b->spawned)
        let_go_of_spawned(b, 0);
    if (running == b)
        running = NULL;
    if (b->wall_ev)
        event_free(b->wall_ev);
    b->task->budget = NULL;
    free(b);
    live_budgets--; /* the next tick stops itself when none is left */
}

void sl_budget_finish(sl_task *t) {
    if (t->budget)
        release(t->budget);
}

/* A budget for t (not yet attached), its deadline armed; NULL with err. */
static sl_budget *make(sl_task *t, double cpu, double wall, const char *label,
                       char *err, size_t errlen) {
    if (watchdog_init(err, errlen) != 0)
        return NULL;
    sl_budget *b = calloc(1, sizeof(*b));
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    b->task = t;
    b->cpu = cpu;
    b->wall = wall;
    snprintf(b->label, sizeof(b->label), "%s", label);
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
            return NULL;
        }
    }
    t->budget = b;
    live_budgets++; /* before ticking is read: a tick meanwhile sees it */
    if (!ticking) {
        ticking = 1;
        tick(1);
    }
    return b;
}

int sl_budget_attach(sl_task *t, double cpu, double wall, const char *label,
                     char *err, size_t errlen) {
    if (t->state == SL_TASK_DONE || t->state == SL_TASK_RUNNING) {
        snprintf(err, errlen, "the task is %s",
                 t->state == SL_TASK_DONE ? "finished" : "running");
        return -1;
    }
    if (t->budget) {
        snprintf(err, errlen, "the task already has a budget");
        return -1;
    }
    return make(t, cpu, wall, label, err, errlen) ? 0 : -1;
}

/* --- regions ------------------------------------------------------------- */
int sl_budget_region_enter(lua_State *L, sl_task *t, double cpu, double wall,
                           const char *label, char *err, size_t errlen) {
    if (t->budget) {
        snprintf(err, errlen,
                 "the task already has a budget (regions do not nest)");
        return -1;
    }
    /* The depth of L's stack here, this C function's frame included: the
     * region's own work runs deeper (see inside_region). */
    lua_Debug ar;
    int depth = 0;
    while (lua_getstack(L, depth, &ar))
        depth++;
    sl_budget *b = make(t, cpu, wall, label, err, errlen);
    if (!b)
        return -1;
    b->region = 1;
    b->boundary = depth;
    sl_budget_enter(b); /* this resume's CPU counts from here */
    return 0;
}

int sl_budget_region_leave(sl_task *t, char *msg, size_t msglen) {
    sl_budget *b = t->budget;
    if (!b || !b->region)
        return -1;
    sl_budget_leave(b);
    int over = b->tripped != 0;
    if (over)
        snprintf(msg, msglen, "%s", message(b));
    if (over && b->spawned)
        let_go_of_spawned(b, 1);
    release(b);
    return over;
}
