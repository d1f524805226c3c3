/* lua_redis.c -- sluice._redis: async Redis client on hiredis and libevent
 *
 * One client is one connection (a hiredis async context attached to the
 * loop's event base). A call sends its command and suspends the task; the
 * reply callback copies the reply onto the task's coroutine and queues the
 * task. Concurrent calls from many tasks are pipelined on the connection;
 * replies arrive in order.
 *
 * Ownership: a request (struct req) is malloc'd per call or pipeline and
 * handed to hiredis as privdata; hiredis calls back exactly once per
 * command sent (with NULL when the context goes away), and the last of
 * those callbacks frees it. The waiting task only borrows it: a timeout or
 * a kill detaches the task (req->task = NULL) and later replies are dropped.
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
 * Replies become Lua values in redis_reply.c, on the waiting task's thread.
 *
 * Anchoring: a yielding C function drops its arguments and `return
 * c:call(...)` is a tail call, so a client may be reachable only through
 * its waiters. While any task waits on a call (c->waiters) the client's
 * userdata is anchored in the registry (c->anchor); the anchor goes with
 * the last waiter (reply, timeout, kill, close).
 *
 * Subscriptions: a client made by subscribe carries a subscription
 * (redis_sub.c) on its own connection and takes no calls: its SUBSCRIBE and
 * PSUBSCRIBE commands follow the handshake on every connection, so a
 * reconnect resubscribes. Sent through call or pipeline, SUBSCRIBE and its
 * kin (whose callback hiredis runs once per message, not once) and MONITOR
 * are refused.
 *
 * The client struct lives inside its userdata. close (and __gc) cancels the
 * resolution and frees the context with redisAsyncFree, which runs every
 * pending callback before it returns, so nothing refers to the client
 * afterwards.
 */
#include <event2/event.h>
#include <event2/event_struct.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/timeout.h"
#include "host/modules.h"
#include "host/runtime.h"
#include "host/task.h"
#include "redis_args.h"
#include "redis_dns.h"
#include "redis_reply.h"
#include "redis_sub.h"

#define CLIENT_MT "sluice.redis.client"
#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 5.0
#define MAX_STACK_ARGS 32

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

/* --- requests -------------------------------------------------------- */

/* A task starts waiting on c, whose userdata is at idx on L. */
static void hold(lua_State *L, client *c, int idx) {
    if (c->waiters++ == 0) {
        lua_pushvalue(L, idx);
        c->anchor = luaL_ref(L, LUA_REGISTRYINDEX);
    }
}

/* A task stops waiting on c; after the last one, c may be collected. */
static void unhold(client *c) {
    if (--c->waiters == 0) {
        luaL_unref(sl_rt.L, LUA_REGISTRYINDEX, c->anchor);
        c->anchor = LUA_NOREF;
    }
}

/* Call before waking the task: its results are pushed while c is held. */
static void req_detach(req *q) {
    event_del(&q->timer);
    if (q->ref != LUA_NOREF)
        luaL_unref(sl_rt.L, LUA_REGISTRYINDEX, q->ref);
    q->ref = LUA_NOREF;
    if (q->task)
        unhold(q->c);
    q->task = NULL;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
    req *q = privdata;
    const redisReply *r = reply;
    (void)ac;
    q->done++;
    if (q->task) {
        lua_State *co = sl_task_thread(q->task);
        if (q->ref == LUA_NOREF) {
            int n = sl_redis_reply_push(co, r, q->c->drop_reason);
            sl_task *t = q->task;
            req_detach(q);
            sl_task_wake(t, n);
        } else {
            lua_rawgeti(co, LUA_REGISTRYINDEX, q->ref);
            sl_redis_reply_push_entry(co, r, q->c->drop_reason);
            lua_rawseti(co, -2, q->done);
            if (q->done == q->n) {
                sl_task *t = q->task;
                req_detach(q); /* the table stays on co's stack */
                sl_task_wake(t, 1);
            } else {
                lua_pop(co, 1);
            }
        }
    }
    if (q->done == q->n) {
        q->c->in_flight--;
        free(q->fmt);
        free(q);
    }
}

static void on_req_timeout(evutil_socket_t fd, short what, void *arg) {
    req *q = arg;
    (void)fd;
    (void)what;
    if (!q->task)
        return;
    sl_task *t = q->task;
    lua_State *co = sl_task_thread(t);
    req_detach(q); /* later replies are dropped */
    lua_pushnil(co);
    lua_pushliteral(co, "timeout");
    sl_task_wake(t, 2);
}

static void cancel_req(sl_task *t, void *op) {
    (void)t;
    req_detach(op); /* hiredis still calls back; on_reply frees it */
}

/* --- the connection -------------------------------------------------- */

