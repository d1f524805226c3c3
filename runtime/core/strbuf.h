/* strbuf.h -- a growable byte string, NUL-terminated
 *
 * A zero-initialised strbuf is empty and owns nothing; sb_add grows it by
 * doubling. The caller owns p and frees it with free() (or sb_free). Header
 * only: the functions are static inline, one copy per file that uses them.
 */
#ifndef SLUICE_STRBUF_H
#define SLUICE_STRBUF_H

#include <stdlib.h>
#include <string.h>

typedef struct strbuf {
    char *p;
    size_t len, cap;
} strbuf;

/* Appends n bytes of s. Returns 0, or -1 (b unchanged) when out of memory. */
static inline int sb_add(strbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static inline void sb_free(strbuf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

#endif
