/* checkpoint.c -- a background thread that checkpoints one SQLite WAL database
 *
 * See checkpoint.h for the contract. The mutex guards every field below the
 * thread handle; the thread holds it only to read its orders and to publish
 * a result, never across an SQLite call.
 */
#include "checkpoint.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

#define LOG_EVERY_S 60
#define PREP_ROUNDS 3    /* prepare_restart's sync+copy rounds at most */
#define PREP_SHORT_MS 5. /* a round this short leaves the RESTART little */

struct sl_ckpt {
    sqlite3 *loop_db; /* the loop's connection (the caller's) */
    sqlite3 *db;      /* the thread's own connection */
    sl_ckpt_opts o;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int wake;      /* the hook asked for a checkpoint */
    int stop;      /* sl_ckpt_stop asked the thread to end */
    int dirty;     /* the last checkpoint left frames uncopied: retry */
    int seen;      /* WAL frames when the last checkpoint ended */
    int restarted; /* a RESTART ran: the next write starts the WAL over */
    unsigned long commits; /* the loop's commits so far (the hook counts) */
    sl_busy busy;          /* the thread connection's busy handler state */
    sl_ckpt_stats st;
    unsigned long long logged; /* errors already logged (loop thread) */
    time_t logged_at;          /* when (monotonic seconds; 0: never) */
};

/* Runs on the loop thread inside the loop connection's commit: wakes the
 * thread when wake_pages frames came since the last checkpoint, and logs a
 * failure the thread counted since the last commit. Returns SQLITE_OK: a
 * checkpoint problem never fails the commit that noticed it. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages) {
    sl_ckpt *ck = arg;
    (void)db;
    (void)name;
    char msg[sizeof(ck->st.last_error)];
    unsigned long long errors;
    pthread_mutex_lock(&ck->mu);
    if (pages < ck->seen) { /* the WAL started over */
        ck->seen = 0;
        ck->restarted = 0;
    }
    if (pages - ck->seen >= ck->o.wake_pages && !ck->wake) {
        ck->wake = 1;
        pthread_cond_signal(&ck->cv);
    }
    ck->st.wal_frames = pages;
    ck->commits++;
    errors = ck->st.errors;
    memcpy(msg, ck->st.last_error, sizeof(msg));
    pthread_mutex_unlock(&ck->mu);
    if (errors != ck->logged) {
        /* a failure that repeats (the thread retries every retry_ms) is
         * said once a minute */
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (!ck->logged_at || now.tv_sec - ck->logged_at >= LOG_EVERY_S) {
            sl_logf(SL_LOG_ERROR,
                    "store: background WAL checkpoint failed (%llu so far): %s",
                    errors, msg);
            ck->logged = errors;
            ck->logged_at = now.tv_sec ? now.tv_sec : 1;
        }
    }
    return SQLITE_OK;
}

/* Runs one checkpoint of the given mode on the thread's connection and
 * publishes the result. Returns the frames in the WAL (all copied or not:
 * under steady writes the WAL never starts over by itself), -1 when it
 * failed. */
static int checkpoint(sl_ckpt *ck, int mode) {
    int log = -1, copied = -1;
    pthread_mutex_lock(&ck->mu);
    unsigned long commits = ck->commits;
    pthread_mutex_unlock(&ck->mu);
    int rc = sqlite3_wal_checkpoint_v2(ck->db, NULL, mode, &log, &copied);
    pthread_mutex_lock(&ck->mu);
    if (rc == SQLITE_OK || rc == SQLITE_BUSY) {
        if (mode == SQLITE_CHECKPOINT_PASSIVE)
            ck->st.checkpoints++;
        else
            ck->st.restarts++;
        if (mode == SQLITE_CHECKPOINT_RESTART && rc == SQLITE_OK)
            ck->restarted = 1;
        if (rc == SQLITE_BUSY)
            ck->st.busy++;
        ck->st.wal_pages = log < 0 ? 0 : log;
        ck->seen = ck->st.wal_pages;
        ck->st.copied_pages = copied < 0 ? 0 : copied;
        /* frames left, or committed since this one began: retry soon
         * (the loop's writes pause, or at the next wake) */
        ck->dirty = log > copied || ck->commits != commits;
    } else {
        ck->st.errors++;
        snprintf(ck->st.last_error, sizeof(ck->st.last_error), "%s (%d)",
                 sqlite3_errmsg(ck->db), rc);
        ck->dirty = 1;
    }
    pthread_mutex_unlock(&ck->mu);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY)
        return -1;
    return log;
}

