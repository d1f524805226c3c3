/* test_breaker.c -- unit tests for the circuit breaker state machine */

#include "core/breaker.h"
#include "test.h"

#include <stdint.h>
#include <stdlib.h>

/* 2024-11-14T10:23:45Z */
#define T0 1731579825.0
#define M0 1000.0

typedef struct fake_clock {
    double mono, wall;
} fake_clock;

static double fc_mono(void *ud) { return ((fake_clock *)ud)->mono; }
static double fc_wall(void *ud) { return ((fake_clock *)ud)->wall; }

static void advance(fake_clock *c, double dt) {
    c->mono += dt;
    c->wall += dt;
}

#define MAX_EVENTS 64

typedef struct recorder {
    int n; /* all events; the first MAX_EVENTS are kept */
    sl_breaker_state from[MAX_EVENTS], to[MAX_EVENTS];
    const char *reason[MAX_EVENTS];
    sl_breaker_state state_seen[MAX_EVENTS]; /* get_state() inside */
    int opens, recovered, failed_recoveries, permit_timeouts, rate_trips;
    int reenter; /* try every mutating call from inside the callback */
    int reenter_failures;
} recorder;

static void on_change(sl_breaker *b, sl_breaker_state from, sl_breaker_state to,
                      const char *reason, void *pd) {
    recorder *r = pd;

    if (r->n < MAX_EVENTS) {
        r->from[r->n] = from;
        r->to[r->n] = to;
        r->reason[r->n] = reason;
        r->state_seen[r->n] = sl_breaker_get_state(b);
    }
    r->n++;
    if (to == SL_BREAKER_OPEN && strcmp(reason, "restore") != 0)
        r->opens++;
    if (strcmp(reason, "recovered") == 0)
        r->recovered++;
    if (from == SL_BREAKER_HALF_OPEN && to == SL_BREAKER_OPEN &&
        (strcmp(reason, "half_open_failure") == 0 ||
         strcmp(reason, "permit_timeout") == 0))
        r->failed_recoveries++;
    if (strcmp(reason, "permit_timeout") == 0)
        r->permit_timeouts++;
    if (strcmp(reason, "failure_rate") == 0 ||
        strcmp(reason, "slow_call_rate") == 0)
        r->rate_trips++;
    if (r->reenter) {
        const char *why = NULL;
        sl_breaker_snapshot snap;
        sl_breaker_status st;
        char err[128] = "";

        memset(&snap, 0, sizeof(snap));
        r->reenter_failures += sl_breaker_allow(b, &why) != 0;
        r->reenter_failures += why == NULL || strcmp(why, "reentrant") != 0;
        r->reenter_failures += sl_breaker_success(b, 0, 0) != -1;
        r->reenter_failures += sl_breaker_failure(b, 0, 0) != -1;
        r->reenter_failures += sl_breaker_release(b, 99) != -1;
        r->reenter_failures += sl_breaker_force_open(b) != -1;
        r->reenter_failures += sl_breaker_force_close(b) != -1;
        r->reenter_failures += sl_breaker_reset(b) != -1;
        r->reenter_failures += sl_breaker_open_until(b, 1e12) != -1;
        r->reenter_failures +=
            sl_breaker_set_mode(b, SL_BREAKER_MODE_DISABLED) != -1;
        r->reenter_failures +=
            sl_breaker_restore(b, &snap, err, sizeof(err)) != -1;
        r->reenter_failures +=
            strcmp(err, "restore called from the change callback") != 0;
        sl_breaker_get_status(b, &st);
        r->reenter_failures += st.state != to;
        r->reenter_failures += sl_breaker_get_state(b) != to;
    }
}

static sl_breaker *mk(const sl_breaker_options *o, fake_clock *c, recorder *r) {
    sl_breaker_clock clock = {fc_mono, fc_wall, c};
    sl_breaker_options d;
    char err[128] = "";
    sl_breaker *b;

    if (o == NULL) {
        sl_breaker_options_default(&d);
        o = &d;
    }
    c->mono = M0;
    c->wall = T0;
    if (r)
        memset(r, 0, sizeof(*r));
    b = sl_breaker_new(o, &clock, err, sizeof(err));
    CHECK(b != NULL);
    CHECK_STR(err, "");
    if (b && r)
        sl_breaker_set_callback(b, on_change, r);
    return b;
}

static sl_breaker_status status(sl_breaker *b) {
    sl_breaker_status st;

    sl_breaker_get_status(b, &st);
    return st;
}

/* n permitted calls that all fail (or succeed). */
static void fail_n(sl_breaker *b, int n) {
    while (n-- > 0)
        CHECK_INT(sl_breaker_failure(b, sl_breaker_allow(b, NULL), 0.1), 1);
}

static void succeed_n(sl_breaker *b, int n) {
    while (n-- > 0)
        CHECK_INT(sl_breaker_success(b, sl_breaker_allow(b, NULL), 0.1), 1);
}

static void check_event(const recorder *r, int i, sl_breaker_state from,
                        sl_breaker_state to, const char *reason) {
    CHECK(i < r->n);
    if (i >= r->n || i >= MAX_EVENTS)
        return;
    CHECK_STR(sl_breaker_state_name(r->from[i]), sl_breaker_state_name(from));
    CHECK_STR(sl_breaker_state_name(r->to[i]), sl_breaker_state_name(to));
    CHECK_STR(r->reason[i], reason);
    CHECK_STR(sl_breaker_state_name(r->state_seen[i]),
              sl_breaker_state_name(to));
}

/* ---- options, names, timestamps ------------------------------------------ */

TEST(options_defaults) {
    sl_breaker_options o;
    char err[64] = "untouched";

    sl_breaker_options_default(&o);
    CHECK_STR(o.name, "unknown");
    CHECK_INT(o.failure_threshold, 5);
    CHECK_NUM(o.timeout, 300.0, 0);
    CHECK_INT(o.half_open_max_calls, 3);
    CHECK_INT(o.half_open_success_threshold, 2);
    CHECK_NUM(o.backoff_multiplier, 1.5, 0);
    CHECK_NUM(o.max_timeout, 3600.0, 0);
    CHECK_NUM(o.permit_timeout, 60.0, 0);
    CHECK_INT(o.window_type, SL_BREAKER_WINDOW_NONE);
    CHECK_INT(o.window_size, 100);
    CHECK_INT(o.window_min_calls, 10);
    CHECK_NUM(o.failure_rate, 0.5, 0);
    CHECK_NUM(o.slow_call_duration, 0.0, 0);
    CHECK_NUM(o.slow_call_rate, 1.0, 0);
    CHECK_INT(o.mode, SL_BREAKER_MODE_NORMAL);
    CHECK_NUM(o.jitter, 0.0, 0);
    CHECK_INT(o.seed, 0);
    CHECK_INT(sl_breaker_options_validate(&o, err, sizeof(err)), 0);
    CHECK_STR(err, "untouched");
}

#define BAD_OPTION(mutation, msg)                                              \
    do {                                                                       \
        sl_breaker_options o;                                                  \
        char e[128] = "";                                                      \
        sl_breaker_options_default(&o);                                        \
        mutation;                                                              \
        CHECK_INT(sl_breaker_options_validate(&o, e, sizeof(e)), -1);          \
        CHECK_STR(e, msg);                                                     \
    } while (0)

TEST(options_validation) {
    sl_breaker_clock clock = {fc_mono, fc_wall, NULL};
    sl_breaker_options o;
    char err[128];

    BAD_OPTION(o.failure_threshold = 0, "failure_threshold must be >= 1");
    BAD_OPTION(o.failure_threshold = -3, "failure_threshold must be >= 1");
    BAD_OPTION(o.timeout = 0, "timeout must be a finite number > 0");
    BAD_OPTION(o.timeout = NAN, "timeout must be a finite number > 0");
    BAD_OPTION(o.timeout = INFINITY, "timeout must be a finite number > 0");
    BAD_OPTION(o.half_open_max_calls = 0,
               "half_open_max_calls must be between 1 and 1024");
    BAD_OPTION(o.half_open_max_calls = 1025,
               "half_open_max_calls must be between 1 and 1024");
    BAD_OPTION(o.half_open_success_threshold = 0,
               "half_open_success_threshold must be between 1 and "
               "half_open_max_calls (3)");
    BAD_OPTION(o.half_open_success_threshold = 4,
               "half_open_success_threshold must be between 1 and "
               "half_open_max_calls (3)");
    BAD_OPTION(o.backoff_multiplier = 0.99,
               "backoff_multiplier must be a finite number >= 1");
    BAD_OPTION(o.backoff_multiplier = NAN,
               "backoff_multiplier must be a finite number >= 1");
    BAD_OPTION(o.max_timeout = 299,
               "max_timeout must be finite and >= timeout");
    BAD_OPTION(o.max_timeout = INFINITY,
               "max_timeout must be finite and >= timeout");
    BAD_OPTION(o.permit_timeout = -1,
               "permit_timeout must be a finite number >= 0");
    BAD_OPTION(o.window_type = (sl_breaker_window)7,
               "window type must be none, count or time");
    BAD_OPTION((o.window_type = SL_BREAKER_WINDOW_COUNT, o.window_size = 0),
               "window_size must be between 1 and 1000000");
    BAD_OPTION(
        (o.window_type = SL_BREAKER_WINDOW_TIME, o.window_size = 1000001),
        "window_size must be between 1 and 1000000");
    BAD_OPTION((o.window_type = SL_BREAKER_WINDOW_TIME, o.window_min_calls = 0),
               "window_min_calls must be >= 1");
    BAD_OPTION((o.window_type = SL_BREAKER_WINDOW_COUNT, o.window_size = 5),
               "window_min_calls must be <= window_size for a count window");
    BAD_OPTION((o.window_type = SL_BREAKER_WINDOW_COUNT, o.failure_rate = 0),
               "failure_rate must be in (0, 1]");
    BAD_OPTION((o.window_type = SL_BREAKER_WINDOW_COUNT, o.failure_rate = 1.5),
               "failure_rate must be in (0, 1]");
    BAD_OPTION(
        (o.window_type = SL_BREAKER_WINDOW_COUNT, o.slow_call_rate = NAN),
        "slow_call_rate must be in (0, 1]");
    BAD_OPTION(o.slow_call_duration = -0.5,
               "slow_call_duration must be a finite number >= 0");
    BAD_OPTION(o.slow_call_duration = 2,
               "slow_call_duration requires a window (type count or time)");
    BAD_OPTION(o.mode = (sl_breaker_mode)3,
               "mode must be normal, metrics_only or disabled");
    BAD_OPTION(o.jitter = 1.01, "jitter must be in [0, 1]");
    BAD_OPTION(o.jitter = -0.1, "jitter must be in [0, 1]");

    /* Window options are only checked when a window is on. */
    sl_breaker_options_default(&o);
    o.window_size = 0;
    o.failure_rate = 7;
    CHECK_INT(sl_breaker_options_validate(&o, NULL, 0), 0);
    /* A time window may ask for more calls than it has seconds. */
    o.window_type = SL_BREAKER_WINDOW_TIME;
    o.window_size = 5;
    o.failure_rate = 0.5;
    o.window_min_calls = 50;
    CHECK_INT(sl_breaker_options_validate(&o, NULL, 0), 0);

    sl_breaker_options_default(&o);
    o.failure_threshold = 0;
    CHECK(sl_breaker_new(&o, &clock, err, sizeof(err)) == NULL);
    CHECK_STR(err, "failure_threshold must be >= 1");
    sl_breaker_options_default(&o);
    clock.wall = NULL;
    CHECK(sl_breaker_new(&o, &clock, err, sizeof(err)) == NULL);
    CHECK_STR(err, "options and a clock with mono and wall needed");
    CHECK(sl_breaker_new(NULL, NULL, NULL, 0) == NULL);
}

