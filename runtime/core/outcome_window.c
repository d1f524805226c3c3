/* outcome_window.c -- a sliding window of call outcomes, by count or by time */
#include "outcome_window.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int sl_outcome_window_init(sl_outcome_window *w, int by_time, uint32_t size) {
    memset(w, 0, sizeof(*w));
    w->size = size;
    if (by_time)
        w->buckets = calloc(size, sizeof(*w->buckets));
    else
        w->ring = calloc(size, 1);
    if (w->buckets == NULL && w->ring == NULL) {
        w->size = 0;
        return -1;
    }
    return 0;
}

void sl_outcome_window_free(sl_outcome_window *w) {
    free(w->ring);
    free(w->buckets);
    memset(w, 0, sizeof(*w));
}

void sl_outcome_window_clear(sl_outcome_window *w) {
    if (w->ring)
        memset(w->ring, 0, w->size);
    if (w->buckets)
        memset(w->buckets, 0, sizeof(*w->buckets) * w->size);
    w->head = w->filled = 0;
    w->started = 0;
    w->calls = w->failures = w->slow = 0;
}

/* Drops the buckets that fell out of [sec - size + 1, sec]. */
void sl_outcome_window_advance(sl_outcome_window *w, double now) {
    int64_t sec = (int64_t)floor(now), s;

    if (!w->buckets)
        return;
    if (!w->started) {
        w->last_sec = sec;
        w->started = 1;
        return;
    }
    if (sec <= w->last_sec)
        return;
    if (sec - w->last_sec >= (int64_t)w->size) {
        sl_outcome_window_clear(w);
        w->last_sec = sec;
        w->started = 1;
        return;
    }
    for (s = w->last_sec + 1; s <= sec; s++) {
        sl_outcome_bucket *k = &w->buckets[(uint64_t)s % w->size];
        w->calls -= k->calls;
        w->failures -= k->failures;
        w->slow -= k->slow;
        memset(k, 0, sizeof(*k));
        k->sec = s;
    }
    w->last_sec = sec;
}

void sl_outcome_window_add(sl_outcome_window *w, double now, unsigned out) {
    unsigned failed = (out & SL_OUTCOME_FAILURE) != 0,
             slow = (out & SL_OUTCOME_SLOW) != 0;

    if (w->ring) {
        if (w->filled == w->size) {
            uint8_t old = w->ring[w->head];
            w->calls--;
            w->failures -= (old & SL_OUTCOME_FAILURE) != 0;
            w->slow -= (old & SL_OUTCOME_SLOW) != 0;
        } else {
            w->filled++;
        }
        w->ring[w->head] = (uint8_t)out;
        w->head = (w->head + 1) % w->size;
    } else if (w->buckets) {
        sl_outcome_window_advance(w, now);
        /* A clock that stepped back lands in the newest bucket. */
        sl_outcome_bucket *k = &w->buckets[(uint64_t)w->last_sec % w->size];
        k->sec = w->last_sec;
        k->calls++;
        k->failures += failed;
        k->slow += slow;
    } else {
        return;
    }
    w->calls++;
    w->failures += failed;
    w->slow += slow;
}
