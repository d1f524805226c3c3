/* outbox_batch.c -- the outbox's chunks to a sink's batch without Lua tables
 *
 * See outbox_batch.h. A chunk is scanned once: each row of the range taken
 * is split into fields (name and value spans in the chunk's
 * text), its key's bytes looked up in an open-addressing table of the
 * kept rows, and the row either kept or put in the place of the earlier
 * row of its key. Writing COPY text then walks the kept rows' fields.
 */
#include "outbox_batch.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg.h"

typedef sl_obatch_field field;

typedef struct row {
    size_t first; /* its fields: fields[first .. first + n) */
    uint32_t n;
    int entry, index; /* its origin */
    size_t key, klen; /* its key's bytes in keys */
} row;

struct sl_obatch {
    char **names; /* unescaped copies of field names that had escapes */
    size_t nnames, capnames;
    field *fields;
    size_t nfields, capfields;
    row *rows; /* kept */
    size_t nrows, caprows;
    size_t queued;
    size_t *slots; /* kept row + 1, 0 empty; capslots a power of two */
    size_t capslots;
    strbuf keys; /* the kept rows' key bytes */
    strbuf scratch;
    char **key;
    size_t *key_len;
    int nkeys;
};

/* -- growing arrays ------------------------------------------------------ */

static int grow(void **p, size_t *cap, size_t need, size_t size) {
    if (need <= *cap)
        return 0;
    size_t cap2 = *cap ? *cap * 2 : 64;
    while (cap2 < need)
        cap2 *= 2;
    void *q = realloc(*p, cap2 * size);
    if (!q)
        return -1;
    *p = q;
    *cap = cap2;
    return 0;
}

sl_obatch *sl_obatch_new(const char *const *keys, const size_t *key_lens,
                         int nkeys) {
    sl_obatch *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    if (nkeys > 0) {
        b->key = calloc((size_t)nkeys, sizeof(*b->key));
        b->key_len = calloc((size_t)nkeys, sizeof(*b->key_len));
        if (!b->key || !b->key_len)
            goto oom;
        b->nkeys = nkeys;
        for (int i = 0; i < nkeys; i++) {
            b->key[i] = malloc(key_lens[i] + 1);
            if (!b->key[i])
                goto oom;
            memcpy(b->key[i], keys[i], key_lens[i]);
            b->key_len[i] = key_lens[i];
        }
    }
    return b;
oom:
    sl_obatch_free(b);
    return NULL;
}

void sl_obatch_free(sl_obatch *b) {
    if (!b)
        return;
    for (size_t i = 0; i < b->nnames; i++)
        free(b->names[i]);
    free(b->names);
    free(b->fields);
    free(b->rows);
    free(b->slots);
    sb_free(&b->keys);
    sb_free(&b->scratch);
    for (int i = 0; i < b->nkeys; i++)
        free(b->key[i]);
    free(b->key);
    free(b->key_len);
    free(b);
}

size_t sl_obatch_queued(const sl_obatch *b) { return b->queued; }
size_t sl_obatch_count(const sl_obatch *b) { return b->nrows; }

void sl_obatch_origin(const sl_obatch *b, size_t k, int *entry, int *index) {
    *entry = b->rows[k].entry;
    *index = b->rows[k].index;
}

/* -- scanning JSON ------------------------------------------------------- */

static const char *ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* p at '"' -> just past the closing quote, or NULL. */
static const char *string_end(const char *p, const char *e) {
    for (p++; p < e; p++) {
        if (*p == '"')
            return p + 1;
        if (*p == '\\' && ++p == e)
            return NULL;
    }
    return NULL;
}

/* The end of the JSON value at p (its type in *type), or NULL. Nested
 * values are skipped by their brackets (the text was written by a JSON
 * encoder; a malformed one is an error, not a crash). */
