/* http_gate.c -- checks HTTP/1.1 request heads before their bodies are read */
#include "http_gate.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { G_HEAD, G_BODY, G_CSIZE, G_CDATA, G_TRAILER, G_PASS, G_REFUSED };

void sl_gate_init(sl_gate *g) {
    memset(g, 0, sizeof(*g));
    g->state = G_HEAD;
}

void sl_gate_free(sl_gate *g) {
    free(g->buf);
    g->buf = NULL;
    g->len = g->cap = 0;
}

unsigned sl_gate_method(const char *name, size_t len) {
    static const struct {
        const char *name;
        unsigned bit;
    } methods[] = {
        {"GET", SL_GATE_GET},         {"POST", SL_GATE_POST},
        {"PUT", SL_GATE_PUT},         {"DELETE", SL_GATE_DELETE},
        {"PATCH", SL_GATE_PATCH},     {"HEAD", SL_GATE_HEAD},
        {"OPTIONS", SL_GATE_OPTIONS}, {"TRACE", SL_GATE_TRACE},
        {"CONNECT", SL_GATE_CONNECT},
    };
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (strlen(methods[i].name) == len &&
            memcmp(methods[i].name, name, len) == 0)
            return methods[i].bit;
    return 0;
}

/* Appends to g->buf, which never grows past limit. 0, or -1 when full or
 * out of memory (errno ENOMEM). */
static int append(sl_gate *g, const char *p, size_t n, size_t limit) {
    if (g->len + n > limit) {
        errno = 0;
        return -1;
    }
    if (g->len + n > g->cap) {
        size_t cap = g->cap ? g->cap : 1024;
        while (cap < g->len + n)
            cap *= 2;
        if (cap > limit)
            cap = limit;
        char *b = realloc(g->buf, cap);
        if (!b) {
            errno = ENOMEM;
            return -1;
        }
        g->buf = b;
        g->cap = cap;
    }
    memcpy(g->buf + g->len, p, n);
    g->len += n;
    return 0;
}

/* Equal in time that depends only on the length of b (the secret). */
static int same(const char *a, size_t alen, const char *b, size_t blen) {
    unsigned diff = alen != blen;
    for (size_t i = 0; i < blen; i++)
        diff |= (unsigned char)(i < alen ? a[i] : 0) ^ (unsigned char)b[i];
    return diff == 0;
}

static int refuse(sl_gate *g, sl_gate_refusal *why, int status,
                  const char *error) {
    g->state = G_REFUSED;
    why->status = status;
    why->error = error;
    return -1;
}

typedef struct field {
    const char *p;
    size_t n;
} field;

static field trim(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        end--;
    return (field){p, (size_t)(end - p)};
}

static int is(field f, const char *s) {
    return f.n == strlen(s) && strncasecmp(f.p, s, f.n) == 0;
}

/* Decides on the head in g->buf[0, len) and sets the state for its body. */
static int judge(sl_gate *g, const sl_gate_rules *r, size_t len,
                 sl_gate_refusal *why) {
    const char *p = g->buf, *end = g->buf + len;
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *sp = memchr(p, ' ', (size_t)(eol - p));
    unsigned method = sp ? sl_gate_method(p, (size_t)(sp - p)) : 0;
    field cl = {NULL, 0}, te = {NULL, 0}, auth = {NULL, 0};
    int conflict = 0;
    for (p = eol + 1; p < end; p = eol + 1) {
        eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            break;
        if (*p == ' ' || *p == '\t') /* a folded line: evhttp joins it */
            continue;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (!colon)
            continue; /* evhttp refuses the head */
        field name = trim(p, colon), value = trim(colon + 1, eol);
        if (is(name, "Content-Length")) {
            if (!cl.p)
                cl = value;
            else if (cl.n != value.n || memcmp(cl.p, value.p, cl.n) != 0)
                conflict = 1;
        } else if (is(name, "Transfer-Encoding") && !te.p) {
            te = value;
        } else if (is(name, "Authorization") && !auth.p) {
            auth = value;
        }
    }
    if (conflict)
        return refuse(g, why, 400, "conflicting Content-Length headers");
    if (r->token && (r->auth_methods & method)) {
        static const char bearer[] = "Bearer ";
        size_t bl = sizeof(bearer) - 1;
        int ok = auth.p && auth.n > bl && memcmp(auth.p, bearer, bl) == 0 &&
                 same(auth.p + bl, auth.n - bl, r->token, r->token_len);
        if (!ok)
            return refuse(g, why, 401, "unauthorized");
    }
    unsigned bodied = SL_GATE_GET | SL_GATE_POST | SL_GATE_PUT |
                      SL_GATE_DELETE | SL_GATE_PATCH | SL_GATE_OPTIONS |
                      SL_GATE_CONNECT;
    g->state = G_HEAD;
    if (!(method & bodied))
        return 0;
    if (te.p && is(te, "chunked")) {
        g->state = G_CSIZE;
        g->body = 0;
        return 0;
    }
    if (!cl.p)
        return 0;
    unsigned long long n = 0;
    for (size_t i = 0; i < cl.n; i++) {
        if (cl.p[i] < '0' || cl.p[i] > '9' || n > (~0ULL - 9) / 10) {
            g->state = G_PASS; /* evhttp answers 400 and closes */
            return 0;
        }
        n = n * 10 + (unsigned)(cl.p[i] - '0');
    }
    if (r->max_body && n > r->max_body)
        return refuse(g, why, 413, "request body too large");
    if (n > 0) {
        g->state = G_BODY;
        g->remaining = n;
    }
    return 0;
}

