/* lua_server.c -- sluice._server: an HTTP server on libevent's evhttp
 *
 * Every request becomes a task: the evhttp request callback copies what the
 * handler needs (method, path, query string, headers, body, peer) into a Lua
 * table, wraps the evhttp_request in an "exchange" userdata and spawns the
 * server's dispatch function (lua/sluice/server.lua) as a task with both. No
 * Lua code runs inside an evhttp callback; spawning only queues the task.
 *
 * This file: servers (listen, close, stats) and the request callback.
 * Exchanges are in server_exchange.c, connections in server_conn.c; the
 * lifetime rules they share are in server_internal.h.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <lauxlib.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "core/log.h"
#include "core/timeout.h"
#include "host/modules.h"
#include "host/runtime.h"
#include "server_internal.h"

#define SERVER_MT "sluice.server"
#define MAX_HEADERS_SIZE (64 * 1024)

/* --- the request callback ------------------------------------------------- */
static const char *method_name(enum evhttp_cmd_type t) {
    switch (t) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "UNKNOWN";
}

/* Pushes the request's headers as a table keyed by lower-case name;
 * repeated headers are joined with ", " (RFC 9110, 5.3). */
static void push_headers(lua_State *L, struct evhttp_request *req) {
    lua_newtable(L);
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    char name[256];
    for (struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        size_t n = strlen(kv->key);
        if (n >= sizeof(name))
            continue;
        for (size_t i = 0; i < n; i++) {
            char c = kv->key[i];
            name[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
        }
        lua_pushlstring(L, name, n);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushstring(L, kv->value);
        } else {
            lua_pushliteral(L, ", ");
            lua_pushstring(L, kv->value);
            lua_concat(L, 3);
        }
        lua_rawset(L, -3);
    }
}

typedef struct accept_ctx {
    server *srv;
    struct evhttp_request *req;
    exchange *x;
    sl_task *task;
} accept_ctx;

/* Runs under lua_cpcall: builds the exchange and the request table and
 * spawns the dispatch task. Nothing is linked to evhttp until it returns. */
static int accept_request(lua_State *L) {
    accept_ctx *c = lua_touserdata(L, 1);
    struct evhttp_request *req = c->req;
    lua_settop(L, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->srv->dispatch_ref);

    exchange *x = sl_server_exchange_new(L);
    c->x = x;

    lua_createtable(L, 0, 10);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    lua_pushstring(L, method_name(cmd));
    lua_setfield(L, -2, "method");
    const char *uri = evhttp_request_get_uri(req);
    lua_pushstring(L, uri ? uri : "/");
    lua_setfield(L, -2, "uri");
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *path = u ? evhttp_uri_get_path(u) : NULL;
    if (!path || !*path)
        path = "/";
    size_t plen = 0;
    char *decoded = evhttp_uridecode(path, 0, &plen);
    if (decoded) {
        lua_pushlstring(L, decoded, plen);
        free(decoded);
    } else {
        lua_pushstring(L, path);
    }
    lua_setfield(L, -2, "path");
    const char *query = u ? evhttp_uri_get_query(u) : NULL;
    lua_pushstring(L, query ? query : "");
    lua_setfield(L, -2, "query");
    push_headers(L, req);
    lua_setfield(L, -2, "headers");
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t blen = evbuffer_get_length(in);
    if (blen > 0)
        lua_pushlstring(L, (const char *)evbuffer_pullup(in, -1), blen);
    else
        lua_pushliteral(L, "");
    lua_setfield(L, -2, "body");
    char *host = NULL;
    ev_uint16_t port = 0;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &host,
                               &port);
    if (host) {
        lua_pushstring(L, host);
        lua_setfield(L, -2, "remote_ip");
        lua_pushinteger(L, port);
        lua_setfield(L, -2, "remote_port");
        if (strchr(host, ':'))
            lua_pushfstring(L, "[%s]:%d", host, (int)port);
        else
            lua_pushfstring(L, "%s:%d", host, (int)port);
        lua_setfield(L, -2, "remote_addr");
    }

    lua_pushvalue(L, 2);
    x->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    c->task = sl_task_spawn(L, 2);
    return 0;
}