TEST(names_and_copies) {
    char name[16] = "binance";
    sl_breaker_options o;
    fake_clock c;
    sl_breaker *b;

    CHECK_STR(sl_breaker_state_name(SL_BREAKER_CLOSED), "closed");
    CHECK_STR(sl_breaker_state_name(SL_BREAKER_OPEN), "open");
    CHECK_STR(sl_breaker_state_name(SL_BREAKER_HALF_OPEN), "half-open");
    CHECK_STR(sl_breaker_state_name((sl_breaker_state)3), "unknown");
    CHECK_STR(sl_breaker_mode_name(SL_BREAKER_MODE_NORMAL), "normal");
    CHECK_STR(sl_breaker_mode_name(SL_BREAKER_MODE_METRICS_ONLY),
              "metrics_only");
    CHECK_STR(sl_breaker_mode_name(SL_BREAKER_MODE_DISABLED), "disabled");
    CHECK_STR(sl_breaker_mode_name((sl_breaker_mode)-1), "unknown");

    sl_breaker_options_default(&o);
    o.name = name;
    b = mk(&o, &c, NULL);
    strcpy(name, "changed");
    CHECK_STR(sl_breaker_name(b), "binance");
    CHECK_STR(sl_breaker_get_options(b)->name, "binance");
    CHECK_INT(sl_breaker_get_options(b)->failure_threshold, 5);
    sl_breaker_free(b);

    o.name = NULL;
    b = mk(&o, &c, NULL);
    CHECK_STR(sl_breaker_name(b), "unknown");
    sl_breaker_free(b);
    sl_breaker_free(NULL);
}

#define ISO(epoch, want)                                                       \
    do {                                                                       \
        char buf_[SL_BREAKER_ISO8601_LEN];                                     \
        CHECK_INT(sl_breaker_iso8601(epoch, buf_, sizeof(buf_)), 0);           \
        CHECK_STR(buf_, want);                                                 \
    } while (0)

TEST(iso8601) {
    char buf[64];

    ISO(T0, "2024-11-14T10:23:45Z");
    ISO(1762867200.0, "2025-11-11T13:20:00Z");
    ISO(0.0, "1970-01-01T00:00:00Z");
    ISO(951782400.0, "2000-02-29T00:00:00Z");
    ISO(T0 + 0.25, "2024-11-14T10:23:45.250000Z");
    ISO(100.0000004, "1970-01-01T00:01:40Z");
    ISO(59.9999996, "1970-01-01T00:01:00Z");
    ISO(-1.5, "1969-12-31T23:59:58.500000Z");
    /* -1.5 us rounds half up, to -1 us, as sluice.iso8601 rounds it. */
    ISO(-1.5e-6, "1969-12-31T23:59:59.999999Z");
    ISO(-5e-7, "1970-01-01T00:00:00Z");
    ISO(-86400.0, "1969-12-31T00:00:00Z");
    ISO(-62167219200.0, "0000-01-01T00:00:00Z");
    ISO(253402300799.0, "9999-12-31T23:59:59Z");

    strcpy(buf, "x");
    CHECK_INT(sl_breaker_iso8601(253402300800.0, buf, sizeof(buf)), -1);
    CHECK_STR(buf, "");
    CHECK_INT(sl_breaker_iso8601(-62167219201.0, buf, sizeof(buf)), -1);
    CHECK_INT(sl_breaker_iso8601(NAN, buf, sizeof(buf)), -1);
    CHECK_INT(sl_breaker_iso8601(INFINITY, buf, sizeof(buf)), -1);
    /* 20 characters need 21 bytes. */
    CHECK_INT(sl_breaker_iso8601(T0, buf, 20), -1);
    CHECK_STR(buf, "");
    CHECK_INT(sl_breaker_iso8601(T0, buf, 21), 0);
    CHECK_STR(buf, "2024-11-14T10:23:45Z");
    CHECK_INT(sl_breaker_iso8601(T0, NULL, 0), -1);
}

/* ---- the eight reference scenarios --------------------------------------- */

TEST(ref_basic_failure_tracking) {
    const char *why = "x";
    sl_breaker_status st;
    fake_clock c;
    recorder r;
    sl_breaker *b = mk(NULL, &c, &r);

    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_NUM(st.last_state_change, T0, 0);
    CHECK_NUM(st.last_failure_time, SL_BREAKER_NEVER, 0);

    fail_n(b, 4);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_INT(st.failure_count, 4);
    CHECK_INT(st.consecutive_successes, 0);
    /* A success breaks the run: the rule is consecutive failures. */
    succeed_n(b, 2);
    st = status(b);
    CHECK_INT(st.failure_count, 0);
    CHECK_INT(st.consecutive_successes, 2);
    fail_n(b, 4);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_CLOSED);
    CHECK_INT(status(b).consecutive_successes, 0);
    CHECK_INT(status(b).failure_count, 4);
    CHECK(sl_breaker_allow(b, &why) != 0);
    CHECK(why == NULL);
    CHECK_INT(r.n, 0);

    advance(&c, 7);
    fail_n(b, 1);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_OPEN);
    CHECK_INT(st.failure_count, 5);
    CHECK_INT(st.consecutive_successes, 0);
    CHECK_INT(st.statistics.circuit_opens, 1);
    CHECK_INT(st.statistics.total_failures, 9);
    CHECK_INT(st.statistics.total_successes, 2);
    CHECK_NUM(st.last_failure_time, T0 + 7, 0);
    CHECK_NUM(st.last_state_change, T0 + 7, 0);
    CHECK_NUM(st.statistics.last_open_time, T0 + 7, 0);
    CHECK_NUM(st.open_until, T0 + 7 + 300, 1e-9);
    CHECK_NUM(st.timeout_seconds, 300, 0);
    CHECK_INT(r.n, 1);
    check_event(&r, 0, SL_BREAKER_CLOSED, SL_BREAKER_OPEN, "failure_threshold");

    CHECK_INT(sl_breaker_allow(b, &why), 0);
    CHECK_STR(why, "open");
    CHECK_INT(sl_breaker_allow(b, NULL), 0);
    CHECK_INT(status(b).statistics.rejected, 2);
    sl_breaker_free(b);
}

TEST(ref_half_open_entry) {
    const char *why;
    sl_breaker_status st;
    sl_breaker_permit p;
    fake_clock c;
    recorder r;
    sl_breaker *b = mk(NULL, &c, &r);

    fail_n(b, 5);
    advance(&c, 299.75);
    CHECK_INT(sl_breaker_allow(b, &why), 0);
    CHECK_STR(why, "open");
    /* Only allow() moves it: a status past the deadline still says open. */
    advance(&c, 0.25);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_OPEN);
    CHECK_NUM(st.statistics.time_in_open_state, 300.0, 0);

    p = sl_breaker_allow(b, &why);
    CHECK(p != 0);
    CHECK(why == NULL);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_HALF_OPEN);
    CHECK(p > st.generation);
    CHECK_INT(st.failure_count, 0);
    CHECK_INT(st.half_open_attempts, 1);
    CHECK_INT(st.half_open_successes, 0);
    CHECK_INT(st.half_open_outstanding, 1);
    CHECK_INT(st.half_open_max_calls, 3);
    CHECK_INT(st.half_open_success_threshold, 2);
    CHECK_NUM(st.half_open_success_rate, 0.0, 0);
    CHECK_NUM(st.statistics.time_in_open_state, 300.0, 0);
    CHECK_NUM(st.last_state_change, T0 + 300, 0);
    CHECK_NUM(st.open_until, SL_BREAKER_NEVER, 0);
    CHECK_INT(r.n, 2);
    check_event(&r, 1, SL_BREAKER_OPEN, SL_BREAKER_HALF_OPEN,
                "timeout_elapsed");
    sl_breaker_free(b);
}

