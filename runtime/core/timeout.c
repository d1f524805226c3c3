/* timeout.c -- seconds to struct timeval and milliseconds, clamped */
#include "timeout.h"

#include <math.h>

/* s as a finite number in [0, SL_TIMEOUT_MAX]; +infinity is the caller's. */
static double clamp(double s) {
    if (!(s > 0)) /* negative, -infinity, NaN */
        return 0;
    return s > SL_TIMEOUT_MAX ? SL_TIMEOUT_MAX : s;
}

int sl_timeout_tv(double s, struct timeval *tv) {
    int arm = !(isinf(s) && s > 0);
    /* Whole microseconds: below 2^53, so the double is exact. */
    double us = ceil(clamp(arm ? s : SL_TIMEOUT_MAX) * 1e6);
    double sec = floor(us / 1e6);
    tv->tv_sec = (time_t)sec;
    tv->tv_usec = (suseconds_t)(us - sec * 1e6);
    return arm;
}

long sl_timeout_ms(double s) {
    if (isinf(s) && s > 0)
        return -1;
    return (long)ceil(clamp(s) * 1e3);
}
