/* breaker.h -- circuit breaker state machine
 *
 * A breaker guards one upstream (an API, a host). It is closed (calls flow),
 * open (calls are refused until a deadline) or half-open (a few trial calls
 * decide whether it closes again).
 *
 * "The reference" below is the breaker whose behaviour sluice's follows, as
 * README.md's "Circuit breaker" section describes it: its defaults (listed
 * in sl_breaker_options), its calls without permits (can_attempt,
 * record_success, record_failure) and its get_status() table (mapped in
 * sl_breaker_status; its None is SL_BREAKER_NEVER). Permits, permit
 * timeouts, rate and slow-call windows, open_until, modes, jitter and
 * snapshots go beyond it.
 *
 * Threading: a breaker is not thread-safe; sluice uses it from the loop
 * thread only. Nothing here blocks, sleeps or arms a timer: every timeout is
 * evaluated lazily, on the next operation, from the injected clock.
 *
 * Time. The breaker never reads the system clock. It calls the clock given
 * to sl_breaker_new(): mono() for every duration and deadline (seconds, any
 * origin, never decreasing) and wall() for the epoch timestamps it reports
 * (status, snapshot). Deadlines are kept on the monotonic clock, so a wall
 * clock step never shortens or stretches an open period; wall-clock
 * deadlines (open_until(), a restored snapshot) are converted once, at the
 * call, as mono_now + (epoch - wall_now).
 *
 * Permits. sl_breaker_allow() returns a permit, a non-zero integer the
 * caller hands back with the call's result. Permit values only grow: one step
 * per state change ("generation") and one per half-open trial permit, so a
 * Lua number (exact up to 2^53) holds any permit. A result carrying a permit
 * from before the last state change (or reset) is ignored, so a slow call
 * started while closed cannot count as a half-open trial. Reporting
 * SL_BREAKER_NO_PERMIT (0) is the reference API (can_attempt/record_*): the
 * result applies to the current state and, while half-open, settles the
 * oldest outstanding trial.
 */
#ifndef SLUICE_BREAKER_H
#define SLUICE_BREAKER_H

#include <stddef.h>
#include <stdint.h>

typedef struct sl_breaker sl_breaker;

typedef uint64_t sl_breaker_permit;
#define SL_BREAKER_NO_PERMIT ((sl_breaker_permit)0)

/* Timestamps that never happened (reference: None) are reported as this. */
#define SL_BREAKER_NEVER (-1.0)

/* Enough room for any sl_breaker_iso8601() output, terminator included. */
#define SL_BREAKER_ISO8601_LEN 40

/* Upper bound on half_open_max_calls: trial slots are scanned linearly. */
#define SL_BREAKER_MAX_TRIALS 1024
/* Upper bound on window_size (calls or seconds): one byte or bucket each. */
#define SL_BREAKER_MAX_WINDOW 1000000

typedef enum sl_breaker_state {
    SL_BREAKER_CLOSED = 0,
    SL_BREAKER_OPEN = 1,
    SL_BREAKER_HALF_OPEN = 2
} sl_breaker_state;

/* NORMAL: the full state machine. METRICS_ONLY: the state machine, its
 * transitions, callbacks and statistics all run, but allow() never refuses.
 * DISABLED: allow() always grants, results are not recorded at all and the
 * state only changes through the manual controls. */
typedef enum sl_breaker_mode {
    SL_BREAKER_MODE_NORMAL = 0,
    SL_BREAKER_MODE_METRICS_ONLY = 1,
    SL_BREAKER_MODE_DISABLED = 2
} sl_breaker_mode;

/* NONE: only the reference rule (failure_threshold consecutive failures).
 * COUNT: also the last window_size results. TIME: also the results of the
 * last window_size seconds, in one-second buckets of the monotonic clock. */
typedef enum sl_breaker_window {
    SL_BREAKER_WINDOW_NONE = 0,
    SL_BREAKER_WINDOW_COUNT = 1,
    SL_BREAKER_WINDOW_TIME = 2
} sl_breaker_window;

