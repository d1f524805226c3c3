/* replay.c -- a main() for the fuzz harnesses without libFuzzer (ctest)
 *
 *   fuzz_short_<name> [-n MUTATIONS] [-s SEED] [-t SECONDS] FILE|DIR...
 *
 * Runs every file given (a directory: every regular file in it, in name
 * order) through LLVMFuzzerTestOneInput, then MUTATIONS inputs made from
 * them by a fixed-seed pseudo-random mutator (byte flips, inserts,
 * deletions, duplicated runs, splices of two seeds), stopping early after
 * SECONDS. A finding aborts, as under libFuzzer. Deterministic for a seed,
 * so a failure in ctest reproduces with the same command line.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_SEEDS 65536
#define MAX_LEN 65536

typedef struct blob {
    uint8_t *p;
    size_t n;
} blob;

static blob seeds[MAX_SEEDS];
static int nseeds;
static uint64_t rng = 0x9e3779b97f4a7c15u;

static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void add_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    uint8_t *p = malloc(MAX_LEN);
    if (!p)
        abort();
    size_t n = fread(p, 1, MAX_LEN, f);
    fclose(f);
    uint8_t *fit = realloc(p, n ? n : 1);
    if (fit)
        p = fit;
    if (nseeds == MAX_SEEDS) {
        free(p);
        return;
    }
    seeds[nseeds].p = p;
    seeds[nseeds].n = n;
    nseeds++;
}

static int by_name(const struct dirent **a, const struct dirent **b) {
    return strcmp((*a)->d_name, (*b)->d_name);
}

static void add_path(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) {
        perror(path);
        exit(2);
    }
    if (!S_ISDIR(st.st_mode)) {
        add_file(path);
        return;
    }
    struct dirent **list;
    int n = scandir(path, &list, NULL, by_name);
    if (n < 0) {
        perror(path);
        exit(2);
    }
    for (int i = 0; i < n; i++) {
        char full[4096];
        snprintf(full, sizeof(full), "%s/%s", path, list[i]->d_name);
        if (list[i]->d_name[0] != '.' && stat(full, &st) == 0 &&
            S_ISREG(st.st_mode))
            add_file(full);
        free(list[i]);
    }
    free(list);
}

/* Mutates buf (n bytes, room for MAX_LEN) in place; returns the new
 * length. A few stacked edits, as libFuzzer does. */
static size_t mutate(uint8_t *buf, size_t n) {
    static const char *tokens[] = {
        "{",   "}",    "[",    "]",     "\"",      ":",
        ",",   "null", "true", "false", "-1",      "1e308",
        "0.5", "\"\"", "{}",   "[]",    "\\u0000", "9007199254740993"};
    int edits = 1 + (int)(next() % 4);
    for (int e = 0; e < edits; e++) {
        size_t pos = n ? next() % (n + 1) : 0;
        switch (next() % 6) {
        case 0: /* flip a bit */
            if (n)
                buf[pos % n] ^= (uint8_t)(1u << (next() % 8));
            break;
        case 1: /* a random byte */
            if (n)
                buf[pos % n] = (uint8_t)next();
            break;
        case 2: { /* delete a run */
            if (!n)
                break;
            size_t at = pos % n, len = 1 + next() % 8;
            if (len > n - at)
                len = n - at;
            memmove(buf + at, buf + at + len, n - at - len);
            n -= len;
            break;
        }
        case 3: { /* insert a JSON token */
            const char *tok =
                tokens[next() % (sizeof(tokens) / sizeof(*tokens))];
            size_t len = strlen(tok);
            if (n + len > MAX_LEN)
                break;
            memmove(buf + pos + len, buf + pos, n - pos);
            memcpy(buf + pos, tok, len);
            n += len;
            break;
        }
        case 4: { /* duplicate a run */
            if (!n)
                break;
            size_t at = pos % n, len = 1 + next() % 16;
            if (len > n - at)
                len = n - at;
            if (n + len > MAX_LEN)
                break;
            memmove(buf + at + len, buf + at, n - at);
            n += len;
            break;
        }
        default: { /* splice: the tail of another seed */
            const blob *o = &seeds[next() % nseeds];
            if (!o->n)
                break;
            size_t from = next() % o->n, len = o->n - from;
            if (pos + len > MAX_LEN)
                len = MAX_LEN - pos;
            memcpy(buf + pos, o->p + from, len);
            n = pos + len;
            break;
        }
        }
    }
    return n;
}

int main(int argc, char **argv) {
    long mutations = 1000;
    double seconds = 30;
    int i;
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
            mutations = atol(argv[++i]);
        else if (strcmp(argv[i], "-s") == 0 && i + 1 < argc)
            rng = strtoull(argv[++i], NULL, 0) | 1;
        else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else
            add_path(argv[i]);
    }
    if (!nseeds) {
        fprintf(stderr, "usage: %s [-n N] [-s SEED] [-t SECONDS] FILE|DIR...\n",
                argv[0]);
        return 2;
    }
    LLVMFuzzerInitialize(&argc, &argv);
    for (i = 0; i < nseeds; i++)
        LLVMFuzzerTestOneInput(seeds[i].p, seeds[i].n);
    uint8_t *buf = malloc(MAX_LEN);
    if (!buf)
        abort();
    time_t start = time(NULL);
    long done = 0;
    for (; done < mutations; done++) {
        if (difftime(time(NULL), start) > seconds)
            break;
        const blob *s = &seeds[next() % nseeds];
        memcpy(buf, s->p, s->n);
        size_t n = mutate(buf, s->n);
        /* an exact-size copy, so ASan sees a read past the end */
        uint8_t *exact = malloc(n ? n : 1);
        if (!exact)
            abort();
        memcpy(exact, buf, n);
        LLVMFuzzerTestOneInput(exact, n);
        free(exact);
    }
    free(buf);
    printf("%s: %d seeds, %ld mutations, no finding\n", argv[0], nseeds, done);
    for (i = 0; i < nseeds; i++)
        free(seeds[i].p);
    return 0;
}
