/* lua_store.c -- sluice._store: a thin SQLite binding for sluice.store
 *
 * One userdata owns one sqlite3 connection and the prepared statements made
 * on it. Statements are cached by their SQL text in the userdata's
 * environment table (SQL string -> light userdata), so a statement is
 * prepared once and reused; the cache is flushed (every statement finalized)
 * when it grows past CACHE_MAX. close() finalizes every statement and closes
 * the connection; it is idempotent, and __gc calls it.
 *
 * Everything here is synchronous on the loop thread: SQLite calls block the
 * loop for as long as they take, so callers keep them short (one transaction
 * per batch). The one exception is WAL checkpoints: start_checkpointer hands
 * them to a thread of core/checkpoint.c with its own connection, which
 * close() stops and joins before it closes the loop's. try_exec and try_query
 * do not wait for a lock another connection holds (the busy handler refuses
 * at once): sluice.store.sql retries them from a task that sleeps between
 * tries, so that the loop runs meanwhile. Nothing here yields; the
 * only call back into Lua is pcall_nowait, which runs a transaction's function
 * where it cannot yield.
 *
 * Values: nil -> NULL, boolean -> 0/1, number -> INTEGER when it is integral
 * and fits in 64 bits, else REAL; an int64_t or uint64_t cdata -> INTEGER
 * (exactly; a uint64_t above 2^63-1 is misuse); string -> TEXT (embedded
 * NULs kept), except in upsert_rows' integer columns (type 'i'), where
 * sluice.store.rows passes integers beyond 2^53 as their decimal text and
 * they are bound as INTEGER; blob(s) -> BLOB. Reading: INTEGER -> a number
 * when it is within +-(2^53-1), which a double holds exactly, else an
 * int64_t cdata (a double would round it); REAL -> number, TEXT and BLOB ->
 * string, NULL -> nil (the field is absent from the row table). Both
 * conversions of cdata run through two small LuaJIT FFI functions the
 * module keeps in the registry (the C API cannot make or read cdata).
 *
 * Every connection has the collation sluice_decimal
 * (lua_store_decimal.c), which the uint256 and decimal columns of
 * sluice.store.schema declare: their text compares by numeric value.
 *
 * Misuse (wrong argument types, a closed database, more than one statement
 * in exec/query) raises; SQL errors return nil, message.
 */
#include <errno.h>
#include <lauxlib.h>
#include <math.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/checkpoint.h"
#include "host/modules.h"
#include "host/task.h"
#include "lua_store_decimal.h"

#define DB_MT "sluice.store.db"
#define BLOB_MT "sluice.store.blob"
#define CACHE_MAX 256

/* LuaJIT's type tag for cdata (lj_obj.h); lua.h does not name it. */
#ifndef LUA_TCDATA
#define LUA_TCDATA 10
#endif

/* Registry keys (their addresses) of the FFI helpers: box(p) -> the int64_t
 * at light userdata p as cdata; digits(v) -> the decimal text of an int64_t
 * or uint64_t cdata, or nil for any other cdata. */
static char box_key, digits_key;

static const char FFI_HELPERS[] =
    "local ffi = require 'ffi'\n"
    "local int64, uint64 = ffi.typeof('int64_t'), ffi.typeof('uint64_t')\n"
    "local ptr, cast, istype = ffi.typeof('const int64_t *'), ffi.cast, "
    "ffi.istype\n"
    "local tostring = tostring\n"
    "return function(p) return int64(cast(ptr, p)[0]) end,\n"
    "  function(v)\n"
    "    if istype(int64, v) then return (tostring(v):sub(1, -3)) end\n"
    "    if istype(uint64, v) then return (tostring(v):sub(1, -4)) end\n"
    "  end\n";

typedef struct ldb {
    sqlite3 *db;  /* NULL once closed */
    int ncached;  /* statements in the cache */
    unsigned gen; /* bumped on every cache flush */
    int has_file; /* a file database: dev and ino identify its file */
    dev_t dev;
    ino_t ino;
    sl_ckpt *ckpt; /* the background checkpointer, or NULL */
    sl_busy busy;  /* the busy handler's state (core/checkpoint.h) */
    int refused;   /* authorize denied a statement: say why */
} ldb;

static ldb *check_db(lua_State *L) {
    ldb *d = luaL_checkudata(L, 1, DB_MT);
    if (!d->db)
        luaL_error(L, "sluice.store: database is closed");
    return d;
}

