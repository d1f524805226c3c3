/* embed.h -- Lua modules compiled into the executable, and how require finds
 * them
 *
 * The table sl_embedded_modules is generated at build time by tools/bc2c.c
 * from every Lua file under lua/ and collectors/; it is sorted by name and ends
 * with an all-NULL entry. Bytecode and names are static and live for the
 * whole process.
 */
#ifndef SLUICE_EMBED_H
#define SLUICE_EMBED_H

#include <lua.h>
#include <stddef.h>

typedef struct sl_embedded_module {
    const char *name;      /* module name, e.g. "sluice.log" */
    const char *chunkname; /* "@lua/sluice/log.lua", for tracebacks */
    const unsigned char *bytecode;
    size_t len;
} sl_embedded_module;

extern const sl_embedded_module sl_embedded_modules[];
extern const int sl_embedded_module_count;

/* Installs, in package.loaders order: preload (Lua's own), the --lua-path
 * override directories (if any), the embedded modules, then Lua's path and
 * cpath searchers. So a file in an override directory wins over the embedded
 * module of the same name, and the embedded module wins over anything on the
 * system Lua path. Also preloads the native modules (cjson, cjson.safe and
 * sluice's own). `dirs` may be NULL; the strings are copied. */
void sl_embed_install(lua_State *L, const char *const *dirs, int ndirs);

/* Returns the embedded module called name, or NULL. */
const sl_embedded_module *sl_embed_find(const char *name);

#endif
