/* retry.c -- retry delays and a retry budget */
#include "retry.h"

#include <math.h>
#include <string.h>

static const char *names[] = {"fixed", "linear", "exponential",
                              "exponential_jitter", "adaptive"};

int sl_retry_strategy_parse(const char *name) {
    for (int i = 0; i < (int)(sizeof(names) / sizeof(names[0])); i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

const char *sl_retry_strategy_name(sl_retry_strategy s) {
    return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "?";
}

double sl_retry_delay(sl_retry_strategy s, int n, double base, double max_delay,
                      double retry_after, double max_retry_after, double u) {
    if (n < 1)
        n = 1;
    if (!(base >= 0))
        base = 0;
    if (!(u >= 0) || u >= 1)
        u = 0;
    /* 2^(n-1) overflows double long after it passes any max_delay. */
    double growth = n > 1000 ? INFINITY : ldexp(1.0, n - 1);
    double d;
    switch (s) {
    case SL_RETRY_FIXED:
        d = base;
        break;
    case SL_RETRY_LINEAR:
        d = base * n;
        break;
    case SL_RETRY_EXPONENTIAL:
        d = base * growth;
        break;
    case SL_RETRY_ADAPTIVE:
        if (retry_after >= 0 && isfinite(retry_after))
            return retry_after < max_retry_after ? retry_after
                                                 : max_retry_after;
        /* fall through */
    case SL_RETRY_EXPONENTIAL_JITTER:
    default: {
        double cap = base * growth;
        if (cap > max_delay)
            cap = max_delay;
        return cap * u;
    }
    }
    return d < max_delay ? d : max_delay;
}

static void refill(sl_retry_budget *b, double now) {
    double dt = now - b->last;
    if (dt <= 0)
        return;
    b->last = now;
    /* Deposits decay linearly over ttl, which keeps the balance near
     * ratio * (requests in the last ttl seconds) without a ring of
     * timestamps. */
    double cap_floor = b->min_per_second > 0 ? b->min_per_second : 0;
    b->floor += dt * b->min_per_second;
    if (b->floor > cap_floor)
        b->floor = cap_floor;
    if (b->ttl > 0) {
        b->balance -= b->balance * (dt < b->ttl ? dt / b->ttl : 1.0);
        if (b->balance < 0)
            b->balance = 0;
    }
}

void sl_retry_budget_init(sl_retry_budget *b, double ratio,
                          double min_per_second, double ttl, double now) {
    memset(b, 0, sizeof(*b));
    b->ratio = ratio > 0 ? ratio : 0;
    b->min_per_second = min_per_second > 0 ? min_per_second : 0;
    b->ttl = ttl > 0 ? ttl : 10;
    b->floor = b->min_per_second;
    b->last = now;
}

void sl_retry_budget_deposit(sl_retry_budget *b, double now) {
    refill(b, now);
    b->balance += b->ratio;
}

int sl_retry_budget_withdraw(sl_retry_budget *b, double now) {
    refill(b, now);
    /* 0.2 added five times is 0.9999999999999999: allow for rounding. */
    if (b->balance >= 1.0 - 1e-9) {
        b->balance -= 1.0;
        if (b->balance < 0)
            b->balance = 0;
        return 1;
    }
    if (b->floor >= 1.0) {
        b->floor -= 1.0;
        return 1;
    }
    b->retries_refused++;
    return 0;
}