#define REFUSED_AUTOCHECKPOINT                                                 \
    "PRAGMA wal_autocheckpoint is refused: this database checkpoints on a "    \
    "background thread, which the pragma would turn off (open it with "        \
    "checkpoint = \"inline\" to use SQLite's autocheckpoint)"

/* msg, or why authorize refused the statement that failed. */
static const char *sql_error(ldb *d, const char *msg) {
    if (!d->refused)
        return msg;
    d->refused = 0;
    return REFUSED_AUTOCHECKPOINT;
}

static int push_sql_error(lua_State *L, ldb *d) {
    lua_pushnil(L);
    lua_pushstring(L, sql_error(d, sqlite3_errmsg(d->db)));
    return 2;
}

/* --- statement cache ------------------------------------------------------ */

/* Finalizes every cached statement and empties the cache. The environment
 * table of the userdata at index 1 is the cache. */
static void cache_flush(lua_State *L, ldb *d) {
    lua_getfenv(L, 1);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        sqlite3_finalize(lua_touserdata(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_setfenv(L, 1);
    d->ncached = 0;
    d->gen++;
}

/* Returns the cached statement for the string at sqlidx, preparing it on a
 * miss; NULL on a prepare error (message in sqlite3_errmsg). A statement
 * with trailing SQL after the first statement is refused (raises): use
 * script() for several statements. */
static sqlite3_stmt *cache_get(lua_State *L, ldb *d, int sqlidx,
                               const char *fname) {
    lua_getfenv(L, 1);
    lua_pushvalue(L, sqlidx);
    lua_rawget(L, -2);
    sqlite3_stmt *st = lua_touserdata(L, -1);
    lua_pop(L, 2);
    if (st)
        return st;
    if (d->ncached >= CACHE_MAX)
        cache_flush(L, d);
    size_t len;
    const char *sql = lua_tolstring(L, sqlidx, &len);
    const char *tail = NULL;
    if (sqlite3_prepare_v3(d->db, sql, (int)len, SQLITE_PREPARE_PERSISTENT, &st,
                           &tail) != SQLITE_OK)
        return NULL;
    while (tail && tail < sql + len &&
           (*tail == ' ' || *tail == '\t' || *tail == '\n' || *tail == '\r' ||
            *tail == ';'))
        tail++;
    if (tail && tail < sql + len) {
        sqlite3_finalize(st);
        luaL_error(L,
                   "sluice.store.%s: one SQL statement expected (use "
                   "db:script for several)",
                   fname);
    }
    if (!st) /* only whitespace or a comment: nothing to run */
        return NULL;
    lua_getfenv(L, 1);
    lua_pushvalue(L, sqlidx);
    lua_pushlightuserdata(L, st);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    d->ncached++;
    return st;
}

/* --- values --------------------------------------------------------------- */

static int is_blob(lua_State *L, int idx) {
    if (!lua_getmetatable(L, idx))
        return 0;
    luaL_getmetatable(L, BLOB_MT);
    int eq = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return eq;
}

/* Parses the whole of s[0..len) as a decimal int64; 0 when it is not one
 * or is out of range. */
static int parse_int64(const char *s, size_t len, sqlite3_int64 *out) {
    char buf[24];
    if (len == 0 || len >= sizeof(buf))
        return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno || *end)
        return 0;
    *out = v;
    return 1;
}

/* Binds an int64_t/uint64_t cdata at idx exactly: SQLITE_OK etc., -1 for
 * another cdata, -2 for a uint64_t beyond int64. */
static int bind_cdata(lua_State *L, sqlite3_stmt *st, int i, int idx) {
    idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
    lua_pushlightuserdata(L, &digits_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, idx);
    lua_call(L, 1, 1);
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    sqlite3_int64 v;
    int rc = !s ? -1 : parse_int64(s, len, &v) ? SQLITE_OK : -2;
    lua_pop(L, 1);
    if (rc != SQLITE_OK)
        return rc;
    return sqlite3_bind_int64(st, i, v);
}

static int bind_number(sqlite3_stmt *st, int i, lua_Number n) {
    if (n == floor(n) && n >= -9223372036854775808.0 &&
        n < 9223372036854775808.0)
        return sqlite3_bind_int64(st, i, (sqlite3_int64)n);
    return sqlite3_bind_double(st, i, n);
}

/* Binds the Lua value at idx to parameter i. Strings are bound without a
 * copy (SQLITE_STATIC): the caller keeps them alive until the statement is
 * reset and its bindings cleared. Returns an SQLite code, -1 for a value
 * of a type that cannot be bound, -2 for an integer beyond int64. type 'b'
 * binds strings as BLOB, 'i' as the INTEGER they spell. */
static int bind_value(lua_State *L, sqlite3_stmt *st, int i, int idx,
                      char type) {
    size_t len;
    const char *s;
    sqlite3_int64 v;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return sqlite3_bind_null(st, i);
    case LUA_TBOOLEAN:
        return sqlite3_bind_int(st, i, lua_toboolean(L, idx));
    case LUA_TNUMBER:
        return bind_number(st, i, lua_tonumber(L, idx));
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &len);
        if (type == 'b')
            return sqlite3_bind_blob64(st, i, s, len, SQLITE_STATIC);
        if (type == 'i')
            return parse_int64(s, len, &v) ? sqlite3_bind_int64(st, i, v) : -2;
        return sqlite3_bind_text64(st, i, s, len, SQLITE_STATIC, SQLITE_UTF8);
    case LUA_TTABLE:
        if (is_blob(L, idx)) {
            lua_rawgeti(L, idx, 1);
            s = lua_tolstring(L, -1, &len);
            lua_pop(L, 1); /* still anchored by the marker table */
            if (s)
                return sqlite3_bind_blob64(st, i, s, len, SQLITE_STATIC);
        }
        return -1;
    case LUA_TCDATA:
        return bind_cdata(L, st, i, idx);
    default:
        return -1;
    }
}

