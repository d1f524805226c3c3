/* http_queue.c -- per-origin admission of HTTP requests under a cap */
#include "http_queue.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct sl_hq_origin {
    sl_hq_origin *next; /* in its bucket */
    uint32_t hash;
    size_t active; /* admitted and not yet left */
    size_t queued;
    int mux;
    sl_hq_wait *head, *tail;
    size_t len;
    char key[]; /* scheme://authority, lower case */
};

struct sl_hq {
    sl_hq_origin **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
};

sl_hq *sl_hq_new(void) {
    sl_hq *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    q->nbuckets = 64;
    q->buckets = calloc(q->nbuckets, sizeof(*q->buckets));
    if (!q->buckets) {
        free(q);
        return NULL;
    }
    return q;
}

void sl_hq_free(sl_hq *q) {
    if (!q)
        return;
    for (size_t i = 0; i < q->nbuckets; i++) {
        sl_hq_origin *o = q->buckets[i];
        while (o) {
            sl_hq_origin *next = o->next;
            free(o);
            o = next;
        }
    }
    free(q->buckets);
    free(q);
}

/* The origin part of url: up to the first '/', '?' or '#' after "://" (or
 * the whole of a URL without "://"). */
static size_t origin_len(const char *url) {
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    return (size_t)(p - url) + strcspn(p, "/?#");
}

static char fold(char c) {
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static uint32_t hash_of(const char *s, size_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)fold(s[i])) * 16777619u;
    return h;
}

static int same_key(const sl_hq_origin *o, const char *s, size_t n) {
    if (o->len != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (o->key[i] != fold(s[i]))
            return 0;
    return 1;
}

static sl_hq_origin *find(const sl_hq *q, const char *url, uint32_t *hash,
                          size_t *len) {
    *len = origin_len(url);
    *hash = hash_of(url, *len);
    sl_hq_origin *o = q->buckets[*hash & (q->nbuckets - 1)];
    while (o && !(o->hash == *hash && same_key(o, url, *len)))
        o = o->next;
    return o;
}

static void grow(sl_hq *q) {
    size_t n = q->nbuckets * 2;
    sl_hq_origin **b = calloc(n, sizeof(*b));
    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < q->nbuckets; i++) {
        sl_hq_origin *o = q->buckets[i];
        while (o) {
            sl_hq_origin *next = o->next;
            o->next = b[o->hash & (n - 1)];
            b[o->hash & (n - 1)] = o;
            o = next;
        }
    }
    free(q->buckets);
    q->buckets = b;
    q->nbuckets = n;
}

static size_t limit(const sl_hq_origin *o, size_t cap) {
    if (cap == 0)
        return (size_t)-1;
    return o->mux && cap <= (size_t)-1 / SL_HQ_STREAMS ? cap * SL_HQ_STREAMS
                                                       : cap;
}

int sl_hq_enter(sl_hq *q, sl_hq_wait *w, const char *url, size_t cap) {
    uint32_t hash;
    size_t len;
    sl_hq_origin *o = find(q, url, &hash, &len);
    if (!o) {
        if (!(o = calloc(1, sizeof(*o) + len + 1)))
            return -1;
        o->hash = hash;
        o->len = len;
        for (size_t i = 0; i < len; i++)
            o->key[i] = fold(url[i]);
        if (q->count >= q->nbuckets)
            grow(q);
        sl_hq_origin **b = &q->buckets[hash & (q->nbuckets - 1)];
        o->next = *b;
        *b = o;
        q->count++;
    }
    w->origin = o;
    w->prev = w->next = NULL;
    if (o->queued == 0 && o->active < limit(o, cap)) {
        w->queued = 0;
        o->active++;
        return 1;
    }
    w->queued = 1;
    w->prev = o->tail;
    if (o->tail)
        o->tail->next = w;
    else
        o->head = w;
    o->tail = w;
    o->queued++;
    return 0;
}

static void unlink_wait(sl_hq_origin *o, sl_hq_wait *w) {
    if (w->prev)
        w->prev->next = w->next;
    else
        o->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        o->tail = w->prev;
    w->prev = w->next = NULL;
    w->queued = 0;
    o->queued--;
}

sl_hq_origin *sl_hq_leave(sl_hq *q, sl_hq_wait *w) {
    sl_hq_origin *o = w->origin;
    if (!o)
        return NULL;
    w->origin = NULL;
    if (w->queued)
        unlink_wait(o, w);
    else
        o->active--;
    if (o->active || o->queued)
        return o;
    sl_hq_origin **p = &q->buckets[o->hash & (q->nbuckets - 1)];
    while (*p != o)
        p = &(*p)->next;
    *p = o->next;
    q->count--;
    free(o);
    return NULL;
}

sl_hq_wait *sl_hq_admit(sl_hq_origin *o, size_t cap) {
    sl_hq_wait *w = o->head;
    if (!w || o->active >= limit(o, cap))
        return NULL;
    unlink_wait(o, w);
    o->active++;
    return w;
}

void sl_hq_multiplexed(sl_hq_wait *w) {
    if (w->origin)
        w->origin->mux = 1;
}

void sl_hq_counts(const sl_hq *q, const char *url, size_t *active,
                  size_t *queued) {
    uint32_t hash;
    size_t len;
    const sl_hq_origin *o = find(q, url, &hash, &len);
    *active = o ? o->active : 0;
    *queued = o ? o->queued : 0;
}
