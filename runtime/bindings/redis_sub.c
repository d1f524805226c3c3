/* redis_sub.c -- pub/sub subscriptions for sluice._redis
 *
 * See redis_sub.h for who owns what. Messages are copied out of the hiredis
 * reply into one malloc'd block each and kept in a FIFO until a task
 * receives them.
 */
#include <event2/event.h>
#include <event2/event_struct.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/timeout.h"
#include "host/runtime.h"
#include "redis_sub.h"

typedef struct msg {
    struct msg *next;
    int pmessage;
    size_t clen, plen, len;
    char *channel, *pattern, *payload; /* inside this block */
} msg;

struct sl_redis_sub {
    char *cmd[2]; /* SUBSCRIBE ..., PSUBSCRIBE ... (formatted) or NULL */
    size_t cmdlen[2];
    int want;      /* channels + patterns */
    int confirmed; /* confirmations on the current connection */
    msg *head, *tail;
    long queued, max, received, dropped;
    int closed;
    sl_task *waiter; /* the task in sl_redis_sub_wait, or NULL */
    int ready;       /* it waits for confirmations, not a message */
    int anchor;      /* registry ref of the owner while waited on */
    struct event timer;
    sl_redis_sub_abandon_fn *abandon;
    void *abandon_data;
};

static void on_timeout(evutil_socket_t fd, short what, void *arg);

static char *format(const char *name, int n, const char **v, const size_t *l,
                    size_t *len) {
    const char **argv = malloc(sizeof(*argv) * (size_t)(n + 1));
    size_t *lens = malloc(sizeof(*lens) * (size_t)(n + 1));
    char *buf = NULL;
    if (argv && lens) {
        argv[0] = name;
        lens[0] = strlen(name);
        memcpy(argv + 1, v, sizeof(*argv) * (size_t)n);
        memcpy(lens + 1, l, sizeof(*lens) * (size_t)n);
        int rc = redisFormatCommandArgv(&buf, n + 1, argv, lens);
        if (rc < 0)
            buf = NULL;
        else
            *len = (size_t)rc;
    }
    free(argv);
    free(lens);
    return buf;
}

sl_redis_sub *sl_redis_sub_new(int nch, const char **ch, const size_t *chl,
                               int npat, const char **pat, const size_t *patl,
                               long max, sl_redis_sub_abandon_fn *abandon,
                               void *privdata) {
    sl_redis_sub *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->want = nch + npat;
    s->max = max > 0 ? max : 1;
    s->anchor = LUA_NOREF;
    s->abandon = abandon;
    s->abandon_data = privdata;
    evtimer_assign(&s->timer, sl_rt.base, on_timeout, s);
    if ((nch &&
         !(s->cmd[0] = format("SUBSCRIBE", nch, ch, chl, &s->cmdlen[0]))) ||
        (npat &&
         !(s->cmd[1] = format("PSUBSCRIBE", npat, pat, patl, &s->cmdlen[1])))) {
        sl_redis_sub_free(s);
        return NULL;
    }
    return s;
}

int sl_redis_sub_send(sl_redis_sub *s, redisAsyncContext *ac,
                      sl_redis_sub_cb *fn, void *privdata) {
    s->confirmed = 0;
    for (int i = 0; i < 2; i++)
        if (s->cmd[i] && redisAsyncFormattedCommand(ac, fn, privdata, s->cmd[i],
                                                    s->cmdlen[i]) != REDIS_OK)
            return -1;
    return 0;
}

/* --- the waiter ------------------------------------------------------ */

/* Forgets the waiter and its anchor; returns it. */
static sl_task *unwait(sl_redis_sub *s) {
    sl_task *t = s->waiter;
    event_del(&s->timer);
    s->waiter = NULL;
    if (s->anchor != LUA_NOREF)
        luaL_unref(sl_rt.L, LUA_REGISTRYINDEX, s->anchor);
    s->anchor = LUA_NOREF;
    return t;
}

static void cancel_wait(sl_task *t, void *op) {
    sl_redis_sub *s = op;
    int ready = s->ready;
    (void)t;
    unwait(s);
    if (ready && s->abandon)
        s->abandon(s->abandon_data);
}

/* nil, why; a task waiting for confirmations also gets the owner, which
 * only it knew of, to close it. */
static void wake_fail(sl_redis_sub *s, const char *why) {
    lua_State *co = sl_task_thread(s->waiter);
    int ready = s->ready;
    lua_pushnil(co);
    lua_pushstring(co, why);
    if (ready)
        lua_rawgeti(co, LUA_REGISTRYINDEX, s->anchor);
    sl_task_wake(unwait(s), ready ? 3 : 2);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg) {
    sl_redis_sub *s = arg;
    (void)fd;
    (void)what;
    if (s->waiter)
        wake_fail(s, "timeout");
}

/* Pushes the oldest message as a table onto L and frees it. */
static void push_message(lua_State *L, sl_redis_sub *s) {
    msg *m = s->head;
    s->head = m->next;
    if (!s->head)
        s->tail = NULL;
    s->queued--;
    lua_createtable(L, 0, 4);
    lua_pushstring(L, m->pmessage ? "pmessage" : "message");
    lua_setfield(L, -2, "kind");
    lua_pushlstring(L, m->channel, m->clen);
    lua_setfield(L, -2, "channel");
    lua_pushlstring(L, m->payload, m->len);
    lua_setfield(L, -2, "payload");
    if (m->pmessage) {
        lua_pushlstring(L, m->pattern, m->plen);
        lua_setfield(L, -2, "pattern");
    }
    free(m);
}

