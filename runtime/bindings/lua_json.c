/* lua_json.c -- sluice._json: exact JSON decoding (yajl) for sluice.json
 *
 * yajl's callback parser hands over every number as its text (the
 * yajl_number callback), so each is turned into the Lua value that holds
 * it exactly: a number, an int64_t/uint64_t cdata, or a json.numeral.
 * Values are built directly on the Lua stack as yajl reports them; nothing
 * is kept between calls.
 *
 * Lua errors (out of memory, nothing else) may be raised inside yajl's
 * callbacks and unwind through yajl's frames (LuaJIT unwinds with the
 * DWARF tables libyajl has). What yajl holds then is freed by the __gc of
 * the userdata that owns the handle, so an error leaks nothing.
 */
#include <float.h>
#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

#include "core/numtext.h"
#include "host/modules.h"

/* cjson's default: the 1001st open bracket is refused. */
#define MAX_DEPTH 1000

/* The upvalues of decode, given by sluice.json to decoder(). */
enum {
    UV_NULL = 1, /* json.null */
    UV_ARRAY_MT, /* the metatable of json.array tables */
    UV_NUMERAL,  /* json.numeral */
    UV_INT64,    /* ffi.typeof("int64_t") */
    UV_UINT64,   /* ffi.typeof("uint64_t") */
    UV_BOX_MT,   /* the metatable of the handle's box */
    UV_COUNT = UV_BOX_MT
};

/* The state of one decode, on the C stack of decode. Stack shape while
 * parsing: each open container is its table, with an object's pending key
 * above it while its value is parsed. */
typedef struct parse {
    lua_State *L;
    yajl_handle h;
    const unsigned char *text; /* the input, len bytes */
    size_t len;
    int depth;
    const char *err; /* why a callback cancelled the parse */
    size_t err_at;   /* where, when known: else yajl's offset */
    /* next[d]: the next index of the array open at depth d; 0 when the
     * container at depth d is an object */
    size_t next[MAX_DEPTH + 1];
} parse;

/* Stores the value on top of the stack into the open container. */
static int add_value(parse *p) {
    lua_State *L = p->L;
    if (p->depth == 0)
        return 1; /* the document: stays on the stack */
    size_t i = p->next[p->depth];
    if (i) {
        lua_rawseti(L, -2, (int)i);
        p->next[p->depth] = i + 1;
    } else {
        lua_rawset(L, -3);
    }
    return 1;
}

static int on_null(void *ctx) {
    parse *p = ctx;
    lua_pushvalue(p->L, lua_upvalueindex(UV_NULL));
    return add_value(p);
}

static int on_boolean(void *ctx, int v) {
    parse *p = ctx;
    lua_pushboolean(p->L, v);
    return add_value(p);
}

/* Pushes a new int64_t (uint64_t when u) cdata holding bits. LuaJIT's C
 * API cannot make cdata: the ctype is called for a zero, whose payload
 * lua_topointer gives. */
static void push_int64(lua_State *L, uint64_t bits, int u) {
    lua_pushvalue(L, lua_upvalueindex(u ? UV_UINT64 : UV_INT64));
    lua_call(L, 0, 1);
    memcpy((void *)lua_topointer(L, -1), &bits, sizeof(bits));
}

static void push_numeral(lua_State *L, const char *s, size_t len) {
    lua_pushvalue(L, lua_upvalueindex(UV_NUMERAL));
    lua_pushlstring(L, s, len);
    lua_call(L, 1, 1);
}

/* An integer token (-?digits, which yajl checked): a number within
 * +-(2^53-1), else int64_t, else (positive) uint64_t, else a numeral. The
 * bound is the store's: it refuses a Lua number of 2^53, which may be a
 * rounded 2^53+1. */
