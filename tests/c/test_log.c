/* test_log.c -- JSON formatting, levels and the ring buffer of log.c */
#include "core/log.h"
#include "test.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

TEST(json_line_shape) {
    char buf[512];
    sl_log_field f[] = {
        {.key = "rows", .type = SL_LOG_NUM, .num = 12},
        {.key = "rate", .type = SL_LOG_NUM, .num = 0.5},
        {.key = "ok", .type = SL_LOG_BOOL, .boolean = 1},
        {.key = "name", .type = SL_LOG_STR, .str = "a\"b", .len = 3},
        {.key = "none", .type = SL_LOG_NULL},
    };
    /* 2026-11-22T06:40:00.123Z */
    size_t n = sl_log_format_json(buf, sizeof(buf), SL_LOG_INFO, 1795329600.123,
                                  "hello", f, 5);
    CHECK_STR(buf, "{\"ts\":\"2026-11-22T06:40:00.123Z\",\"level\":\"info\","
                   "\"msg\":\"hello\",\"rows\":12,\"rate\":0.5,\"ok\":true,"
                   "\"name\":\"a\\\"b\",\"none\":null}");
    CHECK_INT(n, strlen(buf));
}

TEST(json_escapes_control_bytes_and_non_finite) {
    char buf[256];
    sl_log_field f[] = {
        {.key = "inf", .type = SL_LOG_NUM, .num = INFINITY},
        {.key = "nan", .type = SL_LOG_NUM, .num = NAN},
        {.key = "nul", .type = SL_LOG_STR, .str = "a\0b", .len = 3},
    };
    sl_log_format_json(buf, sizeof(buf), SL_LOG_ERROR, 0, "t\n\x01\\", f, 3);
    CHECK_STR(buf, "{\"ts\":\"1970-01-01T00:00:00.000Z\",\"level\":\"error\","
                   "\"msg\":\"t\\n\\u0001\\\\\",\"inf\":null,\"nan\":null,"
                   "\"nul\":\"a\\u0000b\"}");
}

TEST(json_truncates_like_snprintf) {
    char small[10];
    size_t need =
        sl_log_format_json(small, sizeof(small), SL_LOG_INFO, 0, "m", NULL, 0);
    CHECK_INT(strlen(small), 9);
    CHECK(need > sizeof(small));
}

TEST(levels_parse) {
    CHECK_INT(sl_log_level_parse("trace"), SL_LOG_TRACE);
    CHECK_INT(sl_log_level_parse("warning"), SL_LOG_WARNING);
    CHECK_INT(sl_log_level_parse("warn"), SL_LOG_WARNING);
    CHECK_INT(sl_log_level_parse("none"), SL_LOG_NONE);
    CHECK_INT(sl_log_level_parse("loud"), -1);
    CHECK_STR(sl_log_level_name(SL_LOG_CRITICAL), "critical");
}

TEST(ring_keeps_newest_and_filters_by_level) {
    FILE *devnull = fopen("/dev/null", "w");
    sl_log_set_output(devnull);
    sl_log_set_level(SL_LOG_INFO);
    CHECK_INT(sl_log_ring_resize(3), 0);
    sl_log_write(SL_LOG_DEBUG, 0, "dropped", NULL, 0);
    char msg[8];
    for (int i = 1; i <= 5; i++) {
        snprintf(msg, sizeof(msg), "m%d", i);
        sl_log_write(SL_LOG_INFO, 0, msg, NULL, 0);
    }
    CHECK_INT(sl_log_ring_count(), 3);
    CHECK(strstr(sl_log_ring_get(0), "\"msg\":\"m3\"") != NULL);
    CHECK(strstr(sl_log_ring_get(2), "\"msg\":\"m5\"") != NULL);
    CHECK(sl_log_ring_get(3) == NULL);

    /* Shrinking keeps the newest; growing keeps them all. */
    CHECK_INT(sl_log_ring_resize(2), 0);
    CHECK_INT(sl_log_ring_count(), 2);
    CHECK(strstr(sl_log_ring_get(0), "\"msg\":\"m4\"") != NULL);
    CHECK_INT(sl_log_ring_resize(10), 0);
    CHECK_INT(sl_log_ring_count(), 2);
    sl_log_write(SL_LOG_WARNING, 0, "m6", NULL, 0);
    CHECK(strstr(sl_log_ring_get(2), "\"msg\":\"m6\"") != NULL);

    sl_log_set_level(SL_LOG_NONE);
    sl_log_write(SL_LOG_CRITICAL, 0, "silenced", NULL, 0);
    CHECK_INT(sl_log_ring_count(), 3);

    CHECK_INT(sl_log_ring_resize(0), 0);
    CHECK_INT(sl_log_ring_count(), 0);
    sl_log_ring_free();
    sl_log_set_output(NULL);
    fclose(devnull);
}

/* Reads what is in the pipe now (non-blocking), appending to *acc. */
static void drain(int fd, char **acc, size_t *len) {
    char chunk[4096];
    ssize_t n;
    while ((n = read(fd, chunk, sizeof(chunk))) > 0) {
        *acc = realloc(*acc, *len + (size_t)n + 1);
        memcpy(*acc + *len, chunk, (size_t)n);
        *len += (size_t)n;
        (*acc)[*len] = '\0';
    }
}

