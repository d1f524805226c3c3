/* lua_http.c -- sluice._http: async HTTP client on one libcurl multi handle
 *
 * One multi handle per process, created on first use and driven by libevent:
 * curl tells us which sockets to watch (socket callback) and when to call it
 * back (timer callback); libevent calls curl_multi_socket_action. Finished
 * transfers are collected with curl_multi_info_read from our own event
 * callbacks, never from inside a curl callback, and their tasks are queued,
 * not resumed.
 *
 * Ownership: a transfer (struct below) is malloc'd by request() and owned by
 * this file until it completes or its task is killed; either way it is
 * removed from the multi handle and freed exactly once. The waiting task
 * holds the only reference to it (as its op).
 *
 * curl never follows redirects here: sluice.http follows them itself, one
 * request per hop, so that it can decide on each hop which headers may go
 * to the new origin (curl would send every CURLOPT_HTTPHEADER line to any
 * host it follows to). parse_url() (lua_http_parse.c) resolves its URLs.
 */
#include <curl/curl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <lauxlib.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/http_queue.h"
#include "core/strbuf.h"
#include "core/timeout.h"
#include "host/modules.h"
#include "host/runtime.h"
#include "host/task.h"
#include "lua_http_parse.h"

typedef struct transfer {
    CURL *easy;
    sl_task *task;
    struct curl_slist *headers;
    strbuf body;
    strbuf head; /* the last response's header lines, "\n"-separated */
    size_t max_body;
    int too_large;
    int added; /* to the multi handle; else queued for its origin */
    sl_hq_wait wait;
    /* The request, kept for transfer_setup (strings after the struct). */
    char *url, *method, *body_data;
    size_t body_len;
    long transfer_ms, connect_ms, version, started;
    int insecure;
    int late;        /* on_deadline gave curl a second to time it out itself */
    long timeout_ms; /* 0: none, or deadline not armed yet */
    struct event deadline; /* armed when timeout_ms > 0: see on_deadline */
    char errbuf[CURL_ERROR_SIZE];
} transfer;

typedef struct sockinfo {
    struct event ev;
    curl_socket_t fd;
    short kind; /* the event flags ev was added with */
    int added;  /* ev is added to the loop */
    int parked; /* curl said REMOVE: no transfer uses the socket now */
} sockinfo;

static CURLM *multi;
static struct event *timer_ev;
/* Connection caps (0: none). curl has none by default and keeps up to 4
 * idle connections per easy handle ever added: with thousands of tasks
 * polling one host, thousands of connections pile up, and libcurl 7.88
 * walks every one of them twice per transfer (ConnectionExists over the
 * host's bundle, curl_multi_remove_handle over the whole cache looking for
 * the handle's last connection). Requests over the per-host cap wait in
 * our own queue (http_queue.h says why not curl's); on_deadline keeps
 * their timeout. sluice.http's configure starts from the same values. */
static long max_host_connections = 64;
static long max_total_connections = 1024;
static long max_cached_connections = 256; /* CURLMOPT_MAXCONNECTS */
static char user_agent[64];
static long in_flight;   /* transfers started and not yet freed */
static sl_hq *queue;     /* per-origin admission under max_host_connections */
static sockinfo **socks; /* by descriptor: curl's sockets we watch */
static size_t nsocks;

/* --- easy handles ----------------------------------------------------------
 */

/* Idle easy handles, reset and kept for the next request: creating one
 * costs more than a request's worth of setopt calls. The options every
 * request sets alike are set here once per reset (easy_defaults), the
 * rest by transfer_setup. */
static CURL *pool[64];
static int npool;

static size_t on_body(char *data, size_t size, size_t n, void *ud);
static size_t on_header(char *data, size_t size, size_t n, void *ud);
static curl_socket_t on_open(void *clientp, curlsocktype purpose,
                             struct curl_sockaddr *a);
static int on_close(void *clientp, curl_socket_t s);

static void easy_defaults(CURL *e) {
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_USERAGENT, user_agent);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, ""); /* all that we have */
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L); /* see the top */
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_DNS_CACHE_TIMEOUT, 60L);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close);
}

static CURL *easy_get(void) {
    if (npool)
        return pool[--npool];
    CURL *e = curl_easy_init();
    if (e)
        easy_defaults(e);
    return e;
}

