/* ws_conn.c -- one WebSocket client connection on libevent, frames by wslay
 *
 * See ws_conn.h for the contract. The life of a connection: CONNECTING
 * (bufferevent_socket_connect_hostname, TLS, then the upgrade request and
 * response, all under one deadline), OPEN (wslay reads the bufferevent's
 * input in pump(), its send callback appends to the output), then ENDED
 * through end(), exactly once. CLOSING sits between the two when the
 * owner closes. The socket may outlive the end briefly ("draining") so a
 * close frame already queued gets written; a handle freed meanwhile stays
 * on the lingering list until the drain is over.
 *
 * Nothing calls the owner back from inside wslay or from inside a call the
 * owner made: pump() only records news, and notify runs from work_ev, an
 * event made active on the loop.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event_struct.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <wslay/wslay.h>

#include "strbuf.h"
#include "timeout.h"
#include "ws_conn.h"
#include "ws_handshake.h"
#include "ws_tls.h"

#define MAX_RESPONSE_HEAD 16384 /* bytes of upgrade response headers */
#define DRAIN_SECONDS 1.0       /* a closing socket's last writes */
#define READ_AHEAD 65536        /* bytes read per readiness event, at most */

typedef struct msg {
    struct msg *next;
    size_t len;
    int binary;
    char data[];
} msg;

struct sl_ws {
    struct event_base *base;
    sl_ws_state state;
    struct bufferevent *bev; /* NULL once the socket is closed */
    wslay_event_context_ptr ws;
    sl_ws_notify_fn notify; /* NULL once freed by the owner */
    void *privdata;
    char *host, *protocols;
    int port, tls;
    strbuf req; /* the upgrade request, until it is written */
    char key[SL_WS_KEY_LEN + 1];
    char proto[SL_WS_PROTO_MAX];
    double timeout, ping_interval, ping_timeout;
    size_t max_message, max_buffer;
    char reason[256];
    char close_reason[124]; /* the peer's close frame's reason */
    msg *head, *tail;
    sl_ws_stats st;
    int paused;   /* not reading: backpressure */
    int ping_out; /* a keepalive ping awaits any byte */
    int slow;     /* a message did not fit in max_buffer */
    int eof;      /* the peer's EOF, seen with input left to parse */
    int news;     /* notify is due */
    int want_pump, poked;
    int draining; /* the socket stays for its last writes */
    int detached; /* the owner freed the handle */
    struct event work_ev, deadline, ping_timer, pong_timer;
    struct sl_ws *lprev, *lnext; /* the lingering list, while detached */
};

static sl_ws *lingering;

static void pump(sl_ws *c);
static void destroy(sl_ws *c);

/* --- small helpers ------------------------------------------------------ */

static void arm(struct event *ev, double s) {
    struct timeval tv;
    if (sl_timeout_tv(s, &tv))
        evtimer_add(ev, &tv);
}

