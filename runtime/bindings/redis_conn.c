/* redis_conn.c -- a sluice._redis client's connection, and reconnecting it
 *
 * The rules are in redis_conn.h. Each attempt resolves the host name on
 * the loop (redis_dns.c), connects to the numeric address, and queues the
 * handshake (AUTH, SELECT, the subscription's SUBSCRIBE and PSUBSCRIBE)
 * before the calls kept while resolving. A lost connection is rebuilt from
 * a timer; calls that were in flight are answered nil, c->drop_reason.
 */
#include "redis_conn.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/timeout.h"
#include "host/runtime.h"

#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 5.0

static unsigned long long rng_state;

static double jitter(double d) {
    if (!rng_state)
        rng_state = (unsigned long long)time(NULL) ^ 0x9e3779b97f4a7c15ULL;
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return d * (0.5 + 0.5 * (double)(rng_state >> 11) / 9007199254740992.0);
}

/* See timeout.h: math.huge gives *armed = 0 (arm no timer). */
static struct timeval to_tv(double s, int *armed) {
    struct timeval tv;
    *armed = sl_timeout_tv(s, &tv);
    return tv;
}

static void schedule_reconnect(client *c) {
    evtimer_del(&c->connect_timer);
    if (c->state == ST_CLOSED)
        return;
    c->state = ST_DISCONNECTED;
    int armed;
    struct timeval tv = to_tv(jitter(c->backoff), &armed);
    c->backoff = c->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : c->backoff * 2;
    evtimer_add(&c->reconnect_timer, &tv);
}

static void on_reconnect_timer(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    sl_redis_conn_start(arg);
}

/* Frees the context ourselves (connect timeout, close): pending callbacks
 * run now with NULL replies and the given reason. */
static void drop_context(client *c, const char *why) {
    redisAsyncContext *ac = c->ac;
    if (!ac)
        return;
    c->ac = NULL;
    c->drop_reason = why;
    redisAsyncFree(ac);
    c->drop_reason = "disconnected";
}

static req *pop_pending(client *c) {
    req *q = c->pending;
    if (q) {
        c->pending = q->next;
        if (!c->pending)
            c->pending_tail = NULL;
        q->next = NULL;
    }
    return q;
}

/* Fails every call waiting for the first address with nil, why. */
static void fail_pending(client *c, const char *why) {
    const char *saved = c->drop_reason;
    req *q;
    c->drop_reason = why;
    while ((q = pop_pending(c))) {
        int n = q->n;
        for (int i = 0; i < n; i++)
            redisFreeCommand(q->fmt[i].buf);
        for (int i = 0; i < n; i++)
            sl_redis_on_reply(NULL, NULL, q); /* the last one frees q */
    }
    c->drop_reason = saved;
}

/* Hands the calls kept while resolving to the new context, in order. A
 * call whose task is gone (timeout, kill) is dropped unsent. */
static void send_pending(client *c) {
    req *q;
    while ((q = pop_pending(c))) {
        int n = q->n, sent = 0;
        fmtcmd *f = q->fmt;
        for (int i = 0; i < n; i++) {
            if (q->task && sent == i &&
                redisAsyncFormattedCommand(c->ac, sl_redis_on_reply, q,
                                           f[i].buf, f[i].len) == REDIS_OK)
                sent++;
            redisFreeCommand(f[i].buf);
        }
        if (sent == n)
            continue; /* sl_redis_on_reply frees q and q->fmt */
        /* Replies come later from the loop, so q outlives this loop. */
        for (int i = sent; i < n; i++)
            sl_redis_on_reply(NULL, NULL, q);
    }
}

static void on_connect_timer(evutil_socket_t fd, short what, void *arg) {
    client *c = arg;
    (void)fd;
    (void)what;
    if (c->state != ST_CONNECTING)
        return;
    if (c->dns) {
        snprintf(c->last_error, sizeof(c->last_error),
                 "dns: resolving '%s' timed out", c->host);
        sl_redis_dns_cancel(&c->dns);
        fail_pending(c, "timeout");
    } else {
        snprintf(c->last_error, sizeof(c->last_error), "connect timeout");
        drop_context(c, "timeout");
    }
    schedule_reconnect(c);
}

static void on_connect(const redisAsyncContext *ac, int status) {
    client *c = ac->data;
    if (!c || c->ac != ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees ac after this returns */
        snprintf(c->last_error, sizeof(c->last_error), "%s",
                 ac->errstr ? ac->errstr : "connect failed");
        c->ac = NULL;
        schedule_reconnect(c);
        return;
    }
    evtimer_del(&c->connect_timer);
    c->state = ST_CONNECTED;
    c->backoff = BACKOFF_MIN;
    if (c->ever_connected)
        c->reconnects++;
    c->ever_connected = 1;
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
    client *c = ac->data;
    (void)status;
    if (!c || c->ac != ac)
        return;
    /* hiredis frees ac after this returns: reconnect from a timer */
    snprintf(c->last_error, sizeof(c->last_error), "%s",
             ac->errstr && ac->err ? ac->errstr : "connection closed");
    c->ac = NULL;
    schedule_reconnect(c);
}

