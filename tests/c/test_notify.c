/* test_notify.c -- sd_notify datagrams, received on a socket of our own */
#include "core/notify.h"
#include "test.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* A datagram socket bound where NOTIFY_SOCKET will point: a path in a
 * fresh directory, or (abstract) a name of the abstract namespace. */
static int listener(int abstract, char *env, size_t envlen) {
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    socklen_t len;
    if (abstract) {
        snprintf(env, envlen, "@sluice-test-notify-%ld", (long)getpid());
        size_t n = strlen(env);
        memcpy(a.sun_path, env, n);
        a.sun_path[0] = '\0';
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        char dir[] = "/tmp/sluice-notify-XXXXXX";
        if (!mkdtemp(dir))
            return -1;
        snprintf(env, envlen, "%s/notify", dir);
        strcpy(a.sun_path, env);
        len = (socklen_t)sizeof a;
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, len) < 0)
        return -1;
    return fd;
}

static void cleanup(int fd, const char *env) {
    close(fd);
    if (env[0] == '/') {
        unlink(env);
        char dir[108];
        snprintf(dir, sizeof dir, "%s", env);
        *strrchr(dir, '/') = '\0';
        rmdir(dir);
    }
}

/* the one datagram waiting on fd, or "" when none is */
static const char *received(int fd) {
    static char buf[256];
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

TEST(sends_ready_to_a_path) {
    char env[108], err[128] = "";
    int fd = listener(0, env, sizeof env);
    CHECK(fd >= 0);
    setenv("NOTIFY_SOCKET", env, 1);
    CHECK_INT(sl_notify("READY=1", err, sizeof err), 1);
    CHECK_STR(received(fd), "READY=1");
    CHECK_INT(sl_notify("STOPPING=1", err, sizeof err), 1);
    CHECK_STR(received(fd), "STOPPING=1");
    CHECK_STR(received(fd), ""); /* one datagram per call */
    CHECK_STR(err, "");
    cleanup(fd, env);
}

TEST(sends_to_an_abstract_name) {
    char env[108], err[128] = "";
    int fd = listener(1, env, sizeof env);
    CHECK(fd >= 0);
    setenv("NOTIFY_SOCKET", env, 1);
    CHECK_INT(sl_notify("READY=1\nSTATUS=collecting", err, sizeof err), 1);
    CHECK_STR(received(fd), "READY=1\nSTATUS=collecting");
    cleanup(fd, env);
}

TEST(nothing_to_do_outside_systemd) {
    char err[128] = "";
    unsetenv("NOTIFY_SOCKET");
    CHECK_INT(sl_notify("READY=1", err, sizeof err), 0);
    setenv("NOTIFY_SOCKET", "", 1);
    CHECK_INT(sl_notify("READY=1", err, sizeof err), 0);
    CHECK_STR(err, "");
}

TEST(failures_are_reported) {
    char err[128] = "";
    setenv("NOTIFY_SOCKET", "/nonexistent-dir/notify", 1);
    CHECK_INT(sl_notify("READY=1", err, sizeof err), -1);
    CHECK(strcmp(err, "NOTIFY_SOCKET /nonexistent-dir/notify: No such file "
                      "or directory") == 0);
    setenv("NOTIFY_SOCKET", "relative/notify", 1);
    CHECK_INT(sl_notify("READY=1", err, sizeof err), -1);
    CHECK(strcmp(err, "NOTIFY_SOCKET relative/notify: not a path or @name") ==
          0);
    char longpath[200];
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[0] = '/';
    longpath[sizeof longpath - 1] = '\0';
    setenv("NOTIFY_SOCKET", longpath, 1);
    CHECK_INT(sl_notify("READY=1", err, sizeof err), -1);
    CHECK_STR(err, "NOTIFY_SOCKET is 199 bytes, over 107");
    CHECK_INT(sl_notify("READY=1", NULL, 0), -1); /* err is optional */
    unsetenv("NOTIFY_SOCKET");
}

int main(void) {
    RUN(sends_ready_to_a_path);
    RUN(sends_to_an_abstract_name);
    RUN(nothing_to_do_outside_systemd);
    RUN(failures_are_reported);
    return TEST_SUMMARY();
}
