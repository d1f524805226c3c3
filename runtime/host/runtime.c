/* runtime.c -- the process-wide runtime: Lua state, event base, shutdown */
#include "runtime.h"

#include <curl/curl.h>
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/notify.h"
#include "core/timeout.h"
#include "embed.h"
#include "task.h"
#include "timer.h"

sl_runtime sl_rt = {.shutdown_timeout = 10.0,
                    .shutdown_handlers = LUA_NOREF,
                    .reload_handlers = LUA_NOREF};

static struct event *sig_int, *sig_term, *sig_hup, *deadline_ev;
/* The shutdown deadline passed: the loop is not run again (what still holds
 * a loop reference, a listening server whose closing handler was killed, is
 * freed by sl_runtime_close, not waited for). */
static int deadline_hit;
static void (*close_hooks[16])(void);
static int nclose_hooks;
static int signals_seen;

/* libevent's own handlers for SIGINT and SIGTERM, which ours chain to. */
static struct sigaction ev_sigint, ev_sigterm;
static volatile sig_atomic_t stop_signals;

double sl_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double sl_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void sl_loop_ref(void) { sl_rt.refs++; }

void sl_loop_unref(void) {
    if (--sl_rt.refs == 0)
        event_base_loopbreak(sl_rt.base);
}

/* Runs the handlers in the registry list `ref` in a task, newest first for
 * shutdown (like defers), oldest first otherwise. The runner is Lua so that
 * handlers may yield (a handler that flushes to Redis waits on the network)
 * and one failing handler does not stop the others. */
static const char handler_runner[] =
    "local list, reverse, what = ...\n"
    "local log = require 'sluice.log'\n"
    "local first, last, step = 1, #list, 1\n"
    "if reverse then first, last, step = #list, 1, -1 end\n"
    "for i = first, last, step do\n"
    "  local ok, err = xpcall(list[i], debug.traceback)\n"
    "  if not ok then\n"
    "    log.error(what .. ' handler failed', { error = tostring(err) })\n"
    "  end\n"
    "end\n";

static void run_handlers(int ref, int reverse, const char *what) {
    lua_State *L = sl_rt.L;
    if (ref == LUA_NOREF)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    if (lua_objlen(L, -1) == 0) {
        lua_pop(L, 1);
        return;
    }
    if (luaL_loadbuffer(L, handler_runner, sizeof(handler_runner) - 1,
                        "=[sluice handlers]") != 0) {
        sl_logf(SL_LOG_CRITICAL, "internal error: %s", lua_tostring(L, -1));
        lua_pop(L, 2);
        return;
    }
    lua_insert(L, -2);
    lua_pushboolean(L, reverse);
    lua_pushstring(L, what);
    sl_task_spawn(L, 3);
    lua_pop(L, 1);
}

static void deadline_passed(evutil_socket_t fd, short what, void *arg) {
    (void)fd;
    (void)what;
    (void)arg;
    sl_task_counts c = sl_task_stats();
    sl_log_field fields[] = {
        {.key = "tasks", .type = SL_LOG_NUM, .num = (double)c.running},
        {.key = "timeout", .type = SL_LOG_NUM, .num = sl_rt.shutdown_timeout},
    };
    sl_log_write(SL_LOG_WARNING, sl_log_clock(),
                 "shutdown deadline passed; killing the remaining tasks",
                 fields, 2);
    deadline_hit = 1;
    sl_task_shutdown_kill_all();
    event_base_loopbreak(sl_rt.base);
}

