/* numtext.c -- the shortest text that reads back as the same double */
#include "numtext.h"

#include <stdio.h>
#include <stdlib.h>

size_t sl_numtext_shortest(char *buf, double v) {
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(buf, SL_NUMTEXT_MAX, "%.*g", prec, v);
        if (prec == 17 || strtod(buf, NULL) == v)
            break;
    }
    return (size_t)n;
}
