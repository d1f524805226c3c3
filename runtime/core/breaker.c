/* breaker.c -- circuit breaker state machine */

#include "breaker.h"
#include "outcome_window.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct trial {
    sl_breaker_permit permit; /* 0 when the slot is free */
    double issued;            /* mono */
} trial;

struct sl_breaker {
    sl_breaker_options opt;
    char *name;
    sl_breaker_clock clock;
    sl_breaker_change_fn on_change;
    void *privdata;
    int in_callback;

    sl_breaker_state state;
    sl_breaker_permit gen;     /* permit value of the current state */
    sl_breaker_permit tickets; /* last permit value handed out */
    int failure_count;
    uint64_t consecutive_successes;
    double timeout;   /* open timeout in force, before jitter */
    double deadline;  /* mono; while open, when half-open becomes possible */
    double opened_at; /* mono; start of the current open period */
    double last_failure_wall, last_change_wall;

    int ho_attempts, ho_successes, ho_outstanding;
    trial *trials; /* half_open_max_calls slots */

    sl_outcome_window win; /* empty (size 0) without a window */
    uint64_t rng;

    sl_breaker_stats st; /* time_in_open_state: closed-out periods only */
};

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- options ----------------------------------------------------------- */

void sl_breaker_options_default(sl_breaker_options *opts) {
    memset(opts, 0, sizeof(*opts));
    opts->name = "unknown";
    opts->failure_threshold = 5;
    opts->timeout = 300.0;
    opts->half_open_max_calls = 3;
    opts->half_open_success_threshold = 2;
    opts->backoff_multiplier = 1.5;
    opts->max_timeout = 3600.0;
    opts->permit_timeout = 60.0;
    opts->window_type = SL_BREAKER_WINDOW_NONE;
    opts->window_size = 100;
    opts->window_min_calls = 10;
    opts->failure_rate = 0.5;
    opts->slow_call_duration = 0.0;
    opts->slow_call_rate = 1.0;
    opts->mode = SL_BREAKER_MODE_NORMAL;
    opts->jitter = 0.0;
    opts->seed = 0;
}

/* Each condition states what is valid, so NaN fails it. */
#define REQUIRE(ok, ...)                                                       \
    do {                                                                       \
        if (!(ok)) {                                                           \
            set_err(err, errlen, __VA_ARGS__);                                 \
            return -1;                                                         \
        }                                                                      \
    } while (0)

static int is_rate(double r) { return r > 0.0 && r <= 1.0; }

