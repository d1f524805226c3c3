/* notify.c -- sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET */
#include "notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int sl_notify(const char *state, char *err, size_t errlen) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return 0;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t n = strlen(path);
    /* systemd hands out an absolute path, or '@' for the abstract
     * namespace (the name starts with a NUL byte, and is not terminated) */
    if (path[0] != '/' && path[0] != '@')
        return fail(err, errlen, "NOTIFY_SOCKET %s: not a path or @name", path);
    if (n >= sizeof addr.sun_path)
        return fail(err, errlen, "NOTIFY_SOCKET is %zu bytes, over %zu", n,
                    sizeof addr.sun_path - 1);
    memcpy(addr.sun_path, path, n);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    if (path[0] == '@')
        addr.sun_path[0] = '\0';
    else
        len++; /* a path is sent with its terminating NUL */

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return fail(err, errlen, "socket: %s", strerror(errno));
    int rc = 1;
    size_t sz = strlen(state);
    ssize_t sent;
    do
        sent =
            sendto(fd, state, sz, MSG_NOSIGNAL, (struct sockaddr *)&addr, len);
    while (sent < 0 && errno == EINTR);
    if (sent < 0)
        rc = fail(err, errlen, "NOTIFY_SOCKET %s: %s", path, strerror(errno));
    else if ((size_t)sent != sz)
        rc = fail(err, errlen, "NOTIFY_SOCKET %s: short send", path);
    close(fd);
    return rc;
}