static void push_integer(lua_State *L, const char *s, size_t len) {
    int neg = s[0] == '-';
    size_t n = len - (size_t)neg;
    if (n > 20) { /* 2^64 has 20 digits */
        push_numeral(L, s, len);
        return;
    }
    uint64_t mag = 0;
    for (size_t i = (size_t)neg; i < len; i++) {
        uint64_t d = (uint64_t)(s[i] - '0');
        if (mag > (UINT64_MAX - d) / 10) {
            push_numeral(L, s, len);
            return;
        }
        mag = mag * 10 + d;
    }
    if (mag < (UINT64_C(1) << 53)) {
        double v = (double)mag;
        lua_pushnumber(L, neg ? -v : v); /* "-0" is -0 */
    } else if (neg) {
        if (mag > (UINT64_C(1) << 63))
            push_numeral(L, s, len);
        else
            push_int64(L, UINT64_C(0) - mag, 0); /* two's complement */
    } else {
        push_int64(L, mag, mag > (uint64_t)INT64_MAX);
    }
}

/* The significant digits of a number's text (s, len: a JSON number or
 * sl_numtext_shortest's) into digits (at most cap, NUL-terminated) and the
 * power of ten of the first; returns their count (0 for a zero). */
static size_t sig_digits(const char *s, size_t len, char *digits, size_t cap,
                         long *exp10) {
    size_t i = 0, nint = 0, seen = 0, first_at = 0, n = 0, last_n = 0;
    int in_frac = 0;
    for (; i < len && s[i] != 'e' && s[i] != 'E'; i++) {
        if (s[i] == '.') {
            in_frac = 1;
            continue;
        }
        if (s[i] < '0' || s[i] > '9')
            continue; /* the sign */
        seen++;
        if (!in_frac)
            nint++;
        if (s[i] != '0' && !first_at)
            first_at = seen;
        if (first_at) {
            if (n < cap)
                digits[n] = s[i];
            n++;
            if (s[i] != '0')
                last_n = n;
        }
    }
    long x = i < len ? strtol(s + i + 1, NULL, 10) : 0; /* yajl: <= len */
    *exp10 = (long)nint - (long)first_at + x;
    digits[last_n < cap ? last_n : cap - 1] = '\0';
    return last_n;
}

/* A token with a fraction or an exponent: a number when the double it
 * reads as is written back (by sluice.json.number: the shortest of %.15g,
 * %.16g, %.17g that reads back) with the same significant digits, which
 * holds for any 15 digits within a double's normal range, and for the
 * text json.number wrote; else a numeral (1e400, 1e-400, subnormals,
 * 0.123456789012345678). */
static void push_decimal(lua_State *L, const char *s, size_t len) {
    char want[24];
    long want_exp;
    size_t n = sig_digits(s, len, want, sizeof(want), &want_exp);
    if (n > 17) {
        push_numeral(L, s, len);
        return;
    }
    /* strtod needs the token alone, NUL-terminated (yajl's is not); sluice
     * never calls setlocale, so the decimal point is '.' */
    char small[128];
    char *buf = len < sizeof(small) ? small : malloc(len + 1);
    if (!buf) {
        luaL_error(L, "sluice.json.decode: out of memory");
        return;
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    double v = strtod(buf, NULL);
    if (buf != small)
        free(buf);
    if (n == 0) {
        lua_pushnumber(L, v); /* a zero, keeping its sign */
        return;
    }
    if (isinf(v) || fabs(v) < DBL_MIN) {
        push_numeral(L, s, len);
        return;
    }
    if (n > 15) {
        char out[SL_NUMTEXT_MAX], got[24];
        long got_exp;
        size_t len_out = sl_numtext_shortest(out, v);
        size_t m = sig_digits(out, len_out, got, sizeof(got), &got_exp);
        if (m != n || got_exp != want_exp || memcmp(got, want, n) != 0) {
            push_numeral(L, s, len);
            return;
        }
    }
    lua_pushnumber(L, v);
}

static int on_number(void *ctx, const char *s, size_t len) {
    parse *p = ctx;
    if (memchr(s, '.', len) || memchr(s, 'e', len) || memchr(s, 'E', len))
        push_decimal(p->L, s, len);
    else
        push_integer(p->L, s, len);
    return add_value(p);
}

/* The offset in s[0..n) of the first byte that is not strict UTF-8
 * (Unicode's table 3-7: no overlong forms, no surrogates, nothing past
 * U+10FFFF; yajl's own check lets those through), or n. */
static size_t utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) { /* eight ASCII bytes at a time */
            uint64_t w;
            memcpy(&w, s + i, sizeof(w));
            if (!(w & UINT64_C(0x8080808080808080))) {
                i += 8;
                continue;
            }
        }
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned lo = 0x80, hi = 0xBF; /* the second byte's range */
        if (c >= 0xC2 && c <= 0xDF)
            need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else
            return i;
        if (i + need >= n || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
        i += need + 1;
    }
    return n;
}

