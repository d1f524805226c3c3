/* amqp_client.c -- one AMQP connection (rabbitmq-c, TCP or TLS) on a worker
 * thread, results handed back to the libevent loop through a socketpair
 *
 * The handle, its worker and the protocol the worker speaks; URL parsing
 * and the operations' allocation are amqp_op.c's. */
#include "amqp_client.h"
#include "amqp_tls.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHANNEL 1
#define SLICE 0.1 /* seconds between checks for abandonment while waiting */

struct sl_amqp {
    pthread_mutex_t mu;
    pthread_cond_t work;
    sl_amqp_op *head, *tail; /* queued, not started */
    sl_amqp_op *running;     /* the worker's current op */
    sl_amqp_op *done_head, *done_tail;
    int pending; /* queued + running */
    int closing;
    int refs; /* the loop's and the worker's */
    int rfd, wfd;
    struct event *ev;
    sl_amqp_options o; /* without its strings: the copies are in tls */
    sl_amqp_url url;
    long connects;
    int connected;
    /* the worker's alone */
    amqp_connection_state_t conn;
    uint64_t next_tag;
    char *consuming; /* the queue basic.consume was sent for */
    sl_amqp_tls tls; /* amqps (its host is url.host) */
};

static void set_error(sl_amqp_op *op, sl_amqp_status st, const char *fmt, ...) {
    va_list ap;
    op->status = st;
    va_start(ap, fmt);
    vsnprintf(op->error, sizeof(op->error), fmt, ap);
    va_end(ap);
}

static struct timeval tv_of(double s) {
    struct timeval tv;
    if (s < 0)
        s = 0;
    tv.tv_sec = (time_t)s;
    tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
    return tv;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int is_abandoned(sl_amqp_op *op) {
    return __atomic_load_n(&op->abandoned, __ATOMIC_ACQUIRE);
}

/* --- the worker: connection ---------------------------------------------- */

static void drop(sl_amqp *a) {
    if (!a->conn)
        return;
    /* A clean close needs the broker's answer: bounded by the rpc timeout,
     * and skipped by destroy when the socket is already gone. */
    amqp_connection_close(a->conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(a->conn);
    a->conn = NULL;
    free(a->consuming);
    a->consuming = NULL;
    pthread_mutex_lock(&a->mu);
    a->connected = 0;
    pthread_mutex_unlock(&a->mu);
}

/* 0 when r is a normal reply; else the op's error, the connection dropped */
static int check_reply(sl_amqp *a, sl_amqp_op *op, amqp_rpc_reply_t r,
                       const char *what) {
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return 0;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION: {
        char why[128] = "";
        /* a TLS alert (the broker wants a client certificate) */
        if (r.library_error == AMQP_STATUS_SSL_ERROR)
            sl_amqp_tls_reason(why, sizeof(why));
        set_error(op,
                  r.library_error == AMQP_STATUS_TIMEOUT ? SL_AMQP_ETIMEOUT
                                                         : SL_AMQP_ECONN,
                  "%s: %s%s", what, amqp_error_string2(r.library_error), why);
        break;
    }
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *m = r.reply.decoded;
            op->code = m->reply_code;
            set_error(op, SL_AMQP_ESERVER, "%s: %d %.*s", what, m->reply_code,
                      (int)m->reply_text.len, (char *)m->reply_text.bytes);
        } else if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *m = r.reply.decoded;
            op->code = m->reply_code;
            set_error(op, SL_AMQP_ECONN, "%s: %d %.*s", what, m->reply_code,
                      (int)m->reply_text.len, (char *)m->reply_text.bytes);
        } else {
            set_error(op, SL_AMQP_ECONN, "%s: unexpected method 0x%08x", what,
                      (unsigned)r.reply.id);
        }
        break;
    default:
        set_error(op, SL_AMQP_ECONN, "%s: no reply", what);
    }
    drop(a);
    return -1;
}

/* --- the worker: connecting ---------------------------------------------- */

