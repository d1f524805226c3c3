/* test_pg.c -- core/pg.c without a server: COPY escaping, identifiers,
 * connection failures and the connect timeout on a loop of its own */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/pg.h"
#include "core/strbuf.h"
#include "test.h"

TEST(copy_escape_escapes_the_four_specials) {
    strbuf b = {0};
    const char s[] = "a\tb\nc\\d\re";
    CHECK_INT(sl_pg_copy_escape(&b, s, sizeof(s) - 1), 0);
    CHECK(strcmp(b.p, "a\\tb\\nc\\\\d\\re") == 0);
    CHECK_INT(sl_pg_copy_escape(&b, "", 0), 0);
    CHECK_INT(sl_pg_copy_escape(&b, "plain", 5), 0);
    CHECK(strcmp(b.p, "a\\tb\\nc\\\\d\\replain") == 0);
    sb_free(&b);
}

TEST(quote_ident_doubles_quotes_and_refuses_nul) {
    strbuf b = {0};
    CHECK_INT(sl_pg_quote_ident(&b, "a\"b", 3), 0);
    CHECK(strcmp(b.p, "\"a\"\"b\"") == 0);
    size_t len = b.len;
    CHECK_INT(sl_pg_quote_ident(&b, "x\0y", 3), -1);
    CHECK_INT(b.len, len);
    sb_free(&b);
}

typedef struct seen {
    int calls;
    sl_pg_status status;
    char message[512];
} seen;

static void on_done(sl_pg *c, const sl_pg_outcome *o, void *privdata) {
    seen *s = privdata;
    (void)c;
    s->calls++;
    s->status = o->status;
    snprintf(s->message, sizeof(s->message), "%s", o->message);
}

/* A port with a listening socket that never answers (the kernel completes
 * the TCP handshake; no server speaks). */
static int silent_listener(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        listen(fd, 4) != 0 || getsockname(fd, (struct sockaddr *)&a, &al))
        return -1;
    *port = ntohs(a.sin_port);
    return fd;
}

TEST(connect_refused_reports_econn_from_the_loop) {
    struct event_base *base = event_base_new();
    int port, fd = silent_listener(&port);
    CHECK(fd >= 0);
    close(fd); /* nobody listens there now */
    char info[128], err[256];
    snprintf(info, sizeof(info),
             "host=127.0.0.1 port=%d user=x dbname=x connect_timeout=0", port);
    seen s = {0};
    sl_pg *c = sl_pg_connect(base, info, 5, on_done, &s, err, sizeof(err));
    CHECK(c != NULL);
    CHECK_INT(s.calls, 0); /* never from inside sl_pg_connect */
    event_base_dispatch(base);
    CHECK_INT(s.calls, 1);
    CHECK_INT(s.status, SL_PG_ECONN);
    CHECK(strstr(s.message, "Connection refused") != NULL);
    CHECK(strchr(s.message, '\n') == NULL);
    CHECK_INT(sl_pg_get_state(c), SL_PG_CLOSED);
    CHECK(strstr(sl_pg_closed_reason(c), "Connection refused") != NULL);
    /* a closed handle refuses at once, saying why */
    CHECK_INT(
        sl_pg_query(c, "SELECT 1", 0, NULL, 1, on_done, &s, err, sizeof(err)),
        -1);
    CHECK(strncmp(err, "connection closed: ", 19) == 0);
    CHECK_INT(s.calls, 1);
    sl_pg_free(c);
    event_base_free(base);
}

TEST(connect_times_out_on_a_silent_server) {
    struct event_base *base = event_base_new();
    int port, fd = silent_listener(&port);
    CHECK(fd >= 0);
    char info[128], err[256];
    snprintf(info, sizeof(info), "host=127.0.0.1 port=%d user=x dbname=x",
             port);
    seen s = {0};
    sl_pg *c = sl_pg_connect(base, info, 0.05, on_done, &s, err, sizeof(err));
    CHECK(c != NULL);
    event_base_dispatch(base);
    CHECK_INT(s.calls, 1);
    CHECK_INT(s.status, SL_PG_ETIMEOUT);
    CHECK(strcmp(s.message, "timeout: connecting") == 0);
    CHECK_INT(sl_pg_get_state(c), SL_PG_CLOSED);
    sl_pg_free(c);
    close(fd);
    event_base_free(base);
}

TEST(abandoned_connect_never_calls_back) {
    struct event_base *base = event_base_new();
    int port, fd = silent_listener(&port);
    char info[128], err[256];
    snprintf(info, sizeof(info), "host=127.0.0.1 port=%d user=x dbname=x",
             port);
    seen s = {0};
    sl_pg *c = sl_pg_connect(base, info, 0.05, on_done, &s, err, sizeof(err));
    CHECK(c != NULL);
    sl_pg_abandon(c);
    CHECK_INT(sl_pg_get_state(c), SL_PG_CLOSED);
    event_base_dispatch(base); /* returns: nothing is armed any more */
    CHECK_INT(s.calls, 0);
    sl_pg_free(c);
    close(fd);
    event_base_free(base);
}

TEST(bad_conninfo_is_refused_at_once) {
    struct event_base *base = event_base_new();
    char err[256];
    seen s = {0};
    sl_pg *c =
        sl_pg_connect(base, "nonsense_key=1", 1, on_done, &s, err, sizeof(err));
    CHECK(c == NULL);
    CHECK(strstr(err, "invalid connection option \"nonsense_key\"") != NULL);
    CHECK_INT(s.calls, 0);
    event_base_free(base);
}

int main(void) {
    RUN(copy_escape_escapes_the_four_specials);
    RUN(quote_ident_doubles_quotes_and_refuses_nul);
    RUN(connect_refused_reports_econn_from_the_loop);
    RUN(connect_times_out_on_a_silent_server);
    RUN(abandoned_connect_never_calls_back);
    RUN(bad_conninfo_is_refused_at_once);
    return TEST_SUMMARY();
}