static double wall_now(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* Queues the work event: pump if asked, then notify, from the loop. */
static void poke(sl_ws *c) {
    if (!c->poked) {
        c->poked = 1;
        event_active(&c->work_ev, EV_TIMEOUT, 1);
    }
}

const char *sl_ws_code_name(int code) {
    static const char *const names[] = {"normal",
                                        "going away",
                                        "protocol error",
                                        "unsupported data",
                                        "",
                                        "no status",
                                        "abnormal",
                                        "invalid data",
                                        "policy violation",
                                        "message too big",
                                        "extension required",
                                        "internal error",
                                        "service restart",
                                        "try again later",
                                        "bad gateway"};
    return code >= 1000 && code <= 1014 ? names[code - 1000] : "";
}

/* "closed: <code> <reason or the code's name>", control bytes masked. */
static void closed_reason(sl_ws *c, int code, const char *why, size_t n) {
    if (n == 0) {
        why = sl_ws_code_name(code);
        n = strlen(why);
    }
    snprintf(c->reason, sizeof(c->reason), "closed: %d%s%.*s", code,
             n ? " " : "", (int)n, why);
    for (char *p = c->reason; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
}

/* --- the socket's end --------------------------------------------------- */

static void close_socket(sl_ws *c) {
    if (c->bev) {
        bufferevent_free(c->bev); /* frees the SSL too (CLOSE_ON_FREE) */
        c->bev = NULL;
    }
    if (c->ws) {
        wslay_event_context_free(c->ws);
        c->ws = NULL;
    }
    c->draining = 0;
    event_del(&c->deadline);
    if (c->detached)
        destroy(c);
}

static void drain_writecb(struct bufferevent *bev, void *arg) {
    (void)bev;
    close_socket(arg);
}

static void drain_eventcb(struct bufferevent *bev, short what, void *arg) {
    (void)bev;
    (void)what;
    close_socket(arg);
}

/* Closes the socket, or with flush, keeps it until what is queued for it
 * has been written (at most DRAIN_SECONDS). */
static void release_socket(sl_ws *c, int flush) {
    if (!c->bev)
        return;
    if (c->ws && flush && wslay_event_want_write(c->ws))
        wslay_event_send(c->ws);
    if (flush && evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
        c->draining = 1;
        bufferevent_disable(c->bev, EV_READ);
        bufferevent_setcb(c->bev, NULL, drain_writecb, drain_eventcb, c);
        bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
        bufferevent_enable(c->bev, EV_WRITE);
        event_del(&c->deadline);
        arm(&c->deadline, DRAIN_SECONDS);
        return;
    }
    close_socket(c);
}

/* Ends the connection once: the reason (kept when a local close set it),
 * timers stopped, the socket released, the owner told. */
static void end(sl_ws *c, int flush, const char *fmt, ...) {
    if (c->state == SL_WS_ENDED)
        return;
    if (c->state != SL_WS_CLOSING) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->reason, sizeof(c->reason), fmt, ap);
        va_end(ap);
    }
    c->state = SL_WS_ENDED;
    c->paused = 0;
    event_del(&c->deadline);
    event_del(&c->ping_timer);
    event_del(&c->pong_timer);
    release_socket(c, flush);
    c->news = 1;
    poke(c);
}