static int ensure_connected(sl_amqp *a, sl_amqp_op *op) {
    if (a->conn)
        return 0;
    amqp_connection_state_t c = amqp_new_connection();
    if (!c) {
        set_error(op, SL_AMQP_ECONN, "out of memory");
        return -1;
    }
    a->conn = c;
    amqp_socket_t *s;
    if (a->url.tls) {
        if (!(s = sl_amqp_tls_socket(c, &a->tls, op->error, sizeof(op->error))))
            op->status = SL_AMQP_ECONN;
    } else if (!(s = amqp_tcp_socket_new(c)))
        set_error(op, SL_AMQP_ECONN, "out of memory");
    if (!s) {
        amqp_destroy_connection(c); /* and the socket amqp_*_new gave it */
        a->conn = NULL;
        return -1;
    }
    struct timeval ct = tv_of(a->o.connect_timeout);
    struct timeval rt = tv_of(a->o.timeout);
    int rc = amqp_socket_open_noblock(s, a->url.host, a->url.port, &ct);
    if (rc != AMQP_STATUS_OK) {
        char why[128] = "";
        if (a->tls.verify_error[0])
            set_error(op, SL_AMQP_ECONN,
                      "connect to %s:%d: TLS: certificate verify failed: %s",
                      a->url.host, a->url.port, a->tls.verify_error);
        else
            set_error(op,
                      rc == AMQP_STATUS_TIMEOUT ? SL_AMQP_ETIMEOUT
                                                : SL_AMQP_ECONN,
                      "connect to %s:%d: %s%s", a->url.host, a->url.port,
                      amqp_error_string2(rc),
                      a->url.tls && rc != AMQP_STATUS_TIMEOUT
                          ? sl_amqp_tls_reason(why, sizeof(why))
                          : "");
        amqp_destroy_connection(c);
        a->conn = NULL;
        return -1;
    }
    amqp_set_handshake_timeout(c, &ct);
    amqp_set_rpc_timeout(c, &rt);
    amqp_rpc_reply_t r =
        amqp_login(c, a->url.vhost, 0, 131072, a->o.heartbeat,
                   AMQP_SASL_METHOD_PLAIN, a->url.user, a->url.password);
    if (check_reply(a, op, r, "login") != 0)
        return -1;
    amqp_channel_open(c, CHANNEL);
    if (check_reply(a, op, amqp_get_rpc_reply(c), "channel.open") != 0)
        return -1;
    amqp_confirm_select(c, CHANNEL);
    if (check_reply(a, op, amqp_get_rpc_reply(c), "confirm.select") != 0)
        return -1;
    a->next_tag = 0;
    pthread_mutex_lock(&a->mu);
    a->connected = 1;
    a->connects++;
    pthread_mutex_unlock(&a->mu);
    return 0;
}

/* --- the worker: operations ---------------------------------------------- */

static amqp_bytes_t bytes_of(const char *s) {
    return amqp_cstring_bytes(s ? s : "");
}

static void run_declare(sl_amqp *a, sl_amqp_op *op) {
    if (op->exchange_type) {
        amqp_exchange_declare(a->conn, CHANNEL, bytes_of(op->exchange),
                              bytes_of(op->exchange_type), 0, op->durable, 0, 0,
                              amqp_empty_table);
        if (check_reply(a, op, amqp_get_rpc_reply(a->conn),
                        "exchange.declare") != 0)
            return;
    }
    if (!op->queue)
        return;
    amqp_table_entry_t *e = calloc((size_t)op->nargs + 1, sizeof(*e));
    if (!e) {
        set_error(op, SL_AMQP_ECONN, "out of memory");
        return;
    }
    for (int i = 0; i < op->nargs; i++) {
        e[i].key = amqp_cstring_bytes(op->args[i].name);
        if (op->args[i].text) {
            e[i].value.kind = AMQP_FIELD_KIND_UTF8;
            e[i].value.value.bytes = amqp_cstring_bytes(op->args[i].text);
        } else {
            e[i].value.kind = AMQP_FIELD_KIND_I64;
            e[i].value.value.i64 = op->args[i].integer;
        }
    }
    amqp_table_t t = {.num_entries = op->nargs, .entries = e};
    amqp_queue_declare(a->conn, CHANNEL, bytes_of(op->queue), 0, op->durable, 0,
                       0, t);
    free(e);
    if (check_reply(a, op, amqp_get_rpc_reply(a->conn), "queue.declare") != 0)
        return;
    if (op->exchange && op->exchange[0]) {
        amqp_queue_bind(a->conn, CHANNEL, bytes_of(op->queue),
                        bytes_of(op->exchange), bytes_of(op->binding_key),
                        amqp_empty_table);
        check_reply(a, op, amqp_get_rpc_reply(a->conn), "queue.bind");
    }
}