int sl_breaker_options_validate(const sl_breaker_options *o, char *err,
                                size_t errlen) {
    int windowed = o->window_type != SL_BREAKER_WINDOW_NONE;

    REQUIRE(o->failure_threshold >= 1, "failure_threshold must be >= 1");
    REQUIRE(o->timeout > 0.0 && isfinite(o->timeout),
            "timeout must be a finite number > 0");
    REQUIRE(o->half_open_max_calls >= 1 &&
                o->half_open_max_calls <= SL_BREAKER_MAX_TRIALS,
            "half_open_max_calls must be between 1 and %d",
            SL_BREAKER_MAX_TRIALS);
    REQUIRE(o->half_open_success_threshold >= 1 &&
                o->half_open_success_threshold <= o->half_open_max_calls,
            "half_open_success_threshold must be between 1 and "
            "half_open_max_calls (%d)",
            o->half_open_max_calls);
    REQUIRE(o->backoff_multiplier >= 1.0 && isfinite(o->backoff_multiplier),
            "backoff_multiplier must be a finite number >= 1");
    REQUIRE(o->max_timeout >= o->timeout && isfinite(o->max_timeout),
            "max_timeout must be finite and >= timeout");
    REQUIRE(o->permit_timeout >= 0.0 && isfinite(o->permit_timeout),
            "permit_timeout must be a finite number >= 0");
    REQUIRE(o->window_type == SL_BREAKER_WINDOW_NONE ||
                o->window_type == SL_BREAKER_WINDOW_COUNT ||
                o->window_type == SL_BREAKER_WINDOW_TIME,
            "window type must be none, count or time");
    REQUIRE(!windowed || (o->window_size >= 1 &&
                          o->window_size <= SL_BREAKER_MAX_WINDOW),
            "window_size must be between 1 and %d", SL_BREAKER_MAX_WINDOW);
    REQUIRE(!windowed || o->window_min_calls >= 1,
            "window_min_calls must be >= 1");
    /* A count window never holds more than size calls: a larger minimum
     * would switch the rate rules off without a word. */
    REQUIRE(o->window_type != SL_BREAKER_WINDOW_COUNT ||
                o->window_min_calls <= o->window_size,
            "window_min_calls must be <= window_size for a count window");
    REQUIRE(!windowed || is_rate(o->failure_rate),
            "failure_rate must be in (0, 1]");
    REQUIRE(!windowed || is_rate(o->slow_call_rate),
            "slow_call_rate must be in (0, 1]");
    REQUIRE(o->slow_call_duration >= 0.0 && isfinite(o->slow_call_duration),
            "slow_call_duration must be a finite number >= 0");
    REQUIRE(o->slow_call_duration == 0.0 || windowed,
            "slow_call_duration requires a window (type count or time)");
    REQUIRE(o->mode == SL_BREAKER_MODE_NORMAL ||
                o->mode == SL_BREAKER_MODE_METRICS_ONLY ||
                o->mode == SL_BREAKER_MODE_DISABLED,
            "mode must be normal, metrics_only or disabled");
    REQUIRE(o->jitter >= 0.0 && o->jitter <= 1.0, "jitter must be in [0, 1]");
    return 0;
}

/* ---- small helpers ----------------------------------------------------- */

static double mono(sl_breaker *b) { return b->clock.mono(b->clock.ud); }
static double wall(sl_breaker *b) { return b->clock.wall(b->clock.ud); }

/* xorshift64*: the breaker owns its random state so that jitter is
 * reproducible from the seed and never touches the process-wide rand(). */
static double rand_unit(sl_breaker *b) {
    uint64_t x = b->rng;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    b->rng = x;
    return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) * 0x1.0p-53;
}

static void clear_trials(sl_breaker *b) {
    memset(b->trials, 0,
           sizeof(*b->trials) * (size_t)b->opt.half_open_max_calls);
    b->ho_attempts = b->ho_successes = b->ho_outstanding = 0;
}

/* ---- rate window ------------------------------------------------------- */

/* Returns the trip reason, or NULL. */
static const char *window_verdict(sl_breaker *b) {
    const sl_outcome_window *w = &b->win;

    if (b->opt.window_type == SL_BREAKER_WINDOW_NONE ||
        w->calls < (uint64_t)b->opt.window_min_calls)
        return NULL;
    if ((double)w->failures / (double)w->calls >= b->opt.failure_rate)
        return "failure_rate";
    if (b->opt.slow_call_duration > 0.0 &&
        (double)w->slow / (double)w->calls >= b->opt.slow_call_rate)
        return "slow_call_rate";
    return NULL;
}

/* ---- transitions ------------------------------------------------------- */

static void notify(sl_breaker *b, sl_breaker_state from, const char *reason) {
    if (b->on_change) {
        b->in_callback = 1;
        b->on_change(b, from, b->state, reason, b->privdata);
        b->in_callback = 0;
    }
}

/* Every state change goes through here: it starts a new permit generation,
 * so results of calls permitted before the change are ignored, and it runs
 * the callback last, when the breaker is consistent. */
