/* pg.c -- one PostgreSQL connection on libpq's asynchronous API and libevent
 *
 * A small state machine: CONNECTING (PQconnectPoll tells which readiness to
 * wait for next; the socket may change between polls) -> IDLE <-> BUSY ->
 * CLOSED. A busy operation moves through phases: SEND (flush the statement),
 * RESULT (consume input until PQisBusy is false, collect results until
 * PQgetResult returns NULL), and for COPY: COPY (put data as the socket
 * takes it), then END (put the end, flush), then RESULT again. While
 * writing, read readiness is watched too: libpq must consume what the
 * server sends (an error during COPY, notices) or both sides could stall.
 */
#include "pg.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event_struct.h>

#include "strbuf.h"
#include "timeout.h"

#define COPY_CHUNK 65536

typedef enum phase { PH_NONE, PH_SEND, PH_RESULT, PH_COPY, PH_END } phase;

struct sl_pg {
    struct event_base *base;
    PGconn *conn;
    sl_pg_state state;
    phase ph;
    int is_copy;
    int data_sent; /* the COPY FROM STDIN has had the data: a second one in
                    * the same string is refused */
    struct event io, timer;
    int io_set, timer_set;
    sl_pg_done_fn done;
    void *privdata;
    PGresult *res; /* the result kept for done: the first error, else last */
    long copied;   /* the COPY's row count, from its own result */
    char *data;    /* copy data, owned */
    size_t len, off;
    char closed[256];
};

static atomic_long cancels_sent;

/* --- helpers ---------------------------------------------------------- */

/* libpq's messages end with a newline and may hold several lines. */
static void one_line(char *dst, size_t n, const char *src) {
    snprintf(dst, n, "%s", src && *src ? src : "unknown error");
    size_t l = strlen(dst);
    while (l && (dst[l - 1] == '\n' || dst[l - 1] == ' '))
        dst[--l] = '\0';
    for (char *p = dst; *p; p++)
        if (*p == '\n')
            *p = ' ';
}

static void stop_events(sl_pg *c) {
    if (c->io_set)
        event_del(&c->io);
    if (c->timer_set)
        event_del(&c->timer);
    c->io_set = c->timer_set = 0;
}

static void on_io(evutil_socket_t fd, short what, void *arg);

/* Waits for readiness `what` (EV_READ and/or EV_WRITE) on the current
 * socket, which libpq may have changed since the last wait. */
static int wait_io(sl_pg *c, short what) {
    if (c->io_set)
        event_del(&c->io);
    c->io_set = 0;
    int fd = PQsocket(c->conn);
    if (fd < 0)
        return -1;
    event_assign(&c->io, c->base, fd, what, on_io, c);
    if (event_add(&c->io, NULL) != 0)
        return -1;
    c->io_set = 1;
    return 0;
}

static void *cancel_thread(void *arg) {
    PGcancel *cn = arg;
    char buf[256];
    PQcancel(cn, buf, sizeof(buf));
    PQfreeCancel(cn);
    return NULL;
}

/* Asks the server to stop the statement in flight, from a detached thread:
 * PQcancel opens a connection of its own and blocks. */
static void send_cancel(sl_pg *c) {
    PGcancel *cn = PQgetCancel(c->conn);
    if (!cn)
        return;
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &at, cancel_thread, cn) == 0)
        atomic_fetch_add(&cancels_sent, 1);
    else
        PQfreeCancel(cn);
    pthread_attr_destroy(&at);
}

/* Drops the connection; the handle is CLOSED for good. cancel: ask the
 * server to stop the statement in flight first (it would run on). */
static void drop(sl_pg *c, const char *why, int cancel) {
    stop_events(c);
    if (cancel && c->state == SL_PG_BUSY && c->conn)
        send_cancel(c);
    if (c->conn)
        PQfinish(c->conn);
    c->conn = NULL;
    if (c->res)
        PQclear(c->res);
    c->res = NULL;
    free(c->data);
    c->data = NULL;
    c->ph = PH_NONE;
    c->state = SL_PG_CLOSED;
    if (!c->closed[0])
        one_line(c->closed, sizeof(c->closed), why);
    c->done = NULL;
}

/* Ends the operation: the handle is idle (or closed, for ECONN/ETIMEOUT),
 * then done runs with the outcome. */