/* Confirms of this batch: tags first..first+n-1. */
typedef struct confirms {
    uint64_t first;
    size_t n;
    unsigned char *state; /* 0 waiting, 1 acked, 2 nacked */
    size_t settled, nacked, returned;
    size_t first_nacked;
    char return_text[96];
} confirms;

static void settle(confirms *c, uint64_t tag, int multiple, int how) {
    uint64_t lo = multiple ? c->first : tag;
    for (uint64_t t = lo; t <= tag; t++) {
        if (t < c->first || t >= c->first + c->n)
            continue; /* an earlier batch's */
        size_t i = (size_t)(t - c->first);
        if (c->state[i])
            continue;
        c->state[i] = (unsigned char)how;
        c->settled++;
        if (how == 2 && c->nacked++ == 0)
            c->first_nacked = i;
    }
}

/* Reads one frame (waiting at most s seconds) and settles what it says.
 * 1: a frame was handled, 0: nothing came, -1: op failed (conn dropped). */
static int read_confirm(sl_amqp *a, sl_amqp_op *op, confirms *c, double s) {
    amqp_frame_t f;
    struct timeval tv = tv_of(s);
    int rc = amqp_simple_wait_frame_noblock(a->conn, &f, &tv);
    if (rc == AMQP_STATUS_TIMEOUT)
        return 0;
    if (rc != AMQP_STATUS_OK) {
        char why[128] = "";
        if (rc == AMQP_STATUS_SSL_ERROR)
            sl_amqp_tls_reason(why, sizeof(why));
        set_error(op, SL_AMQP_ECONN, "waiting for confirms: %s%s",
                  amqp_error_string2(rc), why);
        drop(a);
        return -1;
    }
    if (f.frame_type != AMQP_FRAME_METHOD)
        return 1;
    switch (f.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
        amqp_basic_ack_t *m = f.payload.method.decoded;
        settle(c, m->delivery_tag, m->multiple, 1);
        return 1;
    }
    case AMQP_BASIC_NACK_METHOD: {
        amqp_basic_nack_t *m = f.payload.method.decoded;
        settle(c, m->delivery_tag, m->multiple, 2);
        return 1;
    }
    case AMQP_BASIC_RETURN_METHOD: {
        amqp_basic_return_t *m = f.payload.method.decoded;
        if (c->returned++ == 0)
            snprintf(c->return_text, sizeof(c->return_text), "%d %.*s",
                     m->reply_code, (int)m->reply_text.len,
                     (char *)m->reply_text.bytes);
        amqp_message_t msg; /* its header and body follow: skip them */
        amqp_rpc_reply_t r = amqp_read_message(a->conn, f.channel, &msg, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            return check_reply(a, op, r, "basic.return");
        amqp_destroy_message(&msg);
        return 1;
    }
    case AMQP_CHANNEL_CLOSE_METHOD:
    case AMQP_CONNECTION_CLOSE_METHOD: {
        amqp_rpc_reply_t r = {.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION,
                              .reply = f.payload.method};
        return check_reply(a, op, r, "publish");
    }
    default:
        return 1;
    }
}

