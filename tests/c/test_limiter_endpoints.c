/* test_limiter_endpoints.c -- the limiter's endpoint table: idle endpoints
 * evicted when it is full, on a fake clock */
#include <stdio.h>
#include <string.h>

#include "core/limiter.h"
#include "test.h"

#define WALL0 1000000020.0

static char err[256];

/* rate 10/s, burst 1, at most max endpoints */
static sl_limiter *make(size_t max) {
    sl_limiter_options o;
    sl_limiter_options_init(&o);
    o.name = "endpoints";
    o.max_endpoints = max;
    return sl_limiter_new(&o, err, sizeof err);
}

static int acquire(sl_limiter *lim, const char *ep, double cost, double now,
                   double max_wait) {
    sl_limiter_request r = {ep, cost, NULL, max_wait, NULL};
    sl_limiter_ticket *t = NULL;
    double ready;
    return sl_limiter_acquire(lim, &r, now, max_wait > 0 ? &t : NULL, &ready,
                              err, sizeof err);
}

static const char *name_at(sl_limiter *lim, size_t i, double now) {
    static sl_limiter_endpoint_stats st;
    if (sl_limiter_get_endpoint_stats(lim, i, now, WALL0 + now, &st) != 0)
        return "(none)";
    return st.endpoint;
}

static long long requests_at(sl_limiter *lim, size_t i, double now) {
    sl_limiter_endpoint_stats st;
    if (sl_limiter_get_endpoint_stats(lim, i, now, WALL0 + now, &st) != 0)
        return -1;
    return st.requests_made;
}

TEST(a_full_table_replaces_an_endpoint_idle_for_4_s) {
    sl_limiter *lim = make(2);
    CHECK_INT(acquire(lim, "/1", 1, 0, 0), SL_LIMITER_GO);
    CHECK_INT(acquire(lim, "/2", 1, 0.1, 0), SL_LIMITER_GO);
    /* full, and /1 sent 2 s ago: /3 goes untracked */
    CHECK_INT(acquire(lim, "/3", 1, 2, 0), SL_LIMITER_GO);
    CHECK_INT((long long)sl_limiter_endpoint_count(lim), 2);
    CHECK_NUM(sl_limiter_rate(lim, "/3", 2), -1, 0);
    /* 4 s to the microsecond is not yet idle: the history spans 4 s */
    CHECK_INT(acquire(lim, "/3", 1, 4.0, 0), SL_LIMITER_GO);
    CHECK_NUM(sl_limiter_rate(lim, "/3", 4.0), -1, 0);
    /* past 4 s /1 is idle: /3 takes its place (and /2, idle too, stays) */
    CHECK_INT(acquire(lim, "/3", 1, 4.2, 0), SL_LIMITER_GO);
    CHECK_INT((long long)sl_limiter_endpoint_count(lim), 2);
    CHECK_STR(name_at(lim, 0, 4.2), "/3");
    CHECK_INT(requests_at(lim, 0, 4.2), 1);
    CHECK_STR(name_at(lim, 1, 4.2), "/2");
    CHECK_INT(requests_at(lim, 1, 4.2), 1);
    CHECK_NUM(sl_limiter_rate(lim, "/1", 4.2), -1, 0);
    CHECK_NUM(sl_limiter_rate(lim, "/3", 4.2), 10, 0);
    /* /1 comes back as a new endpoint, in /2's place (the round robin
     * goes on from /3's slot) */
    CHECK_INT(acquire(lim, "/1", 1, 4.3, 0), SL_LIMITER_GO);
    CHECK_STR(name_at(lim, 0, 4.3), "/3");
    CHECK_STR(name_at(lim, 1, 4.3), "/1");
    CHECK_INT(requests_at(lim, 1, 4.3), 1);
    /* a tracked /3 now paces itself: its pool is charged */
    CHECK_INT(acquire(lim, "/3", 1, 4.35, 0), SL_LIMITER_TIMEOUT);
    sl_limiter_free(lim);
}

TEST(an_endpoint_whose_pool_has_not_refilled_is_kept) {
    sl_limiter *lim = make(1);
    double ready;
    sl_limiter_request r = {"/b", 1, NULL, 0, NULL};
    /* cost 50 at 10/s: the pool owes 50, refilled at 5 s */
    CHECK_INT(acquire(lim, "/a", 50, 0, 0), SL_LIMITER_GO);
    CHECK_INT(sl_limiter_acquire(lim, &r, 4.5, NULL, &ready, err, sizeof err),
              SL_LIMITER_TIMEOUT);
    CHECK_NUM(ready, 5, 1e-9); /* the global pool; /b is untracked */
    CHECK_STR(name_at(lim, 0, 4.5), "/a");
    CHECK_NUM(sl_limiter_rate(lim, "/b", 4.5), -1, 0);
    CHECK_INT(acquire(lim, "/b", 1, 5.1, 0), SL_LIMITER_GO);
    CHECK_STR(name_at(lim, 0, 5.1), "/b");
    sl_limiter_free(lim);
}