TEST(ref_gradual_recovery) {
    sl_breaker_permit p1, p2, p3;
    const char *why;
    sl_breaker_status st;
    fake_clock c;
    recorder r;
    sl_breaker *b = mk(NULL, &c, &r);

    fail_n(b, 5);
    advance(&c, 300);
    p1 = sl_breaker_allow(b, NULL);
    p2 = sl_breaker_allow(b, NULL);
    p3 = sl_breaker_allow(b, NULL);
    CHECK(p1 != 0 && p2 > p1 && p3 > p2);
    CHECK_INT(sl_breaker_allow(b, &why), 0);
    CHECK_STR(why, "half-open");

    CHECK_INT(sl_breaker_success(b, p2, 0.2), 1);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_HALF_OPEN);
    CHECK_INT(st.half_open_attempts, 3);
    CHECK_INT(st.half_open_successes, 1);
    CHECK_INT(st.half_open_outstanding, 2);
    CHECK_NUM(st.half_open_success_rate, 1.0 / 3.0, 1e-12);
    CHECK_INT(st.consecutive_successes, 0);

    advance(&c, 2);
    CHECK_INT(sl_breaker_success(b, p1, 0.2), 1);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_INT(st.statistics.successful_recoveries, 1);
    CHECK_INT(st.statistics.failed_recoveries, 0);
    CHECK_NUM(st.timeout_seconds, 300, 0);
    CHECK_INT(st.failure_count, 0);
    CHECK_NUM(st.last_state_change, T0 + 302, 0);
    CHECK_INT(r.n, 3);
    check_event(&r, 2, SL_BREAKER_HALF_OPEN, SL_BREAKER_CLOSED, "recovered");

    /* The third trial ends after the breaker closed: it is not counted. */
    CHECK_INT(sl_breaker_failure(b, p3, 0.2), 0);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_INT(st.failure_count, 0);
    CHECK_INT(st.statistics.ignored_results, 1);
    CHECK_INT(st.statistics.total_failures, 5);
    CHECK_INT(st.statistics.total_successes, 2);
    sl_breaker_free(b);
}

TEST(ref_failed_recovery) {
    sl_breaker_permit p1, p2;
    const char *why;
    sl_breaker_status st;
    fake_clock c;
    recorder r;
    sl_breaker *b = mk(NULL, &c, &r);

    fail_n(b, 5);
    advance(&c, 300);
    p1 = sl_breaker_allow(b, NULL);
    p2 = sl_breaker_allow(b, NULL);
    CHECK_INT(sl_breaker_success(b, p1, 0), 1);
    advance(&c, 1);
    CHECK_INT(sl_breaker_failure(b, p2, 0), 1);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_OPEN);
    CHECK_INT(st.statistics.failed_recoveries, 1);
    CHECK_INT(st.statistics.successful_recoveries, 0);
    CHECK_INT(st.statistics.circuit_opens, 2);
    CHECK_NUM(st.timeout_seconds, 450, 0);
    CHECK_NUM(st.open_until, T0 + 301 + 450, 1e-9);
    CHECK_NUM(st.statistics.last_open_time, T0 + 301, 0);
    CHECK_NUM(st.last_failure_time, T0 + 301, 0);
    CHECK_INT(r.n, 3);
    check_event(&r, 2, SL_BREAKER_HALF_OPEN, SL_BREAKER_OPEN,
                "half_open_failure");

    advance(&c, 449.5);
    CHECK_INT(sl_breaker_allow(b, &why), 0);
    CHECK_STR(why, "open");
    advance(&c, 0.5);
    CHECK(sl_breaker_allow(b, NULL) != 0);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_HALF_OPEN);
    CHECK_NUM(status(b).statistics.time_in_open_state, 300 + 450, 1e-9);
    sl_breaker_free(b);
}

TEST(ref_exponential_backoff) {
    const double want[] = {450,       675,  1012.5, 1518.75, 2278.125,
                           3417.1875, 3600, 3600,   3600};
    sl_breaker_status st;
    sl_breaker_permit p;
    fake_clock c;
    size_t i;
    sl_breaker *b = mk(NULL, &c, NULL);

    fail_n(b, 5);
    CHECK_NUM(status(b).timeout_seconds, 300, 0);
    CHECK_NUM(status(b).open_until - c.wall, 300, 1e-6);
    for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        st = status(b);
        advance(&c, st.timeout_seconds - 0.5);
        CHECK_INT(sl_breaker_allow(b, NULL), 0);
        advance(&c, 0.5);
        p = sl_breaker_allow(b, NULL);
        CHECK(p != 0);
        CHECK_INT(sl_breaker_failure(b, p, 0), 1);
        st = status(b);
        CHECK_INT(st.state, SL_BREAKER_OPEN);
        CHECK_NUM(st.timeout_seconds, want[i], 0);
        CHECK_NUM(st.open_until - c.wall, want[i], 1e-6);
        CHECK_INT(st.statistics.failed_recoveries, i + 1);
    }
    /* A successful recovery restores the base timeout. */
    advance(&c, 3600);
    succeed_n(b, 2);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_NUM(st.timeout_seconds, 300, 0);
    fail_n(b, 5);
    CHECK_NUM(status(b).open_until - c.wall, 300, 1e-6);
    sl_breaker_free(b);
}

TEST(ref_manual_controls) {
    sl_breaker_permit p;
    const char *why;
    sl_breaker_status st;
    uint64_t gen;
    fake_clock c;
    recorder r;
    sl_breaker *b = mk(NULL, &c, &r);

    CHECK_INT(sl_breaker_force_open(b), 0);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_OPEN);
    CHECK_INT(st.statistics.circuit_opens, 1);
    CHECK_NUM(st.open_until, T0 + 300, 0);
    CHECK_INT(sl_breaker_allow(b, &why), 0);
    CHECK_STR(why, "open");
    check_event(&r, 0, SL_BREAKER_CLOSED, SL_BREAKER_OPEN, "force_open");

    /* Forcing an open breaker only ever extends its deadline. */
    advance(&c, 100);
    CHECK_INT(sl_breaker_force_open(b), 0);
    st = status(b);
    CHECK_NUM(st.open_until, T0 + 400, 0);
    CHECK_INT(st.statistics.circuit_opens, 1);
    CHECK_INT(r.n, 1);

    CHECK_INT(sl_breaker_force_close(b), 0);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_NUM(st.statistics.time_in_open_state, 100, 0);
    CHECK(sl_breaker_allow(b, NULL) != 0);
    check_event(&r, 1, SL_BREAKER_OPEN, SL_BREAKER_CLOSED, "force_close");

    /* reset of a closed breaker: counters cleared, stats kept, no event,
     * permits from before are stale. */
    p = sl_breaker_allow(b, NULL);
    fail_n(b, 3);
    gen = status(b).generation;
    CHECK_INT(sl_breaker_reset(b), 0);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_INT(st.failure_count, 0);
    CHECK_NUM(st.last_failure_time, SL_BREAKER_NEVER, 0);
    CHECK_INT(st.statistics.total_failures, 3);
    CHECK(st.generation > gen);
    CHECK_INT(r.n, 2);
    CHECK_INT(sl_breaker_failure(b, p, 0), 0);
    CHECK_INT(status(b).failure_count, 0);

    /* reset of an open, backed-off breaker. */
    fail_n(b, 5);
    advance(&c, 300);
    fail_n(b, 1);
    CHECK_NUM(status(b).timeout_seconds, 450, 0);
    advance(&c, 10);
    CHECK_INT(sl_breaker_reset(b), 0);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_NUM(st.timeout_seconds, 300, 0);
    CHECK_INT(st.statistics.circuit_opens, 3);
    CHECK_INT(st.statistics.failed_recoveries, 1);
    CHECK_INT(st.statistics.total_failures, 9);
    CHECK_NUM(st.statistics.time_in_open_state, 100 + 300 + 10, 1e-9);
    check_event(&r, r.n - 1, SL_BREAKER_OPEN, SL_BREAKER_CLOSED, "reset");

    /* force_open from half-open is no failed recovery and no backoff. */
    fail_n(b, 5);
    advance(&c, 300);
    CHECK(sl_breaker_allow(b, NULL) != 0);
    CHECK_INT(sl_breaker_force_open(b), 0);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_OPEN);
    CHECK_INT(st.statistics.failed_recoveries, 1);
    CHECK_NUM(st.timeout_seconds, 300, 0);
    check_event(&r, r.n - 1, SL_BREAKER_HALF_OPEN, SL_BREAKER_OPEN,
                "force_open");

    /* force_close from half-open. */
    advance(&c, 300);
    CHECK(sl_breaker_allow(b, NULL) != 0);
    CHECK_INT(sl_breaker_force_close(b), 0);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_CLOSED);
    check_event(&r, r.n - 1, SL_BREAKER_HALF_OPEN, SL_BREAKER_CLOSED,
                "force_close");
    CHECK_INT(status(b).statistics.successful_recoveries, 0);
    sl_breaker_free(b);
}