static const char *value_end(const char *p, const char *e, char *type) {
    if (p >= e)
        return NULL;
    switch (*p) {
    case '"':
        *type = 's';
        return string_end(p, e);
    case '{':
    case '[': {
        *type = 'o';
        int depth = 0;
        while (p < e) {
            char c = *p;
            if (c == '"') {
                p = string_end(p, e);
                if (!p)
                    return NULL;
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return p + 1;
            }
            p++;
        }
        return NULL;
    }
    case 't':
        *type = 't';
        return e - p >= 4 && !memcmp(p, "true", 4) ? p + 4 : NULL;
    case 'f':
        *type = 'f';
        return e - p >= 5 && !memcmp(p, "false", 5) ? p + 5 : NULL;
    case 'n':
        *type = 'z';
        return e - p >= 4 && !memcmp(p, "null", 4) ? p + 4 : NULL;
    default:
        if (*p != '-' && (*p < '0' || *p > '9'))
            return NULL;
        *type = 'n';
        const char *q = p + 1;
        while (q < e && ((*q >= '0' && *q <= '9') || *q == '.' || *q == 'e' ||
                         *q == 'E' || *q == '+' || *q == '-'))
            q++;
        return q;
    }
}

static unsigned hexval(char c) {
    if (c >= '0' && c <= '9')
        return (unsigned)(c - '0');
    if (c >= 'a' && c <= 'f')
        return (unsigned)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F')
        return (unsigned)(c - 'A' + 10);
    return 16;
}

static int hex4(const char *p, const char *e, unsigned *cp) {
    if (e - p < 4)
        return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned h = hexval(p[i]);
        if (h > 15)
            return -1;
        v = v << 4 | h;
    }
    *cp = v;
    return 0;
}

/* Decodes the escape at s (just past its backslash) into out[0..*n): the
 * bytes it stands for. Returns the escape's length past the backslash, or
 * 0 when it is malformed or a lone surrogate. */
static size_t unescape_one(const char *s, const char *e, char out[4],
                           size_t *n) {
    if (s >= e)
        return 0;
    *n = 1;
    switch (*s) {
    case '"':
    case '\\':
    case '/':
        out[0] = *s;
        return 1;
    case 'b':
        out[0] = '\b';
        return 1;
    case 'f':
        out[0] = '\f';
        return 1;
    case 'n':
        out[0] = '\n';
        return 1;
    case 'r':
        out[0] = '\r';
        return 1;
    case 't':
        out[0] = '\t';
        return 1;
    case 'u':
        break;
    default:
        return 0;
    }
    unsigned cp, lo;
    size_t used = 5;
    if (hex4(s + 1, e, &cp) != 0)
        return 0;
    if (cp >= 0xDC00 && cp <= 0xDFFF)
        return 0;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (e - s < 11 || s[5] != '\\' || s[6] != 'u' ||
            hex4(s + 7, e, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
            return 0;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        used = 11;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
    } else if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        *n = 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        *n = 3;
    } else {
        out[0] = (char)(0xF0 | cp >> 18);
        out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[3] = (char)(0x80 | (cp & 0x3F));
        *n = 4;
    }
    return used;
}

/* Unescapes s[0..n) (a string's text between its quotes) into dst, which
 * may be s itself (what an escape stands for is never longer than it).
 * Returns the length written, or -1 for a bad escape. */
static long unescape_into(char *dst, const char *s, size_t n) {
    const char *e = s + n;
    size_t w = 0;
    while (s < e) {
        if (*s != '\\') {
            dst[w++] = *s++;
            continue;
        }
        char bytes[4];
        size_t k;
        size_t used = unescape_one(s + 1, e, bytes, &k);
        if (!used)
            return -1;
        memcpy(dst + w, bytes, k);
        w += k;
        s += 1 + used;
    }
    return (long)w;
}

long sl_obatch_unescape(char *dst, const char *s, size_t n) {
    return unescape_into(dst, s, n);
}

/* -- adding rows --------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, int a, int b) {
    if (errlen)
        snprintf(err, errlen, fmt, a, b);
}

/* The fields of the object at p (appended to b->fields) -> its end, or
 * NULL. */
