/* lua_amqp.c -- sluice._amqp: AMQP connections for tasks (core/amqp_client.c)
 *
 * A connection is a userdata holding a core handle (whose worker thread
 * owns the rabbitmq-c connection). connect, declare, publish and consume
 * build a core op, submit it and suspend the calling task; the op's done
 * callback (on the loop) pushes the results onto the task's thread and
 * queues it. Several tasks may wait on one connection: their ops run in
 * order, at most queue_max at a time (one more gets nil, "queue full",
 * "busy").
 *
 * Each waiter is a small struct on the connection's list, holding a
 * registry ref to the userdata (the yielded native's arguments are dropped,
 * DESIGN.md §7) until it is woken or cancelled. Killing a waiting task
 * abandons its op (core: never run, or stopped at its next wait with the
 * connection dropped); close wakes every waiter with nil, "connection
 * closed", "closed". Errors never quote the URL.
 */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "core/amqp_client.h"
#include "host/modules.h"
#include "host/runtime.h"
#include "host/task.h"

#define CONN_MT "sluice.amqp.conn"

typedef struct waiter waiter;

typedef struct amqpconn {
    sl_amqp *a;
    waiter *waiters;
} amqpconn;

struct waiter {
    amqpconn *c;
    sl_task *task;
    sl_amqp_op *op;
    int anchor;
    waiter *prev, *next;
};

static void unlink_waiter(waiter *w) {
    if (w->prev)
        w->prev->next = w->next;
    else
        w->c->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    luaL_unref(sl_rt.L, LUA_REGISTRYINDEX, w->anchor);
    free(w);
}

static const char *kind_name(sl_amqp_status s) {
    switch (s) {
    case SL_AMQP_ENACK:
        return "nack";
    case SL_AMQP_ERETURNED:
        return "returned";
    case SL_AMQP_ESERVER:
        return "server";
    case SL_AMQP_ETIMEOUT:
        return "timeout";
    default:
        return "closed";
    }
}

static void push_msgs(lua_State *L, const sl_amqp_op *op) {
    lua_createtable(L, (int)op->nmsgs, 0);
    for (size_t i = 0; i < op->nmsgs; i++) {
        const sl_amqp_msg *m = &op->msgs[i];
        lua_createtable(L, 0, 7);
        lua_pushlstring(L, m->body ? m->body : "", m->len);
        lua_setfield(L, -2, "body");
        lua_pushstring(L, m->routing_key ? m->routing_key : "");
        lua_setfield(L, -2, "routing_key");
        if (m->message_id) {
            lua_pushstring(L, m->message_id);
            lua_setfield(L, -2, "message_id");
        }
        if (m->type) {
            lua_pushstring(L, m->type);
            lua_setfield(L, -2, "type");
        }
        if (m->content_type) {
            lua_pushstring(L, m->content_type);
            lua_setfield(L, -2, "content_type");
        }
        lua_pushinteger(L, m->delivery_mode);
        lua_setfield(L, -2, "delivery_mode");
        lua_pushboolean(L, m->redelivered);
        lua_setfield(L, -2, "redelivered");
        lua_rawseti(L, -2, (int)i + 1);
    }
}

/* On the loop, when the worker finished the op. */
static void on_done(sl_amqp_op *op, void *privdata) {
    waiter *w = privdata;
    sl_task *t = w->task;
    lua_State *co = sl_task_thread(t);
    int n;
    if (op->status == SL_AMQP_OK) {
        switch (op->kind) {
        case SL_AMQP_PUBLISH:
            lua_pushinteger(co, (lua_Integer)op->confirmed);
            break;
        case SL_AMQP_CONSUME:
            push_msgs(co, op);
            break;
        default:
            lua_pushboolean(co, 1);
        }
        n = 1;
    } else {
        lua_pushnil(co);
        lua_pushstring(co, op->error);
        lua_pushstring(co, kind_name(op->status));
        n = 3;
        if (op->kind == SL_AMQP_PUBLISH) {
            lua_pushinteger(co, (lua_Integer)op->confirmed);
            n++;
        }
        if (op->code) {
            if (op->kind != SL_AMQP_PUBLISH) {
                lua_pushnil(co);
                n++;
            }
            lua_pushinteger(co, op->code);
            n++;
        }
    }
    unlink_waiter(w);
    sl_task_wake(t, n);
}

static void cancel_op(sl_task *t, void *opaque) {
    waiter *w = opaque;
    (void)t;
    if (w->c->a)
        sl_amqp_abandon(w->c->a, w->op);
    unlink_waiter(w);
}

static amqpconn *check_conn(lua_State *L) {
    return luaL_checkudata(L, 1, CONN_MT);
}

static int closed(lua_State *L) {
    lua_pushnil(L);
    lua_pushliteral(L, "connection closed");
    lua_pushliteral(L, "closed");
    return 3;
}

