/* modules.c -- registry of native modules, preloaded into every Lua state */
#include "modules.h"

/* The leading underscore marks private primitives: users require the Lua
 * wrappers in lua/sluice/, which validate arguments and then call these. */
const sl_native_module sl_native_modules[] = {
    {"sluice._task", luaopen_sluice_task},
    {"sluice._log", luaopen_sluice_log},
    {"sluice._http", luaopen_sluice_http},
    {"sluice._store", luaopen_sluice_store},
    {"sluice._breaker", luaopen_sluice_breaker},
    {"sluice._retry", luaopen_sluice_retry},
    {"sluice._server", luaopen_sluice_server},
    {"sluice._limiter", luaopen_sluice_limiter},
    {"sluice._repl", luaopen_sluice_repl},
    {"sluice._redis", luaopen_sluice_redis},
    {"sluice._budget", luaopen_sluice_budget},
    {"sluice._crypto", luaopen_sluice_crypto},
    {"sluice._bignum", luaopen_sluice_bignum},
    {"sluice._json", luaopen_sluice_json},
    {"sluice._pg", luaopen_sluice_pg},
    {"sluice._amqp", luaopen_sluice_amqp},
    {"sluice._ws", luaopen_sluice_ws},
    {"sluice._outbox", luaopen_sluice_outbox},
    {NULL, NULL},
};
