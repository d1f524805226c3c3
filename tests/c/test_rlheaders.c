/* test_rlheaders.c -- rate-limit header parser over real-world samples */
#include <string.h>

#include "core/rlheaders.h"
#include "test.h"

#define U (-1.0) /* unknown / absent */
#define MAXH 8

typedef struct sample {
    const char *label;
    int status;
    sl_rlh_reset_mode mode;
    double wall_now;
    const char *h[MAXH][2]; /* (name, value), ends at a NULL name */
    int source;
    double limit, remaining, reset, window, retry_after;
    int nweights, npolicies, ignored;
} sample;

/* Samples as providers send them (values from their documentation). */
static const sample samples[] = {
    {"github: epoch reset, skew corrected by Date",
     200,
     SL_RLH_RESET_AUTO,
     1372699626 + 100, /* local clock 100 s ahead */
     {{"X-RateLimit-Limit", "5000"},
      {"X-RateLimit-Remaining", "4987"},
      {"X-RateLimit-Reset", "1372700873"},
      {"X-RateLimit-Used", "13"},
      {"X-RateLimit-Resource", "core"},
      {"Date", "Mon, 01 Jul 2013 17:27:06 GMT"}},
     SL_RLH_SRC_XRATELIMIT,
     5000,
     4987,
     1247,
     U,
     U,
     0,
     0,
     0},
    {"twitter: x-rate-limit-*, no Date, wall clock",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"x-rate-limit-limit", "900"},
      {"x-rate-limit-remaining", "899"},
      {"x-rate-limit-reset", "1700000600"}},
     SL_RLH_SRC_XRATELIMIT,
     900,
     899,
     600,
     U,
     U,
     0,
     0,
     0},
    {"epoch milliseconds inferred",
     200,
     SL_RLH_RESET_AUTO,
     1731619200.5,
     {{"X-RateLimit-Limit", "1200"},
      {"X-RateLimit-Remaining", "847"},
      {"X-RateLimit-Reset", "1731619230000"}},
     SL_RLH_SRC_XRATELIMIT,
     1200,
     847,
     29.5,
     U,
     U,
     0,
     0,
     0},
    {"delta inferred",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"x-ratelimit-limit", "60"},
      {"x-ratelimit-remaining", "59"},
      {"x-ratelimit-reset", "37"}},
     SL_RLH_SRC_XRATELIMIT,
     60,
     59,
     37,
     U,
     U,
     0,
     0,
     0},
    {"declared delta: an epoch-looking value is capped at max_reset",
     200,
     SL_RLH_RESET_DELTA,
     1700000000,
     {{"X-RateLimit-Reset", "1700000600"}},
     SL_RLH_SRC_XRATELIMIT,
     U,
     U,
     2678400,
     U,
     U,
     0,
     0,
     0},
    {"declared epoch: a small value is not an epoch, dropped",
     200,
     SL_RLH_RESET_EPOCH,
     1700000000,
     {{"X-RateLimit-Remaining", "3"}, {"X-RateLimit-Reset", "30"}},
     SL_RLH_SRC_XRATELIMIT,
     U,
     3,
     U,
     U,
     U,
     0,
     0,
     0},
    {"declared epoch_ms",
     200,
     SL_RLH_RESET_EPOCH_MS,
     1700000000,
     {{"X-RateLimit-Reset", "1700000001500"}},
     SL_RLH_SRC_XRATELIMIT,
     U,
     U,
     1.5,
     U,
     U,
     0,
     0,
     0},
    {"discord: fractional epoch reset, reset-after ignored when reset given",
     429,
     SL_RLH_RESET_AUTO,
     1470173022,
     {{"X-RateLimit-Limit", "5"},
      {"X-RateLimit-Remaining", "0"},
      {"X-RateLimit-Reset", "1470173023.125"},
      {"X-RateLimit-Reset-After", "1.25"},
      {"Retry-After", "1"}},
     SL_RLH_SRC_XRATELIMIT,
     5,
     0,
     1.125,
     U,
     1,
     0,
     0,
     0},
    {"discord: reset-after alone",
     200,
     SL_RLH_RESET_AUTO,
     1470173022,
     {{"X-RateLimit-Remaining", "4"}, {"X-RateLimit-Reset-After", "1.25"}},
     SL_RLH_SRC_XRATELIMIT,
     U,
     4,
     1.25,
     U,
     U,
     0,
     0,
     0},
    {"reference RateLimit-* (delta)",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"RateLimit-Limit", "100"},
      {"RateLimit-Remaining", "23"},
      {"RateLimit-Reset", "3600"}},
     SL_RLH_SRC_RATELIMIT,
     100,
     23,
     3600,
     U,
     U,
     0,
     0,
     0},
    {"old draft: RateLimit-Limit with a policy list",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"RateLimit-Limit", "10, 10;w=1, 1000;w=3600"},
      {"RateLimit-Remaining", "9"},
      {"RateLimit-Reset", "1"}},
     SL_RLH_SRC_RATELIMIT,
     10,
     9,
     1,
     U,
     U,
     0,
     0,
     0},
    {"draft-07 dictionary",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"RateLimit", "limit=100, remaining=50, reset=50"}},
     SL_RLH_SRC_RATELIMIT,
     100,
     50,
     50,
     U,
     U,
     0,
     0,
     0},
    {"X-RateLimit wins over RateLimit",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"RateLimit-Limit", "100"},
      {"RateLimit-Remaining", "23"},
      {"X-RateLimit-Limit", "60"},
      {"X-RateLimit-Remaining", "7"}},
     SL_RLH_SRC_XRATELIMIT,
     60,
     7,
     U,
     U,
     U,
     0,
     0,
     0},
    {"ietf: one policy",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"RateLimit-Policy", "\"permin\";q=50;w=60"},
      {"RateLimit", "\"permin\";r=12;t=30"}},
     SL_RLH_SRC_IETF,
     50,
     12,
     30,
     60,
     U,
     0,
     1,
     0},
    {"ietf: two policies, the daily one is tighter",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"RateLimit-Policy", "\"burst\";q=100;w=60, \"daily\";q=1000;w=86400"},
      {"RateLimit", "\"burst\";r=50;t=30, \"daily\";r=5;t=3600"}},
     SL_RLH_SRC_IETF,
     1000,
     5,
     3600,
     86400,
     U,
     0,
     2,
     0},
    {"ietf: policies across two field lines, pk and qu params",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"RateLimit-Policy", "\"peruser\";q=100;w=60;pk=:cHsdsRa894==:"},
      {"RateLimit-Policy", "\"bytes\";q=1000;w=60;qu=\"content-bytes\""},
      {"RateLimit", "\"peruser\";r=0;t=10"}},
     SL_RLH_SRC_IETF,
     100,
     0,
     10,
     60,
     U,
     0,
     2,
     0},
    {"ietf: policy only, no RateLimit",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"RateLimit-Policy", "\"a\";q=600;w=60, \"b\";q=20;w=1"}},
     SL_RLH_SRC_IETF,
     600,
     U,
     U,
     60,
     U,
     0,
     2,
     0},
    {"retry-after delta on 429",
     429,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"Retry-After", "120"}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     120,
     0,
     0,
     0},
    {"retry-after IMF-fixdate, local clock an hour ahead, Date corrects",
     503,
     SL_RLH_RESET_AUTO,
     1445412450 + 3600,
     {{"Date", "Wed, 21 Oct 2015 07:27:30 GMT"},
      {"Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     30,
     0,
     0,
     0},
    {"retry-after RFC 850 against the wall clock",
     429,
     SL_RLH_RESET_AUTO,
     1445412480 - 45,
     {{"Retry-After", "Wednesday, 21-Oct-15 07:28:00 GMT"}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     45,
     0,
     0,
     0},
    {"retry-after asctime",
     429,
     SL_RLH_RESET_AUTO,
     1,
     {{"Retry-After", "Wed Oct 21 07:28:00 2015"},
      {"Date", "Wed, 21 Oct 2015 07:27:00 GMT"}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     60,
     0,
     0,
     0},
    {"retry-after date in the past is 0",
     429,
     SL_RLH_RESET_AUTO,
     1445412480 + 10,
     {{"Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     0,
     0,
     0,
     0},
    {"retry-after absurd delta capped at max_backoff",
     429,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"Retry-After", "99999999"}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     3600,
     0,
     0,
     0},
    {"retry-after date without Date or wall clock is dropped",
     429,
     SL_RLH_RESET_AUTO,
     0,
     {{"Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     U,
     0,
     0,
     0},
    {"binance 418 ban with weights",
     418,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"x-mbx-used-weight", "1250"},
      {"x-mbx-used-weight-1m", "1250"},
      {"Retry-After", "120"}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     120,
     1,
     0,
     0},
    {"binance: three windows",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"X-MBX-USED-WEIGHT-1S", "5"},
      {"X-MBX-USED-WEIGHT-1M", "300"},
      {"x-mbx-used-weight-1d", "20000"}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     U,
     3,
     0,
     0},
    {"bybit: ms reset timestamp",
     200,
     SL_RLH_RESET_AUTO,
     1672738134.0,
     {{"X-Bapi-Limit", "10"},
      {"X-Bapi-Limit-Status", "9"},
      {"X-Bapi-Limit-Reset-Timestamp", "1672738134824"}},
     SL_RLH_SRC_BYBIT,
     10,
     9,
     0.824,
     U,
     U,
     0,
     0,
     0},
    /* Gate API v4: "X-Gate-RateLimit-Reset-Timestamp - the timestamp
     * indicating when your request limit resets if you have exceeded your
     * rate_limit. Otherwise, this is just the current timestamp" */
    {"gate: limit hit, reset in 3.5 s (epoch ms)",
     429,
     SL_RLH_RESET_AUTO,
     1700000000.0,
     {{"X-Gate-RateLimit-Requests-Remain", "0"},
      {"X-Gate-RateLimit-Limit", "200"},
      {"X-Gate-RateLimit-Reset-Timestamp", "1700000003500"}},
     SL_RLH_SRC_GATE,
     200,
     0,
     3.5,
     U,
     U,
     0,
     0,
     0},
    {"gate: within the limit, the timestamp is now (epoch s)",
     200,
     SL_RLH_RESET_AUTO,
     1700000000.0,
     {{"x-gate-ratelimit-requests-remain", "199"},
      {"x-gate-ratelimit-limit", "200"},
      {"x-gate-ratelimit-reset-timestamp", "1700000000"}},
     SL_RLH_SRC_GATE,
     200,
     199,
     0,
     U,
     U,
     0,
     0,
     0},
    {"gate: a reset that is no timestamp is unknown",
     200,
     SL_RLH_RESET_AUTO,
     1700000000.0,
     {{"X-Gate-RateLimit-Requests-Remain", "7"},
      {"X-Gate-RateLimit-Reset-Timestamp", "12"},
      {"X-Gate-RateLimit-Limit", "-1"}},
     SL_RLH_SRC_GATE,
     U,
     7,
     U,
     U,
     U,
     0,
     0,
     1},
    /* HTX: "X-HB-RateLimit-Requests-Remain" (requests left) and
     * "X-HB-RateLimit-Requests-Expire" (when the window expires, epoch ms) */
    {"htx: remain and window expiry (epoch ms)",
     200,
     SL_RLH_RESET_AUTO,
     1629384000.0,
     {{"X-HB-RateLimit-Requests-Remain", "95"},
      {"X-HB-RateLimit-Requests-Expire", "1629384001250"}},
     SL_RLH_SRC_HTX,
     U,
     95,
     1.25,
     U,
     U,
     0,
     0,
     0},
    {"htx: a small expiry is milliseconds from now",
     200,
     SL_RLH_RESET_AUTO,
     1629384999.0,
     {{"Date", "Thu, 19 Aug 2021 14:40:00 GMT"},
      {"x-hb-ratelimit-requests-expire", "800"},
      {"x-hb-ratelimit-requests-remain", "0"}},
     SL_RLH_SRC_HTX,
     U,
     0,
     0.8,
     U,
     U,
     0,
     0,
     0},
    {"htx: an expiry already past is 0",
     200,
     SL_RLH_RESET_AUTO,
     1629384000.0,
     {{"Date", "Thu, 19 Aug 2021 14:40:00 GMT"},
      {"X-HB-RateLimit-Requests-Expire", "1629383999000"},
      {"X-HB-RateLimit-Requests-Remain", "3"}},
     SL_RLH_SRC_HTX,
     U,
     3,
     0,
     U,
     U,
     0,
     0,
     0},
    /* Bitget: "X-MBX-USED-REMAIN-LIMIT", the requests left on the endpoint
     * in the current second (its limits are per endpoint and second) */
    {"bitget: requests left this second",
     200,
     SL_RLH_RESET_AUTO,
     1700000000.0,
     {{"x-mbx-used-remain-limit", "17"}},
     SL_RLH_SRC_BITGET,
     U,
     17,
     1,
     U,
     U,
     0,
     0,
     0},
    {"bitget: not read as a Binance weight",
     200,
     SL_RLH_RESET_AUTO,
     1700000000.0,
     {{"X-MBX-USED-REMAIN-LIMIT", "0"}, {"X-MBX-USED-WEIGHT-1M", "12"}},
     SL_RLH_SRC_BITGET,
     U,
     0,
     1,
     U,
     U,
     1,
     0,
     0},
    {"bybit wins over gate and htx in one answer (family order)",
     200,
     SL_RLH_RESET_AUTO,
     1700000000.0,
     {{"X-HB-RateLimit-Requests-Remain", "1"},
      {"X-Gate-RateLimit-Requests-Remain", "2"},
      {"X-Bapi-Limit-Status", "3"}},
     SL_RLH_SRC_BYBIT,
     U,
     3,
     U,
     U,
     U,
     0,
     0,
     0},
    {"nginx: nothing to learn",
     429,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"Server", "nginx/1.22.1"}, {"Content-Type", "text/html"}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     U,
     0,
     0,
     0},
    /* hostile input: every field ignored on its own, never fatal */
    {"negative, NaN text, exponent, hex",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"X-RateLimit-Limit", "-5"},
      {"X-RateLimit-Remaining", "NaN"},
      {"X-RateLimit-Reset", "1e9"},
      {"RateLimit-Limit", "0x10"},
      {"RateLimit-Remaining", "inf"},
      {"Retry-After", "-1"}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     U,
     0,
     0,
     6},
    {"huge numbers and trailing garbage",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"X-RateLimit-Limit", "99999999999999999999999"},
      {"X-RateLimit-Remaining", "12abc"},
      {"X-RateLimit-Reset", "1."},
      {"RateLimit-Limit", ".5"},
      {"RateLimit-Remaining", "+5"},
      {"Retry-After", "1e3"}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     U,
     0,
     0,
     6},
    {"empty and blank values, first valid value wins",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"X-RateLimit-Limit", ""},
      {"X-RateLimit-Limit", "   "},
      {"X-RateLimit-Limit", " 100 "},
      {"X-RateLimit-Limit", "200"}},
     SL_RLH_SRC_XRATELIMIT,
     100,
     U,
     U,
     U,
     U,
     0,
     0,
     2},
    {"malformed structured fields",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"RateLimit", "\"permin;r=12"},
      {"RateLimit-Policy", "\"a\";q=1,,"},
      {"RateLimit-Policy", "\"b\";q=-5;w=60"},
      {"RateLimit", "\"x\";r=1;t=2,"},
      {"RateLimit", "(r=1)"},
      {"RateLimit", ""}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     U,
     0,
     0,
     6},
    {"impossible dates",
     429,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"Retry-After", "Wed, 32 Oct 2015 07:28:00 GMT"},
      {"Retry-After", "Thu, 29 Feb 2023 07:28:00 GMT"},
      {"Retry-After", "Wed, 21 Oct 2015 25:28:00 GMT"},
      {"Retry-After", "Wed, 21 Foo 2015 07:28:00 GMT"},
      {"Retry-After", "Xyz, 21 Oct 2015 07:28:00 GMT"},
      {"Retry-After", "Wed, 21 Oct 2015 07:28:00 PST"},
      {"Date", "yesterday"}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     U,
     0,
     0,
     7},
    {"binance: bad window names are not ours, bad values ignored",
     200,
     SL_RLH_RESET_AUTO,
     1700000000,
     {{"X-MBX-USED-WEIGHT-0M", "5"},
      {"X-MBX-USED-WEIGHT-1X", "5"},
      {"X-MBX-USED-WEIGHT-99999M", "5"},
      {"X-MBX-USED-WEIGHT-1M", "lots"},
      {"X-MBX-USED-WEIGHT-", "5"}},
     SL_RLH_SRC_NONE,
     U,
     U,
     U,
     U,
     U,
     0,
     0,
     1},
};