/* Wakes the waiter when what it waits for is there. The owner is still
 * anchored while the results are pushed (they allocate, and may collect). */
static void serve(sl_redis_sub *s) {
    if (!s->waiter)
        return;
    lua_State *co = sl_task_thread(s->waiter);
    if (s->ready && s->confirmed >= s->want) {
        lua_rawgeti(co, LUA_REGISTRYINDEX, s->anchor);
        sl_task_wake(unwait(s), 1);
    } else if (!s->ready && s->head) {
        push_message(co, s);
        sl_task_wake(unwait(s), 1);
    }
}

int sl_redis_sub_wait(lua_State *L, sl_redis_sub *s, sl_task *t, int owner,
                      int ready, double timeout) {
    if (s->waiter)
        return luaL_error(L, "sluice.redis: another task is already waiting "
                             "on this subscription");
    if (s->closed) {
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 2;
    }
    if (ready && s->confirmed >= s->want) {
        lua_pushvalue(L, owner);
        return 1;
    }
    if (!ready && s->head) {
        push_message(L, s);
        return 1;
    }
    if (timeout == 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "timeout");
        return 2;
    }
    lua_pushvalue(L, owner);
    s->anchor = luaL_ref(L, LUA_REGISTRYINDEX);
    s->waiter = t;
    s->ready = ready;
    struct timeval tv;
    if (timeout > 0 && sl_timeout_tv(timeout, &tv)) /* math.huge: none */
        evtimer_add(&s->timer, &tv);
    return sl_task_suspend(L, t, cancel_wait, s);
}

/* --- replies --------------------------------------------------------- */

static int is(const redisReply *e, const char *word) {
    return e->type == REDIS_REPLY_STRING && e->len == strlen(word) &&
           strncasecmp(e->str, word, e->len) == 0;
}

static void enqueue(sl_redis_sub *s, const redisReply *r, int pmessage) {
    const redisReply *pat = pmessage ? r->element[1] : NULL;
    const redisReply *ch = r->element[1 + pmessage];
    const redisReply *pl = r->element[2 + pmessage];
    if (ch->type != REDIS_REPLY_STRING || pl->type != REDIS_REPLY_STRING ||
        (pat && pat->type != REDIS_REPLY_STRING))
        return;
    size_t plen = pat ? pat->len : 0;
    msg *m = malloc(sizeof(*m) + ch->len + plen + pl->len + 3);
    if (!m) {
        s->dropped++;
        return;
    }
    m->next = NULL;
    m->pmessage = pmessage;
    m->channel = (char *)(m + 1);
    m->clen = ch->len;
    memcpy(m->channel, ch->str, ch->len + 1);
    m->pattern = m->channel + ch->len + 1;
    m->plen = plen;
    if (pat)
        memcpy(m->pattern, pat->str, plen);
    m->pattern[plen] = '\0';
    m->payload = m->pattern + plen + 1;
    m->len = pl->len;
    memcpy(m->payload, pl->str, pl->len + 1);
    if (s->queued >= s->max) { /* full: the oldest goes */
        msg *old = s->head;
        s->head = old->next;
        if (!s->head)
            s->tail = NULL;
        s->queued--;
        s->dropped++;
        free(old);
    }
    if (s->tail)
        s->tail->next = m;
    else
        s->head = m;
    s->tail = m;
    s->queued++;
    s->received++;
}

void sl_redis_sub_on_reply(sl_redis_sub *s, const redisReply *r) {
    if (!r) { /* the context goes away */
        s->confirmed = 0;
        return;
    }
    if (s->closed || r->type != REDIS_REPLY_ARRAY || r->elements < 3)
        return;
    const redisReply *kind = r->element[0];
    if (is(kind, "message"))
        enqueue(s, r, 0);
    else if (is(kind, "pmessage") && r->elements >= 4)
        enqueue(s, r, 1);
    else if (is(kind, "subscribe") || is(kind, "psubscribe"))
        s->confirmed++;
    serve(s);
}

/* --- lifetime -------------------------------------------------------- */

void sl_redis_sub_close(sl_redis_sub *s) {
    if (s->closed)
        return;
    s->closed = 1;
    while (s->head) {
        msg *m = s->head;
        s->head = m->next;
        free(m);
    }
    s->tail = NULL;
    s->queued = 0;
    s->confirmed = 0;
    if (s->waiter)
        wake_fail(s, "closed");
}

void sl_redis_sub_free(sl_redis_sub *s) {
    if (!s)
        return;
    sl_redis_sub_close(s);
    event_del(&s->timer);
    for (int i = 0; i < 2; i++)
        if (s->cmd[i])
            redisFreeCommand(s->cmd[i]);
    free(s);
}

void sl_redis_sub_info(lua_State *L, const sl_redis_sub *s) {
    lua_pushinteger(L, s->confirmed);
    lua_setfield(L, -2, "subscribed");
    lua_pushnumber(L, (lua_Number)s->queued);
    lua_setfield(L, -2, "pending");
    lua_pushnumber(L, (lua_Number)s->received);
    lua_setfield(L, -2, "received");
    lua_pushnumber(L, (lua_Number)s->dropped);
    lua_setfield(L, -2, "dropped");
    lua_pushnumber(L, (lua_Number)s->max);
    lua_setfield(L, -2, "max_pending");
}
