/* test_ws_handshake.c -- the WebSocket upgrade: key, accept, request, checks */
#include <string.h>

#include "core/ws_handshake.h"
#include "test.h"

/* RFC 6455 §1.3's example. */
static const char KEY[] = "dGhlIHNhbXBsZSBub25jZQ==";
static const char ACCEPT[] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

TEST(accept_matches_the_rfc_example) {
    char out[SL_WS_ACCEPT_LEN + 1];
    sl_ws_hs_accept(KEY, out);
    CHECK(strcmp(out, ACCEPT) == 0);
}

TEST(keys_are_fresh_base64_of_16_bytes) {
    char a[SL_WS_KEY_LEN + 1], b[SL_WS_KEY_LEN + 1];
    CHECK_INT(sl_ws_hs_key(a), 0);
    CHECK_INT(sl_ws_hs_key(b), 0);
    CHECK_INT(strlen(a), 24);
    CHECK(strcmp(a + 22, "==") == 0);
    CHECK(strcmp(a, b) != 0);
}

TEST(request_has_host_port_path_and_extras) {
    strbuf b = {0};
    CHECK_INT(sl_ws_hs_request(&b, "::1", 8443, 1, "/ws?x=1", KEY, "chat, v2",
                               "X-A: 1\r\n"),
              0);
    CHECK(strcmp(b.p, "GET /ws?x=1 HTTP/1.1\r\n"
                      "Host: [::1]:8443\r\n"
                      "Upgrade: websocket\r\n"
                      "Connection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Protocol: chat, v2\r\n"
                      "X-A: 1\r\n"
                      "\r\n") == 0);
    sb_free(&b);
    CHECK_INT(sl_ws_hs_request(&b, "h.example", 443, 1, "", KEY, NULL, NULL),
              0);
    CHECK(strncmp(b.p, "GET / HTTP/1.1\r\nHost: h.example\r\n", 33) == 0);
    sb_free(&b);
    CHECK_INT(sl_ws_hs_request(&b, "h", 80, 0, "/", KEY, "", NULL), 0);
    CHECK(strstr(b.p, "Host: h\r\n") != NULL);
    CHECK(strstr(b.p, "Protocol") == NULL);
    sb_free(&b);
}

static int check(const char *resp, const char *protocols, char *proto,
                 char *err) {
    return sl_ws_hs_check(resp, strlen(resp), KEY, protocols, proto,
                          SL_WS_PROTO_MAX, err, 200);
}

TEST(accepts_a_good_response_in_any_case) {
    char proto[SL_WS_PROTO_MAX], err[200];
    CHECK_INT(check("HTTP/1.1 101 Switching Protocols\r\n"
                    "upgrade:  WebSocket \r\n"
                    "CONNECTION: keep-alive, Upgrade\r\n"
                    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                    "Sec-WebSocket-Protocol: v2\r\n\r\n",
                    "chat, v2", proto, err),
              0);
    CHECK(strcmp(proto, "v2") == 0);
    CHECK_INT(check("HTTP/1.1 101\r\nUpgrade: websocket\r\nConnection: "
                    "upgrade\r\nSec-WebSocket-Accept: "
                    "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                    "chat", proto, err),
              0);
    CHECK(strcmp(proto, "") == 0); /* offered, not chosen: allowed */
}

TEST(refuses_bad_responses_with_a_reason) {
    char proto[SL_WS_PROTO_MAX], err[200];
    static const struct {
        const char *resp, *protocols, *why;
    } cases[] = {
        {"HTTP/1.1 403 Forbidden\r\n\r\n", NULL, "HTTP 403 Forbidden"},
        {"HTTP/1.1 200 OK\x01\r\n\r\n", NULL, "HTTP 200 OK?"},
        {"SSH-2.0-OpenSSH\r\n\r\n", NULL, "not an HTTP/1.1 response"},
        {"HTTP/1.1 101 x\r\nConnection: upgrade\r\nSec-WebSocket-Accept: "
         "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
         NULL, "no Upgrade: websocket header"},
        {"HTTP/1.1 101 x\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: "
         "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
         NULL, "no Connection: upgrade header"},
        {"HTTP/1.1 101 x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo\r\n\r\n",
         NULL, "bad Sec-WebSocket-Accept"},
        {"HTTP/1.1 101 x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
         "Sec-WebSocket-Protocol: chat\r\n\r\n",
         NULL, "server chose subprotocol 'chat', not offered"},
        {"HTTP/1.1 101 x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
         "Sec-WebSocket-Protocol: cha\r\n\r\n",
         "chat", "server chose subprotocol 'cha', not offered"},
        {"HTTP/1.1 101 x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
         "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
         NULL, "server chose extensions, none offered"},
        {"HTTP/1.1 101 x\r\nbroken line\r\n\r\n", NULL,
         "malformed header line"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        err[0] = '\0';
        CHECK_INT(check(cases[i].resp, cases[i].protocols, proto, err), -1);
        if (strcmp(err, cases[i].why) != 0) {
            fprintf(stderr, "case %zu: got '%s'\n", i, err);
            CHECK(0);
        }
    }
}

int main(void) {
    RUN(accept_matches_the_rfc_example);
    RUN(keys_are_fresh_base64_of_16_bytes);
    RUN(request_has_host_port_path_and_extras);
    RUN(accepts_a_good_response_in_any_case);
    RUN(refuses_bad_responses_with_a_reason);
    return TEST_SUMMARY();
}
