/* lua_outbox.c -- sluice._outbox: the outbox's chunk encoder (rows as JSON)
 *
 * sluice.outbox queues the rows a commit stored as one JSON array per chunk
 * (sluice.outbox.queue). Written in Lua, that text cost more than the
 * upsert it rides on; here it is written in one pass over the values the
 * store bound (sluice.store.rows' flat array: already coerced to the
 * column's type), so a queued row is the row as the store holds it, the
 * values db:select reads back:
 *
 * rows(flat, ncols, from, to, prefixes, index, kinds) -> text | nil, err, r
 *   flat[(r - 1) * ncols + c] is column c of row r; rows from..to are
 *   written, each an object whose fields are, in order, those of prefixes
 *   (the '"name":' texts; the caller sorts them) for which the row has a
 *   value (nil: the field is absent), index[i] being that field's column
 *   c and kinds:sub(i, i) how its value is written:
 *     'n' a number (integer, real columns): an integral value within
 *         +-2^53 as its digits, any other finite one as the shortest of
 *         %.15g, %.16g, %.17g that reads back as the same double (what
 *         sluice.json writes and decodes to a number); a string
 *         (an integer beyond 2^53, as the store binds those) as it is, when
 *         it is one; a boolean as 1 or 0;
 *     's' a string (text, blob, uint256, decimal), escaped;
 *     'j' JSON text (json columns), as it is when it parses as JSON, else
 *         escaped as a string (the store takes a string as JSON text and
 *         db:select reads one that does not parse back as that string).
 *   A value it cannot write (not finite, not valid UTF-8, a type the kind
 *   does not take) returns nil, a message naming the column, and r.
 *
 * batch(key) -> a batch (core/outbox_batch.h): the forwarder's rows read
 *   from chunks without Lua tables, one row per value of the fields key
 *   (a list of names; empty: every row):
 *     b:add(text, lo, hi, entry) -> true | nil, err  rows lo..hi of a chunk
 *     b:count() -> rows kept; b:queued() -> rows added
 *     b:origins() -> entries, rows: per kept row, its entry and chunk row
 *     b:json() -> the kept rows as one JSON array (to decode into tables)
 *     b:copy_text(names, casts) -> text | nil, err: COPY's text format,
 *       columns names in order, casts[i] the column's PostgreSQL type
 *       ("bytea": hex input, "jsonb": the value's JSON text)
 *     b:rowbinary(cols, version [, versions]) -> body | nil, err:
 *       ClickHouse RowBinary (core/outbox_rowbinary.h), cols a list of
 *       {name, type, nullable, precision, scale} (type "int64", "float64",
 *       "string", "json", "uint8", "uint256", "decimal"), then per row a
 *       UInt64 version: versions[k] (a number) or version
 *   A batch keeps its chunks' strings (in its environment table) and
 *   points into them; its memory goes with its __gc (b:free() gives it
 *   back earlier).
 *
 * Nothing else is kept between calls: rows' text is built in a strbuf
 * (freed before the call returns) and returned as a Lua string; no call
 * yields or calls back into Lua.
 */
#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

#include "core/numtext.h"
#include "core/outbox_batch.h"
#include "core/outbox_rowbinary.h"
#include "core/strbuf.h"
#include "host/modules.h"

/* The offset of the first byte of s[0..n) that is not part of valid UTF-8
 * (overlong forms, surrogates and code points past U+10FFFF are not), or n. */
static size_t utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
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

/* The text being built; oom is set once an append failed. */
typedef struct out {
    strbuf sb;
    int oom;
} out;

static void add(out *b, const char *p, size_t n) {
    if (sb_add(&b->sb, p, n) != 0)
        b->oom = 1;
}

static void addc(out *b, char c) { add(b, &c, 1); }