static void easy_put(CURL *e) {
    if (npool < (int)(sizeof(pool) / sizeof(pool[0]))) {
        /* Reset every time, plain GETs too: libcurl 7.88 zeroes its count
         * of retries on dead reused connections only in curl_easy_reset,
         * so a handle kept as it is gives up ("Connection died, tried 5
         * times") after five retries over all its requests. */
        curl_easy_reset(e);
        easy_defaults(e);
        pool[npool++] = e;
    } else {
        curl_easy_cleanup(e);
    }
}

static void transfer_start(transfer *x);

static void transfer_free(transfer *x) {
    if (x->task)
        in_flight--;
    if (x->timeout_ms > 0)
        event_del(&x->deadline);
    if (x->added)
        curl_multi_remove_handle(multi, x->easy);
    if (x->easy)
        easy_put(x->easy);
    curl_slist_free_all(x->headers);
    free(x->body.p);
    free(x->head.p);
    /* A slot for its origin may have opened: start who waits for it. */
    sl_hq_origin *o = queue ? sl_hq_leave(queue, &x->wait) : NULL;
    free(x);
    sl_hq_wait *w;
    while (o && (w = sl_hq_admit(o, (size_t)max_host_connections)))
        transfer_start((transfer *)((char *)w - offsetof(transfer, wait)));
}

/* --- curl callbacks: collect data only; never call back into curl or Lua */
static size_t on_body(char *data, size_t size, size_t n, void *ud) {
    transfer *x = ud;
    size_t len = size * n;
    if (x->body.len + len > x->max_body) {
        x->too_large = 1;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    return sb_add(&x->body, data, len) == 0 ? len : 0;
}

static size_t on_header(char *data, size_t size, size_t n, void *ud) {
    transfer *x = ud;
    size_t len = size * n;
    /* A new status line starts a new response (after 100 Continue): only
     * the final response's headers are reported. */
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0)
        x->head.len = 0;
    if (x->head.len + len > 1 << 20) /* 1 MiB of headers is hostile */
        return 0;
    return sb_add(&x->head, data, len) == 0 ? len : 0;
}

/* --- pushing the result onto the waiting task ----------------------------- */
static double info_secs(CURL *e, CURLINFO what) {
    curl_off_t us = 0;
    curl_easy_getinfo(e, what, &us);
    return (double)us / 1e6;
}

static void set_num(lua_State *co, const char *k, double v) {
    lua_pushnumber(co, v);
    lua_setfield(co, -2, k);
}

static int push_response(lua_State *co, transfer *x) {
    CURL *e = x->easy;
    long status = 0, version = 0, connects = 0;
    char *url = NULL;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &version);
    curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &connects);
    curl_easy_getinfo(e, CURLINFO_EFFECTIVE_URL, &url);
    lua_createtable(co, 0, 9);
    set_num(co, "status", (double)status);
    lua_pushlstring(co, x->body.p ? x->body.p : "", x->body.len);
    lua_setfield(co, -2, "body");
    lua_pushstring(co, version == CURL_HTTP_VERSION_1_0   ? "1.0"
                       : version == CURL_HTTP_VERSION_1_1 ? "1.1"
                       : version == CURL_HTTP_VERSION_2_0 ? "2"
                       : version == CURL_HTTP_VERSION_3   ? "3"
                                                          : "?");
    lua_setfield(co, -2, "http_version");
    lua_pushstring(co, url ? url : "");
    lua_setfield(co, -2, "url");
    lua_pushboolean(co, connects == 0);
    lua_setfield(co, -2, "reused");
    if (version == CURL_HTTP_VERSION_2_0)
        sl_hq_multiplexed(&x->wait); /* its origin takes streams */

    /* Phase durations, in seconds; a reused connection has dns, connect
     * and tls at 0. */
    double dns = info_secs(e, CURLINFO_NAMELOOKUP_TIME_T);
    double conn = info_secs(e, CURLINFO_CONNECT_TIME_T);
    double app = info_secs(e, CURLINFO_APPCONNECT_TIME_T);
    lua_createtable(co, 0, 5);
    set_num(co, "dns", dns);
    set_num(co, "connect", conn > dns ? conn - dns : 0);
    set_num(co, "tls", app > conn ? app - conn : 0);
    set_num(co, "ttfb", info_secs(e, CURLINFO_STARTTRANSFER_TIME_T));
    set_num(co, "total", info_secs(e, CURLINFO_TOTAL_TIME_T));
    lua_setfield(co, -2, "timings");
    /* The header lines as they came: sluice.http makes the tables of them
     * on first use (parse_headers), which most callers never ask for. */
    lua_pushlstring(co, x->head.p ? x->head.p : "", x->head.len);
    return 2;
}

