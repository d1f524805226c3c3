/* amqp_op.c -- the values an AMQP handle works on: URLs and operations
 *
 * Owns what needs no connection and no thread: parsing an amqp:// or
 * amqps:// URL into its parts, making and freeing an operation (its
 * strings and messages), and the rule that settles a CONSUME which failed
 * after messages came. The handle, its worker thread and the protocol are
 * amqp_client.c's; the types are amqp_client.h's.
 */
#include "amqp_client.h"

#include <amqp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sl_amqp_parse_url(const char *url, sl_amqp_url *u, char *err,
                      size_t errlen) {
    int tls = strncmp(url, "amqps://", 8) == 0;
    if (!tls && strncmp(url, "amqp://", 7) != 0) {
        snprintf(err, errlen, "bad URL: amqp://... or amqps://... expected");
        return -1;
    }
    char *copy = strdup(url); /* amqp_parse_url writes into its input */
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    struct amqp_connection_info ci;
    amqp_default_connection_info(&ci);
    int rc = amqp_parse_url(copy, &ci);
    int ok = rc == AMQP_STATUS_OK && strlen(ci.host) < sizeof(u->host) &&
             ci.host[0] && strlen(ci.user) < sizeof(u->user) &&
             strlen(ci.password) < sizeof(u->password) &&
             strlen(ci.vhost) < sizeof(u->vhost);
    if (ok) {
        strcpy(u->host, ci.host);
        strcpy(u->user, ci.user);
        strcpy(u->password, ci.password);
        strcpy(u->vhost, ci.vhost);
        u->port = ci.port;
        u->tls = tls;
    } else {
        snprintf(err, errlen, "bad URL: %s",
                 rc == AMQP_STATUS_OK ? "a part is too long"
                                      : amqp_error_string2(rc));
    }
    memset(copy, 0, strlen(url)); /* the password */
    free(copy);
    return ok ? 0 : -1;
}

/* --- ops ------------------------------------------------------------------ */

sl_amqp_op *sl_amqp_op_new(sl_amqp_kind kind) {
    sl_amqp_op *op = calloc(1, sizeof(*op));
    if (op)
        op->kind = kind;
    return op;
}

static void free_msgs(sl_amqp_msg *m, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(m[i].routing_key);
        free(m[i].message_id);
        free(m[i].type);
        free(m[i].body);
        free(m[i].content_type);
    }
    free(m);
}

void sl_amqp_op_free(sl_amqp_op *op) {
    if (!op)
        return;
    free(op->exchange);
    free(op->exchange_type);
    free(op->queue);
    free(op->binding_key);
    for (int i = 0; i < op->nargs; i++) {
        free(op->args[i].name);
        free(op->args[i].text);
    }
    free(op->args);
    free_msgs(op->msgs, op->nmsgs);
    free(op);
}

void sl_amqp_consume_settle(sl_amqp_op *op) {
    if (op->kind != SL_AMQP_CONSUME || op->status == SL_AMQP_OK ||
        op->nmsgs == 0)
        return;
    op->status = SL_AMQP_OK;
    op->error[0] = '\0';
    op->code = 0;
}