/* --- wslay's callbacks: record, never end or notify from here ------------ */

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                       int flags, void *ud) {
    sl_ws *c = ud;
    (void)flags;
    int n = 0;
    if (!c->paused && c->bev)
        n = evbuffer_remove(bufferevent_get_input(c->bev), buf, len);
    if (n <= 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    return n;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data,
                       size_t len, int flags, void *ud) {
    sl_ws *c = ud;
    (void)flags;
    if (!c->bev || evbuffer_add(bufferevent_get_output(c->bev), data, len)) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static int genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                      void *ud) {
    (void)ud;
    if (RAND_bytes(buf, (int)len) != 1) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return 0;
}

static void pause_reading(sl_ws *c) {
    c->paused = 1;
    c->st.stalls++;
    if (c->bev)
        bufferevent_disable(c->bev, EV_READ);
    event_del(&c->pong_timer); /* silence proves nothing while we stall */
    c->ping_out = 0;
}

static void enqueue(sl_ws *c, const struct wslay_event_on_msg_recv_arg *a) {
    size_t len = a->msg_length;
    if (c->state != SL_WS_OPEN) /* closing: the owner wants no more */
        return;
    if (c->st.buffered > 0 && c->st.buffered + len > c->max_buffer) {
        c->slow = 1;
        wslay_event_shutdown_read(c->ws);
        return;
    }
    msg *m = malloc(sizeof(*m) + len + 1);
    if (!m) {
        c->slow = 1; /* no room is no room */
        wslay_event_shutdown_read(c->ws);
        return;
    }
    m->next = NULL;
    m->len = len;
    m->binary = a->opcode == WSLAY_BINARY_FRAME;
    if (len)
        memcpy(m->data, a->msg, len);
    m->data[len] = '\0';
    if (c->tail)
        c->tail->next = m;
    else
        c->head = m;
    c->tail = m;
    c->st.queued++;
    c->st.buffered += len;
    c->st.messages_in++;
    c->st.bytes_in += len;
    c->news = 1;
    if (c->st.buffered >= c->max_buffer / 2)
        pause_reading(c);
}

static void on_msg_cb(wslay_event_context_ptr ctx,
                      const struct wslay_event_on_msg_recv_arg *a, void *ud) {
    sl_ws *c = ud;
    (void)ctx;
    switch (a->opcode) {
    case WSLAY_TEXT_FRAME:
    case WSLAY_BINARY_FRAME:
        enqueue(c, a);
        break;
    case WSLAY_PING:
        c->st.pings_in++;
        break;
    case WSLAY_PONG:
        c->st.pongs++;
        break;
    case WSLAY_CONNECTION_CLOSE: {
        size_t n = a->msg_length > 2 ? a->msg_length - 2 : 0;
        if (n >= sizeof(c->close_reason))
            n = sizeof(c->close_reason) - 1;
        memcpy(c->close_reason, n ? (const char *)a->msg + 2 : "", n);
        c->close_reason[n] = '\0';
        break;
    }
    default:
        break;
    }
}

/* --- reading -------------------------------------------------------------
 */

/* Why wslay stopped reading on its own: the close it queued says. */
static void protocol_end(sl_ws *c) {
    wslay_event_send(c->ws); /* the close it queued, so that it counts */
    int code = wslay_event_get_status_code_sent(c->ws);
    if (code == WSLAY_CODE_MESSAGE_TOO_BIG)
        end(c, 1, "message too big: over max_message (%zu bytes)",
            c->max_message);
    else if (code == WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA)
        end(c, 1, "protocol error: invalid UTF-8 in a text message");
    else
        end(c, 1, "protocol error: invalid frame (close %d sent)", code);
}

/* Feeds what the input holds to wslay and acts on the outcome. */
static void pump(sl_ws *c) {
    if ((c->state != SL_WS_OPEN && c->state != SL_WS_CLOSING) || !c->ws)
        return;
    int r = c->paused ? 0 : wslay_event_recv(c->ws);
    if (c->slow) {
        wslay_event_queue_close(c->ws, 1008, (const uint8_t *)"slow consumer",
                                13);
        end(c, 1,
            "slow consumer: %zu bytes of messages not received, "
            "max_buffer %zu",
            c->st.buffered, c->max_buffer);
        return;
    }
    if (r == WSLAY_ERR_NOMEM) {
        end(c, 0, "out of memory");
        return;
    }
    if (r != 0) { /* a frame header wslay_frame_recv refused */
        end(c, 1, "protocol error: invalid frame header");
        return;
    }
    if (wslay_event_get_close_received(c->ws)) {
        int code = wslay_event_get_status_code_received(c->ws);
        if (c->state != SL_WS_CLOSING)
            closed_reason(c, code, c->close_reason, strlen(c->close_reason));
        c->state = SL_WS_CLOSING; /* end() keeps the reason just set */
        end(c, 1, "");
        return;
    }
    if (!wslay_event_get_read_enabled(c->ws)) {
        protocol_end(c);
        return;
    }
    if (wslay_event_want_write(c->ws) && wslay_event_send(c->ws) != 0) {
        end(c, 0, "connection lost: cannot write");
        return;
    }
    if (c->eof && !c->paused) {
        end(c, 0,
            "connection lost: the peer closed the connection without a "
            "close frame");
        return;
    }
}

/* Tells the owner what pump() found; only from the loop's own callbacks. */
static void deliver(sl_ws *c) {
    if (c->news && c->notify) {
        c->news = 0;
        c->notify(c, c->privdata);
    }
}

static void work_cb(evutil_socket_t fd, short what, void *arg) {
    sl_ws *c = arg;
    (void)fd;
    (void)what;
    c->poked = 0;
    if (c->want_pump) {
        c->want_pump = 0;
        pump(c);
    }
    deliver(c);
}

static void open_conn(sl_ws *c) {
    struct wslay_event_callbacks cbs = {recv_cb, send_cb, genmask_cb, NULL,
                                        NULL,    NULL,    on_msg_cb};
    if (wslay_event_context_client_init(&c->ws, &cbs, c) != 0) {
        c->ws = NULL;
        end(c, 0, "out of memory");
        return;
    }
    wslay_event_config_set_max_recv_msg_length(c->ws, c->max_message);
    c->state = SL_WS_OPEN;
    c->st.connected_at = wall_now();
    event_del(&c->deadline);
    if (c->ping_interval > 0)
        arm(&c->ping_timer, c->ping_interval);
    c->news = 1;
    pump(c); /* frames that came with the response */
    poke(c);
}

static void handshake_read(sl_ws *c) {
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer_ptr at = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (at.pos < 0) {
        if (evbuffer_get_length(in) > MAX_RESPONSE_HEAD)
            end(c, 0, "handshake: response headers over %d bytes",
                MAX_RESPONSE_HEAD);
        return;
    }
    size_t n = (size_t)at.pos + 4;
    char err[200];
    const char *head = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
    if (!head || sl_ws_hs_check(head, n, c->key, c->protocols, c->proto,
                                sizeof(c->proto), err, sizeof(err)) != 0) {
        end(c, 0, "handshake: %s", head ? err : "out of memory");
        return;
    }
    evbuffer_drain(in, n);
    open_conn(c);
}

static void readcb(struct bufferevent *bev, void *arg) {
    sl_ws *c = arg;
    (void)bev;
    if (c->ping_out) { /* any byte is a sign of life */
        c->ping_out = 0;
        event_del(&c->pong_timer);
    }
    if (c->state == SL_WS_CONNECTING) {
        handshake_read(c);
        return;
    }
    pump(c);
    /* libevent reads at most 4 KiB per readiness event; reading on while
     * the socket has more (up to READ_AHEAD) saves a loop pass, a timer
     * update and a task wake per 4 KiB. TLS sockets read through OpenSSL,
     * so only plain ones do it. EOF and errors are left to the next event. */
    for (int got = 0; !c->tls && got < READ_AHEAD && c->bev &&
                      c->state == SL_WS_OPEN && !c->paused && !c->eof;) {
        int n = evbuffer_read(bufferevent_get_input(c->bev),
                              bufferevent_getfd(c->bev), 4096);
        if (n <= 0)
            break;
        got += n;
        pump(c);
    }
    deliver(c); /* at once: a pass through work_ev costs per read */
}

/* --- connection events -------------------------------------------------- */

static void connected(sl_ws *c) {
    int fd = (int)bufferevent_getfd(c->bev), one = 1;
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    bufferevent_write(c->bev, c->req.p, c->req.len);
    sb_free(&c->req);
}

static void eventcb(struct bufferevent *bev, short what, void *arg) {
    sl_ws *c = arg;
    int err = EVUTIL_SOCKET_ERROR();
    char why[256];
    if (what & BEV_EVENT_CONNECTED) {
        connected(c);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        if (c->state == SL_WS_CONNECTING) {
            end(c, 0, "handshake: connection closed before the response");
        } else if (c->paused &&
                   evbuffer_get_length(bufferevent_get_input(bev))) {
            c->eof = 1; /* parsed when the owner catches up */
            bufferevent_disable(bev, EV_READ);
        } else {
            c->eof = 1;
            pump(c);
            if (c->state == SL_WS_CLOSING)
                end(c, 0, "");
            else
                end(c, 0,
                    "connection lost: the peer closed the connection without a "
                    "close frame");
        }
        return;
    }
    if (!(what & BEV_EVENT_ERROR))
        return;
    int dns = bufferevent_socket_get_dns_error(bev);
    why[0] = '\0';
    if (dns) {
        snprintf(why, sizeof(why), "dns: cannot resolve '%s': %s", c->host,
                 evutil_gai_strerror(dns));
    } else if (bufferevent_openssl_get_ssl(bev)) {
        sl_ws_tls_reason(bev, why, sizeof(why));
    }
    if (why[0])
        end(c, 0, "%s", why);
    else if (err == ECONNRESET || err == EPIPE)
        end(c, 0, "connection reset");
    else if (c->state == SL_WS_CONNECTING)
        end(c, 0, "connect: %s (%s:%d)", evutil_socket_error_to_string(err),
            c->host, c->port);
    else
        end(c, 0, "connection lost: %s", evutil_socket_error_to_string(err));
}

/* --- timers -------------------------------------------------------------- */

static void deadline_cb(evutil_socket_t fd, short what, void *arg) {
    sl_ws *c = arg;
    (void)fd;
    (void)what;
    if (c->draining)
        close_socket(c);
    else if (c->state == SL_WS_CONNECTING)
        end(c, 0, "timeout: not connected within %gs", c->timeout);
    else if (c->state == SL_WS_CLOSING)
        end(c, 0, "");
}

static void ping_cb(evutil_socket_t fd, short what, void *arg) {
    sl_ws *c = arg;
    (void)fd;
    (void)what;
    if (c->state != SL_WS_OPEN)
        return;
    arm(&c->ping_timer, c->ping_interval);
    if (c->paused || c->ping_out)
        return;
    char payload[24];
    int n = snprintf(payload, sizeof(payload), "sluice %llu",
                     (unsigned long long)c->st.pings);
    struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)payload,
                                (size_t)n};
    if (wslay_event_queue_msg(c->ws, &m) != 0 || wslay_event_send(c->ws)) {
        end(c, 0, "connection lost: cannot write");
        return;
    }
    c->st.pings++;
    c->ping_out = 1;
    arm(&c->pong_timer, c->ping_timeout);
}