TEST(ref_persistence) {
    sl_breaker_snapshot snap, bad;
    sl_breaker_options o;
    sl_breaker_status st;
    sl_breaker_permit p;
    fake_clock c, c2;
    recorder r, r2;
    char err[128];
    sl_breaker *a, *b;

    sl_breaker_options_default(&o);
    o.name = "moralis";
    a = mk(&o, &c, &r);
    succeed_n(a, 1);
    advance(&c, 10);
    fail_n(a, 5);
    advance(&c, 100);
    sl_breaker_get_snapshot(a, &snap);
    CHECK_INT(snap.state, SL_BREAKER_OPEN);
    CHECK_INT(snap.failure_count, 5);
    CHECK_NUM(snap.timeout, 300, 0);
    CHECK_NUM(snap.open_until, T0 + 310, 1e-9);
    CHECK_NUM(snap.last_failure_time, T0 + 10, 0);
    CHECK_NUM(snap.last_state_change, T0 + 10, 0);
    CHECK_NUM(snap.statistics.last_open_time, T0 + 10, 0);
    CHECK_NUM(snap.statistics.time_in_open_state, 100, 0);
    CHECK_INT(snap.statistics.total_failures, 5);
    CHECK_INT(snap.statistics.total_successes, 1);
    CHECK_INT(snap.statistics.circuit_opens, 1);

    /* A restart 90 s later: a new process with another monotonic origin. */
    b = mk(&o, &c2, &r2);
    c2.mono = 5.0;
    c2.wall = T0 + 200;
    p = sl_breaker_allow(b, NULL);
    CHECK_INT(sl_breaker_restore(b, &snap, err, sizeof(err)), 0);
    CHECK_INT(r2.n, 1);
    check_event(&r2, 0, SL_BREAKER_CLOSED, SL_BREAKER_OPEN, "restore");
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_OPEN);
    CHECK_INT(st.failure_count, 5);
    CHECK_NUM(st.open_until, T0 + 310, 1e-6);
    CHECK_NUM(st.statistics.time_in_open_state, 100, 0);
    CHECK_INT(st.statistics.circuit_opens, 1);
    CHECK_INT(st.statistics.total_failures, 5);
    CHECK_INT(st.statistics.total_successes, 1);
    CHECK_NUM(st.last_state_change, T0 + 10, 0);
    /* A permit from before the restore is stale. */
    CHECK_INT(sl_breaker_success(b, p, 0), 0);
    CHECK_INT(sl_breaker_allow(b, NULL), 0);
    advance(&c2, 109.5);
    CHECK_INT(sl_breaker_allow(b, NULL), 0);
    advance(&c2, 0.5);
    CHECK(sl_breaker_allow(b, NULL) != 0);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_HALF_OPEN);
    CHECK_NUM(st.statistics.time_in_open_state, 210, 1e-9);
    sl_breaker_free(b);

    /* A deadline that passed during the downtime: open, then half-open on the
     * next allow(). */
    b = mk(&o, &c2, NULL);
    c2.wall = T0 + 5000;
    CHECK_INT(sl_breaker_restore(b, &snap, err, sizeof(err)), 0);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_OPEN);
    CHECK(sl_breaker_allow(b, NULL) != 0);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_HALF_OPEN);
    sl_breaker_free(b);

    /* Backoff survives; a changed max_timeout clamps it. A half-open
     * snapshot restores as a fresh trial period. */
    advance(&c, 200);
    fail_n(a, 1);
    advance(&c, 450);
    p = sl_breaker_allow(a, NULL);
    CHECK(p != 0);
    sl_breaker_get_snapshot(a, &snap);
    CHECK_INT(snap.state, SL_BREAKER_HALF_OPEN);
    CHECK_NUM(snap.timeout, 450, 0);
    CHECK_NUM(snap.open_until, SL_BREAKER_NEVER, 0);
    CHECK_INT(snap.statistics.failed_recoveries, 1);
    b = mk(&o, &c2, NULL);
    CHECK_INT(sl_breaker_restore(b, &snap, err, sizeof(err)), 0);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_HALF_OPEN);
    CHECK_NUM(st.timeout_seconds, 450, 0);
    CHECK_INT(st.half_open_attempts, 0);
    CHECK_INT(st.half_open_outstanding, 0);
    CHECK_INT(st.statistics.failed_recoveries, 1);
    sl_breaker_free(b);
    o.max_timeout = 400;
    b = mk(&o, &c2, NULL);
    CHECK_INT(sl_breaker_restore(b, &snap, err, sizeof(err)), 0);
    CHECK_NUM(status(b).timeout_seconds, 400, 0);

    /* Bad snapshots are refused and leave the breaker untouched. */
    bad = snap;
    bad.state = (sl_breaker_state)9;
    CHECK_INT(sl_breaker_restore(b, &bad, err, sizeof(err)), -1);
    CHECK_STR(err, "snapshot state is invalid");
    bad = snap;
    bad.state = SL_BREAKER_OPEN;
    bad.open_until = NAN;
    CHECK_INT(sl_breaker_restore(b, &bad, err, sizeof(err)), -1);
    CHECK_STR(err, "snapshot open_until must be finite when open");
    bad = snap;
    bad.timeout = 0;
    CHECK_INT(sl_breaker_restore(b, &bad, err, sizeof(err)), -1);
    CHECK_STR(err, "snapshot timeout must be a finite number > 0");
    bad = snap;
    bad.failure_count = -1;
    CHECK_INT(sl_breaker_restore(b, &bad, err, sizeof(err)), -1);
    CHECK_STR(err, "snapshot failure_count must be >= 0");
    bad = snap;
    bad.statistics.time_in_open_state = -1;
    CHECK_INT(sl_breaker_restore(b, &bad, err, sizeof(err)), -1);
    CHECK_STR(err, "snapshot time_in_open_state must be a finite number >= 0");
    bad = snap;
    bad.last_state_change = INFINITY;
    CHECK_INT(sl_breaker_restore(b, &bad, err, sizeof(err)), -1);
    CHECK_STR(err, "snapshot timestamps must be finite");
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_HALF_OPEN);
    sl_breaker_free(b);

    /* A closed snapshot keeps its run of failures. */
    CHECK_INT(sl_breaker_success(a, p, 0), 1);
    succeed_n(a, 1);
    fail_n(a, 3);
    sl_breaker_get_snapshot(a, &snap);
    CHECK_INT(snap.state, SL_BREAKER_CLOSED);
    CHECK_INT(snap.failure_count, 3);
    CHECK_NUM(snap.timeout, 300, 0);
    b = mk(&o, &c2, &r2);
    CHECK_INT(sl_breaker_restore(b, &snap, err, sizeof(err)), 0);
    CHECK_INT(r2.n, 0);
    fail_n(b, 1);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_CLOSED);
    fail_n(b, 1);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_OPEN);
    CHECK_INT(status(b).statistics.circuit_opens, 3);
    sl_breaker_free(b);
    sl_breaker_free(a);
}

TEST(ref_statistics) {
    sl_breaker_status st;
    fake_clock c;
    sl_breaker *b = mk(NULL, &c, NULL);

    st = status(b);
    CHECK_NUM(st.health_score, 1.0, 0);
    CHECK_INT(st.statistics.total_failures, 0);
    CHECK_INT(st.statistics.total_successes, 0);
    CHECK_INT(st.statistics.circuit_opens, 0);
    CHECK_NUM(st.statistics.time_in_open_state, 0, 0);
    CHECK_NUM(st.statistics.last_open_time, SL_BREAKER_NEVER, 0);

    succeed_n(b, 100);
    CHECK_INT(status(b).consecutive_successes, 100);
    fail_n(b, 5);
    st = status(b);
    /* open: it admits nothing, whatever the history says */
    CHECK_NUM(st.health_score, 0.0, 0);
    CHECK_INT(st.statistics.circuit_opens, 1);
    advance(&c, 150);
    CHECK_NUM(status(b).statistics.time_in_open_state, 150, 0);
    advance(&c, 150);
    succeed_n(b, 2);
    st = status(b);
    CHECK_INT(st.statistics.total_successes, 102);
    CHECK_INT(st.statistics.total_failures, 5);
    CHECK_INT(st.statistics.successful_recoveries, 1);
    CHECK_INT(st.statistics.failed_recoveries, 0);
    CHECK_NUM(st.statistics.time_in_open_state, 300, 0);
    CHECK_NUM(st.statistics.last_open_time, T0, 0);
    CHECK_NUM(st.health_score, 102.0 / 107.0, 1e-15);
    /* Closed time does not add to the open time. */
    advance(&c, 1000);
    CHECK_NUM(status(b).statistics.time_in_open_state, 300, 0);
    CHECK_INT(sl_breaker_reset(b), 0);
    st = status(b);
    CHECK_INT(st.statistics.total_successes, 102);
    CHECK_NUM(st.health_score, 102.0 / 107.0, 1e-15);
    sl_breaker_free(b);

    b = mk(NULL, &c, NULL);
    fail_n(b, 5);
    CHECK_NUM(status(b).health_score, 0.0, 0);
    sl_breaker_free(b);

    /* forced open with no call ever made: 0, not the 1 of "no failure";
     * closed again: the ratio (no calls: 1) */
    b = mk(NULL, &c, NULL);
    CHECK_INT(sl_breaker_force_open(b), 0);
    CHECK_NUM(status(b).health_score, 0.0, 0);
    CHECK_INT(sl_breaker_force_close(b), 0);
    CHECK_NUM(status(b).health_score, 1.0, 0);
    /* metrics-only: an open state refuses nothing, so the ratio stands */
    succeed_n(b, 3);
    fail_n(b, 5);
    CHECK_INT(sl_breaker_set_mode(b, SL_BREAKER_MODE_METRICS_ONLY), 0);
    CHECK_INT(status(b).state, SL_BREAKER_OPEN);
    CHECK_NUM(status(b).health_score, 3.0 / 8.0, 1e-15);
    sl_breaker_free(b);
}