/* Submits op for the task and suspends it; op is freed on refusal. */
static int submit(lua_State *L, amqpconn *c, sl_task *t, sl_amqp_op *op) {
    if (!c->a) {
        sl_amqp_op_free(op);
        return closed(L);
    }
    waiter *w = calloc(1, sizeof(*w));
    if (!w) {
        sl_amqp_op_free(op);
        return luaL_error(L, "sluice.amqp: out of memory");
    }
    char err[128];
    if (sl_amqp_submit(c->a, op, on_done, w, err, sizeof(err)) != 0) {
        free(w);
        sl_amqp_op_free(op);
        lua_pushnil(L);
        lua_pushstring(L, err);
        lua_pushliteral(L, "busy");
        return 3;
    }
    w->c = c;
    w->task = t;
    w->op = op;
    lua_pushvalue(L, 1);
    w->anchor = luaL_ref(L, LUA_REGISTRYINDEX);
    w->next = c->waiters;
    if (c->waiters)
        c->waiters->prev = w;
    c->waiters = w;
    return sl_task_suspend(L, t, cancel_op, w);
}

/* The string field name of the table at idx, or NULL; valid while the
 * table is on the stack (it holds the string). */
static const char *opt_string(lua_State *L, int idx, const char *name) {
    lua_getfield(L, idx, name);
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    lua_pop(L, 1);
    return s;
}

/* new(url, connect_timeout, timeout, queue_max, heartbeat,
 *     {ca_file, cert_file, key_file, verify}) -> conn | nil, err
 * (does not connect: the first operation does; the TLS table may be nil) */
