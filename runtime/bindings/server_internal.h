/* server_internal.h -- sluice._server's types, shared by its three files
 *
 * lua_server.c: servers (listen, close, stats, finalize) and the request
 * callback; server_exchange.c: exchanges (one request and its reply, the
 * userdata a handler answers through); server_conn.c: connections (the
 * per-connection record: deadline, max_connections, the request gate).
 * Private to those files.
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
#ifndef SLUICE_SERVER_INTERNAL_H
#define SLUICE_SERVER_INTERNAL_H

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <lua.h>

#include "core/http_gate.h"
#include "host/accept_guard.h"
#include "host/task.h"

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

/* --- servers (lua_server.c) ----------------------------------------------- */

/* Finalizes s from an event of its own once it is closing and idle. */
void sl_server_maybe_finalize_later(server *s);

/* --- exchanges (server_exchange.c) ---------------------------------------- */

/* Registers the exchange metatable (luaopen_sluice_server). */
void sl_server_exchange_open(lua_State *L);

/* Pushes a new exchange userdata, not yet listed nor anchored. */
exchange *sl_server_exchange_new(lua_State *L);

/* Lists x on s for req (its connection's record cn, or NULL) and hooks it
 * to its handler task and to evhttp's completion and close callbacks. */
void sl_server_exchange_list(exchange *x, server *s, struct evhttp_request *req,
                             conn *cn, sl_task *task);

/* Cuts loose every exchange still listed (only when forced, at lua_close):
 * evhttp_free frees attached requests with their connections; detached
 * ones are freed here. */
void sl_server_exchange_cut_all(server *s);

/* evhttp: a connection of server arg is being freed. */
void sl_server_on_conn_close(struct evhttp_connection *evcon, void *arg);

/* Replaces header k of req's reply with v. */
void sl_server_set_header(struct evhttp_request *req, const char *k,
                          const char *v);

/* The reason phrase of a status code we send ourselves. */
const char *sl_server_reason(int status);

/* --- connections (server_conn.c) ------------------------------------------ */

conn *sl_server_conn_find(server *s, struct evhttp_connection *evcon);

/* Starts the clock for the next request on c (from accept, or from the
 * end of the previous reply). */
void sl_server_conn_arm(conn *c);

/* Forgets a live connection; returns its evhttp connection, which the
 * caller frees unless evhttp is freeing it already. */
struct evhttp_connection *sl_server_conn_drop(conn *c);

/* evhttp_set_bevcb's callback, and the event (s->new_conn_ev) that sets
 * up the connections it created. */
struct bufferevent *sl_server_conn_new_bev(struct event_base *base, void *arg);
void sl_server_conn_setup_cb(evutil_socket_t fd, short what, void *arg);

/* Forgets every connection (server finalization, after evhttp_free): the
 * live ones evhttp did not report, and the pending ones. */
void sl_server_conn_free_all(server *s);

#endif
