/* test_http_gate.c -- request heads judged on the raw stream, bodies framed */
#include "core/http_gate.h"
#include "test.h"

static const sl_gate_rules RULES = {
    .max_body = 100,
    .token = "s3cret",
    .token_len = 6,
    .auth_methods = SL_GATE_POST | SL_GATE_DELETE,
};

/* Feeds s in pieces of step bytes; returns the refusal status, 0 if none,
 * and sets *at to the offset of the piece that was refused. */
static int feed(const char *s, size_t step, size_t *at) {
    sl_gate g;
    sl_gate_refusal why = {0, NULL};
    size_t len = strlen(s);
    int status = 0;
    sl_gate_init(&g);
    for (size_t i = 0; i < len; i += step) {
        size_t n = len - i < step ? len - i : step;
        if (sl_gate_feed(&g, &RULES, s + i, n, &why) != 0) {
            status = why.status;
            if (at)
                *at = i;
            break;
        }
    }
    sl_gate_free(&g);
    return status;
}

/* The same verdict whether the bytes come at once or one at a time. */
static int verdict(const char *s) {
    int whole = feed(s, 1 << 20, NULL);
    CHECK_INT(feed(s, 1, NULL), whole);
    CHECK_INT(feed(s, 7, NULL), whole);
    return whole;
}

TEST(passes_ordinary_requests) {
    CHECK_INT(verdict("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    CHECK_INT(verdict("POST /a HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n"
                      "Content-Length: 5\r\n\r\nhello"),
              0);
    CHECK_INT(verdict("GET / HTTP/1.1\nHost: x\n\n"), 0); /* bare LF */
    /* equal repeated lengths are one length */
    CHECK_INT(verdict("PUT /a HTTP/1.1\r\nContent-Length: 5\r\n"
                      "Content-Length: 5\r\n\r\nhello"),
              0);
}

TEST(refuses_conflicting_lengths) {
    CHECK_INT(verdict("PUT /a HTTP/1.1\r\nContent-Length: 5\r\n"
                      "content-length: 50\r\n\r\nhello"),
              400);
}

TEST(refuses_a_missing_or_wrong_token_before_the_body) {
    size_t at = 0;
    const char *req = "POST /collect HTTP/1.1\r\nContent-Length: 99\r\n\r\n";
    CHECK_INT(verdict(req), 401);
    CHECK_INT(feed(req, 1, &at), 401);
    CHECK_INT(at, strlen(req) - 1); /* on the head's last byte */
    CHECK_INT(verdict("POST / HTTP/1.1\r\nAuthorization: Bearer s3cre\r\n\r\n"),
              401);
    CHECK_INT(
        verdict("POST / HTTP/1.1\r\nAuthorization: Bearer s3cretX\r\n\r\n"),
        401);
    CHECK_INT(
        verdict("POST / HTTP/1.1\r\nAuthorization: bearer s3cret\r\n\r\n"),
        401);
    CHECK_INT(verdict("DELETE /b/1 HTTP/1.1\r\n\r\n"), 401);
    /* methods not listed need no token */
    CHECK_INT(verdict("GET /status HTTP/1.1\r\n\r\n"), 0);
    /* the token is checked before the size */
    CHECK_INT(verdict("POST / HTTP/1.1\r\nContent-Length: 8388608\r\n\r\n"),
              401);
}

TEST(refuses_a_declared_body_over_max_body) {
    CHECK_INT(verdict("POST / HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n"
                      "Content-Length: 101\r\n\r\n"),
              413);
    CHECK_INT(verdict("PUT / HTTP/1.1\r\nContent-Length: 100\r\n\r\n"), 0);
}

TEST(frames_bodies_to_find_the_next_head) {
    /* a body that looks like a head is a body */
    CHECK_INT(verdict("PUT /a HTTP/1.1\r\nContent-Length: 18\r\n\r\n"
                      "POST / HTTP/1.1\r\n\r\n"
                      "POST / HTTP/1.1\r\n\r\n"),
              401);
    CHECK_INT(verdict("PUT /a HTTP/1.1\r\nContent-Length: 19\r\n\r\n"
                      "POST / HTTP/1.1\r\n\r\n"
                      "GET / HTTP/1.1\r\n\r\n"),
              0);
    /* HEAD and TRACE have no body (as evhttp reads them) */
    CHECK_INT(verdict("HEAD / HTTP/1.1\r\nContent-Length: 19\r\n\r\n"
                      "POST / HTTP/1.1\r\n\r\n"),
              401);
    /* chunked wins over Content-Length */
    CHECK_INT(verdict("PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                      "Content-Length: 3\r\n\r\n"
                      "5\r\nhello\r\n3 \r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
                      "GET / HTTP/1.1\r\n\r\n"
                      "POST / HTTP/1.1\r\n\r\n"),
              401);
}

TEST(refuses_a_bad_chunk_size) {
    CHECK_INT(verdict("PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "zz\r\nhello\r\n0\r\n\r\n"),
              400);
    CHECK_INT(verdict("PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "-5\r\nhello\r\n0\r\n\r\n"),
              400);
    CHECK_INT(verdict("PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5;ext=1\r\nhello\r\n0\r\n\r\n"),
              400);
    /* a chunk over max_body is evhttp's to refuse (413): let it pass */
    CHECK_INT(verdict("PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "FFFF\r\n"),
              0);
}

TEST(lets_evhttp_refuse_what_it_cannot_frame) {
    CHECK_INT(verdict("PUT /a HTTP/1.1\r\nContent-Length: 5x\r\n\r\n"
                      "POST / HTTP/1.1\r\n\r\n"),
              0);
}

TEST(knows_methods) {
    CHECK_INT(sl_gate_method("POST", 4), SL_GATE_POST);
    CHECK_INT(sl_gate_method("DELETE", 6), SL_GATE_DELETE);
    CHECK_INT(sl_gate_method("post", 4), 0);
    CHECK_INT(sl_gate_method("POSTX", 5), 0);
}

int main(void) {
    RUN(passes_ordinary_requests);
    RUN(refuses_conflicting_lengths);
    RUN(refuses_a_missing_or_wrong_token_before_the_body);
    RUN(refuses_a_declared_body_over_max_body);
    RUN(frames_bodies_to_find_the_next_head);
    RUN(refuses_a_bad_chunk_size);
    RUN(lets_evhttp_refuse_what_it_cannot_frame);
    RUN(knows_methods);
    return TEST_SUMMARY();
}
