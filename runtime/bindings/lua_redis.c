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
 * The connection (resolution, connect, handshake, reconnect) is in
 * redis_conn.c; redis_conn.h has its rules and the types both files share.
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
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/timeout.h"
#include "host/modules.h"
#include "host/runtime.h"
#include "host/task.h"
#include "redis_args.h"
#include "redis_conn.h"
#include "redis_dns.h"
#include "redis_reply.h"
#include "redis_sub.h"

#define CLIENT_MT "sluice.redis.client"
#define MAX_STACK_ARGS 32

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

void sl_redis_on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
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
    req_detach(op); /* hiredis still calls back; sl_redis_on_reply frees it */
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
    c->anchor = LUA_NOREF;
    sl_redis_conn_init(c);
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
    sl_redis_conn_start(new_client(L));
    return 1;
}

/* The task that was subscribing was killed: the client is closed at once. */
static void abandon_sub(void *privdata) { sl_redis_conn_close(privdata); }

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
    sl_redis_conn_start(c);
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
        if (redisAsyncCommandArgv(c->ac, sl_redis_on_reply, q, argc, argv,
                                  lens) != REDIS_OK)
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
    struct timeval tv;
    if (sl_timeout_tv(s, &tv)) /* math.huge: no timer (timeout.h) */
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
    sl_redis_conn_close(any_client(L));
    return 0;
}

static int l_gc(lua_State *L) {
    client *c = any_client(L);
    sl_redis_conn_close(c);
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
    sl_redis_reply_init(L);
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
