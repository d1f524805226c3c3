/* http_queue.h -- per-origin admission of HTTP requests under a cap
 *
 * The HTTP client admits at most `cap` requests at a time to one origin
 * (the scheme://authority of a URL) and queues the rest, first come first
 * served, here rather than in libcurl: libcurl 7.88 keeps requests over its
 * per-host cap in one list that curl_multi_remove_handle walks from end to
 * end for every request that ends, which costs a millisecond a request with
 * ten thousand queued. Here entering, leaving and admitting are O(1) (a
 * hash lookup on entering).
 *
 * An origin known to multiplex (HTTP/2: sl_hq_multiplexed) admits
 * SL_HQ_STREAMS times the cap: its requests share connections as streams.
 *
 * Ownership: the caller owns each sl_hq_wait (embedded in its request) and
 * must call sl_hq_leave exactly once for every sl_hq_enter that returned 0
 * or 1, whether the request was admitted or is still queued. The queue owns
 * the origins; an origin is freed when it has nothing admitted or queued.
 */
#ifndef SLUICE_HTTP_QUEUE_H
#define SLUICE_HTTP_QUEUE_H

#include <stddef.h>

#define SL_HQ_STREAMS 100 /* libcurl's default streams per connection */

typedef struct sl_hq sl_hq;
typedef struct sl_hq_origin sl_hq_origin;

typedef struct sl_hq_wait {
    struct sl_hq_wait *prev, *next; /* in its origin's queue */
    sl_hq_origin *origin;
    int queued;
} sl_hq_wait;

sl_hq *sl_hq_new(void);
void sl_hq_free(sl_hq *q); /* the caller's waits must all have left */

/* Enters a request for url's origin under cap (0: no cap). Returns 1 when
 * it is admitted (may start now), 0 when it is queued (sl_hq_admit returns
 * it later), -1 when out of memory (nothing entered). */
int sl_hq_enter(sl_hq *q, sl_hq_wait *w, const char *url, size_t cap);

/* A request ended (or was cancelled, admitted or queued). Returns its
 * origin when that still has requests (call sl_hq_admit on it until it
 * returns NULL: a slot may have opened), else NULL (the origin is freed). */
sl_hq_origin *sl_hq_leave(sl_hq *q, sl_hq_wait *w);

/* The next queued request of o that fits under cap, now admitted, or NULL. */
sl_hq_wait *sl_hq_admit(sl_hq_origin *o, size_t cap);

/* w's origin multiplexes: it admits SL_HQ_STREAMS x cap from now on. */
void sl_hq_multiplexed(sl_hq_wait *w);

/* Requests admitted to, and queued for, url's origin (0, 0 if unknown). */
void sl_hq_counts(const sl_hq *q, const char *url, size_t *active,
                  size_t *queued);

#endif