static void run_publish(sl_amqp *a, sl_amqp_op *op) {
    confirms c = {.first = a->next_tag + 1, .n = op->nmsgs};
    c.state = calloc(op->nmsgs ? op->nmsgs : 1, 1);
    if (!c.state) {
        set_error(op, SL_AMQP_ECONN, "out of memory");
        return;
    }
    double timeout = op->timeout > 0 ? op->timeout : a->o.timeout;
    double deadline = now() + timeout;
    amqp_bytes_t exchange = bytes_of(op->exchange);
    for (size_t i = 0; i < op->nmsgs; i++) {
        sl_amqp_msg *m = &op->msgs[i];
        amqp_basic_properties_t p = {0};
        p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG |
                   AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_APP_ID_FLAG;
        p.content_type = amqp_cstring_bytes("application/json");
        p.delivery_mode = 2; /* persistent */
        p.app_id = amqp_cstring_bytes("sluice");
        if (m->message_id) {
            p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
            p.message_id = amqp_cstring_bytes(m->message_id);
        }
        if (m->type) {
            p._flags |= AMQP_BASIC_TYPE_FLAG;
            p.type = amqp_cstring_bytes(m->type);
        }
        amqp_bytes_t body = {.len = m->len, .bytes = m->body};
        int rc = amqp_basic_publish(a->conn, CHANNEL, exchange,
                                    bytes_of(m->routing_key), op->mandatory, 0,
                                    &p, body);
        if (rc != AMQP_STATUS_OK) {
            set_error(op, SL_AMQP_ECONN, "publish: %s", amqp_error_string2(rc));
            drop(a);
            goto out;
        }
        a->next_tag++;
        /* read the confirms that came meanwhile, so they never pile up */
        while ((i & 255) == 255 && amqp_data_in_buffer(a->conn)) {
            if (read_confirm(a, op, &c, 0) < 0)
                goto out;
        }
        if (is_abandoned(op))
            goto out;
    }
    while (c.settled < c.n) {
        double left = deadline - now();
        if (is_abandoned(op))
            goto out;
        if (left <= 0) {
            set_error(op, SL_AMQP_ETIMEOUT,
                      "%zu of %zu messages not confirmed within %gs",
                      c.n - c.settled, c.n, timeout);
            drop(a); /* late confirms must not count for the next batch */
            goto out;
        }
        if (read_confirm(a, op, &c, left < SLICE ? left : SLICE) < 0)
            goto out;
    }
    op->confirmed = c.n - c.nacked;
    if (c.nacked)
        set_error(op, SL_AMQP_ENACK,
                  "the broker nacked %zu of %zu messages (the first: #%zu)",
                  c.nacked, c.n, c.first_nacked + 1);
    else if (c.returned)
        set_error(op, SL_AMQP_ERETURNED,
                  "%zu of %zu messages unroutable (mandatory): %s", c.returned,
                  c.n, c.return_text);
out:
    free(c.state);
}

static char *dup_bytes(amqp_bytes_t b) {
    char *s = malloc(b.len + 1);
    if (s) {
        if (b.len)
            memcpy(s, b.bytes, b.len);
        s[b.len] = '\0';
    }
    return s;
}

