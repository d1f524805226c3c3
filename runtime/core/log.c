/* log.c -- structured logging: JSON lines or console lines, plus a ring buffer
 */
#include "log.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

sl_log_level sl_log_current_level = SL_LOG_INFO;
static sl_log_format current_format = SL_LOG_JSON;

static const char *level_names[] = {"trace", "debug",    "info", "warning",
                                    "error", "critical", "none"};

/* --- a growable buffer; on allocation failure it truncates silently, since a
 * logger must never take the process down ------------------------------- */
typedef struct {
    char *p;
    size_t len, cap;
    char stack[1024];
} buf;

static void buf_init(buf *b) {
    b->p = b->stack;
    b->len = 0;
    b->cap = sizeof(b->stack);
    b->p[0] = '\0';
}

static void buf_free(buf *b) {
    if (b->p != b->stack)
        free(b->p);
}

static int buf_reserve(buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t cap = b->cap * 2;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = b->p == b->stack ? malloc(cap) : realloc(b->p, cap);
    if (!p)
        return -1;
    if (b->p == b->stack)
        memcpy(p, b->stack, b->len + 1);
    b->p = p;
    b->cap = cap;
    return 0;
}

static void buf_add(buf *b, const char *s, size_t n) {
    if (buf_reserve(b, n) < 0)
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_adds(buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_printf(buf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        buf_add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void buf_json_string(buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    buf_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            buf_add(b, "\\\"", 2);
            break;
        case '\\':
            buf_add(b, "\\\\", 2);
            break;
        case '\n':
            buf_add(b, "\\n", 2);
            break;
        case '\r':
            buf_add(b, "\\r", 2);
            break;
        case '\t':
            buf_add(b, "\\t", 2);
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
                buf_add(b, esc, 6);
            } else {
                buf_add(b, (const char *)&s[i], 1);
            }
        }
    }
    buf_add(b, "\"", 1);
}

static void buf_number(buf *b, double v) {
    if (!isfinite(v))
        buf_adds(b, "null");
    else if (v == floor(v) && fabs(v) < 1e15)
        buf_printf(b, "%.0f", v);
    else
        buf_printf(b, "%.15g", v); /* readable; exact enough for logs */
}