static const char *failure_kind(CURLcode rc, const transfer *x) {
    if (x->too_large)
        return "too_large";
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_COULDNT_CONNECT:
        return "connect";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return "dns";
    case CURLE_FILESIZE_EXCEEDED:
        return "too_large";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_USE_SSL_FAILED:
        return "tls";
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_ABORTED_BY_CALLBACK:
        return "aborted";
    default:
        return "protocol";
    }
}

/* --- driving curl from libevent ------------------------------------------ */
static void check_done(void) {
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        transfer *x = NULL;
        CURLcode rc = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        lua_State *co = sl_task_thread(x->task);
        int n;
        if (rc == CURLE_OK) {
            n = push_response(co, x);
        } else {
            lua_pushnil(co);
            if (x->too_large)
                lua_pushfstring(co,
                                "response body larger than max_body (%d "
                                "bytes)",
                                (int)x->max_body);
            else
                lua_pushstring(co, x->errbuf[0] ? x->errbuf
                                                : curl_easy_strerror(rc));
            lua_pushstring(co, failure_kind(rc, x));
            n = 3;
        }
        sl_task_wake(x->task, n);
        transfer_free(x);
    }
}

static void on_timeout(evutil_socket_t fd, short what, void *arg) {
    int running;
    (void)fd;
    (void)what;
    (void)arg;
    curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done();
}

/* A socket's watch outlives the transfer that asked for it: on a reused
 * connection curl says CURL_POLL_REMOVE as one transfer ends and the same
 * socket with the same mask as the next one starts. Deleting and adding the
 * event each time costs two epoll_ctl calls and an allocation per request,
 * so REMOVE only parks the watch. A parked socket is unwatched when it
 * becomes readable (the server closed an idle connection, or sent what
 * nobody asked for: curl finds out when it checks the connection before
 * reuse) and freed when curl closes it (on_close) or opens another socket
 * under its number (on_open). The table is indexed by descriptor, not by
 * curl's socketp, so nothing here trusts a pointer curl kept. */
static sockinfo *sock_get(curl_socket_t s) {
    return s >= 0 && (size_t)s < nsocks ? socks[s] : NULL;
}

static void sock_drop(curl_socket_t s) {
    sockinfo *si = sock_get(s);
    if (!si)
        return;
    if (si->added)
        event_del(&si->ev);
    free(si);
    socks[s] = NULL;
}

static sockinfo *sock_new(curl_socket_t s) {
    if (s < 0)
        return NULL;
    if ((size_t)s >= nsocks) {
        size_t n = nsocks ? nsocks : 64;
        while (n <= (size_t)s)
            n *= 2;
        sockinfo **p = realloc(socks, n * sizeof(*p));
        if (!p)
            return NULL;
        memset(p + nsocks, 0, (n - nsocks) * sizeof(*p));
        socks = p;
        nsocks = n;
    }
    sockinfo *si = calloc(1, sizeof(*si));
    if (si) {
        si->fd = s;
        socks[s] = si;
    }
    return si;
}

static void on_socket_event(evutil_socket_t fd, short what, void *arg) {
    sockinfo *si = arg;
    int running;
    int action = (what & EV_READ ? CURL_CSELECT_IN : 0) |
                 (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
    if (si->parked) {
        /* No transfer owns it: stop watching, or an idle connection the
         * server closed would wake the loop for ever. */
        event_del(&si->ev);
        si->added = 0;
        return;
    }
    curl_multi_socket_action(multi, fd, action, &running);
    check_done();
}

static int on_socket(CURL *e, curl_socket_t s, int what, void *userp,
                     void *socketp) {
    sockinfo *si = sock_get(s);
    (void)e;
    (void)userp;
    (void)socketp;
    if (what == CURL_POLL_REMOVE) {
        if (si)
            si->parked = 1;
        return 0;
    }
    if (!si && !(si = sock_new(s)))
        return -1;
    si->parked = 0;
    short kind = EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) |
                 (what & CURL_POLL_OUT ? EV_WRITE : 0);
    if (si->added && si->kind == kind)
        return 0; /* the watch it already has */
    if (si->added)
        event_del(&si->ev);
    event_assign(&si->ev, sl_rt.base, s, kind, on_socket_event, si);
    si->kind = kind;
    si->added = event_add(&si->ev, NULL) == 0;
    return si->added ? 0 : -1;
}

