/* lua_ws.c -- sluice._ws: WebSocket connections for tasks (core/ws_conn.c)
 *
 * A connection is a userdata holding a core handle. connect suspends the
 * calling task until the upgrade is done or failed; receive returns a
 * message at once when one is waiting and otherwise suspends its task until
 * one arrives, the connection ends, or its timeout passes; close waits for
 * the closing handshake. send never waits (the core queues to the socket).
 * The core's notify callback, run from the loop, pushes the results onto
 * the waiting tasks' threads and queues them.
 *
 * Waiters: at most one task connecting (the creator), one receiving (a
 * second receiver raises) and one closing. While any waits, the userdata
 * is anchored in the registry (a yielded native's arguments are dropped,
 * DESIGN.md §7); the anchor goes with the last waiter. Killing a task
 * that waits in connect frees the connection (nothing half-made outlives
 * it); killing a receiver or a closer only forgets it (the close handshake
 * is bounded by its own timeout in the core).
 *
 * __gc (and close on a connection no task uses any more) frees the core
 * handle: an open connection is told 1001 "going away" on the way out.
 */
#include <event2/event.h>
#include <event2/event_struct.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "core/timeout.h"
#include "core/ws_conn.h"
#include "host/modules.h"
#include "host/runtime.h"
#include "host/task.h"
#include "redis_dns.h"

#define CONN_MT "sluice.ws.conn"

typedef struct wsconn {
    sl_ws *ws;           /* NULL once freed */
    sl_task *connecting; /* the task in connect */
    sl_task *receiver;   /* the task in receive */
    sl_task *closer;     /* the task in close */
    int holds;           /* waiters */
    int anchor;          /* registry ref of the userdata while held */
    struct event rtimer; /* the receiver's timeout */
} wsconn;

/* --- waiters ------------------------------------------------------------ */

static void hold(lua_State *L, wsconn *p, int idx) {
    if (p->holds++ == 0) {
        lua_pushvalue(L, idx);
        p->anchor = luaL_ref(L, LUA_REGISTRYINDEX);
    }
}

static void unhold(wsconn *p) {
    if (--p->holds == 0) {
        luaL_unref(sl_rt.L, LUA_REGISTRYINDEX, p->anchor);
        p->anchor = LUA_NOREF;
    }
}

/* Pushes the oldest message (data, kind) onto L and drops it. */
static int push_message(lua_State *L, wsconn *p) {
    const char *data;
    size_t len;
    int binary;
    if (!sl_ws_peek(p->ws, &data, &len, &binary))
        return 0;
    lua_pushlstring(L, data, len);
    if (binary)
        lua_pushliteral(L, "binary");
    else
        lua_pushliteral(L, "text");
    sl_ws_pop(p->ws);
    return 2;
}

