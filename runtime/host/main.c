/* main.c -- the sluice command: run, test, version, help */
#include <curl/curl.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <luajit.h>
#include <lualib.h>
#include <sqlite3.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/log.h"
#include "repl.h"
#include "repl_server.h"
#include "runtime.h"
#include "task.h"

/* Exit codes, documented in the README and in `sluice --help`. */
enum {
    EXIT_OK = 0,    /* success, or graceful shutdown */
    EXIT_ERROR = 1, /* the script failed, or tests failed */
    EXIT_USAGE = 2, /* bad command line, missing file */
};

static const char *usage_main =
    "usage: sluice <command> [options]\n"
    "\n"
    "commands:\n"
    "  run FILE.lua [options] [-- args]  run FILE as the main task\n"
    "  test [busted options] PATH...     run busted specs inside sluice\n"
    "  backfill CONFIG.lua COLLECTOR ... backfill history (see backfill "
    "--help)\n"
    "  sql CONFIG.lua --sink NAME SQL    query a sink's tables (see sql "
    "--help)\n"
    "  repl [SOCKET] [-e CHUNK]          attach to a running sluice's "
    "control socket\n"
    "  version                           print sluice's and its libraries' "
    "versions\n"
    "  help [COMMAND]                    show help\n"
    "\n"
    "exit codes: 0 success or graceful shutdown; 1 the script raised an "
    "error\n"
    "or tests failed; 2 bad usage or missing file; 128+N a second signal N\n"
    "forced an immediate exit.\n";

static const char *usage_run =
    "usage: sluice run FILE.lua [options] [-- script args]\n"
    "\n"
    "Runs FILE as the main task. The process exits when the main task and\n"
    "every task and timer it started are done, or on SIGINT/SIGTERM after a\n"
    "graceful shutdown. Script arguments are passed as ... and in `arg`.\n"
    "When FILE returns a table, it is a configuration: its collectors run\n"
    "until shutdown.\n"
    "\n"
    "options:\n"
    "  --lua-path DIR          look for Lua modules in DIR first "
    "(repeatable);\n"
    "                          a module there overrides the embedded one\n"
    "  --log-level LEVEL       trace, debug, info (default), warning, error,\n"
    "                          critical or none\n"
    "  --log-format FORMAT     json or console (default: console on a "
    "terminal,\n"
    "                          json otherwise)\n"
    "  --shutdown-timeout S    seconds running tasks get at shutdown "
    "(default 10)\n"
    "  --profile NAME          merge the configuration's profiles[NAME]\n"
    "  --control PATH          the control socket for sluice repl (default\n"
    "                          ./sluice.sock; none: no socket)\n"
    "  -i                      a REPL on the terminal while FILE runs; "
    "Ctrl-D\n"
    "                          shuts down\n";

static const char *usage_test =
    "usage: sluice test [sluice options] [busted options] PATH...\n"
    "\n"
    "Runs busted (Debian's lua-busted) inside sluice, so specs use the real\n"
    "native modules. The specs run in a task, so they may sleep and wait.\n"
    "sluice options (--lua-path, --log-level, --log-format) come first; the\n"
    "rest are busted's own (see busted --help). Logging is off (level none)\n"
    "unless --log-level is given.\n";

static const char *usage_backfill =
    "usage: sluice backfill CONFIG.lua COLLECTOR --from FROM [--to TO]\n"
    "                       [--symbols A,B] [--force] [--lookback S]\n"
    "                       [--parallel N] [--claim-ttl S] [--plan]\n"
    "                       [runtime options]\n"
    "\n"
    "Backfills one collector of a configuration, skipping windows already\n"
    "stored, and exits 0 when every window is done, 1 when some failed (run\n"
    "it again to retry them). --plan prints the plan and its estimate.\n"
    "FROM and TO are epoch seconds or 2024-01-31[T12:00:00] (UTC), or\n"
    "integers for a collector backfilling by blocks, slots or integers\n"
    "(its backfill_unit); windows are [FROM, TO). With redis in\n"
    "the configuration, windows are claimed in Redis for --claim-ttl\n"
    "seconds (30, renewed while fetched), so several instances can share\n"
    "one backfill.\n";

static const char *usage_version = "usage: sluice version\n\n"
                                   "Prints the versions of sluice, LuaJIT, "
                                   "libcurl, libevent, SQLite and hiredis.\n";

typedef struct options {
    const char *dirs[32];
    int ndirs;
    int log_level;
    int log_format;
    double shutdown_timeout;
    const char *profile;
} options;

