/* lua_http_parse.c -- sluice._http's parsers: URLs and response header lines */
#include "lua_http_parse.h"

#include <curl/curl.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

static void lower(char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] >= 'A' && s[i] <= 'Z')
            s[i] = (char)(s[i] - 'A' + 'a');
}

/* headers[name] = values joined by ", " (RFC 9110 5.3), all names lower
 * case; headers_all[name] = { value, ... } in arrival order. */
static void push_headers(lua_State *co, char *p, size_t len) {
    lua_newtable(co); /* headers */
    lua_newtable(co); /* headers_all */
    int all = lua_gettop(co), hdr = all - 1;
    char *end = p ? p + len : NULL;
    while (p && p < end) {
        char *eol = memchr(p, '\n', (size_t)(end - p));
        char *next = eol ? eol + 1 : end;
        if (!eol)
            eol = end;
        while (eol > p && (eol[-1] == '\r' || eol[-1] == '\n'))
            eol--;
        char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon && colon > p && memcmp(p, "HTTP/", 5) != 0) {
            char *v = colon + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            char *ve = eol;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            lower(p, (size_t)(colon - p));
            lua_pushlstring(co, p, (size_t)(colon - p));
            int name = lua_gettop(co);
            /* headers_all[name] list */
            lua_pushvalue(co, name);
            lua_rawget(co, all);
            if (lua_isnil(co, -1)) {
                lua_pop(co, 1);
                lua_newtable(co);
                lua_pushvalue(co, name);
                lua_pushvalue(co, -2);
                lua_rawset(co, all);
            }
            lua_pushlstring(co, v, (size_t)(ve - v));
            lua_rawseti(co, -2, (int)lua_objlen(co, -2) + 1);
            lua_pop(co, 1);
            /* headers[name] joined */
            lua_pushvalue(co, name);
            lua_rawget(co, hdr);
            if (lua_isnil(co, -1)) {
                lua_pop(co, 1);
                lua_pushlstring(co, v, (size_t)(ve - v));
            } else {
                lua_pushliteral(co, ", ");
                lua_pushlstring(co, v, (size_t)(ve - v));
                lua_concat(co, 3);
            }
            lua_rawset(co, hdr);
        }
        p = next;
    }
}

/* Pushes part `what` of u, lower case when `fold` (scheme and host are
 * case-insensitive), or nil when u has none. */
static void push_part(lua_State *L, CURLU *u, CURLUPart what, int fold) {
    char *v = NULL;
    if (curl_url_get(u, what, &v, 0) != CURLUE_OK || !v) {
        lua_pushnil(L);
        return;
    }
    if (fold)
        lower(v, strlen(v));
    lua_pushstring(L, v);
    curl_free(v);
}

/* parse_url(url [, ref]) -> url, scheme, host, port | nil, err
 * Resolves ref (a Location value: absolute, scheme-relative, or relative)
 * against url as RFC 3986 says, and returns the result with the parts that
 * make its origin: scheme and host in lower case, port a number (the
 * scheme's default when the URL names none). */
int sl_http_parse_url(lua_State *L) {
    const char *url = luaL_checkstring(L, 1);
    const char *ref = luaL_optstring(L, 2, NULL);
    CURLU *u = curl_url();
    if (!u)
        return luaL_error(L, "sluice.http: out of memory");
    CURLUcode rc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (rc == CURLUE_OK && ref)
        rc = curl_url_set(u, CURLUPART_URL, ref, 0);
    if (rc != CURLUE_OK) {
        curl_url_cleanup(u);
        lua_pushnil(L);
        lua_pushstring(L, curl_url_strerror(rc));
        return 2;
    }
    push_part(L, u, CURLUPART_URL, 0);
    push_part(L, u, CURLUPART_SCHEME, 1);
    push_part(L, u, CURLUPART_HOST, 1);
    char *port = NULL;
    if (curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) ==
            CURLUE_OK &&
        port) {
        lua_pushnumber(L, strtod(port, NULL));
        curl_free(port);
    } else {
        lua_pushnil(L);
    }
    curl_url_cleanup(u);
    return 4;
}

/* parse_headers(lines) -> headers, headers_all: the tables push_headers
 * makes of a response's header lines (request's second result). */
int sl_http_parse_headers(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char *copy = malloc(len ? len : 1); /* push_headers folds names in place */
    if (!copy)
        return luaL_error(L, "sluice.http: out of memory");
    memcpy(copy, s, len);
    push_headers(L, copy, len);
    free(copy);
    return 2;
}
