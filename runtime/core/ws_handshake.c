/* ws_handshake.c -- the HTTP/1.1 upgrade of a WebSocket client (RFC 6455 §4) */
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "ws_handshake.h"

static const char GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

int sl_ws_hs_key(char *key) {
    unsigned char raw[16];
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return -1;
    EVP_EncodeBlock((unsigned char *)key, raw, sizeof(raw));
    return 0;
}

void sl_ws_hs_accept(const char *key, char *accept) {
    char buf[64 + sizeof(GUID)];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    size_t klen = strnlen(key, 64);
    memcpy(buf, key, klen);
    memcpy(buf + klen, GUID, sizeof(GUID) - 1);
    EVP_Digest(buf, klen + sizeof(GUID) - 1, md, &mdlen, EVP_sha1(), NULL);
    EVP_EncodeBlock((unsigned char *)accept, md, (int)mdlen);
}

int sl_ws_hs_request(strbuf *b, const char *host, int port, int tls,
                     const char *path, const char *key, const char *protocols,
                     const char *extra) {
    char line[600];
    int bracket = strchr(host, ':') != NULL;
    int dflt = port == (tls ? 443 : 80);
    int rc = 0;
    rc |= sb_add(b, "GET ", 4);
    rc |= path && path[0] ? sb_add(b, path, strlen(path)) : sb_add(b, "/", 1);
    rc |= sb_add(b, " HTTP/1.1\r\nHost: ", 17);
    int n = snprintf(line, sizeof(line), "%s%s%s", bracket ? "[" : "", host,
                     bracket ? "]" : "");
    rc |= sb_add(b, line, (size_t)n < sizeof(line) ? (size_t)n : 0);
    if (!dflt) {
        n = snprintf(line, sizeof(line), ":%d", port);
        rc |= sb_add(b, line, (size_t)n);
    }
    n = snprintf(line, sizeof(line),
                 "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n",
                 key);
    rc |= sb_add(b, line, (size_t)n);
    if (protocols && protocols[0]) {
        rc |= sb_add(b, "Sec-WebSocket-Protocol: ", 24);
        rc |= sb_add(b, protocols, strlen(protocols));
        rc |= sb_add(b, "\r\n", 2);
    }
    if (extra)
        rc |= sb_add(b, extra, strlen(extra));
    rc |= sb_add(b, "\r\n", 2);
    return rc ? -1 : 0;
}

/* --- the response ------------------------------------------------------ */

static int is_ws(char c) { return c == ' ' || c == '\t'; }

/* Is the token tok (n bytes) in the comma-separated list s (slen bytes)? */
static int has_token(const char *s, size_t slen, const char *tok, size_t n) {
    const char *end = s + slen;
    while (s < end) {
        const char *comma = memchr(s, ',', (size_t)(end - s));
        const char *e = comma ? comma : end;
        const char *a = s, *z = e;
        while (a < z && is_ws(*a))
            a++;
        while (z > a && is_ws(z[-1]))
            z--;
        if ((size_t)(z - a) == n && strncasecmp(a, tok, n) == 0)
            return 1;
        s = comma ? comma + 1 : end;
    }
    return 0;
}

static int named(const char *name, size_t n, const char *want) {
    return n == strlen(want) && strncasecmp(name, want, n) == 0;
}

/* The status line: "HTTP/1.x 101 ...". */
static int check_status(const char *p, size_t n, char *err, size_t errlen) {
    if (n < 12 || strncmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ') {
        snprintf(err, errlen, "not an HTTP/1.1 response");
        return -1;
    }
    if (strncmp(p + 9, "101", 3) == 0 && (n == 12 || p[12] == ' '))
        return 0;
    int shown = n - 9 > 80 ? 80 : (int)(n - 9);
    snprintf(err, errlen, "HTTP %.*s", shown, p + 9);
    for (char *c = err; *c; c++) /* a status text is not ours to trust */
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    return -1;
}

int sl_ws_hs_check(const char *resp, size_t len, const char *key,
                   const char *protocols, char *proto, size_t protolen,
                   char *err, size_t errlen) {
    const char *p = resp, *end = resp + len;
    int upgrade = 0, connection = 0, accepted = 0, first = 1;
    char want[SL_WS_ACCEPT_LEN + 1];
    sl_ws_hs_accept(key, want);
    proto[0] = '\0';
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        const char *next = nl ? nl + 1 : end;
        if (e > p && e[-1] == '\r')
            e--;
        size_t n = (size_t)(e - p);
        if (first) {
            if (check_status(p, n, err, errlen) != 0)
                return -1;
            first = 0;
        } else if (n > 0) {
            const char *colon = memchr(p, ':', n);
            if (!colon) {
                snprintf(err, errlen, "malformed header line");
                return -1;
            }
            size_t nl_ = (size_t)(colon - p);
            const char *v = colon + 1, *ve = e;
            while (v < ve && is_ws(*v))
                v++;
            while (ve > v && is_ws(ve[-1]))
                ve--;
            size_t vn = (size_t)(ve - v);
            if (named(p, nl_, "upgrade")) {
                upgrade = vn == 9 && strncasecmp(v, "websocket", 9) == 0;
            } else if (named(p, nl_, "connection")) {
                connection = has_token(v, vn, "upgrade", 7);
            } else if (named(p, nl_, "sec-websocket-accept")) {
                accepted = vn == SL_WS_ACCEPT_LEN && memcmp(v, want, vn) == 0;
            } else if (named(p, nl_, "sec-websocket-protocol")) {
                if (!protocols ||
                    !has_token(protocols, strlen(protocols), v, vn)) {
                    snprintf(err, errlen,
                             "server chose subprotocol '%.*s', not offered",
                             vn > 60 ? 60 : (int)vn, v);
                    return -1;
                }
                if (vn >= protolen)
                    vn = protolen - 1;
                memcpy(proto, v, vn);
                proto[vn] = '\0';
            } else if (named(p, nl_, "sec-websocket-extensions") && vn > 0) {
                snprintf(err, errlen, "server chose extensions, none offered");
                return -1;
            }
        }
        p = next;
    }
    if (first)
        snprintf(err, errlen, "empty response");
    else if (!upgrade)
        snprintf(err, errlen, "no Upgrade: websocket header");
    else if (!connection)
        snprintf(err, errlen, "no Connection: upgrade header");
    else if (!accepted)
        snprintf(err, errlen, "bad Sec-WebSocket-Accept");
    else
        return 0;
    return -1;
}
