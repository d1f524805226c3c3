/* ws_tls.c -- the OpenSSL side of a wss:// connection (ws_tls.h) */
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <sys/socket.h>

#include "ws_tls.h"

SSL *sl_ws_tls_new(const sl_ws_opts *o, char *err, size_t errlen) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    if (!ctx) {
        snprintf(err, errlen, "tls: cannot create a context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, o->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
                       NULL);
    if (o->ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) != 1) {
            snprintf(err, errlen, "tls: cannot load ca_file '%s'", o->ca_file);
            goto done;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        snprintf(err, errlen, "tls: cannot load the system CA store");
        goto done;
    }
    ssl = SSL_new(ctx);
    if (!ssl) {
        snprintf(err, errlen, "tls: out of memory");
        goto done;
    }
    const char *name = o->server_name ? o->server_name : o->host;
    unsigned char addr[16];
    int ip = evutil_inet_pton(AF_INET, name, addr) == 1 ||
             evutil_inet_pton(AF_INET6, name, addr) == 1;
    int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name)
                : SSL_set_tlsext_host_name(ssl, name) == 1 &&
                      SSL_set1_host(ssl, name) == 1;
    if (!ok) {
        snprintf(err, errlen, "tls: bad server name '%s'", name);
        SSL_free(ssl);
        ssl = NULL;
    }
done:
    ERR_clear_error();
    SSL_CTX_free(ctx); /* the SSL keeps its own reference */
    return ssl;
}

void sl_ws_tls_reason(struct bufferevent *bev, char *out, size_t n) {
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    unsigned long e, first = 0;
    while ((e = bufferevent_get_openssl_error(bev)))
        if (!first)
            first = e;
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (v != X509_V_OK)
        snprintf(out, n, "tls: certificate verify failed: %s",
                 X509_verify_cert_error_string(v));
    else if (first)
        snprintf(out, n, "tls: %s",
                 ERR_reason_error_string(first) ? ERR_reason_error_string(first)
                                                : "handshake failed");
    else
        out[0] = '\0';
}