/* Binds arguments first..top to the statement's parameters ?1..?n. */
static void bind_args(lua_State *L, ldb *d, sqlite3_stmt *st, int first,
                      const char *fname) {
    int nargs = lua_gettop(L) - first + 1;
    int nparams = sqlite3_bind_parameter_count(st);
    if (nargs != nparams) {
        sqlite3_clear_bindings(st);
        luaL_error(L, "sluice.store.%s: %d parameter%s expected, got %d", fname,
                   nparams, nparams == 1 ? "" : "s", nargs);
    }
    for (int i = 1; i <= nargs; i++) {
        int rc = bind_value(L, st, i, first + i - 1, 0);
        if (rc == -2) {
            sqlite3_clear_bindings(st);
            luaL_error(L, "sluice.store.%s: bad parameter #%d (beyond int64)",
                       fname, i);
        } else if (rc == -1) {
            sqlite3_clear_bindings(st);
            luaL_error(L,
                       "sluice.store.%s: bad parameter #%d (%s cannot be "
                       "bound)",
                       fname, i, luaL_typename(L, first + i - 1));
        } else if (rc != SQLITE_OK) {
            sqlite3_clear_bindings(st);
            luaL_error(L, "sluice.store.%s: parameter #%d: %s", fname, i,
                       sqlite3_errmsg(d->db));
        }
    }
}

static void push_column(lua_State *L, sqlite3_stmt *st, int c) {
    switch (sqlite3_column_type(st, c)) {
    case SQLITE_INTEGER: {
        sqlite3_int64 v = sqlite3_column_int64(st, c);
        if (v > -9007199254740992LL && v < 9007199254740992LL) {
            lua_pushnumber(L, (lua_Number)v);
        } else {
            lua_pushlightuserdata(L, &box_key);
            lua_rawget(L, LUA_REGISTRYINDEX);
            lua_pushlightuserdata(L, &v);
            lua_call(L, 1, 1);
        }
        break;
    }
    case SQLITE_FLOAT:
        lua_pushnumber(L, sqlite3_column_double(st, c));
        break;
    case SQLITE_TEXT: {
        const unsigned char *s = sqlite3_column_text(st, c);
        lua_pushlstring(L, (const char *)s,
                        (size_t)sqlite3_column_bytes(st, c));
        break;
    }
    case SQLITE_BLOB: {
        const void *p = sqlite3_column_blob(st, c);
        int n = sqlite3_column_bytes(st, c);
        lua_pushlstring(L, p ? p : "", (size_t)n);
        break;
    }
    default:
        lua_pushnil(L);
    }
}

/* --- module functions ------------------------------------------------------
 */