static void set_state(sl_breaker *b, sl_breaker_state to, double now,
                      const char *reason) {
    sl_breaker_state from = b->state;

    if (from == SL_BREAKER_OPEN && to != SL_BREAKER_OPEN)
        b->st.time_in_open_state += now - b->opened_at;
    if (to == SL_BREAKER_OPEN && from != SL_BREAKER_OPEN) {
        b->opened_at = now;
        b->st.circuit_opens++;
        b->st.last_open_time = wall(b);
    }
    b->state = to;
    b->gen = ++b->tickets;
    clear_trials(b);
    /* Keep the count that tripped the breaker visible while it is open. */
    if (to != SL_BREAKER_OPEN)
        b->failure_count = 0;
    b->consecutive_successes = 0;
    if (to == SL_BREAKER_CLOSED)
        sl_outcome_window_clear(&b->win);
    if (from != to) {
        b->last_change_wall = wall(b);
        notify(b, from, reason);
    }
}

static void trip(sl_breaker *b, double now, const char *reason) {
    double d = b->timeout;

    if (b->state == SL_BREAKER_HALF_OPEN) {
        b->st.failed_recoveries++;
        d = b->timeout * b->opt.backoff_multiplier;
        b->timeout = d < b->opt.max_timeout ? d : b->opt.max_timeout;
        d = b->timeout;
    }
    if (b->opt.jitter > 0.0)
        d *= 1.0 + b->opt.jitter * rand_unit(b);
    b->deadline = now + d;
    set_state(b, SL_BREAKER_OPEN, now, reason);
}

static void recover(sl_breaker *b, double now) {
    b->st.successful_recoveries++;
    b->timeout = b->opt.timeout;
    set_state(b, SL_BREAKER_CLOSED, now, "recovered");
}

/* Lazily settles half-open trial permits that outlived permit_timeout: the
 * first one found counts as a failure, which reopens the breaker and so
 * frees every slot. */
static void expire_trials(sl_breaker *b, double now) {
    int i;

    if (b->state != SL_BREAKER_HALF_OPEN || b->opt.permit_timeout <= 0.0 ||
        b->ho_outstanding == 0)
        return;
    for (i = 0; i < b->opt.half_open_max_calls; i++) {
        trial *t = &b->trials[i];
        if (t->permit && now - t->issued >= b->opt.permit_timeout) {
            b->st.permit_timeouts++;
            b->st.total_failures++;
            b->last_failure_wall = wall(b);
            trip(b, now, "permit_timeout");
            return;
        }
    }
}

static trial *find_trial(sl_breaker *b, sl_breaker_permit p) {
    int i;

    for (i = 0; i < b->opt.half_open_max_calls; i++)
        if (b->trials[i].permit == p)
            return &b->trials[i];
    return NULL;
}

static trial *oldest_trial(sl_breaker *b) {
    trial *best = NULL;
    int i;

    for (i = 0; i < b->opt.half_open_max_calls; i++) {
        trial *t = &b->trials[i];
        if (t->permit && (best == NULL || t->permit < best->permit))
            best = t;
    }
    return best;
}

/* ---- lifecycle ---------------------------------------------------------- */

sl_breaker *sl_breaker_new(const sl_breaker_options *opts,
                           const sl_breaker_clock *clock, char *err,
                           size_t errlen) {
    sl_breaker *b = NULL;
    const char *name;
    size_t n;

    if (opts == NULL || clock == NULL || clock->mono == NULL ||
        clock->wall == NULL) {
        set_err(err, errlen, "options and a clock with mono and wall needed");
        return NULL;
    }
    if (sl_breaker_options_validate(opts, err, errlen) != 0)
        return NULL;
    if ((b = calloc(1, sizeof(*b))) == NULL)
        goto oom;
    b->opt = *opts;
    b->clock = *clock;
    name = opts->name ? opts->name : "unknown";
    n = strlen(name) + 1;
    if ((b->name = malloc(n)) == NULL)
        goto oom;
    memcpy(b->name, name, n);
    b->opt.name = b->name;
    b->trials = calloc((size_t)opts->half_open_max_calls, sizeof(*b->trials));
    if (b->trials == NULL)
        goto oom;
    if (opts->window_type != SL_BREAKER_WINDOW_NONE &&
        sl_outcome_window_init(&b->win,
                               opts->window_type == SL_BREAKER_WINDOW_TIME,
                               (uint32_t)opts->window_size) != 0)
        goto oom;

    b->rng = opts->seed ? opts->seed : 0x9E3779B97F4A7C15ULL;
    b->state = SL_BREAKER_CLOSED;
    b->gen = b->tickets = 1;
    b->timeout = opts->timeout;
    b->last_failure_wall = SL_BREAKER_NEVER;
    b->st.last_open_time = SL_BREAKER_NEVER;
    b->last_change_wall = wall(b);
    return b;

oom:
    set_err(err, errlen, "out of memory");
    sl_breaker_free(b);
    return NULL;
}

