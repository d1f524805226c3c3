/* outbox_rowbinary.h -- an outbox batch as ClickHouse RowBinary, in C
 *
 * The ClickHouse sink's RowBinary body written from the queued rows' text
 * (core/outbox_batch.h) instead of from decoded Lua rows: the same bytes
 * lua/sluice/sinks/clickhouse.lua's writers produce for the decoded values,
 * the same refusals with the same messages. Owns nothing; single-threaded.
 */
#ifndef SLUICE_OUTBOX_ROWBINARY_H
#define SLUICE_OUTBOX_ROWBINARY_H

#include <stdint.h>

#include "outbox_batch.h"
#include "strbuf.h"

/* A column's type on the server, as the sink created it: */
enum sl_rb_type {
    SL_RB_INT64,   /* integer */
    SL_RB_FLOAT64, /* real */
    SL_RB_STRING,  /* text, blob, and uint256 / decimal kept as String: a
                      string's characters, a number's text */
    SL_RB_JSON,    /* json: the value's JSON text */
    SL_RB_UINT8,   /* boolean: 1 for true or 1, else 0 */
    SL_RB_UINT256, /* uint256 (servers from 21.6): digits, 32 bytes */
    SL_RB_DECIMAL, /* Decimal(precision, scale): the scaled integer */
};

typedef struct sl_rb_col {
    const char *name;
    size_t len;
    enum sl_rb_type type;
    int nullable;         /* Nullable(...): a flag byte before the value */
    int precision, scale; /* SL_RB_DECIMAL's */
} sl_rb_col;

/* Appends the batch's kept rows as RowBinary: the columns in order, then a
 * UInt64 version per row (versions[k] when versions and versions[k] != 0,
 * else version). 0, or -1 with "row R column C: why" in err (a value the
 * column cannot take: the sink refuses the batch) or "out of memory". */
int sl_obatch_rowbinary(const sl_obatch *b, const sl_rb_col *cols, int ncols,
                        const uint64_t *versions, uint64_t version, strbuf *out,
                        char *err, size_t errlen);

#endif
