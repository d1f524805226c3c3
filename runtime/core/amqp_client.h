/* amqp_client.h -- one AMQP 0-9-1 connection (rabbitmq-c) on its own thread
 *
 * rabbitmq-c is a blocking client, so a handle owns a worker thread that
 * owns the connection: it connects, logs in, opens channel 1 and puts it in
 * confirm mode, and runs the operations the loop thread submits, one at a
 * time, in order. The loop never blocks: sl_amqp_submit only queues (a
 * bounded queue: a full one refuses), and each finished operation is handed
 * back through a socketpair watched by a libevent event, whose callback
 * (on the loop) calls the operation's done callback.
 *
 * Operations: CONNECT (make the connection now, to report its failure),
 * DECLARE (an exchange, and optionally a queue bound to it), PUBLISH (a
 * batch of messages, persistent, each with its message id; done when the
 * broker confirmed every one: basic.ack, or a failure at the first
 * basic.nack, returned mandatory message, closed channel or timeout) and
 * CONSUME (receive up to n messages from a queue within a time, each acked
 * after it was copied: a confirming consumer, for tests and tools). Any
 * operation connects first when there is no connection; a connection that
 * failed is dropped and made again by the next operation (the caller paces
 * retries).
 *
 * TLS (an amqps:// URL): the worker makes a TLS connection (1.2 at least)
 * whose peer is verified by default: the chain against ca_file (or the
 * system's trust store) and the host name against the URL's host (DNS
 * names and IP addresses, OpenSSL's rules), both during the handshake; a
 * client certificate is sent when cert_file and key_file are given. The
 * files are read by the worker at each connect (a renewed certificate is
 * picked up by the next connection), never on the loop.
 *
 * Abandoning (sl_amqp_abandon): the waiter is gone. An operation not yet
 * started is never run; one in progress is stopped at its next wait and its
 * connection dropped (a publish whose confirms will not be awaited leaves
 * the channel in an unknown state). done is never called for it.
 *
 * Ownership: the caller owns the handle from sl_amqp_new to sl_amqp_free
 * (both on the loop thread), and an operation from sl_amqp_op_new until it
 * is submitted; from then on the handle owns it and frees it after done
 * returns (or when abandoned). The outcome fields of an op (status, error,
 * messages) are valid only during done. sl_amqp_free abandons every
 * operation and lets the worker finish by itself (it may be inside a
 * blocking call for up to the handle's timeout): the loop never joins it.
 */
#ifndef SLUICE_AMQP_CLIENT_H
#define SLUICE_AMQP_CLIENT_H

#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sl_amqp sl_amqp;
typedef struct sl_amqp_op sl_amqp_op;

typedef enum sl_amqp_status {
    SL_AMQP_OK,
    SL_AMQP_ENACK,     /* publish: the broker nacked a message */
    SL_AMQP_ERETURNED, /* publish: a mandatory message was unroutable */
    SL_AMQP_ESERVER,   /* the broker closed the channel (code, error) */
    SL_AMQP_ECONN,     /* connecting failed or the connection was lost */
    SL_AMQP_ETIMEOUT,  /* no answer in time; the connection is dropped */
} sl_amqp_status;

typedef enum sl_amqp_kind {
    SL_AMQP_CONNECT,
    SL_AMQP_DECLARE,
    SL_AMQP_PUBLISH,
    SL_AMQP_CONSUME,
} sl_amqp_kind;

/* A message to publish, or one consumed (then exchange is "" and
 * redelivered, delivery_mode set). All strings are NUL-terminated copies
 * owned by the op. */
typedef struct sl_amqp_msg {
    char *routing_key;
    char *message_id;
    char *type; /* the "type" property; NULL: none */
    char *body;
    size_t len;
    int redelivered;
    int delivery_mode;
    char *content_type;
} sl_amqp_msg;

/* A queue argument (x-max-length, x-overflow, ...): an integer or a text. */
typedef struct sl_amqp_arg {
    char *name;
    char *text; /* NULL: integer */
    int64_t integer;
} sl_amqp_arg;

typedef void (*sl_amqp_done_fn)(sl_amqp_op *op, void *privdata);

