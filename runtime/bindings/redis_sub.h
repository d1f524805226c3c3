/* redis_sub.h -- pub/sub subscriptions for sluice._redis: messages queued
 * for one receiving task
 *
 * A subscription rides on a dedicated client connection (RESP2 allows no
 * other command on a subscribed connection). lua_redis.c owns it: it creates
 * it with the channels and patterns, sends its commands on every new
 * connection (sl_redis_sub_send), hands it every reply hiredis delivers for
 * them (sl_redis_sub_on_reply), closes it with the client and frees it when
 * the client's userdata is collected (sl_redis_sub_free).
 *
 * hiredis calls the subscription callback once per confirmation and once per
 * message for as long as the context lives (not once per command), and with
 * NULL when the context goes away. A reply is valid only during that call,
 * so messages are copied into the queue here; the queue owns them until they
 * are received or dropped.
 *
 * Queue: at most max messages wait to be received; when a new one arrives on
 * a full queue the oldest is dropped and counted (info: dropped).
 *
 * Waiting: one task at a time waits on a subscription, either for its
 * confirmations (sl_redis_sub_wait with ready set) or for a message. While
 * it waits, the userdata that owns the subscription is anchored in the
 * registry, so the subscription cannot be collected under its waiter; the
 * anchor goes when the waiter is woken (message, confirmation, timeout,
 * close) or killed.
 */
#ifndef SLUICE_REDIS_SUB_H
#define SLUICE_REDIS_SUB_H

#include <lua.h>
#include <stddef.h>

#include "host/task.h"

struct redisAsyncContext;
struct redisReply;
typedef struct sl_redis_sub sl_redis_sub;
typedef void(sl_redis_sub_cb)(struct redisAsyncContext *ac, void *reply,
                              void *privdata);

/* Called when the task waiting for the confirmations is killed: nobody
 * else knows of the subscription, so its owner ends it at once. */
typedef void(sl_redis_sub_abandon_fn)(void *privdata);

/* A subscription to the nch channels and npat patterns (binary-safe strings
 * with their lengths; at least one in all), queuing at most max messages.
 * NULL when out of memory. */
sl_redis_sub *sl_redis_sub_new(int nch, const char **ch, const size_t *chl,
                               int npat, const char **pat, const size_t *patl,
                               long max, sl_redis_sub_abandon_fn *abandon,
                               void *privdata);

/* Queues SUBSCRIBE and PSUBSCRIBE on a new context, with fn(privdata) as
 * their callback; the confirmations of the previous connection are
 * forgotten. Returns 0, or -1 when hiredis refused them. */
int sl_redis_sub_send(sl_redis_sub *s, struct redisAsyncContext *ac,
                      sl_redis_sub_cb *fn, void *privdata);

/* One reply hiredis delivered for the subscription (NULL: the context went
 * away). Queues messages, counts confirmations, wakes the waiter. */
void sl_redis_sub_on_reply(sl_redis_sub *s, const struct redisReply *r);

/* Waits on s from task t (the running task on L), whose userdata is at
 * owner on L's stack. With ready set: until every channel and pattern is
 * confirmed on the current connection, returning the owner; otherwise until
 * a message, returning {kind = "message"|"pmessage", channel =, payload =,
 * pattern =}. nil, "timeout" after timeout seconds (never when negative),
 * nil, "closed" once closed; a failed wait for confirmations returns the
 * owner as a third value. Returns at once when it can, else suspends
 * (use as `return sl_redis_sub_wait(...)`). Raises when another task is
 * already waiting. */
int sl_redis_sub_wait(lua_State *L, sl_redis_sub *s, sl_task *t, int owner,
                      int ready, double timeout);

/* Stops the subscription: the queue is emptied and the waiter woken with
 * nil, "closed". Idempotent. */
void sl_redis_sub_close(sl_redis_sub *s);

/* Frees a closed subscription. */
void sl_redis_sub_free(sl_redis_sub *s);

/* Sets subscribed (confirmed on the current connection), pending
 * (queued), received, dropped and max_pending on the table at the top of
 * L. */
void sl_redis_sub_info(lua_State *L, const sl_redis_sub *s);

#endif
