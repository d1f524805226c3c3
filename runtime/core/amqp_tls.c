/* amqp_tls.c -- the TLS socket of an amqps:// connection: rabbitmq-c's SSL
 * socket with its OpenSSL context set up for verification in the handshake */
#include "amqp_tls.h"

#include <amqp_ssl_socket.h>
#include <arpa/inet.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sl_amqp_tls_setup(sl_amqp_tls *t, const char *host, const char *ca_file,
                      const char *cert_file, const char *key_file,
                      int no_verify, char *err, size_t errlen) {
    if (!cert_file != !key_file) {
        snprintf(err, errlen, "cert_file and key_file go together");
        return -1;
    }
    t->host = host;
    t->no_verify = no_verify;
    if ((ca_file && !(t->ca_file = strdup(ca_file))) ||
        (cert_file && !(t->cert_file = strdup(cert_file))) ||
        (key_file && !(t->key_file = strdup(key_file)))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

void sl_amqp_tls_clear(sl_amqp_tls *t) {
    free(t->ca_file);
    free(t->cert_file);
    free(t->key_file);
    t->ca_file = t->cert_file = t->key_file = NULL;
}

void sl_amqp_tls_init(void) { OPENSSL_init_ssl(0, NULL); }

void sl_amqp_tls_thread_end(void) { OPENSSL_thread_stop(); }

const char *sl_amqp_tls_reason(char *buf, size_t n) {
    int sys = errno; /* the failed call's, before OpenSSL's calls below */
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    buf[0] = '\0';
    if (r)
        snprintf(buf, n, " (%s)", r);
    else if (sys == ECONNRESET || sys == EPIPE) /* an alert lost in it */
        snprintf(buf, n, " (the broker reset the connection)");
    return buf;
}

/* An encrypted key is refused instead of OpenSSL asking for its password
 * on the terminal (which would hold the worker forever). */
static int no_password(char *buf, int size, int rwflag, void *u) {
    (void)buf;
    (void)size;
    (void)rwflag;
    if (u)
        *(int *)u = 1; /* noted, for the error */
    return 0;
}

/* OpenSSL calls this for each certificate it checks, and for the host name
 * check; it keeps the first failure, so the error says which check failed
 * (rabbitmq-c only says the handshake did), with what to look at. */
static int on_verify(int ok, X509_STORE_CTX *x) {
    SSL *ssl =
        X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
    sl_amqp_tls *t = ssl ? SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)) : NULL;
    if (ok || !t || t->verify_error[0])
        return ok;
    int e = X509_STORE_CTX_get_error(x);
    const char *hint = "";
    switch (e) {
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
        snprintf(t->verify_error, sizeof(t->verify_error),
                 "%s: the certificate does not name %s",
                 X509_verify_cert_error_string(e), t->host);
        return ok;
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        hint = t->ca_file ? " (its CA is not in ca_file)"
                          : " (its CA is not in the system's trust store)";
        break;
    }
    snprintf(t->verify_error, sizeof(t->verify_error), "%s%s",
             X509_verify_cert_error_string(e), hint);
    return ok;
}

/* err = "TLS: SETTING FILE: REASON": the first error OpenSSL noted is the
 * cause (the later ones say which call gave up), and a system error is
 * told by its errno ("No such file or directory", "Permission denied"). */
static void file_error(char *err, size_t errlen, const char *setting,
                       const char *file) {
    unsigned long e = ERR_peek_error();
    const char *r = NULL;
    if (e && ERR_SYSTEM_ERROR(e))
        r = strerror(ERR_GET_REASON(e));
    else if (e)
        r = ERR_reason_error_string(e);
    snprintf(err, errlen, "TLS: %s %s: %s", setting, file,
             r ? r : "cannot be used");
}

amqp_socket_t *sl_amqp_tls_socket(amqp_connection_state_t c, sl_amqp_tls *t,
                                  char *err, size_t errlen) {
    t->verify_error[0] = '\0';
    ERR_clear_error();
    amqp_socket_t *s = amqp_ssl_socket_new(c);
    if (!s) {
        snprintf(err, errlen, "TLS: cannot make a context");
        return NULL;
    }
    /* from here on s is c's: amqp_destroy_connection frees it */
    SSL_CTX *ctx = amqp_ssl_socket_get_context(s);
    SSL_CTX_set_app_data(ctx, t);
    SSL_CTX_set_default_passwd_cb(ctx, no_password);
    if (amqp_ssl_socket_set_ssl_versions(s, AMQP_TLSv1_2, AMQP_TLSvLATEST) !=
        AMQP_STATUS_OK) {
        snprintf(err, errlen, "TLS: cannot require TLS 1.2");
        return NULL;
    }
    /* rabbitmq-c trusts nothing by itself: a broker with a certificate
     * from a public CA (a managed one) needs the system's store */
    if (t->ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, t->ca_file, NULL) != 1) {
            file_error(err, errlen, "ca_file", t->ca_file);
            return NULL;
        }
    } else if (!t->no_verify && SSL_CTX_set_default_verify_paths(ctx) != 1) {
        snprintf(err, errlen, "TLS: the system's trust store cannot be read");
        return NULL;
    }
    if (t->cert_file) {
        if (SSL_CTX_use_certificate_chain_file(ctx, t->cert_file) != 1) {
            file_error(err, errlen, "cert_file", t->cert_file);
            return NULL;
        }
        int encrypted = 0;
        SSL_CTX_set_default_passwd_cb_userdata(ctx, &encrypted);
        int loaded = SSL_CTX_use_PrivateKey_file(ctx, t->key_file,
                                                 SSL_FILETYPE_PEM) == 1;
        SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
        if (!loaded || SSL_CTX_check_private_key(ctx) != 1) {
            if (encrypted)
                snprintf(err, errlen,
                         "TLS: key_file %s: encrypted (a key with a password "
                         "is not supported)",
                         t->key_file);
            else
                file_error(err, errlen, "key_file", t->key_file);
            return NULL;
        }
    }
    /* rabbitmq-c checks the peer after the handshake, and its host name
     * check knows no IP addresses: OpenSSL's checks are used instead
     * (rabbitmq-c's chain check stays on: it agrees, or the handshake
     * failed before it). */
    amqp_ssl_socket_set_verify_hostname(s, 0);
    if (t->no_verify) {
        amqp_ssl_socket_set_verify_peer(s, 0);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return s;
    }
    X509_VERIFY_PARAM *p = SSL_CTX_get0_param(ctx);
    unsigned char ip[16];
    int is_ip = inet_pton(AF_INET, t->host, ip) == 1 ||
                inet_pton(AF_INET6, t->host, ip) == 1;
    X509_VERIFY_PARAM_set_hostflags(p, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if ((is_ip ? X509_VERIFY_PARAM_set1_ip_asc(p, t->host)
               : X509_VERIFY_PARAM_set1_host(p, t->host, 0)) != 1) {
        snprintf(err, errlen, "TLS: cannot check the host name %s", t->host);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, on_verify);
    return s;
}
