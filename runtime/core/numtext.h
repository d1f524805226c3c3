/* numtext.h -- the shortest text that reads back as the same double
 *
 * sluice.json writes a number that is not a small integer as the shortest
 * of %.15g, %.16g and %.17g that strtod reads back as the same double
 * (0.1 -> "0.1", not "0.10000000000000001"). Two C writers follow it: the
 * outbox's chunk encoder (bindings/lua_outbox.c), which writes numbers so,
 * and sluice._json's decoder (bindings/lua_json.c), which writes a decoded
 * double back so to tell whether the text it read named that double.
 *
 * A pure function: no state, any thread. sluice never calls setlocale, so
 * the decimal point is '.'.
 */
#ifndef SLUICE_NUMTEXT_H
#define SLUICE_NUMTEXT_H

#include <stddef.h>

/* Bytes a text takes at the most, its NUL included ("-1.2345678901234567e-308"
 * is 24). */
#define SL_NUMTEXT_MAX 32

/* Writes into buf (SL_NUMTEXT_MAX bytes) the shortest of %.15g, %.16g and
 * %.17g that reads back as v, v finite, NUL-terminated; returns its length.
 * Integral values are written as %g writes them ("100", "1e+15", "-0"): a
 * caller that wants an integer's digits writes those itself. */
size_t sl_numtext_shortest(char *buf, double v);

#endif
