/*
** host/main.c: the `host` command line, shaped after Lua's own lua.c.
** It parses options, sets up one universe with every host library
** preloaded, runs the script (or -e chunks, stdin, the prompt) under
** lua_pcall, reports uncaught errors with a traceback, and turns Ctrl-C
** into an "interrupted!" error inside the running script.
** It uses only the public Lua API and bindings/host.h.
*/
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "host.h"

#define PROGNAME "host"
#define PROMPT "> "
#define PROMPT2 ">> "
#define LINE_MAX_INPUT 4096

/*
** The state the SIGINT handler interrupts. The program owns one universe,
** so this static belongs to the program, not to the bindings.
*/
static lua_State *interrupt_target = NULL;
static const char *progname = PROGNAME;

/* Prints the usage text, host's own options included. */
static void print_usage(FILE *out) {
  fprintf(out,
    "usage: %s [options] [script [args]]\n"
    "Available options are:\n"
    "  -e stat   execute string 'stat'\n"
    "  -i        enter interactive mode after executing 'script'\n"
    "  -l mod    require library 'mod' into global 'mod'\n"
    "  -l g=mod  require library 'mod' into global 'g'\n"
    "  -v        show version information\n"
    "  -E        ignore environment variables\n"
    "  -W        turn warnings on\n"
    "  --switch-interval=S       preempt threads every S seconds (default 0.005)\n"
    "  --switch-instructions=N   preempt threads every ~N VM instructions,\n"
    "                            jittered (for exposing races; ~2x slower)\n"
    "  --dump-tracebacks-after=S print every thread's traceback once after S\n"
    "                            seconds (Ctrl-\\ / SIGQUIT prints it any time)\n"
    "  --help    show this help and exit\n"
    "  --        stop handling options\n"
    "  -         stop handling options and execute stdin\n",
    progname);
  fflush(out);
}

/* Prints a message (and the program name) to stderr. */
static void report_message(const char *pname, const char *msg) {
  if (pname) fprintf(stderr, "%s: ", pname);
  fprintf(stderr, "%s\n", msg);
  fflush(stderr);
}

/* Reports a failed status: the error value on top of the stack is printed. */
static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    report_message(progname, host_error_tostring(L));
    lua_pop(L, 1);
  }
  return status;
}

/* SIGQUIT: every thread's traceback on stderr (the program goes on). */
static lua_State *dump_target = NULL;
static void on_sigquit(int sig) {
  (void)sig;
  if (dump_target) host_dump_request(dump_target);
}

/* SIGINT: restore the default action (a second Ctrl-C kills) and interrupt. */
static void on_sigint(int sig) {
  signal(sig, SIG_DFL);
  if (interrupt_target) host_interrupt(interrupt_target);
}

/*
** Message handler of the program: strings and error objects get a
** traceback; other values are converted with __tostring or named by type.
*/
static int program_msghandler(lua_State *L) {
  if (!lua_isstring(L, 1) && !host_error_is(L, 1, NULL)) {
    lua_settop(L, 1);
    host_error_tostring(L);
    luaL_traceback(L, L, lua_tostring(L, -1), 1);
    return 1;
  }
  return host_msghandler(L);
}

/* Calls the function under the values on the stack, with Ctrl-C armed. */
static int docall(lua_State *L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, program_msghandler);
  lua_insert(L, base);
  interrupt_target = L;
  signal(SIGINT, on_sigint);
  int status = lua_pcall(L, nargs, nresults, base);
  signal(SIGINT, SIG_DFL);
  lua_remove(L, base);
  return status;
}

static void print_version(void) {
  printf("%s (host)\n", LUA_COPYRIGHT);
  fflush(stdout);
}