int sl_busy_wait(void *arg, int tries) {
    sl_busy *b = arg;
    if (b->nowait) {
        b->refused = 1;
        return 0;
    }
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (tries == 0)
        b->since = now;
    double waited = (double)(now.tv_sec - b->since.tv_sec) * 1e3 +
                    (double)(now.tv_nsec - b->since.tv_nsec) / 1e6;
    if (waited >= b->ms)
        return 0;
    struct timespec pause = {0, SL_BUSY_POLL_NS};
    nanosleep(&pause, NULL);
    return 1;
}

static void deadline_in(struct timespec *ts, int ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* fsyncs the database file through the thread's connection (SQLite's own
 * handle: a second descriptor's close would drop the process's POSIX
 * locks on the file). 0, or -1 with the failure counted. */
static int sync_db(sl_ckpt *ck) {
    sqlite3_file *f = NULL;
    int rc =
        sqlite3_file_control(ck->db, "main", SQLITE_FCNTL_FILE_POINTER, &f);
    if (rc == SQLITE_OK && f && f->pMethods)
        rc = f->pMethods->xSync(f, SQLITE_SYNC_NORMAL);
    if (rc == SQLITE_OK)
        return 0;
    pthread_mutex_lock(&ck->mu);
    ck->st.errors++;
    snprintf(ck->st.last_error, sizeof(ck->st.last_error),
             "fsync of the database file failed (%d)", rc);
    ck->dirty = 1;
    pthread_mutex_unlock(&ck->mu);
    return -1;
}

/* Before a RESTART. A passive checkpoint fsyncs the database file only
 * when it copied up to the WAL's end, which writes that never pause never
 * allow: the pages all passive checkpoints copied since the WAL last
 * started over (up to limit_pages) are still to be written to disk, and
 * the RESTART, which catches up with the loop's writes held back, would
 * fsync them all under that lock (its 50-70 ms stalls). So fsync them
 * here, with no lock held, then copy what came in meanwhile and fsync
 * again, until a round is short (PREP_SHORT_MS) or PREP_ROUNDS ran:
 * the RESTART is left the frames of one short round to copy and fsync.
 * 0, or -1 when a sync or checkpoint failed (the RESTART waits for the
 * next try). */
static int prepare_restart(sl_ckpt *ck) {
    for (int i = 0; i < PREP_ROUNDS; i++) {
        double t0 = now_ms();
        if (sync_db(ck) < 0 || checkpoint(ck, SQLITE_CHECKPOINT_PASSIVE) < 0)
            return -1;
        if (now_ms() - t0 < PREP_SHORT_MS)
            break;
    }
    return sync_db(ck);
}

static void *run(void *arg) {
    sl_ckpt *ck = arg;
    pthread_mutex_lock(&ck->mu);
    for (;;) {
        while (!ck->stop && !ck->wake) {
            if (!ck->dirty) {
                pthread_cond_wait(&ck->cv, &ck->mu);
                continue;
            }
            struct timespec ts;
            deadline_in(&ts, ck->o.retry_ms);
            if (pthread_cond_timedwait(&ck->cv, &ck->mu, &ts) == ETIMEDOUT)
                break;
        }
        if (ck->stop)
            break;
        ck->wake = 0;
        pthread_mutex_unlock(&ck->mu);
        int left = checkpoint(ck, SQLITE_CHECKPOINT_PASSIVE);
        pthread_mutex_lock(&ck->mu);
        int restarted = ck->restarted;
        pthread_mutex_unlock(&ck->mu);
        if (left >= ck->o.limit_pages && !restarted && prepare_restart(ck) == 0)
            checkpoint(ck, SQLITE_CHECKPOINT_RESTART);
        pthread_mutex_lock(&ck->mu);
    }
    pthread_mutex_unlock(&ck->mu);
    return NULL;
}