static void run_consume(sl_amqp *a, sl_amqp_op *op) {
    if (!a->consuming || strcmp(a->consuming, op->queue) != 0) {
        if (a->consuming) { /* another queue: start afresh */
            drop(a);
            if (ensure_connected(a, op) != 0)
                return;
        }
        amqp_basic_qos(a->conn, CHANNEL, 0, 1000, 0);
        if (check_reply(a, op, amqp_get_rpc_reply(a->conn), "basic.qos") != 0)
            return;
        amqp_basic_consume(a->conn, CHANNEL, bytes_of(op->queue),
                           amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
        if (check_reply(a, op, amqp_get_rpc_reply(a->conn), "basic.consume") !=
            0)
            return;
        a->consuming = strdup(op->queue);
    }
    op->msgs = calloc(op->max ? op->max : 1, sizeof(*op->msgs));
    if (!op->msgs) {
        set_error(op, SL_AMQP_ECONN, "out of memory");
        return;
    }
    double deadline = now() + op->wait;
    while (op->nmsgs < op->max && !is_abandoned(op)) {
        /* wait for the first message; then take what is already there */
        double left = op->nmsgs ? 0.05 : deadline - now();
        if (left <= 0)
            break;
        amqp_envelope_t env;
        struct timeval tv = tv_of(left < SLICE ? left : SLICE);
        amqp_maybe_release_buffers(a->conn);
        amqp_rpc_reply_t r = amqp_consume_message(a->conn, &env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT) {
            if (op->nmsgs)
                break;
            continue;
        }
        if (check_reply(a, op, r, "consume") != 0) {
            sl_amqp_consume_settle(op); /* what came is acked: keep it */
            return;
        }
        sl_amqp_msg *m = &op->msgs[op->nmsgs++];
        amqp_basic_properties_t *p = &env.message.properties;
        m->routing_key = dup_bytes(env.routing_key);
        m->body = dup_bytes(env.message.body);
        m->len = env.message.body.len;
        m->redelivered = env.redelivered;
        if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)
            m->message_id = dup_bytes(p->message_id);
        if (p->_flags & AMQP_BASIC_TYPE_FLAG)
            m->type = dup_bytes(p->type);
        if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)
            m->content_type = dup_bytes(p->content_type);
        if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
            m->delivery_mode = p->delivery_mode;
        uint64_t tag = env.delivery_tag;
        amqp_destroy_envelope(&env);
        if (amqp_basic_ack(a->conn, CHANNEL, tag, 0) != AMQP_STATUS_OK) {
            /* this one comes again (unacked): at least once */
            set_error(op, SL_AMQP_ECONN, "basic.ack failed");
            drop(a);
            sl_amqp_consume_settle(op);
            return;
        }
    }
}

static void run(sl_amqp *a, sl_amqp_op *op) {
    op->status = SL_AMQP_OK;
    if (ensure_connected(a, op) != 0)
        return;
    switch (op->kind) {
    case SL_AMQP_CONNECT:
        break;
    case SL_AMQP_DECLARE:
        run_declare(a, op);
        break;
    case SL_AMQP_PUBLISH:
        run_publish(a, op);
        break;
    case SL_AMQP_CONSUME:
        run_consume(a, op);
        break;
    }
    if (is_abandoned(op))
        drop(a); /* stopped halfway: the channel's state is unknown */
}

/* --- the handle ----------------------------------------------------------- */

/* Takes o's TLS settings (copies in a->tls); -1 with err filled when they
 * do not fit the URL or each other. */
static int take_tls_options(sl_amqp *a, const sl_amqp_options *o, char *err,
                            size_t errlen) {
    a->o.ca_file = a->o.cert_file = a->o.key_file = NULL; /* the caller's */
    if (a->url.tls)
        return sl_amqp_tls_setup(&a->tls, a->url.host, o->ca_file, o->cert_file,
                                 o->key_file, o->no_verify, err, errlen);
    if (o->ca_file || o->cert_file || o->key_file || o->no_verify) {
        snprintf(err, errlen,
                 "ca_file, cert_file, key_file and verify need an amqps:// "
                 "URL");
        return -1;
    }
    return 0;
}

static void unref(sl_amqp *a) {
    pthread_mutex_lock(&a->mu);
    int last = --a->refs == 0;
    pthread_mutex_unlock(&a->mu);
    if (!last)
        return;
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->work);
    memset(&a->url, 0, sizeof(a->url));
    sl_amqp_tls_clear(&a->tls);
    free(a);
}

