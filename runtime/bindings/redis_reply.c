/* redis_reply.c -- hiredis replies as Lua values, for sluice._redis
 *
 * See redis_reply.h for the mapping and the lifetime of the reply.
 */
#include <hiredis/hiredis.h>
#include <lauxlib.h>

#include "redis_reply.h"

/* Pushes one reply element; nested is nonzero inside an array. */
static void push_value(lua_State *co, const redisReply *r, int nested) {
    switch (r->type) {
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_STRING:
        lua_pushlstring(co, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushnumber(co, (lua_Number)r->integer);
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
