/* test_amqp_client.c -- core/amqp_client.c without a broker: URL parsing,
 * the bounded queue, results handed to the loop, abandoned operations, TLS
 * settings refused or failing before any network */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/amqp_client.h"
#include "test.h"

TEST(parse_url_decodes_the_parts) {
    sl_amqp_url u;
    char err[256];
    CHECK_INT(sl_amqp_parse_url("amqp://us%3Aer:p%40ss@10.1.2.3:5673/v%2Fh", &u,
                                err, sizeof(err)),
              0);
    CHECK_STR(u.host, "10.1.2.3");
    CHECK_INT(u.port, 5673);
    CHECK_STR(u.user, "us:er");
    CHECK_STR(u.password, "p@ss");
    CHECK_STR(u.vhost, "v/h");
    /* the defaults: port 5672, guest/guest, vhost "/" without a path */
    CHECK_INT(sl_amqp_parse_url("amqp://broker", &u, err, sizeof(err)), 0);
    CHECK_STR(u.host, "broker");
    CHECK_INT(u.port, 5672);
    CHECK_STR(u.user, "guest");
    CHECK_STR(u.password, "guest");
    CHECK_STR(u.vhost, "/");
    CHECK_INT(u.tls, 0);
    /* amqps: TLS, port 5671 by default */
    CHECK_INT(sl_amqp_parse_url("amqps://u:p@mq.example.com/prod", &u, err,
                                sizeof(err)),
              0);
    CHECK_STR(u.host, "mq.example.com");
    CHECK_INT(u.port, 5671);
    CHECK_STR(u.vhost, "prod");
    CHECK_INT(u.tls, 1);
    CHECK_INT(sl_amqp_parse_url("amqps://h:5999", &u, err, sizeof(err)), 0);
    CHECK_INT(u.port, 5999);
    CHECK_INT(u.tls, 1);
}

TEST(parse_url_refuses_without_quoting_the_url) {
    sl_amqp_url u;
    char err[256];
    CHECK_INT(sl_amqp_parse_url("http://u:secret@h/", &u, err, sizeof(err)),
              -1);
    CHECK_STR(err, "bad URL: amqp://... or amqps://... expected");
    CHECK(strstr(err, "secret") == NULL);
    CHECK_INT(sl_amqp_parse_url("amqps://u:secret@h:x/", &u, err, sizeof(err)),
              -1);
    CHECK(strncmp(err, "bad URL: ", 9) == 0);
    CHECK_INT(
        sl_amqp_parse_url("amqp://u:secret@h:notaport/", &u, err, sizeof(err)),
        -1);
    CHECK(strncmp(err, "bad URL: ", 9) == 0);
    CHECK(strstr(err, "secret") == NULL);
}

typedef struct seen {
    int calls, want;
    sl_amqp_status status[8];
    sl_amqp_kind kind[8];
    char error[8][256];
    struct event_base *base;
} seen;

static void on_done(sl_amqp_op *op, void *privdata) {
    seen *s = privdata;
    if (s->calls < 8) {
        s->status[s->calls] = op->status;
        s->kind[s->calls] = op->kind;
        snprintf(s->error[s->calls], sizeof(s->error[0]), "%s", op->error);
    }
    if (++s->calls == s->want)
        event_base_loopbreak(s->base);
}

/* A port where nothing listens (bound, read, closed), or with a listening
 * socket that never answers (the kernel completes the TCP handshake). */