static void connect_now(client *c);

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
    connect_now(arg);
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
            on_reply(NULL, NULL, q); /* the last one frees q */
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
                redisAsyncFormattedCommand(c->ac, on_reply, q, f[i].buf,
                                           f[i].len) == REDIS_OK)
                sent++;
            redisFreeCommand(f[i].buf);
        }
        if (sent == n)
            continue; /* on_reply frees q and q->fmt */
        /* Replies come later from the loop, so q outlives this loop. */
        for (int i = sent; i < n; i++)
            on_reply(NULL, NULL, q);
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
static void connect_now(client *c) {
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

static void client_close(client *c) {
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
/* --- Lua primitives -------------------------------------------------- */

/* A client that takes calls (not a subscription's). */
static client *check_client(lua_State *L) {
    client *c = luaL_checkudata(L, 1, CLIENT_MT);
    if (c->sub)
        luaL_argerror(L, 1, "a subscription takes no commands");
    return c;
}

/* Pushes a client made from the arguments of connect, not yet connecting. */
static client *new_client(lua_State *L) {
    size_t hlen;
    const char *host = luaL_checklstring(L, 1, &hlen);
    int port = (int)luaL_checkinteger(L, 2);
    int db = (int)luaL_checkinteger(L, 3);
    const char *password = luaL_optstring(L, 4, NULL);
    double ct = luaL_checknumber(L, 5), cmdt = luaL_checknumber(L, 6);
    const char *nameserver = luaL_optstring(L, 7, NULL);
    luaL_argcheck(L, hlen < 256, 1, "host name too long");
    struct evdns_base *own = NULL;
    if (nameserver) {
        int rc = sl_redis_dns_new(nameserver, &own);
        luaL_argcheck(L, rc != SL_REDIS_DNS_EADDR, 7, "bad nameserver address");
        if (rc != SL_REDIS_DNS_OK)
            luaL_error(L, "sluice.redis: cannot create a resolver");
    }
    client *c = lua_newuserdata(L, sizeof(*c));
    memset(c, 0, sizeof(*c));
    c->own_dns = own;
    c->state = ST_DISCONNECTED;
    memcpy(c->host, host, hlen + 1);
    c->port = port;
    c->db = db;
    c->connect_timeout = ct;
    c->command_timeout = cmdt;
    c->backoff = BACKOFF_MIN;
    c->drop_reason = "disconnected";
    c->anchor = LUA_NOREF;
    evtimer_assign(&c->connect_timer, sl_rt.base, on_connect_timer, c);
    evtimer_assign(&c->reconnect_timer, sl_rt.base, on_reconnect_timer, c);
    luaL_getmetatable(L, CLIENT_MT);
    lua_setmetatable(L, -2); /* from here __gc frees what c holds */
    if (password && !(c->password = strdup(password)))
        luaL_error(L, "sluice.redis: out of memory");
    return c;
}

/* connect(host, port, db, password|nil, connect_timeout, command_timeout
 *         [, nameserver]) -> client
 * host is an IP literal or a name, resolved by evdns without blocking.
 * nameserver ("ip[:port]", for tests) gives the client a private resolver
 * that asks only that server and ignores /etc/hosts. The connection is made
 * in the background. */
static int l_connect(lua_State *L) {
    connect_now(new_client(L));
    return 1;
}

/* The task that was subscribing was killed: the client is closed at once. */
static void abandon_sub(void *privdata) { client_close(privdata); }

/* subscribe(host, port, db, password|nil, connect_timeout, command_timeout,
 *           nameserver|nil, channels, patterns, max_pending) -> client |
 *           nil, err
 * A client on its own connection, subscribed to the channels and patterns
 * (lists of strings, one non-empty); it yields until Redis has confirmed
 * them all, at most connect_timeout + command_timeout (then nil,
 * "timeout": the caller closes the client). */
static int l_subscribe(lua_State *L) {
    sl_task *t = sl_task_check_yieldable(L, "sluice.redis subscribe");
    long max = (long)luaL_checknumber(L, 10);
    sl_redis_check_list(L, 8); /* so that only OOM raises below */
    sl_redis_check_list(L, 9);
    luaL_argcheck(L, lua_objlen(L, 8) + lua_objlen(L, 9) > 0, 8,
                  "no channel or pattern");
    lua_settop(L, 10);
    client *c = new_client(L); /* at 11; its __gc frees c->sub */
    const char **ch, **pat;
    size_t *chl, *patl;
    int nch = sl_redis_list_argv(L, 8, &ch, &chl);
    int npat = sl_redis_list_argv(L, 9, &pat, &patl);
    c->sub =
        sl_redis_sub_new(nch, ch, chl, npat, pat, patl, max, abandon_sub, c);
    free(ch);
    free(chl);
    free(pat);
    free(patl);
    if (!c->sub)
        return luaL_error(L, "sluice.redis: out of memory");
    connect_now(c);
    return sl_redis_sub_wait(L, c->sub, t, 11, 1,
                             c->connect_timeout + c->command_timeout);
}

/* receive(client, timeout|nil) -> message | nil, "timeout" | nil, "closed" */
static int l_receive(lua_State *L) {
    client *c = luaL_checkudata(L, 1, CLIENT_MT);
    double timeout = luaL_optnumber(L, 2, -1);
    luaL_argcheck(L, c->sub, 1, "not a subscription");
    sl_task *t = sl_task_check_yieldable(L, "sluice.redis receive");
    return sl_redis_sub_wait(L, c->sub, t, 1, 0, timeout);
}

/* Can a command be sent now? Before the first connection completes,
 * commands queue behind the resolution and the handshake; afterwards only a
 * connected client takes them. Pushes nil, why and returns 2 when not. */
static int refuse(lua_State *L, client *c) {
    if ((c->ac || c->dns) &&
        (c->state == ST_CONNECTED ||
         (c->state == ST_CONNECTING && !c->ever_connected)))
        return 0;
    lua_pushnil(L);
    lua_pushstring(L, c->state == ST_CLOSED ? "closed" : "disconnected");
    return 2;
}

static req *req_new(lua_State *L, client *c, sl_task *t, int cap) {
    req *q = calloc(1, sizeof(*q));
    if (q && !c->ac && !(q->fmt = calloc((size_t)cap, sizeof(*q->fmt)))) {
        free(q);
        q = NULL;
    }
    if (!q)
        luaL_error(L, "sluice.redis: out of memory");
    q->c = c;
    q->task = t;
    q->ref = LUA_NOREF;
    q->cap = cap;
    evtimer_assign(&q->timer, sl_rt.base, on_req_timeout, q);
    return q;
}

/* Sends one command of q, or keeps it formatted while the address is being
 * resolved (q->fmt). Counts it in q->n on success. */
static int req_send(client *c, req *q, int argc, const char **argv,
                    const size_t *lens) {
    if (c->ac) {
        if (redisAsyncCommandArgv(c->ac, on_reply, q, argc, argv, lens) !=
            REDIS_OK)
            return REDIS_ERR;
    } else {
        char *buf;
        int len = redisFormatCommandArgv(&buf, argc, argv, lens);
        if (len < 0 || q->n >= q->cap)
            return REDIS_ERR;
        q->fmt[q->n].buf = buf;
        q->fmt[q->n].len = (size_t)len;
    }
    q->n++;
    return REDIS_OK;
}

static void req_free_unsent(req *q) {
    if (q->fmt)
        for (int i = 0; i < q->n; i++)
            redisFreeCommand(q->fmt[i].buf);
    free(q->fmt);
    free(q);
}

/* The request's deadline: command_timeout, plus what remains of the connect
 * timeout while the first connection is still being made. */
static int req_start(lua_State *L, client *c, sl_task *t, req *q) {
    double s = c->command_timeout;
    if (c->state == ST_CONNECTING)
        s += c->connect_timeout - (sl_now() - c->connect_started);
    int armed;
    struct timeval tv = to_tv(s, &armed);
    if (armed)
        evtimer_add(&q->timer, &tv);
    c->in_flight++;
    hold(L, c, 1);
    if (!c->ac) { /* resolving: sent by send_pending, or failed */
        if (c->pending_tail)
            c->pending_tail->next = q;
        else
            c->pending = q;
        c->pending_tail = q;
    }
    return sl_task_suspend(L, t, cancel_req, q);
}

/* call(client, cmd, ...) -> reply | nil, err */
static int l_call(lua_State *L) {
    client *c = check_client(L);
    int top = lua_gettop(L), argc = top - 1;
    luaL_argcheck(L, argc >= 1, 2, "command expected");
    sl_redis_format_numbers(L, 2, top);
    sl_redis_check_command(L, lua_tostring(L, 2));
    sl_task *t = sl_task_check_yieldable(L, "sluice.redis call");
    int n = refuse(L, c);
    if (n)
        return n;
    const char *sargv[MAX_STACK_ARGS];
    size_t slen[MAX_STACK_ARGS];
    const char **argv = sargv;
    size_t *lens = slen;
    if (argc > MAX_STACK_ARGS) {
        argv = malloc(sizeof(*argv) * (size_t)argc);
        lens = malloc(sizeof(*lens) * (size_t)argc);
        if (!argv || !lens) {
            free(argv);
            free(lens);
            return luaL_error(L, "sluice.redis: out of memory");
        }
    }
    for (int i = 0; i < argc; i++)
        argv[i] = lua_tolstring(L, i + 2, &lens[i]);
    req *q = req_new(L, c, t, 1);
    int rc = req_send(c, q, argc, argv, lens);
    if (argv != sargv) {
        free(argv);
        free(lens);
    }
    if (rc != REDIS_OK) {
        req_free_unsent(q);
        lua_pushnil(L);
        lua_pushliteral(L, "disconnected");
        return 2;
    }
    return req_start(L, c, t, q);
}

/* pipeline(client, cmds) -> { {value} | {false, err}, ... } | nil, err
 * cmds is a non-empty list of lists of strings (the wrapper checks). */
static int l_pipeline(lua_State *L) {
    client *c = check_client(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    int ncmd = (int)lua_objlen(L, 2);
    luaL_argcheck(L, ncmd >= 1, 2, "no commands");
    for (int i = 1; i <= ncmd; i++) {
        lua_rawgeti(L, 2, i);
        if (lua_istable(L, -1)) {
            lua_rawgeti(L, -1, 1);
            sl_redis_check_command(L, lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    sl_task *t = sl_task_check_yieldable(L, "sluice.redis pipeline");
    int n = refuse(L, c);
    if (n)
        return n;
    req *q = req_new(L, c, t, ncmd);
    for (int i = 1; i <= ncmd; i++) {
        lua_rawgeti(L, 2, i);
        int argc = (int)lua_objlen(L, -1);
        const char **argv = malloc(sizeof(*argv) * (size_t)(argc + 1));
        size_t *lens = malloc(sizeof(*lens) * (size_t)(argc + 1));
        int rc = REDIS_ERR;
        if (argv && lens && argc > 0) {
            for (int j = 0; j < argc; j++) {
                lua_rawgeti(L, -1, j + 1);
                argv[j] = lua_tolstring(L, -1, &lens[j]);
                lua_pop(L, 1); /* still referenced by the table */
            }
            rc = req_send(c, q, argc, argv, lens);
        }
        free(argv);
        free(lens);
        lua_pop(L, 1);
        if (rc != REDIS_OK)
            break;
    }
    if (q->n == 0) {
        req_free_unsent(q);
        lua_pushnil(L);
        lua_pushliteral(L, "disconnected");
        return 2;
    }
    lua_createtable(L, q->n, 0);
    q->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return req_start(L, c, t, q);
}

static const char *state_name(conn_state s) {
    switch (s) {
    case ST_CONNECTING:
        return "connecting";
    case ST_CONNECTED:
        return "connected";
    case ST_DISCONNECTED:
        return "disconnected";
    default:
        return "closed";
    }
}

static client *any_client(lua_State *L) {
    return luaL_checkudata(L, 1, CLIENT_MT);
}

static int l_status(lua_State *L) {
    lua_pushstring(L, state_name(any_client(L)->state));
    return 1;
}

/* info(client) -> {status, in_flight, reconnects, last_error, host, port,
 * address} where address is the numeric address of the last attempt ("" if
 * the name did not resolve). */
static int l_info(lua_State *L) {
    client *c = any_client(L);
    lua_createtable(L, 0, 7);
    lua_pushstring(L, state_name(c->state));
    lua_setfield(L, -2, "status");
    lua_pushnumber(L, (lua_Number)c->in_flight);
    lua_setfield(L, -2, "in_flight");
    lua_pushnumber(L, (lua_Number)c->reconnects);
    lua_setfield(L, -2, "reconnects");
    lua_pushstring(L, c->last_error);
    lua_setfield(L, -2, "last_error");
    lua_pushstring(L, c->host);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, c->port);
    lua_setfield(L, -2, "port");
    lua_pushstring(L, c->addr);
    lua_setfield(L, -2, "address");
    if (c->sub)
        sl_redis_sub_info(L, c->sub);
    return 1;
}

static int l_close(lua_State *L) {
    client_close(any_client(L));
    return 0;
}

static int l_gc(lua_State *L) {
    client *c = any_client(L);
    client_close(c);
    sl_redis_sub_free(c->sub);
    c->sub = NULL;
    return 0;
}

static int l_tostring(lua_State *L) {
    client *c = any_client(L);
    lua_pushfstring(L, "redis %s (%s:%d/%d, %s)",
                    c->sub ? "subscription" : "client", c->host, c->port, c->db,
                    state_name(c->state));
    return 1;
}

int luaopen_sluice_redis(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"connect", l_connect},
        {"call", l_call},
        {"pipeline", l_pipeline},
        {"status", l_status},
        {"info", l_info},
        {"close", l_close},
        {"subscribe", l_subscribe},
        {"receive", l_receive},
        {NULL, NULL},
    };
    luaL_newmetatable(L, CLIENT_MT);
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    return 1;
}
