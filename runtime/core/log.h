/* log.h -- structured logging: JSON lines or console lines, plus a ring buffer
 *
 * One process-wide logger. Entries below the configured level are dropped
 * (level SL_LOG_NONE drops everything). Every kept entry is remembered, as its
 * JSON text, in a ring of the most recent entries (default 1000) for the admin
 * API's /logs, and queued for the output.
 *
 * Writing never blocks the caller: a writer thread owned by this module
 * writes queued lines to the output, whole and in order. When the output
 * does not keep up (a reader of stdout that stopped reading) and the queue
 * (SL_LOG_QUEUE_DEFAULT bytes) is full, new lines are dropped and counted
 * (sl_log_dropped). At exit, queued lines get SL_LOG_EXIT_FLUSH_SECONDS to
 * go out.
 *
 * Strings passed in are copied; nothing is retained from the caller. Call
 * the functions below from one thread (the loop's); only the queue is
 * shared with the writer thread.
 */
#ifndef SLUICE_LOG_H
#define SLUICE_LOG_H

#include <stddef.h>
#include <stdio.h>

typedef enum sl_log_level {
    SL_LOG_TRACE,
    SL_LOG_DEBUG,
    SL_LOG_INFO,
    SL_LOG_WARNING,
    SL_LOG_ERROR,
    SL_LOG_CRITICAL,
    SL_LOG_NONE
} sl_log_level;

typedef enum sl_log_format { SL_LOG_JSON, SL_LOG_CONSOLE } sl_log_format;

typedef enum sl_log_type {
    SL_LOG_STR,
    SL_LOG_NUM,
    SL_LOG_BOOL,
    SL_LOG_NULL
} sl_log_type;

typedef struct sl_log_field {
    const char *key;
    sl_log_type type;
    const char *str; /* SL_LOG_STR */
    size_t len;      /* of str */
    double num;      /* SL_LOG_NUM */
    int boolean;     /* SL_LOG_BOOL */
} sl_log_field;

/* Parses "trace".."critical", "none" (and "warn"). Returns -1 if unknown. */
int sl_log_level_parse(const char *name);
const char *sl_log_level_name(sl_log_level level);

void sl_log_set_level(sl_log_level level);
sl_log_level sl_log_get_level(void);
void sl_log_set_format(sl_log_format format);
sl_log_format sl_log_get_format(void);
#define SL_LOG_QUEUE_DEFAULT (1u << 20)
#define SL_LOG_EXIT_FLUSH_SECONDS 2.0
#define SL_LOG_SWITCH_FLUSH_SECONDS 0.25

/* Where entries go (default stdout). The logger writes to its own dup of
 * the stream's descriptor: the caller may close the stream right after.
 * Lines already queued get SL_LOG_SWITCH_FLUSH_SECONDS to reach the old
 * output; any left then go to the new one. */
void sl_log_set_output(FILE *out);
/* Waits up to timeout seconds for every queued line to be written. Returns
 * 0 when the queue is empty, -1 when the time ran out. */
int sl_log_flush(double timeout);
/* Lines (and their bytes) dropped since the start because the queue was
 * full or the output failed. */
void sl_log_dropped(unsigned long long *lines, unsigned long long *bytes);
/* The queue's bound in bytes (default SL_LOG_QUEUE_DEFAULT); for tests. */
void sl_log_set_queue_limit(size_t bytes);
/* The format that suits out: console for a terminal, JSON otherwise. */
sl_log_format sl_log_default_format(FILE *out);

static inline int sl_log_enabled(sl_log_level level) {
    extern sl_log_level sl_log_current_level;
    return level >= sl_log_current_level && level < SL_LOG_NONE;
}

/* Writes one entry with its fields, in order. wall is the entry's time in
 * epoch seconds (pass sl_log_clock() for now). */
void sl_log_write(sl_log_level level, double wall, const char *msg,
                  const sl_log_field *fields, size_t nfields);

/* printf-style convenience for C code, without fields. */
void sl_logf(sl_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

double sl_log_clock(void);

/* Secrets no log line may show: sl_log_redact copies s (len bytes; shorter
 * than SL_LOG_REDACT_MIN is ignored, it would mangle every line) and every
 * later line, in the ring and the output, has each occurrence replaced by
 * "<redacted>" (raw bytes: a secret that JSON escapes is matched only where
 * it is written unescaped). -1 when the table (256) is full or on allocation
 * failure. Loop thread only. sl_log_redact_free forgets them all (exit). */
#define SL_LOG_REDACT_MIN 4
int sl_log_redact(const char *s, size_t len);
void sl_log_redact_free(void);

/* Ring buffer. Resizing keeps the newest entries that fit. Returns -1 on
 * allocation failure (the old ring is kept). */
int sl_log_ring_resize(size_t capacity);
size_t sl_log_ring_capacity(void);
size_t sl_log_ring_count(void);
/* i = 0 is the oldest kept entry. The pointer is valid until the next write,
 * resize or sl_log_ring_free. */
const char *sl_log_ring_get(size_t i);
void sl_log_ring_free(void);

/* Formats one JSON line (no trailing newline) into buf; exposed for tests.
 * Returns the length it needed (like snprintf). */
size_t sl_log_format_json(char *buf, size_t size, sl_log_level level,
                          double wall, const char *msg,
                          const sl_log_field *fields, size_t nfields);

#endif
