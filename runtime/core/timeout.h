/* timeout.h -- seconds (a Lua number) to the units timers and libcurl take
 *
 * Every place that turns a duration in seconds into a struct timeval or a
 * millisecond count goes through these two functions, so that no double is
 * ever converted to an integer it does not fit (undefined behaviour in C:
 * sleep(1e19) used to become "immediately").
 *
 * The rules, the same for both:
 * - +infinity (math.huge) means "no timeout": nothing is to be armed.
 * - Finite durations are clamped to SL_TIMEOUT_MAX seconds (about 31
 *   years, longer than any process lives), so 1e300 waits "forever" too,
 *   but still arms a timer.
 * - Negative durations, -infinity and NaN become 0 (due at once). Whether
 *   such a value is misuse is the caller's decision, taken before it gets
 *   here (sluice.sleep rejects NaN, park treats a negative timeout as none).
 * - Durations are rounded up, never down: a timer that fires early would
 *   end a sleep or a wait before its time.
 */
#ifndef SLUICE_TIMEOUT_H
#define SLUICE_TIMEOUT_H

#include <sys/time.h>

#define SL_TIMEOUT_MAX 1e9 /* seconds */

/* Fills *tv with s seconds, rounded up to the microsecond. Returns 1 when a
 * timer should be armed with *tv, 0 when s is +infinity (*tv is then set to
 * SL_TIMEOUT_MAX, for callers that must pass something). */
int sl_timeout_tv(double s, struct timeval *tv);

/* s seconds in milliseconds, rounded up: a positive duration is never 0.
 * Returns -1 for +infinity ("no timeout"; libcurl spells that 0). */
long sl_timeout_ms(double s);

#endif
