/* server_exchange.c -- sluice._server's exchanges: one request and its reply
 *
 * An exchange is the userdata a handler answers through (respond, or
 * start/write/finish for a streamed reply, abort, state). It owns its
 * evhttp_request only until the reply is finished on our side, and stays
 * listed on its server while evhttp still knows about it; the rules are in
 * server_internal.h. A handler task that ends without answering gets a 500
 * sent for it here.
 */
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/log.h"
#include "host/runtime.h"
#include "server_internal.h"

#define EXCHANGE_MT "sluice.server.request"

static void ex_unanchor_if_unused(exchange *x) {
    if (x->listed || x->task_live || x->ref == LUA_NOREF || !sl_rt.L)
        return;
    luaL_unref(sl_rt.L, LUA_REGISTRYINDEX, x->ref);
    x->ref = LUA_NOREF;
}

/* Takes x off its server's list. evhttp will not mention it again. */
static void ex_unlist(exchange *x) {
    if (!x->listed)
        return;
    server *s = x->srv;
    if (x->prev)
        x->prev->next = x->next;
    else
        s->list = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->prev = x->next = NULL;
    x->listed = 0;
    x->srv = NULL;
    x->evcon = NULL;
    x->conn = NULL;
    s->active--;
    sl_server_maybe_finalize_later(s);
}

/* The request is no longer ours to touch: the connection is gone. A request
 * evhttp detached from its connection is freed here (nobody else will). */
static void ex_lost(exchange *x) {
    if (x->req && !evhttp_request_get_connection(x->req))
        evhttp_request_free(x->req);
    x->req = NULL;
    if (x->state == EX_SENT)
        x->state = EX_DONE;
    else if (x->state != EX_DONE)
        x->state = EX_CLOSED;
    ex_unlist(x);
}

/* evhttp: the reply was written in full; the request is freed next. */
static void on_complete(struct evhttp_request *req, void *arg) {
    exchange *x = arg;
    (void)req;
    x->req = NULL;
    x->state = EX_DONE;
    if (x->conn)
        sl_server_conn_arm(x->conn); /* the next request on this connection */
    ex_unlist(x);
    ex_unanchor_if_unused(x);
}

/* evhttp: a connection of server arg is being freed. */
void sl_server_on_conn_close(struct evhttp_connection *evcon, void *arg) {
    server *s = arg;
    conn *c = sl_server_conn_find(s, evcon);
    if (c)
        sl_server_conn_drop(c);
    exchange *x = s->list;
    while (x) {
        exchange *next = x->next;
        if (x->evcon == evcon) {
            ex_lost(x);
            ex_unanchor_if_unused(x);
        }
        x = next;
    }
}

void sl_server_set_header(struct evhttp_request *req, const char *k,
                          const char *v) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_remove_header(h, k);
    evhttp_add_header(h, k, v);
}

const char *sl_server_reason(int status) {
    switch (status) {
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    }
    return status < 400 ? "OK" : "Error";
}

/* evhttp never sends a body, nor a Content-Length, in a reply to CONNECT,
 * and keeps the connection open after it. That reply is written here
 * instead, and the connection closed after it. */
static void ex_send_raw(exchange *x, struct evhttp_request *req, int status,
                        const char *body, size_t len) {
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    struct evbuffer *out = bufferevent_get_output(bev);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n", status,
                        sl_server_reason(status));
    for (struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next)
        if (strcasecmp(kv->key, "Content-Length") != 0 &&
            strcasecmp(kv->key, "Connection") != 0)
            evbuffer_add_printf(out, "%s: %s\r\n", kv->key, kv->value);
    evbuffer_add_printf(out, "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                        len);
    evbuffer_add(out, body, len);
    evutil_socket_t fd = bufferevent_getfd(bev);
    if (fd >= 0)
        evbuffer_write(out, fd); /* a few hundred bytes: one write */
    x->state = EX_SENT;
    evhttp_connection_free(
        evcon); /* sl_server_on_conn_close: answered, unlisted */
    ex_unlist(x);
    x->state = EX_DONE;
}

/* Sends a complete reply and lets go of the request. */
static void ex_send(exchange *x, int status, const char *body, size_t len) {
    struct evhttp_request *req = x->req;
    x->req = NULL;
    if (!evhttp_request_get_connection(req)) {
        evhttp_request_free(req); /* what evhttp_send_reply would do */
        x->state = EX_CLOSED;
        ex_unlist(x);
        return;
    }
    if (x->connect) {
        ex_send_raw(x, req, status, body, len);
        return;
    }
    if (x->srv && x->srv->closing)
        sl_server_set_header(req, "Connection", "close");
    if (x->head) {
        char n[32];
        snprintf(n, sizeof(n), "%zu", len);
        if (!evhttp_find_header(evhttp_request_get_output_headers(req),
                                "Content-Length"))
            sl_server_set_header(req, "Content-Length", n);
    } else if (len > 0) {
        evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
    }
    x->state = EX_SENT;
    evhttp_send_reply(req, status, NULL, NULL); /* may not free it at once */
}

