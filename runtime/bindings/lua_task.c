/* lua_task.c -- sluice._task: the native half of require "sluice" */
#include <lauxlib.h>
#include <math.h>
#include <string.h>

#include "core/notify.h"
#include "host/modules.h"
#include "host/runtime.h"
#include "host/task.h"
#include "host/timer.h"

static int l_spawn(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    sl_task_spawn(L, lua_gettop(L) - 1);
    return 1;
}

static int l_kill(lua_State *L) {
    sl_task *t = sl_task_check(L, 1);
    if (t->state == SL_TASK_RUNNING)
        return luaL_argerror(L, 1,
                             "a task cannot kill itself (return or "
                             "error instead)");
    int live = t->state != SL_TASK_DONE;
    sl_task_kill(t, luaL_optstring(L, 2, "killed"));
    lua_pushboolean(L, live);
    return 1;
}

static int l_sleep(lua_State *L) {
    double s = luaL_checknumber(L, 1);
    luaL_argcheck(L, !isnan(s), 1, "not a number");
    sl_task *t = sl_task_check_yieldable(L, "sluice.sleep");
    return sl_task_sleep(L, t, s);
}

/* park([timeout]) -> true, ... | false, "timeout" | false, "shutdown" */
static int l_park(lua_State *L) {
    double timeout = luaL_optnumber(L, 1, -1);
    luaL_argcheck(L, !isnan(timeout), 1, "not a number");
    sl_task *t = sl_task_check_yieldable(L, "sluice.park");
    return sl_task_park(L, t, timeout);
}

/* unpark(task, ...) -> true when task was parked and is now queued */
static int l_unpark(lua_State *L) {
    sl_task *t = sl_task_check(L, 1);
    lua_pushboolean(L, sl_task_unpark(t, L, 2, lua_gettop(L) - 1));
    return 1;
}

static int l_yield(lua_State *L) {
    sl_task_check_yieldable(L, "sluice.yield");
    return lua_yield(L, 0);
}

static int l_now(lua_State *L) {
    lua_pushnumber(L, sl_now());
    return 1;
}

static int l_time(lua_State *L) {
    lua_pushnumber(L, sl_time());
    return 1;
}

static int l_status(lua_State *L) { return sl_task_push_status(L, 1); }

static int l_id(lua_State *L) {
    lua_pushnumber(L, (lua_Number)sl_task_check(L, 1)->id);
    return 1;
}

/* The running task's handle, or nil outside a task. */
static int l_current(lua_State *L) {
    sl_task *t = sl_task_current(L);
    if (!t)
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->self_ref);
    return 1;
}

static int append_handler(lua_State *L, int ref) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
    return 0;
}

static int l_on_shutdown(lua_State *L) {
    return append_handler(L, sl_rt.shutdown_handlers);
}

static int l_on_reload(lua_State *L) {
    return append_handler(L, sl_rt.reload_handlers);
}

static int l_tasks(lua_State *L) {
    sl_task_counts c = sl_task_stats();
    lua_createtable(L, 0, 6);
    lua_pushnumber(L, (lua_Number)c.running);
    lua_setfield(L, -2, "running");
    lua_pushnumber(L, (lua_Number)c.waiting);
    lua_setfield(L, -2, "waiting");
    lua_pushnumber(L, (lua_Number)c.ready);
    lua_setfield(L, -2, "ready");
    lua_pushnumber(L, (lua_Number)c.created);
    lua_setfield(L, -2, "created");
    lua_pushnumber(L, (lua_Number)c.failed);
    lua_setfield(L, -2, "failed");
    lua_pushnumber(L, (lua_Number)c.killed);
    lua_setfield(L, -2, "killed");
    return 1;
}

static int l_shutdown(lua_State *L) {
    if (!lua_isnoneornil(L, 1))
        sl_rt.exit_code = (int)luaL_checkinteger(L, 1);
    sl_shutdown();
    return 0;
}

static int l_stopping(lua_State *L) {
    lua_pushboolean(L, sl_rt.stopping);
    return 1;
}

static int l_shutdown_timeout(lua_State *L) {
    if (!lua_isnoneornil(L, 1)) {
        double s = luaL_checknumber(L, 1);
        luaL_argcheck(L, s >= 0 && isfinite(s), 1,
                      "must be a finite number >= 0");
        sl_rt.shutdown_timeout = s;
    }
    lua_pushnumber(L, sl_rt.shutdown_timeout);
    return 1;
}

/* environ() -> { NAME = value, ... }: the whole environment, which Lua's
 * os.getenv cannot list (configuration overrides need to). */
static int l_environ(lua_State *L) {
    extern char **environ;
    lua_newtable(L);
    for (char **e = environ; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || eq == *e)
            continue;
        lua_pushlstring(L, *e, (size_t)(eq - *e));
        lua_pushstring(L, eq + 1);
        lua_rawset(L, -3);
    }
    return 1;
}

/* notify(state) -> true | false | nil, err: sd_notify (core/notify.h);
 * false when not run by systemd (no $NOTIFY_SOCKET). */
static int l_notify(lua_State *L) {
    char err[256];
    int rc = sl_notify(luaL_checkstring(L, 1), err, sizeof err);
    if (rc < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, rc);
    return 1;
}

int luaopen_sluice_task(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"spawn", l_spawn},
        {"wait", sl_task_wait},
        {"kill", l_kill},
        {"sleep", l_sleep},
        {"park", l_park},
        {"unpark", l_unpark},
        {"yield", l_yield},
        {"after", sl_timer_after},
        {"every", sl_timer_every},
        {"now", l_now},
        {"time", l_time},
        {"status", l_status},
        {"id", l_id},
        {"current", l_current},
        {"on_shutdown", l_on_shutdown},
        {"on_reload", l_on_reload},
        {"tasks", l_tasks},
        {"shutdown", l_shutdown},
        {"stopping", l_stopping},
        {"shutdown_timeout", l_shutdown_timeout},
        {"environ", l_environ},
        {"notify", l_notify},
        {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    lua_pushstring(L, SLUICE_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