/* curl opens and closes its sockets through these, so a watch never
 * outlives its socket nor passes to another socket with the same number. */
static curl_socket_t on_open(void *clientp, curlsocktype purpose,
                             struct curl_sockaddr *a) {
    (void)clientp;
    (void)purpose;
    curl_socket_t s = socket(a->family, a->socktype, a->protocol);
    sock_drop(s);
    return s;
}

static int on_close(void *clientp, curl_socket_t s) {
    (void)clientp;
    sock_drop(s);
    return close(s);
}

/* -1 deletes the timer; 0 means "as soon as possible", which we schedule
 * rather than act on here: socket_action must not recurse into curl. */
static int on_timer(CURLM *m, long timeout_ms, void *userp) {
    (void)m;
    (void)userp;
    if (timeout_ms < 0) {
        evtimer_del(timer_ev);
    } else {
        struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
        evtimer_add(timer_ev, &tv);
    }
    return 0;
}

static void close_multi(void) {
    sl_hq_free(queue);
    queue = NULL;
    while (npool > 0)
        curl_easy_cleanup(pool[--npool]);
    if (multi)
        curl_multi_cleanup(multi); /* closes its sockets through on_close */
    multi = NULL;
    for (size_t i = 0; i < nsocks; i++)
        sock_drop((curl_socket_t)i);
    free(socks);
    socks = NULL;
    nsocks = 0;
    if (timer_ev)
        event_free(timer_ev);
    timer_ev = NULL;
}

static void apply_limits(void) {
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                      max_host_connections);
    curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                      max_total_connections);
    /* 0 would be "no cache" to curl 7.88 (a connection per request); to
     * us 0 is "no cap", which curl spells as a cache this large. */
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS,
                      max_cached_connections ? max_cached_connections
                                             : (long)1 << 30);
}

static int ensure_multi(lua_State *L) {
    if (multi)
        return 0;
    if (!(queue = sl_hq_new()) || !(multi = curl_multi_init())) {
        sl_hq_free(queue);
        queue = NULL;
        return luaL_error(L, "sluice.http: cannot create a curl multi handle");
    }
    timer_ev = evtimer_new(sl_rt.base, on_timeout, NULL);
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timer);
    /* HTTP/2 streams share a connection (curl's default since 7.62: said
     * here because the design depends on it). */
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    apply_limits();
    sl_runtime_on_close(close_multi);
    return 0;
}

/* --- Lua primitives --------------------------------------------------------
 */
static void cancel_transfer(sl_task *t, void *op) {
    (void)t;
    transfer_free(op); /* removes the easy handle: no callback will follow */
}

/* The request's timeout, kept by us as well as by curl: curl does not see
 * a request queued for its origin (and libcurl 7.88 checks a transfer's
 * timeout only once it has a connection, so one in curl's own queue, under
 * max_total_connections, would wait past it and then fail as "Failed to
 * resolve host ... after 0 ms"). Armed a little after curl's own deadline,
 * so that curl's timeout, with its message, wins whenever curl can see it;
 * this one fires for a transfer still queued. */
#define DEADLINE_GRACE_MS 20

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Gives an admitted request an easy handle set up for it and adds that to
 * the multi handle: a queued request holds no handle (each is kilobytes).
 * Returns NULL, or what went wrong. */