/* Closes the connection without (finishing) a reply. What was already
 * queued is written first, as far as the socket takes it without blocking,
 * so that a streamed reply arrives truncated rather than empty. */
static void ex_abort(exchange *x) {
    struct evhttp_connection *evcon = evhttp_request_get_connection(x->req);
    if (!evcon) {
        ex_lost(x);
        return;
    }
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd >= 0)
        evbuffer_write(bufferevent_get_output(bev), fd);
    x->req = NULL; /* freed with its connection */
    x->state = EX_CLOSED;
    evhttp_connection_free(evcon); /* runs sl_server_on_conn_close */
    ex_unlist(x);                  /* in case it did not */
}

/* The handler's task ended. An unanswered request gets a 500; a streamed
 * reply that was never finished is cut off. */
static void on_task_done(sl_task *t, int ok, void *privdata) {
    exchange *x = privdata;
    (void)t;
    (void)ok;
    x->task_live = 0;
    if (x->req && x->state == EX_NEW) {
        static const char msg[] = "{\"error\":\"internal server error\"}";
        sl_logf(SL_LOG_WARNING,
                "sluice.server: handler task ended without answering; "
                "sent 500");
        evhttp_clear_headers(evhttp_request_get_output_headers(x->req));
        sl_server_set_header(x->req, "Content-Type", "application/json");
        ex_send(x, 500, msg, sizeof(msg) - 1);
    } else if (x->req && x->state == EX_STREAMING) {
        ex_abort(x);
    }
    ex_unanchor_if_unused(x);
}

static exchange *check_ex(lua_State *L) {
    return luaL_checkudata(L, 1, EXCHANGE_MT);
}

static int push_closed(lua_State *L, const exchange *x) {
    lua_pushnil(L);
    /* "answered": a reply was sent or begun; "closed": the exchange is
     * over without one (or the stream was cut). */
    lua_pushstring(L, x->state == EX_CLOSED ? "closed" : "answered");
    return 2;
}

/* Adds the headers in the flat list at idx ({name, value, name, value, ...},
 * validated by server.lua). Raises on a header evhttp refuses. */
static void add_headers(lua_State *L, int idx, struct evhttp_request *req) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_clear_headers(h);
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    int n = (int)lua_objlen(L, idx);
    for (int i = 1; i + 1 <= n; i += 2) {
        lua_rawgeti(L, idx, i);
        lua_rawgeti(L, idx, i + 1);
        const char *k = lua_tostring(L, -2);
        const char *v = lua_tostring(L, -1);
        if (!k || !v || evhttp_add_header(h, k, v) != 0)
            luaL_error(L, "invalid header '%s'", k ? k : "?");
        lua_pop(L, 2);
    }
}

static int check_status(lua_State *L, int idx) {
    lua_Number n = luaL_checknumber(L, idx);
    luaL_argcheck(L, n == floor(n) && n >= 100 && n <= 599, idx,
                  "status must be an integer in [100, 599]");
    return (int)n;
}

/* x:respond(status, headers, body) -> true | nil, "closed" | "answered" */
static int ex_respond(lua_State *L) {
    exchange *x = check_ex(L);
    int status = check_status(L, 2);
    size_t len = 0;
    const char *body = luaL_optlstring(L, 4, "", &len);
    if (!x->req || x->state != EX_NEW)
        return push_closed(L, x);
    add_headers(L, 3, x->req);
    ex_send(x, status, body, len);
    lua_pushboolean(L, 1);
    return 1;
}

/* x:start(status, headers) -> true | nil, why */
static int ex_start(lua_State *L) {
    exchange *x = check_ex(L);
    int status = check_status(L, 2);
    if (!x->req || x->state != EX_NEW)
        return push_closed(L, x);
    if (!evhttp_request_get_connection(x->req)) {
        ex_lost(x);
        return push_closed(L, x);
    }
    add_headers(L, 3, x->req);
    if (x->srv && x->srv->closing)
        sl_server_set_header(x->req, "Connection", "close");
    const char *cl = evhttp_find_header(
        evhttp_request_get_output_headers(x->req), "Content-Length");
    x->declared = cl ? strtoll(cl, NULL, 10) : -1;
    x->written = 0;
    x->state = EX_STREAMING;
    evhttp_send_reply_start(x->req, status, NULL);
    lua_pushboolean(L, 1);
    return 1;
}

/* x:write(chunk) -> true | nil, why. Queues the chunk; it is written as
 * the socket accepts it (no back-pressure: the chunk is copied). */