TEST(endpoints_that_learned_or_waited_are_kept) {
    sl_limiter *lim = make(3);
    sl_limiter_stats s;
    /* a 429 (learned a ceiling), a rate set by adjust_rate, a request
     * that was made to wait (its ticket cancelled at once) */
    CHECK_INT(sl_limiter_record_429(lim, "/429", -1, 0, WALL0, err, sizeof err),
              0);
    CHECK_INT(sl_limiter_adjust_rate(lim, "/adjusted", 2, 0, err, sizeof err),
              0);
    {
        sl_limiter_request r = {"/waited", 1, NULL, 10, NULL};
        sl_limiter_ticket *t = NULL;
        double ready;
        CHECK_INT(acquire(lim, "/waited", 1, 0, 0), SL_LIMITER_GO);
        CHECK_INT(sl_limiter_acquire(lim, &r, 0, &t, &ready, err, sizeof err),
                  SL_LIMITER_WAIT);
        sl_limiter_cancel(lim, t);
    }
    /* an hour later none of them is replaced */
    CHECK_INT(acquire(lim, "/new", 1, 3600, 0), SL_LIMITER_GO);
    sl_limiter_get_stats(lim, 3600, &s);
    CHECK_INT(s.endpoints_tracked, 3);
    CHECK_STR(name_at(lim, 0, 3600), "/429");
    CHECK_STR(name_at(lim, 1, 3600), "/adjusted");
    CHECK_STR(name_at(lim, 2, 3600), "/waited");
    CHECK_NUM(sl_limiter_rate(lim, "/adjusted", 3600), 20, 0);
    CHECK_NUM(sl_limiter_rate(lim, "/new", 3600), -1, 0);
    sl_limiter_free(lim);
}

/* Many replacements in a table with collisions: every replaced endpoint is
 * gone, every new one found (the table deletes without tombstones). */
TEST(replacing_many_keeps_the_table_consistent) {
    sl_limiter_options o;
    sl_limiter *lim;
    char name[32];
    int i, found = 0, gone = 0;
    sl_limiter_options_init(&o);
    o.rate = o.max_rate = 1e6;
    o.burst = 1e6;
    o.max_endpoints = 200;
    lim = sl_limiter_new(&o, err, sizeof err);
    for (i = 0; i < 200; i++) {
        snprintf(name, sizeof name, "/old/%d", i);
        CHECK_INT(acquire(lim, name, 1, 0, 0), SL_LIMITER_GO);
    }
    for (i = 0; i < 150; i++) {
        snprintf(name, sizeof name, "/new/%d", i);
        CHECK_INT(acquire(lim, name, 1, 10, 0), SL_LIMITER_GO);
    }
    for (i = 0; i < 200; i++) {
        snprintf(name, sizeof name, "/old/%d", i);
        gone += sl_limiter_rate(lim, name, 10) < 0;
        if (i < 150) {
            snprintf(name, sizeof name, "/new/%d", i);
            found += sl_limiter_rate(lim, name, 10) == 1e6;
        }
    }
    CHECK_INT(found, 150);
    CHECK_INT(gone, 150);
    CHECK_INT((long long)sl_limiter_endpoint_count(lim), 200);
    CHECK_STR(name_at(lim, 0, 10), "/new/0");
    CHECK_STR(name_at(lim, 149, 10), "/new/149");
    CHECK_STR(name_at(lim, 150, 10), "/old/150");
    sl_limiter_free(lim);
}

TEST(an_empty_limiter_has_no_endpoint_table) {
    sl_limiter *lim = make(1024);
    sl_limiter_stats s;
    CHECK_NUM(sl_limiter_rate(lim, "/never", 0), -1, 0);
    CHECK_INT(acquire(lim, NULL, 1, 0, 0), SL_LIMITER_GO);
    sl_limiter_get_stats(lim, 0, &s);
    CHECK_INT(s.endpoints_tracked, 0);
    CHECK_INT(s.total_requests, 1);
    CHECK_STR(sl_limiter_name(lim), "endpoints");
    sl_limiter_free(lim);
}

int main(void) {
    RUN(a_full_table_replaces_an_endpoint_idle_for_4_s);
    RUN(an_endpoint_whose_pool_has_not_refilled_is_kept);
    RUN(endpoints_that_learned_or_waited_are_kept);
    RUN(replacing_many_keeps_the_table_consistent);
    RUN(an_empty_limiter_has_no_endpoint_table);
    return TEST_SUMMARY();
}
