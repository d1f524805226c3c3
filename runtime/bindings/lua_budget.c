/* lua_budget.c -- sluice._budget: the native half of require "sluice.budget"
 *
 * A thin binding of host/budget.h: the watchdog and its enforcement are
 * there; this file only checks the arguments and reports a refusal.
 */
#include <lauxlib.h>
#include <math.h>

#include "host/budget.h"
#include "host/modules.h"
#include "host/task.h"

/* attach(task, cpu, wall, label) -> true; cpu and wall are seconds, 0 for
 * no limit. Misuse raises (sluice.budget validates first). */
static int l_attach(lua_State *L) {
    sl_task *t = sl_task_check(L, 1);
    double cpu = luaL_checknumber(L, 2);
    double wall = luaL_checknumber(L, 3);
    const char *label = luaL_checkstring(L, 4);
    luaL_argcheck(L, cpu >= 0 && isfinite(cpu), 2,
                  "must be a finite number >= 0");
    luaL_argcheck(L, wall >= 0 && isfinite(wall), 3,
                  "must be a finite number >= 0");
    char err[128];
    if (sl_budget_attach(t, cpu, wall, label, err, sizeof(err)) != 0)
        return luaL_error(L, "sluice.budget: %s", err);
    lua_pushboolean(L, 1);
    return 1;
}

int luaopen_sluice_budget(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"attach", l_attach},
        {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
