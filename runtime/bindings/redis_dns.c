/* redis_dns.c -- host names resolved on the loop with evdns, for sluice._redis
 *
 * A request is the evdns callback's privdata, never the caller's object:
 * libevent runs on_resolved exactly once per request, even for a cancelled
 * one (later, from the loop), and on_resolved frees it. Cancelling only cuts
 * the link back to the caller (slot = NULL) before asking evdns to cancel.
 * See redis_dns.h for who owns the resolvers and the slot.
 */
#include <event2/dns.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "host/runtime.h"
#include "redis_dns.h"

struct sl_redis_dns_req {
    sl_redis_dns_req **slot; /* NULL once the caller has let go (cancel) */
    sl_redis_dns_fn fn;
    void *privdata;
    struct evdns_getaddrinfo_request *r; /* NULL if answered at once */
};

static struct evdns_base *shared_dns; /* the loop's resolver, or NULL */

int sl_redis_dns_is_address(const char *host) {
    struct in_addr a;
    return strchr(host, ':') || evutil_inet_pton(AF_INET, host, &a) == 1;
}

static void free_shared_dns(void) {
    if (shared_dns)
        evdns_base_free(shared_dns, 0);
    shared_dns = NULL;
}

struct evdns_base *sl_redis_dns_loop(void) {
    if (!shared_dns) {
        shared_dns =
            evdns_base_new(sl_rt.base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                           EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (shared_dns && sl_runtime_on_close(free_shared_dns) != 0)
            free_shared_dns();
    }
    return shared_dns;
}

int sl_redis_dns_new(const char *nameserver, struct evdns_base **out) {
    struct sockaddr_storage ss;
    int sslen = (int)sizeof(ss);
    if (evutil_parse_sockaddr_port(nameserver, (void *)&ss, &sslen) != 0)
        return SL_REDIS_DNS_EADDR;
    struct evdns_base *base =
        evdns_base_new(sl_rt.base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (!base)
        return SL_REDIS_DNS_ENOMEM;
    if (evdns_base_nameserver_ip_add(base, nameserver) != 0) {
        evdns_base_free(base, 0);
        return SL_REDIS_DNS_EADDR;
    }
    *out = base;
    return SL_REDIS_DNS_OK;
}

void sl_redis_dns_free(struct evdns_base *base) { evdns_base_free(base, 0); }

/* Chooses the first IPv4 address, else the first IPv6 one, as text. */
static int pick_address(const struct evutil_addrinfo *res, char *out,
                        size_t outlen) {
    const struct evutil_addrinfo *v6 = NULL;
    for (; res; res = res->ai_next) {
        if (res->ai_family == AF_INET) {
            const struct sockaddr_in *sin = (const void *)res->ai_addr;
            return evutil_inet_ntop(AF_INET, &sin->sin_addr, out, outlen) ? 0
                                                                          : -1;
        }
        if (res->ai_family == AF_INET6 && !v6)
            v6 = res;
    }
    if (v6) {
        const struct sockaddr_in6 *sin6 = (const void *)v6->ai_addr;
        return evutil_inet_ntop(AF_INET6, &sin6->sin6_addr, out, outlen) ? 0
                                                                         : -1;
    }
    return -1;
}

/* evdns's answer; may run inside evdns_getaddrinfo (/etc/hosts). */
static void on_resolved(int err, struct evutil_addrinfo *res, void *arg) {
    sl_redis_dns_req *d = arg;
    sl_redis_dns_req **slot = d->slot;
    sl_redis_dns_fn fn = d->fn;
    void *privdata = d->privdata;
    free(d);
    if (!slot) { /* cancelled: the caller may be gone */
        if (res)
            evutil_freeaddrinfo(res);
        return;
    }
    *slot = NULL;
    char addr[INET6_ADDRSTRLEN];
    int picked = err ? -1 : pick_address(res, addr, sizeof(addr));
    if (res)
        evutil_freeaddrinfo(res);
    if (picked != 0)
        fn(NULL, err ? evutil_gai_strerror(err) : "no address", privdata);
    else
        fn(addr, NULL, privdata);
}

int sl_redis_dns_resolve(struct evdns_base *base, const char *host,
                         sl_redis_dns_req **slot, sl_redis_dns_fn fn,
                         void *privdata) {
    sl_redis_dns_req *d = calloc(1, sizeof(*d));
    if (!d)
        return -1;
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    d->slot = slot;
    d->fn = fn;
    d->privdata = privdata;
    *slot = d;
    struct evdns_getaddrinfo_request *r =
        evdns_getaddrinfo(base, host, NULL, &hints, on_resolved, d);
    if (r)
        d->r = r; /* still pending, so d is alive */
    return 0;
}

void sl_redis_dns_cancel(sl_redis_dns_req **slot) {
    sl_redis_dns_req *d = *slot;
    if (!d)
        return;
    *slot = NULL;
    d->slot = NULL;
    if (d->r)
        evdns_getaddrinfo_cancel(d->r);
}