sl_ckpt *sl_ckpt_start(sqlite3 *loop_db, const sl_ckpt_opts *opts, char *err,
                       size_t errlen) {
    sl_ckpt *ck = NULL;
    const char *path = sqlite3_db_filename(loop_db, "main");
    if (!sqlite3_threadsafe()) {
        snprintf(err, errlen, "SQLite is built without thread support");
        return NULL;
    }
    if (!path || !*path) {
        snprintf(err, errlen, "not a file database");
        return NULL;
    }
    if (!(ck = calloc(1, sizeof(*ck)))) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ck->loop_db = loop_db;
    ck->o = (sl_ckpt_opts){SL_CKPT_WAKE_PAGES, SL_CKPT_LIMIT_PAGES,
                           SL_CKPT_RETRY_MS, SL_CKPT_BUSY_MS};
    if (opts)
        ck->o = *opts;
    if (ck->o.wake_pages < 1)
        ck->o.wake_pages = 1;
    if (ck->o.limit_pages < ck->o.wake_pages)
        ck->o.limit_pages = ck->o.wake_pages;
    if (ck->o.retry_ms < 1)
        ck->o.retry_ms = 1;
    /* Only the thread uses this connection: no SQLite mutex needed. */
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
    char *msg = NULL;
    if (sqlite3_open_v2(path, &ck->db, flags, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path,
                 ck->db ? sqlite3_errmsg(ck->db) : "out of memory");
        goto fail;
    }
    ck->busy.ms = ck->o.busy_ms;
    sqlite3_busy_handler(ck->db, sl_busy_wait, &ck->busy);
    if (sqlite3_exec(ck->db, "PRAGMA synchronous = NORMAL", NULL, NULL, &msg) !=
        SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path,
                 msg ? msg : sqlite3_errmsg(ck->db));
        sqlite3_free(msg);
        goto fail;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ck->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&ck->mu, NULL);
    int rc = pthread_create(&ck->thread, NULL, run, ck);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the checkpoint thread: %s",
                 strerror(rc));
        pthread_cond_destroy(&ck->cv);
        pthread_mutex_destroy(&ck->mu);
        goto fail;
    }
    sqlite3_wal_hook(loop_db, wal_hook, ck);
    return ck;
fail:
    sqlite3_close(ck->db);
    free(ck);
    return NULL;
}

void sl_ckpt_stats_get(sl_ckpt *ck, sl_ckpt_stats *out) {
    pthread_mutex_lock(&ck->mu);
    *out = ck->st;
    pthread_mutex_unlock(&ck->mu);
}

void sl_ckpt_stop(sl_ckpt *ck) {
    if (!ck)
        return;
    sqlite3_wal_hook(ck->loop_db, NULL, NULL);
    pthread_mutex_lock(&ck->mu);
    ck->stop = 1;
    pthread_cond_signal(&ck->cv);
    pthread_mutex_unlock(&ck->mu);
    pthread_join(ck->thread, NULL);
    if (ck->st.errors != ck->logged)
        sl_logf(SL_LOG_ERROR,
                "store: background WAL checkpoint failed (%llu so far): %s",
                ck->st.errors, ck->st.last_error);
    sqlite3_close(ck->db);
    pthread_cond_destroy(&ck->cv);
    pthread_mutex_destroy(&ck->mu);
    free(ck);
}