static void on_handshake(redisAsyncContext *ac, void *reply, void *privdata) {
    client *c = privdata;
    const redisReply *r = reply;
    (void)ac;
    c->in_flight--;
    if (r && r->type == REDIS_REPLY_ERROR && !c->handshake_failed++)
        snprintf(c->last_error, sizeof(c->last_error), "%s", r->str);
}

/* Every confirmation and message of a subscription, NULL when the context
 * goes away; c outlives its contexts (close frees them first). */
static void on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    client *c = privdata;
    (void)ac;
    if (c->sub)
        sl_redis_sub_on_reply(c->sub, reply);
}

static void send_handshake(client *c, int argc, const char **argv) {
    if (redisAsyncCommandArgv(c->ac, on_handshake, c, argc, argv, NULL) ==
        REDIS_OK)
        c->in_flight++;
}

/* Connects to c->addr, a numeric address (hiredis does no DNS for it). The
 * commands of the handshake are queued first, then the calls kept while
 * resolving, so everything runs authenticated on the right db. */
static void open_context(client *c) {
    redisAsyncContext *ac = redisAsyncConnect(c->addr, c->port);
    if (!ac || ac->err) {
        snprintf(c->last_error, sizeof(c->last_error), "%s",
                 ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        fail_pending(c, "disconnected");
        schedule_reconnect(c);
        return;
    }
    ac->data = c;
    c->ac = ac;
    c->handshake_failed = 0;
    redisLibeventAttach(ac, sl_rt.base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (c->password) {
        const char *argv[] = {"AUTH", c->password};
        send_handshake(c, 2, argv);
    }
    char db[16];
    snprintf(db, sizeof(db), "%d", c->db);
    const char *argv[] = {"SELECT", db};
    send_handshake(c, 2, argv);
    if (c->sub && sl_redis_sub_send(c->sub, ac, on_sub_reply, c) != 0)
        snprintf(c->last_error, sizeof(c->last_error), "cannot send SUBSCRIBE");
    send_pending(c);
}

/* The answer for c->host (c->dns is already NULL). */
static void on_resolved(const char *addr, const char *why, void *privdata) {
    client *c = privdata;
    if (!addr) {
        snprintf(c->last_error, sizeof(c->last_error),
                 "dns: cannot resolve '%s': %s", c->host, why);
        c->addr[0] = '\0';
        fail_pending(c, c->last_error);
        schedule_reconnect(c);
        return;
    }
    snprintf(c->addr, sizeof(c->addr), "%s", addr);
    open_context(c);
}

static void resolve(client *c) {
    struct evdns_base *base = c->own_dns ? c->own_dns : sl_redis_dns_loop();
    if (!base ||
        sl_redis_dns_resolve(base, c->host, &c->dns, on_resolved, c) != 0) {
        snprintf(c->last_error, sizeof(c->last_error), "dns: %s",
                 base ? "out of memory" : "cannot start the resolver");
        fail_pending(c, c->last_error);
        schedule_reconnect(c);
    }
}

/* Starts a connection attempt: resolve the name (unless it is an address),
 * then connect; both within connect_timeout. */
void sl_redis_conn_start(client *c) {
    if (c->state == ST_CLOSED)
        return;
    c->state = ST_CONNECTING;
    c->connect_started = sl_now();
    int armed;
    struct timeval tv = to_tv(c->connect_timeout, &armed);
    if (armed)
        evtimer_add(&c->connect_timer, &tv);
    if (sl_redis_dns_is_address(c->host)) {
        snprintf(c->addr, sizeof(c->addr), "%s", c->host);
        open_context(c);
    } else {
        resolve(c);
    }
}

void sl_redis_conn_close(client *c) {
    if (c->state == ST_CLOSED)
        return;
    c->state = ST_CLOSED;
    evtimer_del(&c->connect_timer);
    evtimer_del(&c->reconnect_timer);
    sl_redis_dns_cancel(&c->dns);
    if (c->sub)
        sl_redis_sub_close(c->sub);
    fail_pending(c, "closed");
    drop_context(c, "closed");
    if (c->own_dns)
        sl_redis_dns_free(c->own_dns);
    c->own_dns = NULL;
    free(c->password);
    c->password = NULL;
}

void sl_redis_conn_init(client *c) {
    c->backoff = BACKOFF_MIN;
    c->drop_reason = "disconnected";
    evtimer_assign(&c->connect_timer, sl_rt.base, on_connect_timer, c);
    evtimer_assign(&c->reconnect_timer, sl_rt.base, on_reconnect_timer, c);
}