/* evhttp writes a reply's headers and body separately; with Nagle on, the
 * body of a second reply on a kept-alive connection waits for the client's
 * delayed ACK of the headers (40 ms on Linux). Cheap enough per request. */
static void no_delay(struct evhttp_connection *evcon) {
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Answers req with {"error": msg} and closes its connection. */
static void reject(struct evhttp_request *req, int status, const char *msg) {
    struct evbuffer *b = evhttp_request_get_output_buffer(req);
    evhttp_clear_headers(evhttp_request_get_output_headers(req));
    sl_server_set_header(req, "Content-Type", "application/json");
    sl_server_set_header(req, "Connection", "close");
    evbuffer_add_printf(b, "{\"error\":\"%s\"}", msg);
    evhttp_send_reply(req, status, NULL, NULL);
}

/* Several Content-Length headers that disagree: evhttp reads the body by
 * the first, a proxy in front may have used another (request smuggling). */
static int conflicting_length(struct evhttp_request *req) {
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *first = NULL;
    for (struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, "Content-Length") != 0)
            continue;
        if (!first)
            first = kv->value;
        else if (strcmp(first, kv->value) != 0)
            return 1;
    }
    return 0;
}

static void on_request(struct evhttp_request *req, void *arg) {
    server *s = arg;
    lua_State *L = sl_rt.L;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    conn *cn = evcon ? sl_server_conn_find(s, evcon) : NULL;
    if (cn && cn->deadline)
        event_del(cn->deadline); /* the request is in: no deadline */
    if (s->closing || !L) {
        sl_server_set_header(req, "Connection", "close");
        evhttp_send_error(req, 503, NULL);
        return;
    }
    if (conflicting_length(req)) {
        reject(req, 400, "conflicting Content-Length headers");
        return;
    }
    if (s->max_in_flight > 0 && s->active >= s->max_in_flight) {
        reject(req, 503, "too many requests in flight");
        return;
    }
    accept_ctx c = {.srv = s, .req = req};
    int top = lua_gettop(L);
    if (lua_cpcall(L, accept_request, &c) != 0) {
        sl_logf(SL_LOG_ERROR, "sluice.server: cannot handle a request: %s",
                lua_tostring(L, -1));
        lua_settop(L, top);
        if (c.x && c.x->ref != LUA_NOREF && !c.task) {
            luaL_unref(L, LUA_REGISTRYINDEX, c.x->ref);
            c.x->ref = LUA_NOREF;
        }
        if (!c.task) {
            evhttp_send_error(req, 500, NULL);
            return;
        }
    }
    lua_settop(L, top);
    sl_server_exchange_list(c.x, s, req, cn, c.task);
    s->requests++;
    no_delay(evhttp_request_get_connection(req));
}

/* --- servers -------------------------------------------------------------- */

/* Frees the evhttp (closing idle connections) and releases the loop
 * reference and the anchor. Never called from inside an evhttp callback. */
static void server_finalize(server *s) {
    if (!s->http)
        return;
    struct evhttp *http = s->http;
    s->closing = 1;
    sl_accept_guard_free(s->guard);
    s->guard = NULL;
    s->bound = NULL;
    sl_server_exchange_cut_all(s);
    s->http = NULL;
    evhttp_free(http); /* sl_server_on_conn_close for every live connection */
    sl_server_conn_free_all(s);
    free((char *)s->rules.token);
    s->rules.token = NULL;
    if (s->finalize_ev) {
        event_free(s->finalize_ev);
        s->finalize_ev = NULL;
    }
    if (s->new_conn_ev) {
        event_free(s->new_conn_ev);
        s->new_conn_ev = NULL;
    }
    if (sl_rt.L) {
        luaL_unref(sl_rt.L, LUA_REGISTRYINDEX, s->dispatch_ref);
        luaL_unref(sl_rt.L, LUA_REGISTRYINDEX, s->self_ref);
    }
    s->dispatch_ref = s->self_ref = LUA_NOREF;
    sl_loop_unref();
}

