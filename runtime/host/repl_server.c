/* repl_server.c -- the REPL's server end: sessions on the control socket
 *
 * The clients are in repl.c (`sluice repl` over the socket, `run -i` in
 * process); each request is evaluated by sluice.repl (lua/sluice/repl.lua).
 *
 * A connection reads newline-framed JSON requests and runs each one as a
 * task (require("sluice.repl")._serve(conn, line, true)), one at a time per
 * connection; the task answers with conn:reply(...), which queues the JSON
 * line on the connection. No Lua runs inside a libevent callback: the read
 * callback only spawns (queues) the task. When a task ends, the next
 * buffered request is picked up from an event of the connection's own, not
 * from the task machinery's stack.
 *
 * The same machinery serves a local session (sl_repl_server_attach): requests
 * are raw chunks and replies go to a C callback instead of a socket.
 */
#include "repl_server.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/log.h"
#include "modules.h"
#include "runtime.h"
#include "task.h"

#define CONN_MT "sluice.repl.conn"
#define MAX_REQUEST (4 * 1024 * 1024) /* bytes in one request line */

struct sl_repl_server_conn {
    struct bufferevent *bev;    /* socket sessions, while open */
    struct event *kick;         /* "look at the input again" */
    sl_repl_server_reply_fn fn; /* local sessions, while attached */
    void *privdata;
    int ref;       /* registry anchor while open or busy, else LUA_NOREF */
    int open;      /* the client is there */
    int busy;      /* a request's task is live */
    int replied;   /* the live task has answered */
    int eof;       /* the client sent all it will send (half-close) */
    int closing;   /* close once the queued replies are written */
    int lingering; /* replies written and FIN sent; discarding input */
    char *pending; /* a local session's chunk, until its task is spawned */
    size_t pending_len;
};

static struct evconnlistener *listener;
static char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static dev_t sock_dev;
static ino_t sock_ino;
static int sock_owned, hooks_set;
static long nconns;

/* --- connections --------------------------------------------------------- */

static void conn_unanchor(sl_repl_server_conn *c) {
    if (c->open || c->busy || c->ref == LUA_NOREF || !sl_rt.L)
        return;
    luaL_unref(sl_rt.L, LUA_REGISTRYINDEX, c->ref);
    c->ref = LUA_NOREF;
}

/* The client is gone (or the session detached): drop the socket. */
static void conn_close(sl_repl_server_conn *c) {
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
        nconns--;
    }
    if (c->kick) {
        event_free(c->kick);
        c->kick = NULL;
    }
    c->fn = NULL;
    c->open = 0;
    conn_unanchor(c);
}

/* After the last reply: send FIN and discard whatever the client still
 * sends until it closes too (bounded by a timeout). Closing with unread
 * input would make the kernel reset the connection, and a reset can
 * destroy the reply before the client reads it. */
static void conn_linger(sl_repl_server_conn *c) {
    static const struct timeval bound = {2, 0};
    if (c->eof) { /* the client has closed its side already */
        conn_close(c);
        return;
    }
    c->lingering = 1;
    shutdown(bufferevent_getfd(c->bev), SHUT_WR);
    evbuffer_drain(bufferevent_get_input(c->bev),
                   evbuffer_get_length(bufferevent_get_input(c->bev)));
    bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
    bufferevent_set_timeouts(c->bev, &bound, NULL);
    bufferevent_enable(c->bev, EV_READ);
}

/* Closes the connection once its queued output is written: the client
 * still reads its replies, but nothing more it sends is evaluated. */
static void conn_finish(sl_repl_server_conn *c) {
    c->closing = 1;
    if (!c->bev) {
        conn_close(c);
        return;
    }
    bufferevent_disable(c->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        conn_linger(c);
}

/* Writes a reply frame, or hands the reply to the local callback. */
static void conn_deliver(sl_repl_server_conn *c, int ok, const char *out,
                         size_t len, int incomplete, const char *frame,
                         size_t flen) {
    if (!c->open)
        return;
    if (c->fn)
        c->fn(ok, out, len, incomplete, c->privdata);
    else if (c->bev && frame)
        bufferevent_write(c->bev, frame, flen);
}

static void on_task_done(sl_task *t, int ok, void *privdata) {
    sl_repl_server_conn *c = privdata;
    (void)t;
    c->busy = 0;
    if (!c->replied) {
        static const char msg[] = "internal error: the evaluation ended "
                                  "without a reply (see the log)\n";
        static const char frame[] =
            "{\"ok\":false,\"incomplete\":false,\"output\":\"internal "
            "error: the evaluation ended without a reply (see the log)\\n\"}\n";
        (void)ok;
        conn_deliver(c, 0, msg, sizeof(msg) - 1, 0, frame, sizeof(frame) - 1);
    }
    if (c->open && c->kick)
        event_active(c->kick, EV_TIMEOUT, 0);
    conn_unanchor(c);
}

typedef struct spawn_ctx {
    sl_repl_server_conn *c;
    const char *payload;
    size_t len;
    int framed;
    sl_task *task;
} spawn_ctx;

/* Under lua_cpcall: _serve(conn, payload, framed) as a task. */
static int spawn_request(lua_State *L) {
    spawn_ctx *x = lua_touserdata(L, 1);
    lua_settop(L, 0);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "sluice.repl");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "_serve");
    lua_rawgeti(L, LUA_REGISTRYINDEX, x->c->ref);
    lua_pushlstring(L, x->payload, x->len);
    lua_pushboolean(L, x->framed);
    x->task = sl_task_spawn(L, 3);
    return 0;
}