static const char *split_row(sl_obatch *b, const char *p, const char *e) {
    if (p >= e || *p != '{')
        return NULL;
    p = ws(p + 1, e);
    if (p < e && *p == '}')
        return p + 1;
    for (;;) {
        if (p >= e || *p != '"')
            return NULL;
        const char *ne = string_end(p, e);
        if (!ne)
            return NULL;
        const char *name = p + 1;
        size_t nlen = (size_t)(ne - 1 - name);
        if (memchr(name, '\\', nlen)) { /* rare: an unescaped copy */
            char *copy = malloc(nlen + 1);
            if (!copy || grow((void **)&b->names, &b->capnames, b->nnames + 1,
                              sizeof(char *)) != 0) {
                free(copy);
                return NULL;
            }
            b->names[b->nnames++] = copy;
            long w = unescape_into(copy, name, nlen);
            if (w < 0)
                return NULL;
            name = copy;
            nlen = (size_t)w;
        }
        p = ws(ne, e);
        if (p >= e || *p != ':')
            return NULL;
        p = ws(p + 1, e);
        char type;
        const char *ve = value_end(p, e, &type);
        if (!ve)
            return NULL;
        if (grow((void **)&b->fields, &b->capfields, b->nfields + 1,
                 sizeof(field)) != 0)
            return NULL;
        b->fields[b->nfields++] =
            (field){name, p, (uint32_t)nlen, (uint32_t)(ve - p), type};
        p = ws(ve, e);
        if (p < e && *p == ',') {
            p = ws(p + 1, e);
            continue;
        }
        if (p < e && *p == '}')
            return p + 1;
        return NULL;
    }
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

/* Appends the key of the row whose fields are f[0..n) to b->keys: per key
 * field, a type byte, its length and its bytes (a string's characters, any
 * other value's text; an absent field 'a'). -1 out of memory or a bad
 * escape. */
static int key_bytes(sl_obatch *b, const field *f, uint32_t n) {
    for (int k = 0; k < b->nkeys; k++) {
        const field *hit = NULL;
        for (uint32_t i = 0; i < n; i++)
            if (f[i].nlen == b->key_len[k] &&
                !memcmp(f[i].name, b->key[k], f[i].nlen)) {
                hit = &f[i];
                break;
            }
        char type = hit ? hit->type : 'a';
        const char *v = hit ? hit->val : "";
        size_t vlen = hit ? hit->vlen : 0;
        if (type == 's') {
            v++;
            vlen -= 2;
            if (memchr(v, '\\', vlen)) {
                b->scratch.len = 0;
                if (sb_add(&b->scratch, v, vlen) != 0)
                    return -1;
                long w = unescape_into(b->scratch.p, b->scratch.p, vlen);
                if (w < 0)
                    return -1;
                v = b->scratch.p;
                vlen = (size_t)w;
            }
        }
        uint32_t len32 = (uint32_t)vlen;
        if (sb_add(&b->keys, &type, 1) != 0 ||
            sb_add(&b->keys, (const char *)&len32, sizeof(len32)) != 0 ||
            sb_add(&b->keys, v, vlen) != 0)
            return -1;
    }
    return 0;
}

static int rehash(sl_obatch *b) {
    size_t cap = b->capslots ? b->capslots * 2 : 256;
    size_t *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -1;
    for (size_t k = 0; k < b->nrows; k++) {
        size_t i =
            hash_bytes(b->keys.p + b->rows[k].key, b->rows[k].klen) & (cap - 1);
        while (slots[i])
            i = (i + 1) & (cap - 1);
        slots[i] = k + 1;
    }
    free(b->slots);
    b->slots = slots;
    b->capslots = cap;
    return 0;
}

/* Keeps the row just split (fields[first..nfields)), or puts it in the
 * place of the kept row of its key. -1 out of memory / bad key text. */
static int keep(sl_obatch *b, size_t first, int entry, int index) {
    row r = {first, (uint32_t)(b->nfields - first), entry, index, 0, 0};
    if (b->nkeys > 0) {
        r.key = b->keys.len;
        if (key_bytes(b, b->fields + first, r.n) != 0)
            return -1;
        r.klen = b->keys.len - r.key;
        if ((b->nrows + 1) * 2 > b->capslots && rehash(b) != 0)
            return -1;
        size_t i = hash_bytes(b->keys.p + r.key, r.klen) & (b->capslots - 1);
        while (b->slots[i]) {
            row *o = &b->rows[b->slots[i] - 1];
            if (o->klen == r.klen &&
                !memcmp(b->keys.p + o->key, b->keys.p + r.key, r.klen)) {
                b->keys.len = r.key; /* the kept row's bytes are the same */
                r.key = o->key;
                *o = r;
                return 0;
            }
            i = (i + 1) & (b->capslots - 1);
        }
        b->slots[i] = b->nrows + 1;
    }
    if (grow((void **)&b->rows, &b->caprows, b->nrows + 1, sizeof(row)) != 0)
        return -1;
    b->rows[b->nrows++] = r;
    return 0;
}

int sl_obatch_add(sl_obatch *b, const char *text, size_t len, int lo, int hi,
                  int entry, char *err, size_t errlen) {
    const char *p = ws(text, text + len), *e = text + len;
    if (p >= e || *p != '[') {
        set_err(err, errlen, "not a JSON array", 0, 0);
        return -1;
    }
    p = ws(p + 1, e);
    int i = 0;
    if (p < e && *p == ']')
        goto short_chunk;
    for (i = 1; i <= hi; i++) {
        if (i < lo) {
            char type;
            p = value_end(p, e, &type);
        } else {
            size_t first = b->nfields;
            p = split_row(b, p, e);
            if (p) {
                b->queued++;
                if (keep(b, first, entry, i) != 0) {
                    set_err(err, errlen, "row %d: a bad key (or out of memory)",
                            i, 0);
                    return -1;
                }
            }
        }
        if (!p) {
            set_err(err, errlen, "row %d: not a JSON object of fields", i, 0);
            return -1;
        }
        p = ws(p, e);
        if (i == hi)
            return 0;
        if (p < e && *p == ',') {
            p = ws(p + 1, e);
            continue;
        }
        if (p < e && *p == ']')
            break;
        set_err(err, errlen, "row %d: not followed by , or ]", i, 0);
        return -1;
    }
short_chunk:
    set_err(err, errlen, "%d rows, row %d asked for", i, hi);
    return -1;
}

/* -- writing ------------------------------------------------------------- */

int sl_obatch_json(const sl_obatch *b, strbuf *out) {
    if (sb_add(out, "[", 1) != 0)
        return -1;
    for (size_t k = 0; k < b->nrows; k++) {
        const row *r = &b->rows[k];
        if (k && sb_add(out, ",", 1) != 0)
            return -1;
        if (sb_add(out, "{", 1) != 0)
            return -1;
        for (uint32_t i = 0; i < r->n; i++) {
            const field *f = &b->fields[r->first + i];
            /* the name as text again: unescaped in place, so escape what
             * JSON must (column names rarely have any) */
            if ((i && sb_add(out, ",", 1) != 0) || sb_add(out, "\"", 1) != 0)
                return -1;
            size_t from = 0;
            for (size_t j = 0; j < f->nlen; j++) {
                unsigned char c = (unsigned char)f->name[j];
                if (c >= 0x20 && c != '"' && c != '\\')
                    continue;
                char esc[8];
                snprintf(esc, sizeof(esc), "\\u%04x", c);
                if (sb_add(out, f->name + from, j - from) != 0 ||
                    sb_add(out, esc, 6) != 0)
                    return -1;
                from = j + 1;
            }
            if (sb_add(out, f->name + from, f->nlen - from) != 0 ||
                sb_add(out, "\":", 2) != 0 || sb_add(out, f->val, f->vlen) != 0)
                return -1;
        }
        if (sb_add(out, "}", 1) != 0)
            return -1;
    }
    return sb_add(out, "]", 1);
}

/* A string's characters (s[0..n): between its quotes) as a COPY field:
 * escapes decoded, and what COPY's text format escapes (backslash, tab,
 * newline, carriage return) escaped. -1 bad escape, -2 a NUL, -3 oom. */
static int put_copy_string(strbuf *out, const char *s, size_t n) {
    const char *e = s + n, *from = s;
    while (s < e) {
        const char *bs = memchr(s, '\\', (size_t)(e - s));
        if (!bs)
            break;
        char bytes[4];
        size_t k;
        size_t used = unescape_one(bs + 1, e, bytes, &k);
        if (!used)
            return -1;
        if (sb_add(out, from, (size_t)(bs - from)) != 0)
            return -3;
        if (k == 1 && bytes[0] == '\0')
            return -2;
        if (k == 1 && (bytes[0] == '\\' || bytes[0] == '\t' ||
                       bytes[0] == '\n' || bytes[0] == '\r')) {
            char esc[2] = {'\\', bytes[0] == '\\'   ? '\\'
                                 : bytes[0] == '\t' ? 't'
                                 : bytes[0] == '\n' ? 'n'
                                                    : 'r'};
            if (sb_add(out, esc, 2) != 0)
                return -3;
        } else if (sb_add(out, bytes, k) != 0) {
            return -3;
        }
        s = from = bs + 1 + used;
    }
    return sb_add(out, from, (size_t)(e - from)) != 0 ? -3 : 0;
}

/* A string's bytes as bytea hex input, escaped for COPY (\\x...). */
static int put_bytea(strbuf *out, strbuf *scratch, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    scratch->len = 0;
    if (sb_add(scratch, s, n) != 0)
        return -3;
    long w = unescape_into(scratch->p, scratch->p, n);
    if (w < 0)
        return -1;
    if (sb_add(out, "\\\\x", 3) != 0)
        return -3;
    for (long i = 0; i < w; i++) {
        unsigned char c = (unsigned char)scratch->p[i];
        char two[2] = {hex[c >> 4], hex[c & 15]};
        if (sb_add(out, two, 2) != 0)
            return -3;
    }
    return 0;
}

void sl_obatch_row_columns(const sl_obatch *b, size_t k,
                           const sl_obatch_col *cols, int ncols,
                           const sl_obatch_field **at,
                           sl_obatch_colcache *cache) {
    const row *r = &b->rows[k];
    memset(at, 0, (size_t)ncols * sizeof(*at));
    for (uint32_t i = 0; i < r->n; i++) {
        const field *f = &b->fields[r->first + i];
        int c = -1;
        if (i < SL_OBATCH_CACHE && cache->name[i] && cache->len[i] == f->nlen &&
            !memcmp(cache->name[i], f->name, f->nlen)) {
            c = cache->col[i];
        } else {
            for (int j = 0; j < ncols; j++)
                if (cols[j].len == f->nlen &&
                    !memcmp(cols[j].name, f->name, f->nlen)) {
                    c = j;
                    break;
                }
            if (i < SL_OBATCH_CACHE) {
                cache->name[i] = f->name;
                cache->len[i] = f->nlen;
                cache->col[i] = c;
            }
        }
        if (c >= 0)
            at[c] = f;
    }
}

int sl_obatch_copy_text(const sl_obatch *b, const sl_obatch_col *cols,
                        int ncols, strbuf *out, char *err, size_t errlen) {
    sl_obatch *mb = (sl_obatch *)b; /* its scratch buffer only */
    const field **at = calloc((size_t)ncols, sizeof(*at));
    sl_obatch_colcache cache = {0};
    if (!at)
        goto oom;
    for (size_t k = 0; k < b->nrows; k++) {
        sl_obatch_row_columns(b, k, cols, ncols, at, &cache);
        for (int j = 0; j < ncols; j++) {
            const field *f = at[j];
            if (j && sb_add(out, "\t", 1) != 0)
                goto oom;
            int rc = 0;
            if (!f || f->type == 'z')
                rc = sb_add(out, "\\N", 2) != 0 ? -3 : 0;
            else if (cols[j].kind == SL_OB_JSON || f->type == 'o')
                rc = sl_pg_copy_escape(out, f->val, f->vlen) != 0 ? -3 : 0;
            else if (f->type == 's' && cols[j].kind == SL_OB_BYTEA)
                rc = put_bytea(out, &mb->scratch, f->val + 1, f->vlen - 2);
            else if (f->type == 's')
                rc = put_copy_string(out, f->val + 1, f->vlen - 2);
            else /* numbers, true, false: their text */
                rc = sb_add(out, f->val, f->vlen) != 0 ? -3 : 0;
            if (rc == -3)
                goto oom;
            if (rc < 0) {
                if (errlen)
                    snprintf(err, errlen, "row %zu column %.*s: %s", k + 1,
                             (int)cols[j].len, cols[j].name,
                             rc == -2 ? "a NUL character (PostgreSQL text "
                                        "cannot hold one)"
                                      : "a bad \\u escape");
                free(at);
                return -1;
            }
        }
        if (sb_add(out, "\n", 1) != 0)
            goto oom;
    }
    free(at);
    return 0;
oom:
    free(at);
    if (errlen)
        snprintf(err, errlen, "out of memory");
    return -1;
}
