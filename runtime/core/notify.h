/* notify.h -- readiness and state notifications to systemd (sd_notify)
 *
 * Under a unit with Type=notify, systemd passes the path of a datagram
 * socket in $NOTIFY_SOCKET and waits for "READY=1" before it calls the
 * service started. This is the whole protocol sluice needs, written out so
 * that no libsystemd dependency comes with it: one datagram per call, to a
 * filesystem path or (a leading '@') an abstract socket name.
 */
#ifndef SLUICE_NOTIFY_H
#define SLUICE_NOTIFY_H

#include <stddef.h>

/* Sends state ("READY=1", "STOPPING=1", "STATUS=...", newline-separated
 * assignments) to $NOTIFY_SOCKET. Returns 1 when sent, 0 when the variable
 * is unset or empty (not run by systemd: nothing to do), -1 on failure with
 * err (errlen bytes, may be NULL) filled. Never blocks: the socket is
 * non-blocking, and a full receive queue is a failure. */
int sl_notify(const char *state, char *err, size_t errlen);

#endif
