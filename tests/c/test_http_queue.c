/* test_http_queue.c -- per-origin admission: caps, FIFO order, cancellation */
#include "core/http_queue.h"
#include "test.h"

#define A "http://127.0.0.1:8080/a?x=1"
#define A2 "HTTP://127.0.0.1:8080/b#f"
#define B "https://api.example.com/v1"

TEST(admits_up_to_the_cap_then_queues_in_order) {
    sl_hq *q = sl_hq_new();
    sl_hq_wait w[5];
    CHECK_INT(sl_hq_enter(q, &w[0], A, 2), 1);
    CHECK_INT(sl_hq_enter(q, &w[1], A2, 2), 1); /* same origin, any case */
    CHECK_INT(sl_hq_enter(q, &w[2], A, 2), 0);
    CHECK_INT(sl_hq_enter(q, &w[3], A, 2), 0);
    CHECK_INT(sl_hq_enter(q, &w[4], B, 2), 1); /* another origin */
    size_t active, queued;
    sl_hq_counts(q, "http://127.0.0.1:8080", &active, &queued);
    CHECK_INT(active, 2);
    CHECK_INT(queued, 2);
    sl_hq_origin *o = sl_hq_leave(q, &w[0]);
    CHECK(o != NULL);
    CHECK(sl_hq_admit(o, 2) == &w[2]); /* first come, first served */
    CHECK(sl_hq_admit(o, 2) == NULL);  /* full again */
    o = sl_hq_leave(q, &w[1]);
    CHECK(sl_hq_admit(o, 2) == &w[3]);
    CHECK(sl_hq_leave(q, &w[2]) != NULL); /* w[3] still runs */
    CHECK(sl_hq_leave(q, &w[3]) == NULL); /* nothing left: origin freed */
    sl_hq_counts(q, A, &active, &queued);
    CHECK_INT(active + queued, 0);
    CHECK(sl_hq_leave(q, &w[4]) == NULL);
    CHECK(sl_hq_leave(q, &w[4]) == NULL); /* twice is harmless */
    sl_hq_free(q);
}

TEST(a_queued_request_that_leaves_gives_up_its_place) {
    sl_hq *q = sl_hq_new();
    sl_hq_wait w[4];
    CHECK_INT(sl_hq_enter(q, &w[0], A, 1), 1);
    CHECK_INT(sl_hq_enter(q, &w[1], A, 1), 0);
    CHECK_INT(sl_hq_enter(q, &w[2], A, 1), 0);
    CHECK_INT(sl_hq_enter(q, &w[3], A, 1), 0);
    sl_hq_origin *o = sl_hq_leave(q, &w[2]); /* cancelled while queued */
    CHECK(sl_hq_admit(o, 1) == NULL);        /* no slot opened */
    o = sl_hq_leave(q, &w[0]);
    CHECK(sl_hq_admit(o, 1) == &w[1]);
    o = sl_hq_leave(q, &w[1]);
    CHECK(sl_hq_admit(o, 1) == &w[3]);
    CHECK(sl_hq_leave(q, &w[3]) == NULL);
    sl_hq_free(q);
}

TEST(a_multiplexing_origin_takes_streams_and_no_cap_means_none) {
    sl_hq *q = sl_hq_new();
    static sl_hq_wait w[SL_HQ_STREAMS * 2 + 1];
    CHECK_INT(sl_hq_enter(q, &w[0], B, 2), 1);
    sl_hq_multiplexed(&w[0]);
    int admitted = 1;
    for (int i = 1; i < SL_HQ_STREAMS * 2 + 1; i++)
        admitted += sl_hq_enter(q, &w[i], B, 2);
    CHECK_INT(admitted, SL_HQ_STREAMS * 2);
    for (int i = 0; i < SL_HQ_STREAMS * 2 + 1; i++)
        sl_hq_leave(q, &w[i]);
    static sl_hq_wait u[1000];
    admitted = 0;
    for (int i = 0; i < 1000; i++)
        admitted += sl_hq_enter(q, &u[i], A, 0);
    CHECK_INT(admitted, 1000);
    for (int i = 0; i < 1000; i++)
        sl_hq_leave(q, &u[i]);
    sl_hq_free(q);
}

TEST(keeps_many_origins_apart) {
    sl_hq *q = sl_hq_new();
    static sl_hq_wait w[3000];
    char url[64];
    for (int i = 0; i < 3000; i++) {
        snprintf(url, sizeof(url), "http://h%d.example:80/x", i % 1000);
        CHECK_INT(sl_hq_enter(q, &w[i], url, 2), i < 2000 ? 1 : 0);
    }
    size_t active, queued;
    sl_hq_counts(q, "http://h999.example:80", &active, &queued);
    CHECK_INT(active, 2);
    CHECK_INT(queued, 1);
    for (int i = 0; i < 3000; i++)
        sl_hq_leave(q, &w[i]);
    sl_hq_counts(q, "http://h999.example:80", &active, &queued);
    CHECK_INT(active + queued, 0);
    sl_hq_free(q);
}

int main(void) {
    RUN(admits_up_to_the_cap_then_queues_in_order);
    RUN(a_queued_request_that_leaves_gives_up_its_place);
    RUN(a_multiplexing_origin_takes_streams_and_no_cap_means_none);
    RUN(keeps_many_origins_apart);
    return TEST_SUMMARY();
}
