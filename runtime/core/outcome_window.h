/* outcome_window.h -- a sliding window of call outcomes, by count or by time
 *
 * The breaker's rate rules (failure_rate, slow_call_rate) read it: a COUNT
 * window holds the outcomes of the last `size` calls, a TIME window those of
 * the last `size` seconds in one-second buckets of the caller's monotonic
 * clock. calls, failures and slow are the window's running totals.
 *
 * Ownership: the window is a plain struct inside its owner (the breaker);
 * sl_outcome_window_init allocates its ring or buckets and
 * sl_outcome_window_free releases them. A zeroed window is an empty one
 * with no storage: adding to it does nothing. Not thread-safe.
 */
#ifndef SLUICE_OUTCOME_WINDOW_H
#define SLUICE_OUTCOME_WINDOW_H

#include <stdint.h>

/* Outcome bits of one call, for sl_outcome_window_add. */
#define SL_OUTCOME_FAILURE 1u
#define SL_OUTCOME_SLOW 2u

typedef struct sl_outcome_bucket {
    int64_t sec;
    uint32_t calls, failures, slow;
} sl_outcome_bucket;

typedef struct sl_outcome_window {
    uint8_t *ring;              /* COUNT: one outcome per call, bits */
    sl_outcome_bucket *buckets; /* TIME: one per second, sec % size */
    uint32_t size;
    uint32_t head;    /* COUNT: next slot to write */
    uint32_t filled;  /* COUNT: slots in use */
    int64_t last_sec; /* TIME: newest second seen */
    int started;      /* TIME: last_sec is meaningful */
    uint64_t calls, failures, slow;
} sl_outcome_window;

/* Makes w an empty window of size calls (by_time 0) or seconds (by_time 1).
 * Returns 0, or -1 when out of memory (w is then empty, with no storage). */
int sl_outcome_window_init(sl_outcome_window *w, int by_time, uint32_t size);

/* Releases w's storage; w is then empty. */
void sl_outcome_window_free(sl_outcome_window *w);

/* Forgets every outcome; the storage is kept. */
void sl_outcome_window_clear(sl_outcome_window *w);

/* TIME windows: drops the buckets that fell out of [now - size + 1, now].
 * Does nothing to a COUNT window. */
void sl_outcome_window_advance(sl_outcome_window *w, double now);

/* Records one call's outcome (SL_OUTCOME_* bits) at time now. */
void sl_outcome_window_add(sl_outcome_window *w, double now, unsigned out);

#endif