static void feed_sample(const sample *s, sl_rlh_result *r) {
    sl_rlh_options o;
    sl_rlh_header h[MAXH];
    size_t n = 0;
    sl_rlh_options_init(&o);
    o.reset_mode = s->mode;
    while (n < MAXH && s->h[n][0]) {
        h[n].name = s->h[n][0];
        h[n].name_len = strlen(s->h[n][0]);
        h[n].value = s->h[n][1];
        h[n].value_len = strlen(s->h[n][1]);
        n++;
    }
    sl_rlh_parse(&o, s->status, h, n, s->wall_now, r);
}

TEST(sample_table) {
    size_t i;
    for (i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        const sample *s = &samples[i];
        sl_rlh_result r;
        int before = test_failed_checks;
        feed_sample(s, &r);
        CHECK_INT(r.source, s->source);
        CHECK_NUM(r.limit, s->limit, 1e-6);
        CHECK_NUM(r.remaining, s->remaining, 1e-6);
        CHECK_NUM(r.reset, s->reset, 1e-6);
        CHECK_NUM(r.window, s->window, 1e-6);
        CHECK_NUM(r.retry_after, s->retry_after, 1e-6);
        CHECK_INT(r.nweights, s->nweights);
        CHECK_INT(r.npolicies, s->npolicies);
        CHECK_INT(r.ignored, s->ignored);
        CHECK_INT(r.status, s->status);
        CHECK_INT(r.throttled, s->status == 429);
        CHECK_INT(r.banned, s->status == 418);
        if (test_failed_checks != before)
            fprintf(stderr, "  in sample: %s\n", s->label);
    }
}