void sl_breaker_free(sl_breaker *b) {
    if (b == NULL)
        return;
    sl_outcome_window_free(&b->win);
    free(b->trials);
    free(b->name);
    free(b);
}

void sl_breaker_set_callback(sl_breaker *b, sl_breaker_change_fn fn,
                             void *privdata) {
    b->on_change = fn;
    b->privdata = fn ? privdata : NULL;
}

/* ---- calls -------------------------------------------------------------- */

sl_breaker_permit sl_breaker_allow(sl_breaker *b, const char **why) {
    const char *dummy;
    double now;
    int i;

    if (why == NULL)
        why = &dummy;
    *why = NULL;
    if (b->in_callback) {
        *why = "reentrant";
        return SL_BREAKER_NO_PERMIT;
    }
    /* The hot path: nothing below depends on time while closed. */
    if (b->state == SL_BREAKER_CLOSED ||
        b->opt.mode == SL_BREAKER_MODE_DISABLED)
        return b->gen;

    now = mono(b);
    expire_trials(b, now);
    if (b->state == SL_BREAKER_OPEN) {
        if (now < b->deadline) {
            if (b->opt.mode == SL_BREAKER_MODE_METRICS_ONLY)
                return b->gen;
            b->st.rejected++;
            *why = "open";
            return SL_BREAKER_NO_PERMIT;
        }
        set_state(b, SL_BREAKER_HALF_OPEN, now, "timeout_elapsed");
    }
    if (b->ho_attempts < b->opt.half_open_max_calls) {
        for (i = 0; i < b->opt.half_open_max_calls; i++) {
            trial *t = &b->trials[i];
            if (t->permit == 0) {
                t->permit = ++b->tickets;
                t->issued = now;
                b->ho_attempts++;
                b->ho_outstanding++;
                return t->permit;
            }
        }
    }
    /* Untracked permits of the current generation count in the lifetime
     * statistics only, never as trials. */
    if (b->opt.mode == SL_BREAKER_MODE_METRICS_ONLY)
        return b->gen;
    b->st.rejected++;
    *why = "half-open";
    return SL_BREAKER_NO_PERMIT;
}

