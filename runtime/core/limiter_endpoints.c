/* limiter_endpoints.c -- the limiter's endpoint table
 *
 * Owns lim->eps (the endpoints' scopes, each malloc'd with its name), the
 * hash index over them (lim->slots) and the endpoints' adapt blocks
 * (lim->xs): finding an endpoint by name, creating one, and making room
 * for a new one by evicting an idle one when the table is full.
 * sl_limiter_free (limiter.c) frees them; limiter_internal.h says how they
 * are laid out.
 */
#include "limiter.h"
#include "limiter_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SLOT_INDEX 0xffffffu /* a slot's low 24 bits: index into eps + 1 */
#define EVICT_LOOK 8         /* endpoints looked at per eviction attempt */

static uint64_t hash(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
    return h;
}

static uint32_t fingerprint(uint64_t h) { return (uint32_t)(h >> 56) << 24; }

static const char *ep_name(const scope *s) { return (const char *)(s + 1); }

/* The slot holding `name` (hashed to h), or the empty slot where it would
 * go. The fingerprint spares reading the names of most other endpoints. */
static size_t probe(const sl_limiter *lim, uint64_t h, const char *name) {
    size_t mask = lim->nslots - 1, i = (size_t)h & mask;
    uint32_t fp = fingerprint(h), v;
    while ((v = lim->slots[i]) != 0 &&
           ((v & ~SLOT_INDEX) != fp ||
            strcmp(ep_name(lim->eps[(v & SLOT_INDEX) - 1]), name) != 0))
        i = (i + 1) & mask;
    return i;
}

/* Doubles the table (16 slots for the first endpoint). */
static int grow_slots(sl_limiter *lim) {
    size_t n = lim->nslots ? lim->nslots * 2 : 16, i, j;
    uint32_t *slots = calloc(n, sizeof *slots), *old = lim->slots;
    if (slots == NULL)
        return -1;
    lim->slots = slots;
    lim->nslots = n;
    for (i = 0; i < lim->neps; i++) {
        uint64_t h = hash(ep_name(lim->eps[i]));
        for (j = (size_t)h & (n - 1); slots[j]; j = (j + 1) & (n - 1))
            ;
        slots[j] = fingerprint(h) | (uint32_t)(i + 1);
    }
    free(old);
    return 0;
}

/* Removes slot i, moving later entries of its run back (linear probing
 * has no tombstones). */
static void unslot(sl_limiter *lim, size_t i) {
    size_t mask = lim->nslots - 1, j = i, home;
    for (;;) {
        j = (j + 1) & mask;
        if (lim->slots[j] == 0)
            break;
        home =
            (size_t)hash(ep_name(lim->eps[(lim->slots[j] & SLOT_INDEX) - 1])) &
            mask;
        /* the entry at j may fill the hole at i unless its home lies
         * cyclically in (i, j] */
        if (i <= j ? (home <= i || home > j) : (home <= i && home > j)) {
            lim->slots[i] = lim->slots[j];
            i = j;
        }
    }
    lim->slots[i] = 0;
}

/* An idle endpoint (sl_limiter_scope_idle) to make room for a new one: its
 * index in eps, or -1 when none of the next EVICT_LOOK is idle. */
static long find_idle(sl_limiter *lim, double now) {
    size_t k, i;
    for (k = 0; k < EVICT_LOOK && k < lim->neps; k++) {
        i = (lim->hand + k) % lim->neps;
        if (sl_limiter_scope_idle(lim, lim->eps[i], now)) {
            lim->hand = (i + 1) % lim->neps;
            return (long)i;
        }
    }
    lim->hand = (lim->hand + k) % (lim->neps ? lim->neps : 1);
    return -1;
}

/* The most endpoints tracked: max_endpoints, within what a slot indexes. */
static size_t endpoint_cap(const sl_limiter *lim) {
    return lim->o.max_endpoints < SL_LIMITER_ENDPOINTS_LIMIT
               ? lim->o.max_endpoints
               : SL_LIMITER_ENDPOINTS_LIMIT;
}

int sl_limiter_endpoint(sl_limiter *lim, const char *name, int create,
                        double now, scope **out, char *err, size_t errlen) {
    size_t i, n, at;
    long victim = -1;
    uint64_t h;
    scope *s;
    *out = NULL;
    if (name == NULL || name[0] == '\0')
        return 0;
    if (memchr(name, '\0', SL_LIMITER_ENDPOINT_MAX) == NULL)
        return fail(err, errlen, "endpoint name longer than %d bytes",
                    SL_LIMITER_ENDPOINT_MAX - 1);
    h = hash(name);
    if (lim->nslots) {
        i = probe(lim, h, name);
        if (lim->slots[i]) {
            *out = lim->eps[(lim->slots[i] & SLOT_INDEX) - 1];
            return 0;
        }
    }
    if (!create)
        return 0;
    if (lim->neps >= endpoint_cap(lim) && (victim = find_idle(lim, now)) < 0)
        return 0; /* untracked: global and declared pools only */
    n = strlen(name) + 1;
    if ((s = malloc(sizeof *s + n)) == NULL)
        return fail(err, errlen, "out of memory");
    if (victim < 0) {
        if ((lim->neps + 1) * 4 > lim->nslots * 3 && grow_slots(lim) < 0) {
            free(s);
            return fail(err, errlen, "out of memory");
        }
        if (lim->neps == lim->epcap) {
            size_t cap = lim->epcap ? lim->epcap * 2 : 8;
            scope **eps = realloc(lim->eps, cap * sizeof *eps);
            if (eps == NULL) {
                free(s);
                return fail(err, errlen, "out of memory");
            }
            lim->eps = eps;
            lim->epcap = cap;
        }
        at = lim->neps++;
    } else { /* the new endpoint takes the idle one's place */
        at = (size_t)victim;
        unslot(lim,
               probe(lim, hash(ep_name(lim->eps[at])), ep_name(lim->eps[at])));
        free(lim->eps[at]);
    }
    sl_limiter_scope_init(s, &lim->o);
    memcpy((char *)(s + 1), name, n);
    lim->eps[at] = s;
    lim->slots[probe(lim, h, name)] = fingerprint(h) | (uint32_t)(at + 1);
    *out = s;
    return 0;
}

int sl_limiter_scope_adapt(sl_limiter *lim, scope *s) {
    if (s == &lim->global || s->xi)
        return 0;
    if (lim->nxs == lim->xcap) {
        size_t cap = lim->xcap ? lim->xcap * 2 : 4;
        adapt *xs = realloc(lim->xs, cap * sizeof *xs);
        if (xs == NULL)
            return -1;
        lim->xs = xs;
        lim->xcap = cap;
    }
    sl_limiter_adapt_init(&lim->xs[lim->nxs], &lim->o);
    s->xi = (uint32_t)++lim->nxs;
    return 0;
}
