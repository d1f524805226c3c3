/* accept_guard.h -- backs a listener off while accept() keeps failing
 *
 * When the process runs out of descriptors (EMFILE, ENFILE) a pending
 * connection stays in the backlog, the listening socket stays readable and
 * the loop would spin on accept(). A guard owns a listener's error
 * callback: on an accept error it disables the listener for a short pause
 * that doubles on every failed retry (50 ms up to 1 s), logs one warning
 * per episode, and once accepting has worked for a second after a pause,
 * logs the recovery with the number of errors it kept quiet.
 *
 * Ownership: the caller keeps the listener; the guard only borrows it and
 * must be freed (sl_accept_guard_free) before the listener is. The guard
 * takes the listener's error callback for itself.
 */
#ifndef SLUICE_ACCEPT_GUARD_H
#define SLUICE_ACCEPT_GUARD_H

#include <event2/listener.h>

typedef struct sl_accept_guard sl_accept_guard;

/* Guards lev; `what` names it in the log ("server 127.0.0.1:8080").
 * Returns NULL when out of memory (the listener then stays unguarded). */
sl_accept_guard *sl_accept_guard_new(struct evconnlistener *lev,
                                     const char *what);

/* Stops guarding (a NULL guard is fine). The listener is left as it is,
 * possibly disabled: the caller is about to free it. */
void sl_accept_guard_free(sl_accept_guard *g);

#endif