void sl_shutdown(void) {
    if (sl_rt.stopping)
        return;
    sl_rt.stopping = 1;
    /* under systemd (Type=notify): stopping, not failed; best effort */
    sl_notify("STOPPING=1", NULL, 0);
    sl_timer_shutdown();
    sl_task_wake_sleepers();
    run_handlers(sl_rt.shutdown_handlers, 1, "on_shutdown");
    struct timeval tv;
    sl_timeout_tv(sl_rt.shutdown_timeout, &tv); /* finite, >= 0 */
    deadline_ev = evtimer_new(sl_rt.base, deadline_passed, NULL);
    evtimer_add(deadline_ev, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    (void)what;
    (void)arg;
    if (sig == SIGHUP) {
        sl_logf(SL_LOG_INFO, "SIGHUP received: reloading");
        run_handlers(sl_rt.reload_handlers, 0, "on_reload");
        return;
    }
    if (signals_seen++ > 0) {
        sl_logf(SL_LOG_WARNING, "second %s: exiting now",
                sig == SIGINT ? "SIGINT" : "SIGTERM");
        fflush(NULL);
        sl_log_flush(0.5); /* _exit skips the log's own flush at exit */
        _exit(128 + (int)sig);
    }
    sl_log_field f = {
        .key = "timeout", .type = SL_LOG_NUM, .num = sl_rt.shutdown_timeout};
    sl_log_write(SL_LOG_INFO, sl_log_clock(),
                 sig == SIGINT ? "SIGINT received: shutting down"
                               : "SIGTERM received: shutting down",
                 &f, 1);
    sl_shutdown();
}

/* The real handler for SIGINT and SIGTERM. libevent only learns of a signal
 * when its loop next polls, which never happens while Lua spins in a task;
 * so the second signal exits from here, at once, and the first is passed
 * on to libevent's handler for the graceful path (which on_signal takes
 * as soon as the loop runs again). Async-signal-safe. */
static void on_stop_signal(int sig) {
    if (stop_signals++ > 0) {
        static const char term[] = "sluice: second SIGTERM: exiting now\n";
        static const char intr[] = "sluice: second SIGINT: exiting now\n";
        ssize_t n = sig == SIGINT
                        ? write(STDERR_FILENO, intr, sizeof(intr) - 1)
                        : write(STDERR_FILENO, term, sizeof(term) - 1);
        (void)n;
        _exit(128 + sig);
    }
    const struct sigaction *ev = sig == SIGINT ? &ev_sigint : &ev_sigterm;
    if (ev->sa_handler != SIG_DFL && ev->sa_handler != SIG_IGN)
        ev->sa_handler(sig);
}

/* Puts on_stop_signal in front of libevent's handler (installed by
 * evsignal_add, kept in *ev). */
static void chain_stop_signal(int sig, struct sigaction *ev) {
    struct sigaction sa;
    if (sigaction(sig, NULL, ev) != 0 || (ev->sa_flags & SA_SIGINFO))
        return; /* not the plain handler libevent installs: leave it */
    sa = *ev;
    sa.sa_handler = on_stop_signal;
    sigaction(sig, &sa, NULL);
}

/* os.exit(code [, close]) would close the Lua state from inside a running
 * task, under libevent's and our own frames; sluice's flushes and exits. */
static int os_exit(lua_State *L) {
    int code;
    if (lua_isboolean(L, 1))
        code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
    else
        code = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
    fflush(NULL);
    exit(code);
    return 0;
}

int sl_runtime_init(const char *const *lua_dirs, int ndirs, char *err,
                    size_t errlen) {
    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, errlen, "cannot initialise libcurl");
        return -1;
    }
    /* A precise timer: without it libevent reads CLOCK_MONOTONIC_COARSE,
     * whose ticks (4 ms here) let a sleep end up to a tick early, which a
     * limiter handing out 10 ms slots cannot afford. No cached time: every
     * timer (a sleep, a Redis or server timeout, a limiter slot) counts
     * from the moment it is armed, not from the start of the loop turn,
     * which a collector may have spent computing or in SQLite; one
     * clock_gettime (vDSO) per event_add. */
    struct event_config *cfg = event_config_new();
    if (cfg)
        event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER |
                                       EVENT_BASE_FLAG_NO_CACHE_TIME);
    sl_rt.base = cfg ? event_base_new_with_config(cfg) : NULL;
    if (cfg)
        event_config_free(cfg);
    if (!sl_rt.base) {
        snprintf(err, errlen, "cannot create the event loop");
        return -1;
    }
    sl_rt.L = luaL_newstate();
    if (!sl_rt.L) {
        snprintf(err, errlen, "cannot create the Lua state (out of memory)");
        return -1;
    }
    lua_State *L = sl_rt.L;
    /* The heap grows to 1.2x what was live before the GC starts a cycle
     * (LuaJIT's default is 2x): a thousand collectors run in `sluice run`
     * peak at 29 MiB instead of 32 (150) or 39 (200), for CPU within the
     * noise there and 10% more on a run that does nothing
     * (tests/bench/README.md, "Collectors at scale"); the configuration's
     * gc_pause overrides it. */
    lua_gc(L, LUA_GCSETPAUSE, 120);
    luaL_openlibs(L);
    lua_getglobal(L, "os");
    lua_pushcfunction(L, os_exit);
    lua_setfield(L, -2, "exit");
    lua_pop(L, 1);
    sl_embed_install(L, lua_dirs, ndirs);
    lua_newtable(L);
    sl_rt.shutdown_handlers = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    sl_rt.reload_handlers = luaL_ref(L, LUA_REGISTRYINDEX);
    sl_task_init();
    sl_timer_init(L);

    sig_int = evsignal_new(sl_rt.base, SIGINT, on_signal, NULL);
    sig_term = evsignal_new(sl_rt.base, SIGTERM, on_signal, NULL);
    sig_hup = evsignal_new(sl_rt.base, SIGHUP, on_signal, NULL);
    evsignal_add(sig_int, NULL);
    evsignal_add(sig_term, NULL);
    evsignal_add(sig_hup, NULL);
    chain_stop_signal(SIGINT, &ev_sigint);
    chain_stop_signal(SIGTERM, &ev_sigterm);
    return 0;
}

int sl_runtime_run(void) {
    if (sl_rt.refs > 0)
        event_base_loop(sl_rt.base, 0);
    if (!sl_rt.stopping)
        sl_shutdown(); /* natural end: on_shutdown handlers still run */
    if (sl_rt.refs > 0 && !deadline_hit)
        event_base_loop(sl_rt.base, 0);
    return sl_rt.exit_code;
}

int sl_runtime_on_close(void (*fn)(void)) {
    if (nclose_hooks == (int)(sizeof(close_hooks) / sizeof(close_hooks[0])))
        return -1;
    close_hooks[nclose_hooks++] = fn;
    return 0;
}

void sl_runtime_close(void) {
    if (sl_rt.L) {
        sl_task_shutdown_kill_all();
        sl_timer_close();
        lua_close(sl_rt.L);
        sl_rt.L = NULL;
    }
    while (nclose_hooks > 0)
        close_hooks[--nclose_hooks]();
    sl_task_close();
    struct event **evs[] = {&sig_int, &sig_term, &sig_hup, &deadline_ev};
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++) {
        if (*evs[i])
            event_free(*evs[i]);
        *evs[i] = NULL;
    }
    if (sl_rt.base) {
        /* A bufferevent freed from inside one of its own callbacks in the
         * loop's last pass is finalized by a callback that pass never ran,
         * and event_base_free does not run that kind: one non-blocking pass
         * does. Every module's events are gone by now (__gc, close hooks),
         * so nothing else can run. */
        event_base_loop(sl_rt.base, EVLOOP_NONBLOCK);
        event_base_free(sl_rt.base);
    }
    sl_rt.base = NULL;
    sl_log_ring_free();
    sl_log_redact_free();
    curl_global_cleanup();
}
