/* task.h -- tasks: coroutines scheduled on the loop through a ready queue
 *
 * A task is a Lua coroutine plus this struct, which lives inside the task's
 * userdata handle (so its address is stable). While a task is live (not yet
 * finished) the registry anchors both the coroutine and the handle, and the
 * task holds a loop reference. When it finishes, both anchors are dropped:
 * the coroutine is freed at the next GC and the handle lives on only as long
 * as Lua code keeps it (for wait()).
 *
 * Suspending: a native function that must wait first gets its task from
 * sl_task_check_yieldable (which raises when the task cannot yield from
 * here), then starts its operation and returns
 * sl_task_suspend(L, t, cancel, op). An object the operation belongs to and
 * that Lua could collect meanwhile (the native's arguments are dropped when
 * it yields) is anchored by a registry ref until its last waiter is woken
 * or cancelled. When the operation completes, the
 * completing code pushes the results onto sl_task_thread(t) and calls
 * sl_task_wake(t, nresults). The task is then queued; it is resumed later
 * from the loop, never from inside the completing callback's stack.
 *
 * Cancelling: if a suspended task is killed (or the runtime shuts down), the
 * `cancel` callback runs with the op pointer; it must tear the operation down
 * so that it never calls sl_task_wake for this task again. After wake or
 * cancel, the task forgets op: the operation owns its own memory. A task
 * that finishes with an operation still attached has it cancelled too.
 */
#ifndef SLUICE_TASK_H
#define SLUICE_TASK_H

#include <event2/event.h>
#include <event2/event_struct.h>
#include <lua.h>
#include <stdint.h>

typedef struct sl_task sl_task;
typedef struct sl_budget sl_budget;
typedef void (*sl_task_cancel_fn)(sl_task *t, void *op);
/* Called once when a task finishes (ok is 0 on error or kill). */
typedef void (*sl_task_done_fn)(sl_task *t, int ok, void *privdata);

typedef enum sl_task_state {
    SL_TASK_READY,     /* queued to run */
    SL_TASK_RUNNING,   /* the current task */
    SL_TASK_SUSPENDED, /* waiting on an operation */
    SL_TASK_DONE       /* finished, failed or killed */
} sl_task_state;

struct sl_task {
    lua_State *co;
    int co_ref;   /* registry ref of the coroutine while live */
    int self_ref; /* registry ref of the handle while live */
    uint64_t id;
    sl_task_state state;
    int nargs; /* values pushed on co, passed at the next resume */
    sl_task_cancel_fn cancel;
    void *op;
    sl_task_done_fn on_done;
    void *on_done_data;
    int ok;      /* when DONE: 1 finished normally */
    int killed;  /* when DONE: ended by kill or shutdown deadline */
    int results; /* when DONE: a results table is in the handle's env */
    sl_task *prev, *next;           /* live list */
    sl_task *rq_prev, *rq_next;     /* ready queue, while READY */
    sl_task *waiters;               /* tasks blocked in wait() on this one */
    sl_task *wait_next, *wait_prev; /* links in a target's waiters list */
    struct event timer;             /* for sleep; armed only while sleeping */
    int timer_set;
    int nowait;              /* depth of no-wait regions (see below) */
    const char *nowait_what; /* the outermost region's description */
    sl_budget *budget;       /* budget.h; owned there, NULL when none */
    sl_budget *spawned_in;   /* the budget region open in the task that
                                spawned this one, while it is open: a
                                region that runs out kills what it spawned
                                (budget.h) */
};

/* Creates a task running the function at stack index fn with the nargs
 * values above it (popped, as is the function) and queues it. Pushes the
 * handle onto L and returns the task. */
sl_task *sl_task_spawn(lua_State *L, int nargs);

/* The task whose coroutine is L, or NULL when L is not a task (the main
 * state, or a coroutine the task created itself). */
sl_task *sl_task_current(lua_State *L);

/* Like sl_task_current, but raises a Lua error naming `what` when L cannot
 * yield to the loop: L is not a task, the call came through a C function
 * Lua cannot yield across (a table.sort comparator, a gsub callback, a
 * metamethod, require), or the task is in a no-wait region. Every native
 * that suspends calls it BEFORE starting its operation, so that a refusal
 * leaves nothing armed. */
