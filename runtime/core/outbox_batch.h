/* outbox_batch.h -- a forwarder's batch read from the outbox's chunks, in C
 *
 * The outbox queues a commit's rows as one JSON array per chunk (objects
 * of scalars and JSON values: sluice._outbox.rows' or sluice.json's text).
 * A forwarder's batch is ranges of such chunks, one row per key (the
 * latest wins, in the place of the first). Decoding them into Lua tables
 * and encoding those again for a sink cost most of the forwarding
 * (tests/bench/sink_postgres.lua); a batch here keeps the chunks' text and
 * where each kept row's fields are, and writes the sink's format (COPY
 * text) or one JSON array straight from it.
 *
 * Ownership: a batch points into the chunks' text given to sl_obatch_add
 * (copying 1 MB chunks cost more than reading them: fresh pages), which
 * the caller keeps alive and unchanged until sl_obatch_free; the rest
 * (field and row tables, key bytes, unescaped names) is the batch's own,
 * freed by sl_obatch_free. Single-threaded, no callbacks, nothing global.
 */
#ifndef SLUICE_OUTBOX_BATCH_H
#define SLUICE_OUTBOX_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "strbuf.h"

typedef struct sl_obatch sl_obatch;

/* A kept row's field: spans into the chunk's text (a name that had escapes:
 * its unescaped copy, the batch's). val is the value's JSON text. */
typedef struct sl_obatch_field {
    const char *name, *val;
    uint32_t nlen, vlen;
    char type; /* 's' string (val: its text, quotes included), 'n' number,
                  'o' object or array, 't' true, 'f' false, 'z' null */
} sl_obatch_field;

/* How a column's value is written in COPY text: */
enum sl_obatch_kind {
    SL_OB_PLAIN, /* a string's characters, a number's or literal's text */
    SL_OB_BYTEA, /* a string's bytes as bytea hex input (\x...) */
    SL_OB_JSON,  /* the value's JSON text (jsonb input) */
};

typedef struct sl_obatch_col {
    const char *name;
    size_t len;
    enum sl_obatch_kind kind;
} sl_obatch_col;

/* A batch whose rows are one per value of the fields keys[0..nkeys) (no
 * keys: every row kept). The names are copied. NULL when out of memory. */
sl_obatch *sl_obatch_new(const char *const *keys, const size_t *key_lens,
                         int nkeys);
void sl_obatch_free(sl_obatch *b);

/* Adds rows lo..hi (1-based) of the chunk text[0..len) (which the caller
 * keeps until the batch is freed), each tagged with
 * entry (the caller's number for where it came from). 0, or -1 with a
 * message in err (malformed text, a row that is not an object, fewer rows
 * than hi, out of memory); the batch is then unusable but still freed by
 * sl_obatch_free. */
int sl_obatch_add(sl_obatch *b, const char *text, size_t len, int lo, int hi,
                  int entry, char *err, size_t errlen);

/* Rows added, rows kept (one per key). */
size_t sl_obatch_queued(const sl_obatch *b);
size_t sl_obatch_count(const sl_obatch *b);

/* Where kept row k (0-based) came from: its entry and its row in the
 * chunk (the latest row of its key). */
void sl_obatch_origin(const sl_obatch *b, size_t k, int *entry, int *row);

/* Which field of kept row k (0-based) is each column's: at[0..ncols) (NULL:
 * the row has none). cache: zeroed before the first row, kept across the
 * rows of one call (rows of a table repeat their layout: a field's column
 * is found by its position's last name). */
#define SL_OBATCH_CACHE 64
typedef struct sl_obatch_colcache {
    const char *name[SL_OBATCH_CACHE];
    uint32_t len[SL_OBATCH_CACHE];
    int col[SL_OBATCH_CACHE];
} sl_obatch_colcache;
void sl_obatch_row_columns(const sl_obatch *b, size_t k,
                           const sl_obatch_col *cols, int ncols,
                           const sl_obatch_field **at,
                           sl_obatch_colcache *cache);

/* Unescapes a JSON string's text s[0..n) (between its quotes) into dst
 * (which may be s: the result is never longer) -> its length, or -1 for a
 * bad escape or a lone surrogate. */
long sl_obatch_unescape(char *dst, const char *s, size_t n);

/* Appends the kept rows as one JSON array (each row's text as queued).
 * 0, or -1 when out of memory. */
int sl_obatch_json(const sl_obatch *b, strbuf *out);

/* Appends the kept rows in COPY's text format, columns cols[0..ncols) in
 * that order (a field the row lacks, or null: \N; fields that are not
 * columns are left out). 0, or -1 with a message in err: a string that
 * PostgreSQL cannot hold (a NUL, a lone surrogate) or out of memory. */
int sl_obatch_copy_text(const sl_obatch *b, const sl_obatch_col *cols,
                        int ncols, strbuf *out, char *err, size_t errlen);

#endif
