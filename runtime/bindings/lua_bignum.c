/* lua_bignum.c -- sluice._bignum: exact decimal arithmetic on OpenSSL BIGNUMs
 *
 * Every function takes numbers as Lua strings and returns them as strings:
 * a decimal ("-12.3400", "1.5e-3", "+7", ".5") or a "0x" hex integer in,
 * the canonical decimal text out (no leading zeros, no trailing fraction
 * zeros, no "+", no exponent, "0" for every zero). Nothing is kept between
 * calls and no double is ever involved: a value is a BIGNUM m and a scale
 * s >= 0 meaning m * 10^-s.
 *
 * Text that is not a number is an operational answer, not an error:
 * nil, why, n (n: the number of the argument at fault). The Lua wrapper
 * (sluice.bignum) turns it into misuse where that is its contract. Only
 * non-string arguments and out-of-memory raise here. Inputs are bounded
 * (MAX_TEXT characters, exponents and scale shifts within +-MAX_EXP) so
 * that no text can ask for an absurd amount of memory.
 */
#include <ctype.h>
#include <lauxlib.h>
#include <limits.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "host/modules.h"

#define MAX_TEXT 100000 /* characters of one input */
#define MAX_EXP 10000   /* |exponent|, |k| of scale, places of div */

/* m * 10^-scale; scale >= 0 */
typedef struct dec {
    BIGNUM *m;
    long scale;
} dec;

/* One call's scratch: the operands, the result and a BN_CTX, all freed by
 * work_free whatever happened. */
typedef struct work {
    BN_CTX *ctx;
    dec a, b, r;
    BIGNUM *t; /* temporary */
} work;

static int work_init(work *w) {
    memset(w, 0, sizeof(*w));
    w->ctx = BN_CTX_new();
    w->a.m = BN_new();
    w->b.m = BN_new();
    w->r.m = BN_new();
    w->t = BN_new();
    return w->ctx && w->a.m && w->b.m && w->r.m && w->t;
}

static void work_free(work *w) {
    BN_free(w->a.m);
    BN_free(w->b.m);
    BN_free(w->r.m);
    BN_free(w->t);
    BN_CTX_free(w->ctx);
}

/* m *= 10^n (n >= 0); 0 on failure (memory) */
static int mul_pow10(BIGNUM *m, long n, BN_CTX *ctx) {
    if (n == 0)
        return 1;
    BIGNUM *p = BN_new(), *ten = BN_new(), *e = BN_new();
    int ok = p && ten && e && BN_set_word(ten, 10) &&
             BN_set_word(e, (BN_ULONG)n) && BN_exp(p, ten, e, ctx) &&
             BN_mul(m, m, p, ctx);
    BN_free(p);
    BN_free(ten);
    BN_free(e);
    return ok;
}

/* p = 10^n (n >= 0) */
static int set_pow10(BIGNUM *p, long n, BN_CTX *ctx) {
    return BN_one(p) && mul_pow10(p, n, ctx);
}

/* Reads s[0..len) into d. Returns NULL, or why it is not a number
 * (a static string). *oom is set when memory ran out. */
static const char *parse(const char *s, size_t len, dec *d, BN_CTX *ctx,
                         int *oom) {
    if (len == 0)
        return "empty text";
    if (len > MAX_TEXT)
        return "text too long";
    char *buf = malloc(len + 2);
    if (!buf) {
        *oom = 1;
        return "out of memory";
    }
    const char *why = NULL;
    size_t i = 0, n = 0;
    if (len >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        for (i = 2; i < len; i++) {
            if (!isxdigit((unsigned char)s[i])) {
                why = "invalid hex digit";
                goto done;
            }
            buf[n++] = s[i];
        }
        if (n == 0) {
            why = "no digits after 0x";
            goto done;
        }
        buf[n] = '\0';
        if (BN_hex2bn(&d->m, buf) != (int)n)
            goto oom;
        d->scale = 0;
        goto done;
    }
    if (s[i] == '-' || s[i] == '+') {
        if (s[i] == '-')
            buf[n++] = '-';
        i++;
    }
    size_t first = n, ndigits = 0;
    long frac = 0;
    for (; i < len && isdigit((unsigned char)s[i]); i++, ndigits++)
        if (n > first || s[i] != '0') /* leading zeros skipped */
            buf[n++] = s[i];
    if (i < len && s[i] == '.') {
        for (i++; i < len && isdigit((unsigned char)s[i]); i++, ndigits++) {
            if (n > first || s[i] != '0')
                buf[n++] = s[i];
            frac++;
        }
    }
    if (ndigits == 0) {
        why = "not a number";
        goto done;
    }
    long exp = 0;
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        int neg = 0;
        i++;
        if (i < len && (s[i] == '-' || s[i] == '+'))
            neg = s[i++] == '-';
        if (i == len) {
            why = "not a number";
            goto done;
        }
        for (; i < len && isdigit((unsigned char)s[i]); i++) {
            exp = exp * 10 + (s[i] - '0');
            if (exp > MAX_EXP) {
                why = "exponent out of range";
                goto done;
            }
        }
        if (neg)
            exp = -exp;
    }
    if (i != len) {
        why = "not a number";
        goto done;
    }
    if (n == first) /* only zeros */
        buf[n++] = '0';
    buf[n] = '\0';
    if (BN_dec2bn(&d->m, buf) != (int)n) /* counts the sign too */
        goto oom;
    d->scale = frac - exp;
    if (d->scale < 0) {
        if (!mul_pow10(d->m, -d->scale, ctx))
            goto oom;
        d->scale = 0;
    }
    goto done;