sl_task *sl_task_check_yieldable(lua_State *L, const char *what);

/* Calls the function below the nargs values on top of L's stack like
 * lua_pcall(L, nargs, LUA_MULTRET, 0), in a no-wait region of the calling
 * task (if L is one): every suspending native called meanwhile raises
 * "cannot wait inside <what>". `what` must be a static string. Regions
 * nest. Used by db:transaction, whose function must not let other tasks
 * run while its transaction is open. */
int sl_task_pcall_nowait(lua_State *L, int nargs, const char *what);

/* Suspends t (which must be the running task on L) until sl_task_wake. Use as
 * `return sl_task_suspend(L, t, cancel, op);`. If L cannot yield after all
 * (a native that skipped sl_task_check_yieldable), the operation is
 * cancelled at once and a Lua error raised: no operation is ever left
 * attached to a task that goes on running. */
int sl_task_suspend(lua_State *L, sl_task *t, sl_task_cancel_fn cancel,
                    void *op);

/* The coroutine to push completion results onto before sl_task_wake. */
lua_State *sl_task_thread(sl_task *t);

/* Queues the suspended task t; the nresults values on top of its thread
 * become the results of the yielding call. */
void sl_task_wake(sl_task *t, int nresults);

/* Ends a live task: cancels its operation, fails its waiters' waits with
 * (false, reason). A no-op on a finished task. t must not be running.
 * (A task that finishes by itself has any operation still attached
 * cancelled too.) */
void sl_task_kill(sl_task *t, const char *reason);

/* Ends the wait of the suspended task t early (a no-op otherwise): cancels
 * its operation and queues it, the waiting call returning nil, msg. Used
 * by budget regions (budget.h); t goes on running. */
void sl_task_interrupt(sl_task *t, const char *msg);

/* The handle of a task from the Lua stack, raising an argument error. */
sl_task *sl_task_check(lua_State *L, int idx);

/* Iteration over live tasks, for shutdown and introspection. */
sl_task *sl_task_first_live(void);

typedef struct sl_task_counts {
    long running; /* live: started and not yet finished */
    long waiting; /* of those, suspended on an operation */
    long ready;   /* of those, queued to run */
    long created; /* since start */
    long failed;  /* ended by an error */
    long killed;  /* ended by kill() or the shutdown deadline */
} sl_task_counts;

sl_task_counts sl_task_stats(void);

/* Sleeping, as used by sluice.sleep: suspends t for s seconds (math.huge:
 * until shutdown or kill; see timeout.h for huge and negative values). */
int sl_task_sleep(lua_State *L, sl_task *t, double s);

/* Parking, as used by sluice.park: suspends t until sl_task_unpark (park
 * returns true and the values given), until timeout seconds have passed
 * (false, "timeout"; a negative or infinite timeout never passes) or until
 * shutdown (false, "shutdown"). */
int sl_task_park(lua_State *L, sl_task *t, double timeout);

/* Queues the parked task t with true and the n values at index first of
 * from's stack (which are left in place). Returns 1, or 0 when t is not
 * parked (running, ready, waiting on something else, finished). */
int sl_task_unpark(sl_task *t, lua_State *from, int first, int n);

/* At shutdown: wakes every sleeping or parked task early (sleep and park
 * return false, "shutdown"). */
void sl_task_wake_sleepers(void);

/* sluice.wait(task): returns at once if the task is done, otherwise
 * suspends the calling task until it is. A lua_CFunction. A task's results
 * are kept however many there are; a waiter whose stack cannot take them
 * all gets false, "too many results ..." instead. */
int sl_task_wait(lua_State *L);

/* Pushes "ready", "running", "waiting", "done", "failed" or "killed". */
int sl_task_push_status(lua_State *L, int idx);

/* Called by the runtime: init after the Lua state and event base exist;
 * kill_all when the shutdown deadline passes and before the state closes
 * (handles have no __gc: a task left live would leave its sleep timer on the
 * loop); close before the base goes. */
void sl_task_init(void);
void sl_task_shutdown_kill_all(void);
void sl_task_close(void);

#endif
