/* amqp_tls.h -- the TLS socket of an amqps:// connection (rabbitmq-c's, set
 * up through OpenSSL), for amqp_client.c's worker thread
 *
 * Everything here runs on the worker thread that owns the connection
 * (OpenSSL's error queue is per thread: a reason read there is that
 * connection's). The peer is verified unless no_verify: the chain against
 * ca_file, or the system's trust store when there is none, and the host
 * name (a DNS name or an IP address, OpenSSL's rules, no partial
 * wildcards) against host, both during the handshake, so a client
 * certificate is never sent to a server that failed them.
 *
 * Ownership: *t owns its copies of the file names (sl_amqp_tls_setup to
 * sl_amqp_tls_clear); host is the caller's, kept unchanged while t lives.
 * t must outlive its sockets: the TLS context points at t to note the
 * first certificate failure in t->verify_error during a handshake.
 */
#ifndef SLUICE_AMQP_TLS_H
#define SLUICE_AMQP_TLS_H

#include <amqp.h>
#include <stddef.h>

typedef struct sl_amqp_tls {
    const char *host;       /* the URL's: what the certificate must name */
    char *ca_file;          /* PEM CAs to trust; NULL: the system's */
    char *cert_file;        /* client certificate chain (PEM); NULL: none */
    char *key_file;         /* its private key (PEM, not encrypted) */
    int no_verify;          /* 1: no check of the chain or the host name */
    char verify_error[160]; /* the last handshake's first certificate
                             * failure ("" when none): OpenSSL's words */
} sl_amqp_tls;

/* Sets up *t (zeroed) for host, copying the file names (NULL: none).
 * Returns 0, or -1 with err filled: "cert_file and key_file go together",
 * out of memory (sl_amqp_tls_clear frees what was copied). */
int sl_amqp_tls_setup(sl_amqp_tls *t, const char *host, const char *ca_file,
                      const char *cert_file, const char *key_file,
                      int no_verify, char *err, size_t errlen);

/* Frees t's copies. */
void sl_amqp_tls_clear(sl_amqp_tls *t);

/* A TLS socket set on c (amqp_destroy_connection frees it) with the files
 * loaded now (an encrypted key is refused, never asked for on a terminal),
 * TLS 1.2 at least. NULL with err filled ("TLS: ca_file PATH: REASON",
 * ...; never a key's content) when it cannot be made. */
amqp_socket_t *sl_amqp_tls_socket(amqp_connection_state_t c, sl_amqp_tls *t,
                                  char *err, size_t errlen);

/* Initialises OpenSSL (once; any thread), so that its cleanup at exit is
 * registered now. */
void sl_amqp_tls_init(void);

/* Frees OpenSSL's state of the calling thread (a worker about to end). */
void sl_amqp_tls_thread_end(void);

/* " (REASON)" of the TLS failure OpenSSL noted last on this thread (an
 * alert from the server, a protocol error), or of errno when OpenSSL noted
 * none (a reset connection), or ""; written into buf, which is returned.
 * Called right after the failed call, before errno changes. */
const char *sl_amqp_tls_reason(char *buf, size_t n);

#endif