/* Starts evaluating payload. Returns 0, or -1 (logged) if it could not. */
static int conn_start(sl_repl_server_conn *c, const char *payload, size_t len,
                      int framed) {
    lua_State *L = sl_rt.L;
    spawn_ctx x = {.c = c, .payload = payload, .len = len, .framed = framed};
    int top = lua_gettop(L);
    if (lua_cpcall(L, spawn_request, &x) != 0 || !x.task) {
        sl_logf(SL_LOG_ERROR, "control: cannot evaluate a request: %s",
                lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
        lua_settop(L, top);
        return -1;
    }
    lua_settop(L, top);
    c->busy = 1;
    c->replied = 0;
    x.task->on_done = on_task_done;
    x.task->on_done_data = c;
    return 0;
}

/* Takes the next complete request off the input, if the connection is
 * free to run one. */
static void conn_process(sl_repl_server_conn *c) {
    if (!c->open || c->busy)
        return;
    if (c->fn) { /* local session */
        if (c->pending) {
            char *p = c->pending;
            c->pending = NULL;
            if (conn_start(c, p, c->pending_len, 0) != 0) {
                static const char msg[] = "internal error (see the log)\n";
                conn_deliver(c, 0, msg, sizeof(msg) - 1, 0, NULL, 0);
            }
            free(p);
        }
        return;
    }
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t n;
    char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_LF);
    if (!line) {
        if (evbuffer_get_length(in) > MAX_REQUEST) {
            static const char frame[] =
                "{\"ok\":false,\"incomplete\":false,\"output\":\"request too "
                "large\\n\"}\n";
            bufferevent_write(c->bev, frame, sizeof(frame) - 1);
            evbuffer_drain(in, evbuffer_get_length(in));
            conn_finish(c); /* the rest of that line would be garbage */
        } else if (c->eof) {
            conn_finish(c); /* every complete request has been answered */
        }
        return;
    }
    if (n > 0 && conn_start(c, line, n, 1) != 0) {
        static const char frame[] = "{\"ok\":false,\"incomplete\":false,"
                                    "\"output\":\"internal error\\n\"}\n";
        bufferevent_write(c->bev, frame, sizeof(frame) - 1);
    }
    free(line);
    if (!c->busy) /* an empty line, or a failure: look further */
        event_active(c->kick, EV_TIMEOUT, 0);
}

static void on_kick(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    conn_process(arg);
}

