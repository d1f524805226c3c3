/* lua_server.c -- sluice._server: an HTTP server on libevent's evhttp
 *
 * Every request becomes a task: the evhttp request callback copies what the
 * handler needs (method, path, query string, headers, body, peer) into a Lua
 * table, wraps the evhttp_request in an "exchange" userdata and spawns the
 * server's dispatch function (lua/sluice/server.lua) as a task with both. No
 * Lua code runs inside an evhttp callback; spawning only queues the task.
 *
 * Lifetime rules (this is where evhttp bites):
 *
 * - evhttp owns each evhttp_request. It frees it right after the reply has
 *   been written (on_complete runs just before), when the connection fails
 *   after we finished replying, and with every connection in evhttp_free.
 *   When the peer goes away while we have not replied yet (EOF, timeout),
 *   evhttp detaches the request from its connection (evcon becomes NULL)
 *   and leaves freeing it to whoever replies; we free it in the connection's
 *   close callback instead, since the handler may never reply.
 * - So an exchange holds its evhttp_request pointer only while the reply is
 *   not finished on our side (states NEW and STREAMING). The pointer is set
 *   to NULL *before* any call that may free the request (send_reply,
 *   send_reply_end, connection_free), and by the close callback. Every
 *   method on an exchange whose pointer is NULL is a no-op that returns
 *   nil, "closed" (or nil, "answered").
 * - The server keeps every exchange evhttp still knows about on a list
 *   (states NEW, STREAMING, SENT). An exchange leaves the list in on_complete
 *   (fully written) or in the connection's close callback (connection gone).
 *   Its userdata is anchored in the registry while it is listed or its task
 *   is live, so neither callback ever sees freed memory.
 * - A server holds one loop reference and is anchored from listen until it
 *   is finalized. close() stops accepting at once; requests in flight
 *   finish (their replies carry Connection: close), then the evhttp is
 *   freed. evhttp_free is never called from inside an evhttp callback: the
 *   final step is deferred to an event of its own.
 * - If a handler task ends without answering (it failed, or it was killed),
 *   the exchange answers 500 itself, or closes the connection if a streamed
 *   reply had begun.
 * - Each accepted connection gets a record (conn) from the bufferevent
 *   callback on; it is set up by an event of ours once evhttp has a
 *   connection object, and freed in the connection's close callback (the
 *   only place evhttp reports a connection's end). The record holds the
 *   request deadline and a gate (core/http_gate.h) fed from an input-buffer
 *   callback, which runs before evhttp's read callback: a head the gate
 *   refuses is drained before evhttp can parse it and answered on the
 *   socket directly. Connections evhttp closes or we close
 *   (evhttp_connection_free, from our own events or a task, never from an
 *   evhttp callback) are forgotten through the same close callback.
 * - At lua_close every __gc may run in any order: a server's __gc frees the
 *   evhttp after cutting all its exchanges loose; an exchange's __gc unlinks
 *   itself. Userdata memory stays valid until all finalizers have run.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
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

#include "core/http_gate.h"
#include "core/log.h"
#include "core/timeout.h"
#include "host/accept_guard.h"
#include "host/modules.h"
#include "host/runtime.h"
#include "host/task.h"

#define SERVER_MT "sluice.server"
#define EXCHANGE_MT "sluice.server.request"
#define MAX_HEADERS_SIZE (64 * 1024)

typedef struct server server;
typedef struct exchange exchange;
typedef struct conn conn;

typedef enum ex_state {
    EX_NEW,       /* received, not answered */
    EX_STREAMING, /* reply started, body in progress */
    EX_SENT,      /* reply handed to evhttp, still being written */
    EX_DONE,      /* reply fully written */
    EX_CLOSED     /* connection gone or aborted before the reply ended */
} ex_state;

struct exchange {
    struct evhttp_request *req; /* NULL once evhttp may free it */
    struct evhttp_connection *evcon;
    server *srv; /* while listed */
    ex_state state;
    int head;              /* a HEAD request: never send a body */
    int connect;           /* CONNECT: evhttp would drop the body */
    conn *conn;            /* its connection's record, while listed */
    long long declared;    /* streamed Content-Length, or -1 */
    long long written;     /* streamed body bytes */
    int ref;               /* registry anchor, or LUA_NOREF */
    int listed, task_live; /* what the anchor is for */
    exchange *prev, *next; /* the server's list */
};

