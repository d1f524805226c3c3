/* fuzz_rlheaders.c -- libFuzzer harness for the rate-limit header parser
 *
 * Input: two control bytes (status selector, reset mode / options), then
 * header lines "name: value" separated by '\n'. Every name and value is
 * copied into its own exact-size heap block, without a NUL, so that
 * AddressSanitizer catches any read past the given length. The parsed
 * result is checked against the parser's documented invariants (abort on
 * violation) and then fed to a limiter, so header application is fuzzed
 * too. Built and run by tests/fuzz/run.sh, not by ctest.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/limiter.h"
#include "core/rlheaders.h"

#define MAX_LINES 64

static void check(int ok) {
    if (!ok)
        abort();
}

/* -1 (unknown) or a finite number in [0, max] */
static void check_value(double x, double max) {
    check(x == -1 || (isfinite(x) && x >= 0 && x <= max));
}

static void check_result(const sl_rlh_result *r, const sl_rlh_options *o) {
    int i;
    check(r->source >= SL_RLH_SRC_NONE && r->source <= SL_RLH_SRC_BYBIT);
    check_value(r->limit, 1e15);
    check_value(r->remaining, 1e15);
    check_value(r->reset, o->max_reset);
    check_value(r->window, 1e15);
    check_value(r->retry_after, o->max_backoff);
    check(r->date == -1 || isfinite(r->date));
    check(r->npolicies >= 0 && r->npolicies <= SL_RLH_MAX_POLICIES);
    check(r->nweights >= 0 && r->nweights <= SL_RLH_MAX_WEIGHTS);
    check(r->recognised >= 0 && r->ignored >= 0);
    for (i = 0; i < r->npolicies; i++) {
        const sl_rlh_policy *p = &r->policies[i];
        check(memchr(p->name, '\0', sizeof p->name) != NULL);
        check_value(p->quota, 1e15);
        check_value(p->window, 1e15);
        check_value(p->remaining, 1e15);
        check_value(p->reset, o->max_reset);
    }
    for (i = 0; i < r->nweights; i++) {
        check_value(r->weights[i].used, 1e15);
        check(r->weights[i].window >= 1 &&
              r->weights[i].window <= 9999 * 86400);
    }
}

static char *dup_exact(const uint8_t *p, size_t n) {
    char *c = malloc(n ? n : 1);
    if (c && n)
        memcpy(c, p, n);
    return c;
}

static void drive_limiter(const sl_rlh_result *r, int status) {
    static const char *eps[] = {NULL, "/a", "/b"};
    sl_limiter_pool_options po = {"weight", 1200, 60, 5, 60};
    sl_limiter_observation obs = {"/a", status, r, 0.1, 0.5, 0, NULL};
    sl_limiter_request req = {NULL, 1, NULL, 30, NULL};
    sl_limiter_ticket *t;
    sl_limiter_event ev[8];
    sl_limiter_verdict v;
    sl_limiter_stats st;
    sl_limiter *lim = sl_limiter_new(NULL, NULL, 0);
    double now = 1, ready, d;
    int i, rc;
    check(lim != NULL);
    check(sl_limiter_add_pool(lim, &po, now, NULL, 0) == 0);
    check(sl_limiter_observe(lim, &obs, now, 1.7e9, &v, NULL, 0) == 0);
    check(v.retry_after == -1 || (v.retry_after >= 0 && v.retry_after <= 3600));
    for (i = 0; i < 6; i++) {
        req.endpoint = eps[i % 3];
        req.privdata = (void *)(intptr_t)(i + 1);
        rc = sl_limiter_acquire(lim, &req, now, &t, &ready, NULL, 0);
        check(rc >= SL_LIMITER_GO && rc <= SL_LIMITER_BANNED);
        check(isfinite(ready) || rc == SL_LIMITER_GO);
    }
    /* the deadline invariant: a deadline at or before now means poll(now)
     * reports something; otherwise move the clock to it and ask again */
    for (i = 0; i < 128 && (d = sl_limiter_next_deadline(lim, now)) >= 0; i++) {
        check(isfinite(d));
        if (d > now)
            now = d;
        else
            check(sl_limiter_poll(lim, now, ev, 8) > 0);
    }
    check(i < 128);
    sl_limiter_get_stats(lim, now, &st);
    check(isfinite(st.current_global_rate) && st.current_global_rate > 0);
    sl_limiter_free(lim);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const int statuses[] = {200, 429, 418, 503, 0, 204, 302, 500};
    sl_rlh_parser p;
    sl_rlh_options o;
    sl_rlh_result r;
    char *names[MAX_LINES], *values[MAX_LINES];
    size_t nlen[MAX_LINES], vlen[MAX_LINES], i, n = 0, pos = 2;
    int status;
    double epoch, wall;

    if (size < 2)
        return 0;
    status = statuses[data[0] & 7];
    sl_rlh_options_init(&o);
    o.reset_mode = (sl_rlh_reset_mode)(data[1] & 3);
    if (data[1] & 4)
        o.max_backoff = 60;
    if (data[1] & 8)
        o.max_reset = 600;
    wall = (data[1] & 16) ? 0 : 1.7e9 + (data[0] >> 3);

    /* the whole input as one date, with exact bounds */
    {
        char *whole = dup_exact(data + 2, size - 2);
        if (sl_rlh_http_date(whole, size - 2, &epoch) == 0)
            check(isfinite(epoch));
        free(whole);
    }

    while (pos < size && n < MAX_LINES) {
        const uint8_t *line = data + pos, *end, *colon;
        size_t len;
        end = memchr(line, '\n', size - pos);
        len = end ? (size_t)(end - line) : size - pos;
        pos += len + 1;
        colon = memchr(line, ':', len);
        if (colon == NULL)
            continue;
        nlen[n] = (size_t)(colon - line);
        vlen[n] = len - nlen[n] - 1;
        if (vlen[n] && colon[1] == ' ')
            vlen[n]--, colon++;
        names[n] = dup_exact(line, nlen[n]);
        values[n] = dup_exact(colon + 1, vlen[n]);
        if (names[n] == NULL || values[n] == NULL)
            abort();
        n++;
    }

    sl_rlh_begin(&p, &o);
    for (i = 0; i < n; i++)
        sl_rlh_feed(&p, names[i], nlen[i], values[i], vlen[i]);
    sl_rlh_finish(&p, status, wall, &r);
    check_result(&r, &o);
    check(r.status == status);
    drive_limiter(&r, status);

    for (i = 0; i < n; i++) {
        free(names[i]);
        free(values[i]);
    }
    return 0;
}
