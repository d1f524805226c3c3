/* outbox_rowbinary.c -- an outbox batch as ClickHouse RowBinary
 *
 * See outbox_rowbinary.h. Values are read from their JSON text: numbers
 * parsed (strtod reads the shortest text the outbox wrote back to the same
 * double), strings unescaped, big integers and decimals converted digit by
 * digit into 256-bit little-endian two's complement.
 */
#include "outbox_rowbinary.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct out {
    strbuf *sb;
    strbuf scratch; /* a string's unescaped characters */
    int oom;
} out;

static void add(out *o, const void *p, size_t n) {
    if (sb_add(o->sb, p, n) != 0)
        o->oom = 1;
}

static void add_u64(out *o, uint64_t v) {
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(v >> (8 * i));
    add(o, le, 8);
}

/* A String: LEB128 length, then the bytes. */
static void add_string(out *o, const char *s, size_t n) {
    unsigned char len[10];
    int k = 0;
    size_t l = n;
    while (l >= 128) {
        len[k++] = (unsigned char)(l % 128 + 128);
        l /= 128;
    }
    len[k++] = (unsigned char)l;
    add(o, len, (size_t)k);
    add(o, s, n);
}

/* The characters of a value taken as text: a string's (unescaped), any
 * other's JSON text. NULL for a bad escape. */
static const char *text_of(out *o, const sl_obatch_field *f, size_t *n) {
    if (f->type != 's') {
        *n = f->vlen;
        return f->val;
    }
    const char *s = f->val + 1;
    size_t len = f->vlen - 2;
    if (!memchr(s, '\\', len)) {
        *n = len;
        return s;
    }
    o->scratch.len = 0;
    if (sb_add(&o->scratch, s, len) != 0) {
        o->oom = 1;
        return NULL;
    }
    long w = sl_obatch_unescape(o->scratch.p, o->scratch.p, len);
    if (w < 0)
        return NULL;
    *n = (size_t)w;
    return o->scratch.p;
}

/* A number's text, NUL-terminated in buf (numbers are short) -> 0, or -1. */
static int number_text(const sl_obatch_field *f, char *buf, size_t size) {
    if (f->type != 'n' || f->vlen >= size)
        return -1;
    memcpy(buf, f->val, f->vlen);
    buf[f->vlen] = '\0';
    return 0;
}

static const char *put_int64(out *o, const sl_obatch_field *f) {
    char buf[64], *end;
    if (number_text(f, buf, sizeof(buf)) != 0)
        return "integer expected";
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (*end != '\0' || errno) { /* 1e+20, 2.5: as a double */
        double d = strtod(buf, &end);
        if (*end != '\0' || d != (double)(long long)d || d >= 9.3e18 ||
            d <= -9.3e18)
            return "integer expected";
        v = (long long)d;
    }
    add_u64(o, (uint64_t)v);
    return NULL;
}

static const char *put_float64(out *o, const sl_obatch_field *f) {
    char buf[64], *end;
    if (number_text(f, buf, sizeof(buf)) != 0)
        return "real expected";
    double d = strtod(buf, &end);
    if (*end != '\0')
        return "real expected";
    uint64_t bits;
    memcpy(&bits, &d, 8);
    add_u64(o, bits);
    return NULL;
}

/* digits[0..n) (all decimal digits) into limbs (little-endian 64-bit);
 * 0, or -1 when beyond 2^256-1. */
static int digits_to_u256(const char *digits, size_t n, uint64_t limbs[4]) {
    memset(limbs, 0, 4 * sizeof(uint64_t));
    for (size_t i = 0; i < n; i++) {
        unsigned __int128 carry = (unsigned)(digits[i] - '0');
        for (int k = 0; k < 4; k++) {
            unsigned __int128 x = (unsigned __int128)limbs[k] * 10 + carry;
            limbs[k] = (uint64_t)x;
            carry = x >> 64;
        }
        if (carry)
            return -1;
    }
    return 0;
}

static void add_le(out *o, const uint64_t limbs[4], int negative,
                   size_t nbytes) {
    uint64_t v[4] = {limbs[0], limbs[1], limbs[2], limbs[3]};
    if (negative) { /* two's complement: invert, add one */
        unsigned carry = 1;
        for (int k = 0; k < 4; k++) {
            v[k] = ~v[k] + carry;
            carry = carry && v[k] == 0;
        }
    }
    unsigned char le[32];
    for (size_t i = 0; i < 32; i++)
        le[i] = (unsigned char)(v[i / 8] >> (8 * (i % 8)));
    add(o, le, nbytes);
}

