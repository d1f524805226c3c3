/* bench_breaker.c -- ns per sl_breaker_allow() + sl_breaker_success() pair */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/breaker.h"

static double mono(void *ud) {
    struct timespec ts;
    (void)ud;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 50000000L;
    sl_breaker_options o;
    sl_breaker_options_default(&o);
    sl_breaker_clock clock = {mono, mono, NULL};
    char err[128];
    sl_breaker *b = sl_breaker_new(&o, &clock, err, sizeof(err));
    if (!b) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    double t0 = mono(NULL);
    for (long i = 0; i < n; i++)
        sl_breaker_success(b, sl_breaker_allow(b, NULL), 0);
    double dt = mono(NULL) - t0;
    printf("c: %ld allow()+success() pairs in %.3f s = %.1f ns/pair\n", n, dt,
           dt / (double)n * 1e9);
    sl_breaker_free(b);
    return 0;
}