/* The reference get_status() example, rebuilt field by field. */
TEST(status_shape) {
    char when[SL_BREAKER_ISO8601_LEN];
    sl_breaker_options o;
    sl_breaker_status st;
    sl_breaker_permit p;
    fake_clock c;
    sl_breaker *b;

    sl_breaker_options_default(&o);
    o.name = "moralis";
    b = mk(&o, &c, NULL);
    c.wall = 1762867200.0 - 1000; /* 2025-11-11T13:20:00 minus 1000 s */
    succeed_n(b, 100);
    advance(&c, 1000);
    fail_n(b, 5);
    advance(&c, 300);
    p = sl_breaker_allow(b, NULL);
    CHECK_INT(sl_breaker_success(b, p, 0.1), 1);

    st = status(b);
    CHECK_STR(sl_breaker_state_name(st.state), "half-open");
    CHECK_STR(st.name, "moralis");
    CHECK_INT(st.failure_count, 0);
    CHECK_INT(st.consecutive_successes, 0);
    CHECK_INT(st.failure_threshold, 5);
    CHECK_NUM(st.timeout_seconds, 300, 0);
    CHECK_INT(sl_breaker_iso8601(st.last_failure_time, when, sizeof(when)), 0);
    CHECK_STR(when, "2025-11-11T13:20:00Z");
    CHECK_INT(sl_breaker_iso8601(st.last_state_change, when, sizeof(when)), 0);
    CHECK_STR(when, "2025-11-11T13:25:00Z");
    CHECK_INT(st.half_open_attempts, 1);
    CHECK_INT(st.half_open_successes, 1);
    CHECK_INT(st.half_open_max_calls, 3);
    CHECK_INT(st.half_open_success_threshold, 2);
    CHECK_NUM(st.half_open_success_rate, 1.0, 0);
    CHECK_INT(st.statistics.total_failures, 5);
    CHECK_INT(st.statistics.total_successes, 101);
    CHECK_INT(st.statistics.circuit_opens, 1);
    CHECK_INT(st.statistics.successful_recoveries, 0);
    CHECK_INT(st.statistics.failed_recoveries, 0);
    CHECK_NUM(st.statistics.time_in_open_state, 300.0, 0);
    CHECK_INT(
        sl_breaker_iso8601(st.statistics.last_open_time, when, sizeof(when)),
        0);
    CHECK_STR(when, "2025-11-11T13:20:00Z");
    CHECK_NUM(st.health_score, 101.0 / 106.0, 1e-15);
    CHECK_INT(st.mode, SL_BREAKER_MODE_NORMAL);
    CHECK_INT(st.window_calls, 0);
    sl_breaker_free(b);
}

/* ---- permits ------------------------------------------------------------- */

TEST(generation_guard) {
    sl_breaker_permit early, late, p1, p2;
    sl_breaker_status st;
    fake_clock c;
    sl_breaker *b = mk(NULL, &c, NULL);

    early = sl_breaker_allow(b, NULL);
    late = sl_breaker_allow(b, NULL);
    CHECK(early != 0);
    CHECK_INT(early, late); /* closed permits are the generation */
    CHECK_INT(early, status(b).generation);
    fail_n(b, 5);
    /* Started while closed, failing after the breaker opened. */
    CHECK_INT(sl_breaker_failure(b, early, 3.0), 0);
    st = status(b);
    CHECK_INT(st.statistics.ignored_results, 1);
    CHECK_INT(st.statistics.total_failures, 5);
    CHECK_NUM(st.last_failure_time, T0, 0);

    /* ... or ending during half-open: it must not count as a trial. */
    advance(&c, 300);
    p1 = sl_breaker_allow(b, NULL);
    CHECK(p1 > early);
    CHECK_INT(sl_breaker_failure(b, late, 0), 0);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_HALF_OPEN);
    CHECK_INT(sl_breaker_success(b, late, 0), 0);
    CHECK_INT(status(b).half_open_successes, 0);

    /* A trial reported twice counts once; a made-up permit not at all. */
    CHECK_INT(sl_breaker_success(b, p1, 0), 1);
    CHECK_INT(sl_breaker_success(b, p1, 0), 0);
    CHECK_INT(sl_breaker_success(b, 1000000, 0), 0);
    st = status(b);
    CHECK_INT(st.half_open_successes, 1);
    CHECK_INT(st.state, SL_BREAKER_HALF_OPEN);
    CHECK_INT(st.statistics.ignored_results, 5);
    p2 = sl_breaker_allow(b, NULL);
    CHECK(p2 > p1);
    CHECK_INT(sl_breaker_success(b, p2, 0), 1);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_CLOSED);
    /* Trial permits are dead once the period ends. */
    CHECK_INT(sl_breaker_failure(b, p2, 0), 0);
    CHECK(status(b).generation > p2);
    CHECK_INT(status(b).statistics.total_successes, 2);
    sl_breaker_free(b);
}

TEST(permit_timeout) {
    sl_breaker_permit p1, p2, p3;
    const char *why;
    sl_breaker_options o;
    sl_breaker_status st;
    fake_clock c;
    recorder r;
    sl_breaker *b = mk(NULL, &c, &r);

    fail_n(b, 5);
    advance(&c, 300);
    p1 = sl_breaker_allow(b, NULL);
    p2 = sl_breaker_allow(b, NULL);
    p3 = sl_breaker_allow(b, NULL);
    CHECK(p1 && p2 && p3);
    advance(&c, 59.5);
    CHECK_INT(sl_breaker_allow(b, &why), 0);
    CHECK_STR(why, "half-open");
    CHECK_INT(status(b).half_open_outstanding, 3);
    advance(&c, 0.5);
    /* Noticed lazily, by the next operation. */
    CHECK_INT(sl_breaker_allow(b, &why), 0);
    CHECK_STR(why, "open");
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_OPEN);
    CHECK_INT(st.statistics.permit_timeouts, 1);
    CHECK_INT(st.statistics.total_failures, 6);
    CHECK_INT(st.statistics.failed_recoveries, 1);
    CHECK_NUM(st.timeout_seconds, 450, 0);
    CHECK_NUM(st.open_until, c.wall + 450, 1e-6);
    CHECK_NUM(st.last_failure_time, c.wall, 0);
    check_event(&r, r.n - 1, SL_BREAKER_HALF_OPEN, SL_BREAKER_OPEN,
                "permit_timeout");
    /* The late answer is ignored. */
    CHECK_INT(sl_breaker_success(b, p1, 61), 0);
    sl_breaker_free(b);

    /* Reported trials never expire; status() notices an expiry too. */
    b = mk(NULL, &c, &r);
    fail_n(b, 5);
    advance(&c, 300);
    p1 = sl_breaker_allow(b, NULL);
    advance(&c, 10);
    CHECK_INT(sl_breaker_success(b, p1, 10), 1);
    advance(&c, 20);
    p2 = sl_breaker_allow(b, NULL);
    advance(&c, 40);
    CHECK_INT(status(b).state, SL_BREAKER_HALF_OPEN);
    advance(&c, 19.75);
    CHECK_INT(status(b).state, SL_BREAKER_HALF_OPEN);
    advance(&c, 0.25);
    CHECK_INT(status(b).state, SL_BREAKER_OPEN);
    CHECK_INT(status(b).statistics.permit_timeouts, 1);
    CHECK_INT(sl_breaker_success(b, p2, 60), 0);
    sl_breaker_free(b);

    /* A report is what notices it, too: the reporter's permit is stale. */
    b = mk(NULL, &c, NULL);
    fail_n(b, 5);
    advance(&c, 300);
    p1 = sl_breaker_allow(b, NULL);
    p2 = sl_breaker_allow(b, NULL);
    advance(&c, 60);
    CHECK_INT(sl_breaker_success(b, p2, 60), 0);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_OPEN);
    sl_breaker_free(b);

    /* permit_timeout = 0: a lost trial keeps its slot. */
    sl_breaker_options_default(&o);
    o.permit_timeout = 0;
    o.half_open_max_calls = 1;
    o.half_open_success_threshold = 1;
    b = mk(&o, &c, NULL);
    fail_n(b, 5);
    advance(&c, 300);
    CHECK(sl_breaker_allow(b, NULL) != 0);
    advance(&c, 1e6);
    CHECK_INT(sl_breaker_allow(b, &why), 0);
    CHECK_STR(why, "half-open");
    CHECK_INT(status(b).statistics.permit_timeouts, 0);
    sl_breaker_free(b);
}

TEST(release) {
    sl_breaker_permit p1, p2, p3, p4, closed;
    const char *why;
    fake_clock c;
    sl_breaker *b = mk(NULL, &c, NULL);

    closed = sl_breaker_allow(b, NULL);
    CHECK_INT(sl_breaker_release(b, closed), 0);
    fail_n(b, 5);
    advance(&c, 300);
    p1 = sl_breaker_allow(b, NULL);
    p2 = sl_breaker_allow(b, NULL);
    p3 = sl_breaker_allow(b, NULL);
    CHECK_INT(sl_breaker_allow(b, &why), 0);
    CHECK_INT(sl_breaker_release(b, p2), 1);
    CHECK_INT(sl_breaker_release(b, p2), 0);
    CHECK_INT(sl_breaker_release(b, closed), 0);
    CHECK_INT(status(b).half_open_attempts, 2);
    CHECK_INT(status(b).half_open_outstanding, 2);
    p4 = sl_breaker_allow(b, NULL);
    CHECK(p4 > p3);
    CHECK_INT(sl_breaker_success(b, p2, 0), 0);
    CHECK_INT(sl_breaker_success(b, p1, 0), 1);
    CHECK_INT(sl_breaker_success(b, p4, 0), 1);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_CLOSED);
    CHECK_INT(status(b).statistics.total_successes, 2);
    CHECK_INT(sl_breaker_release(b, p3), 0);
    sl_breaker_free(b);
}