static int listener(int *port) {
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

static void run_until(struct event_base *base, seen *s, int want) {
    struct timeval limit = {20, 0}; /* a bound, not a synchronisation */
    s->want = want;
    s->base = base;
    if (s->calls < want) {
        event_base_loopexit(base, &limit);
        event_base_dispatch(base);
    }
}

TEST(a_refused_connection_is_reported_on_the_loop_and_ops_run_in_order) {
    struct event_base *base = event_base_new();
    int port, fd = listener(&port);
    CHECK(fd >= 0);
    close(fd);
    char url[128], err[256];
    snprintf(url, sizeof(url), "amqp://u:secret@127.0.0.1:%d", port);
    sl_amqp_options o = {.connect_timeout = 5, .timeout = 5, .queue_max = 4};
    sl_amqp *a = sl_amqp_new(base, url, &o, err, sizeof(err));
    CHECK(a != NULL);
    seen s = {0};
    sl_amqp_op *c = sl_amqp_op_new(SL_AMQP_CONNECT);
    sl_amqp_op *p = sl_amqp_op_new(SL_AMQP_PUBLISH);
    CHECK_INT(sl_amqp_submit(a, c, on_done, &s, err, sizeof(err)), 0);
    CHECK_INT(sl_amqp_submit(a, p, on_done, &s, err, sizeof(err)), 0);
    CHECK_INT(s.calls, 0); /* only from the loop */
    run_until(base, &s, 2);
    CHECK_INT(s.calls, 2);
    CHECK_INT(s.kind[0], SL_AMQP_CONNECT);
    CHECK_INT(s.kind[1], SL_AMQP_PUBLISH);
    CHECK_INT(s.status[0], SL_AMQP_ECONN);
    CHECK_INT(s.status[1], SL_AMQP_ECONN);
    char want[64];
    snprintf(want, sizeof(want), "connect to 127.0.0.1:%d: ", port);
    CHECK(strncmp(s.error[0], want, strlen(want)) == 0);
    CHECK(strstr(s.error[0], "secret") == NULL);
    CHECK_INT(sl_amqp_pending(a), 0);
    CHECK_INT(sl_amqp_connected(a), 0);
    CHECK_INT(sl_amqp_connects(a), 0);
    sl_amqp_free(a);
    event_base_free(base);
}

TEST(the_queue_is_bounded_and_a_full_one_refuses_at_once) {
    struct event_base *base = event_base_new();
    int port, fd = listener(&port); /* the worker waits in the handshake */
    CHECK(fd >= 0);
    char url[128], err[256];
    snprintf(url, sizeof(url), "amqp://127.0.0.1:%d", port);
    sl_amqp_options o = {.connect_timeout = 30, .timeout = 30, .queue_max = 3};
    sl_amqp *a = sl_amqp_new(base, url, &o, err, sizeof(err));
    seen s = {0};
    sl_amqp_op *ops[4];
    for (int i = 0; i < 4; i++)
        ops[i] = sl_amqp_op_new(SL_AMQP_CONNECT);
    for (int i = 0; i < 3; i++)
        CHECK_INT(sl_amqp_submit(a, ops[i], on_done, &s, err, sizeof(err)), 0);
    CHECK_INT(sl_amqp_pending(a), 3); /* queued + the one running */
    CHECK_INT(sl_amqp_submit(a, ops[3], on_done, &s, err, sizeof(err)), -1);
    CHECK_STR(err, "queue full");
    sl_amqp_op_free(ops[3]); /* refused: still the caller's */
    /* freeing abandons all three: the worker drops them when its handshake
     * gives up, and never calls back */
    sl_amqp_free(a);
    CHECK_INT(s.calls, 0);
    close(fd);
    event_base_free(base);
}

TEST(an_abandoned_op_is_never_called_back) {
    struct event_base *base = event_base_new();
    int port, fd = listener(&port);
    close(fd);
    char url[128], err[256];
    snprintf(url, sizeof(url), "amqp://127.0.0.1:%d", port);
    sl_amqp_options o = {.connect_timeout = 5, .timeout = 5, .queue_max = 8};
    sl_amqp *a = sl_amqp_new(base, url, &o, err, sizeof(err));
    seen gone = {0}, s = {0};
    sl_amqp_op *first = sl_amqp_op_new(SL_AMQP_CONNECT);
    sl_amqp_op *second = sl_amqp_op_new(SL_AMQP_DECLARE);
    CHECK_INT(sl_amqp_submit(a, first, on_done, &gone, err, sizeof(err)), 0);
    CHECK_INT(sl_amqp_submit(a, second, on_done, &s, err, sizeof(err)), 0);
    sl_amqp_abandon(a, first);
    run_until(base, &s, 1); /* in order: the first has ended by then */
    CHECK_INT(s.calls, 1);
    CHECK_INT(s.kind[0], SL_AMQP_DECLARE);
    CHECK_INT(gone.calls, 0);
    sl_amqp_free(a);
    event_base_free(base);
}

/* Found by sink_rabbitmq_spec's broker kill: a consume that lost its
 * connection after messages came answered only the error, and the messages
 * (acknowledged as they came) were gone for good. */
TEST(a_consume_that_fails_after_messages_returns_them) {
    sl_amqp_op *op = sl_amqp_op_new(SL_AMQP_CONSUME);
    op->msgs = calloc(2, sizeof(*op->msgs));
    op->nmsgs = 2;
    op->status = SL_AMQP_ECONN;
    op->code = 320;
    snprintf(op->error, sizeof(op->error), "consume: connection closed");
    sl_amqp_consume_settle(op);
    CHECK_INT(op->status, SL_AMQP_OK);
    CHECK_STR(op->error, "");
    CHECK_INT(op->code, 0);
    CHECK_INT(op->nmsgs, 2);
    /* none came: the failure is the answer */
    op->nmsgs = 0;
    op->status = SL_AMQP_ECONN;
    snprintf(op->error, sizeof(op->error), "consume: connection closed");
    sl_amqp_consume_settle(op);
    CHECK_INT(op->status, SL_AMQP_ECONN);
    CHECK_STR(op->error, "consume: connection closed");
    op->nmsgs = 2;
    sl_amqp_op_free(op);
    /* a publish's failure stays one whatever it holds */
    op = sl_amqp_op_new(SL_AMQP_PUBLISH);
    op->status = SL_AMQP_ENACK;
    op->nmsgs = 1;
    sl_amqp_consume_settle(op);
    CHECK_INT(op->status, SL_AMQP_ENACK);
    op->nmsgs = 0;
    sl_amqp_op_free(op);
}

TEST(new_refuses_a_bad_url) {
    struct event_base *base = event_base_new();
    char err[256];
    sl_amqp_options o = {.connect_timeout = 1, .timeout = 1, .queue_max = 1};
    CHECK(sl_amqp_new(base, "amqpx://h", &o, err, sizeof(err)) == NULL);
    CHECK_STR(err, "bad URL: amqp://... or amqps://... expected");
    event_base_free(base);
}

TEST(new_refuses_tls_settings_that_do_not_fit) {
    struct event_base *base = event_base_new();
    char err[256];
    sl_amqp_options o = {.connect_timeout = 1, .timeout = 1, .queue_max = 1};
    o.ca_file = "/tmp/ca.pem";
    CHECK(sl_amqp_new(base, "amqp://h", &o, err, sizeof(err)) == NULL);
    CHECK_STR(err, "ca_file, cert_file, key_file and verify need an amqps:// "
                   "URL");
    o.ca_file = NULL;
    o.no_verify = 1;
    CHECK(sl_amqp_new(base, "amqp://h", &o, err, sizeof(err)) == NULL);
    CHECK_STR(err, "ca_file, cert_file, key_file and verify need an amqps:// "
                   "URL");
    o.no_verify = 0;
    o.cert_file = "/tmp/client.pem";
    CHECK(sl_amqp_new(base, "amqps://h", &o, err, sizeof(err)) == NULL);
    CHECK_STR(err, "cert_file and key_file go together");
    o.cert_file = NULL;
    o.key_file = "/tmp/client.key";
    CHECK(sl_amqp_new(base, "amqps://h", &o, err, sizeof(err)) == NULL);
    CHECK_STR(err, "cert_file and key_file go together");
    event_base_free(base);
}

/* The files are read by the worker when it connects, before any socket:
 * one that cannot be read fails the op with its name, and the URL's
 * password is in no error. */
TEST(a_tls_file_that_cannot_be_read_fails_the_connect) {
    struct event_base *base = event_base_new();
    int port, fd = listener(&port);
    CHECK(fd >= 0);
    char url[128], err[256];
    snprintf(url, sizeof(url), "amqps://u:secret@127.0.0.1:%d", port);
    sl_amqp_options o = {.connect_timeout = 5, .timeout = 5, .queue_max = 4};
    o.ca_file = "/nonexistent/ca.pem";
    sl_amqp *a = sl_amqp_new(base, url, &o, err, sizeof(err));
    CHECK(a != NULL);
    o.ca_file = NULL;
    o.cert_file = "/nonexistent/client.pem";
    o.key_file = "/nonexistent/client.key";
    sl_amqp *b = sl_amqp_new(base, url, &o, err, sizeof(err));
    CHECK(b != NULL);
    seen s = {0};
    CHECK_INT(sl_amqp_submit(a, sl_amqp_op_new(SL_AMQP_CONNECT), on_done, &s,
                             err, sizeof(err)),
              0);
    CHECK_INT(sl_amqp_submit(b, sl_amqp_op_new(SL_AMQP_PUBLISH), on_done, &s,
                             err, sizeof(err)),
              0);
    run_until(base, &s, 2);
    CHECK_INT(s.calls, 2);
    CHECK_INT(s.status[0], SL_AMQP_ECONN);
    CHECK_INT(s.status[1], SL_AMQP_ECONN);
    /* the two workers may end in either order */
    int ca = s.kind[0] == SL_AMQP_CONNECT ? 0 : 1;
    CHECK_STR(s.error[ca],
              "TLS: ca_file /nonexistent/ca.pem: No such file or directory");
    CHECK_STR(s.error[1 - ca], "TLS: cert_file /nonexistent/client.pem: No "
                               "such file or directory");
    CHECK_INT(sl_amqp_connects(a), 0);
    sl_amqp_free(a);
    sl_amqp_free(b);
    close(fd);
    event_base_free(base);
}

int main(void) {
    RUN(parse_url_decodes_the_parts);
    RUN(parse_url_refuses_without_quoting_the_url);
    RUN(a_refused_connection_is_reported_on_the_loop_and_ops_run_in_order);
    RUN(the_queue_is_bounded_and_a_full_one_refuses_at_once);
    RUN(an_abandoned_op_is_never_called_back);
    RUN(a_consume_that_fails_after_messages_returns_them);
    RUN(new_refuses_a_bad_url);
    RUN(new_refuses_tls_settings_that_do_not_fit);
    RUN(a_tls_file_that_cannot_be_read_fails_the_connect);
    return TEST_SUMMARY();
}