static void finish(sl_pg *c, sl_pg_status st, const char *message) {
    sl_pg_done_fn done = c->done;
    void *pd = c->privdata;
    sl_pg_outcome o = {st, NULL, "", "", 0};
    char msg[512] = "", state[6] = "";
    PGresult *res = NULL;
    stop_events(c);
    if (st == SL_PG_ECONN || st == SL_PG_ETIMEOUT) {
        one_line(msg, sizeof(msg), message);
        drop(c, msg, st == SL_PG_ETIMEOUT);
    } else {
        res = c->res;
        c->res = NULL;
        free(c->data);
        c->data = NULL;
        c->ph = PH_NONE;
        c->state = SL_PG_IDLE;
        c->done = NULL;
        o.res = res;
        if (st == SL_PG_ESERVER) {
            const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            snprintf(state, sizeof(state), "%s", s ? s : "XX000");
            /* the primary message: the full one spans lines (LINE 1:
             * and a caret under the statement) */
            const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
            one_line(msg, sizeof(msg), m ? m : PQresultErrorMessage(res));
        } else if (c->is_copy) {
            o.copied = c->copied;
        }
    }
    o.sqlstate = state;
    o.message = msg;
    if (done)
        done(c, &o, pd);
    if (res)
        PQclear(res);
}

static void fail_conn(sl_pg *c, const char *prefix) {
    char msg[512];
    snprintf(msg, sizeof(msg), "%s%s", prefix,
             c->conn ? PQerrorMessage(c->conn) : "no connection");
    finish(c, SL_PG_ECONN, msg);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
    sl_pg *c = arg;
    (void)fd;
    (void)what;
    c->timer_set = 0;
    finish(c, SL_PG_ETIMEOUT,
           c->state == SL_PG_CONNECTING ? "timeout: connecting"
                                        : "timeout: statement cancelled");
}

static int arm_timer(sl_pg *c, double timeout) {
    struct timeval tv;
    if (!sl_timeout_tv(timeout, &tv))
        return 0;
    evtimer_assign(&c->timer, c->base, on_timer, c);
    if (evtimer_add(&c->timer, &tv) != 0)
        return -1;
    c->timer_set = 1;
    return 0;
}

/* --- connecting ------------------------------------------------------- */

/* libpq's default prints notices ("relation ... already exists, skipping")
 * on stderr, under our logs: they are dropped. */
static void ignore_notice(void *arg, const char *message) {
    (void)arg;
    (void)message;
}

static void connect_step(sl_pg *c) {
    switch (PQconnectPoll(c->conn)) {
    case PGRES_POLLING_READING:
        if (wait_io(c, EV_READ) != 0)
            fail_conn(c, "");
        return;
    case PGRES_POLLING_WRITING:
        if (wait_io(c, EV_WRITE) != 0)
            fail_conn(c, "");
        return;
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(c->conn, 1) != 0) {
            fail_conn(c, "");
            return;
        }
        finish(c, SL_PG_OK, NULL);
        return;
    default:
        fail_conn(c, "");
        return;
    }
}

/* --- statements ------------------------------------------------------- */

static void op_step(sl_pg *c, short what);

/* Keeps the result that done will see: the first error wins. */
static void keep(sl_pg *c, PGresult *r) {
    if (c->res && PQresultStatus(c->res) == PGRES_FATAL_ERROR) {
        PQclear(r);
        return;
    }
    if (c->res)
        PQclear(c->res);
    c->res = r;
}

/* Collects results; returns when libpq needs more input or all are in. */
static void read_results(sl_pg *c) {
    for (;;) {
        if (PQisBusy(c->conn)) {
            if (wait_io(c, EV_READ) != 0)
                fail_conn(c, "");
            return;
        }
        PGresult *r = PQgetResult(c->conn);
        if (!r) {
            if (!c->res) {
                fail_conn(c, "no result: ");
                return;
            }
            int err = PQresultStatus(c->res) == PGRES_FATAL_ERROR;
            finish(c, err ? SL_PG_ESERVER : SL_PG_OK, NULL);
            return;
        }
        switch (PQresultStatus(r)) {
        case PGRES_COPY_IN:
            PQclear(r);
            if (c->is_copy && c->data && !c->data_sent) {
                c->data_sent = 1;
                c->ph = PH_COPY;
                op_step(c, 0);
            } else {
                /* a COPY FROM STDIN sent as a plain query, or a second
                 * one in copy()'s string: refuse it, so the server ends
                 * the statement with an error */
                if (PQputCopyEnd(c->conn,
                                 c->is_copy
                                     ? "one COPY FROM STDIN per copy()"
                                     : "COPY FROM STDIN needs copy()") < 0)
                    fail_conn(c, "");
                else {
                    c->ph = PH_END;
                    op_step(c, 0);
                }
            }
            return;
        case PGRES_COPY_OUT:
        case PGRES_COPY_BOTH:
            PQclear(r);
            finish(c, SL_PG_ECONN, "COPY TO STDOUT is not supported");
            return;
        case PGRES_BAD_RESPONSE:
            PQclear(r);
            fail_conn(c, "bad response: ");
            return;
        default:
            if (c->is_copy && PQresultStatus(r) == PGRES_COMMAND_OK &&
                strncmp(PQcmdStatus(r), "COPY", 4) == 0)
                c->copied = strtol(PQcmdTuples(r), NULL, 10);
            keep(c, r);
        }
    }
}

