/* lua_log.c -- sluice._log: the native half of require "sluice.log" */
#include <errno.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "host/modules.h"

static int check_level(lua_State *L, int idx) {
    if (lua_type(L, idx) == LUA_TNUMBER) {
        int level = (int)lua_tointeger(L, idx);
        luaL_argcheck(L, level >= SL_LOG_TRACE && level <= SL_LOG_NONE, idx,
                      "no such log level");
        return level;
    }
    const char *name = luaL_checkstring(L, idx);
    int level = sl_log_level_parse(name);
    if (level < 0)
        return luaL_argerror(
            L, idx,
            lua_pushfstring(L,
                            "unknown log level '%s' (expected trace, debug, "
                            "info, warning, error, critical or none)",
                            name));
    return level;
}

static int by_key(const void *a, const void *b) {
    return strcmp(((const sl_log_field *)a)->key,
                  ((const sl_log_field *)b)->key);
}

/* write(level, msg [, fields]): fields is a flat table with string keys;
 * entries appear sorted by key, so lines are stable and diffable. */
static int l_write(lua_State *L) {
    int level = check_level(L, 1);
    if (!sl_log_enabled(level))
        return 0;
    const char *msg = luaL_checkstring(L, 2);
    size_t n = 0, cap = 0;
    sl_log_field *f = NULL;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_settop(L, 3);
        for (lua_pushnil(L); lua_next(L, 3); lua_pop(L, 1))
            if (lua_type(L, -2) == LUA_TSTRING)
                cap++;
        f = lua_newuserdata(L, (cap ? cap : 1) * sizeof(*f));
        int values = lua_gettop(L) + 1;
        lua_newtable(L); /* keeps tostring()ed values alive */
        for (lua_pushnil(L); lua_next(L, 3) && n < cap; lua_pop(L, 1)) {
            if (lua_type(L, -2) != LUA_TSTRING)
                continue;
            sl_log_field *e = &f[n++];
            memset(e, 0, sizeof(*e));
            e->key = lua_tostring(L, -2);
            switch (lua_type(L, -1)) {
            case LUA_TNUMBER:
                e->type = SL_LOG_NUM;
                e->num = lua_tonumber(L, -1);
                break;
            case LUA_TBOOLEAN:
                e->type = SL_LOG_BOOL;
                e->boolean = lua_toboolean(L, -1);
                break;
            case LUA_TSTRING:
                e->type = SL_LOG_STR;
                e->str = lua_tolstring(L, -1, &e->len);
                break;
            default:
                if (!luaL_callmeta(L, -1, "__tostring"))
                    lua_pushfstring(L, "%s: %p", luaL_typename(L, -1),
                                    lua_topointer(L, -1));
                e->type = SL_LOG_STR;
                e->str = lua_tolstring(L, -1, &e->len);
                lua_rawseti(L, values, (int)n);
            }
        }
        qsort(f, n, sizeof(*f), by_key);
    }
    sl_log_write(level, sl_log_clock(), msg, f, n);
    return 0;
}

static int l_enabled(lua_State *L) {
    lua_pushboolean(L, sl_log_enabled(check_level(L, 1)));
    return 1;
}

/* level([name]) -> the level in force (after setting it, if given). */
static int l_level(lua_State *L) {
    if (!lua_isnoneornil(L, 1))
        sl_log_set_level(check_level(L, 1));
    lua_pushstring(L, sl_log_level_name(sl_log_get_level()));
    return 1;
}

static int l_format(lua_State *L) {
    if (!lua_isnoneornil(L, 1)) {
        const char *name = luaL_checkstring(L, 1);
        if (strcmp(name, "json") == 0)
            sl_log_set_format(SL_LOG_JSON);
        else if (strcmp(name, "console") == 0)
            sl_log_set_format(SL_LOG_CONSOLE);
        else
            return luaL_argerror(L, 1, "expected 'json' or 'console'");
    }
    lua_pushstring(L, sl_log_get_format() == SL_LOG_JSON ? "json" : "console");
    return 1;
}

/* recent([n]) -> array of the newest n entries (all kept, by default), as
 * JSON text, oldest first. */
static int l_recent(lua_State *L) {
    size_t count = sl_log_ring_count();
    lua_Integer want = luaL_optinteger(L, 1, (lua_Integer)count);
    luaL_argcheck(L, want >= 0, 1, "must be >= 0");
    size_t n = (size_t)want < count ? (size_t)want : count;
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushstring(L, sl_log_ring_get(count - n + i));
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

static int l_ring_size(lua_State *L) {
    if (!lua_isnoneornil(L, 1)) {
        lua_Integer n = luaL_checkinteger(L, 1);
        luaL_argcheck(L, n >= 0 && n <= 10000000, 1, "must be in [0, 1e7]");
        if (sl_log_ring_resize((size_t)n) < 0)
            return luaL_error(L, "out of memory resizing the log ring");
    }
    lua_pushnumber(L, (lua_Number)sl_log_ring_capacity());
    return 1;
}

/* output(path) sends entries to path (appended), "-" for stdout or
 * "stderr". Returns true, or nil and the error if the file cannot be opened
 * (the old output is kept). */
static int l_output(lua_State *L) {
    static FILE *owned;
    const char *path = luaL_checkstring(L, 1);
    FILE *f;
    if (strcmp(path, "-") == 0 || strcmp(path, "stdout") == 0)
        f = stdout;
    else if (strcmp(path, "stderr") == 0)
        f = stderr;
    else if (!(f = fopen(path, "a"))) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", path, strerror(errno));
        return 2;
    }
    sl_log_set_output(f);
    if (owned)
        fclose(owned);
    owned = f == stdout || f == stderr ? NULL : f;
    lua_pushboolean(L, 1);
    return 1;
}

/* dropped() -> lines, bytes: what the logger dropped because its output
 * did not keep up (or failed), since the start. */
static int l_dropped(lua_State *L) {
    unsigned long long lines, bytes;
    sl_log_dropped(&lines, &bytes);
    lua_pushnumber(L, (lua_Number)lines);
    lua_pushnumber(L, (lua_Number)bytes);
    return 2;
}

/* flush([timeout=1]) -> whether every queued line was written within
 * timeout seconds (blocks the caller that long at most). */
static int l_flush(lua_State *L) {
    lua_Number t = luaL_optnumber(L, 1, 1.0);
    luaL_argcheck(L, t >= 0 && t <= 60, 1, "must be in [0, 60]");
    lua_pushboolean(L, sl_log_flush(t) == 0);
    return 1;
}

/* is_terminal() -> whether stdout is a terminal (for progress bars). */
static int l_is_terminal(lua_State *L) {
    lua_pushboolean(L, isatty(fileno(stdout)));
    return 1;
}

/* redact(s) -> whether no later line shows s (see sl_log_redact): false
 * when the table is full (sluice.redact still scrubs Lua's lines). */
static int l_redact(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_pushboolean(L, sl_log_redact(s, len) == 0);
    return 1;
}

int luaopen_sluice_log(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"write", l_write},     {"enabled", l_enabled},
        {"level", l_level},     {"format", l_format},
        {"recent", l_recent},   {"ring_size", l_ring_size},
        {"output", l_output},   {"is_terminal", l_is_terminal},
        {"dropped", l_dropped}, {"flush", l_flush},
        {"redact", l_redact},   {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
