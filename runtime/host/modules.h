/* modules.h -- the native Lua modules linked into sluice */
#ifndef SLUICE_MODULES_H
#define SLUICE_MODULES_H

#include <lua.h>

typedef struct sl_native_module {
    const char *name;
    lua_CFunction open;
} sl_native_module;

/* Preloaded by sl_embed_install; ends with {NULL, NULL}. */
extern const sl_native_module sl_native_modules[];

int luaopen_sluice_task(lua_State *L);
int luaopen_sluice_log(lua_State *L);
int luaopen_sluice_http(lua_State *L);
int luaopen_sluice_store(lua_State *L);
int luaopen_sluice_breaker(lua_State *L);
int luaopen_sluice_retry(lua_State *L);
int luaopen_sluice_server(lua_State *L);
int luaopen_sluice_limiter(lua_State *L);
int luaopen_sluice_repl(lua_State *L);
int luaopen_sluice_redis(lua_State *L);
int luaopen_sluice_budget(lua_State *L);
int luaopen_sluice_crypto(lua_State *L);
int luaopen_sluice_bignum(lua_State *L);
int luaopen_sluice_json(lua_State *L);
int luaopen_sluice_pg(lua_State *L);
int luaopen_sluice_amqp(lua_State *L);
int luaopen_sluice_ws(lua_State *L);
int luaopen_sluice_outbox(lua_State *L);

#endif