static int ex_write(lua_State *L) {
    exchange *x = check_ex(L);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    if (!x->req || x->state != EX_STREAMING)
        return push_closed(L, x);
    if (!evhttp_request_get_connection(x->req)) {
        ex_lost(x);
        return push_closed(L, x);
    }
    if (x->declared >= 0 && x->written + (long long)len > x->declared) {
        lua_pushnil(L);
        lua_pushstring(L, "body longer than its Content-Length");
        return 2;
    }
    if (len > 0 && !x->head) {
        struct evbuffer *b = evbuffer_new();
        if (!b || evbuffer_add(b, s, len) != 0) {
            if (b)
                evbuffer_free(b);
            return luaL_error(L, "out of memory");
        }
        evhttp_send_reply_chunk(x->req, b);
        evbuffer_free(b);
    }
    x->written += (long long)len;
    lua_pushboolean(L, 1);
    return 1;
}

/* x:finish() -> true | nil, why. Ends a streamed reply. If fewer bytes
 * were written than a declared Content-Length, the connection is closed
 * instead (the client sees a truncated body). */
static int ex_finish(lua_State *L) {
    exchange *x = check_ex(L);
    if (!x->req || x->state != EX_STREAMING)
        return push_closed(L, x);
    if (x->declared >= 0 && x->written < x->declared) {
        ex_abort(x);
        lua_pushnil(L);
        lua_pushstring(L, "body shorter than its Content-Length; closed");
        return 2;
    }
    struct evhttp_request *req = x->req;
    x->req = NULL;
    x->state = EX_SENT;
    if (!evhttp_request_get_connection(req)) {
        x->state = EX_CLOSED;
        ex_unlist(x);
    }
    evhttp_send_reply_end(req); /* may complete (and free req) at once */
    lua_pushboolean(L, 1);
    return 1;
}

/* x:abort() -> true | nil, why */
static int ex_abort_l(lua_State *L) {
    exchange *x = check_ex(L);
    if (!x->req || (x->state != EX_NEW && x->state != EX_STREAMING))
        return push_closed(L, x);
    ex_abort(x);
    lua_pushboolean(L, 1);
    return 1;
}

static const char *ex_state_name(const exchange *x) {
    switch (x->state) {
    case EX_NEW:
        return "new";
    case EX_STREAMING:
        return "streaming";
    case EX_SENT:
    case EX_DONE:
        return "answered";
    case EX_CLOSED:
        return "closed";
    }
    return "?";
}

/* x:state() -> "new" | "streaming" | "answered" | "closed" */
static int ex_state_l(lua_State *L) {
    lua_pushstring(L, ex_state_name(check_ex(L)));
    return 1;
}

static int ex_gc(lua_State *L) {
    exchange *x = check_ex(L);
    /* Reachable while listed only at lua_close, before the server's __gc
     * or after it (which unlisted us). The connection, and with it an
     * attached request, is freed by evhttp_free. */
    if (x->listed) {
        if (x->req && !evhttp_request_get_connection(x->req))
            evhttp_request_free(x->req);
        x->req = NULL;
        x->state = EX_CLOSED;
        ex_unlist(x);
    }
    return 0;
}

static int ex_tostring(lua_State *L) {
    exchange *x = check_ex(L);
    lua_pushfstring(L, "sluice.server request (%s)", ex_state_name(x));
    return 1;
}

/* --- creation, listing, and the Lua methods' metatable -------------------- */

void sl_server_exchange_open(lua_State *L) {
    static const luaL_Reg ex_methods[] = {
        {"respond", ex_respond},
        {"start", ex_start},
        {"write", ex_write},
        {"finish", ex_finish},
        {"abort", ex_abort_l},
        {"state", ex_state_l},
        {NULL, NULL},
    };
    luaL_newmetatable(L, EXCHANGE_MT);
    lua_pushcfunction(L, ex_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, ex_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_newtable(L);
    luaL_register(L, NULL, ex_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

exchange *sl_server_exchange_new(lua_State *L) {
    exchange *x = lua_newuserdata(L, sizeof(*x));
    memset(x, 0, sizeof(*x));
    x->ref = LUA_NOREF;
    x->declared = -1;
    luaL_getmetatable(L, EXCHANGE_MT);
    lua_setmetatable(L, -2);
    return x;
}

void sl_server_exchange_list(exchange *x, server *s, struct evhttp_request *req,
                             conn *cn, sl_task *task) {
    x->req = req;
    x->evcon = evhttp_request_get_connection(req);
    x->head = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD;
    x->connect = evhttp_request_get_command(req) == EVHTTP_REQ_CONNECT;
    x->conn = cn;
    x->srv = s;
    x->listed = 1;
    x->task_live = 1;
    x->next = s->list;
    if (s->list)
        s->list->prev = x;
    s->list = x;
    s->active++;
    task->on_done = on_task_done;
    task->on_done_data = x;
    evhttp_request_set_on_complete_cb(req, on_complete, x);
    evhttp_connection_set_closecb(x->evcon, sl_server_on_conn_close, s);
}

void sl_server_exchange_cut_all(server *s) {
    while (s->list) {
        exchange *x = s->list;
        if (x->req && !evhttp_request_get_connection(x->req))
            evhttp_request_free(x->req);
        x->req = NULL;
        if (x->state != EX_DONE)
            x->state = x->state == EX_SENT ? EX_DONE : EX_CLOSED;
        ex_unlist(x);
    }
}
