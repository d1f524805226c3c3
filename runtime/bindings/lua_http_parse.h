/* lua_http_parse.h -- sluice._http's parsers: URLs (curl's) and header lines
 *
 * Both are Lua C functions registered by luaopen_sluice_http (lua_http.c);
 * they allocate nothing that outlives the call.
 */
#ifndef SLUICE_LUA_HTTP_PARSE_H
#define SLUICE_LUA_HTTP_PARSE_H

#include <lua.h>

/* parse_url(url [, ref]) -> url, scheme, host, port | nil, err */
int sl_http_parse_url(lua_State *L);

/* parse_headers(lines) -> headers, headers_all */
int sl_http_parse_headers(lua_State *L);

#endif
