/* test_numtext.c -- sl_numtext_shortest's exact texts */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "core/numtext.h"
#include "test.h"

typedef struct text_case {
    double v;
    const char *want;
} text_case;

/* Each v's text is want (a failure names want), its length is returned, and
 * it reads back as v. */
static void check_texts(const text_case *c, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char buf[SL_NUMTEXT_MAX];
        size_t len = sl_numtext_shortest(buf, c[i].v);
        CHECK_STR(buf, c[i].want);
        CHECK_INT(len, strlen(c[i].want));
        CHECK(strtod(buf, NULL) == c[i].v);
    }
}

#define CHECK_TEXTS(cases) check_texts(cases, sizeof(cases) / sizeof(cases[0]))

TEST(shortest_of_15_16_17_digits) {
    static const text_case cases[] = {
        {0.1, "0.1"}, /* 15 digits read back */
        {123456.789, "123456.789"},
        {1.0 / 3.0, "0.3333333333333333"},  /* 16 */
        {0.1 + 0.2, "0.30000000000000004"}, /* 17 */
        {-2.5e-7, "-2.5e-07"},
        {1e-5, "1e-05"},
    };
    CHECK_TEXTS(cases);
}

TEST(integral_values_as_g_writes_them) {
    static const text_case cases[] = {
        {100, "100"},    {1e15, "1e+15"},
        {1e21, "1e+21"}, {9007199254740994.0, "9007199254740994"},
        {-0.0, "-0"},
    };
    CHECK_TEXTS(cases);
}

TEST(the_extremes) {
    static const text_case cases[] = {
        {DBL_MAX, "1.7976931348623157e+308"},
        {-DBL_MAX, "-1.7976931348623157e+308"}, /* the longest kind */
        {DBL_MIN, "2.2250738585072014e-308"},
        /* the least subnormal: its 15 digits already read back as it */
        {5e-324, "4.94065645841247e-324"},
    };
    CHECK_TEXTS(cases);
}

int main(void) {
    RUN(shortest_of_15_16_17_digits);
    RUN(integral_values_as_g_writes_them);
    RUN(the_extremes);
    return TEST_SUMMARY();
}