/* open(path, busy_timeout_ms) -> db, or nil, message */
static int l_open(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int busy_ms = luaL_optint(L, 2, 5000);
    ldb *d = lua_newuserdata(L, sizeof(*d));
    memset(d, 0, sizeof(*d));
    luaL_getmetatable(L, DB_MT);
    lua_setmetatable(L, -2);
    lua_newtable(L);
    lua_setfenv(L, -2);
    int flags =
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, flags, NULL) != SQLITE_OK) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", path,
                        db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return 2;
    }
    sqlite3_extended_result_codes(db, 1);
    /* A fine-grained busy handler: the loop resumes within a fraction of
     * a ms of the lock's release (the checkpoint thread's RESTART). */
    d->busy.ms = busy_ms;
    sqlite3_busy_handler(db, sl_busy_wait, &d->busy);
    if (sqlite3_create_collation_v2(db, "sluice_decimal", SQLITE_UTF8, NULL,
                                    sl_store_decimal_collate,
                                    NULL) != SQLITE_OK) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return 2;
    }
    d->db = db;
    /* SQLite opens the file now: remember which file the path names, so a
     * later file_check() sees it deleted or replaced under us. */
    const char *fn = sqlite3_db_filename(db, "main");
    struct stat st;
    if (fn && *fn && stat(fn, &st) == 0) {
        d->has_file = 1;
        d->dev = st.st_dev;
        d->ino = st.st_ino;
    }
    return 1;
}

/* blob(s) -> a marker binding s as a BLOB rather than TEXT */
static int l_blob(lua_State *L) {
    luaL_checktype(L, 1, LUA_TSTRING);
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    luaL_getmetatable(L, BLOB_MT);
    lua_setmetatable(L, -2);
    return 1;
}

static int l_version(lua_State *L) {
    lua_pushstring(L, sqlite3_libversion());
    return 1;
}

/* --- methods ----------------------------------------------------------------
 */

/* Steps run only while the busy handler's nowait is what the caller asked
 * for: a misuse error raised before (binding) leaves it off. */
static void nowait_begin(ldb *d, int nowait) {
    d->busy.nowait = nowait;
    d->busy.refused = 0;
}

/* After a failed step: nil, message, and true when the statement failed
 * only because the busy handler refused to wait (nothing was done; the
 * caller may retry it). */
static int push_step_error(lua_State *L, ldb *d) {
    int refused = d->busy.refused;
    d->busy.refused = 0;
    push_sql_error(L, d);
    if (!refused)
        return 2;
    lua_pushboolean(L, 1);
    return 3;
}

/* db:exec(sql, ...) -> number of rows changed, or nil, message. Rows a
 * statement returns are stepped through and discarded. try_exec: the same,
 * but it does not wait for a lock: nil, message, true when it would have. */
static int exec_stmt(lua_State *L, int nowait) {
    ldb *d = check_db(L);
    luaL_checktype(L, 2, LUA_TSTRING);
    sqlite3_stmt *st = cache_get(L, d, 2, "exec");
    if (!st) {
        if (sqlite3_errcode(d->db) == SQLITE_OK) {
            lua_pushinteger(L, 0);
            return 1;
        }
        return push_sql_error(L, d);
    }
    bind_args(L, d, st, 3, "exec");
    int before = sqlite3_total_changes(d->db), rc;
    nowait_begin(d, nowait);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ;
    d->busy.nowait = 0;
    int after = sqlite3_total_changes(d->db);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE)
        return push_step_error(L, d);
    lua_pushinteger(L, after - before);
    return 1;
}

static int l_exec(lua_State *L) { return exec_stmt(L, 0); }
static int l_try_exec(lua_State *L) { return exec_stmt(L, 1); }

/* db:query(sql, ...) -> { {col = value, ...}, ... }, or nil, message;
 * try_query as try_exec. */
