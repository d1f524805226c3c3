/* pg.h -- one PostgreSQL connection on libpq's asynchronous API and libevent
 *
 * Nothing here blocks the loop: the connection is made with
 * PQconnectStart/PQconnectPoll, statements are sent with PQsendQueryParams
 * on a non-blocking connection, COPY FROM STDIN data goes out with
 * PQputCopyData/PQputCopyEnd and PQflush, and every wait is an event on the
 * connection's socket (read or write readiness) or a timer.
 *
 * One operation at a time: connect, query or copy. Each ends with exactly
 * one call of its done callback, from the loop (never from inside the
 * function that started it), unless the operation is abandoned first.
 *
 * Failures keep three kinds apart, so a caller can tell data errors from a
 * broken link: SL_PG_ESERVER (the server refused the statement and the
 * connection is still usable; the SQLSTATE says why: class 22 and 23 are
 * data errors), SL_PG_ECONN (the connection failed or was lost; the handle
 * is closed) and SL_PG_ETIMEOUT (the operation did not end in time; its
 * query is cancelled and the handle closed). A closed handle stays closed:
 * reconnecting is the caller's (make a new handle).
 *
 * Abandoning (sl_pg_abandon, sl_pg_free): the waiter has gone (its task was
 * killed). A statement in flight is cancelled on the server (PQcancel, which
 * blocks, runs on a detached thread that owns its PGcancel) and the
 * connection is dropped, so no operation outlives its waiter.
 *
 * Ownership: the caller owns the handle from sl_pg_connect to sl_pg_free.
 * The outcome given to a callback (and the PGresult in it) is valid only
 * during the callback; the callback must not free the handle.
 */
#ifndef SLUICE_PG_H
#define SLUICE_PG_H

#include <event2/event.h>
#include <libpq-fe.h>
#include <stddef.h>

typedef struct sl_pg sl_pg;

typedef enum sl_pg_status {
    SL_PG_OK,       /* res: the statement's result (tuples or command) */
    SL_PG_ESERVER,  /* res: the error result; sqlstate and message set */
    SL_PG_ECONN,    /* connection failed or lost; message; handle closed */
    SL_PG_ETIMEOUT, /* timed out; message; query cancelled, handle closed */
} sl_pg_status;

typedef struct sl_pg_outcome {
    sl_pg_status status;
    PGresult *res;        /* OK and ESERVER; NULL otherwise and for connect */
    const char *sqlstate; /* ESERVER: five characters; else "" */
    const char *message;  /* errors: one line, no trailing newline (ESERVER:
                           * the server's primary message); else "" */
    long copied;          /* copy: rows the server reports (OK only) */
} sl_pg_outcome;

typedef void (*sl_pg_done_fn)(sl_pg *c, const sl_pg_outcome *o, void *privdata);

typedef enum sl_pg_state {
    SL_PG_CONNECTING,
    SL_PG_IDLE,
    SL_PG_BUSY,
    SL_PG_CLOSED
} sl_pg_state;

/* Starts connecting with a libpq connection string or URI ("host=...
 * port=..." or "postgresql://..."); done runs when connected (OK) or not
 * (ECONN, ETIMEOUT after timeout seconds; an infinite timeout arms no
 * timer). Returns the handle, or NULL with err filled when libpq refuses
 * at once (out of memory, a conninfo it cannot parse). */
sl_pg *sl_pg_connect(struct event_base *base, const char *conninfo,
                     double timeout, sl_pg_done_fn done, void *privdata,
                     char *err, size_t errlen);

/* Sends one statement with n text parameters (values[i] NULL is SQL NULL)
 * and waits for its result within timeout seconds. Returns 0, or -1 with
 * err filled when the handle is not idle ("connection is busy",
 * "connection closed: <why>") or libpq refuses to send (the handle is then
 * closed). */
int sl_pg_query(sl_pg *c, const char *sql, int n, const char *const *values,
                double timeout, sl_pg_done_fn done, void *privdata, char *err,
                size_t errlen);

/* Runs sql, which holds one COPY ... FROM STDIN, and sends the len bytes of
 * data (copied: the caller may free them at once) as its input; o->copied
 * is the number of rows the COPY took. sql goes by the simple query
 * protocol: it may be several statements separated by semicolons ("CREATE
 * TEMP TABLE ...; COPY t FROM STDIN; INSERT ... SELECT ... FROM t"), which
 * the server runs as one implicit transaction (all or nothing, unless the
 * string has its own BEGIN/COMMIT), in one round trip besides the data's;
 * o->res is the last statement's result (the first error's on failure). A
 * second COPY FROM STDIN in the string fails the statement. Errors as
 * sl_pg_query's. */
int sl_pg_copy(sl_pg *c, const char *sql, const char *data, size_t len,
               double timeout, sl_pg_done_fn done, void *privdata, char *err,
               size_t errlen);

/* The operation's waiter is gone: done will not be called. A statement in
 * flight is cancelled and the connection dropped (the handle is closed).
 * Idle or closed: nothing happens. */
void sl_pg_abandon(sl_pg *c);

/* Closes the connection (abandoning any operation: its done is not
 * called). Idempotent. */
void sl_pg_close(sl_pg *c, const char *why);

/* Closes and frees. NULL is fine. */
void sl_pg_free(sl_pg *c);

sl_pg_state sl_pg_get_state(const sl_pg *c);

/* Why the handle closed ("" while open). */
const char *sl_pg_closed_reason(const sl_pg *c);

/* Server version (e.g. 150018), 0 when not connected; the backend pid. */
int sl_pg_server_version(const sl_pg *c);
int sl_pg_backend_pid(const sl_pg *c);

/* Cancel requests sent on a thread so far (for tests and stats). */
long sl_pg_cancels_sent(void);

/* Appends s (n bytes) to *buf as a field of COPY's text format: backslash,
 * tab, newline and carriage return escaped. Returns 0 or -1 (out of
 * memory; *buf unchanged). buf is a strbuf (strbuf.h). */
struct strbuf;
int sl_pg_copy_escape(struct strbuf *buf, const char *s, size_t n);

/* Appends s as a double-quoted SQL identifier ("a""b"). 0 or -1 (memory,
 * or s holds a NUL byte within n: identifiers cannot). */
int sl_pg_quote_ident(struct strbuf *buf, const char *s, size_t n);

#endif
