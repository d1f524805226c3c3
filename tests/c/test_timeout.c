/* test_timeout.c -- seconds to timeval and milliseconds, at the edges */
#include "core/timeout.h"
#include "test.h"

#include <math.h>

static struct timeval tv_of(double s, int *arm) {
    struct timeval tv = {-1, -1};
    *arm = sl_timeout_tv(s, &tv);
    return tv;
}

TEST(ordinary_durations) {
    int arm;
    struct timeval tv = tv_of(1.5, &arm);
    CHECK_INT(arm, 1);
    CHECK_INT(tv.tv_sec, 1);
    CHECK_INT(tv.tv_usec, 500000);
    tv = tv_of(0, &arm);
    CHECK_INT(arm, 1);
    CHECK_INT(tv.tv_sec, 0);
    CHECK_INT(tv.tv_usec, 0);
    tv = tv_of(2, &arm);
    CHECK_INT(tv.tv_sec, 2);
    CHECK_INT(tv.tv_usec, 0);
    CHECK_INT(sl_timeout_ms(1.5), 1500);
    CHECK_INT(sl_timeout_ms(30), 30000);
    CHECK_INT(sl_timeout_ms(0), 0);
}

TEST(rounds_up_never_down) {
    int arm;
    /* 1 ns is one microsecond, not zero: a timer must never fire early. */
    struct timeval tv = tv_of(1e-9, &arm);
    CHECK_INT(tv.tv_sec, 0);
    CHECK_INT(tv.tv_usec, 1);
    tv = tv_of(0.9999999, &arm);
    CHECK_INT(tv.tv_sec, 1);
    CHECK_INT(tv.tv_usec, 0);
    CHECK(tv.tv_usec < 1000000);
    /* A positive timeout for curl is never 0, which would mean "none". */
    CHECK_INT(sl_timeout_ms(0.0001), 1);
    CHECK_INT(sl_timeout_ms(0.0015), 2);
}

TEST(huge_is_clamped_not_immediate) {
    int arm;
    double huge[] = {1e10, 1e19, 1e300, 9.3e18, (double)SL_TIMEOUT_MAX};
    for (size_t i = 0; i < sizeof(huge) / sizeof(huge[0]); i++) {
        struct timeval tv = tv_of(huge[i], &arm);
        CHECK_INT(arm, 1);
        CHECK_INT(tv.tv_sec, (long long)SL_TIMEOUT_MAX);
        CHECK_INT(tv.tv_usec, 0);
        CHECK_INT(sl_timeout_ms(huge[i]), (long long)(SL_TIMEOUT_MAX * 1e3));
    }
}

TEST(infinity_means_no_timeout) {
    int arm;
    struct timeval tv = tv_of(INFINITY, &arm);
    CHECK_INT(arm, 0);
    CHECK_INT(tv.tv_sec, (long long)SL_TIMEOUT_MAX); /* defined all the same */
    CHECK_INT(tv.tv_usec, 0);
    CHECK_INT(sl_timeout_ms(INFINITY), -1);
}

TEST(negative_and_nan_are_zero) {
    double bad[] = {-1, -1e300, -INFINITY, NAN, -0.0};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int arm;
        struct timeval tv = tv_of(bad[i], &arm);
        CHECK_INT(arm, 1);
        CHECK_INT(tv.tv_sec, 0);
        CHECK_INT(tv.tv_usec, 0);
        CHECK_INT(sl_timeout_ms(bad[i]), 0);
    }
}

int main(void) {
    RUN(ordinary_durations);
    RUN(rounds_up_never_down);
    RUN(huge_is_clamped_not_immediate);
    RUN(infinity_means_no_timeout);
    RUN(negative_and_nan_are_zero);
    return TEST_SUMMARY();
}