static void finalize_cb(evutil_socket_t fd, short what, void *arg) {
    server *s = arg;
    (void)fd;
    (void)what;
    if (s->closing && s->active == 0)
        server_finalize(s);
}

void sl_server_maybe_finalize_later(server *s) {
    if (s->closing && s->active == 0 && s->finalize_ev)
        event_active(s->finalize_ev, EV_TIMEOUT, 0);
}

static server *check_server(lua_State *L) {
    return luaL_checkudata(L, 1, SERVER_MT);
}

/* The number limits[name]: nil gives 0 (none). Raises unless it is in
 * [0, max), and for a count, an integer. */
static lua_Number limit_field(lua_State *L, const char *name, lua_Number max,
                              int integer) {
    lua_getfield(L, 3, name);
    lua_Number v = lua_isnil(L, -1) ? 0 : luaL_checknumber(L, -1);
    lua_pop(L, 1);
    if (!(v >= 0 && v < max) || (integer && v != floor(v)))
        luaL_error(L, "bad limit '%s'", name);
    return v;
}

/* listen(host, port, limits, dispatch) -> srv, port | nil, err. limits:
 * { max_body, timeout, max_connections, max_in_flight, request_timeout },
 * validated by server.lua; 0 or nil is no limit, except for timeout. */
static int l_listen(lua_State *L) {
    const char *host = luaL_checkstring(L, 1);
    lua_Number port = luaL_checknumber(L, 2);
    luaL_argcheck(L, port == floor(port) && port >= 0 && port <= 65535, 2,
                  "port must be an integer in [0, 65535]");
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_Number max_body = limit_field(L, "max_body", 9e15, 1);
    lua_Number timeout = limit_field(L, "timeout", 1e9, 0);
    luaL_argcheck(L, timeout > 0, 3, "timeout must be a finite number > 0");
    lua_Number max_conns = limit_field(L, "max_connections", 1e9, 1);
    lua_Number max_in_flight = limit_field(L, "max_in_flight", 1e9, 1);
    lua_Number request_timeout = limit_field(L, "request_timeout", 1e9, 0);
    lua_getfield(L, 3, "auth_token");
    size_t token_len = 0;
    const char *token =
        lua_isnil(L, -1) ? NULL : lua_tolstring(L, -1, &token_len);
    unsigned auth_methods = 0;
    lua_getfield(L, 3, "auth_methods");
    if (lua_istable(L, -1))
        for (int i = 1; i <= (int)lua_objlen(L, -1); i++) {
            lua_rawgeti(L, -1, i);
            size_t ml = 0;
            const char *m = lua_tolstring(L, -1, &ml);
            auth_methods |= m ? sl_gate_method(m, ml) : 0;
            lua_pop(L, 1);
        }
    luaL_checktype(L, 4, LUA_TFUNCTION);
    if (sl_rt.stopping) {
        lua_pushnil(L);
        lua_pushstring(L, "shutting down");
        return 2;
    }

    server *s = lua_newuserdata(L, sizeof(*s));
    memset(s, 0, sizeof(*s));
    s->dispatch_ref = s->self_ref = LUA_NOREF;
    s->max_connections = (long)max_conns;
    s->max_in_flight = (long)max_in_flight;
    if (request_timeout > 0)
        sl_timeout_tv(request_timeout, &s->request_timeout);
    s->rules.max_body = (unsigned long long)max_body;
    if (token && token_len > 0) {
        char *copy = malloc(token_len + 1);
        if (!copy)
            return luaL_error(L, "out of memory");
        memcpy(copy, token, token_len + 1);
        s->rules.token = copy;
        s->rules.token_len = token_len;
        s->rules.auth_methods = auth_methods;
    }
    luaL_getmetatable(L, SERVER_MT);
    lua_setmetatable(L, -2);

    s->http = evhttp_new(sl_rt.base);
    if (!s->http)
        return luaL_error(L, "out of memory");
    errno = 0;
    s->bound = evhttp_bind_socket_with_handle(s->http, host, (uint16_t)port);
    if (!s->bound) {
        int e = errno;
        evhttp_free(s->http);
        s->http = NULL;
        free((char *)s->rules.token);
        s->rules.token = NULL;
        lua_pushnil(L);
        lua_pushfstring(L, "cannot listen on %s:%d: %s", host, (int)port,
                        e ? strerror(e) : "cannot bind");
        return 2;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    evutil_socket_t fd = evhttp_bound_socket_get_fd(s->bound);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6)
            s->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        else
            s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    char what[96];
    snprintf(what, sizeof(what), "server %s:%d", host, s->port);
    s->guard =
        sl_accept_guard_new(evhttp_bound_socket_get_listener(s->bound), what);
    evhttp_set_gencb(s->http, on_request, s);
    evhttp_set_allowed_methods(
        s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                     EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                     EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_max_body_size(s->http, (ev_ssize_t)max_body);
    evhttp_set_max_headers_size(s->http, MAX_HEADERS_SIZE);
    evhttp_set_default_content_type(s->http, "text/plain; charset=utf-8");
    /* Read the rest of an oversized body before answering 413, so that the
     * client gets the answer rather than a reset. */
    evhttp_set_flags(s->http, EVHTTP_SERVER_LINGERING_CLOSE);
    struct timeval tv;
    sl_timeout_tv(timeout, &tv); /* finite: the wrapper refuses math.huge */
    evhttp_set_timeout_tv(s->http, &tv);
    s->finalize_ev = event_new(sl_rt.base, -1, 0, finalize_cb, s);
    s->new_conn_ev = event_new(sl_rt.base, -1, 0, sl_server_conn_setup_cb, s);
    evhttp_set_bevcb(s->http, sl_server_conn_new_bev, s);

    lua_pushvalue(L, 4);
    s->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    s->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    sl_loop_ref();
    lua_pushinteger(L, s->port);
    return 2;
}

/* srv:close() -> true if it was listening. Stops accepting at once; the
 * requests in flight finish, then the server lets go of the loop. */
static int srv_close(lua_State *L) {
    server *s = check_server(L);
    int was = s->http && !s->closing;
    if (was) {
        s->closing = 1;
        if (s->bound) {
            sl_accept_guard_free(s->guard);
            s->guard = NULL;
            evhttp_del_accept_socket(s->http, s->bound);
            s->bound = NULL;
        }
        if (s->active == 0)
            server_finalize(s);
    }
    lua_pushboolean(L, was);
    return 1;
}

/* srv:stats() -> { requests = n, active = n, connections = n,
 * refused = n, open = bool, closed = bool } */
static int srv_stats(lua_State *L) {
    server *s = check_server(L);
    lua_createtable(L, 0, 6);
    lua_pushnumber(L, (lua_Number)s->connections);
    lua_setfield(L, -2, "connections");
    lua_pushnumber(L, (lua_Number)s->refused);
    lua_setfield(L, -2, "refused");
    lua_pushnumber(L, (lua_Number)s->requests);
    lua_setfield(L, -2, "requests");
    lua_pushnumber(L, (lua_Number)s->active);
    lua_setfield(L, -2, "active");
    lua_pushboolean(L, s->http && !s->closing);
    lua_setfield(L, -2, "open");
    lua_pushboolean(L, s->http == NULL);
    lua_setfield(L, -2, "closed");
    return 1;
}

static int srv_gc(lua_State *L) {
    server *s = check_server(L);
    server_finalize(s);
    return 0;
}

static int srv_tostring(lua_State *L) {
    server *s = check_server(L);
    lua_pushfstring(L, "sluice.server (port %d, %s)", s->port,
                    !s->http     ? "closed"
                    : s->closing ? "closing"
                                 : "open");
    return 1;
}

int luaopen_sluice_server(lua_State *L) {
    static const luaL_Reg srv_methods[] = {
        {"close", srv_close},
        {"stats", srv_stats},
        {NULL, NULL},
    };
    static const luaL_Reg fns[] = {
        {"listen", l_listen},
        {NULL, NULL},
    };
    luaL_newmetatable(L, SERVER_MT);
    lua_pushcfunction(L, srv_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, srv_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_newtable(L);
    luaL_register(L, NULL, srv_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    sl_server_exchange_open(L);

    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
