/* accept_guard.c -- backs a listener off while accept() keeps failing */
#include "accept_guard.h"

#include <event2/event.h>
#include <event2/util.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "runtime.h"

#define FIRST_PAUSE 0.05
#define MAX_PAUSE 1.0
#define SETTLE 1.0 /* accepting this long after a pause ends an episode */

struct sl_accept_guard {
    struct evconnlistener *lev;
    struct event *timer;
    double pause; /* the current pause; 0 outside an episode */
    double since; /* when the episode began */
    long errors;  /* accept errors in this episode */
    int probing;  /* re-enabled after a pause, not yet settled */
    char what[96];
    sl_accept_guard *next;
};

/* evconnlistener error callbacks get the listener's accept-callback data
 * (evhttp's), not ours: guards are found by listener. */
static sl_accept_guard *guards;

static sl_accept_guard *find(struct evconnlistener *lev) {
    for (sl_accept_guard *g = guards; g; g = g->next)
        if (g->lev == lev)
            return g;
    return NULL;
}

static void arm(sl_accept_guard *g, double s) {
    struct timeval tv;
    tv.tv_sec = (time_t)floor(s);
    tv.tv_usec = (suseconds_t)((s - floor(s)) * 1e6);
    evtimer_add(g->timer, &tv);
}

static void on_accept_error(struct evconnlistener *lev, void *unused) {
    (void)unused;
    int err = EVUTIL_SOCKET_ERROR();
    sl_accept_guard *g = find(lev);
    if (!g)
        return;
    evconnlistener_disable(lev);
    g->errors++;
    g->probing = 0;
    if (g->pause == 0) {
        g->pause = FIRST_PAUSE;
        g->since = sl_now();
        const char *why = evutil_socket_error_to_string(err);
        sl_log_field fields[] = {
            {.key = "listener",
             .type = SL_LOG_STR,
             .str = g->what,
             .len = strlen(g->what)},
            {.key = "error",
             .type = SL_LOG_STR,
             .str = why,
             .len = strlen(why)},
        };
        sl_log_write(SL_LOG_WARNING, sl_log_clock(),
                     "cannot accept connections; pausing accepts until "
                     "descriptors free up",
                     fields, 2);
    } else {
        g->pause = fmin(g->pause * 2, MAX_PAUSE);
    }
    arm(g, g->pause);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
    sl_accept_guard *g = arg;
    (void)fd;
    (void)what;
    if (!g->probing) { /* the pause is over: try again */
        g->probing = 1;
        evconnlistener_enable(g->lev);
        arm(g, SETTLE);
        return;
    }
    /* No error for SETTLE seconds: the episode is over. */
    sl_log_field fields[] = {
        {.key = "listener",
         .type = SL_LOG_STR,
         .str = g->what,
         .len = strlen(g->what)},
        {.key = "errors_suppressed",
         .type = SL_LOG_NUM,
         .num = (double)(g->errors - 1)},
        {.key = "paused_seconds",
         .type = SL_LOG_NUM,
         .num = sl_now() - g->since - SETTLE},
    };
    sl_log_write(SL_LOG_INFO, sl_log_clock(), "accepting connections again",
                 fields, 3);
    g->pause = 0;
    g->errors = 0;
    g->probing = 0;
}

sl_accept_guard *sl_accept_guard_new(struct evconnlistener *lev,
                                     const char *what) {
    sl_accept_guard *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->timer = evtimer_new(sl_rt.base, on_timer, g);
    if (!g->timer) {
        free(g);
        return NULL;
    }
    g->lev = lev;
    snprintf(g->what, sizeof(g->what), "%s", what);
    g->next = guards;
    guards = g;
    evconnlistener_set_error_cb(lev, on_accept_error);
    return g;
}

void sl_accept_guard_free(sl_accept_guard *g) {
    if (!g)
        return;
    for (sl_accept_guard **p = &guards; *p; p = &(*p)->next) {
        if (*p == g) {
            *p = g->next;
            break;
        }
    }
    evconnlistener_set_error_cb(g->lev, NULL);
    event_free(g->timer);
    free(g);
}