/* RFC 3339 UTC with milliseconds: 2026-11-22T06:40:00.123Z */
static void buf_timestamp(buf *b, double wall, char sep) {
    /* Round to the millisecond first: 0.123 is 0.12299.. in binary. */
    long long total = llround(wall * 1000.0);
    time_t secs = (time_t)(total / 1000);
    int ms = (int)(total % 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    buf_printf(b, "%04d-%02d-%02d%c%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
               tm.tm_mon + 1, tm.tm_mday, sep, tm.tm_hour, tm.tm_min, tm.tm_sec,
               ms);
}

static void build_json(buf *b, sl_log_level level, double wall, const char *msg,
                       const sl_log_field *f, size_t n) {
    buf_adds(b, "{\"ts\":\"");
    buf_timestamp(b, wall, 'T');
    buf_adds(b, "\",\"level\":\"");
    buf_adds(b, level_names[level]);
    buf_adds(b, "\",\"msg\":");
    buf_json_string(b, msg, strlen(msg));
    for (size_t i = 0; i < n; i++) {
        buf_add(b, ",", 1);
        buf_json_string(b, f[i].key, strlen(f[i].key));
        buf_add(b, ":", 1);
        switch (f[i].type) {
        case SL_LOG_STR:
            buf_json_string(b, f[i].str, f[i].len);
            break;
        case SL_LOG_NUM:
            buf_number(b, f[i].num);
            break;
        case SL_LOG_BOOL:
            buf_adds(b, f[i].boolean ? "true" : "false");
            break;
        case SL_LOG_NULL:
            buf_adds(b, "null");
            break;
        }
    }
    buf_add(b, "}", 1);
}

static int needs_quotes(const char *s, size_t n) {
    if (n == 0)
        return 1;
    for (size_t i = 0; i < n; i++)
        if (s[i] == ' ' || s[i] == '"' || s[i] == '=' || s[i] == '\t')
            return 1;
    return 0;
}

/* Console: "2026-11-22 06:40:00.123Z INFO  msg key=value ..."; multi-line
 * string values (tracebacks) follow on their own indented lines. */
static void build_console(buf *b, sl_log_level level, double wall,
                          const char *msg, const sl_log_field *f, size_t n) {
    static const char *labels[] = {"TRACE", "DEBUG", "INFO ", "WARN ",
                                   "ERROR", "CRIT ", "NONE "};
    buf_timestamp(b, wall, ' ');
    buf_add(b, " ", 1);
    buf_adds(b, labels[level]);
    buf_add(b, " ", 1);
    buf_adds(b, msg);
    for (size_t i = 0; i < n; i++) {
        if (f[i].type == SL_LOG_STR && memchr(f[i].str, '\n', f[i].len))
            continue;
        buf_add(b, " ", 1);
        buf_adds(b, f[i].key);
        buf_add(b, "=", 1);
        switch (f[i].type) {
        case SL_LOG_STR:
            if (needs_quotes(f[i].str, f[i].len))
                buf_json_string(b, f[i].str, f[i].len);
            else
                buf_add(b, f[i].str, f[i].len);
            break;
        case SL_LOG_NUM:
            buf_printf(b, "%.14g", f[i].num);
            break;
        case SL_LOG_BOOL:
            buf_adds(b, f[i].boolean ? "true" : "false");
            break;
        case SL_LOG_NULL:
            buf_adds(b, "null");
            break;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (f[i].type != SL_LOG_STR || !memchr(f[i].str, '\n', f[i].len))
            continue;
        buf_add(b, "\n    ", 5);
        const char *s = f[i].str, *end = s + f[i].len;
        while (s < end) {
            const char *nl = memchr(s, '\n', (size_t)(end - s));
            size_t len = nl ? (size_t)(nl - s) : (size_t)(end - s);
            buf_add(b, s, len);
            if (!nl)
                break;
            buf_add(b, "\n    ", 5);
            s = nl + 1;
        }
    }
}

/* --- ring buffer of recent entries, as JSON text ------------------------- */
static char **ring;
static size_t ring_cap = 1000, ring_start, ring_count;

int sl_log_ring_resize(size_t capacity) {
    char **fresh = capacity ? calloc(capacity, sizeof(*fresh)) : NULL;
    if (capacity && !fresh)
        return -1;
    size_t keep = ring_count < capacity ? ring_count : capacity;
    size_t drop = ring_count - keep;
    for (size_t i = 0; i < ring_count; i++) {
        char *e = ring[(ring_start + i) % ring_cap];
        if (i < drop)
            free(e);
        else
            fresh[i - drop] = e;
    }
    free(ring);
    ring = fresh;
    ring_cap = capacity;
    ring_start = 0;
    ring_count = keep;
    return 0;
}

size_t sl_log_ring_capacity(void) { return ring_cap; }
size_t sl_log_ring_count(void) { return ring_count; }

const char *sl_log_ring_get(size_t i) {
    return i < ring_count ? ring[(ring_start + i) % ring_cap] : NULL;
}

void sl_log_ring_free(void) {
    for (size_t i = 0; i < ring_count; i++)
        free(ring[(ring_start + i) % ring_cap]);
    free(ring);
    ring = NULL;
    ring_start = ring_count = 0;
}

static void ring_push(const char *line, size_t len) {
    if (ring_cap == 0)
        return;
    if (!ring && !(ring = calloc(ring_cap, sizeof(*ring))))
        return;
    char *copy = malloc(len + 1);
    if (!copy)
        return;
    memcpy(copy, line, len + 1);
    if (ring_count == ring_cap) {
        free(ring[ring_start]);
        ring[ring_start] = copy;
        ring_start = (ring_start + 1) % ring_cap;
    } else {
        ring[(ring_start + ring_count++) % ring_cap] = copy;
    }
}

/* --- the writer thread -----------------------------------------------------
 *
 * The loop never writes to the output itself: a reader of stdout that stops
 * reading would stop every collector with it. Whole lines go into a bounded
 * queue; one writer thread (all signals blocked, so handlers stay on the
 * loop's thread) takes the queue whole and writes it with blocking write(2),
 * finishing partial writes, so lines are never torn or interleaved. A line
 * that does not fit in the queue is dropped and counted. The queue and the
 * buffer being written are each at most queue_limit bytes.
 *
 * The output is our own dup() of the stream's descriptor, so the caller may
 * close its FILE at once; a descriptor the writer is still writing to is
 * closed by the writer when that write returns. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work; /* the writer: the queue has lines */
static pthread_cond_t idle; /* flushers: a write ended */
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int started;         /* 1 running, -1 could not start: write inline */
static char *queue, *spare; /* lines waiting; the writer's other buffer */
static size_t queue_len, queue_cap, spare_cap;
static size_t queue_limit = SL_LOG_QUEUE_DEFAULT;
static int out_fd = -1;     /* owned dup of the output; -1: fd 1, borrowed */
static int writing_fd = -2; /* the fd a write in progress uses, else -2 */
static int retired_fd = -1; /* replaced while being written: writer closes */
static unsigned long long dropped_lines, dropped_bytes;

static void init_conds(void) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&work, &a);
    pthread_cond_init(&idle, &a);
    pthread_condattr_destroy(&a);
}