/*
** Builds the global `arg`: the script at 0, its arguments at 1.., and the
** interpreter and options before it at negative indices, as lua.c does.
*/
static void create_arg_table(lua_State *L, char **argv, int argc, int script) {
  if (script == argc) script = 0;  /* no script: the interpreter sits at 0 */
  lua_createtable(L, argc - script - 1, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static int dochunk(lua_State *L, int status) {
  if (status == LUA_OK) status = docall(L, 0, 0);
  return report(L, status);
}

static int dostring(lua_State *L, const char *s, const char *name) {
  return dochunk(L, luaL_loadbuffer(L, s, strlen(s), name));
}

/* -l: `mod` into global `mod`, or `g=mod` into global `g`. */
static int dolibrary(lua_State *L, char *spec) {
  char *eq = strchr(spec, '=');
  const char *global = spec, *module = spec;
  if (eq) {
    *eq = '\0';
    module = eq + 1;
  }
  lua_getglobal(L, "require");
  lua_pushstring(L, module);
  int status = docall(L, 1, 1);
  if (status == LUA_OK) lua_setglobal(L, global);
  if (eq) *eq = '=';
  return report(L, status);
}

/*
** Pushes the script's arguments (arg[1] to #arg, which -e or LUA_INIT may
** have changed) and returns their count. A negative length means none; a
** length past the stack's limit is an error (lua.c casts it to int, and
** a __len of 2^31 + 1 then corrupts its stack).
*/
static int push_script_args(lua_State *L) {
  if (lua_getglobal(L, "arg") != LUA_TTABLE)
    luaL_error(L, "'arg' is not a table");
  lua_Integer len = luaL_len(L, -1);
  int n = len < 0 ? 0 : len > INT_MAX - 3 ? INT_MAX - 3 : (int)len;
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (int i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -n - 1);
  return n;
}

/* Runs the script at argv[0] ("-" and NULL read stdin) with its arguments. */
static int handle_script(lua_State *L, char **argv) {
  const char *fname = argv[0];
  if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0) fname = NULL;
  int status = luaL_loadfile(L, fname);
  if (status == LUA_OK) {
    int n = push_script_args(L);
    status = docall(L, n, LUA_MULTRET);
  }
  return report(L, status);
}

/* What the command line asked for, besides the ordered -e/-l items. */
enum {
  HAS_ERROR = 1,
  HAS_I = 2,
  HAS_V = 4,
  HAS_E = 8,
  HAS_EXEC = 16,
  HAS_HELP = 32
};

/*
** Scans the options. Returns the flags and sets *first to the index of the
** script (argc when there is none). A bad option sets HAS_ERROR and *first
** to the offending index.
*/
static int collect_args(char **argv, int *first) {
  int flags = 0;
  int i;
  for (i = 1; argv[i] != NULL; i++) {
    *first = i;
    if (argv[i][0] != '-') return flags;  /* the script */
    if (strncmp(argv[i], "--switch-", 9) == 0) continue;  /* host's own */
    if (strncmp(argv[i], "--dump-tracebacks-after=", 24) == 0) continue;
    if (strcmp(argv[i], "--help") == 0) return flags | HAS_HELP;
    switch (argv[i][1]) {
      case '-':
        if (argv[i][2] != '\0') return flags | HAS_ERROR;
        *first = argv[i + 1] != NULL ? i + 1 : 0;
        return flags;
      case '\0':
        return flags;  /* "-": the script is stdin */
      case 'E':
        if (argv[i][2] != '\0') return flags | HAS_ERROR;
        flags |= HAS_E;
        break;
      case 'W':
        if (argv[i][2] != '\0') return flags | HAS_ERROR;
        break;
      case 'i':  /* -i implies -v */
        flags |= HAS_I;
        /* fall through */
      case 'v':
        if (argv[i][2] != '\0') return flags | HAS_ERROR;
        flags |= HAS_V;
        break;
      case 'e':
        flags |= HAS_EXEC;
        /* fall through */
      case 'l':
        if (argv[i][2] == '\0') {
          i++;
          if (argv[i] == NULL || argv[i][0] == '-') return flags | HAS_ERROR;
        }
        break;
      default:
        return flags | HAS_ERROR;
    }
  }
  *first = 0;
  return flags;
}

/*
** Applies host's own --switch-* options to the universe. Returns false
** (after reporting) when one is malformed or out of the range that
** thread.setswitchinterval accepts: (0, 3600] seconds, [1, 1e9]
** instructions. Nothing is clamped: a value outside the range is a typo
** more often than a wish for the nearest bound.
*/
static bool apply_switch_options(lua_State *L, char **argv, int script) {
  int last = script > 0 ? script : 1 << 30;
  for (int i = 1; argv[i] != NULL && i < last; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) break;
    if (a[0] == '-' && (a[1] == 'e' || a[1] == 'l') && a[2] == '\0') {
      i++;
      continue;
    }
    char *end;
    if (strncmp(a, "--switch-interval=", 18) == 0) {
      const char *v = a + 18;
      double s = strtod(v, &end);
      if (*end != '\0' || end == v || !(s > 0 && s <= 3600)) {  /* NaN too */
        fprintf(stderr, "%s: --switch-interval must be a number of seconds in "
                "(0, 3600], not '%s'\n", progname, v);
        return false;
      }
      host_set_switch_interval(L, s);
    } else if (strncmp(a, "--switch-instructions=", 22) == 0) {
      const char *v = a + 22;
      errno = 0;
      long long n = strtoll(v, &end, 10);
      if (*end != '\0' || end == v || errno == ERANGE || n < 1 || n > 1000000000) {
        fprintf(stderr, "%s: --switch-instructions must be an integer in "
                "[1, 1000000000], not '%s'\n", progname, v);
        return false;
      }
      host_set_switch_instructions(L, (int)n);
    } else if (strncmp(a, "--dump-tracebacks-after=", 24) == 0) {
      const char *v = a + 24;
      double s = strtod(v, &end);
      if (*end != '\0' || end == v || !(s >= 0 && s <= 1e9)) {
        fprintf(stderr, "%s: --dump-tracebacks-after must be a number of seconds in "
                "[0, 1e9], not '%s'\n", progname, v);
        return false;
      }
      host_dump_later(L, s);
    } else if (strncmp(a, "--switch-", 9) == 0) {
      fprintf(stderr, "%s: unrecognized option '%s'\n", progname, a);
      print_usage(stderr);
      return false;
    }
  }
  return true;
}