static int l_new(lua_State *L) {
    const char *url = luaL_checkstring(L, 1);
    sl_amqp_options o = {
        .connect_timeout = luaL_checknumber(L, 2),
        .timeout = luaL_checknumber(L, 3),
        .queue_max = (int)luaL_checkinteger(L, 4),
        .heartbeat = (int)luaL_optinteger(L, 5, 0),
    };
    if (lua_istable(L, 6)) {
        o.ca_file = opt_string(L, 6, "ca_file");
        o.cert_file = opt_string(L, 6, "cert_file");
        o.key_file = opt_string(L, 6, "key_file");
        lua_getfield(L, 6, "verify");
        o.no_verify = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    amqpconn *c = lua_newuserdata(L, sizeof(*c));
    c->a = NULL;
    c->waiters = NULL;
    luaL_getmetatable(L, CONN_MT);
    lua_setmetatable(L, -2);
    char err[256];
    c->a = sl_amqp_new(sl_rt.base, url, &o, err, sizeof(err));
    if (!c->a) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

/* parse_url(url) -> host, port, user, vhost, tls | nil, err (never the
 * password) */
static int l_parse_url(lua_State *L) {
    sl_amqp_url u;
    char err[256];
    if (sl_amqp_parse_url(luaL_checkstring(L, 1), &u, err, sizeof(err)) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushstring(L, u.host);
    lua_pushinteger(L, u.port);
    lua_pushstring(L, u.user);
    lua_pushstring(L, u.vhost);
    lua_pushboolean(L, u.tls);
    memset(&u, 0, sizeof(u));
    return 5;
}

static char *field_dup(lua_State *L, int idx, const char *name) {
    lua_getfield(L, idx, name);
    char *s = NULL;
    if (lua_type(L, -1) == LUA_TSTRING)
        s = strdup(lua_tostring(L, -1));
    else if (!lua_isnil(L, -1))
        luaL_error(L, "sluice.amqp: %s: string expected", name);
    lua_pop(L, 1);
    return s;
}

/* connect(conn) -> true | nil, err, kind */
static int l_connect(lua_State *L) {
    amqpconn *c = check_conn(L);
    sl_task *t = sl_task_check_yieldable(L, "sluice.amqp connect");
    sl_amqp_op *op = sl_amqp_op_new(SL_AMQP_CONNECT);
    if (!op)
        return luaL_error(L, "sluice.amqp: out of memory");
    return submit(L, c, t, op);
}

/* declare(conn, {exchange, type, durable, queue, binding_key,
 *                args = {{name, value}...}}) -> true | nil, err, kind, code */
static int l_declare(lua_State *L) {
    amqpconn *c = check_conn(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "args");
    int nargs = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    lua_pop(L, 1);
    sl_task *t = sl_task_check_yieldable(L, "sluice.amqp declare");
    sl_amqp_op *op = sl_amqp_op_new(SL_AMQP_DECLARE);
    if (!op)
        return luaL_error(L, "sluice.amqp: out of memory");
    op->exchange = field_dup(L, 2, "exchange");
    op->exchange_type = field_dup(L, 2, "type");
    op->queue = field_dup(L, 2, "queue");
    op->binding_key = field_dup(L, 2, "binding_key");
    lua_getfield(L, 2, "durable");
    op->durable = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (nargs > 0) {
        op->args = calloc((size_t)nargs, sizeof(*op->args));
        if (!op->args) {
            sl_amqp_op_free(op);
            return luaL_error(L, "sluice.amqp: out of memory");
        }
        lua_getfield(L, 2, "args");
        for (int i = 0; i < nargs; i++) {
            lua_rawgeti(L, -1, i + 1);
            lua_rawgeti(L, -1, 1);
            lua_rawgeti(L, -2, 2);
            sl_amqp_arg *g = &op->args[op->nargs++];
            g->name = strdup(luaL_optstring(L, -2, ""));
            if (lua_type(L, -1) == LUA_TNUMBER)
                g->integer = (int64_t)lua_tonumber(L, -1);
            else
                g->text = strdup(luaL_optstring(L, -1, ""));
            lua_pop(L, 3);
        }
        lua_pop(L, 1);
    }
    return submit(L, c, t, op);
}

/* publish(conn, exchange, msgs, n, mandatory, timeout) -> confirmed |
 *   nil, err, kind, confirmed; msgs[i] = {routing_key, body, message_id,
 *   type} (strings; type may be nil) */
static int l_publish(lua_State *L) {
    amqpconn *c = check_conn(L);
    const char *exchange = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    int n = (int)luaL_checkinteger(L, 4);
    int mandatory = lua_toboolean(L, 5);
    double timeout = luaL_optnumber(L, 6, 0);
    luaL_argcheck(L, n >= 0, 4, "negative count");
    sl_task *t = sl_task_check_yieldable(L, "sluice.amqp publish");
    sl_amqp_op *op = sl_amqp_op_new(SL_AMQP_PUBLISH);
    if (!op || !(op->exchange = strdup(exchange)) ||
        !(op->msgs = calloc(n ? (size_t)n : 1, sizeof(*op->msgs)))) {
        sl_amqp_op_free(op);
        return luaL_error(L, "sluice.amqp: out of memory");
    }
    op->mandatory = mandatory;
    op->timeout = timeout;
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 3, i + 1);
        sl_amqp_msg *m = &op->msgs[op->nmsgs++];
        size_t len = 0;
        lua_getfield(L, -1, "body");
        const char *body = lua_tolstring(L, -1, &len);
        if (!body) {
            sl_amqp_op_free(op);
            return luaL_error(L, "sluice.amqp: message %d: body expected",
                              i + 1);
        }
        m->body = malloc(len ? len : 1);
        if (m->body && len)
            memcpy(m->body, body, len);
        m->len = len;
        lua_pop(L, 1);
        m->routing_key = field_dup(L, -1, "routing_key");
        m->message_id = field_dup(L, -1, "message_id");
        m->type = field_dup(L, -1, "type");
        lua_pop(L, 1);
    }
    return submit(L, c, t, op);
}

/* consume(conn, queue, max, wait) -> {msg...} | nil, err, kind
 * (each message acked once copied; {} when none came within wait s) */
static int l_consume(lua_State *L) {
    amqpconn *c = check_conn(L);
    const char *queue = luaL_checkstring(L, 2);
    lua_Integer max = luaL_checkinteger(L, 3);
    double wait = luaL_checknumber(L, 4);
    luaL_argcheck(L, max >= 1, 3, "at least 1 expected");
    sl_task *t = sl_task_check_yieldable(L, "sluice.amqp consume");
    sl_amqp_op *op = sl_amqp_op_new(SL_AMQP_CONSUME);
    if (!op || !(op->queue = strdup(queue))) {
        sl_amqp_op_free(op);
        return luaL_error(L, "sluice.amqp: out of memory");
    }
    op->max = (size_t)max;
    op->wait = wait;
    return submit(L, c, t, op);
}

/* status(conn) -> connected, pending, connects */
static int l_status(lua_State *L) {
    amqpconn *c = check_conn(L);
    if (!c->a) {
        lua_pushboolean(L, 0);
        lua_pushinteger(L, 0);
        lua_pushinteger(L, 0);
        return 3;
    }
    lua_pushboolean(L, sl_amqp_connected(c->a));
    lua_pushinteger(L, sl_amqp_pending(c->a));
    lua_pushinteger(L, (lua_Integer)sl_amqp_connects(c->a));
    return 3;
}

static void close_conn(amqpconn *c) {
    if (!c->a)
        return;
    sl_amqp_free(c->a); /* abandons every op: no done is called */
    c->a = NULL;
    while (c->waiters) {
        waiter *w = c->waiters;
        sl_task *t = w->task;
        lua_State *co = sl_task_thread(t);
        unlink_waiter(w);
        lua_pushnil(co);
        lua_pushliteral(co, "connection closed");
        lua_pushliteral(co, "closed");
        sl_task_wake(t, 3);
    }
}

/* close(conn): idempotent */
static int l_close(lua_State *L) {
    close_conn(check_conn(L));
    return 0;
}

static int l_gc(lua_State *L) {
    close_conn(check_conn(L)); /* no waiters: a waiter anchors the userdata */
    return 0;
}

int luaopen_sluice_amqp(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"connect", l_connect}, {"declare", l_declare}, {"publish", l_publish},
        {"consume", l_consume}, {"status", l_status},   {"close", l_close},
        {NULL, NULL},
    };
    static const luaL_Reg funcs[] = {
        {"new", l_new},
        {"parse_url", l_parse_url},
        {NULL, NULL},
    };
    luaL_newmetatable(L, CONN_MT);
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_register(L, NULL, funcs);
    return 1;
}