static int record(sl_breaker *b, sl_breaker_permit p, int failed,
                  double duration) {
    const char *reason;
    int is_trial = 0;
    double now;
    trial *t;
    int slow;

    if (b->in_callback)
        return -1;
    if (b->opt.mode == SL_BREAKER_MODE_DISABLED)
        return 0;
    /* The hot path again: a closed breaker without a time window needs the
     * clock only if this result trips it (read there). */
    now = -1.0;
    if (b->state != SL_BREAKER_CLOSED ||
        b->opt.window_type == SL_BREAKER_WINDOW_TIME) {
        now = mono(b);
        expire_trials(b, now);
    }

    if (p != SL_BREAKER_NO_PERMIT && p < b->gen) {
        b->st.ignored_results++;
        return 0;
    }
    if (p > b->gen) {
        if (b->state != SL_BREAKER_HALF_OPEN ||
            (t = find_trial(b, p)) == NULL) {
            b->st.ignored_results++;
            return 0;
        }
        t->permit = 0;
        b->ho_outstanding--;
        is_trial = 1;
    } else if (p == SL_BREAKER_NO_PERMIT && b->state == SL_BREAKER_HALF_OPEN) {
        /* The reference API has no permits: settle the oldest trial, or
         * count an attempt nobody asked allow() for. */
        if ((t = oldest_trial(b)) != NULL) {
            t->permit = 0;
            b->ho_outstanding--;
        } else {
            b->ho_attempts++;
        }
        is_trial = 1;
    }

    slow = b->opt.slow_call_duration > 0.0 &&
           duration >= b->opt.slow_call_duration;
    if (slow)
        b->st.slow_calls++;
    if (failed) {
        b->st.total_failures++;
        b->last_failure_wall = wall(b);
    } else {
        b->st.total_successes++;
    }

    if (b->state == SL_BREAKER_CLOSED) {
        if (failed) {
            b->failure_count++;
            b->consecutive_successes = 0;
        } else {
            b->failure_count = 0;
            b->consecutive_successes++;
        }
        sl_outcome_window_add(&b->win, now,
                              (failed ? SL_OUTCOME_FAILURE : 0u) |
                                  (slow ? SL_OUTCOME_SLOW : 0u));
        if (b->failure_count >= b->opt.failure_threshold)
            trip(b, now < 0 ? mono(b) : now, "failure_threshold");
        else if ((reason = window_verdict(b)) != NULL)
            trip(b, now < 0 ? mono(b) : now, reason);
    } else if (is_trial) {
        if (failed)
            trip(b, now, "half_open_failure");
        else if (++b->ho_successes >= b->opt.half_open_success_threshold)
            recover(b, now);
    }
    return 1;
}

int sl_breaker_success(sl_breaker *b, sl_breaker_permit permit,
                       double duration) {
    return record(b, permit, 0, duration);
}

int sl_breaker_failure(sl_breaker *b, sl_breaker_permit permit,
                       double duration) {
    return record(b, permit, 1, duration);
}

int sl_breaker_release(sl_breaker *b, sl_breaker_permit permit) {
    trial *t;

    if (b->in_callback)
        return -1;
    if (permit <= b->gen)
        return 0;
    expire_trials(b, mono(b));
    if (b->state != SL_BREAKER_HALF_OPEN || (t = find_trial(b, permit)) == NULL)
        return 0;
    t->permit = 0;
    b->ho_outstanding--;
    b->ho_attempts--;
    return 1;
}

/* ---- manual controls ---------------------------------------------------- */

/* Manual and server-dictated openings never shorten an open period and
 * are no failed recovery: no backoff. */
static void hold_open(sl_breaker *b, double now, double until,
                      const char *reason) {
    if (b->state != SL_BREAKER_OPEN) {
        b->deadline = until;
        set_state(b, SL_BREAKER_OPEN, now, reason);
    } else if (until > b->deadline) {
        b->deadline = until;
    }
}

int sl_breaker_force_open(sl_breaker *b) {
    double now;

    if (b->in_callback)
        return -1;
    now = mono(b);
    hold_open(b, now, now + b->timeout, "force_open");
    return 0;
}

static int close_with(sl_breaker *b, const char *reason) {
    if (b->in_callback)
        return -1;
    b->timeout = b->opt.timeout;
    b->last_failure_wall = SL_BREAKER_NEVER;
    set_state(b, SL_BREAKER_CLOSED, mono(b), reason);
    return 0;
}

int sl_breaker_force_close(sl_breaker *b) {
    return close_with(b, "force_close");
}

int sl_breaker_reset(sl_breaker *b) { return close_with(b, "reset"); }

int sl_breaker_open_until(sl_breaker *b, double epoch) {
    double now, until;

    if (b->in_callback || !isfinite(epoch))
        return -1;
    now = mono(b);
    until = now + (epoch - wall(b));
    if (until > now)
        hold_open(b, now, until, "open_until");
    return 0;
}