/* Workers of freed handles that have not ended yet (a worker ends only
 * once its handle is freed), for sl_amqp_wait_workers. */
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t live_ended = PTHREAD_COND_INITIALIZER;
static int ending_workers;
static pid_t live_pid; /* the process that registered wait_at_exit */
static pthread_once_t at_exit_once = PTHREAD_ONCE_INIT;

int sl_amqp_wait_workers(double seconds) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    double end = (double)dl.tv_sec + (double)dl.tv_nsec / 1e9 + seconds;
    dl.tv_sec = (time_t)end;
    dl.tv_nsec = (long)((end - (double)dl.tv_sec) * 1e9);
    pthread_mutex_lock(&live_mu);
    while (ending_workers > 0 &&
           pthread_cond_timedwait(&live_ended, &live_mu, &dl) != ETIMEDOUT)
        ;
    int n = ending_workers;
    pthread_mutex_unlock(&live_mu);
    return n;
}

/* A forked child has the count but not the threads: it does not wait. */
static void wait_at_exit(void) {
    if (getpid() == live_pid)
        sl_amqp_wait_workers(1.0);
}

/* atexit handlers run last registered first: OpenSSL, initialised now if
 * it was not yet, registers its cleanup before this wait, which so runs
 * first (a worker still using OpenSSL after its cleanup would crash). */
static void register_at_exit(void) {
    sl_amqp_tls_init();
    live_pid = getpid();
    atexit(wait_at_exit);
}

static void *worker_main(void *arg) {
    sl_amqp *a = arg;
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (!a->closing && !a->head)
            pthread_cond_wait(&a->work, &a->mu);
        if (a->closing)
            break;
        sl_amqp_op *op = a->head;
        a->head = op->next;
        if (!a->head)
            a->tail = NULL;
        op->next = NULL;
        a->running = op;
        pthread_mutex_unlock(&a->mu);
        if (!is_abandoned(op))
            run(a, op);
        pthread_mutex_lock(&a->mu);
        a->running = NULL;
        a->pending--;
        if (a->closing) {
            sl_amqp_op_free(op);
            break;
        }
        if (a->done_tail)
            a->done_tail->next = op;
        else
            a->done_head = op;
        a->done_tail = op;
        char b = 1; /* a full socket already has a wake-up in it */
        ssize_t w = send(a->wfd, &b, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
    sl_amqp_op *rest = a->head;
    a->head = a->tail = NULL;
    pthread_mutex_unlock(&a->mu);
    while (rest) {
        sl_amqp_op *n = rest->next;
        sl_amqp_op_free(rest);
        rest = n;
    }
    drop(a);
    close(a->wfd);
    unref(a);
    /* OpenSSL's state of this thread (its random generators, its error
     * queue) is freed now, not by a key destructor racing with exit */
    sl_amqp_tls_thread_end();
    pthread_mutex_lock(&live_mu);
    ending_workers--;
    pthread_cond_broadcast(&live_ended);
    pthread_mutex_unlock(&live_mu);
    return NULL;
}

/* On the loop: deliver what the worker finished. */
static void on_notify(evutil_socket_t fd, short what, void *arg) {
    sl_amqp *a = arg;
    char buf[64];
    (void)what;
    while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
        ;
    pthread_mutex_lock(&a->mu);
    sl_amqp_op *op = a->done_head;
    a->done_head = a->done_tail = NULL;
    pthread_mutex_unlock(&a->mu);
    while (op) {
        sl_amqp_op *n = op->next;
        if (!op->abandoned && op->done)
            op->done(op, op->privdata);
        sl_amqp_op_free(op);
        op = n;
    }
}

sl_amqp *sl_amqp_new(struct event_base *base, const char *url,
                     const sl_amqp_options *o, char *err, size_t errlen) {
    sl_amqp *a = calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (sl_amqp_parse_url(url, &a->url, err, errlen) != 0) {
        free(a);
        return NULL;
    }
    pthread_once(&at_exit_once, register_at_exit);
    a->o = *o;
    if (a->o.queue_max < 1)
        a->o.queue_max = 1;
    if (take_tls_options(a, o, err, errlen) != 0) {
        memset(&a->url, 0, sizeof(a->url));
        sl_amqp_tls_clear(&a->tls);
        free(a);
        return NULL;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                   sv) != 0) {
        snprintf(err, errlen, "socketpair: %s", strerror(errno));
        memset(&a->url, 0, sizeof(a->url));
        sl_amqp_tls_clear(&a->tls);
        free(a);
        return NULL;
    }
    a->rfd = sv[0];
    a->wfd = sv[1];
    a->ev = event_new(base, a->rfd, EV_READ | EV_PERSIST, on_notify, a);
    if (!a->ev || event_add(a->ev, NULL) != 0)
        goto fail;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->work, NULL);
    a->refs = 2;
    /* the worker takes no signals: they are the loop's */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t t;
    int rc = pthread_create(&t, NULL, worker_main, a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        pthread_mutex_destroy(&a->mu);
        pthread_cond_destroy(&a->work);
        goto fail;
    }
    pthread_detach(t);
    return a;