/* can_attempt()/record_*() without permits, as the reference aliases do. */
TEST(anonymous_results) {
    sl_breaker_status st;
    fake_clock c;
    int i;
    sl_breaker *b = mk(NULL, &c, NULL);

    for (i = 0; i < 5; i++) {
        CHECK(sl_breaker_allow(b, NULL) != 0);
        CHECK_INT(sl_breaker_failure(b, SL_BREAKER_NO_PERMIT, 0), 1);
    }
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_OPEN);
    CHECK_INT(sl_breaker_allow(b, NULL), 0);
    /* While open it only feeds the statistics. */
    CHECK_INT(sl_breaker_failure(b, SL_BREAKER_NO_PERMIT, 0), 1);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_OPEN);
    CHECK_INT(status(b).statistics.total_failures, 6);
    advance(&c, 300);
    CHECK(sl_breaker_allow(b, NULL) != 0);
    CHECK(sl_breaker_allow(b, NULL) != 0);
    CHECK_INT(sl_breaker_success(b, SL_BREAKER_NO_PERMIT, 0), 1);
    st = status(b);
    CHECK_INT(st.half_open_successes, 1);
    CHECK_INT(st.half_open_outstanding, 1);
    CHECK_INT(st.half_open_attempts, 2);
    CHECK_INT(sl_breaker_success(b, SL_BREAKER_NO_PERMIT, 0), 1);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_CLOSED);

    /* A result nobody asked allow() for still counts as a trial. */
    fail_n(b, 5);
    advance(&c, 300);
    CHECK(sl_breaker_allow(b, NULL) != 0);
    CHECK_INT(sl_breaker_success(b, SL_BREAKER_NO_PERMIT, 0), 1);
    CHECK_INT(sl_breaker_success(b, SL_BREAKER_NO_PERMIT, 0), 1);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_CLOSED);
    fail_n(b, 5);
    advance(&c, 300);
    CHECK(sl_breaker_allow(b, NULL) != 0);
    CHECK_INT(sl_breaker_failure(b, SL_BREAKER_NO_PERMIT, 0), 1);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_OPEN);
    CHECK_INT(st.statistics.failed_recoveries, 1);
    CHECK_INT(st.statistics.successful_recoveries, 2);
    sl_breaker_free(b);
}

/* ---- rate rules ---------------------------------------------------------- */

static sl_breaker_options window_opts(sl_breaker_window type, int size,
                                      int min_calls, double rate) {
    sl_breaker_options o;

    sl_breaker_options_default(&o);
    o.failure_threshold = 100;
    o.window_type = type;
    o.window_size = size;
    o.window_min_calls = min_calls;
    o.failure_rate = rate;
    return o;
}

TEST(count_window) {
    sl_breaker_options o = window_opts(SL_BREAKER_WINDOW_COUNT, 10, 5, 0.5);
    sl_breaker_status st;
    fake_clock c;
    recorder r;
    sl_breaker *b = mk(&o, &c, &r);

    /* min_calls holds the rule back; the call that meets it can be a
     * success. */
    fail_n(b, 4);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_CLOSED);
    CHECK_INT(status(b).window_calls, 4);
    CHECK_INT(status(b).window_failures, 4);
    succeed_n(b, 1);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_OPEN);
    check_event(&r, 0, SL_BREAKER_CLOSED, SL_BREAKER_OPEN, "failure_rate");
    sl_breaker_free(b);

    b = mk(&o, &c, &r);
    succeed_n(b, 3); /* S S S */
    fail_n(b, 1);    /* F */
    succeed_n(b, 1); /* S */
    fail_n(b, 2);    /* F F: 7 calls, 3 failures */
    succeed_n(b, 1); /* 8 calls, 3 failures */
    fail_n(b, 1);    /* 9 calls, 4 failures */
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_INT(st.window_calls, 9);
    CHECK_INT(st.window_failures, 4);
    fail_n(b, 1); /* 10 calls, 5 failures: 0.5 */
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_OPEN);
    CHECK_INT(status(b).failure_count, 2);
    /* Recovery starts the window afresh. */
    advance(&c, 300);
    succeed_n(b, 2);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_INT(st.window_calls, 0);
    CHECK_INT(st.window_failures, 0);
    sl_breaker_free(b);

    /* Old results leave the window. */
    o = window_opts(SL_BREAKER_WINDOW_COUNT, 4, 4, 0.75);
    b = mk(&o, &c, &r);
    fail_n(b, 1);
    succeed_n(b, 3);
    fail_n(b, 2); /* S S F F */
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_INT(st.window_calls, 4);
    CHECK_INT(st.window_failures, 2);
    fail_n(b, 1); /* S F F F */
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_OPEN);
    CHECK_INT(status(b).statistics.total_failures, 4);
    sl_breaker_free(b);
}

TEST(time_window) {
    sl_breaker_options o = window_opts(SL_BREAKER_WINDOW_TIME, 10, 4, 0.5);
    sl_breaker_status st;
    fake_clock c;
    recorder r;
    sl_breaker *b = mk(&o, &c, &r);

    fail_n(b, 3); /* second 1000 */
    advance(&c, 9.75);
    st = status(b);
    CHECK_INT(st.window_calls, 3);
    CHECK_INT(st.window_failures, 3);
    advance(&c, 0.25); /* second 1010: the window is [1001, 1010] */
    st = status(b);
    CHECK_INT(st.window_calls, 0);
    CHECK_INT(st.window_failures, 0);
    succeed_n(b, 3);
    fail_n(b, 1); /* 4 calls, 1 failure */
    advance(&c, 5);
    fail_n(b, 1); /* 5 calls, 2 failures */
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_INT(st.window_calls, 5);
    CHECK_INT(st.window_failures, 2);
    advance(&c, 5); /* second 1020: the calls of 1010 leave */
    st = status(b);
    CHECK_INT(st.window_calls, 1);
    CHECK_INT(st.window_failures, 1);
    succeed_n(b, 3); /* 4 calls, 1 failure */
    fail_n(b, 1);    /* 5 calls, 2 failures */
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_CLOSED);
    fail_n(b, 1); /* 6 calls, 3 failures */
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_OPEN);
    check_event(&r, 0, SL_BREAKER_CLOSED, SL_BREAKER_OPEN, "failure_rate");
    sl_breaker_free(b);

    /* A gap longer than the window empties it. */
    b = mk(&o, &c, NULL);
    fail_n(b, 3);
    advance(&c, 1000);
    fail_n(b, 3);
    st = status(b);
    CHECK_INT(st.window_calls, 3);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    fail_n(b, 1);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_OPEN);
    sl_breaker_free(b);
}

TEST(slow_calls) {
    sl_breaker_options o = window_opts(SL_BREAKER_WINDOW_COUNT, 4, 4, 1.0);
    sl_breaker_status st;
    fake_clock c;
    recorder r;
    sl_breaker *b;

    o.slow_call_duration = 2.0;
    o.slow_call_rate = 0.5;
    b = mk(&o, &c, &r);
    CHECK_INT(sl_breaker_success(b, sl_breaker_allow(b, NULL), 3.0), 1);
    CHECK_INT(sl_breaker_success(b, sl_breaker_allow(b, NULL), 1.0), 1);
    CHECK_INT(sl_breaker_success(b, sl_breaker_allow(b, NULL), 1.999), 1);
    st = status(b);
    CHECK_INT(st.window_slow_calls, 1);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_INT(sl_breaker_success(b, sl_breaker_allow(b, NULL), 2.0), 1);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_OPEN);
    CHECK_INT(st.statistics.total_successes, 4);
    CHECK_INT(st.statistics.total_failures, 0);
    CHECK_INT(st.statistics.slow_calls, 2);
    CHECK_NUM(st.health_score, 0.0, 0); /* open, though no call failed */
    check_event(&r, 0, SL_BREAKER_CLOSED, SL_BREAKER_OPEN, "slow_call_rate");
    sl_breaker_free(b);

    /* Unknown durations are never slow; a slow failure is both. */
    b = mk(&o, &c, &r);
    CHECK_INT(sl_breaker_success(b, sl_breaker_allow(b, NULL), -1), 1);
    CHECK_INT(sl_breaker_success(b, sl_breaker_allow(b, NULL), NAN), 1);
    CHECK_INT(sl_breaker_failure(b, sl_breaker_allow(b, NULL), 5), 1);
    CHECK_INT(sl_breaker_success(b, sl_breaker_allow(b, NULL), 0), 1);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_INT(st.window_slow_calls, 1);
    CHECK_INT(st.window_failures, 1);
    sl_breaker_free(b);

    /* When both rules trip, the failure rate is named. */
    o.failure_rate = 0.5;
    b = mk(&o, &c, &r);
    succeed_n(b, 2);
    CHECK_INT(sl_breaker_failure(b, sl_breaker_allow(b, NULL), 9), 1);
    CHECK_INT(sl_breaker_failure(b, sl_breaker_allow(b, NULL), 9), 1);
    check_event(&r, 0, SL_BREAKER_CLOSED, SL_BREAKER_OPEN, "failure_rate");
    sl_breaker_free(b);

    /* Slow calls in a time window. */
    o = window_opts(SL_BREAKER_WINDOW_TIME, 5, 2, 1.0);
    o.slow_call_duration = 1.0;
    o.slow_call_rate = 1.0;
    b = mk(&o, &c, &r);
    CHECK_INT(sl_breaker_success(b, sl_breaker_allow(b, NULL), 1.5), 1);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_CLOSED);
    CHECK_INT(sl_breaker_success(b, sl_breaker_allow(b, NULL), 1.5), 1);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_OPEN);
    check_event(&r, 0, SL_BREAKER_CLOSED, SL_BREAKER_OPEN, "slow_call_rate");
    sl_breaker_free(b);
}

/* ---- open_until, modes, jitter, callbacks ---------------------------------
 */

