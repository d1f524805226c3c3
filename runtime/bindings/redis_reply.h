/* redis_reply.h -- hiredis replies as Lua values, for sluice._redis
 *
 * The functions copy everything they need out of the reply: it is only
 * valid for the duration of the hiredis callback, and nothing here keeps a
 * pointer to it. They push onto the coroutine that will be woken (the
 * task's thread), growing its stack as nested arrays require.
 *
 * Values: status and string replies are strings, integers are numbers
 * within +-(2^53-1) and int64_t cdata beyond (exact, as the store reads them),
 * arrays are lists. Inside an array nil is the null sentinel (a NULL light
 * userdata, the same value as cjson.null and sluice._redis.null) and an
 * error is a table {err = msg}.
 */
#ifndef SLUICE_REDIS_REPLY_H
#define SLUICE_REDIS_REPLY_H

#include <lua.h>

struct redisReply;

/* Loads what replies need into the registry (the int64_t boxing helper);
 * called once when sluice._redis opens. */
void sl_redis_reply_init(lua_State *L);

/* Pushes the results of one call: the value (1 returned), or nil and a
 * message (2 returned). The message is the error reply's text, or why when
 * r is NULL (the reply was lost with the context). */
int sl_redis_reply_push(lua_State *co, const struct redisReply *r,
                        const char *why);

/* Pushes one pipeline entry: {value}, or {false, msg} where msg is as for
 * sl_redis_reply_push. Always pushes exactly one table. */
void sl_redis_reply_push_entry(lua_State *co, const struct redisReply *r,
                               const char *why);

#endif