/* One accepted connection. Created (pending) in the bufferevent callback,
 * before evhttp has a connection object; set up from new_conn_ev once it
 * has; freed in the connection's close callback. The deadline bounds how
 * long the connection may take to deliver a whole request. */
struct conn {
    struct bufferevent *bev;         /* evhttp's; ours to ref while pending */
    struct evhttp_connection *evcon; /* NULL while pending */
    server *srv;
    struct event *deadline;
    conn *prev, *next; /* the server's pending or live list */
    sl_gate gate;      /* what arrives, checked before evhttp reads it */
    struct evbuffer_cb_entry *gate_cb; /* on bev's input, while bev lives */
    int discarding; /* a request was refused: input is dropped */
};

struct server {
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    sl_accept_guard *guard; /* while bound: backs accepts off on EMFILE */
    struct event *finalize_ev;
    int dispatch_ref; /* the Lua function spawned per request */
    int self_ref;     /* anchor until finalized */
    int closing;
    int port;
    long requests; /* since listen */
    long active;   /* listed exchanges */
    exchange *list;
    /* limits (0: none) */
    long max_connections, max_in_flight;
    struct timeval request_timeout; /* zero: none */
    long connections;               /* live connections */
    long refused;  /* connections over max_connections, since listen */
    conn *pending; /* accepted, not set up yet */
    conn *conns;   /* set up */
    struct event *new_conn_ev;
    sl_gate_rules rules; /* rules.token is malloc'd, freed at finalize */
};

/* --- exchanges ------------------------------------------------------------ */
static void server_maybe_finalize_later(server *s);
static void conn_arm(conn *c);
static conn *conn_find(server *s, struct evhttp_connection *evcon);
static struct evhttp_connection *conn_drop(conn *c);

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
    server_maybe_finalize_later(s);
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
        conn_arm(x->conn); /* the next request on this connection */
    ex_unlist(x);
    ex_unanchor_if_unused(x);
}

/* evhttp: a connection of server arg is being freed. */
static void on_conn_close(struct evhttp_connection *evcon, void *arg) {
    server *s = arg;
    conn *c = conn_find(s, evcon);
    if (c)
        conn_drop(c);
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

static void set_header(struct evhttp_request *req, const char *k,
                       const char *v) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_remove_header(h, k);
    evhttp_add_header(h, k, v);
}

