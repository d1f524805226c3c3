/* test.h -- a minimal unit-test harness for the C suites under tests/c/
 *
 * Each test_<module>.c defines its cases with TEST(name), lists them in main()
 * with RUN(name), and ends main() with TEST_SUMMARY(), which prints one
 * "N passed, M failed" line and returns non-zero when anything failed.
 * Checks never abort the process: a failed CHECK marks the current case failed,
 * prints file:line and the expression, and the case goes on.
 */
#ifndef SLUICE_TEST_H
#define SLUICE_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int test_failed_checks;
static int test_cases_passed;
static int test_cases_failed;

#define TEST(name) static void name(void)

#define RUN(name)                                                              \
    do {                                                                       \
        int before_ = test_failed_checks;                                      \
        name();                                                                \
        if (test_failed_checks == before_) {                                   \
            test_cases_passed++;                                               \
        } else {                                                               \
            test_cases_failed++;                                               \
            fprintf(stderr, "FAIL %s\n", #name);                               \
        }                                                                      \
    } while (0)

#define CHECK(expr)                                                            \
    do {                                                                       \
        if (!(expr)) {                                                         \
            test_failed_checks++;                                              \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,  \
                    #expr);                                                    \
        }                                                                      \
    } while (0)

#define CHECK_INT(a, b)                                                        \
    do {                                                                       \
        long long a_ = (long long)(a), b_ = (long long)(b);                    \
        if (a_ != b_) {                                                        \
            test_failed_checks++;                                              \
            fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n", __FILE__,    \
                    __LINE__, #a, a_, b_);                                     \
        }                                                                      \
    } while (0)

#define CHECK_NUM(a, b, eps)                                                   \
    do {                                                                       \
        double a_ = (double)(a), b_ = (double)(b);                             \
        if (!(fabs(a_ - b_) <= (eps))) {                                       \
            test_failed_checks++;                                              \
            fprintf(stderr, "%s:%d: %s == %.9g, expected %.9g\n", __FILE__,    \
                    __LINE__, #a, a_, b_);                                     \
        }                                                                      \
    } while (0)

#define CHECK_STR(a, b)                                                        \
    do {                                                                       \
        const char *a_ = (a), *b_ = (b);                                       \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) {                 \
            test_failed_checks++;                                              \
            fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n",          \
                    __FILE__, __LINE__, #a, a_ ? a_ : "(null)",                \
                    b_ ? b_ : "(null)");                                       \
        }                                                                      \
    } while (0)

#define TEST_SUMMARY()                                                         \
    (printf("%d passed, %d failed\n", test_cases_passed, test_cases_failed),   \
     test_cases_failed ? 1 : 0)

#endif
