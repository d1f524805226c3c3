/* redis_args.h -- Lua values as Redis command arguments, for sluice._redis
 *
 * These run on the calling task's stack before anything is sent; misuse
 * raises a Lua error there.
 */
#ifndef SLUICE_REDIS_ARGS_H
#define SLUICE_REDIS_ARGS_H

#include <lua.h>
#include <stddef.h>

/* Replaces the numbers at stack indexes from..to by their text, as
 * sluice.json.number writes them (the shortest that reads back exactly;
 * -0 as "0", nan/inf/-inf as "nan", "inf", "-inf"), and int64_t/uint64_t
 * cdata and sluice.json numerals by their digits; raises on anything but
 * those and strings. */
void sl_redis_format_numbers(lua_State *L, int from, int to);

/* Raises when cmd (a command name, or NULL) is one that call and pipeline
 * must not send: SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE, their UNSUBSCRIBEs and
 * MONITOR. hiredis calls their callback once per message, not once. */
void sl_redis_check_command(lua_State *L, const char *cmd);

/* Raises unless the value at idx is a list of strings. */
void sl_redis_check_list(lua_State *L, int idx);

/* Fills *argv and *lens (malloc'd; the caller frees both) with the strings
 * of the list at idx, which must stay on the stack while they are used.
 * Returns their number; raises when the list holds anything else. */
int sl_redis_list_argv(lua_State *L, int idx, const char ***argv,
                       size_t **lens);

#endif
