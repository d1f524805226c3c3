/* rlheaders.h -- rate-limit response header parsing
 *
 * Reads the headers of one HTTP response and reports what they say about the
 * provider's quota: limit, remaining, time to reset, Retry-After, the IETF
 * draft's structured RateLimit / RateLimit-Policy fields, Binance's
 * X-MBX-USED-WEIGHT-<n><S|M|H|D>, Bybit's X-Bapi-Limit*, Gate's
 * X-Gate-RateLimit-*, HTX's X-HB-RateLimit-Requests-* and Bitget's
 * X-MBX-USED-REMAIN-LIMIT headers.
 *
 * Contract:
 *  - Pure: no allocation, no clock, no global state, no locale. Wall-clock
 *    time is passed in (wall_now, epoch seconds) where an absolute time must
 *    be turned into "seconds from now".
 *  - Never fails and never reads outside the given (pointer, length) spans.
 *    Strings need not be NUL-terminated. A malformed, hostile or overlong
 *    value is ignored field by field (and counted in `ignored`); everything
 *    else in the same response is still used.
 *  - Numbers are plain decimal: digits with an optional fraction, no sign,
 *    no exponent, no hex, no inf/nan, at most 15 integer digits. Anything
 *    else is "not a number".
 *  - All times in the result are relative seconds (>= 0) and capped:
 *    retry_after at options.max_backoff, reset and policy t at
 *    options.max_reset. Unknown values are -1.
 *  - Clock skew: when the response carries a valid Date header, absolute
 *    times (HTTP-date Retry-After, epoch resets) are measured against it
 *    rather than against wall_now, so a skewed local clock does not matter.
 */
#ifndef SLUICE_RLHEADERS_H
#define SLUICE_RLHEADERS_H

#include <stddef.h>

#define SL_RLH_MAX_POLICIES 8 /* further policies are dropped (ignored++) */
#define SL_RLH_MAX_WEIGHTS 8  /* further Binance windows are dropped */
#define SL_RLH_NAME_MAX 32    /* policy names are truncated to 31 bytes */
#define SL_RLH_VALUE_MAX 1024 /* longer header values are ignored */

/* How X-RateLimit-Reset / RateLimit-Reset values are read. AUTO infers:
 * >= 1e12 epoch milliseconds, >= 1e9 epoch seconds, else delta seconds. */
typedef enum sl_rlh_reset_mode {
    SL_RLH_RESET_AUTO = 0,
    SL_RLH_RESET_EPOCH,
    SL_RLH_RESET_EPOCH_MS,
    SL_RLH_RESET_DELTA
} sl_rlh_reset_mode;

typedef struct sl_rlh_options {
    sl_rlh_reset_mode reset_mode; /* default AUTO */
    double max_backoff;           /* cap on retry_after, s (default 3600) */
    double max_reset;             /* cap on reset times, s (default 2678400) */
} sl_rlh_options;

/* Which header family supplied limit/remaining/reset (the first family, in
 * this order, that supplied any of the three supplies all three). */
typedef enum sl_rlh_source {
    SL_RLH_SRC_NONE = 0,
    SL_RLH_SRC_XRATELIMIT, /* X-RateLimit-* and X-Rate-Limit-* */
    SL_RLH_SRC_RATELIMIT,  /* RateLimit-Limit/-Remaining/-Reset, or the
                              draft-07 dictionary "limit=, remaining=, reset=" */
    SL_RLH_SRC_IETF,       /* RateLimit + RateLimit-Policy structured lists */
    SL_RLH_SRC_BYBIT,      /* X-Bapi-Limit, -Status, -Reset-Timestamp */
    SL_RLH_SRC_GATE,       /* X-Gate-RateLimit-Limit, -Requests-Remain,
                              -Reset-Timestamp (epoch s or ms; Gate sends
                              the current time while the limit is not hit) */
    SL_RLH_SRC_HTX,        /* X-HB-RateLimit-Requests-Remain, -Expire (the
                              window's end: epoch ms, or s; a value below
                              1e9 is read as milliseconds from now) */
    SL_RLH_SRC_BITGET      /* X-MBX-USED-REMAIN-LIMIT: requests left on the
                              endpoint in the current second (Bitget's
                              limits are per endpoint and second): reset 1 s */
} sl_rlh_source;