/* Puts the copy data as the socket takes it, then the end. */
static void put_copy(sl_pg *c) {
    while (c->off < c->len) {
        size_t n = c->len - c->off;
        if (n > COPY_CHUNK)
            n = COPY_CHUNK;
        int r = PQputCopyData(c->conn, c->data + c->off, (int)n);
        if (r == 0) { /* the buffer is full: wait for the socket */
            if (wait_io(c, EV_READ | EV_WRITE) != 0)
                fail_conn(c, "");
            return;
        }
        if (r < 0) { /* the server ended the COPY (an error): read it */
            if (PQstatus(c->conn) != CONNECTION_OK) {
                fail_conn(c, "");
                return;
            }
            c->ph = PH_RESULT;
            read_results(c);
            return;
        }
        c->off += n;
    }
    int r = PQputCopyEnd(c->conn, NULL);
    if (r == 0) {
        if (wait_io(c, EV_READ | EV_WRITE) != 0)
            fail_conn(c, "");
        return;
    }
    if (r < 0 && PQstatus(c->conn) != CONNECTION_OK) {
        fail_conn(c, "");
        return;
    }
    c->ph = r < 0 ? PH_RESULT : PH_END;
    op_step(c, 0);
}

/* Flushes; returns 1 when all is sent, 0 when waiting, -1 on failure. */
static int flush(sl_pg *c) {
    int r = PQflush(c->conn);
    if (r < 0) {
        fail_conn(c, "");
        return -1;
    }
    if (r > 0) {
        if (wait_io(c, EV_READ | EV_WRITE) != 0) {
            fail_conn(c, "");
            return -1;
        }
        return 0;
    }
    return 1;
}

static void op_step(sl_pg *c, short what) {
    if ((what & EV_READ) && !PQconsumeInput(c->conn)) {
        fail_conn(c, "");
        return;
    }
    switch (c->ph) {
    case PH_SEND:
    case PH_END:
        if (flush(c) == 1) {
            c->ph = PH_RESULT;
            read_results(c);
        }
        return;
    case PH_COPY:
        put_copy(c);
        return;
    case PH_RESULT:
        read_results(c);
        return;
    case PH_NONE:
        return;
    }
}

static void on_io(evutil_socket_t fd, short what, void *arg) {
    sl_pg *c = arg;
    (void)fd;
    c->io_set = 0; /* not persistent: it fired and is no longer pending */
    if (c->state == SL_PG_CONNECTING)
        connect_step(c);
    else if (c->state == SL_PG_BUSY)
        op_step(c, what);
}

/* --- public ------------------------------------------------------------ */

sl_pg *sl_pg_connect(struct event_base *base, const char *conninfo,
                     double timeout, sl_pg_done_fn done, void *privdata,
                     char *err, size_t errlen) {
    sl_pg *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->base = base;
    c->done = done;
    c->privdata = privdata;
    c->state = SL_PG_CONNECTING;
    /* parse first: PQconnectStart reports a bad conninfo only through
     * PQstatus, with the same message */
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (!opts) {
        one_line(err, errlen, perr ? perr : "out of memory");
        PQfreemem(perr);
        free(c);
        return NULL;
    }
    PQconninfoFree(opts);
    c->conn = PQconnectStart(conninfo);
    if (!c->conn || PQstatus(c->conn) == CONNECTION_BAD) {
        one_line(err, errlen,
                 c->conn ? PQerrorMessage(c->conn) : "out of memory");
        if (c->conn)
            PQfinish(c->conn);
        free(c);
        return NULL;
    }
    PQsetNoticeProcessor(c->conn, ignore_notice, NULL);
    /* libpq: act as if PQconnectPoll had returned PGRES_POLLING_WRITING */
    if (wait_io(c, EV_WRITE) != 0 || arm_timer(c, timeout) != 0) {
        snprintf(err, errlen, "cannot watch the connection's socket");
        sl_pg_free(c);
        return NULL;
    }
    return c;
}

static int start_op(sl_pg *c, double timeout, sl_pg_done_fn done,
                    void *privdata, char *err, size_t errlen) {
    if (c->state == SL_PG_CLOSED) {
        snprintf(err, errlen, "connection closed: %s", c->closed);
        return -1;
    }
    if (c->state != SL_PG_IDLE) {
        snprintf(err, errlen, "connection is busy");
        return -1;
    }
    if (PQstatus(c->conn) != CONNECTION_OK) {
        char msg[300];
        one_line(msg, sizeof(msg), PQerrorMessage(c->conn));
        drop(c, msg, 0);
        snprintf(err, errlen, "connection closed: %s", c->closed);
        return -1;
    }
    if (arm_timer(c, timeout) != 0) {
        snprintf(err, errlen, "cannot arm a timer");
        return -1;
    }
    c->done = done;
    c->privdata = privdata;
    c->state = SL_PG_BUSY;
    c->ph = PH_SEND;
    return 0;
}

