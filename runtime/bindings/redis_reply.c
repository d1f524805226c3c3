/* redis_reply.c -- hiredis replies as Lua values, for sluice._redis
 *
 * See redis_reply.h for the mapping and the lifetime of the reply.
 */
#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <stdint.h>

#include "host/runtime.h"
#include "redis_reply.h"

/* Registry key (its address) of box(p) -> the int64_t at light userdata p
 * as an int64_t cdata: the C API cannot make cdata, and a double would
 * round an integer reply beyond 2^53. */
static char box_key;

static const char FFI_BOX[] =
    "local ffi = require 'ffi'\n"
    "local int64, ptr, cast = ffi.typeof('int64_t'), "
    "ffi.typeof('const int64_t *'), ffi.cast\n"
    "return function(p) return int64(cast(ptr, p)[0]) end\n";

void sl_redis_reply_init(lua_State *L) {
    lua_pushlightuserdata(L, &box_key);
    if (luaL_loadstring(L, FFI_BOX) != 0)
        lua_error(L);
    lua_call(L, 0, 1);
    lua_rawset(L, LUA_REGISTRYINDEX);
}

/* The largest integer every double near it holds exactly. */
#define EXACT_MAX 9007199254740991LL

/* Pushes an integer reply: a number within +-(2^53-1), else an int64_t
 * cdata, made by box() on the main thread (co is suspended and cannot run
 * it) and moved over. */
static void push_integer(lua_State *co, long long v) {
    if (v >= -EXACT_MAX && v <= EXACT_MAX) {
        lua_pushnumber(co, (lua_Number)v);
        return;
    }
    lua_State *L = sl_rt.L;
    int64_t x = v;
    lua_pushlightuserdata(L, &box_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_pushlightuserdata(L, &x);
    lua_call(L, 1, 1);
    lua_xmove(L, co, 1);
}

/* Pushes one reply element; nested is nonzero inside an array. */
static void push_value(lua_State *co, const redisReply *r, int nested) {
    switch (r->type) {
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_STRING:
        lua_pushlstring(co, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        push_integer(co, r->integer);
        break;
    case REDIS_REPLY_NIL:
        if (nested)
            lua_pushlightuserdata(co, NULL);
        else
            lua_pushnil(co);
        break;
    case REDIS_REPLY_ERROR:
        lua_createtable(co, 0, 1);
        lua_pushlstring(co, r->str, r->len);
        lua_setfield(co, -2, "err");
        break;
    case REDIS_REPLY_ARRAY:
        lua_checkstack(co, 4);
        lua_createtable(co, (int)r->elements, 0);
        for (size_t i = 0; i < r->elements; i++) {
            push_value(co, r->element[i], 1);
            lua_rawseti(co, -2, (int)i + 1);
        }
        break;
    default:
        lua_pushnil(co);
        break;
    }
}

int sl_redis_reply_push(lua_State *co, const redisReply *r, const char *why) {
    if (!r) {
        lua_pushnil(co);
        lua_pushstring(co, why);
        return 2;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        lua_pushnil(co);
        lua_pushlstring(co, r->str, r->len);
        return 2;
    }
    push_value(co, r, 0);
    return 1;
}

void sl_redis_reply_push_entry(lua_State *co, const redisReply *r,
                               const char *why) {
    lua_createtable(co, 2, 0);
    if (sl_redis_reply_push(co, r, why) == 2) {
        lua_rawseti(co, -3, 2);
        lua_pop(co, 1);
        lua_pushboolean(co, 0);
        lua_rawseti(co, -2, 1);
    } else {
        lua_rawseti(co, -2, 1);
    }
}