static int query_stmt(lua_State *L, int nowait) {
    ldb *d = check_db(L);
    luaL_checktype(L, 2, LUA_TSTRING);
    sqlite3_stmt *st = cache_get(L, d, 2, "query");
    if (!st) {
        if (sqlite3_errcode(d->db) == SQLITE_OK) {
            lua_newtable(L);
            return 1;
        }
        return push_sql_error(L, d);
    }
    bind_args(L, d, st, 3, "query");
    int ncols = sqlite3_column_count(st);
    luaL_checkstack(L, ncols + 6, "too many columns"); /* +2: push_column */
    int names = lua_gettop(L) + 1;
    for (int c = 0; c < ncols; c++)
        lua_pushstring(L, sqlite3_column_name(st, c));
    lua_newtable(L);
    int rows = lua_gettop(L), n = 0, rc;
    nowait_begin(d, nowait);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        lua_createtable(L, 0, ncols);
        for (int c = 0; c < ncols; c++) {
            if (sqlite3_column_type(st, c) == SQLITE_NULL)
                continue;
            lua_pushvalue(L, names + c);
            push_column(L, st, c);
            lua_rawset(L, -3);
        }
        lua_rawseti(L, rows, ++n);
    }
    d->busy.nowait = 0;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE)
        return push_step_error(L, d);
    return 1;
}

static int l_query(lua_State *L) { return query_stmt(L, 0); }
static int l_try_query(lua_State *L) { return query_stmt(L, 1); }

/* db:busy_timeout() -> the connection's busy timeout in ms */
static int l_busy_timeout(lua_State *L) {
    lua_pushinteger(L, check_db(L)->busy.ms);
    return 1;
}

/* can_wait() -> whether the caller is a task that may wait here (not in a
 * no-wait region, nothing Lua cannot yield across below it): what
 * sl_task_check_yieldable checks, as a boolean. */
static int l_can_wait(lua_State *L) {
    sl_task *t = sl_task_current(L);
    lua_pushboolean(L, t && !t->nowait && lua_isyieldable(L));
    return 1;
}

/* db:script(sql) -> true, or nil, message. Several statements, no
 * parameters, nothing cached: for schema set-up. */
