/* lua_pg.c -- sluice._pg: PostgreSQL connections for tasks (core/pg.c)
 *
 * A connection is a userdata holding a core handle. connect, query and copy
 * start the core operation and suspend the calling task; the core's done
 * callback pushes the results onto the task's thread and queues it. One
 * operation at a time per connection: a second caller gets nil, "connection
 * is busy", kind "busy" (sluice.pg's callers serialise their own use).
 *
 * Killing a waiting task abandons its operation (core: the statement is
 * cancelled on the server and the connection dropped), so nothing outlives
 * the task. While a task waits, the userdata is anchored in the registry
 * (the yielded native's arguments are dropped, see DESIGN.md §7); the
 * anchor goes with the wake or the cancel.
 *
 * Values: bool -> boolean, int2/int4/oid and float4/float8 -> number,
 * everything else (int8 and numeric too: sluice.pg turns those into exact
 * values) -> the server's text; SQL NULL -> absent from the row.
 */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "core/pg.h"
#include "core/strbuf.h"
#include "host/modules.h"
#include "host/runtime.h"
#include "host/task.h"

#define CONN_MT "sluice.pg.conn"
#define MAX_PARAMS 65535 /* the protocol's limit */

typedef struct pgconn {
    sl_pg *pg;
    sl_task *task;  /* the waiting task, or NULL */
    int anchor;     /* registry ref of the userdata while a task waits */
    int connecting; /* the operation is the connect */
} pgconn;

enum { OID_BOOL = 16, OID_INT2 = 21, OID_INT4 = 23, OID_OID = 26 };
enum { OID_FLOAT4 = 700, OID_FLOAT8 = 701 };

static void release(pgconn *p) {
    p->task = NULL;
    luaL_unref(sl_rt.L, LUA_REGISTRYINDEX, p->anchor);
    p->anchor = LUA_NOREF;
}

static void push_value(lua_State *L, const PGresult *r, int row, int col,
                       Oid type) {
    const char *v = PQgetvalue(r, row, col);
    switch (type) {
    case OID_BOOL:
        lua_pushboolean(L, v[0] == 't');
        break;
    case OID_INT2:
    case OID_INT4:
    case OID_OID:
        lua_pushnumber(L, (lua_Number)strtoll(v, NULL, 10));
        break;
    case OID_FLOAT4:
    case OID_FLOAT8:
        lua_pushnumber(L, strtod(v, NULL)); /* "NaN", "Infinity" too */
        break;
    default:
        lua_pushlstring(L, v, (size_t)PQgetlength(r, row, col));
    }
}

/* { fields = {...}, types = {oid...}, rows = {{name = value}...},
 *   command = "INSERT 0 3", count = 3 | nil } */
static void push_result(lua_State *L, const PGresult *r) {
    int nf = PQnfields(r), nt = PQntuples(r);
    lua_createtable(L, 0, 5);
    lua_createtable(L, nf, 0);
    lua_createtable(L, nf, 0);
    for (int j = 0; j < nf; j++) {
        lua_pushstring(L, PQfname(r, j));
        lua_rawseti(L, -3, j + 1);
        lua_pushnumber(L, (lua_Number)PQftype(r, j));
        lua_rawseti(L, -2, j + 1);
    }
    lua_setfield(L, -3, "types");
    lua_setfield(L, -2, "fields");
    lua_createtable(L, nt, 0);
    for (int i = 0; i < nt; i++) {
        lua_createtable(L, 0, nf);
        for (int j = 0; j < nf; j++) {
            if (PQgetisnull(r, i, j))
                continue;
            push_value(L, r, i, j, PQftype(r, j));
            lua_setfield(L, -2, PQfname(r, j));
        }
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "rows");
    lua_pushstring(L, PQcmdStatus((PGresult *)r));
    lua_setfield(L, -2, "command");
    const char *n = PQcmdTuples((PGresult *)r);
    if (n[0]) {
        lua_pushnumber(L, (lua_Number)strtoll(n, NULL, 10));
        lua_setfield(L, -2, "count");
    }
}

