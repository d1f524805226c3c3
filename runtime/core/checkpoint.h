/* checkpoint.h -- a background thread that checkpoints one SQLite WAL database
 *
 * A commit that runs SQLite's automatic WAL checkpoint copies the WAL into
 * the database file and fsyncs it, on the committing thread: tens of ms on
 * the loop. sl_ckpt moves that work to a thread of its own with its own
 * connection to the same file:
 *
 *   - sl_ckpt_start installs a WAL hook on the loop's connection, which
 *     replaces SQLite's autocheckpoint on it (wal_autocheckpoint is then 0
 *     in effect). Once commits added wake_pages frames to the WAL since
 *     the last checkpoint, the hook wakes the thread; it never waits for
 *     it.
 *   - The thread runs PASSIVE checkpoints: they copy what no reader still
 *     needs and never block the loop's writer. While frames are left or
 *     commits came in during one, it runs another every retry_ms (so once
 *     the writes pause it copies everything, and the loop's next
 *     transaction starts the WAL over).
 *   - Bound: the WAL starts over only when a write transaction begins
 *     after a checkpoint copied all of it, which steady writes never allow.
 *     So when a passive checkpoint leaves limit_pages or more frames in the
 *     WAL (writes never pause, or a reader pins the WAL), the thread runs
 *     up to 3 rounds of an fsync of the database file (SQLite fsyncs it
 *     only after a checkpoint that reached the WAL's end, which steady
 *     writes never allow: the pages every passive checkpoint copied are
 *     still to be written) and a passive checkpoint (it copies what came
 *     in during the fsync), stopping at a round under 5 ms; a last fsync;
 *     then a RESTART: it holds the loop's next write back while it copies
 *     what the last round left, fsyncs the WAL and the few pages it
 *     copied (and waits, at most busy_ms, for readers), so the next write
 *     starts the WAL over. That is the one stall left, once per
 *     limit_pages of WAL under writes that never pause. A failed fsync
 *     counts as a failed checkpoint.
 *
 * Durability is unchanged: the thread's connection uses synchronous=NORMAL
 * like the loop's, so every checkpoint fsyncs the WAL before copying and
 * the database file before the WAL can be reused; a crash at any point
 * leaves a WAL that SQLite recovers at the next open.
 *
 * Threads: sl_ckpt_start, sl_ckpt_stats and sl_ckpt_stop are called from
 * the thread that owns the loop's connection (the loop thread); the WAL
 * hook runs there too (inside that connection's commits), and it is the
 * only place this module logs (sl_log is the loop thread's). The
 * checkpoint thread touches only its own connection and the shared
 * counters, under the mutex. Failed checkpoints are counted, their last
 * message kept (sl_ckpt_stats), and new failures are logged at error
 * level by the next commit's hook (at most once a minute: a failure that
 * persists repeats every retry_ms).
 *
 * Ownership: the sl_ckpt owns its thread and its connection; the caller
 * keeps the loop's connection open until sl_ckpt_stop returned.
 */
#ifndef SLUICE_CHECKPOINT_H
#define SLUICE_CHECKPOINT_H

#include <sqlite3.h>
#include <stddef.h>
#include <time.h>

typedef struct sl_ckpt sl_ckpt;

typedef struct sl_ckpt_opts {
    int wake_pages;  /* wake the thread at this many WAL frames (>= 1) */
    int limit_pages; /* RESTART when a passive checkpoint leaves this many */
    int retry_ms;    /* retry an incomplete passive checkpoint this often */
    int busy_ms;     /* the RESTART's wait for the writer and readers */
} sl_ckpt_opts;

#define SL_CKPT_WAKE_PAGES 1000 /* SQLite's own autocheckpoint default */
#define SL_CKPT_LIMIT_PAGES 16384
#define SL_CKPT_RETRY_MS 50
#define SL_CKPT_BUSY_MS 100

typedef struct sl_ckpt_stats {
    unsigned long long checkpoints; /* passive checkpoints run */
    unsigned long long restarts;    /* RESTART checkpoints run (the bound) */
    unsigned long long busy;        /* checkpoints another one held off */
    unsigned long long errors;      /* checkpoints that failed */
    int wal_frames;       /* frames in the WAL after the loop's last commit */
    int wal_pages;        /* frames in the WAL after the last one */
    int copied_pages;     /* of which copied to the database */
    char last_error[256]; /* "" until a checkpoint failed */
} sl_ckpt_stats;

/* A busy handler that retries every SL_BUSY_POLL_NS until ms milliseconds
 * have passed since the first try (sqlite3_busy_handler(db, sl_busy_wait,
 * &b), b living as long as the connection). SQLite's own handler sleeps
 * 1, 2, 5, 10 ms... between tries: a lock held 6 ms keeps the waiter 8,
 * and a waiter for the writer lock of a database written in a loop of short
 * transactions rarely tries in a gap. Polling finely fixes both. With
 * nowait set the handler does not wait at all: the loop's connection sets it
 * for a statement a task will retry after a sleep of its own, so that the
 * loop runs other work meanwhile instead of polling here. */
typedef struct sl_busy {
    int ms;
    struct timespec since; /* the current wait's first try */
    int nowait;  /* set by the owner around a statement that must not wait:
                  * the handler then refuses at once (SQLITE_BUSY) */
    int refused; /* set by the handler when it refused because of nowait;
                  * the owner clears it */
} sl_busy;
#define SL_BUSY_POLL_NS 200000L
int sl_busy_wait(void *busy, int tries);

/* Starts a checkpoint thread for the main database of db, a file database
 * in WAL mode (NULL opts: the defaults above). Returns NULL with err filled
 * when SQLite is not threadsafe, the file cannot be opened, or the thread
 * cannot start; db is then left as it was. */
sl_ckpt *sl_ckpt_start(sqlite3 *db, const sl_ckpt_opts *opts, char *err,
                       size_t errlen);

/* A copy of the counters. */
void sl_ckpt_stats_get(sl_ckpt *ck, sl_ckpt_stats *out);

/* Removes the WAL hook from the loop's connection, stops and joins the
 * thread (a checkpoint in progress finishes first) and closes its
 * connection; frees ck. Logs a failure not yet logged. NULL is a no-op. */
void sl_ckpt_stop(sl_ckpt *ck);

#endif