/* Appends s as a JSON string; 0 when it is not valid UTF-8. */
static int put_string(out *b, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    if (utf8_invalid_at((const unsigned char *)s, len) != len)
        return 0;
    addc(b, '"');
    size_t from = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        add(b, s + from, i - from);
        from = i + 1;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t n = 2;
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        }
        add(b, esc, n);
    }
    add(b, s + from, len - from);
    addc(b, '"');
    return 1;
}

/* Appends the digits of v (|v| < 2^63), without printf: glibc formats a
 * double through multiprecision arithmetic, which cost more than the rest
 * of a row. */
static void put_int(out *b, int64_t v) {
    char s[24];
    int i = sizeof(s);
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        s[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        s[--i] = '-';
    add(b, s + i, sizeof(s) - (size_t)i);
}

/* Appends the text of a finite double as sluice.json writes it: an
 * integral one within +-2^53 as its digits, any other as the shortest of
 * %.15g, %.16g, %.17g that reads back as the same double (core/numtext.h;
 * sluice.json's decoder takes a longer text for a decimal the double only
 * approximates, and keeps it as a json.numeral); 0 for nan and the
 * infinities. */
static int put_double(out *b, double v) {
    if (!isfinite(v))
        return 0;
    if (v == floor(v) && fabs(v) < 9007199254740992.0) {
        put_int(b, (int64_t)v); /* -0 is 0, as the store binds it */
        return 1;
    }
    char s[SL_NUMTEXT_MAX];
    add(b, s, sl_numtext_shortest(s, v));
    return 1;
}

/* Whether s is the text of an integer: -?[0-9]+. */
static int is_integer_text(const char *s, size_t len) {
    size_t i = len > 0 && s[0] == '-';
    if (i == len)
        return 0;
    for (; i < len; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* Whether s[0..len) is one JSON document (yajl, strings' UTF-8 checked). */
static int is_json(const char *s, size_t len) {
    yajl_handle h = yajl_alloc(NULL, NULL, NULL);
    if (!h)
        return 0;
    int ok = yajl_parse(h, (const unsigned char *)s, len) == yajl_status_ok &&
             yajl_complete_parse(h) == yajl_status_ok;
    yajl_free(h);
    return ok;
}

/* Appends the value at the top of the stack as kind says -> 1, or 0 when
 * it cannot. */
static int put_value(lua_State *L, out *b, char kind) {
    size_t len;
    const char *s;
    switch (lua_type(L, -1)) {
    case LUA_TNUMBER:
        return kind == 'n' && put_double(b, lua_tonumber(L, -1));
    case LUA_TBOOLEAN:
        if (kind != 'n')
            return 0;
        addc(b, lua_toboolean(L, -1) ? '1' : '0');
        return 1;
    case LUA_TSTRING:
        s = lua_tolstring(L, -1, &len);
        if (kind == 'n') {
            if (!is_integer_text(s, len))
                return 0;
            add(b, s, len);
            return 1;
        }
        if (kind == 'j' && is_json(s, len)) {
            add(b, s, len);
            return 1;
        }
        return put_string(b, s, len);
    default:
        return 0;
    }
}

static int l_rows(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    int ncols = luaL_checkint(L, 2);
    int from = luaL_checkint(L, 3), to = luaL_checkint(L, 4);
    luaL_checktype(L, 5, LUA_TTABLE);
    luaL_checktype(L, 6, LUA_TTABLE);
    size_t nfields;
    const char *kinds = luaL_checklstring(L, 7, &nfields);
    luaL_argcheck(L, ncols > 0, 2, "column count must be positive");
    luaL_argcheck(L, (int)lua_objlen(L, 5) == (int)nfields, 7,
                  "one kind per field expected");
    lua_settop(L, 7);
    /* the fields' prefixes and columns, read once */
    const char **prefix = lua_newuserdata(L, nfields * sizeof(*prefix) + 1);
    size_t *plen = lua_newuserdata(L, nfields * sizeof(*plen) + 1);
    int *col = lua_newuserdata(L, nfields * sizeof(*col) + 1);
    for (size_t i = 0; i < nfields; i++) {
        lua_rawgeti(L, 5, (int)i + 1);
        prefix[i] = lua_tolstring(L, -1, &plen[i]); /* anchored in arg 5 */
        lua_pop(L, 1);
        lua_rawgeti(L, 6, (int)i + 1);
        col[i] = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (!prefix[i] || col[i] < 1 || col[i] > ncols)
            return luaL_argerror(L, 5, "bad field");
    }
    /* a strbuf, not a luaL_Buffer: the values are read onto the stack
     * between appends */
    out b = {{0}, 0};
    /* room for rows of about 256 bytes: few reallocations */
    if (to >= from && sb_add(&b.sb, "[", 1) == 0) {
        size_t room = (size_t)(to - from + 1) * 256;
        char *p = realloc(b.sb.p, room);
        if (p) {
            b.sb.p = p;
            b.sb.cap = room;
        }
    } else {
        add(&b, "[", 1);
    }
    for (int r = from; r <= to; r++) {
        if (r > from)
            add(&b, ",", 1);
        const char *sep = "{";
        for (size_t i = 0; i < nfields; i++) {
            lua_rawgeti(L, 1, (r - 1) * ncols + col[i]);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 1);
                continue;
            }
            add(&b, sep, 1);
            sep = ",";
            add(&b, prefix[i], plen[i]);
            int ok = put_value(L, &b, kinds[i]);
            lua_pop(L, 1);
            if (!ok) {
                sb_free(&b.sb);
                lua_pushnil(L);
                lua_pushfstring(L, "column %s cannot be written as JSON",
                                prefix[i]);
                lua_pushinteger(L, r);
                return 3;
            }
        }
        if (*sep == '{')
            add(&b, "{", 1);
        add(&b, "}", 1);
    }
    add(&b, "]", 1);
    if (b.oom) {
        sb_free(&b.sb);
        return luaL_error(L, "sluice._outbox.rows: out of memory");
    }
    lua_pushlstring(L, b.sb.p, b.sb.len);
    sb_free(&b.sb);
    return 1;
}

/* -- batches ------------------------------------------------------------ */

#define BATCH_MT "sluice.outbox.batch"

static sl_obatch *check_batch(lua_State *L) {
    sl_obatch **pb = luaL_checkudata(L, 1, BATCH_MT);
    if (!*pb)
        luaL_error(L, "sluice._outbox: the batch was freed");
    return *pb;
}

static int l_batch(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    int nkeys = (int)lua_objlen(L, 1);
    const char **keys = lua_newuserdata(L, (size_t)nkeys * sizeof(*keys) + 1);
    size_t *lens = lua_newuserdata(L, (size_t)nkeys * sizeof(*lens) + 1);
    for (int i = 0; i < nkeys; i++) {
        lua_rawgeti(L, 1, i + 1);
        /* strings only: a number converted here would be a string no
         * table holds, collectable once popped */
        keys[i] = lua_type(L, -1) == LUA_TSTRING
                      ? lua_tolstring(L, -1, &lens[i]) /* anchored in arg 1 */
                      : NULL;
        lua_pop(L, 1);
        if (!keys[i])
            return luaL_argerror(L, 1, "key names must be strings");
    }
    sl_obatch **pb = lua_newuserdata(L, sizeof(*pb));
    *pb = NULL;
    luaL_getmetatable(L, BATCH_MT);
    lua_setmetatable(L, -2);
    lua_newtable(L); /* its environment: the chunks' strings it points into */
    lua_setfenv(L, -2);
    *pb = sl_obatch_new(keys, lens, nkeys);
    if (!*pb)
        return luaL_error(L, "sluice._outbox.batch: out of memory");
    return 1;
}

static int l_batch_add(lua_State *L) {
    sl_obatch *b = check_batch(L);
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    int lo = luaL_checkint(L, 3), hi = luaL_checkint(L, 4);
    int entry = luaL_checkint(L, 5);
    luaL_argcheck(L, lo >= 1 && hi >= lo, 4, "rows lo..hi expected");
    /* the batch points into text: anchored for as long as the batch */
    lua_getfenv(L, 1);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
    lua_pop(L, 1);
    char err[160];
    if (sl_obatch_add(b, text, len, lo, hi, entry, err, sizeof(err)) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_batch_count(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)sl_obatch_count(check_batch(L)));
    return 1;
}

static int l_batch_queued(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)sl_obatch_queued(check_batch(L)));
    return 1;
}

