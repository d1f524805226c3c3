/* ws_conn.h -- one WebSocket client connection on libevent, frames by wslay
 *
 * A connection is a bufferevent (a plain socket, or OpenSSL through
 * libevent's bufferevent_openssl with the certificate and host name
 * verified), the HTTP upgrade of ws_handshake.c, then a wslay event
 * context whose recv/send callbacks read the bufferevent's input and write
 * its output. wslay parses and reassembles frames, answers pings and the
 * peer's close; nothing here parses a frame.
 *
 * Received messages wait in a FIFO owned by the connection until the owner
 * takes them (sl_ws_peek / sl_ws_pop). Memory stays bounded:
 * - a message over max_message bytes fails the connection ("message too
 *   big", close 1009 sent by wslay before it allocates the message);
 * - backpressure: when the FIFO holds max_buffer / 2 bytes or more, the
 *   connection stops reading its socket (the peer's sends then block in
 *   TCP) until the owner has taken it below max_buffer / 4; pings and the
 *   dead-peer check are suspended meanwhile (nothing is read, so silence
 *   proves nothing);
 * - a message that would take the FIFO beyond max_buffer (when it is not
 *   empty) fails the connection: "slow consumer: ...";
 * - sends beyond max_buffer bytes not yet written to the socket are refused
 *   ("send buffer full"), the connection stays up.
 * Keepalive: every ping_interval seconds (0: never) a ping goes out unless
 * one is outstanding; if nothing at all is read within ping_timeout after
 * it, the connection fails "dead peer: no pong within Ns".
 *
 * Notification: the owner's notify callback runs from the loop (an event
 * made active, never inside wslay or a caller's own call) whenever
 * something it may wait for happened: the connect finished (state OPEN or
 * ENDED), messages arrived, or the connection ended. It may call anything
 * here except sl_ws_free.
 *
 * Ending: the connection ENDS once, with a reason (sl_ws_reason): "closed:
 * <code> <reason>" for a close handshake (either side's; the reason, or the
 * code's name when the frame had none), else a cause: "connection reset",
 * "connection lost: ...", "dead peer: ...", "slow consumer: ...",
 * "protocol error: ...", "message too big: ...", "tls: ...",
 * "timeout: ...", "handshake: ...", "dns: ...", "connect: ...". Messages
 * received before a remote end stay in the FIFO; a local close
 * (sl_ws_close) drops them.
 *
 * Ownership: the caller owns the handle from sl_ws_connect to sl_ws_free.
 * sl_ws_free never calls notify again; a connection still open is told
 * 1001 and its socket is kept for at most a second, owned by this module,
 * so the close frame gets out (sl_ws_free_all frees such sockets at
 * process exit, before the event base goes). Strings returned point into
 * the handle and live until its next call.
 */
#ifndef SLUICE_WS_CONN_H
#define SLUICE_WS_CONN_H

#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>

struct evdns_base;
typedef struct sl_ws sl_ws;

typedef struct sl_ws_opts {
    const char *host;        /* name or IP literal (no brackets) */
    int port;                /* 1..65535 */
    const char *path;        /* path and query, "/..." */
    int tls;                 /* wss: */
    const char *headers;     /* extra "Name: value\r\n" lines, or NULL */
    const char *protocols;   /* "a, b" (Sec-WebSocket-Protocol) or NULL */
    double timeout;          /* connect + TLS + upgrade, seconds */
    size_t max_message;      /* bytes */
    size_t max_buffer;       /* bytes */
    double ping_interval;    /* seconds; 0: no keepalive pings */
    double ping_timeout;     /* seconds */
    const char *ca_file;     /* PEM file of trusted CAs, or NULL: system */
    int verify;              /* verify certificate and host name */
    const char *server_name; /* SNI and verified name, or NULL: host */
} sl_ws_opts;

typedef enum sl_ws_state {
    SL_WS_CONNECTING, /* resolving, connecting, TLS, upgrade */
    SL_WS_OPEN,
    SL_WS_CLOSING, /* sl_ws_close sent a close frame; waiting for the peer's */
    SL_WS_ENDED    /* sl_ws_reason says why */
} sl_ws_state;

typedef void (*sl_ws_notify_fn)(sl_ws *c, void *privdata);

typedef struct sl_ws_stats {
    uint64_t messages_in, bytes_in, messages_out, bytes_out;
    size_t buffered;       /* bytes of messages in the FIFO */
    size_t queued;         /* messages in the FIFO */
    uint64_t pings, pongs; /* keepalive pings sent, pongs received */
    uint64_t pings_in;     /* pings received (answered by wslay) */
    uint64_t stalls;       /* times reading stopped for backpressure */
    double connected_at;   /* wall-clock seconds of the upgrade, or 0 */
} sl_ws_stats;

/* Starts connecting; notify runs when the connection is OPEN or ENDED.
 * dns resolves host names without blocking (NULL: only IP literals work
 * without blocking). Returns the handle, or NULL with err filled when
 * nothing could be started (out of memory, a TLS context or ca_file that
 * cannot be loaded). */
sl_ws *sl_ws_connect(struct event_base *base, struct evdns_base *dns,
                     const sl_ws_opts *o, sl_ws_notify_fn notify,
                     void *privdata, char *err, size_t errlen);

sl_ws_state sl_ws_get_state(const sl_ws *c);

/* Why the connection ended (or is closing); "" while it has not. */
const char *sl_ws_reason(const sl_ws *c);

/* The subprotocol the server chose, "" when none. */
const char *sl_ws_protocol(const sl_ws *c);

/* The oldest message not yet taken: returns 1 and sets data, len (valid
 * until sl_ws_pop or sl_ws_free) and binary; 0 when there is none. */
int sl_ws_peek(sl_ws *c, const char **data, size_t *len, int *binary);

/* Drops the oldest message (reading resumes once enough is taken). */
void sl_ws_pop(sl_ws *c);

/* Queues a text or binary message (copied). Returns 0, or -1 with err:
 * the end reason when the connection is not OPEN, "send buffer full: ..."
 * (the connection stays up), or a failure that ended it. */
int sl_ws_send(sl_ws *c, const void *data, size_t len, int binary, char *err,
               size_t errlen);

/* Starts the closing handshake with code (1000..4999, not 1004-1006, 1015)
 * and reason (at most 123 bytes): drops the FIFO, sends the close frame,
 * and ENDS when the peer's close frame or EOF arrives, or after timeout
 * seconds. The reason becomes "closed: <code> <reason>". Returns 0 when the
 * handshake started, 1 when the connection had already ended or is closing
 * (nothing done). A connection still CONNECTING ends at once. */
int sl_ws_close(sl_ws *c, int code, const char *reason, size_t len,
                double timeout);

void sl_ws_get_stats(const sl_ws *c, sl_ws_stats *st);

/* Frees the handle (see "Ownership" above). NULL is fine. */
void sl_ws_free(sl_ws *c);

/* Frees the sockets sl_ws_free left draining; at process exit. */
void sl_ws_free_all(void);

/* The name of a close code ("normal", "going away", ...), "" if none. */
const char *sl_ws_code_name(int code);

#endif