/* A chunk-size line, as evhttp reads it: strtoll base 16, then nothing or
 * a space. Returns -1 when malformed. */
static long long chunk_size(const char *line) {
    char *endp;
    errno = 0;
    long long n = strtoll(line, &endp, 16);
    if (*line == '\0' || (*endp != '\0' && *endp != ' ') || n < 0 ||
        errno == ERANGE)
        return -1;
    return n;
}

int sl_gate_feed(sl_gate *g, const sl_gate_rules *r, const char *data,
                 size_t len, sl_gate_refusal *why) {
    const char *p = data, *end = data + len;
    why->status = 0;
    why->error = NULL;
    while (p < end) {
        switch (g->state) {
        case G_REFUSED:
            return refuse(g, why, 400, "refused");
        case G_PASS:
            return 0;
        case G_BODY:
        case G_CDATA: {
            size_t n = (size_t)(end - p);
            if (n > g->remaining)
                n = (size_t)g->remaining;
            g->remaining -= n;
            p += n;
            if (g->remaining == 0)
                g->state = g->state == G_BODY ? G_HEAD : G_CSIZE;
            break;
        }
        case G_HEAD: {
            if (g->len == 0) /* empty lines before a request line */
                while (p < end && (*p == '\r' || *p == '\n'))
                    p++;
            if (p == end)
                break;
            size_t from = g->len > 3 ? g->len - 3 : 0;
            size_t n = (size_t)(end - p);
            if (n > SL_GATE_MAX_HEAD - g->len)
                n = SL_GATE_MAX_HEAD - g->len;
            if (append(g, p, n, SL_GATE_MAX_HEAD) != 0)
                return errno == ENOMEM ? -1 : 0;
            size_t stop = 0;
            for (size_t i = from; i < g->len && !stop; i++)
                if (g->buf[i] == '\n' && ((i >= 1 && g->buf[i - 1] == '\n') ||
                                          (i >= 2 && g->buf[i - 1] == '\r' &&
                                           g->buf[i - 2] == '\n')))
                    stop = i + 1;
            if (!stop) {
                if (g->len >= SL_GATE_MAX_HEAD)
                    g->state = G_PASS; /* evhttp refuses it */
                p += n;
                break;
            }
            p += n - (g->len - stop); /* the rest is the body's */
            g->len = 0;
            if (judge(g, r, stop, why) != 0)
                return -1;
            if (g->cap > 4096) { /* a large head: do not keep its room */
                sl_gate_free(g);
            }
            break;
        }
        case G_CSIZE:
        case G_TRAILER: {
            const char *eol = memchr(p, '\n', (size_t)(end - p));
            size_t n = eol ? (size_t)(eol - p) : (size_t)(end - p);
            if (append(g, p, n, SL_GATE_MAX_LINE) != 0) {
                if (errno == ENOMEM)
                    return -1;
                return refuse(g, why, 400, "chunked body line too long");
            }
            p += n;
            if (!eol)
                break;
            p++;
            if (g->len > 0 && g->buf[g->len - 1] == '\r')
                g->len--;
            size_t line = g->len;
            g->len = 0;
            if (g->state == G_TRAILER) {
                if (line == 0)
                    g->state = G_HEAD;
                break;
            }
            if (line == 0) /* the CRLF after a chunk's data */
                break;
            char text[SL_GATE_MAX_LINE + 1];
            memcpy(text, g->buf, line);
            text[line] = '\0';
            long long size = chunk_size(text);
            if (size < 0)
                return refuse(g, why, 400, "bad chunk size");
            if (size == 0) {
                g->state = G_TRAILER;
            } else if (r->max_body &&
                       (unsigned long long)size > r->max_body - g->body) {
                g->state = G_PASS; /* evhttp answers 413 (rightly) */
            } else {
                g->body += (unsigned long long)size;
                g->state = G_CDATA;
                g->remaining = (unsigned long long)size;
            }
            break;
        }
        }
    }
    return 0;
}