#define SL_RLH_NSOURCES 8 /* SL_RLH_SRC_NONE .. SL_RLH_SRC_BITGET */

/* One IETF policy, merged by name from RateLimit-Policy (q, w) and
 * RateLimit (r, t). Unknown members are -1. */
typedef struct sl_rlh_policy {
    char name[SL_RLH_NAME_MAX]; /* "" for an unnamed (old draft) item */
    double quota;               /* q */
    double window;              /* w, seconds */
    double remaining;           /* r */
    double reset;               /* t, seconds from now (capped) */
} sl_rlh_policy;

/* Binance: weight used so far in a window of `window` seconds. */
typedef struct sl_rlh_weight {
    double used;
    double window;
} sl_rlh_weight;

typedef struct sl_rlh_result {
    sl_rlh_source source; /* family of limit/remaining/reset/window */
    double limit;         /* requests (or cost units) per window, -1 */
    double remaining;     /* left in the current window, -1 */
    double reset;         /* seconds until the window resets, -1 */
    double window;        /* window length when a policy states it, -1 */
    double retry_after;   /* seconds to wait, -1 when absent or invalid */
    double date;          /* server Date header, epoch seconds, -1 */
    int status;           /* the status passed to finish/parse */
    int throttled;        /* status == 429 */
    int banned;           /* status == 418 (Binance IP ban) */
    int npolicies;
    sl_rlh_policy policies[SL_RLH_MAX_POLICIES];
    int nweights;
    sl_rlh_weight weights[SL_RLH_MAX_WEIGHTS];
    int recognised; /* headers whose value was used */
    int ignored;    /* recognised names whose value was rejected */
} sl_rlh_result;

/* One (name, value) pair. Neither string needs a terminating NUL. */
typedef struct sl_rlh_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} sl_rlh_header;

/* Incremental parser, for callers that walk headers one at a time (a Lua
 * table). It holds no pointers into the fed strings: they may be released
 * right after each sl_rlh_feed(). Treat the members as private. */
typedef struct sl_rlh_parser {
    sl_rlh_options opt;
    double fam[SL_RLH_NSOURCES][3]; /* [source][limit, remaining, reset raw] */
    double reset_after;             /* X-RateLimit-Reset-After (delta) */
    double bybit_reset_ms;          /* X-Bapi-Limit-Reset-Timestamp raw */
    double ra_delta;                /* Retry-After delta seconds */
    double ra_date;                 /* Retry-After HTTP-date, epoch */
    double date;                    /* Date header, epoch */
    int npolicies;
    sl_rlh_policy policies[SL_RLH_MAX_POLICIES];
    int nweights;
    sl_rlh_weight weights[SL_RLH_MAX_WEIGHTS];
    int recognised;
    int ignored;
} sl_rlh_parser;

/* Fills o with the defaults documented on sl_rlh_options. */
void sl_rlh_options_init(sl_rlh_options *o);

/* Starts a parse. o may be NULL (defaults); it is copied. */
void sl_rlh_begin(sl_rlh_parser *p, const sl_rlh_options *o);

/* Feeds one header. Names compare case-insensitively. Returns 1 when the
 * header was recognised and its value used, 0 otherwise (unknown name or
 * rejected value). For singleton fields the first valid value wins; the
 * structured RateLimit / RateLimit-Policy fields accumulate across lines. */
int sl_rlh_feed(sl_rlh_parser *p, const char *name, size_t name_len,
                const char *value, size_t value_len);

/* Ends a parse: normalises absolute times against Date (or wall_now when
 * Date is absent; absolute times are dropped when both are unusable, i.e.
 * wall_now <= 0) and fills out. The parser may be reused after
 * sl_rlh_begin(). */
void sl_rlh_finish(const sl_rlh_parser *p, int status, double wall_now,
                   sl_rlh_result *out);

/* begin + feed every header + finish. o may be NULL; h may be NULL when
 * n == 0. */
void sl_rlh_parse(const sl_rlh_options *o, int status, const sl_rlh_header *h,
                  size_t n, double wall_now, sl_rlh_result *out);

/* Parses an HTTP-date (IMF-fixdate, RFC 850 or asctime) into epoch seconds.
 * RFC 850 two-digit years are 19yy when >= 70, else 20yy. Returns 0 on
 * success, -1 (and leaves *epoch alone) otherwise. */
int sl_rlh_http_date(const char *s, size_t len, double *epoch);

#endif