/* simple: the simple query protocol (PQsendQuery), which takes several
 * statements in one string, run as one implicit transaction; otherwise one
 * statement with n parameters (the extended protocol). */
static int send_statement(sl_pg *c, const char *sql, int simple, int n,
                          const char *const *values, char *err, size_t errlen) {
    int sent = simple ? PQsendQuery(c->conn, sql)
                      : PQsendQueryParams(c->conn, sql, n, NULL, values, NULL,
                                          NULL, 0);
    if (!sent) {
        char msg[300];
        one_line(msg, sizeof(msg), PQerrorMessage(c->conn));
        drop(c, msg, 0);
        snprintf(err, errlen, "connection closed: %s", c->closed);
        return -1;
    }
    /* flushed from the loop, so that done never runs inside this call */
    if (wait_io(c, EV_WRITE) != 0) {
        drop(c, "cannot watch the connection's socket", 0);
        snprintf(err, errlen, "connection closed: %s", c->closed);
        return -1;
    }
    return 0;
}

int sl_pg_query(sl_pg *c, const char *sql, int n, const char *const *values,
                double timeout, sl_pg_done_fn done, void *privdata, char *err,
                size_t errlen) {
    if (start_op(c, timeout, done, privdata, err, errlen) != 0)
        return -1;
    c->is_copy = 0;
    return send_statement(c, sql, 0, n, values, err, errlen);
}

int sl_pg_copy(sl_pg *c, const char *sql, const char *data, size_t len,
               double timeout, sl_pg_done_fn done, void *privdata, char *err,
               size_t errlen) {
    char *copy = malloc(len ? len : 1);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (start_op(c, timeout, done, privdata, err, errlen) != 0) {
        free(copy);
        return -1;
    }
    memcpy(copy, data, len);
    c->data = copy;
    c->len = len;
    c->off = 0;
    c->is_copy = 1;
    c->data_sent = 0;
    c->copied = 0;
    return send_statement(c, sql, 1, 0, NULL, err, errlen);
}

void sl_pg_abandon(sl_pg *c) {
    if (c->state == SL_PG_BUSY)
        drop(c, "statement cancelled: its task ended", 1);
    else if (c->state == SL_PG_CONNECTING)
        drop(c, "connection abandoned: its task ended", 0);
}

void sl_pg_close(sl_pg *c, const char *why) {
    if (c->state != SL_PG_CLOSED)
        drop(c, why ? why : "closed", 1);
}

void sl_pg_free(sl_pg *c) {
    if (!c)
        return;
    sl_pg_close(c, "closed");
    free(c);
}

sl_pg_state sl_pg_get_state(const sl_pg *c) { return c->state; }

const char *sl_pg_closed_reason(const sl_pg *c) { return c->closed; }

int sl_pg_server_version(const sl_pg *c) {
    return c->conn && c->state != SL_PG_CONNECTING ? PQserverVersion(c->conn)
                                                   : 0;
}

int sl_pg_backend_pid(const sl_pg *c) {
    return c->conn && c->state != SL_PG_CONNECTING ? PQbackendPID(c->conn) : 0;
}

long sl_pg_cancels_sent(void) { return atomic_load(&cancels_sent); }

int sl_pg_copy_escape(struct strbuf *buf, const char *s, size_t n) {
    size_t start = buf->len;
    size_t from = 0;
    for (size_t i = 0; i < n; i++) {
        const char *esc = NULL;
        switch (s[i]) {
        case '\\':
            esc = "\\\\";
            break;
        case '\t':
            esc = "\\t";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        default:
            continue;
        }
        if (sb_add(buf, s + from, i - from) != 0 || sb_add(buf, esc, 2) != 0)
            goto err;
        from = i + 1;
    }
    if (sb_add(buf, s + from, n - from) != 0)
        goto err;
    return 0;
err:
    buf->len = start;
    if (buf->p)
        buf->p[start] = '\0';
    return -1;
}

int sl_pg_quote_ident(struct strbuf *buf, const char *s, size_t n) {
    size_t start = buf->len;
    if (memchr(s, '\0', n))
        return -1;
    if (sb_add(buf, "\"", 1) != 0)
        goto err;
    for (size_t i = 0; i < n; i++) {
        if (sb_add(buf, s + i, 1) != 0 ||
            (s[i] == '"' && sb_add(buf, "\"", 1) != 0))
            goto err;
    }
    if (sb_add(buf, "\"", 1) != 0)
        goto err;
    return 0;
err:
    buf->len = start;
    if (buf->p)
        buf->p[start] = '\0';
    return -1;
}
