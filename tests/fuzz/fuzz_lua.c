/* fuzz_lua.c -- libFuzzer harness running a Lua driver inside the sluice
 * runtime
 *
 * One binary per driver: FUZZ_DRIVER names the module (tests/fuzz/drivers/
 * fuzz_<name>.lua, found through FUZZ_DRIVER_DIR, the --lua-path of this
 * process). LLVMFuzzerInitialize creates the runtime once and requires the
 * driver, which returns a function of the input bytes. Each input runs that
 * function as a task (so handlers may wait) and turns the loop without
 * blocking until the task is done. The driver raises when an invariant
 * breaks; that, an unfinished task, or a sanitizer report is a finding and
 * aborts. Linked with -fsanitize=fuzzer (clang) or with replay.c (ctest).
 */
#include <event2/event.h>
#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "host/runtime.h"
#include "host/task.h"

#ifndef FUZZ_DRIVER
#error "FUZZ_DRIVER must name the driver (config, store, admin)"
#endif
#ifndef FUZZ_DRIVER_DIR
#error "FUZZ_DRIVER_DIR must be the directory of the drivers"
#endif

/* Turns of the loop an input may take before it counts as a hang. */
#define MAX_TURNS 100000

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int driver_ref = LUA_NOREF;

#ifdef FUZZ_LIBFUZZER
/* Lua line coverage for libFuzzer, which sees only the instrumented C: a
 * line hook counts (source, previous line, line) in a section libFuzzer
 * reads as extra coverage counters, so a mutation that reaches a new
 * branch of the Lua code under test is kept. The JIT is off: LuaJIT calls
 * no hooks from compiled traces. */
#define NCOUNTERS 65536
__attribute__((section(
    "__libfuzzer_extra_counters"))) static uint8_t lua_counters[NCOUNTERS];
static uintptr_t prev_line;

static void line_hook(lua_State *L, lua_Debug *ar) {
    if (!lua_getinfo(L, "S", ar))
        return;
    uintptr_t here = ((uintptr_t)ar->source * 31u) ^
                     ((uintptr_t)ar->currentline * 2654435761u);
    size_t i = (size_t)((here ^ (prev_line >> 1)) % NCOUNTERS);
    prev_line = here;
    if (lua_counters[i] < 255)
        lua_counters[i]++;
}

static void cover_lua(lua_State *L) {
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    lua_sethook(L, line_hook, LUA_MASKLINE, 0);
}
#else
static void cover_lua(lua_State *L) { (void)L; }
#endif

/* Runs the driver under xpcall and writes the error with its traceback to
 * stderr before re-raising: the task's own report goes through the log
 * thread, which an abort would cut short. */
static const char wrapper[] =
    "local driver = ...\n"
    "return function(input)\n"
    "  local ok, err = xpcall(driver, function(e)\n"
    "    return debug.traceback(tostring(e), 2)\n"
    "  end, input)\n"
    "  if not ok then\n"
    "    io.stderr:write('fuzz finding: ', err, '\\n')\n"
    "    io.stderr:flush()\n"
    "    error(err, 0)\n"
    "  end\n"
    "end\n";

static void die(const char *what, const char *msg) {
    fprintf(stderr, "fuzz_%s: %s: %s\n", FUZZ_DRIVER, what, msg ? msg : "?");
    abort();
}

/* FUZZ_LUACOV=1 (replay builds): the lines of lua/sluice/ run by the
 * inputs, counted per file and printed at exit -- the coverage figure of
 * tests/fuzz/README.md. Recorded in a registry table {source = {line}}. */
static int luacov_ref = LUA_NOREF;

static void luacov_hook(lua_State *L, lua_Debug *ar) {
    if (!lua_getinfo(L, "S", ar) ||
        strncmp(ar->source, "@lua/sluice/", 12) != 0)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, luacov_ref);
    lua_getfield(L, -1, ar->source);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, ar->source);
    }
    lua_pushboolean(L, 1);
    lua_rawseti(L, -2, ar->currentline);
    lua_pop(L, 2);
}

static void luacov_report(void) {
    lua_State *L = sl_rt.L;
    if (luacov_ref == LUA_NOREF || !L)
        return;
    lua_sethook(L, NULL, 0, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, luacov_ref);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        int n = 0;
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            n++;
            lua_pop(L, 1);
        }
        printf("luacov %s: %d lines run\n", lua_tostring(L, -2) + 1, n);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* At exit, before LeakSanitizer's check (registered earlier, so run later):
 * what the Lua state owns is freed through its __gc metamethods. */
static void close_runtime(void) {
    luacov_report();
    sl_runtime_close();
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *dirs[] = {FUZZ_DRIVER_DIR};
    char err[256];
    /* the drivers check what they need; log lines would only slow them */
    sl_log_set_level(SL_LOG_NONE);
    if (sl_runtime_init(dirs, 1, err, sizeof(err)) != 0)
        die("init", err);
    lua_State *L = sl_rt.L;
    if (luaL_loadbuffer(L, wrapper, sizeof(wrapper) - 1, "=fuzz_wrapper") != 0)
        die("wrapper", lua_tostring(L, -1));
    lua_getglobal(L, "require");
    lua_pushstring(L, "fuzz_" FUZZ_DRIVER);
    if (lua_pcall(L, 1, 1, 0) != 0)
        die("require", lua_tostring(L, -1));
    if (lua_pcall(L, 1, 1, 0) != 0)
        die("wrapper", lua_tostring(L, -1));
    driver_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (getenv("FUZZ_LUACOV")) {
        lua_newtable(L);
        luacov_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
        lua_sethook(L, luacov_hook, LUA_MASKLINE, 0);
    } else {
        cover_lua(L);
    }
    atexit(close_runtime);
    return 0;
}

static void on_done(sl_task *t, int ok, void *privdata) {
    (void)t;
    *(int *)privdata = ok ? 1 : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lua_State *L = sl_rt.L;
    int done = 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, driver_ref);
    lua_pushlstring(L, (const char *)data, size);
    sl_task *t = sl_task_spawn(L, 1);
    t->on_done = on_done;
    t->on_done_data = &done;
    lua_pop(L, 1);
    for (int turn = 0; !done && turn < MAX_TURNS; turn++)
        event_base_loop(sl_rt.base, EVLOOP_NONBLOCK | EVLOOP_ONCE);
    if (done == 0)
        die("hang", "the driver did not finish");
    if (done < 0)
        die("finding", "the driver raised (see above)");
    return 0;
}
