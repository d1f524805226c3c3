/* redis_args.c -- Lua values as Redis command arguments, for sluice._redis
 *
 * See redis_args.h.
 */
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/numtext.h"
#include "redis_args.h"

/* Commands whose replies hiredis delivers once per message (and the ones
 * that end them): each would leave the request to callbacks after it is
 * freed, and the connection unusable for calls. */
void sl_redis_check_command(lua_State *L, const char *cmd) {
    static const char *const refused[] = {
        "SUBSCRIBE",    "PSUBSCRIBE",   "SSUBSCRIBE", "UNSUBSCRIBE",
        "PUNSUBSCRIBE", "SUNSUBSCRIBE", "MONITOR",    NULL,
    };
    for (int i = 0; cmd && refused[i]; i++)
        if (strcasecmp(cmd, refused[i]) == 0)
            luaL_error(L,
                       "sluice.redis: %s cannot be sent with call or "
                       "pipeline; use client:subscribe(channel, ...) or "
                       "client:psubscribe(pattern, ...)%s",
                       refused[i],
                       refused[i + 1] ? "" : " (MONITOR is not supported)");
}

void sl_redis_check_list(lua_State *L, int idx) {
    luaL_checktype(L, idx, LUA_TTABLE);
    int n = (int)lua_objlen(L, idx);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_argerror(L, idx, "list of strings expected");
        lua_pop(L, 1);
    }
}

/* Collects the strings of the list at idx into a malloc'd argv (borrowed
 * from the list, which must stay on the stack). */
int sl_redis_list_argv(lua_State *L, int idx, const char ***argv,
                       size_t **lens) {
    luaL_checktype(L, idx, LUA_TTABLE);
    int n = (int)lua_objlen(L, idx);
    *argv = malloc(sizeof(**argv) * (size_t)(n + 1));
    *lens = malloc(sizeof(**lens) * (size_t)(n + 1));
    if (!*argv || !*lens) {
        free(*argv);
        free(*lens);
        luaL_error(L, "sluice.redis: out of memory");
    }
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, idx, i + 1);
        /* a string, so that the list keeps what the pointer points to */
        (*argv)[i] = lua_type(L, -1) == LUA_TSTRING
                         ? lua_tolstring(L, -1, &(*lens)[i])
                         : NULL;
        lua_pop(L, 1);
        if (!(*argv)[i]) {
            free(*argv);
            free(*lens);
            luaL_argerror(L, idx, "list of strings expected");
        }
    }
    return n;
}

/* v as sluice.json.number writes it: an integer within 2^53 without
 * exponent, any other finite number as the shortest of %.15g, %.16g and
 * %.17g that reads back as the same double (0.1 -> "0.1", not
 * "0.10000000000000001"). Redis' own words where JSON has none: -0 is "0"
 * (Redis' integer parser refuses "-0": INCRBY k -0 would fail), nan, inf
 * and -inf are "nan", "inf", "-inf" (what Redis' float parser reads; glibc
 * would write a nan with its sign bit set as "-nan"). */
static void format_number(double v, char *buf, size_t len) {
    if (v == 0) {
        snprintf(buf, len, "0");
    } else if (isnan(v)) {
        snprintf(buf, len, "nan");
    } else if (isinf(v)) {
        snprintf(buf, len, v > 0 ? "inf" : "-inf");
    } else if (v == floor(v) && fabs(v) < 9007199254740992.0) {
        snprintf(buf, len, "%.0f", v);
    } else {
        char text[SL_NUMTEXT_MAX];
        sl_numtext_shortest(text, v);
        snprintf(buf, len, "%s", text);
    }
}

/* LuaJIT's type of cdata (lj_obj.h; lua.h has no name for it) */
#define TYPE_CDATA 10

/* Pushes the text sluice.json gives the value at idx (an int64_t/uint64_t
 * cdata: int64_text, a table: numeral_text) and returns 1; 0, pushing
 * nothing, when it gives none. Only sluice.json knows a numeral's text;
 * sluice.redis loads it before this runs. */
static int push_json_text(lua_State *L, int idx, int ty) {
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    lua_getfield(L, -1, "sluice.json");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 2);
        return 0;
    }
    lua_getfield(L, -1, ty == LUA_TTABLE ? "numeral_text" : "int64_text");
    lua_pushvalue(L, idx);
    lua_call(L, 1, 1);
    if (lua_type(L, -1) != LUA_TSTRING) {
        lua_pop(L, 3);
        return 0;
    }
    lua_replace(L, -3);
    lua_pop(L, 1);
    return 1;
}

/* Replaces the numbers, int64_t/uint64_t cdata and sluice.json numerals at
 * the given stack range by their text (see format_number; cdata and
 * numerals as sluice.json writes them); raises on anything else. */
void sl_redis_format_numbers(lua_State *L, int from, int to) {
    for (int i = from; i <= to; i++) {
        int ty = lua_type(L, i);
        if (ty == LUA_TNUMBER) {
            char buf[64];
            format_number(lua_tonumber(L, i), buf, sizeof(buf));
            lua_pushstring(L, buf);
            lua_replace(L, i);
        } else if ((ty == TYPE_CDATA || ty == LUA_TTABLE) &&
                   push_json_text(L, i, ty)) {
            lua_replace(L, i);
        } else if (ty != LUA_TSTRING) {
            luaL_argerror(L, i,
                          "string, number, int64_t/uint64_t cdata or "
                          "sluice.json numeral expected");
        }
    }
}