typedef struct sl_breaker_clock {
    double (*mono)(void *ud); /* monotonic seconds */
    double (*wall)(void *ud); /* Unix epoch seconds */
    void *ud;
} sl_breaker_clock;

/* Called after every state change, once the breaker is fully in its new
 * state, with a static reason string: "failure_threshold", "failure_rate",
 * "slow_call_rate", "timeout_elapsed", "half_open_failure",
 * "permit_timeout", "recovered", "force_open", "force_close", "reset",
 * "open_until" or "restore". Not called when an operation leaves the state
 * unchanged (reset of a closed breaker, force_open of an open one).
 *
 * The callback must not re-enter the breaker: while it runs, every mutating
 * call on the same breaker is refused (allow() returns 0 with why
 * "reentrant", the others return -1). sl_breaker_get_state(),
 * sl_breaker_name(), sl_breaker_get_options() and sl_breaker_get_status() are
 * safe. Queue work (an on_change task) instead of doing it inline. */
typedef void (*sl_breaker_change_fn)(sl_breaker *b, sl_breaker_state from,
                                     sl_breaker_state to, const char *reason,
                                     void *privdata);

typedef struct sl_breaker_options {
    const char *name;                /* "unknown"; copied by sl_breaker_new */
    int failure_threshold;           /* 5 consecutive failures open it */
    double timeout;                  /* 300 s open before half-open */
    int half_open_max_calls;         /* 3 trial permits per half-open period */
    int half_open_success_threshold; /* 2 trial successes close it */
    double backoff_multiplier;       /* 1.5: timeout growth per failed trial */
    double max_timeout;              /* 3600 s cap on the backed-off timeout */
    double permit_timeout;           /* 60 s; a trial unreported this long
                                        counts as a failure. 0 disables */
    sl_breaker_window window_type;   /* NONE */
    int window_size;                 /* 100 calls (COUNT) or seconds (TIME) */
    int window_min_calls;            /* 10 results before a rate can trip */
    double failure_rate;             /* 0.5: failures/calls that trips */
    double slow_call_duration;       /* 0 (off); seconds that make a slow
                                        call. Needs a window */
    double slow_call_rate;           /* 1.0: slow/calls that trips */
    sl_breaker_mode mode;            /* NORMAL */
    double jitter;                   /* 0; each open period lasts
                                        timeout * (1 + jitter * U[0,1)) */
    uint64_t seed;                   /* jitter PRNG seed; 0 picks a fixed
                                        constant. Give each breaker its own
                                        seed, or they all jitter alike */
} sl_breaker_options;

/* Lifetime statistics: the reference "statistics" sub-table plus a few
 * counters of ours. reset() and force_close() keep them. */
typedef struct sl_breaker_stats {
    uint64_t total_failures; /* includes expired trial permits */
    uint64_t total_successes;
    uint64_t circuit_opens;
    uint64_t successful_recoveries;
    uint64_t failed_recoveries;
    double time_in_open_state; /* seconds; in a status, this includes the
                                  current open period */
    double last_open_time;     /* wall epoch or NEVER */
    uint64_t rejected;         /* allow() refusals */
    uint64_t ignored_results;  /* stale, unknown or repeated permits */
    uint64_t permit_timeouts;  /* trial permits that expired */
    uint64_t slow_calls;       /* slow results, successes included */
} sl_breaker_stats;

/* Everything get_status() needs. Timestamps are wall epoch seconds or
 * SL_BREAKER_NEVER; format them with sl_breaker_iso8601(), NEVER as nil.
 * The reference table maps as: state = sl_breaker_state_name(state),
 * collector_name = name, failure_count, consecutive_successes,
 * failure_threshold, timeout_seconds, last_failure_time, last_state_change,
 * half_open = { attempts, successes, max_calls, success_threshold,
 * success_rate } only while state is HALF_OPEN, statistics = { the first
 * seven fields of sl_breaker_stats }, health_score. The rest is ours. */