static const char *transfer_setup(transfer *x) {
    CURL *e = x->easy = easy_get();
    if (!e)
        return "out of memory";
    long timeout_ms = x->transfer_ms;
    if (timeout_ms > 0) { /* what is left of it after the queue */
        timeout_ms -= now_ms() - x->started;
        if (timeout_ms < 1)
            timeout_ms = 1;
    }
    const char *method = x->method;
    int get = strcmp(method, "GET") == 0;
    curl_easy_setopt(e, CURLOPT_URL, x->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    /* This request's options; easy_defaults set the others. */
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, x->connect_ms);
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)x->max_body);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, x->version);
    /* A request that may go over HTTP/2 (cleartext http:// only with
     * prior knowledge) waits for a connection being set
     * up to the same origin to say whether it multiplexes, rather than
     * opening one of its own: one connection, many streams. */
    curl_easy_setopt(e, CURLOPT_PIPEWAIT,
                     x->version == CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE ||
                             (x->version == CURL_HTTP_VERSION_2TLS &&
                              strncasecmp(x->url, "https:", 6) == 0)
                         ? 1L
                         : 0L);
    if (x->insecure) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (!get || x->body_data) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    if (x->body_data) { /* x keeps it until the handle is reset */
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)x->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->body_data);
    }
    CURLMcode mrc = curl_multi_add_handle(multi, e);
    if (mrc != CURLM_OK)
        return curl_multi_strerror(mrc);
    x->added = 1;
    return NULL;
}

/* Starts a request its origin's queue admitted, or ends it. */
static void transfer_start(transfer *x) {
    const char *why = transfer_setup(x);
    if (!why)
        return;
    lua_State *co = sl_task_thread(x->task);
    lua_pushnil(co);
    lua_pushstring(co, why);
    lua_pushliteral(co, "protocol");
    sl_task_wake(x->task, 3);
    transfer_free(x);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg) {
    transfer *x = arg;
    (void)fd;
    (void)what;
    if (x->added && !x->late) {
        /* curl has it, with what was left of the timeout when it started:
         * a loop that stalled can run this before curl's timer. Leave it
         * to curl, unless curl cannot see it (its own pending list). */
        struct timeval tv = {1, 0};
        x->late = 1;
        evtimer_add(&x->deadline, &tv);
        return;
    }
    lua_State *co = sl_task_thread(x->task);
    lua_pushnil(co);
    lua_pushfstring(co, "timed out after %d milliseconds%s", (int)x->timeout_ms,
                    x->added ? ""
                             : " waiting for a connection (http.configure "
                               "caps them)");
    lua_pushliteral(co, "timeout");
    sl_task_wake(x->task, 3);
    transfer_free(x);
}

/* The http_version option -> curl's; -1 for a name it does not know. */
static long http_version(const char *v) {
    if (!v)
        return CURL_HTTP_VERSION_2TLS; /* h2 when TLS offers it: the default */
    if (strcmp(v, "1.1") == 0)
        return CURL_HTTP_VERSION_1_1;
    if (strcmp(v, "2") == 0)
        return CURL_HTTP_VERSION_2TLS;
    if (strcmp(v, "2-prior-knowledge") == 0)
        return CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
    return -1;
}

/* request(method, url, headers, body, timeout, connect_timeout, max_body,
 *         insecure, http_version) -> res, head | nil, err, kind
 * head: the response's header lines, for parse_headers.
 * headers is an array of "Name: value" lines; body a string or nil. The Lua
 * wrapper validates everything first. */
