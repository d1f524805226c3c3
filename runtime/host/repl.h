/* repl.h -- the REPL front ends: `sluice repl` and `sluice run -i`
 *
 * `sluice repl` is a client of the control socket (repl_server.h): it reads
 * lines with libedit (history in ~/.sluice_history), sends each chunk and
 * prints the reply. It runs no event loop and no runtime.
 *
 * `sluice run -i` puts the same prompt on the terminal inside the running
 * process: stdin is read from a libevent event (libedit's callback
 * interface on a terminal, plain lines otherwise), and each chunk is
 * evaluated as a task through a local session (repl_server.h). It holds a loop
 * reference while attached, so the process stays up after its script has
 * finished; end of input (Ctrl-D) begins a graceful shutdown, and a
 * shutdown for any other reason detaches it.
 */
#ifndef SLUICE_REPL_H
#define SLUICE_REPL_H

#include <stddef.h>

/* `sluice repl --help`. */
extern const char sl_repl_usage[];

/* The `sluice repl [PATH] [-e CHUNK]` command (argv[1] is "repl").
 * Returns the exit code: 0; 1 when -e failed or the process went away;
 * 2 for bad usage or when the socket cannot be reached. */
int sl_repl_main(int argc, char **argv);

/* `run -i`: attaches the terminal, after sl_runtime_init. The terminal is
 * restored by sl_runtime_close. Returns 0, or -1 with a message in err. */
int sl_repl_interactive(char *err, size_t errlen);

#endif
