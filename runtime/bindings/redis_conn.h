/* redis_conn.h -- a sluice._redis client and its connection
 *
 * Shared by lua_redis.c (the Lua primitives, the requests) and
 * redis_conn.c (the connection); private to them.
 *
 * Connection lifetime: hiredis frees a context right after its disconnect
 * callback and does not reconnect. We forget the context in that callback
 * and build a new one from a libevent timer (jittered exponential backoff,
 * 0.1 s doubling to 5 s). Calls made while disconnected fail at once;
 * calls made before the first connection completes are queued by hiredis
 * behind the AUTH/SELECT handshake.
 *
 * Names: every connection attempt to a host name first resolves it without
 * blocking (redis_dns.c), then connects to the numeric address. IP
 * literals skip this. While the first connection waits for its address,
 * calls are formatted and kept in c->pending (in order) and handed to
 * hiredis once the context exists. The connect timeout covers resolution
 * and connection. c->dns is the slot of the resolution under way; the
 * client cancels it before it lets go of the slot (timeout, close).
 *
 * Ownership: the client struct lives inside its Lua userdata (lua_redis.c
 * makes it); everything it points to is its own and is released by
 * sl_redis_conn_close, except the subscription, freed with the userdata.
 * A request (req) is the hiredis privdata of the commands it carries and
 * is freed by sl_redis_on_reply after the last of their callbacks.
 */
#ifndef SLUICE_REDIS_CONN_H
#define SLUICE_REDIS_CONN_H

#include <event2/event.h>
#include <event2/event_struct.h>
#include <hiredis/async.h>
#include <stddef.h>

#include "host/task.h"
#include "redis_dns.h"
#include "redis_sub.h"

typedef enum conn_state {
    ST_CONNECTING,
    ST_CONNECTED,
    ST_DISCONNECTED,
    ST_CLOSED
} conn_state;

typedef struct req req;

typedef struct client {
    redisAsyncContext *ac; /* NULL while resolving, disconnected or closed */
    sl_redis_dns_req *dns; /* the resolution under way, or NULL */
    struct evdns_base *own_dns;  /* a private resolver (tests), or NULL */
    req *pending, *pending_tail; /* calls waiting for the first address */
    conn_state state;
    int ever_connected;
    int handshake_failed; /* keep the first handshake error only */
    char host[256];
    char addr[256]; /* the numeric address of the current attempt */
    int port, db;
    char *password;
    double connect_timeout, command_timeout;
    double connect_started;  /* sl_now() of the current attempt */
    double backoff;          /* next reconnect delay, before jitter */
    const char *drop_reason; /* for replies lost with the context */
    struct event connect_timer, reconnect_timer;
    long in_flight;       /* requests not yet completed by hiredis */
    long reconnects;      /* successful connections after the first */
    long waiters;         /* tasks waiting on calls of this client */
    int anchor;           /* registry ref of the userdata while waiters */
    sl_redis_sub *sub;    /* a subscription client's, owned; or NULL */
    char last_error[384]; /* handshake, resolution or connect failure */
} client;

typedef struct fmtcmd {
    char *buf; /* from redisFormatCommandArgv */
    size_t len;
} fmtcmd;

struct req {
    client *c;
    sl_task *task; /* NULL once the waiter is gone (timeout, kill) */
    struct event timer;
    int n, done; /* commands sent, replies received */
    int ref;     /* registry ref of the results table (pipeline) or NOREF */
    int cap;     /* commands this request may carry */
    fmtcmd *fmt; /* commands kept while resolving (n of them), or NULL */
    req *next;   /* in c->pending */
};

/* Sets up a new client's timers, backoff and drop reason; c is zeroed and
 * its address, port, db and timeouts are set. */
void sl_redis_conn_init(client *c);

/* Starts a connection attempt: resolve the name (unless it is an address),
 * then connect; both within connect_timeout. A failure schedules another
 * attempt (jittered backoff, 0.1 s doubling to 5 s) until the client is
 * closed. */
void sl_redis_conn_start(client *c);

/* Closes c for good: cancels the resolution and the timers, fails the calls
 * kept while resolving ("closed"), frees the context (whose pending
 * callbacks run first). Idempotent. */
void sl_redis_conn_close(client *c);

/* hiredis' callback for every command of a request (lua_redis.c); reply is
 * NULL when the context goes away (then c->drop_reason says why). */
void sl_redis_on_reply(redisAsyncContext *ac, void *reply, void *privdata);

#endif