/* Runs the -e and -l options in order; also -W. */
static bool run_args(lua_State *L, char **argv, int script) {
  int last = script > 0 ? script : 1 << 30;
  for (int i = 1; argv[i] != NULL && i < last; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || strcmp(a, "--") == 0) break;
    switch (a[1]) {
      case 'e':
      case 'l': {
        char *extra = a[2] != '\0' ? argv[i] + 2 : argv[++i];
        int status = a[1] == 'e' ? dostring(L, extra, "=(command line)")
                                 : dolibrary(L, extra);
        if (status != LUA_OK) return false;
        break;
      }
      case 'W':
        lua_warning(L, "@on", 0);
        break;
    }
  }
  return true;
}

/* LUA_INIT_5_4 or LUA_INIT: "@file" runs a file, anything else is a chunk. */
static int handle_luainit(lua_State *L) {
  const char *name = "=LUA_INIT_5_4";
  const char *init = getenv(name + 1);
  if (init == NULL) {
    name = "=LUA_INIT";
    init = getenv(name + 1);
  }
  if (init == NULL) return LUA_OK;
  if (init[0] == '@') return dochunk(L, luaL_loadfile(L, init + 1));
  return dostring(L, init, name);
}

/* ---- the interactive prompt ---- */

/* Reads one line with a prompt; false at end of input. */
static bool read_line(lua_State *L, bool first) {
  char buffer[LINE_MAX_INPUT];
  fputs(first ? PROMPT : PROMPT2, stdout);
  fflush(stdout);
  if (fgets(buffer, sizeof buffer, stdin) == NULL) return false;
  size_t len = strlen(buffer);
  if (len > 0 && buffer[len - 1] == '\n') buffer[--len] = '\0';
  lua_pushlstring(L, buffer, len);
  return true;
}

/* True when the load error on the stack means "the chunk is unfinished". */
static bool incomplete(lua_State *L, int status) {
  if (status != LUA_ERRSYNTAX) return false;
  size_t lmsg;
  const char *msg = lua_tolstring(L, -1, &lmsg);
  static const char eof_mark[] = "<eof>";
  size_t lmark = sizeof eof_mark - 1;
  if (lmsg >= lmark && strcmp(msg + lmsg - lmark, eof_mark) == 0) {
    lua_pop(L, 1);
    return true;
  }
  return false;
}