static void pong_cb(evutil_socket_t fd, short what, void *arg) {
    sl_ws *c = arg;
    (void)fd;
    (void)what;
    if (c->state == SL_WS_OPEN && c->ping_out && !c->paused)
        end(c, 0, "dead peer: no pong within %gs", c->ping_timeout);
}

/* --- the handle -------------------------------------------------------- */

sl_ws *sl_ws_connect(struct event_base *base, struct evdns_base *dns,
                     const sl_ws_opts *o, sl_ws_notify_fn notify,
                     void *privdata, char *err, size_t errlen) {
    sl_ws *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->base = base;
    c->state = SL_WS_CONNECTING;
    c->notify = notify;
    c->privdata = privdata;
    c->port = o->port;
    c->tls = o->tls;
    c->timeout = o->timeout;
    c->max_message = o->max_message;
    c->max_buffer = o->max_buffer;
    c->ping_interval = o->ping_interval;
    c->ping_timeout = o->ping_timeout;
    event_assign(&c->work_ev, base, -1, 0, work_cb, c);
    evtimer_assign(&c->deadline, base, deadline_cb, c);
    evtimer_assign(&c->ping_timer, base, ping_cb, c);
    evtimer_assign(&c->pong_timer, base, pong_cb, c);
    c->host = strdup(o->host);
    if (o->protocols && o->protocols[0])
        c->protocols = strdup(o->protocols);
    if (!c->host || (o->protocols && o->protocols[0] && !c->protocols) ||
        sl_ws_hs_key(c->key) != 0 ||
        sl_ws_hs_request(&c->req, o->host, o->port, o->tls, o->path, c->key,
                         o->protocols, o->headers) != 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    const int flags = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
    if (o->tls) {
        SSL *ssl = sl_ws_tls_new(o, err, errlen);
        if (!ssl)
            goto fail;
        c->bev = bufferevent_openssl_socket_new(
            base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, flags);
        if (!c->bev) {
            SSL_free(ssl);
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
    } else if (!(c->bev = bufferevent_socket_new(base, -1, flags))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    bufferevent_setcb(c->bev, readcb, NULL, eventcb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect_hostname(c->bev, dns, AF_UNSPEC, o->host,
                                            o->port) != 0) {
        snprintf(err, errlen, "connect: cannot start connecting to %s:%d",
                 o->host, o->port);
        goto fail;
    }
    arm(&c->deadline, o->timeout);
    return c;
fail:
    destroy(c);
    return NULL;
}

static void drop_fifo(sl_ws *c) {
    while (c->head) {
        msg *m = c->head;
        c->head = m->next;
        free(m);
    }
    c->tail = NULL;
    c->st.queued = 0;
    c->st.buffered = 0;
}

static void destroy(sl_ws *c) {
    if (c->lprev || c->lnext || lingering == c) {
        if (c->lprev)
            c->lprev->lnext = c->lnext;
        else
            lingering = c->lnext;
        if (c->lnext)
            c->lnext->lprev = c->lprev;
    }
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->ws)
        wslay_event_context_free(c->ws);
    event_del(&c->work_ev);
    event_del(&c->deadline);
    event_del(&c->ping_timer);
    event_del(&c->pong_timer);
    drop_fifo(c);
    sb_free(&c->req);
    free(c->host);
    free(c->protocols);
    free(c);
}

sl_ws_state sl_ws_get_state(const sl_ws *c) { return c->state; }

const char *sl_ws_reason(const sl_ws *c) { return c->reason; }

const char *sl_ws_protocol(const sl_ws *c) { return c->proto; }

int sl_ws_peek(sl_ws *c, const char **data, size_t *len, int *binary) {
    if (!c->head)
        return 0;
    *data = c->head->data;
    *len = c->head->len;
    *binary = c->head->binary;
    return 1;
}

void sl_ws_pop(sl_ws *c) {
    msg *m = c->head;
    if (!m)
        return;
    c->head = m->next;
    if (!c->head)
        c->tail = NULL;
    c->st.queued--;
    c->st.buffered -= m->len;
    free(m);
    if (c->paused && c->st.buffered <= c->max_buffer / 4) {
        c->paused = 0;
        if (c->bev && !c->eof)
            bufferevent_enable(c->bev, EV_READ);
        c->want_pump = 1; /* what the input already holds */
        poke(c);
    }
}

int sl_ws_send(sl_ws *c, const void *data, size_t len, int binary, char *err,
               size_t errlen) {
    if (c->state != SL_WS_OPEN) {
        snprintf(err, errlen, "%s",
                 c->reason[0] ? c->reason : "not connected yet");
        return -1;
    }
    size_t out = evbuffer_get_length(bufferevent_get_output(c->bev));
    if (out + len > c->max_buffer && out > 0) {
        snprintf(err, errlen,
                 "send buffer full: %zu bytes not yet written, max_buffer %zu",
                 out, c->max_buffer);
        return -1;
    }
    struct wslay_event_msg m = {binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME,
                                data, len};
    int r = wslay_event_queue_msg(c->ws, &m);
    if (r == 0)
        r = wslay_event_send(c->ws);
    if (r != 0) {
        end(c, 0,
            r == WSLAY_ERR_NOMEM ? "out of memory"
                                 : "connection lost: cannot write");
        snprintf(err, errlen, "%s", c->reason);
        return -1;
    }
    c->st.messages_out++;
    c->st.bytes_out += len;
    return 0;
}

int sl_ws_close(sl_ws *c, int code, const char *reason, size_t len,
                double timeout) {
    if (c->state == SL_WS_ENDED || c->state == SL_WS_CLOSING)
        return 1;
    closed_reason(c, code, reason, len);
    if (c->state == SL_WS_CONNECTING) {
        c->state = SL_WS_CLOSING; /* end() keeps the reason */
        end(c, 0, "");
        return 0;
    }
    drop_fifo(c);
    c->state = SL_WS_CLOSING;
    event_del(&c->ping_timer);
    event_del(&c->pong_timer);
    if (wslay_event_queue_close(c->ws, (uint16_t)code, (const uint8_t *)reason,
                                len) != 0 ||
        wslay_event_send(c->ws) != 0) {
        end(c, 0, "");
        return 0;
    }
    arm(&c->deadline, timeout);
    if (c->paused) { /* the peer's close is behind what we stopped reading */
        c->paused = 0;
        if (c->bev && !c->eof)
            bufferevent_enable(c->bev, EV_READ);
    }
    c->want_pump = 1;
    poke(c);
    return 0;
}

void sl_ws_get_stats(const sl_ws *c, sl_ws_stats *st) { *st = c->st; }

void sl_ws_free(sl_ws *c) {
    if (!c)
        return;
    c->notify = NULL;
    if (c->state == SL_WS_OPEN && c->ws) {
        wslay_event_queue_close(c->ws, 1001, NULL, 0);
        end(c, 1, "closed: 1001 going away");
    } else if (c->state == SL_WS_CLOSING) {
        end(c, 1, "");
    } else {
        end(c, 0, "closed");
    }
    event_del(&c->work_ev); /* end() poked it */
    if (!c->bev) {
        destroy(c);
        return;
    }
    c->detached = 1; /* from now on close_socket() destroys it */
    c->lnext = lingering;
    if (lingering)
        lingering->lprev = c;
    lingering = c;
}

void sl_ws_free_all(void) {
    while (lingering)
        destroy(lingering);
}
