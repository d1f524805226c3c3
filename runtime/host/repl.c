/* repl.c -- the REPL front ends: the `sluice repl` client and `run -i`
 *
 * Both send whole chunks: a line that leaves the chunk incomplete (the
 * reply says incomplete = true) is kept, the continuation prompt is shown,
 * and the next line is appended and the whole chunk sent again.
 */
#include "repl.h"
#include "core/strbuf.h"

#include <editline/readline.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include "repl_server.h"
#include "runtime.h"

#define PROMPT "sluice> "
#define CONTINUE "    ... "
#define HISTORY_FILE ".sluice_history"
#define HISTORY_MAX 1000

int luaopen_cjson(lua_State *L); /* lua-cjson, linked statically */

const char sl_repl_usage[] =
    "usage: sluice repl [SOCKET] [-e CHUNK]\n"
    "\n"
    "Attaches to a running sluice through its control socket (default\n"
    "./sluice.sock; see run --control) and evaluates Lua in the live process.\n"
    "An expression shows its value; help() lists the helpers (breakers(),\n"
    "limiters(), collectors(), trip(name), ...). Line editing and history\n"
    "(~/.sluice_history) on a terminal; Ctrl-D detaches, leaving the process\n"
    "running.\n"
    "\n"
    "  -e CHUNK   evaluate CHUNK, print the result and exit: 0 on success,\n"
    "             1 when it raised an error (printed on stderr)\n";

/* --- chunks ----------------------------------------------------------------
 */

/* Appends a line to a chunk, newline-separated. */
static int chunk_add(strbuf *b, const char *line) {
    if (b->len > 0 && sb_add(b, "\n", 1) != 0)
        return -1;
    return sb_add(b, line, strlen(line));
}

static int blank(const char *s) {
    while (*s == ' ' || *s == '\t' || *s == '\r')
        s++;
    return *s == '\0';
}

static void history_path(char *buf, size_t n) {
    const char *home = getenv("HOME");
    buf[0] = '\0';
    if (home && *home)
        snprintf(buf, n, "%s/%s", home, HISTORY_FILE);
}

static void history_open(char *path, size_t n) {
    history_path(path, n);
    using_history();
    stifle_history(HISTORY_MAX);
    if (path[0])
        read_history(path);
}

static void history_save(const char *path) {
    if (path[0])
        write_history(path);
}

static void print_output(FILE *f, const char *out, size_t len) {
    if (len == 0)
        return;
    fwrite(out, 1, len, f);
    if (out[len - 1] != '\n')
        fputc('\n', f);
    fflush(f);
}

/* --- the client ---------------------------------------------------------- */

typedef struct client {
    int fd;
    const char *path;
    strbuf in;    /* bytes received, not yet a full line */
    lua_State *J; /* a private state for cjson.decode */
    int ok, incomplete;
    strbuf output;
} client;

static int send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* {"chunk": "..."} with every byte below 0x20, '"' and '\\' escaped; other
 * bytes go as they are (cjson takes UTF-8 as is). */
static int send_request(client *c, const char *chunk, size_t len) {
    strbuf b = {0};
    int rc = sb_add(&b, "{\"chunk\":\"", 10);
    for (size_t i = 0; i < len && rc == 0; i++) {
        unsigned char ch = (unsigned char)chunk[i];
        char esc[8];
        if (ch == '"' || ch == '\\') {
            esc[0] = '\\';
            esc[1] = (char)ch;
            rc = sb_add(&b, esc, 2);
        } else if (ch < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", ch);
            rc = sb_add(&b, esc, 6);
        } else {
            rc = sb_add(&b, (const char *)&chunk[i], 1);
        }
    }
    if (rc == 0)
        rc = sb_add(&b, "\"}\n", 3);
    if (rc == 0)
        rc = send_all(c->fd, b.p, b.len);
    free(b.p);
    return rc;
}

/* Reads one reply into c->ok, c->incomplete, c->output. Returns 0, or -1
 * when the connection closed or the reply is not one. */
static int read_reply(client *c) {
    char *nl;
    while (!(nl = c->in.p ? memchr(c->in.p, '\n', c->in.len) : NULL)) {
        char buf[4096];
        ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || sb_add(&c->in, buf, (size_t)r) != 0)
            return -1;
    }
    size_t n = (size_t)(nl - c->in.p);
    lua_State *J = c->J;
    lua_settop(J, 1); /* cjson.decode */
    lua_pushvalue(J, 1);
    lua_pushlstring(J, c->in.p, n);
    memmove(c->in.p, nl + 1, c->in.len - n - 1);
    c->in.len -= n + 1;
    if (lua_pcall(J, 1, 1, 0) != 0 || !lua_istable(J, -1))
        return -1;
    lua_getfield(J, -1, "ok");
    c->ok = lua_toboolean(J, -1);
    lua_getfield(J, -2, "incomplete");
    c->incomplete = lua_toboolean(J, -1);
    lua_getfield(J, -3, "output");
    size_t olen = 0;
    const char *out = lua_tolstring(J, -1, &olen);
    c->output.len = 0;
    return sb_add(&c->output, out ? out : "", out ? olen : 0);
}

