/* repl_server.h -- the REPL's server end: the control socket, local sessions
 *
 * `sluice run` listens on a Unix socket (mode 0600). Each connection is a
 * REPL session: it sends one JSON request per line, {"chunk": "..."}, and
 * gets one JSON response per line, {"ok": b, "output": s, "incomplete": b}.
 * Every request is evaluated as a task (lua/sluice/repl.lua, _serve); a
 * connection runs one request at a time, in order. The listener does not
 * hold a loop reference: a process whose work is done exits with clients
 * attached (they see the connection close). The Lua side reads the
 * socket's path and its number of clients from sluice._repl
 * (luaopen_sluice_repl, defined here: it shares the connection type).
 *
 * Ownership: the module owns the listening socket and removes the socket
 * file at exit (sl_runtime_close, or exit()). A connection's memory is a Lua
 * userdata anchored in the registry while the connection is open or one of
 * its requests is being evaluated; a client that goes away mid-evaluation
 * leaves the evaluation to finish and its reply is dropped. A client that
 * half-closes (shuts down its sending side) still gets the replies to every
 * complete request it sent, then the connection is closed. Input is bounded:
 * while a request is evaluated at most one request's worth (4 MiB) is
 * buffered; a longer line is answered "request too large" and the
 * connection closed.
 */
#ifndef SLUICE_REPL_SERVER_H
#define SLUICE_REPL_SERVER_H

#include <stddef.h>

typedef struct sl_repl_server_conn sl_repl_server_conn;

/* A local session's reply (sl_repl_server_attach). output is only valid for
 * the duration of the call. Called from inside the evaluating task (or
 * from the task machinery when it failed): it must not run Lua. */
typedef void (*sl_repl_server_reply_fn)(int ok, const char *output, size_t len,
                                        int incomplete, void *privdata);

/* Listens on path (after sl_runtime_init). A stale socket file (nobody
 * accepts on it) is replaced; a file that is not a socket is refused, and
 * so is a socket another process listens on -- unless strict is 0 (the
 * default path, not one the user named), in which case a warning is logged
 * and the process runs without a control socket, so that two scripts can
 * run in one directory. Returns 0, or -1 with a one-line message in err. */
int sl_repl_server_listen(const char *path, int strict, char *err,
                          size_t errlen);

/* Stops listening and removes the socket file if it is still ours.
 * Idempotent; also run by sl_runtime_close and at exit(). */
void sl_repl_server_close(void);

/* A session without a socket (the in-process terminal of `run -i`):
 * requests are raw chunks, replies go to fn. The session stays valid until
 * sl_repl_server_detach or sl_runtime_close, whichever is first. */
sl_repl_server_conn *sl_repl_server_attach(sl_repl_server_reply_fn fn,
                                           void *privdata);

/* Evaluates chunk (copied) in a task. Returns 0, or -1 when the session is
 * busy with an earlier chunk or detached. */
int sl_repl_server_submit(sl_repl_server_conn *c, const char *chunk,
                          size_t len);

/* Ends a local session: no more replies are delivered. */
void sl_repl_server_detach(sl_repl_server_conn *c);

#endif
