/* test_outcome_window.c -- the breaker's sliding window, by count and by time
 */
#include "core/outcome_window.h"
#include "test.h"

#define F SL_OUTCOME_FAILURE
#define S SL_OUTCOME_SLOW

static void check_totals(const sl_outcome_window *w, long calls, long failures,
                         long slow) {
    CHECK_INT(w->calls, calls);
    CHECK_INT(w->failures, failures);
    CHECK_INT(w->slow, slow);
}

TEST(zeroed_window_records_nothing) {
    sl_outcome_window w = {0};
    sl_outcome_window_add(&w, 1.0, F | S);
    sl_outcome_window_advance(&w, 5.0);
    check_totals(&w, 0, 0, 0);
    sl_outcome_window_free(&w);
    check_totals(&w, 0, 0, 0);
}

TEST(count_window_keeps_the_last_size_calls) {
    sl_outcome_window w;
    CHECK_INT(sl_outcome_window_init(&w, 0, 3), 0);
    CHECK(w.ring != NULL);
    CHECK(w.buckets == NULL);
    sl_outcome_window_add(&w, 0, F);
    sl_outcome_window_add(&w, 0, S);
    sl_outcome_window_add(&w, 0, F | S);
    check_totals(&w, 3, 2, 2);
    /* a fourth call pushes out the first (a failure) */
    sl_outcome_window_add(&w, 0, 0);
    check_totals(&w, 3, 1, 2);
    sl_outcome_window_add(&w, 0, 0); /* out goes the slow one */
    check_totals(&w, 3, 1, 1);
    sl_outcome_window_add(&w, 0, 0); /* and the failed, slow one */
    check_totals(&w, 3, 0, 0);
    /* time means nothing to a count window */
    sl_outcome_window_advance(&w, 1e6);
    check_totals(&w, 3, 0, 0);
    sl_outcome_window_clear(&w);
    check_totals(&w, 0, 0, 0);
    CHECK_INT(w.filled, 0);
    sl_outcome_window_add(&w, 0, F);
    check_totals(&w, 1, 1, 0);
    sl_outcome_window_free(&w);
    CHECK(w.ring == NULL);
    CHECK_INT(w.size, 0);
}

TEST(time_window_keeps_the_last_size_seconds) {
    sl_outcome_window w;
    CHECK_INT(sl_outcome_window_init(&w, 1, 3), 0);
    CHECK(w.buckets != NULL);
    CHECK(w.ring == NULL);
    sl_outcome_window_add(&w, 10.2, F);     /* second 10 */
    sl_outcome_window_add(&w, 10.9, 0);     /* second 10 */
    sl_outcome_window_add(&w, 11.5, S);     /* second 11 */
    sl_outcome_window_add(&w, 12.0, F | S); /* second 12 */
    check_totals(&w, 4, 2, 2);
    /* at 13.0 second 10 falls out: [11, 13] */
    sl_outcome_window_advance(&w, 13.0);
    check_totals(&w, 2, 1, 2);
    /* a clock that stepped back counts in the newest second (13) */
    sl_outcome_window_add(&w, 9.0, F);
    check_totals(&w, 3, 2, 2);
    sl_outcome_window_advance(&w, 14.99); /* [12, 14]: second 11 goes */
    check_totals(&w, 2, 2, 1);
    /* a gap of size seconds or more empties it at once */
    sl_outcome_window_advance(&w, 17.0);
    check_totals(&w, 0, 0, 0);
    sl_outcome_window_add(&w, 17.5, S);
    check_totals(&w, 1, 0, 1);
    sl_outcome_window_free(&w);
    CHECK(w.buckets == NULL);
}

int main(void) {
    RUN(zeroed_window_records_nothing);
    RUN(count_window_keeps_the_last_size_calls);
    RUN(time_window_keeps_the_last_size_seconds);
    return TEST_SUMMARY();
}