TEST(open_until) {
    const char *why;
    sl_breaker_status st;
    fake_clock c;
    recorder r;
    sl_breaker *b = mk(NULL, &c, &r);

    CHECK_INT(sl_breaker_open_until(b, T0), 0); /* not in the future */
    CHECK_INT(sl_breaker_open_until(b, T0 - 50), 0);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_CLOSED);
    CHECK_INT(sl_breaker_open_until(b, NAN), -1);
    CHECK_INT(sl_breaker_open_until(b, INFINITY), -1);
    CHECK_INT(r.n, 0);

    CHECK_INT(sl_breaker_open_until(b, T0 + 1000), 0);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_OPEN);
    CHECK_NUM(st.open_until, T0 + 1000, 0);
    CHECK_NUM(st.timeout_seconds, 300, 0);
    CHECK_INT(st.statistics.circuit_opens, 1);
    check_event(&r, 0, SL_BREAKER_CLOSED, SL_BREAKER_OPEN, "open_until");
    /* Never shortened, only extended. */
    CHECK_INT(sl_breaker_open_until(b, T0 + 500), 0);
    CHECK_NUM(status(b).open_until, T0 + 1000, 0);
    CHECK_INT(sl_breaker_open_until(b, T0 + 2000), 0);
    CHECK_NUM(status(b).open_until, T0 + 2000, 0);
    CHECK_INT(r.n, 1);
    /* The deadline lives on the monotonic clock: a wall step does not move
     * it. */
    c.wall += 5000;
    advance(&c, 1999.5);
    CHECK_INT(sl_breaker_allow(b, &why), 0);
    CHECK_STR(why, "open");
    advance(&c, 0.5);
    CHECK(sl_breaker_allow(b, NULL) != 0);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_HALF_OPEN);

    /* From half-open: no failed recovery, no backoff. */
    CHECK_INT(sl_breaker_open_until(b, c.wall + 60), 0);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_OPEN);
    CHECK_INT(st.statistics.failed_recoveries, 0);
    CHECK_NUM(st.timeout_seconds, 300, 0);
    CHECK_NUM(st.open_until, c.wall + 60, 1e-6);
    check_event(&r, r.n - 1, SL_BREAKER_HALF_OPEN, SL_BREAKER_OPEN,
                "open_until");

    /* On a tripped breaker, a ban longer than the timeout wins. */
    sl_breaker_free(b);
    b = mk(NULL, &c, NULL);
    fail_n(b, 5);
    CHECK_INT(sl_breaker_open_until(b, c.wall + 100), 0);
    CHECK_NUM(status(b).open_until, c.wall + 300, 1e-6);
    CHECK_INT(sl_breaker_open_until(b, c.wall + 7200), 0);
    CHECK_NUM(status(b).open_until, c.wall + 7200, 1e-6);
    sl_breaker_free(b);
}

TEST(modes) {
    sl_breaker_permit p, trials[3], extra;
    sl_breaker_options o;
    sl_breaker_status st;
    fake_clock c;
    recorder r;
    sl_breaker *b;
    int i;

    sl_breaker_options_default(&o);
    o.mode = SL_BREAKER_MODE_METRICS_ONLY;
    b = mk(&o, &c, &r);
    fail_n(b, 5);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_OPEN);
    check_event(&r, 0, SL_BREAKER_CLOSED, SL_BREAKER_OPEN, "failure_threshold");
    p = sl_breaker_allow(b, NULL);
    CHECK_INT(p, status(b).generation);
    CHECK_INT(sl_breaker_failure(b, p, 0), 1);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_OPEN);
    CHECK_INT(st.statistics.total_failures, 6);
    CHECK_INT(st.statistics.rejected, 0);
    advance(&c, 300);
    for (i = 0; i < 3; i++)
        trials[i] = sl_breaker_allow(b, NULL);
    extra = sl_breaker_allow(b, NULL);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_HALF_OPEN);
    CHECK(trials[0] > st.generation && extra == st.generation);
    CHECK_INT(st.half_open_outstanding, 3);
    /* Calls beyond the trials are counted but decide nothing. */
    CHECK_INT(sl_breaker_failure(b, extra, 0), 1);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_HALF_OPEN);
    CHECK_INT(sl_breaker_success(b, trials[0], 0), 1);
    CHECK_INT(sl_breaker_success(b, trials[2], 0), 1);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_INT(st.statistics.total_failures, 7);
    CHECK_INT(st.statistics.successful_recoveries, 1);
    sl_breaker_free(b);

    o.mode = SL_BREAKER_MODE_DISABLED;
    b = mk(&o, &c, &r);
    for (i = 0; i < 10; i++)
        CHECK_INT(sl_breaker_failure(b, sl_breaker_allow(b, NULL), 0), 0);
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_INT(st.mode, SL_BREAKER_MODE_DISABLED);
    CHECK_INT(st.statistics.total_failures, 0);
    CHECK_INT(st.statistics.ignored_results, 0);
    /* Manual controls still move the state; allow() ignores it. */
    CHECK_INT(sl_breaker_force_open(b), 0);
    CHECK(sl_breaker_allow(b, NULL) != 0);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_OPEN);
    CHECK_INT(sl_breaker_set_mode(b, SL_BREAKER_MODE_NORMAL), 0);
    CHECK_INT(sl_breaker_allow(b, NULL), 0);
    CHECK_INT(sl_breaker_force_close(b), 0);
    fail_n(b, 5);
    CHECK_INT(sl_breaker_get_state(b), SL_BREAKER_OPEN);
    CHECK_INT(sl_breaker_set_mode(b, (sl_breaker_mode)5), -1);
    CHECK_INT(sl_breaker_get_options(b)->mode, SL_BREAKER_MODE_NORMAL);
    CHECK_INT(sl_breaker_set_mode(b, SL_BREAKER_MODE_METRICS_ONLY), 0);
    CHECK(sl_breaker_allow(b, NULL) != 0);
    CHECK_INT(status(b).mode, SL_BREAKER_MODE_METRICS_ONLY);
    sl_breaker_free(b);
}

static double trip_duration(uint64_t seed, double jitter, int failed_trials) {
    sl_breaker_options o;
    fake_clock c;
    double d;
    int i;
    sl_breaker *b;

    sl_breaker_options_default(&o);
    o.jitter = jitter;
    o.seed = seed;
    b = mk(&o, &c, NULL);
    fail_n(b, 5);
    for (i = 0; i < failed_trials; i++) {
        advance(&c, 8000);
        fail_n(b, 1);
    }
    d = status(b).open_until - c.wall;
    sl_breaker_free(b);
    return d;
}

TEST(jitter) {
    double d, lo = 1e9, hi = 0, sum = 0;
    uint64_t seed;
    int distinct = 0;

    CHECK_NUM(trip_duration(1, 0.0, 0), 300, 1e-6);
    for (seed = 0; seed < 500; seed++) {
        d = trip_duration(seed, 0.2, 0);
        CHECK(d >= 300 - 1e-6 && d < 360);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
        sum += d;
        distinct += fabs(d - trip_duration(seed + 1, 0.2, 0)) > 1e-6;
        /* Same seed, same schedule. */
        CHECK_NUM(trip_duration(seed, 0.2, 0), d, 0);
    }
    CHECK(lo < 303 && hi > 357);
    CHECK(sum / 500 > 320 && sum / 500 < 340);
    CHECK(distinct > 490);
    /* Jitter applies on top of the backed-off timeout. */
    for (seed = 1; seed < 50; seed++) {
        d = trip_duration(seed, 0.5, 1);
        CHECK(d >= 450 - 1e-6 && d < 675);
        d = trip_duration(seed, 1.0, 9);
        CHECK(d >= 3600 - 1e-6 && d < 7200);
    }
}

TEST(callbacks) {
    sl_breaker_status st;
    fake_clock c;
    recorder r;
    sl_breaker *b = mk(NULL, &c, &r);

    r.reenter = 1;
    fail_n(b, 5);
    advance(&c, 300);
    succeed_n(b, 2);
    fail_n(b, 5);
    advance(&c, 300);
    fail_n(b, 1);
    CHECK_INT(sl_breaker_force_close(b), 0);
    CHECK_INT(r.n, 7);
    check_event(&r, 0, SL_BREAKER_CLOSED, SL_BREAKER_OPEN, "failure_threshold");
    check_event(&r, 1, SL_BREAKER_OPEN, SL_BREAKER_HALF_OPEN,
                "timeout_elapsed");
    check_event(&r, 2, SL_BREAKER_HALF_OPEN, SL_BREAKER_CLOSED, "recovered");
    check_event(&r, 3, SL_BREAKER_CLOSED, SL_BREAKER_OPEN, "failure_threshold");
    check_event(&r, 5, SL_BREAKER_HALF_OPEN, SL_BREAKER_OPEN,
                "half_open_failure");
    check_event(&r, 6, SL_BREAKER_OPEN, SL_BREAKER_CLOSED, "force_close");
    CHECK_INT(r.reenter_failures, 0);
    /* Refused calls left no trace. */
    st = status(b);
    CHECK_INT(st.state, SL_BREAKER_CLOSED);
    CHECK_INT(st.statistics.total_failures, 11);
    CHECK_INT(st.statistics.total_successes, 2);
    CHECK_INT(st.mode, SL_BREAKER_MODE_NORMAL);

    sl_breaker_set_callback(b, NULL, &r);
    fail_n(b, 5);
    CHECK_INT(r.n, 7);
    sl_breaker_free(b);
}

/* ---- randomized invariants ----------------------------------------------- */

static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static int rng_below(uint64_t *s, int n) { return (int)(rng_next(s) % n); }

#define HELD 32

typedef struct model {
    sl_breaker_permit held[HELD]; /* permits the "callers" still hold */
    int nheld;
    sl_breaker_permit trials[SL_BREAKER_MAX_TRIALS]; /* live trials */
    int ntrials;
    uint64_t applied_s, applied_f, ignored, rejected;
} model;

static void model_drop_trial(model *m, sl_breaker_permit p) {
    int i;

    for (i = 0; i < m->ntrials; i++)
        if (m->trials[i] == p) {
            m->trials[i] = m->trials[--m->ntrials];
            return;
        }
}

static void model_drop_oldest_trial(model *m) {
    sl_breaker_permit best = 0;
    int i;

    for (i = 0; i < m->ntrials; i++)
        if (best == 0 || m->trials[i] < best)
            best = m->trials[i];
    if (best)
        model_drop_trial(m, best);
}

/* What the random walks reached, summed over seeds, so that the invariants
 * are known to have been checked in every corner. */
static struct {
    uint64_t opens, recovered, failed_recoveries, permit_timeouts, rate_trips;
    uint64_t half_open_full, ignored, released, max_outstanding;
} cov;

