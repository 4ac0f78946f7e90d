/* Minimal test harness shared by the C test programs: counts checks and
 * prints the closing "N passed, N failed" line. */
#ifndef DREAMOS_TEST_CHECK_H
#define DREAMOS_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

#include "dreamos_bridge.h"

static int checks_passed = 0;
static int checks_failed = 0;

#define CHECK(cond)                                                                         \
    do {                                                                                    \
        if (cond) {                                                                         \
            checks_passed++;                                                                \
        } else {                                                                            \
            checks_failed++;                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);        \
        }                                                                                   \
    } while (0)

/* Check a call's status; on a mismatch print both names and the last error. */
#define CHECK_STATUS(expr, want)                                                            \
    do {                                                                                    \
        dreamos_status got_ = (expr);                                                       \
        if (got_ == (want)) {                                                               \
            checks_passed++;                                                                \
        } else {                                                                            \
            checks_failed++;                                                                \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (last error: %s)\n",       \
                    __FILE__, __LINE__, #expr, dreamos_status_name((int)got_),              \
                    dreamos_status_name((int)(want)), dreamos_last_error_message());        \
        }                                                                                   \
    } while (0)

/* The last error message contains `needle`. */
#define CHECK_ERROR_MENTIONS(needle)                                                        \
    do {                                                                                    \
        const char *msg_ = dreamos_last_error_message();                                    \
        if (msg_ != NULL && strstr(msg_, (needle)) != NULL) {                               \
            checks_passed++;                                                                \
        } else {                                                                            \
            checks_failed++;                                                                \
            fprintf(stderr, "%s:%d: last error %s does not mention %s\n", __FILE__,        \
                    __LINE__, msg_ ? msg_ : "(null)", (needle));                            \
        }                                                                                   \
    } while (0)

#define CHECK_CONTAINS(haystack, needle)                                                    \
    do {                                                                                    \
        const char *h_ = (haystack);                                                        \
        if (h_ != NULL && strstr(h_, (needle)) != NULL) {                                   \
            checks_passed++;                                                                \
        } else {                                                                            \
            checks_failed++;                                                                \
            fprintf(stderr, "%s:%d: %s does not contain %s\n", __FILE__, __LINE__,         \
                    h_ ? h_ : "(null)", (needle));                                          \
        }                                                                                   \
    } while (0)

static int finish(void) {
    printf("%d passed, %d failed\n", checks_passed, checks_failed);
    return checks_failed == 0 ? 0 : 1;
}

#endif
