/* runtime.h -- the process-wide runtime: one Lua state on one libevent loop
 *
 * sluice runs all Lua on a single thread. `sl_rt` is the one runtime of the
 * process; it owns the Lua state and the event base from sl_runtime_init()
 * to sl_runtime_close(). Nothing here is thread-safe, by design.
 *
 * Liveness: the loop runs while something holds a reference (sl_loop_ref):
 * every live task and every armed timer holds one, as will listening servers.
 * When the count drops to zero the loop stops and the process heads for exit.
 * Signal events do not count, so they never keep an idle process alive.
 */
#ifndef SLUICE_RUNTIME_H
#define SLUICE_RUNTIME_H

#include <event2/event.h>
#include <lua.h>

typedef struct sl_task sl_task;

typedef struct sl_runtime {
    lua_State *L;
    struct event_base *base;
    int refs;                /* see "Liveness" above */
    int stopping;            /* graceful shutdown under way */
    int exit_code;           /* what main() returns */
    double shutdown_timeout; /* seconds granted to running tasks */
    int shutdown_handlers;   /* registry ref of the on_shutdown list */
    int reload_handlers;     /* registry ref of the on_reload list */
} sl_runtime;

extern sl_runtime sl_rt;

/* Creates the Lua state (standard libraries, embedded module searchers, the
 * --lua-path directories) and the event base. Returns 0, or -1 with a message
 * in err. */
int sl_runtime_init(const char *const *lua_dirs, int ndirs, char *err,
                    size_t errlen);

/* Runs the loop until nothing holds a reference, then performs the shutdown
 * sequence (on_shutdown handlers, premature timers) and runs the loop again
 * until that work is done or the shutdown deadline passes. Returns the exit
 * code. */
int sl_runtime_run(void);

/* Frees the Lua state (running __gc of every userdata), then runs the close
 * hooks (newest first), then frees the event base. */
void sl_runtime_close(void);

/* Registers fn to run at sl_runtime_close, after the Lua state is gone and
 * before the event base is freed: where a module frees what it created
 * lazily (a curl multi handle and its sockets' events). At most 16 hooks;
 * returns -1 beyond that. */
int sl_runtime_on_close(void (*fn)(void));

void sl_loop_ref(void);
void sl_loop_unref(void);

/* Begins graceful shutdown (idempotent): timers fire with premature=true,
 * sleeping tasks wake, on_shutdown handlers run as a task, and a deadline of
 * shutdown_timeout seconds is armed after which remaining tasks are killed. */
void sl_shutdown(void);

/* Monotonic and wall-clock time in seconds. */
double sl_now(void);
double sl_time(void);

#endif
