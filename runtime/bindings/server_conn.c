/* server_conn.c -- sluice._server's connections: deadlines, limits, the gate
 *
 * Each accepted connection gets a record (conn) from evhttp's bufferevent
 * callback on: it bounds the time a request may take to arrive (the
 * deadline), answers 503 over max_connections, and feeds what arrives to
 * the request gate (core/http_gate.h) before evhttp reads it, answering a
 * refused head on the socket itself. A record is freed in the connection's
 * close callback (server_exchange.c), or with the server; see
 * server_internal.h for the rules.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/util.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/log.h"
#include "host/runtime.h"
#include "server_internal.h"

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

conn *sl_server_conn_find(server *s, struct evhttp_connection *evcon) {
    for (conn *c = s->conns; c; c = c->next)
        if (c->evcon == evcon)
            return c;
    return NULL;
}

/* Starts the clock for the next request on c (from accept, or from the
 * end of the previous reply). */
void sl_server_conn_arm(conn *c) {
    server *s = c->srv;
    if (c->discarding)
        return; /* closing already */
    if (c->deadline &&
        (s->request_timeout.tv_sec || s->request_timeout.tv_usec))
        event_add(c->deadline, &s->request_timeout);
}

/* Forgets a live connection; returns its evhttp connection, which the
 * caller frees unless evhttp is freeing it already. */
struct evhttp_connection *sl_server_conn_drop(conn *c) {
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
    evhttp_connection_free(sl_server_conn_drop(c));
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
    evhttp_connection_free(sl_server_conn_drop(c));
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
        int n = snprintf(
            msg, sizeof(msg),
            "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
            "Content-Length: %zu\r\n%sConnection: close\r\n\r\n"
            "{\"error\":\"%s\"}",
            why->status, sl_server_reason(why->status), strlen(why->error) + 12,
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
struct bufferevent *sl_server_conn_new_bev(struct event_base *base, void *arg) {
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

void sl_server_conn_setup_cb(evutil_socket_t fd, short what, void *arg) {
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
        evhttp_connection_set_closecb(c->evcon, sl_server_on_conn_close, s);
        conn_link(&s->conns, c);
        s->connections++;
        if (s->max_connections > 0 && s->connections > s->max_connections)
            refuse(c);
        else
            sl_server_conn_arm(c);
    }
}

void sl_server_conn_free_all(server *s) {
    while (s->conns) { /* any evhttp did not report: its bev is gone */
        s->conns->gate_cb = NULL;
        sl_server_conn_drop(s->conns);
    }
    conn *c;
    while ((c = s->pending) != NULL) { /* bev kept by our reference */
        struct bufferevent *bev = c->bev;
        conn_unlink(&s->pending, c);
        conn_free(c);
        bufferevent_decref(bev);
    }
}
