/* embed.c -- require searchers for embedded bytecode and override directories
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <stdlib.h>
#include <string.h>

#include "embed.h"
#include "modules.h"

int luaopen_cjson(lua_State *L);
int luaopen_cjson_safe(lua_State *L);

static int by_name(const void *key, const void *elem) {
    return strcmp(key, ((const sl_embedded_module *)elem)->name);
}

const sl_embedded_module *sl_embed_find(const char *name) {
    return bsearch(name, sl_embedded_modules, sl_embedded_module_count,
                   sizeof(sl_embedded_module), by_name);
}

static int embedded_searcher(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    const sl_embedded_module *m = sl_embed_find(name);
    if (!m) {
        lua_pushfstring(L, "\n\tno embedded module '%s'", name);
        return 1;
    }
    if (luaL_loadbuffer(L, (const char *)m->bytecode, m->len, m->chunkname))
        return luaL_error(L, "error loading embedded module '%s': %s", name,
                          lua_tostring(L, -1));
    return 1;
}

/* Upvalue 1 is a ";"-separated template list, as package.path. */
static int override_searcher(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    const char *path = lua_tostring(L, lua_upvalueindex(1));
    const char *fname = luaL_gsub(L, name, ".", "/");
    luaL_Buffer tried;
    luaL_buffinit(L, &tried);
    while (*path) {
        const char *end = strchr(path, ';');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        lua_pushlstring(L, path, len);
        const char *candidate = luaL_gsub(L, lua_tostring(L, -1), "?", fname);
        lua_remove(L, -2);
        FILE *f = fopen(candidate, "r");
        if (f) {
            fclose(f);
            if (luaL_loadfile(L, candidate) != 0)
                return luaL_error(L, "error loading module '%s' from %s:\n\t%s",
                                  name, candidate, lua_tostring(L, -1));
            return 1;
        }
        lua_pushfstring(L, "\n\tno file '%s'", candidate);
        lua_remove(L, -2);
        luaL_addvalue(&tried);
        path += len;
        if (*path == ';')
            path++;
    }
    luaL_pushresult(&tried);
    return 1;
}

/* Inserts the function on top of the stack at position pos of loaders. */
static void insert_loader(lua_State *L, int loaders, int pos) {
    int n = (int)lua_objlen(L, loaders);
    for (int i = n; i >= pos; i--) {
        lua_rawgeti(L, loaders, i);
        lua_rawseti(L, loaders, i + 1);
    }
    lua_rawseti(L, loaders, pos);
}

static void preload(lua_State *L, const char *name, lua_CFunction open) {
    lua_getfield(L, LUA_GLOBALSINDEX, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, open);
    lua_setfield(L, -2, name);
    lua_pop(L, 2);
}

void sl_embed_install(lua_State *L, const char *const *dirs, int ndirs) {
    lua_getfield(L, LUA_GLOBALSINDEX, "package");
    lua_getfield(L, -1, "loaders");
    int loaders = lua_gettop(L);
    int pos = 2; /* right after package.preload */

    if (ndirs > 0) {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (int i = 0; i < ndirs; i++) {
            if (i)
                luaL_addchar(&b, ';');
            lua_pushfstring(L, "%s/?.lua;%s/?/init.lua", dirs[i], dirs[i]);
            luaL_addvalue(&b);
        }
        luaL_pushresult(&b);
        /* Also in front of package.path, so package.searchpath and tools
         * that read it see the same order. */
        lua_getfield(L, loaders - 1, "path");
        lua_pushfstring(L, "%s;%s", lua_tostring(L, -2), lua_tostring(L, -1));
        lua_setfield(L, loaders - 1, "path");
        lua_pop(L, 1);
        lua_pushcclosure(L, override_searcher, 1);
        insert_loader(L, loaders, pos++);
    }
    lua_pushcfunction(L, embedded_searcher);
    insert_loader(L, loaders, pos);
    lua_pop(L, 2);

    preload(L, "cjson", luaopen_cjson);
    preload(L, "cjson.safe", luaopen_cjson_safe);
    for (const sl_native_module *m = sl_native_modules; m->name; m++)
        preload(L, m->name, m->open);
}