int sl_breaker_set_mode(sl_breaker *b, sl_breaker_mode mode) {
    if (b->in_callback || (mode != SL_BREAKER_MODE_NORMAL &&
                           mode != SL_BREAKER_MODE_METRICS_ONLY &&
                           mode != SL_BREAKER_MODE_DISABLED))
        return -1;
    b->opt.mode = mode;
    return 0;
}

/* ---- inspection --------------------------------------------------------- */

sl_breaker_state sl_breaker_get_state(const sl_breaker *b) { return b->state; }

const char *sl_breaker_name(const sl_breaker *b) { return b->name; }

const sl_breaker_options *sl_breaker_get_options(const sl_breaker *b) {
    return &b->opt;
}

/* The stored total only covers finished open periods; reports add the one
 * in progress. */
static sl_breaker_stats stats_now(const sl_breaker *b, double now) {
    sl_breaker_stats st = b->st;

    if (b->state == SL_BREAKER_OPEN)
        st.time_in_open_state += now - b->opened_at;
    return st;
}

static double open_until_wall(sl_breaker *b, double now) {
    if (b->state != SL_BREAKER_OPEN)
        return SL_BREAKER_NEVER;
    return wall(b) + (b->deadline - now);
}

void sl_breaker_get_status(sl_breaker *b, sl_breaker_status *st) {
    double now = mono(b);
    uint64_t total;

    if (!b->in_callback)
        expire_trials(b, now);
    if (b->win.buckets)
        sl_outcome_window_advance(&b->win, now);

    memset(st, 0, sizeof(*st));
    st->state = b->state;
    st->mode = b->opt.mode;
    st->name = b->name;
    st->failure_count = b->failure_count;
    st->consecutive_successes = b->consecutive_successes;
    st->failure_threshold = b->opt.failure_threshold;
    st->timeout_seconds = b->timeout;
    st->last_failure_time = b->last_failure_wall;
    st->last_state_change = b->last_change_wall;
    st->open_until = open_until_wall(b, now);
    st->half_open_attempts = b->ho_attempts;
    st->half_open_successes = b->ho_successes;
    st->half_open_outstanding = b->ho_outstanding;
    st->half_open_max_calls = b->opt.half_open_max_calls;
    st->half_open_success_threshold = b->opt.half_open_success_threshold;
    st->half_open_success_rate =
        b->ho_attempts > 0 ? (double)b->ho_successes / b->ho_attempts : 0.0;
    st->statistics = stats_now(b, now);
    total = b->st.total_successes + b->st.total_failures;
    /* The reference ratio, except while the breaker is open and refusing:
     * it then admits nothing, and a score of 1 (no call failed, or none
     * was made since a force_open) would tell an operator it is healthy. */
    if (b->state == SL_BREAKER_OPEN && b->opt.mode == SL_BREAKER_MODE_NORMAL)
        st->health_score = 0.0;
    else
        st->health_score =
            total > 0 ? (double)b->st.total_successes / (double)total : 1.0;
    st->window_calls = b->win.calls;
    st->window_failures = b->win.failures;
    st->window_slow_calls = b->win.slow;
    st->generation = b->gen;
}

/* ---- persistence -------------------------------------------------------- */

void sl_breaker_get_snapshot(sl_breaker *b, sl_breaker_snapshot *s) {
    double now = mono(b);

    if (!b->in_callback)
        expire_trials(b, now);
    memset(s, 0, sizeof(*s));
    s->state = b->state;
    s->failure_count = b->failure_count;
    s->consecutive_successes = b->consecutive_successes;
    s->timeout = b->timeout;
    s->open_until = open_until_wall(b, now);
    s->last_failure_time = b->last_failure_wall;
    s->last_state_change = b->last_change_wall;
    s->statistics = stats_now(b, now);
}