static int push_failure(lua_State *L, const char *why) {
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

static int ended(const wsconn *p) {
    sl_ws_state s = sl_ws_get_state(p->ws);
    return s == SL_WS_ENDED || s == SL_WS_CLOSING;
}

/* The core says something changed: wake whoever it concerns. Results are
 * pushed while the userdata is still held (they allocate, and may collect). */
static void on_notify(sl_ws *ws, void *privdata) {
    wsconn *p = privdata;
    sl_ws_state s = sl_ws_get_state(ws);
    if (p->connecting && s != SL_WS_CONNECTING) {
        sl_task *t = p->connecting;
        lua_State *co = sl_task_thread(t);
        sl_ws_stats st;
        sl_ws_get_stats(ws, &st);
        int n = 1;
        p->connecting = NULL;
        if (st.connected_at > 0) /* it opened, even if it ended since */
            lua_rawgeti(co, LUA_REGISTRYINDEX, p->anchor);
        else
            n = push_failure(co, sl_ws_reason(ws));
        unhold(p);
        sl_task_wake(t, n);
    }
    if (p->receiver) {
        sl_task *t = p->receiver;
        lua_State *co = sl_task_thread(t);
        int n = push_message(co, p);
        if (!n && ended(p))
            n = push_failure(co, sl_ws_reason(ws));
        if (n) {
            p->receiver = NULL;
            event_del(&p->rtimer);
            unhold(p);
            sl_task_wake(t, n);
        }
    }
    if (p->closer && s == SL_WS_ENDED) {
        sl_task *t = p->closer;
        p->closer = NULL;
        lua_pushboolean(sl_task_thread(t), 1);
        unhold(p);
        sl_task_wake(t, 1);
    }
}

static void on_rtimeout(evutil_socket_t fd, short what, void *arg) {
    wsconn *p = arg;
    (void)fd;
    (void)what;
    if (!p->receiver)
        return;
    sl_task *t = p->receiver;
    p->receiver = NULL;
    push_failure(sl_task_thread(t), "timeout");
    unhold(p);
    sl_task_wake(t, 2);
}

static void cancel_connect(sl_task *t, void *op) {
    wsconn *p = op;
    (void)t;
    p->connecting = NULL;
    sl_ws_free(p->ws);
    p->ws = NULL;
    unhold(p);
}

static void cancel_receive(sl_task *t, void *op) {
    wsconn *p = op;
    (void)t;
    p->receiver = NULL;
    event_del(&p->rtimer);
    unhold(p);
}

static void cancel_close(sl_task *t, void *op) {
    wsconn *p = op;
    (void)t;
    p->closer = NULL;
    unhold(p);
}

/* --- Lua primitives ------------------------------------------------------ */

/* Sockets still draining a close frame when the process exits are freed
 * before the event base (runtime.h); the hook is registered per runtime. */
static int hooked;

static void close_all(void) {
    sl_ws_free_all();
    hooked = 0;
}

static wsconn *check_conn(lua_State *L) {
    return luaL_checkudata(L, 1, CONN_MT);
}

static size_t check_size(lua_State *L, int idx) {
    lua_Number n = luaL_checknumber(L, idx);
    luaL_argcheck(L, n >= 1 && n <= 1e15, idx, "size out of range");
    return (size_t)n;
}

/* connect(host, port, path, tls, headers|nil, protocols|nil, timeout,
 *         max_message, max_buffer, ping_interval, ping_timeout,
 *         ca_file|nil, verify, server_name|nil) -> conn | nil, err
 * Arguments are checked by sluice.ws; host names resolve with the loop's
 * evdns resolver (the one sluice.redis uses). */
static int l_connect(lua_State *L) {
    sl_ws_opts o;
    memset(&o, 0, sizeof(o));
    o.host = luaL_checkstring(L, 1);
    o.port = (int)luaL_checkinteger(L, 2);
    o.path = luaL_checkstring(L, 3);
    o.tls = lua_toboolean(L, 4);
    o.headers = luaL_optstring(L, 5, NULL);
    o.protocols = luaL_optstring(L, 6, NULL);
    o.timeout = luaL_checknumber(L, 7);
    o.max_message = check_size(L, 8);
    o.max_buffer = check_size(L, 9);
    o.ping_interval = luaL_checknumber(L, 10);
    o.ping_timeout = luaL_checknumber(L, 11);
    o.ca_file = luaL_optstring(L, 12, NULL);
    o.verify = lua_toboolean(L, 13);
    o.server_name = luaL_optstring(L, 14, NULL);
    luaL_argcheck(L, o.port >= 1 && o.port <= 65535, 2, "bad port");
    sl_task *t = sl_task_check_yieldable(L, "sluice.ws connect");
    if (!hooked && sl_runtime_on_close(close_all) != 0)
        return luaL_error(L, "sluice.ws: too many close hooks");
    hooked = 1;
    lua_settop(L, 14);
    wsconn *p = lua_newuserdata(L, sizeof(*p));
    memset(p, 0, sizeof(*p));
    p->anchor = LUA_NOREF;
    evtimer_assign(&p->rtimer, sl_rt.base, on_rtimeout, p);
    luaL_getmetatable(L, CONN_MT);
    lua_setmetatable(L, -2);
    char err[256];
    p->ws = sl_ws_connect(sl_rt.base, sl_redis_dns_loop(), &o, on_notify, p,
                          err, sizeof(err));
    if (!p->ws)
        return push_failure(L, err);
    p->connecting = t;
    hold(L, p, 15);
    return sl_task_suspend(L, t, cancel_connect, p);
}

/* receive(conn, timeout) -> data, kind | nil, "timeout" | nil, err
 * timeout < 0: none; 0: only what is already there. */
static int l_receive(lua_State *L) {
    wsconn *p = check_conn(L);
    double timeout = luaL_optnumber(L, 2, -1);
    sl_task *t = sl_task_check_yieldable(L, "sluice.ws receive");
    if (p->receiver)
        return luaL_error(L, "sluice.ws: another task is already receiving on "
                             "this connection");
    if (!p->ws)
        return push_failure(L, "closed");
    int n = push_message(L, p);
    if (n)
        return n;
    if (ended(p))
        return push_failure(L, sl_ws_reason(p->ws));
    if (timeout == 0)
        return push_failure(L, "timeout");
    p->receiver = t;
    hold(L, p, 1);
    struct timeval tv;
    if (timeout > 0 && sl_timeout_tv(timeout, &tv)) /* math.huge: none */
        evtimer_add(&p->rtimer, &tv);
    return sl_task_suspend(L, t, cancel_receive, p);
}

/* send(conn, data, binary) -> true | nil, err */
static int l_send(lua_State *L) {
    wsconn *p = check_conn(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    int binary = lua_toboolean(L, 3);
    char err[256];
    if (!p->ws)
        return push_failure(L, "closed");
    if (sl_ws_send(p->ws, data, len, binary, err, sizeof(err)) != 0)
        return push_failure(L, err);
    lua_pushboolean(L, 1);
    return 1;
}

/* close(conn, code, reason, timeout) -> true
 * Waits for the end of the handshake when called from a task that can
 * wait; otherwise starts it and returns. */
static int l_close(lua_State *L) {
    wsconn *p = check_conn(L);
    int code = (int)luaL_checkinteger(L, 2);
    size_t len;
    const char *reason = luaL_checklstring(L, 3, &len);
    double timeout = luaL_checknumber(L, 4);
    luaL_argcheck(L, len <= 123, 3, "reason longer than 123 bytes");
    lua_pushboolean(L, 1);
    if (!p->ws)
        return 1;
    sl_ws_close(p->ws, code, reason, len, timeout);
    sl_task *t = sl_task_current(L);
    if (sl_ws_get_state(p->ws) == SL_WS_ENDED || p->closer || !t || t->nowait ||
        !lua_isyieldable(L))
        return 1;
    lua_pop(L, 1);
    p->closer = t;
    hold(L, p, 1);
    return sl_task_suspend(L, t, cancel_close, p);
}

/* abort(conn): starts the closing handshake with 1001 and returns (the
 * owner task ended); the handle itself goes with the GC. */
static int l_abort(lua_State *L) {
    wsconn *p = check_conn(L);
    if (p->ws)
        sl_ws_close(p->ws, 1001, "", 0, 1.0);
    return 0;
}

static const char *state_name(const wsconn *p) {
    if (!p->ws)
        return "closed";
    switch (sl_ws_get_state(p->ws)) {
    case SL_WS_CONNECTING:
        return "connecting";
    case SL_WS_OPEN:
        return "open";
    case SL_WS_CLOSING:
        return "closing";
    default:
        return "closed";
    }
}

static void set_num(lua_State *L, const char *k, double v) {
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

/* stats(conn) -> {messages_in, bytes_in, messages_out, bytes_out,
 * buffered, queued, pings, pongs, pings_in, stalls, connected_at} */
static int l_stats(lua_State *L) {
    wsconn *p = check_conn(L);
    sl_ws_stats st;
    memset(&st, 0, sizeof(st));
    if (p->ws)
        sl_ws_get_stats(p->ws, &st);
    lua_createtable(L, 0, 11);
    set_num(L, "messages_in", (double)st.messages_in);
    set_num(L, "bytes_in", (double)st.bytes_in);
    set_num(L, "messages_out", (double)st.messages_out);
    set_num(L, "bytes_out", (double)st.bytes_out);
    set_num(L, "buffered", (double)st.buffered);
    set_num(L, "queued", (double)st.queued);
    set_num(L, "pings", (double)st.pings);
    set_num(L, "pongs", (double)st.pongs);
    set_num(L, "pings_in", (double)st.pings_in);
    set_num(L, "stalls", (double)st.stalls);
    set_num(L, "connected_at", st.connected_at);
    return 1;
}

/* info(conn) -> {state, protocol, error} (error: the end reason or nil) */
static int l_info(lua_State *L) {
    wsconn *p = check_conn(L);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, state_name(p));
    lua_setfield(L, -2, "state");
    lua_pushstring(L, p->ws ? sl_ws_protocol(p->ws) : "");
    lua_setfield(L, -2, "protocol");
    if (p->ws && sl_ws_reason(p->ws)[0]) {
        lua_pushstring(L, sl_ws_reason(p->ws));
        lua_setfield(L, -2, "error");
    }
    return 1;
}

static int l_gc(lua_State *L) {
    wsconn *p = check_conn(L);
    sl_ws_free(p->ws);
    p->ws = NULL;
    event_del(&p->rtimer);
    return 0;
}

static int l_tostring(lua_State *L) {
    lua_pushfstring(L, "websocket (%s)", state_name(check_conn(L)));
    return 1;
}

int luaopen_sluice_ws(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"connect", l_connect}, {"receive", l_receive}, {"send", l_send},
        {"close", l_close},     {"abort", l_abort},     {"stats", l_stats},
        {"info", l_info},       {NULL, NULL},
    };
    luaL_newmetatable(L, CONN_MT);
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