struct sl_amqp_op {
    sl_amqp_kind kind;
    /* inputs (set by the caller before submit) */
    char *exchange;      /* DECLARE, PUBLISH */
    char *exchange_type; /* DECLARE: "topic", "direct", ...; NULL: no
                          * exchange is declared */
    int durable;         /* DECLARE: exchange and queue */
    char *queue;         /* DECLARE: a queue bound to the exchange; CONSUME */
    char *binding_key;   /* DECLARE */
    sl_amqp_arg *args;   /* DECLARE: the queue's arguments */
    int nargs;
    int mandatory; /* PUBLISH */
    sl_amqp_msg *msgs;
    size_t nmsgs;   /* PUBLISH: messages to send; CONSUME: received */
    size_t max;     /* CONSUME: at most this many */
    double wait;    /* CONSUME: seconds to wait for the first message */
    double timeout; /* PUBLISH: seconds for all confirms (0: handle's) */
    /* outcome (valid during done) */
    sl_amqp_status status;
    char error[256]; /* one line; never the URL or the password */
    int code;        /* ESERVER: the broker's reply code (404, 406...) */
    size_t confirmed;
    /* the handle's */
    sl_amqp_done_fn done;
    void *privdata;
    int abandoned;
    sl_amqp_op *next;
};

/* The strings are the caller's: sl_amqp_new copies them. The TLS fields
 * apply to an amqps:// URL only (sl_amqp_new refuses them with amqp://). */
typedef struct sl_amqp_options {
    double connect_timeout; /* seconds (socket open, handshake, login) */
    double timeout;         /* seconds per broker answer and publish batch */
    int queue_max;          /* operations queued at most (>= 1) */
    int heartbeat;          /* seconds; 0: none */
    const char *ca_file;    /* PEM CA certificates to trust; NULL: the
                             * system's trust store */
    const char *cert_file;  /* client certificate chain (PEM); with key_file */
    const char *key_file;   /* its private key (PEM, not encrypted) */
    int no_verify; /* 1: neither the chain nor the host name is checked */
} sl_amqp_options;

/* The parts of an amqp:// or amqps:// URL (amqp_parse_url: percent-decoded,
 * vhost "/" when the path is empty, port 5672 by default, 5671 for
 * amqps). */
typedef struct sl_amqp_url {
    char host[256];
    int port;
    char user[256];
    char password[256];
    char vhost[256];
    int tls; /* amqps:// */
} sl_amqp_url;

/* Parses url into *u. Returns 0, or -1 with err filled ("bad URL: ...");
 * err never quotes the URL (it may hold a password). */
int sl_amqp_parse_url(const char *url, sl_amqp_url *u, char *err,
                      size_t errlen);

/* Starts the worker for url (parsed at once: NULL with err filled when it
 * is not a valid amqp:// or amqps:// URL, TLS options come with amqp://, a
 * cert_file comes without its key_file or the other way round, or a thread
 * cannot start). The worker connects when the first operation comes. */
sl_amqp *sl_amqp_new(struct event_base *base, const char *url,
                     const sl_amqp_options *o, char *err, size_t errlen);

/* A zeroed op of that kind; NULL on out of memory. */
sl_amqp_op *sl_amqp_op_new(sl_amqp_kind kind);

/* A CONSUME that failed (the connection lost) after messages came: each
 * was acknowledged as it came, so the broker will not send them again and
 * they are its result (status OK); the failure shows at the next call,
 * which connects again. Without messages, or for other kinds, nothing
 * changes. (The worker calls it; exposed for the unit test.) */
void sl_amqp_consume_settle(sl_amqp_op *op);

/* Frees an op that was never submitted (and its strings and messages). */
void sl_amqp_op_free(sl_amqp_op *op);

/* Queues op; done(op, privdata) runs on the loop when it ended. Returns 0,
 * or -1 with err filled when the queue is full ("queue full") or the
 * handle is closing: the op stays the caller's. */
int sl_amqp_submit(sl_amqp *a, sl_amqp_op *op, sl_amqp_done_fn done,
                   void *privdata, char *err, size_t errlen);

/* The op's waiter is gone (see above). op must have been submitted to a
 * and its done not yet called. */
void sl_amqp_abandon(sl_amqp *a, sl_amqp_op *op);

/* Operations queued or running. */
int sl_amqp_pending(sl_amqp *a);

/* 1 while the worker holds an open connection. */
int sl_amqp_connected(sl_amqp *a);

/* Connections made so far. */
long sl_amqp_connects(sl_amqp *a);

/* Abandons every operation and stops the worker (it frees what it owns
 * when its current call returns). NULL is fine. */
void sl_amqp_free(sl_amqp *a);

/* Waits at most seconds until the worker of every freed handle has ended;
 * returns how many have not. Any thread. The process waits so, up to 1 s,
 * when it exits (an atexit handler registered by the first sl_amqp_new,
 * after OpenSSL's cleanup so that it runs before it): such a worker closes
 * its connection and releases what it holds before the process, and
 * OpenSSL, are gone. */
int sl_amqp_wait_workers(double seconds);

#endif