static size_t count_lines(const char *p, size_t n) {
    size_t lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += p[i] == '\n';
    return lines;
}

/* Writes all of p to fd, waiting as long as it takes (that is this thread's
 * job). A broken output (EPIPE, EBADF, ...) drops the rest, counted. */
static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            poll(&pfd, 1, -1);
        } else {
            pthread_mutex_lock(&mu);
            dropped_lines += count_lines(p, n);
            dropped_bytes += n;
            pthread_mutex_unlock(&mu);
            return;
        }
    }
}

static void *writer_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (queue_len == 0)
            pthread_cond_wait(&work, &mu);
        char *p = queue;
        size_t n = queue_len, cap = queue_cap;
        queue = spare;
        queue_cap = spare_cap;
        queue_len = 0;
        spare = p;
        spare_cap = cap;
        int fd = writing_fd = out_fd >= 0 ? out_fd : STDOUT_FILENO;
        pthread_mutex_unlock(&mu);
        write_all(fd, p, n);
        pthread_mutex_lock(&mu);
        writing_fd = -2;
        if (retired_fd >= 0) {
            close(retired_fd);
            retired_fd = -1;
        }
        pthread_cond_broadcast(&idle);
    }
    return NULL;
}

static void flush_at_exit(void) { sl_log_flush(SL_LOG_EXIT_FLUSH_SECONDS); }

/* Called with mu held, on the first line. */
static void start_writer(void) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t t;
    started = pthread_create(&t, NULL, writer_main, NULL) == 0 ? 1 : -1;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (started > 0) {
        pthread_detach(t);
        atexit(flush_at_exit);
    }
}

static void enqueue(const char *p, size_t n) {
    pthread_once(&once, init_conds);
    pthread_mutex_lock(&mu);
    if (!started)
        start_writer();
    if (started < 0) { /* no thread: the old way, blocking */
        int fd = out_fd >= 0 ? out_fd : STDOUT_FILENO;
        pthread_mutex_unlock(&mu);
        write_all(fd, p, n);
        return;
    }
    if (queue_len + n > queue_limit) {
        dropped_lines++;
        dropped_bytes += n;
        pthread_mutex_unlock(&mu);
        return;
    }
    if (queue_len + n > queue_cap) {
        size_t cap = queue_cap ? queue_cap * 2 : 4096;
        while (cap < queue_len + n)
            cap *= 2;
        if (cap > queue_limit)
            cap = queue_limit;
        char *q = realloc(queue, cap);
        if (!q) {
            dropped_lines++;
            dropped_bytes += n;
            pthread_mutex_unlock(&mu);
            return;
        }
        queue = q;
        queue_cap = cap;
    }
    memcpy(queue + queue_len, p, n);
    queue_len += n;
    pthread_cond_signal(&work);
    pthread_mutex_unlock(&mu);
}