static int fail_usage(const char *fmt, const char *arg) {
    fprintf(stderr, "sluice: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see sluice --help)\n");
    return EXIT_USAGE;
}

static int is_help(const char *a) {
    return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

/* Consumes the runtime option at argv[*i] if it is one. Returns 1 if it was,
 * 0 if not, -1 (after printing) if it was malformed. */
static int runtime_option(int argc, char **argv, int *i, options *o) {
    const char *a = argv[*i];
    const char *names[] = {"--lua-path", "--log-level", "--log-format",
                           "--shutdown-timeout", "--profile"};
    int which = -1;
    const char *val = NULL;
    for (int k = 0; k < 5; k++) {
        size_t len = strlen(names[k]);
        if (strncmp(a, names[k], len) == 0 &&
            (a[len] == '\0' || a[len] == '=')) {
            which = k;
            if (a[len] == '=')
                val = a + len + 1;
            break;
        }
    }
    if (which < 0)
        return 0;
    if (!val) {
        if (*i + 1 >= argc) {
            fail_usage("%s needs a value", names[which]);
            return -1;
        }
        val = argv[++*i];
    }
    struct stat st;
    char *end;
    switch (which) {
    case 0:
        if (stat(val, &st) != 0 || !S_ISDIR(st.st_mode)) {
            fail_usage("--lua-path %s: not a directory", val);
            return -1;
        }
        if (o->ndirs == (int)(sizeof(o->dirs) / sizeof(o->dirs[0]))) {
            fail_usage("too many --lua-path options%s", "");
            return -1;
        }
        o->dirs[o->ndirs++] = val;
        break;
    case 1:
        o->log_level = sl_log_level_parse(val);
        if (o->log_level < 0) {
            fail_usage("unknown --log-level '%s' (trace, debug, info, warning, "
                       "error, critical, none)",
                       val);
            return -1;
        }
        break;
    case 2:
        if (strcmp(val, "json") == 0)
            o->log_format = SL_LOG_JSON;
        else if (strcmp(val, "console") == 0)
            o->log_format = SL_LOG_CONSOLE;
        else {
            fail_usage("unknown --log-format '%s' (json, console)", val);
            return -1;
        }
        break;
    case 3:
        errno = 0;
        o->shutdown_timeout = strtod(val, &end);
        if (errno || *end || end == val || !(o->shutdown_timeout >= 0) ||
            !isfinite(o->shutdown_timeout)) {
            fail_usage("--shutdown-timeout '%s': expected seconds >= 0", val);
            return -1;
        }
        break;
    case 4:
        o->profile = val;
        break;
    }
    return 1;
}

static int start(const options *o) {
    char err[256];
    if (o->log_level >= 0)
        sl_log_set_level(o->log_level);
    sl_log_set_format(o->log_format >= 0 ? (sl_log_format)o->log_format
                                         : sl_log_default_format(stdout));
    if (o->shutdown_timeout >= 0)
        sl_rt.shutdown_timeout = o->shutdown_timeout;
    if (sl_runtime_init(o->dirs, o->ndirs, err, sizeof(err)) != 0) {
        fprintf(stderr, "sluice: %s\n", err);
        return -1;
    }
    return 0;
}

static void main_done(sl_task *t, int ok, void *privdata) {
    (void)t;
    (void)privdata;
    if (!ok) {
        sl_rt.exit_code = EXIT_ERROR;
        sl_shutdown();
    }
}

/* Sets the global `arg` as the standalone lua interpreter does: arg[0] is
 * the script, arg[1..] its arguments. */
static void set_arg(lua_State *L, const char *script, char **args, int n) {
    lua_createtable(L, n, 1);
    lua_pushstring(L, script);
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < n; i++) {
        lua_pushstring(L, args[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setglobal(L, "arg");
}

static int cmd_run(int argc, char **argv) {
    options o = {.log_level = -1, .log_format = -1, .shutdown_timeout = -1};
    const char *file = NULL, *control = "sluice.sock";
    int i, nargs = 0, interactive = 0, control_given = 0;
    char **args = NULL;
    for (i = 2; i < argc; i++) {
        if (is_help(argv[i])) {
            fputs(usage_run, stdout);
            return EXIT_OK;
        }
        if (strcmp(argv[i], "--") == 0) {
            args = argv + i + 1;
            nargs = argc - i - 1;
            break;
        }
        int r = runtime_option(argc, argv, &i, &o);
        if (r < 0)
            return EXIT_USAGE;
        if (r > 0)
            continue;
        if (strcmp(argv[i], "-i") == 0) {
            interactive = 1;
            continue;
        }
        if (strncmp(argv[i], "--control=", 10) == 0) {
            control = argv[i] + 10;
            control_given = 1;
            continue;
        }
        if (strcmp(argv[i], "--control") == 0) {
            if (++i >= argc)
                return fail_usage("%s needs a value", "--control");
            control = argv[i];
            control_given = 1;
            continue;
        }
        if (argv[i][0] == '-' && argv[i][1] != '\0')
            return fail_usage("run: unknown option '%s'", argv[i]);
        if (file)
            return fail_usage("run: unexpected argument '%s' (script "
                              "arguments go after --)",
                              argv[i]);
        file = argv[i];
    }
    if (!file)
        return fail_usage("run: missing FILE.lua%s", "");
    struct stat st;
    if (stat(file, &st) != 0)
        return fail_usage("run: %s: no such file", file);
    if (!S_ISREG(st.st_mode))
        return fail_usage("run: %s: not a regular file", file);

    if (start(&o) != 0)
        return EXIT_ERROR;
    char err[256];
    int serve = *control && strcmp(control, "none") != 0;
    if ((serve &&
         sl_repl_server_listen(control, control_given, err, sizeof(err))) ||
        (interactive && sl_repl_interactive(err, sizeof(err)) != 0)) {
        fprintf(stderr, "sluice: %s\n", err);
        sl_runtime_close();
        return EXIT_USAGE;
    }
    lua_State *L = sl_rt.L;
    set_arg(L, file, args, nargs);
    if (luaL_loadfile(L, file) != 0) {
        fprintf(stderr, "sluice: %s\n", lua_tostring(L, -1));
        sl_runtime_close();
        return EXIT_ERROR;
    }
    /* sluice.main(chunk, file, profile, args...) runs the chunk and, when
     * it returns a configuration, the collectors it lists. */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "sluice.main");
    if (lua_pcall(L, 1, 1, 0) != 0) {
        fprintf(stderr, "sluice: %s\n", lua_tostring(L, -1));
        sl_runtime_close();
        return EXIT_ERROR;
    }
    lua_insert(L, -2);
    lua_pushstring(L, file);
    if (o.profile)
        lua_pushstring(L, o.profile);
    else
        lua_pushnil(L);
    for (int k = 0; k < nargs; k++)
        lua_pushstring(L, args[k]);
    sl_task *t = sl_task_spawn(L, nargs + 3);
    t->on_done = main_done;
    lua_pop(L, 1);
    int code = sl_runtime_run();
    sl_runtime_close();
    return code;
}

/* sluice backfill CONFIG COLLECTOR [flags]: the runtime options are taken
 * here, everything else goes to sluice.backfill.cli, which owns the rest of
 * the command line (and says what is wrong with it). */
static int cmd_backfill(int argc, char **argv) {
    options o = {.log_level = -1, .log_format = -1, .shutdown_timeout = -1};
    const char *file = NULL;
    char **rest = calloc((size_t)argc, sizeof(char *));
    int nrest = 0;
    if (!rest)
        return EXIT_ERROR;
    for (int i = 2; i < argc; i++) {
        if (is_help(argv[i]) && !file) {
            fputs(usage_backfill, stdout);
            free(rest);
            return EXIT_OK;
        }
        int r = runtime_option(argc, argv, &i, &o);
        if (r < 0) {
            free(rest);
            return EXIT_USAGE;
        }
        if (r > 0)
            continue;
        if (!file && argv[i][0] != '-')
            file = argv[i];
        else
            rest[nrest++] = argv[i];
    }
    struct stat st;
    int code = EXIT_USAGE;
    if (!file)
        fail_usage("backfill: missing CONFIG.lua%s", "");
    else if (stat(file, &st) != 0 || !S_ISREG(st.st_mode))
        fail_usage("backfill: %s: no such file", file);
    else if (start(&o) != 0)
        code = EXIT_ERROR;
    else {
        lua_State *L = sl_rt.L;
        set_arg(L, file, rest, nrest);
        lua_getglobal(L, "require");
        lua_pushliteral(L, "sluice.backfill.cli");
        if (lua_pcall(L, 1, 1, 0) != 0 || luaL_loadfile(L, file) != 0) {
            fprintf(stderr, "sluice: %s\n", lua_tostring(L, -1));
            sl_runtime_close();
            free(rest);
            return EXIT_ERROR;
        }
        lua_getfield(L, -2, "cli");
        lua_insert(L, -2); /* cli, chunk */
        lua_pushstring(L, file);
        for (int k = 0; k < nrest; k++)
            lua_pushstring(L, rest[k]);
        sl_task *t = sl_task_spawn(L, nrest + 2);
        t->on_done = main_done;
        lua_settop(L, 0);
        code = sl_runtime_run();
        sl_runtime_close();
    }
    free(rest);
    return code;
}

/* The busted runner raises an error (rather than exiting) when specs fail
 * under Lua 5.1, so its failure becomes our exit code here. */
static const char test_main[] =
    "local ok, err = pcall(require('busted.runner'), { standalone = false })\n"
    "if not ok then\n"
    "  if err ~= nil then io.stderr:write(tostring(err), '\\n') end\n"
    "  os.exit(1)\n"
    "end\n";

static int cmd_test(int argc, char **argv) {
    options o = {.log_level = -1, .log_format = -1, .shutdown_timeout = -1};
    int i;
    for (i = 2; i < argc; i++) {
        if (is_help(argv[i]) && i == 2) {
            fputs(usage_test, stdout);
            return EXIT_OK;
        }
        int r = runtime_option(argc, argv, &i, &o);
        if (r < 0)
            return EXIT_USAGE;
        if (r == 0)
            break;
    }
    /* Specs provoke failures on purpose; their log lines would bury
     * busted's report. --log-level turns them back on. */
    if (o.log_level < 0)
        o.log_level = SL_LOG_NONE;
    if (start(&o) != 0)
        return EXIT_ERROR;
    lua_State *L = sl_rt.L;
    set_arg(L, "busted", argv + i, argc - i);
    if (luaL_loadbuffer(L, test_main, sizeof(test_main) - 1, "=[sluice test]"))
        return EXIT_ERROR;
    sl_task *t = sl_task_spawn(L, 0);
    t->on_done = main_done;
    lua_pop(L, 1);
    int code = sl_runtime_run();
    sl_runtime_close();
    return code;
}

/* sluice sql ...: sluice.sinks.sql_cli owns the whole command line. */
static const char sql_main[] = "require('sluice.sinks.sql_cli').cli(...)\n";

static int cmd_sql(int argc, char **argv) {
    options o = {
        .log_level = SL_LOG_NONE, .log_format = -1, .shutdown_timeout = -1};
    if (start(&o) != 0)
        return EXIT_ERROR;
    lua_State *L = sl_rt.L;
    if (luaL_loadbuffer(L, sql_main, sizeof(sql_main) - 1, "=[sluice sql]"))
        return EXIT_ERROR;
    for (int i = 2; i < argc; i++)
        lua_pushstring(L, argv[i]);
    sl_task *t = sl_task_spawn(L, argc - 2);
    t->on_done = main_done;
    lua_settop(L, 0);
    int code = sl_runtime_run();
    sl_runtime_close();
    return code;
}

static int cmd_version(int argc, char **argv) {
    if (argc > 2 && is_help(argv[2])) {
        fputs(usage_version, stdout);
        return EXIT_OK;
    }
    if (argc > 2)
        return fail_usage("version: unexpected argument '%s'", argv[2]);
    curl_version_info_data *curl = curl_version_info(CURLVERSION_NOW);
    printf("sluice %s\n", SLUICE_VERSION);
    printf("%s\n", LUAJIT_VERSION);
    printf("libcurl %s (%s)\n", curl->version,
           curl->ssl_version ? curl->ssl_version : "no TLS");
    printf("libevent %s\n", event_get_version());
    printf("SQLite %s\n", sqlite3_libversion());
    printf("hiredis %d.%d.%d\n", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
    return EXIT_OK;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(usage_main, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (is_help(cmd)) {
        fputs(usage_main, stdout);
        return EXIT_OK;
    }
    if (strcmp(cmd, "help") == 0) {
        const char *topic = argc > 2 ? argv[2] : "";
        fputs(strcmp(topic, "run") == 0        ? usage_run
              : strcmp(topic, "test") == 0     ? usage_test
              : strcmp(topic, "version") == 0  ? usage_version
              : strcmp(topic, "backfill") == 0 ? usage_backfill
              : strcmp(topic, "repl") == 0     ? sl_repl_usage
                                               : usage_main,
              stdout);
        return EXIT_OK;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0)
        return cmd_version(argc, argv);
    if (strcmp(cmd, "run") == 0)
        return cmd_run(argc, argv);
    if (strcmp(cmd, "test") == 0)
        return cmd_test(argc, argv);
    if (strcmp(cmd, "backfill") == 0)
        return cmd_backfill(argc, argv);
    if (strcmp(cmd, "sql") == 0)
        return cmd_sql(argc, argv);
    if (strcmp(cmd, "repl") == 0)
        return sl_repl_main(argc, argv);
    return fail_usage("unknown command '%s'", cmd);
}
