/* timer.h -- sluice.after and sluice.every: callbacks run as tasks
 *
 * A timer is a userdata handle. While armed, or while its callback's task
 * runs, the registry anchors it (and its callback and arguments) and it holds
 * a loop reference; a cancelled or spent timer drops the callback and the
 * arguments at once and its handle is left to the GC, with nothing to
 * finalize. Callbacks receive `premature` first: false normally, true when
 * the timer is cut short by shutdown.
 */
#ifndef SLUICE_TIMER_H
#define SLUICE_TIMER_H

#include <lua.h>

/* lua_CFunctions: after(delay, fn, ...) and every(period, fn, jitter). */
int sl_timer_after(lua_State *L);
int sl_timer_every(lua_State *L);

/* Registers the timer metatable; called once per Lua state. */
void sl_timer_init(lua_State *L);

/* At shutdown: every armed timer fires now with premature = true and is not
 * re-armed; an `every` whose run is in progress finishes it and stops. */
void sl_timer_shutdown(void);

/* Before lua_close: takes every timer still armed off the loop (their handles
 * are freed with the state and have no __gc to do it). */
void sl_timer_close(void);

#endif