TEST(http_dates) {
    double e = -7;
    CHECK_INT(sl_rlh_http_date("Sun, 06 Nov 1994 08:49:37 GMT", 29, &e), 0);
    CHECK_NUM(e, 784111777, 0);
    CHECK_INT(sl_rlh_http_date("Sunday, 06-Nov-94 08:49:37 GMT", 30, &e), 0);
    CHECK_NUM(e, 784111777, 0);
    CHECK_INT(sl_rlh_http_date("Sun Nov  6 08:49:37 1994", 24, &e), 0);
    CHECK_NUM(e, 784111777, 0);
    CHECK_INT(sl_rlh_http_date("Thu, 29 Feb 2024 12:00:00 GMT", 29, &e), 0);
    CHECK_NUM(e, 1709208000, 0);
    CHECK_INT(sl_rlh_http_date("Wed, 01-Mar-00 00:00:00 GMT", 27, &e), 0);
    CHECK_NUM(e, 951868800, 0);
    CHECK_INT(sl_rlh_http_date("Wednesday, 31-Dec-69 23:59:59 GMT", 33, &e), 0);
    CHECK_NUM(e, 3155759999.0, 0);
    e = -7;
    CHECK_INT(sl_rlh_http_date("Sun, 06 Nov 1994 08:49:37", 25, &e), -1);
    CHECK_INT(sl_rlh_http_date("Sun, 06 Nov 1994 08:49:37 GMTX", 30, &e), -1);
    CHECK_INT(sl_rlh_http_date("Sun, 06 Nov 1994 08:49:37 GMT", 10, &e), -1);
    CHECK_INT(sl_rlh_http_date("", 0, &e), -1);
    CHECK_INT(sl_rlh_http_date("Sun, 29 Feb 1900 00:00:00 GMT", 29, &e), -1);
    CHECK_NUM(e, -7, 0); /* untouched on failure */
}