/* nil, message, kind [, sqlstate] */
static int push_failure(lua_State *L, const sl_pg_outcome *o, int connecting) {
    lua_pushnil(L);
    lua_pushstring(L, o->message);
    switch (o->status) {
    case SL_PG_ESERVER:
        lua_pushliteral(L, "server");
        lua_pushstring(L, o->sqlstate);
        return 4;
    case SL_PG_ETIMEOUT:
        lua_pushliteral(L, "timeout");
        return 3;
    default:
        if (connecting)
            lua_pushliteral(L, "connect");
        else
            lua_pushliteral(L, "closed");
        return 3;
    }
}

/* Runs from the loop when the operation ends (PQ callbacks are not Lua's). */
static void on_done(sl_pg *pg, const sl_pg_outcome *o, void *privdata) {
    pgconn *p = privdata;
    (void)pg;
    sl_task *t = p->task;
    if (!t)
        return;
    lua_State *co = sl_task_thread(t);
    int n;
    if (o->status == SL_PG_OK) {
        if (!o->res) { /* connected: the userdata is below the results */
            lua_rawgeti(co, LUA_REGISTRYINDEX, p->anchor);
            n = 1;
        } else if (PQresultStatus(o->res) == PGRES_COMMAND_OK &&
                   strncmp(PQcmdStatus(o->res), "COPY", 4) == 0) {
            lua_pushnumber(co, (lua_Number)o->copied);
            n = 1;
        } else {
            push_result(co, o->res);
            n = 1;
        }
    } else {
        n = push_failure(co, o, p->connecting);
    }
    p->connecting = 0;
    release(p);
    sl_task_wake(t, n);
}

static void cancel_op(sl_task *t, void *op) {
    pgconn *p = op;
    (void)t;
    p->task = NULL;
    if (p->pg)
        sl_pg_abandon(p->pg);
    release(p);
}

static int wait_on(lua_State *L, pgconn *p, sl_task *t, int idx) {
    lua_pushvalue(L, idx);
    p->anchor = luaL_ref(L, LUA_REGISTRYINDEX);
    p->task = t;
    return sl_task_suspend(L, t, cancel_op, p);
}

/* connect(conninfo, timeout) -> conn | nil, err, "connect"|"timeout" */
static int l_connect(lua_State *L) {
    const char *info = luaL_checkstring(L, 1);
    double timeout = luaL_checknumber(L, 2);
    sl_task *t = sl_task_check_yieldable(L, "sluice.pg connect");
    pgconn *p = lua_newuserdata(L, sizeof(*p));
    p->pg = NULL;
    p->task = NULL;
    p->anchor = LUA_NOREF;
    p->connecting = 1;
    luaL_getmetatable(L, CONN_MT);
    lua_setmetatable(L, -2);
    char err[512];
    p->pg =
        sl_pg_connect(sl_rt.base, info, timeout, on_done, p, err, sizeof(err));
    if (!p->pg) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        lua_pushliteral(L, "connect");
        return 3;
    }
    return wait_on(L, p, t, lua_gettop(L));
}

static pgconn *check_conn(lua_State *L) {
    return luaL_checkudata(L, 1, CONN_MT);
}

static int refused(lua_State *L, pgconn *p, const char *err) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushstring(L, p->pg && sl_pg_get_state(p->pg) == SL_PG_CLOSED ? "closed"
                                                                      : "busy");
    return 3;
}

/* query(conn, sql, params, n, timeout) -> result | nil, err, kind[, state]
 * params[1..n]: strings, or false for NULL (the wrapper formats values) */
static int l_query(lua_State *L) {
    pgconn *p = check_conn(L);
    const char *sql = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    int n = (int)luaL_checkinteger(L, 4);
    double timeout = luaL_checknumber(L, 5);
    luaL_argcheck(L, n >= 0 && n <= MAX_PARAMS, 4, "too many parameters");
    const char **values = NULL;
    if (n > 0) {
        values = lua_newuserdata(L, sizeof(*values) * (size_t)n);
        for (int i = 0; i < n; i++) {
            lua_rawgeti(L, 3, i + 1);
            if (lua_type(L, -1) == LUA_TSTRING)
                values[i] = lua_tostring(L, -1); /* kept alive by params */
            else if (lua_isnil(L, -1) || lua_toboolean(L, -1) == 0)
                values[i] = NULL;
            else
                return luaL_error(L, "parameter %d: string expected", i + 1);
            lua_pop(L, 1);
        }
    }
    sl_task *t = sl_task_check_yieldable(L, "sluice.pg query");
    if (!p->pg)
        return refused(L, p, "connection closed: closed");
    char err[512];
    if (sl_pg_query(p->pg, sql, n, values, timeout, on_done, p, err,
                    sizeof(err)) != 0)
        return refused(L, p, err);
    return wait_on(L, p, t, 1);
}