static int l_request(lua_State *L) {
    size_t url_len, method_len, body_len = 0;
    const char *method = luaL_checklstring(L, 1, &method_len);
    const char *url = luaL_checklstring(L, 2, &url_len);
    luaL_checktype(L, 3, LUA_TTABLE);
    const char *body = luaL_optlstring(L, 4, NULL, &body_len);
    double timeout = luaL_checknumber(L, 5);
    double connect_timeout = luaL_checknumber(L, 6);
    double max_body = luaL_checknumber(L, 7);
    int insecure = lua_toboolean(L, 8);
    long version = http_version(luaL_optstring(L, 9, NULL));
    if (version < 0)
        return luaL_argerror(L, 9, "\"1.1\", \"2\" or \"2-prior-knowledge\"");
    /* -1 is "no timeout", which curl spells 0 for the transfer; for the
     * connection 0 would mean curl's default (300 s), so the longest we
     * can say stands in for it. */
    long timeout_ms = sl_timeout_ms(timeout);
    long connect_ms = sl_timeout_ms(connect_timeout);
    if (timeout_ms < 0)
        timeout_ms = 0;
    if (connect_ms < 0)
        connect_ms = sl_timeout_ms(SL_TIMEOUT_MAX);
    /* Before anything starts: a refusal must leave nothing armed. */
    sl_task *t = sl_task_check_yieldable(L, "sluice.http.request");
    ensure_multi(L);

    /* The request's strings go with it (one allocation): a queued request
     * has no easy handle yet to hold them. */
    transfer *x = calloc(1, sizeof(*x) + url_len + method_len + 2 + body_len);
    if (!x) {
        lua_pushnil(L);
        lua_pushliteral(L, "out of memory");
        lua_pushliteral(L, "protocol");
        return 3;
    }
    x->url = (char *)(x + 1);
    memcpy(x->url, url, url_len + 1);
    x->method = x->url + url_len + 1;
    memcpy(x->method, method, method_len + 1);
    if (body) {
        x->body_data = x->method + method_len + 1;
        memcpy(x->body_data, body, body_len);
        x->body_len = body_len;
    }
    x->task = t;
    in_flight++;
    x->max_body = (size_t)max_body;
    x->transfer_ms = timeout_ms;
    x->connect_ms = connect_ms;
    x->version = version;
    x->insecure = insecure;
    x->started = now_ms();
    int n = (int)lua_objlen(L, 3);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 3, i);
        struct curl_slist *h =
            curl_slist_append(x->headers, lua_tostring(L, -1));
        lua_pop(L, 1);
        if (!h) {
            transfer_free(x);
            return luaL_error(L, "sluice.http: out of memory");
        }
        x->headers = h;
    }
    int admitted =
        sl_hq_enter(queue, &x->wait, url, (size_t)max_host_connections);
    if (admitted < 0) {
        transfer_free(x);
        return luaL_error(L, "sluice.http: out of memory");
    }
    const char *why = admitted ? transfer_setup(x) : NULL;
    if (why) {
        transfer_free(x);
        lua_pushnil(L);
        lua_pushstring(L, why);
        lua_pushliteral(L, "protocol");
        return 3;
    }
    if (timeout_ms > 0) {
        long ms = timeout_ms + DEADLINE_GRACE_MS;
        x->timeout_ms = timeout_ms; /* from here on, transfer_free disarms */
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_assign(&x->deadline, sl_rt.base, on_deadline, x);
        evtimer_add(&x->deadline, &tv);
    }
    return sl_task_suspend(L, t, cancel_transfer, x);
}

/* configure(max_host_connections, max_total_connections,
 *           max_cached_connections) */
static int l_configure(lua_State *L) {
    max_host_connections = (long)luaL_checkinteger(L, 1);
    max_total_connections = (long)luaL_checkinteger(L, 2);
    max_cached_connections = (long)luaL_checkinteger(L, 3);
    if (multi)
        apply_limits();
    return 0;
}

static int l_in_flight(lua_State *L) {
    lua_pushnumber(L, (lua_Number)in_flight);
    return 1;
}

static int l_version(lua_State *L) {
    curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    lua_createtable(L, 0, 6);
    lua_pushstring(L, v->version);
    lua_setfield(L, -2, "curl");
    lua_pushstring(L, v->ssl_version ? v->ssl_version : "");
    lua_setfield(L, -2, "tls");
    lua_pushboolean(L, (v->features & CURL_VERSION_HTTP2) != 0);
    lua_setfield(L, -2, "http2");
    /* libcurl before 8.0.0 fails every request after the first on a
     * reused prior-knowledge (h2c) connection (curl issue 10634). */
    lua_pushboolean(L, (v->features & CURL_VERSION_HTTP2) != 0 &&
                           v->version_num >= 0x080000);
    lua_setfield(L, -2, "h2c");
    lua_pushboolean(L, (v->features & CURL_VERSION_BROTLI) != 0);
    lua_setfield(L, -2, "brotli");
    lua_pushboolean(L, (v->features & CURL_VERSION_LIBZ) != 0);
    lua_setfield(L, -2, "gzip");
    return 1;
}

int luaopen_sluice_http(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"request", l_request},
        {"configure", l_configure},
        {"version", l_version},
        {"in_flight", l_in_flight},
        {"parse_url", sl_http_parse_url},
        {"parse_headers", sl_http_parse_headers},
        {NULL, NULL},
    };
    snprintf(user_agent, sizeof(user_agent), "sluice/%s", SLUICE_VERSION);
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