static void on_read(struct bufferevent *bev, void *arg) {
    sl_repl_server_conn *c = arg;
    if (c->lingering) {
        struct evbuffer *in = bufferevent_get_input(bev);
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
    conn_process(c);
}

static void on_write(struct bufferevent *bev, void *arg) {
    sl_repl_server_conn *c = arg;
    if (c->closing && !c->lingering &&
        evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        conn_linger(c);
}

/* An error ends the connection at once. End of input is a half-close: the
 * client may still be reading, so requests already received are evaluated
 * and answered before the connection is closed. */
static void on_event(struct bufferevent *bev, short what, void *arg) {
    sl_repl_server_conn *c = arg;
    (void)bev;
    if ((what & BEV_EVENT_ERROR) || c->lingering) { /* error, EOF, timeout */
        conn_close(c);
    } else if (what & BEV_EVENT_EOF) {
        c->eof = 1;
        if (!c->busy)
            conn_process(c);
    }
}

static void ensure_metatable(lua_State *L);

/* Pushes a new connection userdata, anchored, and returns it. */
static sl_repl_server_conn *conn_new(lua_State *L) {
    ensure_metatable(L);
    sl_repl_server_conn *c = lua_newuserdata(L, sizeof(*c));
    memset(c, 0, sizeof(*c));
    c->ref = LUA_NOREF;
    luaL_getmetatable(L, CONN_MT);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    c->open = 1;
    return c;
}

typedef struct accept_ctx {
    struct bufferevent *bev;
    sl_repl_server_reply_fn fn;
    void *privdata;
    sl_repl_server_conn *c;
} accept_ctx;

static int accept_conn(lua_State *L) {
    accept_ctx *a = lua_touserdata(L, 1);
    sl_repl_server_conn *c = conn_new(L);
    c->bev = a->bev;
    c->fn = a->fn;
    c->privdata = a->privdata;
    a->c = c;
    return 0;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int socklen, void *arg) {
    (void)l;
    (void)sa;
    (void)socklen;
    (void)arg;
    lua_State *L = sl_rt.L;
    struct bufferevent *bev =
        bufferevent_socket_new(sl_rt.base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        evutil_closesocket(fd);
        return;
    }
    accept_ctx a = {.bev = bev};
    struct event *kick = NULL;
    int top = L ? lua_gettop(L) : 0;
    if (!L || !(kick = event_new(sl_rt.base, -1, 0, on_kick, NULL)) ||
        lua_cpcall(L, accept_conn, &a) != 0) {
        if (L)
            lua_settop(L, top);
        if (kick)
            event_free(kick);
        bufferevent_free(bev);
        return;
    }
    lua_settop(L, top);
    sl_repl_server_conn *c = a.c;
    event_assign(kick, sl_rt.base, -1, 0, on_kick, c);
    c->kick = kick;
    nconns++;
    bufferevent_setcb(bev, on_read, on_write, on_event, c);
    /* Input is read while an evaluation runs only up to one request's
     * bound: beyond it the socket is left unread until the buffer drains. */
    bufferevent_setwatermark(bev, EV_READ, 0, MAX_REQUEST + 1);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

/* conn:reply(ok, output, incomplete, frame) -> true if it was delivered */
static int l_reply(lua_State *L) {
    sl_repl_server_conn *c = luaL_checkudata(L, 1, CONN_MT);
    int ok = lua_toboolean(L, 2);
    size_t len, flen;
    const char *out = luaL_checklstring(L, 3, &len);
    int incomplete = lua_toboolean(L, 4);
    const char *frame = luaL_checklstring(L, 5, &flen);
    int was = c->open;
    c->replied = 1;
    conn_deliver(c, ok, out, len, incomplete, frame, flen);
    lua_pushboolean(L, was);
    return 1;
}

static int l_conn_gc(lua_State *L) {
    sl_repl_server_conn *c = luaL_checkudata(L, 1, CONN_MT);
    /* Only at lua_close can an open connection be collected. */
    c->ref = LUA_NOREF;
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
        nconns--;
    }
    if (c->kick) {
        event_free(c->kick);
        c->kick = NULL;
    }
    free(c->pending);
    c->pending = NULL;
    c->open = 0;
    return 0;
}

static int l_conn_tostring(lua_State *L) {
    sl_repl_server_conn *c = luaL_checkudata(L, 1, CONN_MT);
    lua_pushfstring(L, "sluice.repl connection (%s)",
                    c->open ? (c->busy ? "evaluating" : "idle") : "closed");
    return 1;
}

/* --- sluice._repl -------------------------------------------------------- */

/* path() -> the control socket's path, or nil when there is none. */
static int l_path(lua_State *L) {
    if (!listener)
        return 0;
    lua_pushstring(L, sock_path);
    return 1;
}

/* connections() -> how many clients are attached over the socket. */
static int l_connections(lua_State *L) {
    lua_pushnumber(L, (lua_Number)nconns);
    return 1;
}

static void ensure_metatable(lua_State *L) {
    if (luaL_newmetatable(L, CONN_MT)) {
        static const luaL_Reg methods[] = {{"reply", l_reply}, {NULL, NULL}};
        lua_pushcfunction(L, l_conn_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_conn_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_newtable(L);
        luaL_register(L, NULL, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
}

int luaopen_sluice_repl(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"path", l_path},
        {"connections", l_connections},
        {NULL, NULL},
    };
    ensure_metatable(L);
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}

/* --- local sessions ------------------------------------------------------ */

static int attach_local(lua_State *L) {
    accept_ctx *a = lua_touserdata(L, 1);
    sl_repl_server_conn *c = conn_new(L);
    c->fn = a->fn;
    c->privdata = a->privdata;
    a->c = c;
    return 0;
}

sl_repl_server_conn *sl_repl_server_attach(sl_repl_server_reply_fn fn,
                                           void *privdata) {
    lua_State *L = sl_rt.L;
    accept_ctx a = {.fn = fn, .privdata = privdata};
    int top = lua_gettop(L);
    if (lua_cpcall(L, attach_local, &a) != 0) {
        lua_settop(L, top);
        return NULL;
    }
    lua_settop(L, top);
    a.c->kick = event_new(sl_rt.base, -1, 0, on_kick, a.c);
    if (!a.c->kick) {
        conn_close(a.c);
        return NULL;
    }
    return a.c;
}

int sl_repl_server_submit(sl_repl_server_conn *c, const char *chunk,
                          size_t len) {
    if (!c || !c->open || c->busy || c->pending)
        return -1;
    c->pending = malloc(len + 1);
    if (!c->pending)
        return -1;
    memcpy(c->pending, chunk, len);
    c->pending[len] = '\0';
    c->pending_len = len;
    event_active(c->kick, EV_TIMEOUT, 0);
    return 0;
}

void sl_repl_server_detach(sl_repl_server_conn *c) {
    if (!c || !sl_rt.L)
        return;
    free(c->pending);
    c->pending = NULL;
    conn_close(c);
}

/* --- the listener -------------------------------------------------------- */

static void remove_socket(void) {
    struct stat st;
    if (!sock_owned)
        return;
    sock_owned = 0;
    /* Only if it is still the file we bound: another process may have
     * replaced it after deciding ours was stale. */
    if (lstat(sock_path, &st) == 0 && st.st_dev == sock_dev &&
        st.st_ino == sock_ino)
        unlink(sock_path);
}

void sl_repl_server_close(void) {
    if (listener) {
        evconnlistener_free(listener);
        listener = NULL;
    }
    remove_socket();
}

static void on_listen_error(struct evconnlistener *l, void *arg) {
    (void)l;
    (void)arg;
    sl_logf(SL_LOG_WARNING, "control: accept failed: %s", strerror(errno));
}

/* Whether a process listens on the socket at path: 1 yes, 0 no (stale),
 * -1 cannot tell (errno set). Non-blocking: a listener that is not
 * accepting right now (its loop busy, its backlog full: EAGAIN) is live,
 * and must not stall our start. */
static int socket_live(const struct sockaddr_un *sa) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    int r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    int e = errno;
    close(fd);
    if (r == 0 || e == EAGAIN || e == EINPROGRESS)
        return 1;
    errno = e;
    return e == ECONNREFUSED ? 0 : -1;
}

static void warn_in_use(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    (void)arg;
    sl_logf(SL_LOG_WARNING,
            "control socket %s is in use by another process; running "
            "without one (choose another with --control PATH)",
            sock_path);
}

/* Another process listens on path: an error when strict, else a warning. */
static int in_use(const char *path, int strict, char *err, size_t errlen) {
    if (strict) {
        snprintf(err, errlen, "control socket %s is in use by another process",
                 path);
        return -1;
    }
    /* Logged from the loop, after the main script's first slice: a log
     * line on stdout before the script starts would make its
     * io.stdout:setvbuf() fail (C allows it only before any output). */
    struct timeval soon = {0, 1}; /* 0 would activate it at once */
    snprintf(sock_path, sizeof(sock_path), "%s", path);
    event_base_once(sl_rt.base, -1, EV_TIMEOUT, warn_in_use, NULL, &soon);
    return 0;
}

int sl_repl_server_listen(const char *path, int strict, char *err,
                          size_t errlen) {
    struct sockaddr_un sa;
    struct stat st;
    int fd = -1;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "control socket path %s is too long", path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path));
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen,
                     "control socket %s exists and is not a socket", path);
            return -1;
        }
        int live = socket_live(&sa);
        if (live > 0)
            return in_use(path, strict, err, errlen);
        if (live < 0) {
            snprintf(err, errlen, "control socket %s: %s", path,
                     strerror(errno));
            return -1;
        }
        if (unlink(path) != 0 && errno != ENOENT) {
            snprintf(err, errlen, "cannot remove stale control socket %s: %s",
                     path, strerror(errno));
            return -1;
        }
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        goto err;
    mode_t old = umask(0177);
    int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (r != 0 && errno == EADDRINUSE) { /* lost a race for the path */
        close(fd);
        return in_use(path, strict, err, errlen);
    }
    if (r != 0)
        goto err;
    if (chmod(path, 0600) != 0 || lstat(path, &st) != 0 || listen(fd, 64) != 0)
        goto err_bound;
    snprintf(sock_path, sizeof(sock_path), "%s", path);
    sock_dev = st.st_dev;
    sock_ino = st.st_ino;
    sock_owned = 1;
    /* Not sl_loop_ref'd: an idle control socket keeps nothing alive. */
    listener = evconnlistener_new(sl_rt.base, on_accept, NULL,
                                  LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
                                  -1, fd);
    if (!listener) {
        errno = ENOMEM;
        goto err_bound;
    }
    evconnlistener_set_error_cb(listener, on_listen_error);
    if (!hooks_set) {
        hooks_set = 1;
        sl_runtime_on_close(sl_repl_server_close);
        atexit(remove_socket);
    }
    return 0;
err_bound:
    snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
    unlink(path);
    close(fd);
    sock_owned = 0;
    return -1;
err:
    snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}
