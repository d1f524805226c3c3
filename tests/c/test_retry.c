/* test_retry.c -- retry delays and the retry budget */
#include "core/retry.h"
#include "test.h"

#include <math.h>

TEST(parse_names) {
    CHECK_INT(sl_retry_strategy_parse("fixed"), SL_RETRY_FIXED);
    CHECK_INT(sl_retry_strategy_parse("exponential_jitter"),
              SL_RETRY_EXPONENTIAL_JITTER);
    CHECK_INT(sl_retry_strategy_parse("adaptive"), SL_RETRY_ADAPTIVE);
    CHECK_INT(sl_retry_strategy_parse("exponentail"), -1);
    CHECK_STR(sl_retry_strategy_name(SL_RETRY_LINEAR), "linear");
}

TEST(deterministic_strategies) {
    CHECK_NUM(sl_retry_delay(SL_RETRY_FIXED, 3, 0.5, 30, -1, 60, 0), 0.5, 0);
    CHECK_NUM(sl_retry_delay(SL_RETRY_LINEAR, 3, 0.5, 30, -1, 60, 0), 1.5, 0);
    double want[] = {0.5, 1, 2, 4, 8, 16, 30, 30};
    for (int n = 1; n <= 8; n++)
        CHECK_NUM(sl_retry_delay(SL_RETRY_EXPONENTIAL, n, 0.5, 30, -1, 60, 0.9),
                  want[n - 1], 0);
    /* huge attempt numbers stay capped, never inf or NaN */
    CHECK_NUM(sl_retry_delay(SL_RETRY_EXPONENTIAL, 5000, 0.5, 30, -1, 60, 0),
              30, 0);
    CHECK_NUM(sl_retry_delay(SL_RETRY_LINEAR, 0, 2, 30, -1, 60, 0), 2, 0);
}

TEST(full_jitter_spans_zero_to_cap) {
    CHECK_NUM(
        sl_retry_delay(SL_RETRY_EXPONENTIAL_JITTER, 3, 1, 30, -1, 60, 0.0), 0,
        0);
    CHECK_NUM(
        sl_retry_delay(SL_RETRY_EXPONENTIAL_JITTER, 3, 1, 30, -1, 60, 0.5), 2,
        1e-12);
    CHECK_NUM(
        sl_retry_delay(SL_RETRY_EXPONENTIAL_JITTER, 10, 1, 30, -1, 60, 0.5), 15,
        1e-12);
    /* a bad draw is treated as 0, not as a longer delay */
    CHECK_NUM(
        sl_retry_delay(SL_RETRY_EXPONENTIAL_JITTER, 3, 1, 30, -1, 60, NAN), 0,
        0);
}

TEST(adaptive_honours_retry_after) {
    CHECK_NUM(sl_retry_delay(SL_RETRY_ADAPTIVE, 1, 1, 30, 45, 120, 0.5), 45, 0);
    CHECK_NUM(sl_retry_delay(SL_RETRY_ADAPTIVE, 1, 1, 30, 500, 120, 0.5), 120,
              0);
    CHECK_NUM(sl_retry_delay(SL_RETRY_ADAPTIVE, 2, 1, 30, -1, 120, 0.5), 1,
              1e-12);
    /* the other strategies ignore Retry-After */
    CHECK_NUM(sl_retry_delay(SL_RETRY_FIXED, 1, 1, 30, 45, 120, 0), 1, 0);
}

TEST(budget_limits_retries_to_ratio_plus_floor) {
    sl_retry_budget b;
    sl_retry_budget_init(&b, 0.2, 1, 10, 0);
    /* 100 requests at t=0, then every one of them wants to retry */
    for (int i = 0; i < 100; i++)
        sl_retry_budget_deposit(&b, 0);
    int allowed = 0;
    for (int i = 0; i < 100; i++)
        allowed += sl_retry_budget_withdraw(&b, 0);
    CHECK_INT(allowed, 21); /* 20 deposited + 1 from the floor */
    CHECK_INT(b.retries_refused, 79);
    /* the floor refills at min_per_second */
    CHECK_INT(sl_retry_budget_withdraw(&b, 0.5), 0);
    CHECK_INT(sl_retry_budget_withdraw(&b, 1.0), 1);
    CHECK_INT(sl_retry_budget_withdraw(&b, 1.0), 0);
}

TEST(budget_deposits_expire) {
    sl_retry_budget b;
    sl_retry_budget_init(&b, 1.0, 0, 10, 0);
    for (int i = 0; i < 5; i++)
        sl_retry_budget_deposit(&b, 0);
    CHECK_NUM(b.balance, 5, 1e-12);
    /* after a full ttl of silence nothing is left */
    CHECK_INT(sl_retry_budget_withdraw(&b, 10), 0);
    CHECK_NUM(b.balance, 0, 1e-12);
    /* half a ttl halves it */
    for (int i = 0; i < 4; i++)
        sl_retry_budget_deposit(&b, 10);
    sl_retry_budget_withdraw(&b, 15);
    CHECK_NUM(b.balance, 1, 1e-12);
}

int main(void) {
    RUN(parse_names);
    RUN(deterministic_strategies);
    RUN(full_jitter_spans_zero_to_cap);
    RUN(adaptive_honours_retry_after);
    RUN(budget_limits_retries_to_ratio_plus_floor);
    RUN(budget_deposits_expire);
    return TEST_SUMMARY();
}