static int l_batch_origins(lua_State *L) {
    sl_obatch *b = check_batch(L);
    int n = (int)sl_obatch_count(b);
    lua_createtable(L, n, 0);
    lua_createtable(L, n, 0);
    for (int k = 0; k < n; k++) {
        int entry, row;
        sl_obatch_origin(b, (size_t)k, &entry, &row);
        lua_pushinteger(L, entry);
        lua_rawseti(L, -3, k + 1);
        lua_pushinteger(L, row);
        lua_rawseti(L, -2, k + 1);
    }
    return 2;
}

static int l_batch_json(lua_State *L) {
    sl_obatch *b = check_batch(L);
    strbuf out = {0};
    if (sl_obatch_json(b, &out) != 0) {
        sb_free(&out);
        return luaL_error(L, "sluice._outbox: out of memory");
    }
    lua_pushlstring(L, out.p, out.len);
    sb_free(&out);
    return 1;
}

/* An empty strbuf with room for `room` bytes, so that an encoder writing
 * about that much allocates once (when malloc fails it starts with none
 * and grows as it is written). */
static strbuf sized_buf(size_t room) {
    strbuf out = {0};
    out.p = malloc(room);
    if (out.p) {
        out.cap = room;
        out.p[0] = '\0';
    }
    return out;
}