TEST(policy_details) {
    static const char *pol = "\"burst\";q=100;w=60, \"daily\";q=1000;w=86400";
    static const char *rl = "\"daily\";r=5;t=3600, \"burst\";r=50;t=30";
    sl_rlh_parser p;
    sl_rlh_result r;
    sl_rlh_begin(&p, NULL);
    /* RateLimit before RateLimit-Policy: merged by name either way */
    CHECK_INT(sl_rlh_feed(&p, "ratelimit", 9, rl, strlen(rl)), 1);
    CHECK_INT(sl_rlh_feed(&p, "RATELIMIT-POLICY", 16, pol, strlen(pol)), 1);
    sl_rlh_finish(&p, 200, 1700000000, &r);
    CHECK_INT(r.npolicies, 2);
    CHECK_STR(r.policies[0].name, "daily");
    CHECK_NUM(r.policies[0].quota, 1000, 0);
    CHECK_NUM(r.policies[0].window, 86400, 0);
    CHECK_NUM(r.policies[0].remaining, 5, 0);
    CHECK_NUM(r.policies[0].reset, 3600, 0);
    CHECK_STR(r.policies[1].name, "burst");
    CHECK_NUM(r.policies[1].quota, 100, 0);
    CHECK_NUM(r.policies[1].window, 60, 0);
    CHECK_NUM(r.policies[1].remaining, 50, 0);
    CHECK_NUM(r.policies[1].reset, 30, 0);
    CHECK_INT(r.recognised, 2);
}

