/* budget.h -- CPU and wall-clock budgets for tasks, enforced by a watchdog
 *
 * A budget caps one task: at most `cpu` seconds of CPU time summed over all
 * its resumes, and an end no later than `wall` seconds after the budget was
 * attached. It is how a collection run that spins (`while true do end`) or
 * waits forever is ended without freezing the loop.
 *
 * Enforcement:
 * - While the task waits (suspended or queued), a loop timer kills it at
 *   the deadline through sl_task_kill, which cancels its operation.
 * - While it runs: a POSIX timer signals the loop thread every 50 ms while
 *   any budget is live, and the handler compares the thread's CPU clock
 *   and the monotonic clock with the running task's budget (a resume costs
 *   two reads of the CPU clock). When it is spent, the handler only
 *   installs a Lua count hook (lua_sethook is safe there); the hook yields
 *   the task's coroutine at the next instruction,
 *   and the scheduler ends the task with the budget error, which a pcall in
 *   the task cannot catch. Inside a coroutine of its own or below a C call
 *   boundary the hook raises the error instead, again and again until the
 *   task's own coroutine can be yielded.
 * - LuaJIT does not run hooks inside compiled traces, so the functions
 *   meant to run under a budget must not be compiled: callers turn the JIT
 *   off for them (jit.off(fn, true)), as sluice.collector does for every
 *   collector's functions.
 *
 * Regions: a budget can also cap a part of the running task's work (a
 * collector's run inside its schedule's task) instead of the whole task:
 * sl_budget_region_enter from the task's own coroutine, then the region's
 * work in a pcall, then sl_budget_region_leave. A spent region ends the
 * region, never the task: the hook raises the budget error at every call,
 * return and 1000 instructions inside it (so no pcall within keeps it
 * running) and stays quiet in the frame that entered it; a native that
 * would suspend inside a spent region refuses with the error
 * (sl_task_check_yieldable); at the deadline a waiting task's operation is
 * cancelled and its wait returns nil and the error (sl_task_interrupt), and
 * the hook unwinds it from there. The leave reports the error.
 *
 * Ownership: a budget is allocated by sl_budget_attach or
 * sl_budget_region_enter, referenced from the task (t->budget) and freed
 * by sl_budget_region_leave or when the task finishes (sl_budget_finish,
 * which task.c calls). Everything runs on the loop thread except the
 * signal handler, which only reads the running budget and sets the hook.
 * Lua reaches both through sluice._budget (bindings/lua_budget.c).
 */
#ifndef SLUICE_BUDGET_H
#define SLUICE_BUDGET_H

#include <lua.h>

#include "task.h"

/* Attaches a budget to the live, not running task t: cpu and wall in
 * seconds (0 for no limit), label names the work in the error ("collector
 * x: run" gives "collector x: run exceeded its CPU budget of 5 s"). Fails
 * (-1, message in err) when t is finished or running, already has a
 * budget, or the watchdog cannot be set up. */
int sl_budget_attach(sl_task *t, double cpu, double wall, const char *label,
                     char *err, size_t errlen);

/* Opens a region in t, the task running on L (L its own coroutine): the
 * work L does deeper than the caller of the C function calling this is
 * capped as above (label, cpu, wall likewise). Fails (-1, message in err)
 * when t has a budget already (regions do not nest) or the watchdog cannot
 * be set up. */
int sl_budget_region_enter(lua_State *L, sl_task *t, double cpu, double wall,
                           const char *label, char *err, size_t errlen);

/* Closes t's region and frees its budget. Returns 1 with the budget error
 * in msg when it ran out, 0 when not, -1 when t has no region open. */
int sl_budget_region_leave(sl_task *t, char *msg, size_t msglen);

/* Called by the scheduler around each resume of a task with a budget.
 * sl_budget_leave returns the error message when a task's budget ran out
 * during the resume (valid until the task finishes), or NULL (always for
 * a region: its leave reports it). */
void sl_budget_enter(sl_budget *b);
const char *sl_budget_leave(sl_budget *b);

/* Called by sl_task_spawn with the spawning task's budget: 1 when it is a
 * region, which then owns the new task until it closes (the new task's
 * spawned_in). A region that ran out kills the tasks it spawned that are
 * still live when it closes (a run's helpers die with the run); one that
 * did not leaves them be. */
int sl_budget_spawned(sl_budget *b);

/* The error of a spent region, which no wait may start in; else NULL. */
const char *sl_budget_refusal(sl_budget *b);

/* Called by task.c when t finishes: frees its budget, if any. */
void sl_budget_finish(sl_task *t);

#endif