/* Sends a chunk and reads the reply; on failure says so on stderr. */
static int roundtrip(client *c, const char *chunk, size_t len) {
    if (send_request(c, chunk, len) == 0 && read_reply(c) == 0)
        return 0;
    fprintf(stderr,
            "sluice: the connection to %s closed (the process "
            "exited?)\n",
            c->path);
    return -1;
}

static int client_connect(client *c) {
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(c->path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "sluice: repl: socket path %s is too long\n", c->path);
        return -1;
    }
    memcpy(sa.sun_path, c->path, strlen(c->path));
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        fprintf(stderr,
                "sluice: repl: cannot connect to %s: %s (is `sluice run` "
                "running there?)\n",
                c->path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Reads a line without line editing (stdin is not a terminal). */
static char *plain_line(void) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        return NULL;
    }
    if (n > 0 && line[n - 1] == '\n')
        line[n - 1] = '\0';
    return line;
}

static int interactive(client *c) {
    int tty = isatty(0);
    char hist[PATH_MAX];
    strbuf chunk = {0};
    int code = 0;
    if (tty)
        history_open(hist, sizeof(hist));
    for (;;) {
        char *line =
            tty ? readline(chunk.len ? CONTINUE : PROMPT) : plain_line();
        if (!line) {
            if (tty)
                fputc('\n',
                      stdout); /* the shell's prompt on a line of its own */
            if (!tty && chunk.len) {
                fprintf(stderr, "sluice: repl: input ended inside an "
                                "unfinished chunk\n");
                code = 1;
            }
            break;
        }
        if (chunk.len == 0 && blank(line)) {
            free(line);
            continue;
        }
        if (tty && !blank(line))
            add_history(line);
        int rc = chunk_add(&chunk, line);
        free(line);
        if (rc != 0 || roundtrip(c, chunk.p, chunk.len) != 0) {
            code = 1;
            break;
        }
        if (c->incomplete)
            continue;
        print_output(stdout, c->output.p, c->output.len);
        chunk.len = 0;
    }
    if (tty)
        history_save(hist);
    free(chunk.p);
    return code;
}

int sl_repl_main(int argc, char **argv) {
    client c = {.fd = -1, .path = NULL};
    const char *expr = NULL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(sl_repl_usage, stdout);
            return 0;
        }
        if (strcmp(argv[i], "-e") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "sluice: repl: -e needs a chunk (see sluice "
                                "repl --help)\n");
                return 2;
            }
            expr = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr,
                    "sluice: repl: unknown option '%s' (see sluice "
                    "repl --help)\n",
                    argv[i]);
            return 2;
        } else if (c.path) {
            fprintf(stderr,
                    "sluice: repl: unexpected argument '%s' (see "
                    "sluice repl --help)\n",
                    argv[i]);
            return 2;
        } else {
            c.path = argv[i];
        }
    }
    if (!c.path)
        c.path = "sluice.sock";
    if (client_connect(&c) != 0) {
        if (c.fd >= 0)
            close(c.fd);
        return 2;
    }
    c.J = luaL_newstate();
    if (!c.J) {
        close(c.fd);
        return 1;
    }
    lua_pushcfunction(c.J, luaopen_cjson);
    lua_call(c.J, 0, 1);
    lua_getfield(c.J, -1, "decode");
    lua_replace(c.J, 1);
    int code;
    if (expr) {
        code = roundtrip(&c, expr, strlen(expr)) != 0 ? 1 : c.ok ? 0 : 1;
        if (code == 0 || c.output.len)
            print_output(c.ok ? stdout : stderr, c.output.p, c.output.len);
    } else {
        code = interactive(&c);
    }
    lua_close(c.J);
    close(c.fd);
    free(c.in.p);
    free(c.output.p);
    return code;
}

/* --- run -i: the terminal inside the process ----------------------------- */

static struct {
    sl_repl_server_conn *conn;
    struct event *ev;   /* stdin readable */
    struct event *kick; /* plain mode: look at buffered lines */
    struct evbuffer *in;
    int tty, attached, busy, eof, handler;
    struct termios saved; /* the terminal as we found it */
    strbuf chunk;
    char hist[PATH_MAX];
} I;

static void take_line(char *line);

static void prompt_on(void) {
    if (!I.attached)
        return;
    if (I.tty) {
        rl_callback_handler_install(I.chunk.len ? CONTINUE : PROMPT, take_line);
        I.handler = 1;
    }
    if (!I.eof)
        event_add(I.ev, NULL);
    if (!I.tty)
        event_active(I.kick, EV_TIMEOUT, 0);
}

