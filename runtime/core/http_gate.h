/* http_gate.h -- checks HTTP/1.1 requests on a connection's raw byte stream
 *
 * The HTTP server (evhttp, libevent 2.1) parses a request's headers and its
 * body in one go and calls us only when both are in. A gate sees the bytes
 * as they arrive instead, finds where each request head ends, and decides on
 * the head alone, before a byte of the body is kept:
 *
 * - conflicting Content-Length headers                     -> 400
 * - a method that requires it without "Authorization: Bearer <token>"
 *   (compared in constant time)                            -> 401
 * - a declared Content-Length over max_body                -> 413
 * - a malformed chunk size in a chunked body               -> 400
 *
 * To find the next head it frames bodies the way evhttp 2.1 does (the first
 * Transfer-Encoding "chunked" wins over Content-Length; GET, DELETE,
 * OPTIONS, CONNECT, POST, PUT and PATCH may have a body, HEAD and TRACE do
 * not; chunk sizes as evhttp reads them). Whatever it cannot frame (a head
 * over SL_GATE_MAX_HEAD, an unparsable Content-Length, a chunk over max_body)
 * is evhttp's to refuse: the gate lets the rest of the stream pass.
 *
 * A gate owns its buffer (sl_gate_free releases it); rules are the
 * caller's and must outlive every sl_gate_feed call.
 */
#ifndef SLUICE_HTTP_GATE_H
#define SLUICE_HTTP_GATE_H

#include <stddef.h>

#define SL_GATE_MAX_HEAD (64 * 1024 + 4)
#define SL_GATE_MAX_LINE 4096 /* a chunk-size or trailer line */

enum {
    SL_GATE_GET = 1 << 0,
    SL_GATE_POST = 1 << 1,
    SL_GATE_PUT = 1 << 2,
    SL_GATE_DELETE = 1 << 3,
    SL_GATE_PATCH = 1 << 4,
    SL_GATE_HEAD = 1 << 5,
    SL_GATE_OPTIONS = 1 << 6,
    SL_GATE_TRACE = 1 << 7,
    SL_GATE_CONNECT = 1 << 8
};

typedef struct sl_gate_rules {
    unsigned long long max_body; /* 0: no limit */
    const char *token;           /* NULL: no authentication */
    size_t token_len;
    unsigned auth_methods; /* SL_GATE_* methods that need the token */
} sl_gate_rules;

typedef struct sl_gate {
    int state;
    char *buf; /* the head, or the current line; NULL until needed */
    size_t len, cap;
    unsigned long long remaining; /* of a body or a chunk */
    unsigned long long body;      /* chunked: the body so far */
} sl_gate;

/* The verdict on a request the gate refused. */
typedef struct sl_gate_refusal {
    int status;        /* 400, 401 or 413 */
    const char *error; /* a static message */
} sl_gate_refusal;

void sl_gate_init(sl_gate *g);
void sl_gate_free(sl_gate *g);

/* The SL_GATE_* bit of a method name, or 0 for an unknown one. */
unsigned sl_gate_method(const char *name, size_t len);

/* Feeds the next len bytes of the stream. Returns 0 while all is well;
 * -1 when the request they belong to is refused (*why says how), after
 * which the gate refuses everything; -1 with status 0 when out of memory. */
int sl_gate_feed(sl_gate *g, const sl_gate_rules *r, const char *data,
                 size_t len, sl_gate_refusal *why);

#endif