typedef struct sl_breaker_status {
    sl_breaker_state state;
    sl_breaker_mode mode;
    const char *name;  /* owned by the breaker, valid until sl_breaker_free */
    int failure_count; /* consecutive failures while closed; the
                          count that tripped it while open */
    uint64_t consecutive_successes; /* successes since the last failure,
                                       closed state only */
    int failure_threshold;
    double timeout_seconds;   /* open timeout in force now (after backoff,
                                 before jitter) */
    double last_failure_time; /* or NEVER */
    double last_state_change; /* creation time until the first change */
    double open_until;        /* while open: epoch when allow() may move it
                                 to half-open; otherwise NEVER */
    /* half_open: meaningful only while state == SL_BREAKER_HALF_OPEN */
    int half_open_attempts; /* trial permits counted or outstanding */
    int half_open_successes;
    int half_open_outstanding; /* trial permits not yet reported */
    int half_open_max_calls;
    int half_open_success_threshold;
    double half_open_success_rate; /* successes / attempts, 0 if none */
    sl_breaker_stats statistics;
    double health_score;   /* successes / (successes + failures), 1 if none;
                              0 while open (and refusing) */
    uint64_t window_calls; /* results now in the window (0 if none) */
    uint64_t window_failures;
    uint64_t window_slow_calls;
    uint64_t generation; /* current permit generation */
} sl_breaker_status;

/* Durable state, a plain value. The window's contents and outstanding trial
 * permits are not part of it: a restored breaker starts with an empty
 * window, and a half-open one starts a fresh trial period. */
typedef struct sl_breaker_snapshot {
    sl_breaker_state state;
    int failure_count;
    uint64_t consecutive_successes;
    double timeout;           /* open timeout in force (after backoff) */
    double open_until;        /* wall epoch deadline if open, else NEVER */
    double last_failure_time; /* wall epoch or NEVER */
    double last_state_change; /* wall epoch */
    sl_breaker_stats statistics;
} sl_breaker_snapshot;

/* Fills opts with the reference defaults listed above. */
void sl_breaker_options_default(sl_breaker_options *opts);

/* Returns 0 if opts is usable, else -1 with a message naming the first bad
 * option in err ("failure_threshold must be >= 1"). err may be NULL. */
int sl_breaker_options_validate(const sl_breaker_options *opts, char *err,
                                size_t errlen);

/* Creates a closed breaker. opts and clock are copied (opts->name too); both
 * clock functions are required. On error NULL is returned, err says why, and
 * nothing is allocated. Free with sl_breaker_free(). */
sl_breaker *sl_breaker_new(const sl_breaker_options *opts,
                           const sl_breaker_clock *clock, char *err,
                           size_t errlen);

/* Frees b and everything it owns. NULL is a no-op. Must not be called from
 * the change callback. */
void sl_breaker_free(sl_breaker *b);

/* Installs (fn != NULL) or removes the change callback. privdata is the
 * caller's and is passed back untouched. */
void sl_breaker_set_callback(sl_breaker *b, sl_breaker_change_fn fn,
                             void *privdata);

/* Asks to make one call. Returns a permit, or SL_BREAKER_NO_PERMIT when
 * refused, with *why (if why is not NULL) set to a static string: "open"
 * (open, deadline not reached), "half-open" (every trial permit is taken) or
 * "reentrant"; *why is NULL when a permit is granted. An open breaker past
 * its deadline becomes half-open here and the caller gets the first trial
 * permit. In METRICS_ONLY mode a refusal is replaced by an untracked permit
 * whose result only feeds the statistics. Closed and disabled breakers never
 * read the clock here. */
sl_breaker_permit sl_breaker_allow(sl_breaker *b, const char **why);

/* Report the outcome of a permitted call, with its duration in seconds
 * (pass 0 or a negative value when unknown: such a call is never slow).
 * Return 1 when the result was counted, 0 when it was ignored (stale or
 * unknown permit, trial already settled, disabled mode), -1 when called
 * from the change callback. A slow call counts as slow and as a success or
 * failure. Trial permits are tracked, so a second report of one is ignored;
 * closed-state permits are not (every closed call shares the generation's
 * value), so report each exactly once. Results that reach an open breaker
 * (SL_BREAKER_NO_PERMIT, METRICS_ONLY permits) only feed the statistics. */