int sl_breaker_restore(sl_breaker *b, const sl_breaker_snapshot *s, char *err,
                       size_t errlen) {
    const sl_breaker_stats *ss = &s->statistics;
    sl_breaker_state from = b->state;
    double now, t;

    REQUIRE(!b->in_callback, "restore called from the change callback");
    REQUIRE(s->state == SL_BREAKER_CLOSED || s->state == SL_BREAKER_OPEN ||
                s->state == SL_BREAKER_HALF_OPEN,
            "snapshot state is invalid");
    REQUIRE(s->failure_count >= 0, "snapshot failure_count must be >= 0");
    REQUIRE(s->timeout > 0.0 && isfinite(s->timeout),
            "snapshot timeout must be a finite number > 0");
    REQUIRE(s->state != SL_BREAKER_OPEN || isfinite(s->open_until),
            "snapshot open_until must be finite when open");
    REQUIRE(ss->time_in_open_state >= 0.0 && isfinite(ss->time_in_open_state),
            "snapshot time_in_open_state must be a finite number >= 0");
    REQUIRE(isfinite(s->last_failure_time) && isfinite(s->last_state_change) &&
                isfinite(ss->last_open_time),
            "snapshot timestamps must be finite");

    now = mono(b);
    /* The options may have changed since the snapshot was taken. */
    t = s->timeout < b->opt.timeout ? b->opt.timeout : s->timeout;
    b->timeout = t > b->opt.max_timeout ? b->opt.max_timeout : t;
    b->state = s->state;
    b->gen = ++b->tickets;
    clear_trials(b);
    sl_outcome_window_clear(&b->win);
    b->failure_count = s->failure_count;
    b->consecutive_successes = s->consecutive_successes;
    /* Downtime between snapshot and restore is not counted as open time. */
    b->opened_at = now;
    b->deadline =
        s->state == SL_BREAKER_OPEN ? now + (s->open_until - wall(b)) : now;
    b->last_failure_wall = s->last_failure_time;
    b->last_change_wall = s->last_state_change;
    b->st = *ss;
    if (from != b->state)
        notify(b, from, "restore");
    return 0;
}

/* ---- names and timestamps ----------------------------------------------- */

const char *sl_breaker_state_name(sl_breaker_state state) {
    static const char *const names[] = {"closed", "open", "half-open"};

    return (unsigned)state < 3 ? names[state] : "unknown";
}

const char *sl_breaker_mode_name(sl_breaker_mode mode) {
    static const char *const names[] = {"normal", "metrics_only", "disabled"};

    return (unsigned)mode < 3 ? names[mode] : "unknown";
}

/* Howard Hinnant's civil_from_days: proleptic Gregorian without libc, so
 * the result never depends on TZ or on gmtime_r being declared. */
static void civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
    int64_t era, doe, yoe, doy, mp;

    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

int sl_breaker_iso8601(double epoch, char *buf, size_t len) {
    /* 0000-01-01 and 10000-01-01 in epoch seconds. */
    const double lo = -62167219200.0, hi = 253402300800.0;
    int64_t us, secs, days, rem, y;
    char frac[8] = "";
    int m, d, n;

    if (len > 0)
        buf[0] = '\0';
    if (!isfinite(epoch) || epoch < lo || epoch >= hi)
        return -1;
    /* Rounded half up, as sluice.iso8601 rounds (llround would round
     * -1.5 us away from zero and disagree with it before 1970). */
    us = (int64_t)floor(epoch * 1e6 + 0.5);
    /* Floor division, so that times before 1970 still count forward. */
    secs = us / 1000000 - (us % 1000000 < 0);
    us -= secs * 1000000;
    days = secs / 86400 - (secs % 86400 < 0);
    rem = secs - days * 86400;
    civil_from_days(days, &y, &m, &d);
    if (y > 9999)
        return -1;
    if (us)
        snprintf(frac, sizeof(frac), ".%06d", (int)us);
    n = snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d%sZ", (int)y, m, d,
                 (int)(rem / 3600), (int)(rem / 60 % 60), (int)(rem % 60),
                 frac);
    if (n < 0 || (size_t)n >= len) {
        if (len > 0)
            buf[0] = '\0';
        return -1;
    }
    return 0;
}
