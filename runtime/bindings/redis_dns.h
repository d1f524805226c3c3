/* redis_dns.h -- host names resolved on the loop with evdns, for sluice._redis
 *
 * hiredis would resolve a host name with a blocking getaddrinfo, so the
 * client resolves names here and hands hiredis a numeric address.
 *
 * Resolvers: the loop's shared resolver (sl_redis_dns_loop) is created at
 * first use, reads resolv.conf and /etc/hosts once, and is owned by this
 * module until sl_runtime_close frees it. A private resolver
 * (sl_redis_dns_new, for tests) is owned by the caller, who frees it with
 * sl_redis_dns_free after cancelling the requests made on it.
 *
 * Requests: the caller owns a slot (an sl_redis_dns_req pointer, NULL when
 * idle) and the module owns the request. *slot is non-NULL exactly while
 * the resolution is under way: it is set before evdns is asked and set back
 * to NULL just before the callback runs, or by sl_redis_dns_cancel. The
 * slot must stay valid while it is non-NULL. A cancelled request never calls
 * back; its memory is freed later, when libevent reports the cancellation.
 */
#ifndef SLUICE_REDIS_DNS_H
#define SLUICE_REDIS_DNS_H

struct evdns_base;
typedef struct sl_redis_dns_req sl_redis_dns_req;

/* The answer: addr is the numeric address chosen (the first IPv4 one, else
 * the first IPv6 one), or NULL, and then why is a short reason (evdns's
 * message, or "no address"). Both strings are only valid for the duration
 * of the call. */
typedef void (*sl_redis_dns_fn)(const char *addr, const char *why,
                                void *privdata);

/* Return codes of sl_redis_dns_new. */
#define SL_REDIS_DNS_OK 0
#define SL_REDIS_DNS_EADDR -1  /* nameserver is not "ip[:port]" */
#define SL_REDIS_DNS_ENOMEM -2 /* the resolver cannot be created */

/* Is host an IP literal (IPv4, or anything with a ':'), to be used as is? */
int sl_redis_dns_is_address(const char *host);

/* The loop's shared resolver, created at first use; NULL if it cannot be. */
struct evdns_base *sl_redis_dns_loop(void);

/* Creates a private resolver in *out that asks only nameserver
 * ("ip[:port]") and ignores /etc/hosts. Returns SL_REDIS_DNS_OK, or an
 * error code with *out untouched. */
int sl_redis_dns_new(const char *nameserver, struct evdns_base **out);

/* Frees a resolver made by sl_redis_dns_new. */
void sl_redis_dns_free(struct evdns_base *base);

/* Starts resolving host (a TCP address of any family) with base. Returns 0;
 * fn then runs exactly once unless cancelled first -- possibly inside this
 * call, when the answer is at hand (/etc/hosts, an immediate failure).
 * Returns -1 when out of memory: *slot stays NULL and fn never runs. */
int sl_redis_dns_resolve(struct evdns_base *base, const char *host,
                         sl_redis_dns_req **slot, sl_redis_dns_fn fn,
                         void *privdata);

/* Forgets the request in *slot, if any, and sets *slot to NULL: fn will not
 * run. */
void sl_redis_dns_cancel(sl_redis_dns_req **slot);

#endif