static int all_digits(const char *s, size_t n) {
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* A uint256's digits; why in msg when it cannot. */
static int put_uint256(out *o, const sl_obatch_field *f, char *msg,
                       size_t size) {
    size_t n;
    const char *s = f->type == 's' || f->type == 'n' ? text_of(o, f, &n) : 0;
    if (!s || !all_digits(s, n)) {
        snprintf(msg, size, "uint256 expected");
        return -1;
    }
    uint64_t limbs[4];
    if (digits_to_u256(s, n, limbs) != 0) {
        snprintf(msg, size, "%.*s is beyond 2^256-1", (int)n, s);
        return -1;
    }
    add_le(o, limbs, 0, 32);
    return 0;
}

/* A decimal's text as Decimal(p, sc)'s scaled integer (4, 8, 16 or 32
 * bytes), refusing what it cannot hold exactly (what the Lua writer's
 * `scaled` refuses, with its messages). */
static int put_decimal(out *o, const sl_obatch_field *f, int p, int sc,
                       char *msg, size_t size) {
    size_t n;
    const char *s = f->type == 's' || f->type == 'n' ? text_of(o, f, &n) : 0;
    if (!s) {
        snprintf(msg, size, "decimal expected");
        return -1;
    }
    size_t i = 0;
    int negative = n > 0 && s[0] == '-';
    i = (size_t)negative;
    size_t int_from = i;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++;
    size_t int_to = i, frac_from = i, frac_to = i;
    if (i < n && s[i] == '.') {
        frac_from = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        frac_to = i;
    }
    if (int_to == int_from || i != n) {
        snprintf(msg, size, "'%.*s' is not a plain decimal (Decimal(%d, %d))",
                 (int)n, s, p, sc);
        return -1;
    }
    while (int_from < int_to && s[int_from] == '0')
        int_from++;
    while (frac_to > frac_from && s[frac_to - 1] == '0')
        frac_to--;
    if ((int)(frac_to - frac_from) > sc) {
        snprintf(msg, size, "%.*s has more than %d decimals (Decimal(%d, %d))",
                 (int)n, s, sc, p, sc);
        return -1;
    }
    if ((int)(int_to - int_from) > p - sc) {
        snprintf(msg, size,
                 "%.*s has more than %d integral digits (Decimal(%d, %d))",
                 (int)n, s, p - sc, p, sc);
        return -1;
    }
    char digits[160];
    size_t nd = 0;
    memcpy(digits, s + int_from, int_to - int_from);
    nd += int_to - int_from;
    memcpy(digits + nd, s + frac_from, frac_to - frac_from);
    nd += frac_to - frac_from;
    memset(digits + nd, '0', (size_t)sc - (frac_to - frac_from));
    nd += (size_t)sc - (frac_to - frac_from);
    uint64_t limbs[4];
    if (digits_to_u256(digits, nd, limbs) != 0) { /* p <= 76: cannot be */
        snprintf(msg, size, "%.*s does not fit Decimal(%d, %d)", (int)n, s, p,
                 sc);
        return -1;
    }
    int zero = !(limbs[0] | limbs[1] | limbs[2] | limbs[3]);
    add_le(o, limbs, negative && !zero,
           p <= 9    ? 4
           : p <= 18 ? 8
           : p <= 38 ? 16
                     : 32);
    return 0;
}

/* One non-null value; why in msg when the column cannot take it. */
static int put_value(out *o, const sl_rb_col *c, const sl_obatch_field *f,
                     char *msg, size_t size) {
    const char *why = NULL;
    size_t n;
    const char *s;
    switch (c->type) {
    case SL_RB_INT64:
        why = put_int64(o, f);
        break;
    case SL_RB_FLOAT64:
        why = put_float64(o, f);
        break;
    case SL_RB_STRING:
        s = text_of(o, f, &n);
        if (!s)
            why = "a bad \\u escape";
        else
            add_string(o, s, n);
        break;
    case SL_RB_JSON:
        add_string(o, f->val, f->vlen);
        break;
    case SL_RB_UINT8: {
        unsigned char v = f->type == 't' ||
                          (f->type == 'n' && f->vlen == 1 && f->val[0] == '1');
        add(o, &v, 1);
        break;
    }
    case SL_RB_UINT256:
        return put_uint256(o, f, msg, size);
    case SL_RB_DECIMAL:
        return put_decimal(o, f, c->precision, c->scale, msg, size);
    }
    if (why) {
        snprintf(msg, size, "%s", why);
        return -1;
    }
    return 0;
}

int sl_obatch_rowbinary(const sl_obatch *b, const sl_rb_col *cols, int ncols,
                        const uint64_t *versions, uint64_t version, strbuf *sb,
                        char *err, size_t errlen) {
    out o = {sb, {0}, 0};
    sl_obatch_col *names = calloc((size_t)ncols, sizeof(*names));
    const sl_obatch_field **at = calloc((size_t)ncols, sizeof(*at));
    sl_obatch_colcache cache = {0};
    int rc = 0;
    if (!names || !at) {
        o.oom = 1;
        goto done;
    }
    for (int j = 0; j < ncols; j++)
        names[j] = (sl_obatch_col){cols[j].name, cols[j].len, SL_OB_PLAIN};
    size_t count = sl_obatch_count(b);
    for (size_t k = 0; k < count && !o.oom; k++) {
        sl_obatch_row_columns(b, k, names, ncols, at, &cache);
        for (int j = 0; j < ncols; j++) {
            const sl_obatch_field *f = at[j];
            char msg[200];
            if (!f || f->type == 'z') {
                if (!cols[j].nullable) {
                    snprintf(msg, sizeof(msg),
                             "null in a column that is not Nullable");
                    goto refused;
                }
                add(&o, "\1", 1);
                continue;
            }
            if (cols[j].nullable)
                add(&o, "\0", 1);
            if (put_value(&o, &cols[j], f, msg, sizeof(msg)) == 0)
                continue;
        refused:
            if (errlen)
                snprintf(err, errlen, "row %zu column %.*s: %s", k + 1,
                         (int)cols[j].len, cols[j].name, msg);
            rc = -1;
            goto done;
        }
        add_u64(&o, versions && versions[k] ? versions[k] : version);
    }
done:
    if (o.oom) {
        if (errlen)
            snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    sb_free(&o.scratch);
    free(names);
    free(at);
    return rc;
}