/* Frees *out and returns what an encoding method returns: its text, or
 * nil and err when rc is not 0. */
static int push_encoded(lua_State *L, int rc, strbuf *out, const char *err) {
    if (rc != 0) {
        sb_free(out);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushlstring(L, out->p ? out->p : "", out->len);
    sb_free(out);
    return 1;
}

static int l_batch_copy_text(lua_State *L) {
    sl_obatch *b = check_batch(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    int ncols = (int)lua_objlen(L, 2);
    luaL_argcheck(L, ncols > 0 && (int)lua_objlen(L, 3) == ncols, 3,
                  "one cast per column expected");
    sl_obatch_col *cols = lua_newuserdata(L, (size_t)ncols * sizeof(*cols));
    for (int i = 0; i < ncols; i++) {
        lua_rawgeti(L, 2, i + 1);
        cols[i].name = lua_type(L, -1) == LUA_TSTRING
                           ? lua_tolstring(L, -1, &cols[i].len) /* in arg 2 */
                           : NULL;
        lua_pop(L, 1);
        lua_rawgeti(L, 3, i + 1);
        const char *cast = lua_tostring(L, -1);
        lua_pop(L, 1);
        if (!cols[i].name || !cast)
            return luaL_argerror(L, 2, "column names and casts are strings");
        cols[i].kind = !strcmp(cast, "bytea")   ? SL_OB_BYTEA
                       : !strcmp(cast, "jsonb") ? SL_OB_JSON
                                                : SL_OB_PLAIN;
    }
    /* COPY rows run about as long as their JSON: one allocation, mostly */
    strbuf out = sized_buf(sl_obatch_count(b) * 160 + 1);
    char err[200];
    int rc = sl_obatch_copy_text(b, cols, ncols, &out, err, sizeof(err));
    return push_encoded(L, rc, &out, err);
}

static int rb_type(const char *t, enum sl_rb_type *out) {
    static const struct {
        const char *name;
        enum sl_rb_type type;
    } types[] = {
        {"int64", SL_RB_INT64},     {"float64", SL_RB_FLOAT64},
        {"string", SL_RB_STRING},   {"json", SL_RB_JSON},
        {"uint8", SL_RB_UINT8},     {"uint256", SL_RB_UINT256},
        {"decimal", SL_RB_DECIMAL},
    };
    for (size_t i = 0; t && i < sizeof(types) / sizeof(types[0]); i++)
        if (!strcmp(t, types[i].name)) {
            *out = types[i].type;
            return 0;
        }
    return -1;
}

static int l_batch_rowbinary(lua_State *L) {
    sl_obatch *b = check_batch(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    uint64_t version = (uint64_t)luaL_checknumber(L, 3);
    int has_versions = lua_istable(L, 4);
    int ncols = (int)lua_objlen(L, 2);
    luaL_argcheck(L, ncols > 0, 2, "columns expected");
    lua_settop(L, 4);
    sl_rb_col *cols = lua_newuserdata(L, (size_t)ncols * sizeof(*cols));
    for (int i = 0; i < ncols; i++) {
        lua_rawgeti(L, 2, i + 1);
        if (!lua_istable(L, -1))
            return luaL_argerror(L, 2, "a list of column tables expected");
        lua_getfield(L, -1, "name");
        cols[i].name = lua_type(L, -1) == LUA_TSTRING
                           ? lua_tolstring(L, -1, &cols[i].len) /* in arg 2 */
                           : NULL;
        lua_getfield(L, -2, "type");
        const char *t = lua_tostring(L, -1);
        if (!cols[i].name || rb_type(t, &cols[i].type) != 0)
            return luaL_argerror(L, 2, "a column's name or type");
        lua_getfield(L, -3, "nullable");
        cols[i].nullable = lua_toboolean(L, -1);
        lua_getfield(L, -4, "precision");
        cols[i].precision = (int)lua_tointeger(L, -1);
        lua_getfield(L, -5, "scale");
        cols[i].scale = (int)lua_tointeger(L, -1);
        lua_pop(L, 6);
        if (cols[i].type == SL_RB_DECIMAL &&
            (cols[i].precision < 1 || cols[i].precision > 76 ||
             cols[i].scale < 0 || cols[i].scale > cols[i].precision))
            return luaL_argerror(L, 2, "a decimal's precision and scale");
    }
    size_t count = sl_obatch_count(b);
    uint64_t *versions = NULL;
    if (has_versions) {
        versions = lua_newuserdata(L, count * sizeof(*versions) + 1);
        for (size_t k = 0; k < count; k++) {
            lua_rawgeti(L, 4, (int)k + 1);
            versions[k] =
                lua_isnumber(L, -1) ? (uint64_t)lua_tonumber(L, -1) : 0;
            lua_pop(L, 1);
        }
    }
    strbuf out = sized_buf(count * 96 + 1); /* about the rows' size */
    char err[300];
    int rc = sl_obatch_rowbinary(b, cols, ncols, versions, version, &out, err,
                                 sizeof(err));
    return push_encoded(L, rc, &out, err);
}

static int l_batch_free(lua_State *L) {
    sl_obatch **pb = luaL_checkudata(L, 1, BATCH_MT);
    sl_obatch_free(*pb);
    *pb = NULL;
    return 0;
}

int luaopen_sluice_outbox(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"rows", l_rows},
        {"batch", l_batch},
        {NULL, NULL},
    };
    static const luaL_Reg methods[] = {
        {"add", l_batch_add},
        {"count", l_batch_count},
        {"queued", l_batch_queued},
        {"origins", l_batch_origins},
        {"json", l_batch_json},
        {"copy_text", l_batch_copy_text},
        {"rowbinary", l_batch_rowbinary},
        {"free", l_batch_free},
        {NULL, NULL},
    };
    luaL_newmetatable(L, BATCH_MT);
    lua_pushcfunction(L, l_batch_free);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