fail:
    snprintf(err, errlen, "cannot start the AMQP worker");
    if (a->ev)
        event_free(a->ev);
    close(sv[0]);
    close(sv[1]);
    memset(&a->url, 0, sizeof(a->url));
    sl_amqp_tls_clear(&a->tls);
    free(a);
    return NULL;
}

int sl_amqp_submit(sl_amqp *a, sl_amqp_op *op, sl_amqp_done_fn done,
                   void *privdata, char *err, size_t errlen) {
    pthread_mutex_lock(&a->mu);
    if (a->closing || a->pending >= a->o.queue_max) {
        snprintf(err, errlen, a->closing ? "connection closed" : "queue full");
        pthread_mutex_unlock(&a->mu);
        return -1;
    }
    op->done = done;
    op->privdata = privdata;
    op->abandoned = 0;
    op->next = NULL;
    if (a->tail)
        a->tail->next = op;
    else
        a->head = op;
    a->tail = op;
    a->pending++;
    pthread_cond_signal(&a->work);
    pthread_mutex_unlock(&a->mu);
    return 0;
}

void sl_amqp_abandon(sl_amqp *a, sl_amqp_op *op) {
    pthread_mutex_lock(&a->mu);
    __atomic_store_n(&op->abandoned, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&a->mu);
}

int sl_amqp_pending(sl_amqp *a) {
    pthread_mutex_lock(&a->mu);
    int n = a->pending;
    pthread_mutex_unlock(&a->mu);
    return n;
}

int sl_amqp_connected(sl_amqp *a) {
    pthread_mutex_lock(&a->mu);
    int c = a->connected;
    pthread_mutex_unlock(&a->mu);
    return c;
}

long sl_amqp_connects(sl_amqp *a) {
    pthread_mutex_lock(&a->mu);
    long n = a->connects;
    pthread_mutex_unlock(&a->mu);
    return n;
}

void sl_amqp_free(sl_amqp *a) {
    if (!a)
        return;
    pthread_mutex_lock(&live_mu);
    ending_workers++; /* until the worker, woken below, has ended */
    pthread_mutex_unlock(&live_mu);
    pthread_mutex_lock(&a->mu);
    a->closing = 1;
    for (sl_amqp_op *op = a->head; op; op = op->next)
        __atomic_store_n(&op->abandoned, 1, __ATOMIC_RELEASE);
    if (a->running)
        __atomic_store_n(&a->running->abandoned, 1, __ATOMIC_RELEASE);
    sl_amqp_op *done = a->done_head;
    a->done_head = a->done_tail = NULL;
    pthread_cond_signal(&a->work);
    pthread_mutex_unlock(&a->mu);
    while (done) {
        sl_amqp_op *n = done->next;
        sl_amqp_op_free(done);
        done = n;
    }
    event_free(a->ev);
    a->ev = NULL;
    close(a->rfd);
    unref(a);
}