TEST(policy_limits) {
    char v[600];
    size_t n = 0;
    int i;
    sl_rlh_parser p;
    sl_rlh_result r;
    /* 12 distinct policies: 8 kept, 4 dropped and counted */
    for (i = 0; i < 12; i++)
        n += (size_t)snprintf(v + n, sizeof v - n, "%s\"p%d\";q=%d;w=60",
                              i ? ", " : "", i, 100 + i);
    sl_rlh_begin(&p, NULL);
    CHECK_INT(sl_rlh_feed(&p, "RateLimit-Policy", 16, v, n), 1);
    sl_rlh_finish(&p, 200, 1700000000, &r);
    CHECK_INT(r.npolicies, SL_RLH_MAX_POLICIES);
    CHECK_INT(r.ignored, 4);
    CHECK_STR(r.policies[7].name, "p7");
    /* the tightest of those kept: smallest quota per window */
    CHECK_NUM(r.limit, 100, 0);
    /* long policy names are truncated, not rejected */
    sl_rlh_begin(&p, NULL);
    {
        const char *v2 = "\"0123456789012345678901234567890123456789\";r=1";
        CHECK_INT(sl_rlh_feed(&p, "RateLimit", 9, v2, strlen(v2)), 1);
    }
    sl_rlh_finish(&p, 200, 1700000000, &r);
    CHECK_INT((int)strlen(r.policies[0].name), SL_RLH_NAME_MAX - 1);
}