static unsigned hex4(const unsigned char *s) {
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned c = s[k];
        v = v * 16 + (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
}

/* Checks a string or key (s, len as yajl gives it) and returns 1, or sets
 * p->err and returns 0. A string without escapes is given in place in the
 * text; one with escapes was decoded by yajl, which turns an unpaired
 * surrogate escape into "?" or into bytes that are not UTF-8, so its
 * escapes are checked in the text it came from (just before yajl's offset,
 * which is past the closing quote). */
static int check_string(parse *p, const unsigned char *s, size_t len) {
    const unsigned char *t = p->text;
    uintptr_t us = (uintptr_t)s, ut = (uintptr_t)t;
    size_t beg, end, bad;
    if (us >= ut && us + len <= ut + p->len) {
        beg = (size_t)(us - ut);
        end = beg + len;
    } else {
        end = yajl_get_bytes_consumed(p->h) - 1; /* the closing quote */
        beg = end;
        for (;;) { /* back to the opening quote: one no odd run of \ escapes */
            while (t[--beg] != '"')
                ;
            size_t k = beg;
            while (k > 0 && t[k - 1] == '\\')
                k--;
            if ((beg - k) % 2 == 0)
                break;
        }
        beg++;
    }
    bad = utf8_invalid_at(t + beg, end - beg);
    if (bad < end - beg) {
        p->err = "invalid UTF-8";
        p->err_at = beg + bad;
        return 0;
    }
    if (us >= ut && us + len <= ut + p->len)
        return 1;
    for (size_t i = beg; i < end; i++) {
        if (t[i] != '\\')
            continue;
        if (t[i + 1] != 'u') {
            i++;
            continue;
        }
        unsigned cp = hex4(t + i + 2);
        if ((cp & 0xFC00) == 0xD800 && i + 12 <= end && t[i + 6] == '\\' &&
            t[i + 7] == 'u' && (hex4(t + i + 8) & 0xFC00) == 0xDC00) {
            i += 11;
        } else if ((cp & 0xF800) == 0xD800) {
            p->err = "unpaired surrogate in a \\u escape";
            p->err_at = i;
            return 0;
        } else {
            i += 5;
        }
    }
    return 1;
}

static int on_string(void *ctx, const unsigned char *s, size_t len) {
    parse *p = ctx;
    if (!check_string(p, s, len))
        return 0;
    lua_pushlstring(p->L, (const char *)s, len);
    return add_value(p);
}

/* Opens a container one level deeper; 0 (cancel) past MAX_DEPTH or when
 * the Lua stack cannot grow. Each level holds at most two slots (table and
 * pending key); the slack covers a leaf value and the calls that make it. */
static int open_container(parse *p, int array) {
    lua_State *L = p->L;
    if (p->depth >= MAX_DEPTH || !lua_checkstack(L, 8)) {
        p->err = "nested deeper than 1000";
        return 0;
    }
    lua_createtable(L, 0, 0);
    if (array) {
        lua_pushvalue(L, lua_upvalueindex(UV_ARRAY_MT));
        lua_setmetatable(L, -2);
    }
    p->depth++;
    p->next[p->depth] = array ? 1 : 0;
    return 1;
}

static int close_container(void *ctx) {
    parse *p = ctx;
    p->depth--;
    return add_value(p);
}

static int on_start_map(void *ctx) { return open_container(ctx, 0); }
static int on_start_array(void *ctx) { return open_container(ctx, 1); }

static int on_map_key(void *ctx, const unsigned char *s, size_t len) {
    parse *p = ctx;
    if (!check_string(p, s, len))
        return 0;
    lua_pushlstring(p->L, (const char *)s, len);
    return 1;
}

static const yajl_callbacks callbacks = {
    on_null,         on_boolean,     NULL /* integer */, NULL /* double */,
    on_number,       on_string,      on_start_map,       on_map_key,
    close_container, on_start_array, close_container,
};

/* The box that owns a yajl handle until decode frees it, or its __gc does
 * when an error unwound decode. */
typedef struct box {
    yajl_handle h;
} box;

static int box_gc(lua_State *L) {
    box *b = lua_touserdata(L, 1);
    if (b && b->h) {
        yajl_free(b->h);
        b->h = NULL;
    }
    return 0;
}

/* Pushes nil and "invalid JSON at byte N: reason", N counted from 1 as
 * string.sub counts: the byte where the parser stopped (the last one it
 * read), #s + 1 when the text ended too soon. at is 0-based. */
static int fail(lua_State *L, yajl_handle h, const parse *p, size_t at) {
    char reason[128];
    if (p->err) {
        snprintf(reason, sizeof(reason), "%s", p->err);
    } else {
        unsigned char *e = yajl_get_error(h, 0, NULL, 0);
        /* yajl writes "parse error: premature EOF\n" and the like */
        const char *r = e ? (const char *)e : "error";
        const char *colon = strstr(r, ": ");
        snprintf(reason, sizeof(reason), "%s", colon ? colon + 2 : r);
        size_t n = strlen(reason);
        while (n > 0 && (reason[n - 1] == '\n' || reason[n - 1] == '.'))
            reason[--n] = '\0';
        if (e)
            yajl_free_error(h, e);
    }
    lua_pushnil(L);
    lua_pushfstring(L, "invalid JSON at byte %d: %s", (int)(at + 1), reason);
    return 2;
}

/* decode(s) -> value | nil, err (s a string: sluice.json checks). */
static int l_decode(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_settop(L, 1);
    parse p;
    p.L = L;
    p.h = NULL;
    p.text = (const unsigned char *)s;
    p.len = len;
    p.depth = 0;
    p.err = NULL;
    p.err_at = SIZE_MAX;
    if (len == 0) {
        p.err = "empty input";
        return fail(L, NULL, &p, 0);
    }
    box *b = lua_newuserdata(L, sizeof(*b));
    b->h = NULL;
    lua_pushvalue(L, lua_upvalueindex(UV_BOX_MT));
    lua_setmetatable(L, -2);
    b->h = p.h = yajl_alloc(&callbacks, NULL, &p);
    if (!b->h)
        return luaL_error(L, "sluice.json.decode: out of memory");
    /* check_string checks UTF-8, more strictly */
    yajl_config(b->h, yajl_dont_validate_strings, 1);
    /* stack: s, box; the document is built above them */
    yajl_status st = yajl_parse(b->h, p.text, len);
    size_t at = yajl_get_bytes_consumed(b->h);
    at = at > 0 ? at - 1 : 0; /* the last byte yajl read */
    if (st == yajl_status_ok) {
        st = yajl_complete_parse(b->h);
        at = len; /* what complete_parse refuses is the end of the text */
    }
    int n = 1;
    if (st != yajl_status_ok)
        n = fail(L, b->h, &p, p.err_at != SIZE_MAX ? p.err_at : at);
    yajl_free(b->h);
    b->h = NULL;
    if (n == 2)
        return 2;
    lua_replace(L, 1); /* the document over s; the box goes */
    lua_settop(L, 1);
    return 1;
}

/* decoder(null, array_mt, numeral, int64_t, uint64_t) -> decode, with
 * those as its upvalues. */
static int l_decoder(lua_State *L) {
    luaL_checktype(L, UV_ARRAY_MT, LUA_TTABLE);
    luaL_checktype(L, UV_NUMERAL, LUA_TFUNCTION);
    lua_settop(L, UV_UINT64);
    lua_newtable(L); /* the box's metatable */
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcclosure(L, l_decode, UV_COUNT);
    return 1;
}

int luaopen_sluice_json(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"decoder", l_decoder},
        {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