int sl_log_flush(double timeout) {
    pthread_once(&once, init_conds);
    struct timespec end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    double t = (double)end.tv_sec + (double)end.tv_nsec / 1e9 + timeout;
    end.tv_sec = (time_t)t;
    end.tv_nsec = (long)((t - (double)end.tv_sec) * 1e9);
    int rc = 0;
    pthread_mutex_lock(&mu);
    while (queue_len > 0 || writing_fd != -2) {
        if (pthread_cond_timedwait(&idle, &mu, &end) == ETIMEDOUT) {
            rc = -1;
            break;
        }
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

void sl_log_set_output(FILE *out) {
    /* lines already queued go to the old output if it takes them soon */
    sl_log_flush(SL_LOG_SWITCH_FLUSH_SECONDS);
    int fd = out && out != stdout ? dup(fileno(out)) : -1;
    pthread_mutex_lock(&mu);
    int old = out_fd;
    out_fd = fd;
    if (old >= 0) {
        if (old == writing_fd)
            retired_fd = old;
        else
            close(old);
    }
    pthread_mutex_unlock(&mu);
}

void sl_log_set_queue_limit(size_t bytes) {
    pthread_mutex_lock(&mu);
    queue_limit = bytes;
    pthread_mutex_unlock(&mu);
}

void sl_log_dropped(unsigned long long *lines, unsigned long long *bytes) {
    pthread_mutex_lock(&mu);
    *lines = dropped_lines;
    *bytes = dropped_bytes;
    pthread_mutex_unlock(&mu);
}

/* --- configuration and writing ------------------------------------------ */
int sl_log_level_parse(const char *name) {
    for (int i = 0; i <= SL_LOG_NONE; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    if (strcmp(name, "warn") == 0)
        return SL_LOG_WARNING;
    return -1;
}

const char *sl_log_level_name(sl_log_level level) { return level_names[level]; }

void sl_log_set_level(sl_log_level level) { sl_log_current_level = level; }
sl_log_level sl_log_get_level(void) { return sl_log_current_level; }
void sl_log_set_format(sl_log_format format) { current_format = format; }
sl_log_format sl_log_get_format(void) { return current_format; }

sl_log_format sl_log_default_format(FILE *out) {
    return isatty(fileno(out)) ? SL_LOG_CONSOLE : SL_LOG_JSON;
}

double sl_log_clock(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

size_t sl_log_format_json(char *dst, size_t size, sl_log_level level,
                          double wall, const char *msg,
                          const sl_log_field *fields, size_t nfields) {
    buf b;
    buf_init(&b);
    build_json(&b, level, wall, msg, fields, nfields);
    if (size) {
        size_t n = b.len < size - 1 ? b.len : size - 1;
        memcpy(dst, b.p, n);
        dst[n] = '\0';
    }
    size_t len = b.len;
    buf_free(&b);
    return len;
}

/* --- secrets no line may show (sl_log_redact): copies owned here until
 * sl_log_redact_free, longest first so a secret containing another is
 * replaced whole. Touched on the loop thread only, like sl_log_write. */
#define MAX_SECRETS 256
static char *secrets[MAX_SECRETS];
static size_t secret_lens[MAX_SECRETS];
static size_t nsecrets;

int sl_log_redact(const char *s, size_t len) {
    if (len < SL_LOG_REDACT_MIN)
        return 0;
    for (size_t i = 0; i < nsecrets; i++)
        if (secret_lens[i] == len && memcmp(secrets[i], s, len) == 0)
            return 0;
    if (nsecrets == MAX_SECRETS)
        return -1;
    char *copy = malloc(len);
    if (!copy)
        return -1;
    memcpy(copy, s, len);
    size_t at = nsecrets++;
    while (at > 0 && secret_lens[at - 1] < len) {
        secrets[at] = secrets[at - 1];
        secret_lens[at] = secret_lens[at - 1];
        at--;
    }
    secrets[at] = copy;
    secret_lens[at] = len;
    return 0;
}

void sl_log_redact_free(void) {
    for (size_t i = 0; i < nsecrets; i++)
        free(secrets[i]);
    nsecrets = 0;
}

static const char *find(const char *hay, size_t n, const char *needle,
                        size_t m) {
    for (size_t i = 0; i + m <= n; i++)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, m) == 0)
            return hay + i;
    return NULL;
}

/* Replaces every known secret in b by "<redacted>". */
static void scrub(buf *b) {
    static const char mark[] = "<redacted>";
    for (size_t k = 0; k < nsecrets; k++) {
        const char *hit = find(b->p, b->len, secrets[k], secret_lens[k]);
        if (!hit)
            continue;
        buf out;
        buf_init(&out);
        size_t from = 0;
        while (hit) {
            size_t at = (size_t)(hit - b->p);
            buf_add(&out, b->p + from, at - from);
            buf_add(&out, mark, sizeof(mark) - 1);
            from = at + secret_lens[k];
            hit = find(b->p + from, b->len - from, secrets[k], secret_lens[k]);
        }
        buf_add(&out, b->p + from, b->len - from);
        buf_free(b);
        if (out.p == out.stack) { /* the copy lives on this frame: move it */
            buf_init(b);
            buf_add(b, out.p, out.len);
        } else {
            *b = out;
        }
    }
}

void sl_log_write(sl_log_level level, double wall, const char *msg,
                  const sl_log_field *fields, size_t nfields) {
    if (!sl_log_enabled(level))
        return;
    buf b;
    buf_init(&b);
    build_json(&b, level, wall, msg, fields, nfields);
    scrub(&b);
    ring_push(b.p, b.len);
    if (current_format == SL_LOG_CONSOLE) {
        b.len = 0;
        build_console(&b, level, wall, msg, fields, nfields);
        scrub(&b);
    }
    buf_add(&b, "\n", 1);
    enqueue(b.p, b.len);
    buf_free(&b);
}

void sl_logf(sl_log_level level, const char *fmt, ...) {
    if (!sl_log_enabled(level))
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sl_log_write(level, sl_log_clock(), msg, NULL, 0);
}
