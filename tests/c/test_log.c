/* test_log.c -- JSON formatting, levels and the ring buffer of log.c */
#include "log.h"
#include "test.h"

#include <math.h>
#include <stdio.h>

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

int main(void) {
    RUN(json_line_shape);
    RUN(json_escapes_control_bytes_and_non_finite);
    RUN(json_truncates_like_snprintf);
    RUN(levels_parse);
    RUN(ring_keeps_newest_and_filters_by_level);
    return TEST_SUMMARY();
}