TEST(binance_weights) {
    static const sl_rlh_header h[] = {
        {"X-MBX-USED-WEIGHT-1S", 20, "5", 1},
        {"X-MBX-USED-WEIGHT-10M", 21, "300", 3},
        {"x-mbx-used-weight-2h", 20, "40", 2},
        {"x-mbx-used-weight-1d", 20, "20000", 5},
    };
    sl_rlh_result r;
    sl_rlh_parse(NULL, 200, h, 4, 1700000000, &r);
    CHECK_INT(r.nweights, 4);
    CHECK_NUM(r.weights[0].used, 5, 0);
    CHECK_NUM(r.weights[0].window, 1, 0);
    CHECK_NUM(r.weights[1].used, 300, 0);
    CHECK_NUM(r.weights[1].window, 600, 0);
    CHECK_NUM(r.weights[2].window, 7200, 0);
    CHECK_NUM(r.weights[3].used, 20000, 0);
    CHECK_NUM(r.weights[3].window, 86400, 0);
}

TEST(hostile_lengths) {
    static char big[4096];
    sl_rlh_parser p;
    sl_rlh_result r;
    memset(big, '9', sizeof big);
    sl_rlh_begin(&p, NULL);
    /* overlong values are rejected whole, even though a prefix would parse */
    CHECK_INT(sl_rlh_feed(&p, "X-RateLimit-Limit", 17, big, sizeof big), 0);
    CHECK_INT(sl_rlh_feed(&p, "RateLimit", 9, big, sizeof big), 0);
    CHECK_INT(sl_rlh_feed(&p, "Retry-After", 11, big, 16), 0); /* 16 digits */
    /* lengths are honoured: no NUL needed, embedded NUL is garbage */
    CHECK_INT(sl_rlh_feed(&p, "X-RateLimit-Remaining", 21, "12\0", 3), 0);
    CHECK_INT(sl_rlh_feed(&p, "X-RateLimit-Remaining", 21, "42xyz", 2), 1);
    CHECK_INT(sl_rlh_feed(&p, "Retry-After-Not", 11, "7", 1), 1);
    /* unknown names and NULL pointers are simply not ours */
    CHECK_INT(sl_rlh_feed(&p, "X-Unrelated", 11, "1", 1), 0);
    CHECK_INT(sl_rlh_feed(&p, NULL, 0, "1", 1), 0);
    CHECK_INT(sl_rlh_feed(&p, "Retry-After", 11, NULL, 5), 0);
    sl_rlh_finish(&p, 0, 1700000000, &r);
    CHECK_NUM(r.remaining, 42, 0);
    CHECK_NUM(r.retry_after, 7, 0);
    CHECK_INT(r.ignored, 4);
    CHECK_INT(r.recognised, 2);
    CHECK_INT(r.throttled, 0);
    /* a parse with no headers at all */
    sl_rlh_parse(NULL, 0, NULL, 0, 0, &r);
    CHECK_INT(r.source, SL_RLH_SRC_NONE);
    CHECK_NUM(r.date, -1, 0);
}

TEST(options_sanitised) {
    sl_rlh_options o;
    sl_rlh_result r;
    static const sl_rlh_header h[] = {{"Retry-After", 11, "7200", 4},
                                      {"RateLimit-Reset", 15, "900", 3}};
    sl_rlh_options_init(&o);
    CHECK_INT(o.reset_mode, SL_RLH_RESET_AUTO);
    CHECK_NUM(o.max_backoff, 3600, 0);
    CHECK_NUM(o.max_reset, 31 * 86400, 0);
    o.max_backoff = 60;
    o.max_reset = 600;
    sl_rlh_parse(&o, 429, h, 2, 1700000000, &r);
    CHECK_NUM(r.retry_after, 60, 0);
    CHECK_NUM(r.reset, 600, 0);
    o.max_backoff = NAN; /* NaN falls back to the default */
    sl_rlh_parse(&o, 429, h, 1, 1700000000, &r);
    CHECK_NUM(r.retry_after, 3600, 0);
}

int main(void) {
    RUN(sample_table);
    RUN(http_dates);
    RUN(policy_details);
    RUN(policy_limits);
    RUN(binance_weights);
    RUN(hostile_lengths);
    RUN(options_sanitised);
    return TEST_SUMMARY();
}
