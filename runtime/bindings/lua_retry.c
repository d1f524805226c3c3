/* lua_retry.c -- sluice._retry: backoff delays and retry budgets for Lua */
#include <lauxlib.h>
#include <stdlib.h>

#include "core/retry.h"
#include "host/modules.h"
#include "host/runtime.h"

#define BUDGET_MT "sluice.retry_budget"

/* delay(strategy, n, base, max_delay, retry_after, max_retry_after [, u])
 * u defaults to a fresh uniform draw. */
static int l_delay(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    int s = sl_retry_strategy_parse(name);
    if (s < 0)
        return luaL_argerror(L, 1, "unknown strategy");
    int n = (int)luaL_checkinteger(L, 2);
    double base = luaL_checknumber(L, 3);
    double max_delay = luaL_checknumber(L, 4);
    double retry_after = luaL_optnumber(L, 5, -1);
    double max_retry_after = luaL_optnumber(L, 6, max_delay);
    double u = lua_isnoneornil(L, 7) ? (double)random() / ((double)RAND_MAX + 1)
                                     : luaL_checknumber(L, 7);
    lua_pushnumber(L, sl_retry_delay(s, n, base, max_delay, retry_after,
                                     max_retry_after, u));
    return 1;
}

typedef struct lbudget {
    sl_retry_budget b;
    int clock_ref; /* injected clock for tests, or LUA_NOREF */
} lbudget;

static double budget_now(lua_State *L, lbudget *lb) {
    if (lb->clock_ref == LUA_NOREF)
        return sl_now();
    lua_rawgeti(L, LUA_REGISTRYINDEX, lb->clock_ref);
    lua_call(L, 0, 1);
    double t = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return t;
}

/* budget(ratio, min_per_second, ttl [, clock]) */
static int l_budget(lua_State *L) {
    double ratio = luaL_checknumber(L, 1);
    double floor = luaL_checknumber(L, 2);
    double ttl = luaL_checknumber(L, 3);
    lbudget *lb = lua_newuserdata(L, sizeof(*lb));
    lb->clock_ref = LUA_NOREF;
    luaL_getmetatable(L, BUDGET_MT);
    lua_setmetatable(L, -2);
    if (lua_isfunction(L, 4)) {
        lua_pushvalue(L, 4);
        lb->clock_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    sl_retry_budget_init(&lb->b, ratio, floor, ttl, budget_now(L, lb));
    return 1;
}

static int l_deposit(lua_State *L) {
    lbudget *lb = luaL_checkudata(L, 1, BUDGET_MT);
    sl_retry_budget_deposit(&lb->b, budget_now(L, lb));
    return 0;
}

static int l_withdraw(lua_State *L) {
    lbudget *lb = luaL_checkudata(L, 1, BUDGET_MT);
    lua_pushboolean(L, sl_retry_budget_withdraw(&lb->b, budget_now(L, lb)));
    return 1;
}

static int l_refused(lua_State *L) {
    lbudget *lb = luaL_checkudata(L, 1, BUDGET_MT);
    lua_pushnumber(L, (lua_Number)lb->b.retries_refused);
    return 1;
}

static int l_budget_gc(lua_State *L) {
    lbudget *lb = luaL_checkudata(L, 1, BUDGET_MT);
    luaL_unref(L, LUA_REGISTRYINDEX, lb->clock_ref);
    lb->clock_ref = LUA_NOREF;
    return 0;
}

int luaopen_sluice_retry(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"deposit", l_deposit},
        {"withdraw", l_withdraw},
        {"refused", l_refused},
        {NULL, NULL},
    };
    static const luaL_Reg fns[] = {
        {"delay", l_delay},
        {"budget", l_budget},
        {NULL, NULL},
    };
    luaL_newmetatable(L, BUDGET_MT);
    lua_pushcfunction(L, l_budget_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