static int fuzz_one(uint64_t seed, int steps) {
    static const double dts[] = {0, 0.25, 1, 4, 10, 59, 60, 61, 300, 1000};
    uint64_t rng = seed * 0x9E3779B97F4A7C15ULL + 1;
    int failures_before = test_failed_checks;
    double last_open_time = 0;
    sl_breaker_options o;
    sl_breaker_status st, s0;
    sl_breaker_snapshot snap;
    static model m;
    fake_clock c;
    recorder r;
    sl_breaker *b;
    int i, k, ret, events;

    sl_breaker_options_default(&o);
    o.failure_threshold = 1 + rng_below(&rng, 6);
    o.half_open_max_calls = 1 + rng_below(&rng, 5);
    o.half_open_success_threshold = 1 + rng_below(&rng, o.half_open_max_calls);
    o.timeout = (double[]){1, 10, 300}[rng_below(&rng, 3)];
    o.max_timeout = o.timeout * (double[]){1, 4, 12}[rng_below(&rng, 3)];
    o.permit_timeout = (double[]){0, 5, 60}[rng_below(&rng, 3)];
    o.jitter = rng_below(&rng, 2) ? 0.0 : 0.3;
    o.seed = seed;
    o.window_type = (sl_breaker_window)rng_below(&rng, 3);
    o.window_size = 10;
    o.window_min_calls = 1 + rng_below(&rng, 10);
    o.failure_rate = 0.6;
    if (o.window_type != SL_BREAKER_WINDOW_NONE && rng_below(&rng, 2))
        o.slow_call_duration = 2.0;
    b = mk(&o, &c, &r);
    memset(&m, 0, sizeof(m));
    if (b == NULL)
        return 1;

    for (i = 0; i < steps; i++) {
        int op = rng_below(&rng, 100);

        events = r.n;
        sl_breaker_get_status(b, &s0);
        if (r.n != events)
            m.ntrials = 0;
        events = r.n;
        if (op < 40) {
            const char *why = NULL;
            sl_breaker_permit p = sl_breaker_allow(b, &why);
            if (r.n != events)
                m.ntrials = 0;
            /* Refused exactly when open before the deadline or every
             * trial is taken. */
            if (s0.state == SL_BREAKER_OPEN && s0.open_until > c.wall)
                CHECK_INT(p, 0);
            if (s0.state == SL_BREAKER_HALF_OPEN &&
                s0.half_open_attempts >= o.half_open_max_calls)
                CHECK_INT(p, 0);
            if (s0.state == SL_BREAKER_CLOSED)
                CHECK(p != 0);
            if (p == 0) {
                CHECK(why != NULL);
                cov.half_open_full += why && strcmp(why, "half-open") == 0;
                m.rejected++;
            } else {
                CHECK(p >= status(b).generation);
                if (p > status(b).generation)
                    m.trials[m.ntrials++] = p;
                if (m.nheld == HELD) /* a caller lost its permit */
                    m.held[rng_below(&rng, HELD)] = p;
                else
                    m.held[m.nheld++] = p;
            }
        } else if (op < 78) {
            sl_breaker_permit p = 0;
            int failed = rng_below(&rng, 2);
            double dur = rng_below(&rng, 4);
            if (m.nheld > 0 && rng_below(&rng, 10) != 0) {
                k = rng_below(&rng, m.nheld);
                p = m.held[k];
                m.held[k] = m.held[--m.nheld];
            }
            ret = failed ? sl_breaker_failure(b, p, dur)
                         : sl_breaker_success(b, p, dur);
            CHECK(ret == 0 || ret == 1);
            if (ret == 1) {
                if (failed)
                    m.applied_f++;
                else
                    m.applied_s++;
            } else {
                m.ignored++;
            }
            if (r.n != events)
                m.ntrials = 0;
            else if (ret == 1 && p != 0)
                model_drop_trial(&m, p);
            else if (ret == 1 && s0.state == SL_BREAKER_HALF_OPEN)
                model_drop_oldest_trial(&m);
        } else if (op < 83) {
            if (m.nheld > 0) {
                k = rng_below(&rng, m.nheld);
                ret = sl_breaker_release(b, m.held[k]);
                if (r.n != events)
                    m.ntrials = 0;
                else if (ret == 1)
                    model_drop_trial(&m, m.held[k]);
                cov.released += ret == 1;
                m.held[k] = m.held[--m.nheld];
            }
        } else if (op < 96) {
            advance(&c, dts[rng_below(&rng, 10)]);
        } else {
            switch (rng_below(&rng, 5)) {
            case 0:
                sl_breaker_force_open(b);
                break;
            case 1:
                sl_breaker_force_close(b);
                break;
            case 2:
                sl_breaker_reset(b);
                break;
            case 3:
                sl_breaker_open_until(b, c.wall + rng_below(&rng, 2000));
                break;
            default:
                /* A round trip through a snapshot changes no counter. */
                sl_breaker_get_snapshot(b, &snap);
                CHECK_INT(sl_breaker_restore(b, &snap, NULL, 0), 0);
                CHECK_INT(r.n, events);
                m.ntrials = 0;
                break;
            }
            if (r.n != events)
                m.ntrials = 0;
        }

        st = status(b);
        CHECK(st.half_open_outstanding <= o.half_open_max_calls);
        if ((uint64_t)st.half_open_outstanding > cov.max_outstanding)
            cov.max_outstanding = (uint64_t)st.half_open_outstanding;
        if (st.state == SL_BREAKER_HALF_OPEN)
            CHECK_INT(st.half_open_outstanding, m.ntrials);
        else
            CHECK_INT(st.half_open_outstanding, 0);
        CHECK(m.ntrials <= o.half_open_max_calls);
        CHECK_INT(st.statistics.total_successes, m.applied_s);
        CHECK_INT(st.statistics.total_failures,
                  m.applied_f + st.statistics.permit_timeouts);
        CHECK_INT(st.statistics.ignored_results, m.ignored);
        CHECK_INT(st.statistics.rejected, m.rejected);
        CHECK_INT(st.statistics.circuit_opens, r.opens);
        CHECK_INT(st.statistics.successful_recoveries, r.recovered);
        CHECK_INT(st.statistics.failed_recoveries, r.failed_recoveries);
        CHECK_INT(st.statistics.permit_timeouts, r.permit_timeouts);
        CHECK(st.timeout_seconds >= o.timeout &&
              st.timeout_seconds <= o.max_timeout);
        CHECK(st.health_score >= 0.0 && st.health_score <= 1.0);
        CHECK(st.statistics.time_in_open_state >= last_open_time - 1e-6);
        last_open_time = st.statistics.time_in_open_state;
        if (st.state == SL_BREAKER_OPEN)
            CHECK(st.open_until != SL_BREAKER_NEVER);
        if (st.state == SL_BREAKER_CLOSED)
            CHECK(st.failure_count < o.failure_threshold);
        if (test_failed_checks != failures_before) {
            fprintf(stderr, "fuzz: seed %llu failed at step %d\n",
                    (unsigned long long)seed, i);
            break;
        }
    }
    cov.opens += (uint64_t)r.opens;
    cov.recovered += (uint64_t)r.recovered;
    cov.failed_recoveries += (uint64_t)r.failed_recoveries;
    cov.permit_timeouts += (uint64_t)r.permit_timeouts;
    cov.rate_trips += (uint64_t)r.rate_trips;
    cov.ignored += m.ignored;
    sl_breaker_free(b);
    return test_failed_checks == failures_before;
}

TEST(randomized_invariants) {
    uint64_t seed;

    for (seed = 1; seed <= 300; seed++)
        if (!fuzz_one(seed, 4000))
            break;
    /* The walks must actually reach every corner. */
    if (cov.opens <= 1000 || cov.recovered <= 100 ||
        cov.failed_recoveries <= 100 || cov.permit_timeouts <= 100 ||
        cov.rate_trips <= 100 || cov.half_open_full <= 100 ||
        cov.ignored <= 1000 || cov.released <= 100 || cov.max_outstanding != 5)
        fprintf(
            stderr,
            "fuzz coverage: opens %llu, recovered %llu, failed recoveries "
            "%llu, permit timeouts %llu, rate trips %llu, half-open full "
            "%llu, ignored %llu, released %llu, max outstanding %llu\n",
            (unsigned long long)cov.opens, (unsigned long long)cov.recovered,
            (unsigned long long)cov.failed_recoveries,
            (unsigned long long)cov.permit_timeouts,
            (unsigned long long)cov.rate_trips,
            (unsigned long long)cov.half_open_full,
            (unsigned long long)cov.ignored, (unsigned long long)cov.released,
            (unsigned long long)cov.max_outstanding);
    CHECK(cov.opens > 1000);
    CHECK(cov.recovered > 100);
    CHECK(cov.failed_recoveries > 100);
    CHECK(cov.permit_timeouts > 100);
    CHECK(cov.rate_trips > 100);
    CHECK(cov.half_open_full > 100);
    CHECK(cov.ignored > 1000);
    CHECK(cov.released > 100);
    CHECK_INT(cov.max_outstanding, 5);
}

int main(void) {
    RUN(options_defaults);
    RUN(options_validation);
    RUN(names_and_copies);
    RUN(iso8601);
    RUN(ref_basic_failure_tracking);
    RUN(ref_half_open_entry);
    RUN(ref_gradual_recovery);
    RUN(ref_failed_recovery);
    RUN(ref_exponential_backoff);
    RUN(ref_manual_controls);
    RUN(ref_persistence);
    RUN(ref_statistics);
    RUN(status_shape);
    RUN(generation_guard);
    RUN(permit_timeout);
    RUN(release);
    RUN(anonymous_results);
    RUN(count_window);
    RUN(time_window);
    RUN(slow_calls);
    RUN(open_until);
    RUN(modes);
    RUN(jitter);
    RUN(callbacks);
    RUN(randomized_invariants);
    return TEST_SUMMARY();
}
