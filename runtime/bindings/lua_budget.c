/* lua_budget.c -- sluice._budget: the native half of require "sluice.budget"
 *
 * A thin binding of host/budget.h: the watchdog and its enforcement are
 * there; this file only checks the arguments and reports a refusal.
 */
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>

#include "host/budget.h"
#include "host/modules.h"
#include "host/task.h"

/* The limits at index i (cpu), i + 1 (wall) and i + 2 (label), checked:
 * seconds, 0 for no limit. */
typedef struct limits {
    double cpu, wall;
    const char *label;
} limits;

static limits check_limits(lua_State *L, int i) {
    limits l;
    l.cpu = luaL_checknumber(L, i); /* in order: the first bad one is named */
    l.wall = luaL_checknumber(L, i + 1);
    l.label = luaL_checkstring(L, i + 2);
    luaL_argcheck(L, l.cpu >= 0 && isfinite(l.cpu), i,
                  "must be a finite number >= 0");
    luaL_argcheck(L, l.wall >= 0 && isfinite(l.wall), i + 1,
                  "must be a finite number >= 0");
    return l;
}

/* attach(task, cpu, wall, label) -> true. Misuse raises (sluice.budget
 * validates first). */
static int l_attach(lua_State *L) {
    sl_task *t = sl_task_check(L, 1);
    limits l = check_limits(L, 2);
    char err[128];
    if (sl_budget_attach(t, l.cpu, l.wall, l.label, err, sizeof(err)) != 0)
        return luaL_error(L, "sluice.budget: %s", err);
    lua_pushboolean(L, 1);
    return 1;
}

/* enter(cpu, wall, label) -> true | nil, why: opens a budget region (see
 * host/budget.h) around what the caller does next, which must be a pcall
 * of the region's work followed by leave(). Refused when the caller is not
 * a task's own coroutine or its task has a budget already. */
static int l_enter(lua_State *L) {
    limits l = check_limits(L, 1);
    sl_task *t = sl_task_current(L);
    char err[128];
    if (!t)
        snprintf(err, sizeof(err), "not called from a task's own coroutine");
    else if (sl_budget_region_enter(L, t, l.cpu, l.wall, l.label, err,
                                    sizeof(err)) == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

/* leave() -> nil | the budget error when the region ran out. */
static int l_leave(lua_State *L) {
    sl_task *t = sl_task_current(L);
    char msg[256];
    int rc = t ? sl_budget_region_leave(t, msg, sizeof(msg)) : -1;
    if (rc < 0)
        return luaL_error(L, "sluice._budget.leave: no budget region open");
    if (rc == 0)
        return 0;
    lua_pushstring(L, msg);
    return 1;
}

int luaopen_sluice_budget(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"attach", l_attach},
        {"enter", l_enter},
        {"leave", l_leave},
        {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