oom:
    *oom = 1;
    why = "out of memory";
done:
    free(buf);
    return why;
}

/* The canonical text of d, malloc'd; NULL when memory ran out. */
static char *format_dec(const dec *d) {
    char *digits = BN_bn2dec(d->m);
    if (!digits)
        return NULL;
    int neg = digits[0] == '-';
    const char *p = digits + neg;
    size_t n = strlen(p), scale = (size_t)d->scale;
    char *out = malloc(n + scale + 4);
    if (!out) {
        OPENSSL_free(digits);
        return NULL;
    }
    size_t o = 0;
    if (neg)
        out[o++] = '-';
    if (scale == 0) {
        memcpy(out + o, p, n);
        o += n;
    } else {
        size_t nint = n > scale ? n - scale : 0;
        if (nint) {
            memcpy(out + o, p, nint);
            o += nint;
        } else {
            out[o++] = '0';
        }
        size_t dot = o;
        out[o++] = '.';
        for (size_t z = n; z < scale; z++)
            out[o++] = '0';
        memcpy(out + o, p + nint, n - nint);
        o += n - nint;
        while (o > dot + 1 && out[o - 1] == '0')
            o--;
        if (o == dot + 1) /* a whole number: m is a non-zero multiple of
                             10^scale, so a "-" stays meaningful */
            o = dot;
    }
    out[o] = '\0';
    OPENSSL_free(digits);
    return out;
}

/* Brings a and b to the same scale. */
static int align(dec *a, dec *b, BN_CTX *ctx) {
    if (a->scale < b->scale) {
        if (!mul_pow10(a->m, b->scale - a->scale, ctx))
            return 0;
        a->scale = b->scale;
    } else if (b->scale < a->scale) {
        if (!mul_pow10(b->m, a->scale - b->scale, ctx))
            return 0;
        b->scale = a->scale;
    }
    return 1;
}

/* Reads argument n (a string) into d; on failure pushes nil, why, n and
 * returns 3 (*oom set when that was memory), else 0. */
static int read_arg(lua_State *L, int n, dec *d, work *w, int *oom) {
    size_t len;
    const char *s = lua_tolstring(L, n, &len);
    const char *why = parse(s, len, d, w->ctx, oom);
    if (!why)
        return 0;
    lua_pushnil(L);
    lua_pushstring(L, why);
    lua_pushinteger(L, n);
    return 3;
}

/* Pushes w->r as text (or raises on out of memory) after freeing w. */
static int push_result(lua_State *L, work *w) {
    char *s = format_dec(&w->r);
    work_free(w);
    if (!s)
        return luaL_error(L, "sluice._bignum: out of memory");
    lua_pushstring(L, s);
    free(s);
    return 1;
}

static int fail_oom(lua_State *L, work *w) {
    work_free(w);
    return luaL_error(L, "sluice._bignum: out of memory");
}

/* Runs the common prologue of a one- or two-operand call: checks the
 * arguments are strings, allocates w, reads them. Returns 0 to go on, or
 * the number of results already pushed (w already freed). */
static int begin(lua_State *L, work *w, int nargs) {
    for (int i = 1; i <= nargs; i++)
        luaL_checktype(L, i, LUA_TSTRING);
    if (!work_init(w))
        return fail_oom(L, w);
    int oom = 0;
    int rc = read_arg(L, 1, &w->a, w, &oom);
    if (!rc && nargs > 1)
        rc = read_arg(L, 2, &w->b, w, &oom);
    if (oom)
        return fail_oom(L, w);
    if (rc)
        work_free(w);
    return rc;
}

/* normalize(s) -> canonical text | nil, why, 1 */
static int l_normalize(lua_State *L) {
    work w;
    int rc = begin(L, &w, 1);
    if (rc)
        return rc;
    if (!BN_copy(w.r.m, w.a.m))
        return fail_oom(L, &w);
    w.r.scale = w.a.scale;
    return push_result(L, &w);
}

enum { OP_ADD, OP_SUB, OP_MUL };

static int arith(lua_State *L, int op) {
    work w;
    int rc = begin(L, &w, 2);
    if (rc)
        return rc;
    int ok;
    if (op == OP_MUL) {
        ok = BN_mul(w.r.m, w.a.m, w.b.m, w.ctx);
        w.r.scale = w.a.scale + w.b.scale;
    } else {
        ok = align(&w.a, &w.b, w.ctx) &&
             (op == OP_ADD ? BN_add(w.r.m, w.a.m, w.b.m)
                           : BN_sub(w.r.m, w.a.m, w.b.m));
        w.r.scale = w.a.scale;
    }
    if (!ok)
        return fail_oom(L, &w);
    return push_result(L, &w);
}

