/* ws_handshake.h -- the HTTP/1.1 upgrade of a WebSocket client (RFC 6455 §4)
 *
 * Pure functions, no I/O: ws_conn.c writes the request these build and
 * hands the response header block it reads to sl_ws_hs_check. The key is
 * 16 random bytes from OpenSSL's RAND_bytes in base64; the accept value is
 * base64(SHA-1(key + the RFC's GUID)).
 *
 * Ownership: every output goes into a buffer the caller owns (a strbuf
 * for the request, fixed arrays for the rest); nothing is kept here.
 */
#ifndef SLUICE_WS_HANDSHAKE_H
#define SLUICE_WS_HANDSHAKE_H

#include <stddef.h>

#include "strbuf.h"

#define SL_WS_KEY_LEN 24    /* base64 of 16 bytes, without the NUL */
#define SL_WS_ACCEPT_LEN 28 /* base64 of a 20-byte SHA-1 */
#define SL_WS_PROTO_MAX 128 /* the longest subprotocol name kept */

/* Fills key (SL_WS_KEY_LEN + 1 bytes) with a fresh random key. Returns 0,
 * or -1 when the random generator fails. */
int sl_ws_hs_key(char *key);

/* Fills accept (SL_WS_ACCEPT_LEN + 1 bytes) with the Sec-WebSocket-Accept
 * value the server must send for key. */
void sl_ws_hs_accept(const char *key, char *accept);

/* Appends the GET request to b: path (with its query; "/" when empty),
 * Host (host, in brackets when it holds a ':', with ":port" unless port is
 * the scheme's default), the upgrade headers, Sec-WebSocket-Protocol when
 * protocols is non-empty ("a, b"), then extra (header lines each ending in
 * "\r\n", already checked by the caller, or NULL) and the blank line.
 * Returns 0, or -1 when out of memory. */
int sl_ws_hs_request(strbuf *b, const char *host, int port, int tls,
                     const char *path, const char *key, const char *protocols,
                     const char *extra);

/* Checks the response header block (len bytes up to and including the
 * blank line) to the request made with key and protocols. Returns 0 and
 * copies the subprotocol the server chose into proto ("" when none;
 * protolen bytes at most), or -1 with a one-line reason in err:
 * "HTTP 403 Forbidden", "no Upgrade: websocket header", "bad
 * Sec-WebSocket-Accept", "server chose subprotocol 'x', not offered", ... */
int sl_ws_hs_check(const char *resp, size_t len, const char *key,
                   const char *protocols, char *proto, size_t protolen,
                   char *err, size_t errlen);

#endif
