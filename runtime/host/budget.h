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
 * Ownership: the budget is allocated by sl_budget_attach, referenced from
 * the task (t->budget) and freed when the task finishes (it takes the
 * task's on_done slot). Everything runs on the loop thread except the
 * signal handler, which only reads the running budget and sets the hook.
 * Lua reaches sl_budget_attach through sluice._budget (bindings/lua_budget.c).
 */
#ifndef SLUICE_BUDGET_H
#define SLUICE_BUDGET_H

#include <lua.h>

#include "task.h"

/* Attaches a budget to the live, not running task t: cpu and wall in
 * seconds (0 for no limit), label names the work in the error ("collector
 * x: run" gives "collector x: run exceeded its CPU budget of 5 s"). Fails
 * (-1, message in err) when t is finished or running, already has a budget
 * or an on_done callback, or the watchdog cannot be set up. */
int sl_budget_attach(sl_task *t, double cpu, double wall, const char *label,
                     char *err, size_t errlen);

/* Called by the scheduler around each resume of a task with a budget.
 * sl_budget_leave returns the error message when the budget ran out during
 * the resume (valid until the task finishes), or NULL. */
void sl_budget_enter(sl_budget *b);
const char *sl_budget_leave(sl_budget *b);

#endif