static int l_add(lua_State *L) { return arith(L, OP_ADD); }
static int l_sub(lua_State *L) { return arith(L, OP_SUB); }
static int l_mul(lua_State *L) { return arith(L, OP_MUL); }

/* cmp(a, b) -> -1 | 0 | 1 | nil, why, n */
static int l_cmp(lua_State *L) {
    work w;
    int rc = begin(L, &w, 2);
    if (rc)
        return rc;
    if (!align(&w.a, &w.b, w.ctx))
        return fail_oom(L, &w);
    int c = BN_cmp(w.a.m, w.b.m);
    work_free(&w);
    lua_pushinteger(L, c < 0 ? -1 : c > 0 ? 1 : 0);
    return 1;
}

/* scale(s, k) -> s * 10^k | nil, why, n. |k| <= MAX_EXP (checked by the
 * wrapper; raises here). */
static int l_scale(lua_State *L) {
    long k = (long)luaL_checkinteger(L, 2);
    luaL_argcheck(L, k >= -MAX_EXP && k <= MAX_EXP, 2, "out of range");
    work w;
    int rc = begin(L, &w, 1);
    if (rc)
        return rc;
    if (!BN_copy(w.r.m, w.a.m))
        return fail_oom(L, &w);
    w.r.scale = w.a.scale - k;
    if (w.r.scale < 0) {
        if (!mul_pow10(w.r.m, -w.r.scale, w.ctx))
            return fail_oom(L, &w);
        w.r.scale = 0;
    }
    return push_result(L, &w);
}

/* div(a, b, places) -> a / b truncated toward zero to places fraction
 * digits | nil, why, n ("division by zero", n = 2). */
static int l_div(lua_State *L) {
    long places = (long)luaL_checkinteger(L, 3);
    luaL_argcheck(L, places >= 0 && places <= MAX_EXP, 3, "out of range");
    work w;
    int rc = begin(L, &w, 2);
    if (rc)
        return rc;
    if (BN_is_zero(w.b.m)) {
        work_free(&w);
        lua_pushnil(L);
        lua_pushliteral(L, "division by zero");
        lua_pushinteger(L, 2);
        return 3;
    }
    /* a/b * 10^places = ma * 10^(sb - sa + places) / mb */
    long e = w.b.scale - w.a.scale + places;
    int ok = e >= 0 ? mul_pow10(w.a.m, e, w.ctx) : mul_pow10(w.b.m, -e, w.ctx);
    /* BN_div truncates toward zero, as C's / does */
    ok = ok && BN_div(w.r.m, w.t, w.a.m, w.b.m, w.ctx);
    if (!ok)
        return fail_oom(L, &w);
    w.r.scale = places;
    return push_result(L, &w);
}

/* to_hex(s) -> "0x..." (lower case, no leading zeros, "0x0") | nil, why, 1
 * for a negative or non-integral value. */
static int l_to_hex(lua_State *L) {
    work w;
    int rc = begin(L, &w, 1);
    if (rc)
        return rc;
    const char *why = NULL;
    if (w.a.scale > 0) {
        if (!set_pow10(w.t, w.a.scale, w.ctx) ||
            !BN_div(w.r.m, w.b.m, w.a.m, w.t, w.ctx))
            return fail_oom(L, &w);
        if (!BN_is_zero(w.b.m))
            why = "not an integer";
    } else if (!BN_copy(w.r.m, w.a.m)) {
        return fail_oom(L, &w);
    }
    if (!why && BN_is_negative(w.r.m) && !BN_is_zero(w.r.m))
        why = "negative";
    if (why) {
        work_free(&w);
        lua_pushnil(L);
        lua_pushstring(L, why);
        lua_pushinteger(L, 1);
        return 3;
    }
    char *hex = BN_bn2hex(w.r.m);
    work_free(&w);
    if (!hex)
        return luaL_error(L, "sluice._bignum: out of memory");
    char *p = hex;
    while (p[0] == '0' && p[1] != '\0')
        p++;
    for (char *c = p; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    lua_pushliteral(L, "0x");
    lua_pushstring(L, p);
    OPENSSL_free(hex);
    lua_concat(L, 2);
    return 1;
}

int luaopen_sluice_bignum(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"normalize", l_normalize},
        {"add", l_add},
        {"sub", l_sub},
        {"mul", l_mul},
        {"cmp", l_cmp},
        {"scale", l_scale},
        {"div", l_div},
        {"to_hex", l_to_hex},
        {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    lua_pushinteger(L, MAX_TEXT);
    lua_setfield(L, -2, "MAX_TEXT");
    lua_pushinteger(L, MAX_EXP);
    lua_setfield(L, -2, "MAX_EXP");
    return 1;
}