static void prompt_off(void) {
    if (I.handler) {
        rl_callback_handler_remove();
        I.handler = 0;
        /* libedit does not always give cooked mode back (seen after a
         * SIGINT during an evaluation): put back what we found. */
        tcsetattr(0, TCSADRAIN, &I.saved);
    }
    if (I.ev)
        event_del(I.ev);
}

static void detach(void) {
    if (!I.attached)
        return;
    I.attached = 0;
    prompt_off();
    if (I.tty)
        history_save(I.hist);
    sl_repl_server_detach(I.conn);
    I.conn = NULL;
    sl_loop_unref();
}

static void on_reply(int ok, const char *out, size_t len, int incomplete,
                     void *privdata) {
    (void)ok;
    (void)privdata;
    I.busy = 0;
    if (!I.attached)
        return;
    if (!incomplete) {
        print_output(stdout, out, len);
        I.chunk.len = 0;
    }
    if (sl_rt.stopping)
        detach(); /* no prompt once shutdown is under way */
    else
        prompt_on();
}

/* A line from the terminal (NULL at end of input). Owns line. */
static void take_line(char *line) {
    prompt_off();
    if (!line) {
        if (I.tty)
            fputc('\n', stdout);
        fflush(stdout);
        sl_shutdown();
        detach();
        return;
    }
    if (I.chunk.len == 0 && blank(line)) {
        free(line);
        prompt_on();
        return;
    }
    if (I.tty && !blank(line))
        add_history(line);
    int rc = chunk_add(&I.chunk, line);
    free(line);
    if (rc != 0 || sl_repl_server_submit(I.conn, I.chunk.p, I.chunk.len) != 0) {
        fputs("sluice: cannot evaluate that (out of memory?)\n", stderr);
        I.chunk.len = 0;
        prompt_on();
        return;
    }
    I.busy = 1;
}

/* Plain mode: hands over the next buffered line, if any. */
static void plain_next(void) {
    if (!I.attached || I.busy)
        return;
    size_t n;
    char *line = evbuffer_readln(I.in, &n, EVBUFFER_EOL_LF);
    if (!line && I.eof && evbuffer_get_length(I.in) > 0) {
        n = evbuffer_get_length(I.in);
        line = malloc(n + 1);
        if (line) {
            evbuffer_remove(I.in, line, n);
            line[n] = '\0';
        }
    }
    if (line)
        take_line(line);
    else if (I.eof)
        take_line(NULL);
}

/* Plain mode: the next buffered line. Terminal: the first prompt, shown
 * after the main script's first slice has run (and printed what it prints
 * at start), not under it. */
static void on_kick(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    (void)arg;
    if (I.tty)
        prompt_on();
    else
        plain_next();
}

static void on_stdin(evutil_socket_t fd, short what, void *arg) {
    (void)what;
    (void)arg;
    if (I.tty) {
        rl_callback_read_char();
        return;
    }
    int r = evbuffer_read(I.in, fd, 65536);
    if (r <= 0) {
        I.eof = 1;
        event_del(I.ev);
    }
    plain_next();
}

/* An on_shutdown handler: a shutdown detaches the terminal. */
static int l_detach(lua_State *L) {
    (void)L;
    detach();
    return 0;
}

static void interactive_close(void) {
    prompt_off();
    if (I.ev)
        event_free(I.ev);
    if (I.kick)
        event_free(I.kick);
    if (I.in)
        evbuffer_free(I.in);
    free(I.chunk.p);
    memset(&I, 0, sizeof(I));
}

int sl_repl_interactive(char *err, size_t errlen) {
    lua_State *L = sl_rt.L;
    I.tty = isatty(0);
    I.ev = event_new(sl_rt.base, 0, EV_READ | EV_PERSIST, on_stdin, NULL);
    I.kick = event_new(sl_rt.base, -1, 0, on_kick, NULL);
    I.in = evbuffer_new();
    I.conn = sl_repl_server_attach(on_reply, NULL);
    if (!I.ev || !I.kick || !I.in || !I.conn ||
        sl_runtime_on_close(interactive_close) != 0) {
        snprintf(err, errlen, "cannot attach the terminal (out of memory)");
        sl_repl_server_detach(I.conn);
        interactive_close();
        return -1;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, sl_rt.shutdown_handlers);
    lua_pushcfunction(L, l_detach);
    lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
    lua_pop(L, 1);
    if (I.tty) {
        tcgetattr(0, &I.saved);
        rl_catch_signals = 0; /* libevent owns SIGINT and SIGTERM */
        history_open(I.hist, sizeof(I.hist));
    }
    I.attached = 1;
    sl_loop_ref();
    if (I.tty) {
        struct timeval now = {0, 0};
        evtimer_add(I.kick, &now);
    } else {
        prompt_on();
    }
    return 0;
}