static int l_script(lua_State *L) {
    ldb *d = check_db(L);
    const char *sql = luaL_checkstring(L, 2);
    char *msg = NULL;
    if (sqlite3_exec(d->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        lua_pushnil(L);
        lua_pushstring(L, sql_error(d, msg ? msg : sqlite3_errmsg(d->db)));
        sqlite3_free(msg);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* Binds row r of the flat value array at index 6 to st: column c of row r is
 * flat[r * ncols + c + 1]; types[c] == 'b' binds strings as BLOB. */
static int bind_row(lua_State *L, sqlite3_stmt *st, const char *types,
                    int ncols, int r) {
    for (int c = 0; c < ncols; c++) {
        lua_rawgeti(L, 6, r * ncols + c + 1);
        int rc = bind_value(L, st, c + 1, -1, types[c]);
        lua_pop(L, 1); /* the string stays anchored in the flat array */
        if (rc != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

/* db:upsert_rows(insert_sql, update_sql|nil, types, ncols, flat, nrows)
 *   -> inserted, updated, unchanged, or nil, message
 *
 * insert_sql is an INSERT ... ON CONFLICT DO NOTHING with parameters ?1..?n
 * in column order; update_sql an UPDATE of the non-key columns WHERE the key
 * matches AND some column differs, with the same parameter numbering (nil
 * when every column is in the key). A row the insert skipped is handed to
 * the update: one changed row means "updated", none "unchanged". The caller
 * owns the transaction. */
static int l_upsert_rows(lua_State *L) {
    ldb *d = check_db(L);
    luaL_checktype(L, 2, LUA_TSTRING);
    int has_upd = !lua_isnil(L, 3);
    if (has_upd)
        luaL_checktype(L, 3, LUA_TSTRING);
    size_t ntypes;
    const char *types = luaL_checklstring(L, 4, &ntypes);
    int ncols = luaL_checkint(L, 5);
    luaL_checktype(L, 6, LUA_TTABLE);
    int nrows = luaL_checkint(L, 7);
    luaL_argcheck(L, ncols > 0 && (size_t)ncols == ntypes, 5,
                  "column count does not match the types");
    lua_settop(L, 7);

    sqlite3_stmt *ins, *upd = NULL;
    unsigned gen;
    do { /* a cache flush while preparing the second frees the first */
        gen = d->gen;
        if (!(ins = cache_get(L, d, 2, "upsert")))
            return push_sql_error(L, d);
        if (has_upd && !(upd = cache_get(L, d, 3, "upsert")))
            return push_sql_error(L, d);
    } while (gen != d->gen);

    long inserted = 0, updated = 0, unchanged = 0;
    int rc = SQLITE_OK;
    for (int r = 0; r < nrows; r++) {
        if ((rc = bind_row(L, ins, types, ncols, r)) != SQLITE_OK)
            break;
        rc = sqlite3_step(ins);
        sqlite3_reset(ins);
        if (rc != SQLITE_DONE)
            break;
        if (sqlite3_changes(d->db) > 0) {
            inserted++;
            continue;
        }
        if (!upd) {
            unchanged++;
            continue;
        }
        if ((rc = bind_row(L, upd, types, ncols, r)) != SQLITE_OK)
            break;
        rc = sqlite3_step(upd);
        sqlite3_reset(upd);
        if (rc != SQLITE_DONE)
            break;
        if (sqlite3_changes(d->db) > 0)
            updated++;
        else
            unchanged++;
    }
    sqlite3_clear_bindings(ins);
    if (upd)
        sqlite3_clear_bindings(upd);
    if (rc != SQLITE_DONE && rc != SQLITE_OK) {
        if (rc == -1 || rc == -2)
            return luaL_error(L, "sluice.store.upsert: unbindable value");
        return push_sql_error(L, d);
    }
    lua_pushnumber(L, (lua_Number)inserted);
    lua_pushnumber(L, (lua_Number)updated);
    lua_pushnumber(L, (lua_Number)unchanged);
    return 3;
}

/* db:file_check() -> true, or nil and why: whether the path still names the
 * file this connection has open. A database whose file was deleted (or
 * replaced) goes on accepting writes into an unlinked inode that vanishes
 * at close, so callers check before they report anything stored. In-memory
 * and temporary databases always pass. */
static int l_file_check(lua_State *L) {
    ldb *d = check_db(L);
    if (!d->has_file) {
        lua_pushboolean(L, 1);
        return 1;
    }
    const char *fn = sqlite3_db_filename(d->db, "main");
    struct stat st;
    if (stat(fn, &st) != 0) {
        lua_pushnil(L);
        if (errno == ENOENT)
            lua_pushfstring(L, "database file %s was deleted", fn);
        else
            lua_pushfstring(L, "database file %s: %s", fn, strerror(errno));
        return 2;
    }
    if (st.st_dev != d->dev || st.st_ino != d->ino) {
        lua_pushnil(L);
        lua_pushfstring(L, "database file %s was replaced by another file", fn);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* pcall_nowait(fn, ...) -> true, fn's results | false, error
 *
 * pcall for db:transaction: fn runs in a no-wait region of the calling
 * task (task.h), so sleep, HTTP, Redis, limiter waits and the like raise
 * instead of letting other tasks run, and write, while the transaction is
 * open (and a task cannot be killed with BEGIN IMMEDIATE left open). A
 * plain coroutine.yield fails too: the C call is a yield boundary. */
static int l_pcall_nowait(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    int rc = sl_task_pcall_nowait(
        L, lua_gettop(L) - 1,
        "db:transaction (other tasks would run, and write, while it is "
        "open): wait before or after the transaction");
    lua_pushboolean(L, rc == 0);
    lua_insert(L, 1);
    return lua_gettop(L);
}

/* db:in_transaction() -> whether a transaction is open */
static int l_in_transaction(lua_State *L) {
    ldb *d = check_db(L);
    lua_pushboolean(L, !sqlite3_get_autocommit(d->db));
    return 1;
}

static int l_last_insert_rowid(lua_State *L) {
    ldb *d = check_db(L);
    lua_pushnumber(L, (lua_Number)sqlite3_last_insert_rowid(d->db));
    return 1;
}

static int l_is_open(lua_State *L) {
    ldb *d = luaL_checkudata(L, 1, DB_MT);
    lua_pushboolean(L, d->db != NULL);
    return 1;
}

/* The connection's authorizer while the checkpointer runs. Setting
 * wal_autocheckpoint (sqlite3_wal_autocheckpoint) replaces the WAL hook
 * that wakes the thread with SQLite's own: the thread would never run
 * again, silently. Such a statement fails to prepare, with
 * REFUSED_AUTOCHECKPOINT as its message; reading the pragma is allowed. */
static int authorize(void *arg, int action, const char *a, const char *b,
                     const char *dbname, const char *trigger) {
    ldb *d = arg;
    (void)dbname;
    (void)trigger;
    if (action == SQLITE_PRAGMA && b && a &&
        sqlite3_stricmp(a, "wal_autocheckpoint") == 0) {
        d->refused = 1;
        return SQLITE_DENY;
    }
    return SQLITE_OK;
}

/* db:start_checkpointer(wake_pages, limit_pages, retry_ms, busy_ms) -> true,
 * or nil, message: WAL checkpoints from now on run on a background thread
 * (core/checkpoint.h), not in this connection's commits, and setting
 * PRAGMA wal_autocheckpoint is refused (authorize). For a file database
 * already in WAL mode; a second call is misuse. */
static int l_start_checkpointer(lua_State *L) {
    ldb *d = check_db(L);
    sl_ckpt_opts o = {luaL_checkint(L, 2), luaL_checkint(L, 3),
                      luaL_checkint(L, 4), luaL_checkint(L, 5)};
    if (d->ckpt)
        return luaL_error(L, "sluice.store: checkpointer already started");
    char err[256];
    if (!(d->ckpt = sl_ckpt_start(d->db, &o, err, sizeof(err)))) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    /* statements cached before were prepared without the authorizer */
    cache_flush(L, d);
    sqlite3_set_authorizer(d->db, authorize, d);
    lua_pushboolean(L, 1);
    return 1;
}

static void set_count(lua_State *L, const char *k, double v) {
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

/* db:checkpoint_stats() -> {checkpoints, restarts, busy, errors,
 * wal_pages, copied_pages, wal_frames, last_error?}, or nil without a
 * checkpointer */
static int l_checkpoint_stats(lua_State *L) {
    ldb *d = check_db(L);
    if (!d->ckpt) {
        lua_pushnil(L);
        return 1;
    }
    sl_ckpt_stats st;
    sl_ckpt_stats_get(d->ckpt, &st);
    lua_createtable(L, 0, 8);
    set_count(L, "checkpoints", (double)st.checkpoints);
    set_count(L, "restarts", (double)st.restarts);
    set_count(L, "busy", (double)st.busy);
    set_count(L, "errors", (double)st.errors);
    set_count(L, "wal_pages", st.wal_pages);
    set_count(L, "wal_frames", st.wal_frames);
    set_count(L, "copied_pages", st.copied_pages);
    if (st.last_error[0]) {
        lua_pushstring(L, st.last_error);
        lua_setfield(L, -2, "last_error");
    }
    return 1;
}

/* db:close() -> true. Stops and joins the checkpointer, finalizes every
 * cached statement, then closes the connection (an open transaction is
 * rolled back; the last connection to a WAL database checkpoints it).
 * Idempotent. */
static int l_close(lua_State *L) {
    ldb *d = luaL_checkudata(L, 1, DB_MT);
    if (d->db) {
        sl_ckpt_stop(d->ckpt);
        d->ckpt = NULL;
        cache_flush(L, d);
        sqlite3_close_v2(d->db);
        d->db = NULL;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_tostring(lua_State *L) {
    ldb *d = luaL_checkudata(L, 1, DB_MT);
    if (d->db)
        lua_pushfstring(L, "sluice.store.db (%s)",
                        sqlite3_db_filename(d->db, "main"));
    else
        lua_pushliteral(L, "sluice.store.db (closed)");
    return 1;
}

int luaopen_sluice_store(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"exec", l_exec},
        {"query", l_query},
        {"try_exec", l_try_exec},
        {"try_query", l_try_query},
        {"busy_timeout", l_busy_timeout},
        {"script", l_script},
        {"upsert_rows", l_upsert_rows},
        {"in_transaction", l_in_transaction},
        {"file_check", l_file_check},
        {"last_insert_rowid", l_last_insert_rowid},
        {"is_open", l_is_open},
        {"start_checkpointer", l_start_checkpointer},
        {"checkpoint_stats", l_checkpoint_stats},
        {"close", l_close},
        {NULL, NULL},
    };
    static const luaL_Reg fns[] = {
        {"open", l_open},         {"blob", l_blob},
        {"version", l_version},   {"pcall_nowait", l_pcall_nowait},
        {"can_wait", l_can_wait}, {NULL, NULL},
    };
    if (luaL_loadbuffer(L, FFI_HELPERS, sizeof(FFI_HELPERS) - 1,
                        "=sluice._store") != 0)
        lua_error(L);
    lua_call(L, 0, 2);
    lua_pushlightuserdata(L, &digits_key);
    lua_insert(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    lua_pushlightuserdata(L, &box_key);
    lua_insert(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    luaL_newmetatable(L, BLOB_MT);
    lua_pop(L, 1);
    luaL_newmetatable(L, DB_MT);
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
