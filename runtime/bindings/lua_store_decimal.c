/* lua_store_decimal.c -- the sluice_decimal collation of sluice._store
 *
 * Compares the text of uint256 and decimal columns by numeric value
 * (lua_store_decimal.h has the order). Pure C: no Lua, no state.
 */
#include "lua_store_decimal.h"

#include <string.h>

/* A plain decimal's parts: sign -1/0/+1 (0 for every zero), the integer
 * digits without leading zeros and the fraction digits without trailing
 * zeros. */
typedef struct decparts {
    int sign;
    const char *ip, *fp;
    int ni, nf;
} decparts;

/* Reads s[0..n) as [+-]?D*(.D*)? with at least one digit; 0 when it is
 * not one (an exponent, spaces, anything else). */
static int decimal_parts(const char *s, int n, decparts *d) {
    int i = 0, neg = 0, digits = 0;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        neg = s[i++] == '-';
    while (i < n && s[i] == '0')
        i++, digits++;
    d->ip = s + i;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++, digits++;
    d->ni = (int)(s + i - d->ip);
    d->fp = s + i;
    d->nf = 0;
    if (i < n && s[i] == '.') {
        d->fp = s + ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, digits++;
        d->nf = (int)(s + i - d->fp);
        while (d->nf > 0 && d->fp[d->nf - 1] == '0')
            d->nf--;
    }
    if (i != n || digits == 0)
        return 0;
    d->sign = d->ni == 0 && d->nf == 0 ? 0 : neg ? -1 : 1;
    return 1;
}

static int cmp_magnitude(const decparts *a, const decparts *b) {
    if (a->ni != b->ni)
        return a->ni < b->ni ? -1 : 1;
    int c = memcmp(a->ip, b->ip, (size_t)a->ni);
    if (c)
        return c < 0 ? -1 : 1;
    int n = a->nf < b->nf ? a->nf : b->nf;
    c = memcmp(a->fp, b->fp, (size_t)n);
    if (c)
        return c < 0 ? -1 : 1;
    /* no trailing zeros: the longer fraction has one more non-zero digit */
    return a->nf == b->nf ? 0 : a->nf < b->nf ? -1 : 1;
}

/* See lua_store_decimal.h. */
int sl_store_decimal_collate(void *arg, int n1, const void *p1, int n2,
                             const void *p2) {
    (void)arg;
    decparts a, b;
    int da = decimal_parts(p1, n1, &a), db = decimal_parts(p2, n2, &b);
    if (da && db) {
        if (a.sign != b.sign)
            return a.sign < b.sign ? -1 : 1;
        int c = cmp_magnitude(&a, &b);
        return a.sign < 0 ? -c : c;
    }
    if (da != db)
        return da ? -1 : 1;
    int n = n1 < n2 ? n1 : n2;
    int c = memcmp(p1, p2, (size_t)n);
    if (c)
        return c < 0 ? -1 : 1;
    return n1 == n2 ? 0 : n1 < n2 ? -1 : 1;
}