static const char *reason(int status) {
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
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n", status, reason(status));
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
    evhttp_connection_free(evcon); /* on_conn_close: answered, unlisted */
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
        set_header(req, "Connection", "close");
    if (x->head) {
        char n[32];
        snprintf(n, sizeof(n), "%zu", len);
        if (!evhttp_find_header(evhttp_request_get_output_headers(req),
                                "Content-Length"))
            set_header(req, "Content-Length", n);
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
    evhttp_connection_free(evcon); /* runs on_conn_close */
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
        set_header(x->req, "Content-Type", "application/json");
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
        set_header(x->req, "Connection", "close");
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

/* --- connections ---------------------------------------------------------- */

static void conn_link(conn **head, conn *c) {
    c->prev = NULL;
    c->next = *head;
    if (*head)
        (*head)->prev = c;
    *head = c;
}

static void conn_unlink(conn **head, conn *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void conn_free(conn *c) {
    if (c->gate_cb) /* only while c->bev is alive */
        evbuffer_remove_cb_entry(bufferevent_get_input(c->bev), c->gate_cb);
    if (c->deadline)
        event_free(c->deadline);
    sl_gate_free(&c->gate);
    free(c);
}

static conn *conn_find(server *s, struct evhttp_connection *evcon) {
    for (conn *c = s->conns; c; c = c->next)
        if (c->evcon == evcon)
            return c;
    return NULL;
}

/* Starts the clock for the next request on c (from accept, or from the
 * end of the previous reply). */
static void conn_arm(conn *c) {
    server *s = c->srv;
    if (c->discarding)
        return; /* closing already */
    if (c->deadline &&
        (s->request_timeout.tv_sec || s->request_timeout.tv_usec))
        event_add(c->deadline, &s->request_timeout);
}

/* Forgets a live connection; returns its evhttp connection, which the
 * caller frees unless evhttp is freeing it already. */
static struct evhttp_connection *conn_drop(conn *c) {
    server *s = c->srv;
    struct evhttp_connection *evcon = c->evcon;
    conn_unlink(&s->conns, c);
    s->connections--;
    for (exchange *x = s->list; x; x = x->next)
        if (x->conn == c)
            x->conn = NULL;
    conn_free(c);
    return evcon;
}

/* The connection did not deliver a whole request in time (a slow or idle
 * client, headers never finished, a body trickled): close it. */
static void deadline_cb(evutil_socket_t fd, short what, void *arg) {
    conn *c = arg;
    (void)fd;
    (void)what;
    evhttp_connection_free(conn_drop(c));
}

/* Over max_connections: answer 503 and close at once. What the client sent
 * already is read first, so that closing does not reset the connection
 * before it sees the answer. */
static void refuse(conn *c) {
    static const char body[] = "{\"error\":\"too many connections\"}";
    char msg[256];
    int n = snprintf(msg, sizeof(msg),
                     "HTTP/1.1 503 Service Unavailable\r\n"
                     "Content-Type: application/json\r\n"
                     "Content-Length: %zu\r\nRetry-After: 1\r\n"
                     "Connection: close\r\n\r\n%s",
                     sizeof(body) - 1, body);
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd >= 0) {
        char sink[4096];
        for (int i = 0; i < 16; i++)
            if (recv(fd, sink, sizeof(sink), MSG_DONTWAIT) <= 0)
                break;
        if (send(fd, msg, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
            sl_logf(SL_LOG_DEBUG, "sluice.server: cannot send 503: %s",
                    strerror(errno));
    }
    c->srv->refused++;
    evhttp_connection_free(conn_drop(c));
}

/* A request was refused on its head (http_gate.h): answer it on the
 * socket, drop the rest of the input, and close once the client has gone
 * or the deadline passes. evhttp never sees the head: it was drained before
 * evhttp's read callback, which runs after this, could parse it. */
static void refuse_request(conn *c, const sl_gate_refusal *why) {
    struct bufferevent *bev = c->bev;
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    c->discarding = 1;
    evutil_socket_t fd = bufferevent_getfd(bev);
    /* With a reply of evhttp's still being written, one of ours would
     * interleave with it: close without a word instead. */
    if (fd >= 0 && why->status &&
        evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        char msg[512];
        int n =
            snprintf(msg, sizeof(msg),
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n%sConnection: close\r\n\r\n"
                     "{\"error\":\"%s\"}",
                     why->status, reason(why->status), strlen(why->error) + 12,
                     why->status == 401 ? "WWW-Authenticate: Bearer\r\n" : "",
                     why->error);
        if (send(fd, msg, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
            sl_logf(SL_LOG_DEBUG, "sluice.server: cannot send %d: %s",
                    why->status, strerror(errno));
        shutdown(fd, SHUT_WR);
    }
    if (c->deadline) {
        struct timeval linger = c->srv->request_timeout;
        if (!linger.tv_sec && !linger.tv_usec)
            linger.tv_sec = 10;
        event_del(c->deadline);
        event_add(c->deadline, &linger);
    }
}

/* The connection's input buffer grew: feed the new bytes to its gate. Runs
 * inside the bufferevent's read, before evhttp's read callback. */
static void gate_input(struct evbuffer *buf,
                       const struct evbuffer_cb_info *info, void *arg) {
    conn *c = arg;
    if (info->n_added == 0 || info->n_deleted != 0)
        return; /* evhttp consuming, or our own drain */
    if (c->discarding) {
        evbuffer_drain(buf, evbuffer_get_length(buf));
        return;
    }
    struct evbuffer_ptr pos;
    if (evbuffer_ptr_set(buf, &pos, info->orig_size, EVBUFFER_PTR_SET) != 0)
        return;
    size_t left = info->n_added;
    while (left > 0) {
        struct evbuffer_iovec v[8];
        int n = evbuffer_peek(buf, (ev_ssize_t)left, &pos, v, 8);
        if (n <= 0)
            return;
        if (n > 8)
            n = 8;
        for (int i = 0; i < n && left > 0; i++) {
            size_t len = v[i].iov_len < left ? v[i].iov_len : left;
            sl_gate_refusal why;
            if (sl_gate_feed(&c->gate, &c->srv->rules, v[i].iov_base, len,
                             &why) != 0) {
                refuse_request(c, &why);
                return;
            }
            left -= len;
            if (left > 0 &&
                evbuffer_ptr_set(buf, &pos, len, EVBUFFER_PTR_ADD) != 0)
                return;
        }
    }
}

/* evhttp (via evhttp_set_bevcb): a connection was accepted; evhttp has no
 * connection object for it yet. It is set up from new_conn_ev, which runs
 * once evhttp_get_request has returned, before any I/O on the socket. */
static struct bufferevent *new_bev(struct event_base *base, void *arg) {
    server *s = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, -1, 0);
    conn *c = bev ? calloc(1, sizeof(*c)) : NULL;
    if (!c)
        return bev; /* untracked, and still served */
    c->bev = bev;
    c->srv = s;
    sl_gate_init(&c->gate);
    c->gate_cb = evbuffer_add_cb(bufferevent_get_input(bev), gate_input, c);
    bufferevent_incref(bev); /* in case evhttp frees it first */
    conn_link(&s->pending, c);
    event_active(s->new_conn_ev, EV_TIMEOUT, 0);
    return bev;
}

static void new_conn_cb(evutil_socket_t fd, short what, void *arg) {
    server *s = arg;
    (void)fd;
    (void)what;
    conn *c;
    while ((c = s->pending) != NULL) {
        conn_unlink(&s->pending, c);
        bufferevent_event_cb ecb = NULL;
        void *evcon = NULL;
        /* evhttp gives every callback of a connection's bufferevent the
         * evhttp_connection as its argument; bufferevent_free clears them,
         * so a connection evhttp already dropped has none. */
        bufferevent_getcb(c->bev, NULL, NULL, &ecb, &evcon);
        if (!ecb || !evcon || !s->http) {
            struct bufferevent *bev = c->bev;
            conn_free(c);
            bufferevent_decref(bev);
            continue;
        }
        bufferevent_decref(c->bev); /* evhttp's from now on */
        c->evcon = evcon;
        c->deadline = event_new(sl_rt.base, -1, 0, deadline_cb, c);
        evhttp_connection_set_closecb(c->evcon, on_conn_close, s);
        conn_link(&s->conns, c);
        s->connections++;
        if (s->max_connections > 0 && s->connections > s->max_connections)
            refuse(c);
        else
            conn_arm(c);
    }
}

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

    exchange *x = lua_newuserdata(L, sizeof(*x));
    memset(x, 0, sizeof(*x));
    x->ref = LUA_NOREF;
    x->declared = -1;
    luaL_getmetatable(L, EXCHANGE_MT);
    lua_setmetatable(L, -2);
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
    set_header(req, "Content-Type", "application/json");
    set_header(req, "Connection", "close");
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
    conn *cn = evcon ? conn_find(s, evcon) : NULL;
    if (cn && cn->deadline)
        event_del(cn->deadline); /* the request is in: no deadline */
    if (s->closing || !L) {
        set_header(req, "Connection", "close");
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
    exchange *x = c.x;
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
    s->requests++;
    c.task->on_done = on_task_done;
    c.task->on_done_data = x;
    evhttp_request_set_on_complete_cb(req, on_complete, x);
    evhttp_connection_set_closecb(x->evcon, on_conn_close, s);
    no_delay(x->evcon);
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
    /* Cut loose whatever is still in flight (only when forced, at
     * lua_close): evhttp_free frees attached requests with their
     * connections; detached ones are ours. */
    while (s->list) {
        exchange *x = s->list;
        if (x->req && !evhttp_request_get_connection(x->req))
            evhttp_request_free(x->req);
        x->req = NULL;
        if (x->state != EX_DONE)
            x->state = x->state == EX_SENT ? EX_DONE : EX_CLOSED;
        ex_unlist(x);
    }
    s->http = NULL;
    evhttp_free(http); /* on_conn_close for every live connection */
    while (s->conns) { /* any evhttp did not report: its bev is gone */
        s->conns->gate_cb = NULL;
        conn_drop(s->conns);
    }
    conn *c;
    while ((c = s->pending) != NULL) { /* bev kept by our reference */
        struct bufferevent *bev = c->bev;
        conn_unlink(&s->pending, c);
        conn_free(c);
        bufferevent_decref(bev);
    }
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

static void server_maybe_finalize_later(server *s) {
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
    s->new_conn_ev = event_new(sl_rt.base, -1, 0, new_conn_cb, s);
    evhttp_set_bevcb(s->http, new_bev, s);

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
    static const luaL_Reg ex_methods[] = {
        {"respond", ex_respond},
        {"start", ex_start},
        {"write", ex_write},
        {"finish", ex_finish},
        {"abort", ex_abort_l},
        {"state", ex_state_l},
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

    luaL_newmetatable(L, EXCHANGE_MT);
    lua_pushcfunction(L, ex_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, ex_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_newtable(L);
    luaL_register(L, NULL, ex_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