int sl_breaker_success(sl_breaker *b, sl_breaker_permit permit,
                       double duration);
int sl_breaker_failure(sl_breaker *b, sl_breaker_permit permit,
                       double duration);

/* Gives a permit back without a result (a cancelled call, a response the
 * caller classifies as neither success nor failure). A trial permit frees
 * its slot and does not count as an attempt. Returns 1 if a trial slot was
 * freed, 0 otherwise, -1 from the change callback. */
int sl_breaker_release(sl_breaker *b, sl_breaker_permit permit);

/* Manual controls; each returns 0, or -1 from the change callback.
 * force_open: open now for the timeout in force (a breaker already open
 *   keeps the later of its deadline and now + timeout); counts in
 *   circuit_opens; no backoff.
 * force_close: closed; failure_count, consecutive_successes, trial
 *   counters, the window and last_failure_time cleared; timeout back to its
 *   base. Lifetime statistics are kept.
 * reset: the same, with reason "reset"; both always start a new permit
 *   generation, even on a closed breaker. */
int sl_breaker_force_open(sl_breaker *b);
int sl_breaker_force_close(sl_breaker *b);
int sl_breaker_reset(sl_breaker *b);

/* Keeps the breaker open at least until the wall-clock time epoch (a ban, a
 * Retry-After far ahead). A closed or half-open breaker opens with exactly
 * that deadline (no jitter, no backoff); an open one keeps the later of the
 * two deadlines. An epoch not in the future changes nothing. Returns 0, or
 * -1 if epoch is not finite or when called from the change callback. */
int sl_breaker_open_until(sl_breaker *b, double epoch);

/* Changes the mode at run time; the state is kept. -1 for a bad mode or
 * from the change callback. */
int sl_breaker_set_mode(sl_breaker *b, sl_breaker_mode mode);

sl_breaker_state sl_breaker_get_state(const sl_breaker *b);
const char *sl_breaker_name(const sl_breaker *b);
/* The validated options in force; name points at the breaker's copy. */
const sl_breaker_options *sl_breaker_get_options(const sl_breaker *b);

/* Fills st. Expired trial permits are settled first (which may reopen the
 * breaker and run the callback), except from inside the callback. An open
 * breaker past its deadline is still reported open: only allow() moves it. */
void sl_breaker_get_status(sl_breaker *b, sl_breaker_status *st);

/* Fills snap with b's durable state (settling expired trials first, as
 * sl_breaker_get_status does). */
void sl_breaker_get_snapshot(sl_breaker *b, sl_breaker_snapshot *snap);

/* Replaces b's state and statistics with snap's, keeping b's options. An open
 * snapshot stays open until snap->open_until (wall clock); one whose deadline
 * has passed is open and moves to half-open on the next allow(). The timeout
 * is clamped into [timeout, max_timeout] of b's options. All permits issued
 * before become stale. Returns 0, or -1 with err filled (and b unchanged) for
 * an inconsistent snapshot, or from the change callback. */
int sl_breaker_restore(sl_breaker *b, const sl_breaker_snapshot *snap,
                       char *err, size_t errlen);

/* "closed", "open", "half-open"; "normal", "metrics_only", "disabled";
 * "unknown" for values out of range. Static strings. */
const char *sl_breaker_state_name(sl_breaker_state state);
const char *sl_breaker_mode_name(sl_breaker_mode mode);

/* Formats a wall epoch as ISO 8601 UTC the way sluice.iso8601 spells every
 * time: "2025-11-14T10:23:45Z" for a whole second, else "...45.250000Z"
 * (rounded half up to the microsecond). Returns 0, or -1 (buf set to "" if len
 * > 0) when epoch is not finite, outside years 0000-9999, or does not fit
 * in len bytes; SL_BREAKER_ISO8601_LEN always fits. */
int sl_breaker_iso8601(double epoch, char *buf, size_t len);

#endif