/*
** Compiles the line on the stack, first as "return <line>" so an expression
** prints its value, then as a statement, reading more lines while the
** chunk is unfinished. Leaves the function (or error) on the stack.
*/
static int load_line(lua_State *L) {
  const char *line = lua_tostring(L, -1);
  const char *retline = lua_pushfstring(L, "return %s", line);
  int status = luaL_loadbuffer(L, retline, strlen(retline), "=stdin");
  if (status == LUA_OK) {
    lua_remove(L, -2);  /* the "return" text */
    lua_remove(L, -2);  /* the line */
    return status;
  }
  lua_pop(L, 2);  /* error and "return" text */
  for (;;) {
    size_t len;
    const char *chunk = lua_tolstring(L, -1, &len);
    status = luaL_loadbuffer(L, chunk, len, "=stdin");
    if (!incomplete(L, status)) break;
    if (!read_line(L, false)) {
      lua_pushliteral(L, "unexpected end of input");
      status = LUA_ERRSYNTAX;
      break;
    }
    lua_pushliteral(L, "\n");
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
  lua_remove(L, -2);  /* the source text */
  return status;
}

/*
** Prints every value left on the stack, with `print`; an error of print
** is named like any error (lua.c prints "(null)" for a non-string one).
*/
static void print_results(lua_State *L) {
  int n = lua_gettop(L);
  if (n == 0) return;
  luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
  lua_getglobal(L, "print");
  lua_insert(L, 1);
  if (lua_pcall(L, n, 0, 0) != LUA_OK)
    report_message(progname, lua_pushfstring(L, "error calling 'print' (%s)",
                                             host_error_tostring(L)));
}

/* The read-eval-print loop. */
static void do_repl(lua_State *L) {
  const char *saved = progname;
  progname = NULL;
  for (;;) {
    lua_settop(L, 0);
    if (!read_line(L, true)) break;
    int status = load_line(L);
    if (status == LUA_OK) status = docall(L, 0, LUA_MULTRET);
    if (status == LUA_OK) print_results(L);
    else report(L, status);
  }
  lua_settop(L, 0);
  fputc('\n', stdout);
  fflush(stdout);
  progname = saved;
}

/* ---- main ---- */

/* Everything main does with the state, run under lua_pcall as lua.c does. */
static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = (char **)lua_touserdata(L, 2);
  int script = 0;
  int flags = collect_args(argv, &script);
  if (flags & HAS_ERROR) {
    const char *bad = argv[script];
    if (bad[1] == 'e' || bad[1] == 'l')
      fprintf(stderr, "%s: '%s' needs argument\n", progname, bad);
    else
      fprintf(stderr, "%s: unrecognized option '%s'\n", progname, bad);
    print_usage(stderr);
    return 0;
  }
  if (flags & HAS_HELP) {
    print_usage(stdout);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (flags & HAS_V) print_version();
  if (flags & HAS_E) {
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  }
  luaL_openlibs(L);
  host_openlibs(L);
  create_arg_table(L, argv, argc, script > 0 ? script : argc);
  lua_gc(L, LUA_GCGEN, 0, 0);
  if (!apply_switch_options(L, argv, script)) return 0;
  if (!(flags & HAS_E) && handle_luainit(L) != LUA_OK) return 0;
  if (!run_args(L, argv, script)) return 0;
  if (script > 0 && handle_script(L, argv + script) != LUA_OK) return 0;
  if (flags & HAS_I) {
    do_repl(L);
  } else if (script == 0 && !(flags & (HAS_EXEC | HAS_V))) {
    if (isatty(STDIN_FILENO)) {
      print_version();
      do_repl(L);
    } else {
      if (dochunk(L, luaL_loadfile(L, NULL)) != LUA_OK) return 0;
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L = host_newstate();
  if (L == NULL) {
    report_message(progname, "cannot create state: not enough memory");
    return EXIT_FAILURE;
  }
  if (host_dump_watch(L) == 0) {
    dump_target = L;
    signal(SIGQUIT, on_sigquit);
  }
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  int status = lua_pcall(L, 2, 1, 0);
  int ok = lua_toboolean(L, -1);
  report(L, status);
  interrupt_target = L;  /* Ctrl-C at exit says which threads hold it up */
  signal(SIGINT, on_sigint);
  int threads_ok = host_close(L);
  signal(SIGINT, SIG_DFL);
  signal(SIGQUIT, SIG_DFL);
  return (ok && status == LUA_OK && threads_ok) ? EXIT_SUCCESS : EXIT_FAILURE;
}
