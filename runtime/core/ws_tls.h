/* ws_tls.h -- the OpenSSL side of a wss:// connection, for ws_conn.c
 *
 * One SSL_CTX per connection (so that each may have its own ca_file); the
 * SSL made from it holds the only reference once sl_ws_tls_new returns, and
 * the bufferevent that takes the SSL frees it (BEV_OPT_CLOSE_ON_FREE).
 */
#ifndef SLUICE_WS_TLS_H
#define SLUICE_WS_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>

#include "ws_conn.h"

struct bufferevent;

/* A client SSL for o: TLS 1.2 or later; with o->verify, the peer's chain
 * checked against o->ca_file (or the system's store) and its name against
 * o->server_name or o->host (an IP literal as an address, a name also sent
 * as SNI). NULL with err filled when a context, the CA file or the name
 * cannot be set up. */
SSL *sl_ws_tls_new(const sl_ws_opts *o, char *err, size_t errlen);

/* Why the TLS side of bev failed, as "tls: ..." ("certificate verify
 * failed: <reason>" when the chain or name was refused); "" when the error
 * was not OpenSSL's. Drains bev's OpenSSL error queue. */
void sl_ws_tls_reason(struct bufferevent *bev, char *out, size_t n);

#endif
