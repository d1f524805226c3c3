/* retry.h -- retry delays and a retry budget: the pure C half of sluice.retry
 *
 * Pure functions of their inputs: the caller supplies the clock (monotonic
 * seconds) and the random source (a uniform draw in [0, 1)), so every
 * result is reproducible in tests. Nothing here allocates.
 */
#ifndef SLUICE_RETRY_H
#define SLUICE_RETRY_H

typedef enum sl_retry_strategy {
    SL_RETRY_FIXED,              /* base */
    SL_RETRY_LINEAR,             /* base * n */
    SL_RETRY_EXPONENTIAL,        /* base * 2^(n-1) */
    SL_RETRY_EXPONENTIAL_JITTER, /* U[0, base * 2^(n-1)) ("full jitter") */
    SL_RETRY_ADAPTIVE            /* Retry-After when given, else full
                                      jitter */
} sl_retry_strategy;

/* Parses "fixed", "linear", "exponential", "exponential_jitter" or
 * "adaptive". Returns -1 for anything else. */
int sl_retry_strategy_parse(const char *name);
const char *sl_retry_strategy_name(sl_retry_strategy s);

/* The delay in seconds before retry number n (n >= 1 is the first retry),
 * never above max_delay. retry_after (seconds, < 0 when the server gave
 * none) is honoured by ADAPTIVE only, and may exceed max_delay up to
 * max_retry_after: a server that says "come back in 60 s" means it.
 * u is a uniform draw in [0, 1), used by the jittered strategies. */
double sl_retry_delay(sl_retry_strategy s, int n, double base, double max_delay,
                      double retry_after, double max_retry_after, double u);

/* A retry budget (after Finagle's RetryBudget): every request deposits
 * `ratio` of a retry, every retry withdraws one, and a floor of
 * `min_per_second` retries is always allowed, so a dead upstream costs at
 * most ratio * requests + min_per_second * seconds retries instead of
 * (max_attempts - 1) * requests. Deposits expire after `ttl` seconds. */
typedef struct sl_retry_budget {
    double ratio;          /* retries allowed per request (0.2) */
    double min_per_second; /* floor of retries per second (1) */
    double ttl;            /* seconds a deposit stays usable (10) */
    /* state */
    double balance; /* deposited retries not yet spent or expired */
    double floor;   /* tokens of the min_per_second bucket */
    double last;    /* mono time of the last update */
    long retries_refused;
} sl_retry_budget;

void sl_retry_budget_init(sl_retry_budget *b, double ratio,
                          double min_per_second, double ttl, double now);
/* Records one request (a first attempt). */
void sl_retry_budget_deposit(sl_retry_budget *b, double now);
/* Takes one retry from the budget: 1 if allowed, 0 if the budget is spent. */
int sl_retry_budget_withdraw(sl_retry_budget *b, double now);

#endif