/* A reader that stops reading: writes return at once, lines beyond the
 * queue are dropped and counted, the rest arrive whole and in order once
 * the reader drains, and logging then resumes. A blocking logger hangs
 * here (the alarm turns that into a failure). */
TEST(stalled_output_never_blocks_and_counts_drops) {
    int p[2];
    CHECK_INT(pipe(p), 0);
    fcntl(p[1], F_SETPIPE_SZ, 4096);
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    FILE *w = fdopen(p[1], "w");
    sl_log_set_output(w);
    fclose(w); /* the logger keeps its own descriptor */
    sl_log_set_level(SL_LOG_INFO);
    sl_log_set_format(SL_LOG_JSON);
    sl_log_set_queue_limit(16384);
    unsigned long long lines0, bytes0;
    sl_log_dropped(&lines0, &bytes0);

    alarm(20);
    char pad[201];
    memset(pad, 'x', 200);
    pad[200] = '\0';
    sl_log_field f = {.key = "pad", .type = SL_LOG_STR, .str = pad, .len = 200};
    char msg[16];
    enum { N = 2000 };
    for (int i = 0; i < N; i++) {
        snprintf(msg, sizeof(msg), "m%d", i);
        sl_log_write(SL_LOG_INFO, 0, msg, &f, 1);
    }
    CHECK_INT(sl_log_flush(0.05), -1); /* nobody reads: cannot drain */
    unsigned long long lines, bytes;
    sl_log_dropped(&lines, &bytes);
    lines -= lines0;
    bytes -= bytes0;
    CHECK(lines > 0);
    CHECK(lines < N);

    /* the reader comes back */
    char *acc = NULL;
    size_t len = 0;
    for (int i = 0; i < 10000 && sl_log_flush(0.001) != 0; i++)
        drain(p[0], &acc, &len);
    drain(p[0], &acc, &len);
    size_t got = 0;
    int torn = 0, last = -1, ordered = 1;
    for (char *s = acc, *nl; s && (nl = strchr(s, '\n')); s = nl + 1) {
        got++;
        if (strncmp(s, "{\"ts\":", 6) != 0 || nl[-1] != '}')
            torn++;
        int m = atoi(strstr(s, "\"msg\":\"m") + 8);
        if (m <= last)
            ordered = 0;
        last = m;
    }
    CHECK_INT(got + lines, N);
    CHECK_INT(torn, 0);
    CHECK(ordered);
    size_t total = 0; /* every line's bytes, newline included */
    for (int i = 0; i < N; i++) {
        snprintf(msg, sizeof(msg), "m%d", i);
        total += sl_log_format_json(NULL, 0, SL_LOG_INFO, 0, msg, &f, 1) + 1;
    }
    CHECK_INT(len + bytes, total);

    /* and logging resumes */
    sl_log_write(SL_LOG_INFO, 0, "after", NULL, 0);
    CHECK_INT(sl_log_flush(5), 0);
    free(acc);
    acc = NULL;
    len = 0;
    drain(p[0], &acc, &len);
    CHECK(acc && strstr(acc, "\"msg\":\"after\"") != NULL);
    unsigned long long lines2, bytes2;
    sl_log_dropped(&lines2, &bytes2);
    CHECK_INT(lines2 - lines0, lines);
    alarm(0);
    free(acc);
    sl_log_set_output(NULL);
    sl_log_set_queue_limit(SL_LOG_QUEUE_DEFAULT);
    close(p[0]);
}

TEST(redacted_secrets_never_reach_a_line) {
    FILE *devnull = fopen("/dev/null", "w");
    sl_log_set_output(devnull);
    sl_log_set_level(SL_LOG_INFO);
    CHECK_INT(sl_log_ring_resize(4), 0);
    CHECK_INT(sl_log_redact("hunter2", 7), 0);
    CHECK_INT(sl_log_redact("hunter2-long", 12), 0); /* longest first */
    CHECK_INT(sl_log_redact("abc", 3), 0);           /* too short: ignored */
    sl_log_field f = {.key = "url",
                      .type = SL_LOG_STR,
                      .str = "redis://:hunter2@h",
                      .len = 18};
    sl_log_write(SL_LOG_INFO, 0, "hunter2 and hunter2-long, abc", &f, 1);
    CHECK_STR(strstr(sl_log_ring_get(0), "\"msg\""),
              "\"msg\":\"<redacted> and <redacted>, abc\","
              "\"url\":\"redis://:<redacted>@h\"}");
    sl_log_redact_free();
    sl_log_write(SL_LOG_INFO, 0, "hunter2", NULL, 0);
    CHECK(strstr(sl_log_ring_get(1), "\"msg\":\"hunter2\"") != NULL);
    sl_log_ring_free();
    sl_log_set_output(NULL);
    fclose(devnull);
}

int main(void) {
    RUN(json_line_shape);
    RUN(json_escapes_control_bytes_and_non_finite);
    RUN(json_truncates_like_snprintf);
    RUN(levels_parse);
    RUN(ring_keeps_newest_and_filters_by_level);
    RUN(stalled_output_never_blocks_and_counts_drops);
    RUN(redacted_secrets_never_reach_a_line);
    return TEST_SUMMARY();
}