/* copy(conn, sql, data, timeout) -> rows | nil, err, kind[, sqlstate] */
static int l_copy(lua_State *L) {
    pgconn *p = check_conn(L);
    const char *sql = luaL_checkstring(L, 2);
    size_t len;
    const char *data = luaL_checklstring(L, 3, &len);
    double timeout = luaL_checknumber(L, 4);
    sl_task *t = sl_task_check_yieldable(L, "sluice.pg copy");
    if (!p->pg)
        return refused(L, p, "connection closed: closed");
    char err[512];
    if (sl_pg_copy(p->pg, sql, data, len, timeout, on_done, p, err,
                   sizeof(err)) != 0)
        return refused(L, p, err);
    return wait_on(L, p, t, 1);
}

/* copy_escape(s) -> s as a field of COPY's text format */
static int l_copy_escape(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    strbuf b = {0};
    if (sl_pg_copy_escape(&b, s, n) != 0)
        return luaL_error(L, "sluice.pg: out of memory");
    lua_pushlstring(L, b.p ? b.p : "", b.len);
    sb_free(&b);
    return 1;
}

/* quote_ident(s) -> "s" with quotes doubled */
static int l_quote_ident(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    strbuf b = {0};
    if (sl_pg_quote_ident(&b, s, n) != 0) {
        sb_free(&b);
        return luaL_argerror(L, 1, "identifier with a NUL byte");
    }
    lua_pushlstring(L, b.p, b.len);
    sb_free(&b);
    return 1;
}

/* status(conn) -> "connecting"|"idle"|"busy"|"closed", closed reason,
 *                 server version, backend pid */
static int l_status(lua_State *L) {
    pgconn *p = check_conn(L);
    static const char *const names[] = {"connecting", "idle", "busy", "closed"};
    if (!p->pg) {
        lua_pushliteral(L, "closed");
        lua_pushliteral(L, "closed");
        return 2;
    }
    lua_pushstring(L, names[sl_pg_get_state(p->pg)]);
    lua_pushstring(L, sl_pg_closed_reason(p->pg));
    lua_pushinteger(L, sl_pg_server_version(p->pg));
    lua_pushinteger(L, sl_pg_backend_pid(p->pg));
    return 4;
}

/* close(conn): idempotent; a task waiting on the connection is woken with
 * nil, "connection closed: closed", "closed". */
static int l_close(lua_State *L) {
    pgconn *p = check_conn(L);
    if (!p->pg)
        return 0;
    sl_task *t = p->task;
    sl_pg_free(p->pg); /* its done is not called */
    p->pg = NULL;
    if (t) {
        lua_State *co = sl_task_thread(t);
        release(p);
        lua_pushnil(co);
        lua_pushliteral(co, "connection closed: closed");
        lua_pushliteral(co, "closed");
        sl_task_wake(t, 3);
    }
    return 0;
}

static int l_gc(lua_State *L) {
    pgconn *p = check_conn(L);
    /* no task waits: a waiter anchors the userdata */
    sl_pg_free(p->pg);
    p->pg = NULL;
    return 0;
}

static int l_cancels(lua_State *L) {
    lua_pushnumber(L, (lua_Number)sl_pg_cancels_sent());
    return 1;
}

int luaopen_sluice_pg(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"query", l_query}, {"copy", l_copy}, {"status", l_status},
        {"close", l_close}, {NULL, NULL},
    };
    static const luaL_Reg funcs[] = {
        {"connect", l_connect},
        {"copy_escape", l_copy_escape},
        {"quote_ident", l_quote_ident},
        {"cancels_sent", l_cancels},
        {NULL, NULL},
    };
    luaL_newmetatable(L, CONN_MT);
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_register(L, NULL, funcs);
    return 1;
}
