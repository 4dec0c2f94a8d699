/*
** host/main.c: the `host` command line, shaped after Lua's own lua.c.
** It parses options, sets up one universe with every host library
** preloaded, runs the script (or -e chunks, stdin, the prompt) under
** lua_pcall, reports uncaught errors with lua.c's message handler, and
** turns Ctrl-C into an "interrupted!" error inside the running script.
** The prompt reads lines with GNU readline (editing and history), as
** Debian's lua5.4 does. It uses only the public Lua API and
** bindings/host.h.
*/
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <readline/readline.h>
#include <readline/history.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "host.h"

#define PROGNAME "host"
#define PROMPT "> "
#define PROMPT2 ">> "

/*
** The state the SIGINT handler interrupts, and the name errors start with
** (argv[0], as lua.c does). The program owns one universe, so these
** statics belong to the program, not to the bindings.
*/
static lua_State *interrupt_target = NULL;
static const char *progname = PROGNAME;

/* host's own options that take a value, as --opt=V or --opt V. */
static const char *const value_options[] = {
  "--switch-interval", "--switch-instructions", "--dump-tracebacks-after",
  "--trace", "--trace-limit", NULL
};

/* Prints the usage text: lua5.4's options, host's, environment, docs. */
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
    "  --        stop handling options\n"
    "  -         stop handling options and execute stdin\n"
    "host's own options:\n"
    "  --switch-interval S       preempt threads every S seconds (default 0.005),\n"
    "                            S in (0, 3600]; also --switch-interval=S\n"
    "  --switch-instructions N   preempt threads every ~N VM instructions,\n"
    "                            jittered (for exposing races; ~2x slower),\n"
    "                            N in [1, 1000000000]; also --switch-instructions=N\n"
    "  --dump-tracebacks-after S print every thread's traceback once after S\n"
    "                            seconds (Ctrl-\\ / SIGQUIT prints it any time)\n"
    "  --trace=PATH  record threads, the GIL, waits and pool tasks into PATH\n"
    "                (Chrome trace JSON for Perfetto; .svg: a picture), written\n"
    "                at exit, after an error, Ctrl-C or os.exit\n"
    "  --trace-limit=MB  bound the trace file (default 64; the oldest events go)\n"
    "  --trace-coroutines  record coroutine resumes too\n"
    "  --version show host's version and exit\n"
    "  --help    show this help and exit\n"
    "Environment (ignored with -E, except INPUTRC):\n"
    "  LUA_INIT_5_4, LUA_INIT    Lua code to run first, or @file to run a file\n"
    "  LUA_PATH_5_4, LUA_PATH    where require looks for Lua modules\n"
    "  LUA_CPATH_5_4, LUA_CPATH  where require looks for C modules\n"
    "  HOST_TRACE  a path: as --trace=PATH\n"
    "  INPUTRC   readline's init file for the prompt (default ~/.inputrc)\n"
    "Documentation: man host; README.md of host's sources.\n",
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
** Message handler of the program, lua.c's: a string or a number gets a
** traceback; an object whose __tostring gives a string is that string
** alone; anything else is "(error object is a X value)" and a traceback.
** The __tostring runs protected (one that raises counts as none), called
** from here as lua.c calls it, so debug.getinfo sees the same levels. A
** host.error object records its traceback first (its __tostring shows it).
*/
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (host_error_is(L, 1, NULL)) host_msghandler(L);
    lua_settop(L, 1);
    if (luaL_getmetafield(L, 1, "__tostring") != LUA_TNIL) {
      lua_pushvalue(L, 1);
      if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING)
        return 1;
    }
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Calls the function under the values on the stack, with Ctrl-C armed. */
static int docall(lua_State *L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  interrupt_target = L;
  signal(SIGINT, on_sigint);
  int status = lua_pcall(L, nargs, nresults, base);
  signal(SIGINT, SIG_DFL);
  lua_remove(L, base);
  return status;
}

/* -v: exactly lua5.4's line. */
static void print_version(void) {
  printf("%s\n", LUA_COPYRIGHT);
  fflush(stdout);
}

/* --version: host's own version, then the Lua it was built with. */
static void print_host_version(void) {
  printf("host %s\n%s\n", HOST_VERSION, LUA_COPYRIGHT);
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
  HAS_HELP = 32,
  HAS_VERSION = 64
};

/*
** The value option `a` names (--switch-interval or --switch-interval=V
** gives "--switch-interval"), or NULL.
*/
static const char *value_option(const char *a) {
  for (const char *const *o = value_options; *o != NULL; o++) {
    size_t n = strlen(*o);
    if (strncmp(a, *o, n) == 0 && (a[n] == '\0' || a[n] == '=')) return *o;
  }
  return NULL;
}

/*
** The value of the value option at argv[*i] ("--opt=V" or "--opt V"),
** moving *i past it; NULL for any other argument.
*/
static const char *option_value(char **argv, int *i) {
  const char *opt = value_option(argv[*i]);
  if (opt == NULL) return NULL;
  const char *v = argv[*i] + strlen(opt);
  if (*v == '=') return v + 1;
  return argv[++*i];
}

/*
** Scans the options. Returns the flags and sets *first to the index of the
** script (0 when there is none). A bad option sets HAS_ERROR and *first
** to the offending index.
*/
static int collect_args(char **argv, int *first) {
  int flags = 0;
  int i;
  for (i = 1; argv[i] != NULL; i++) {
    *first = i;
    if (argv[i][0] != '-') return flags;  /* the script */
    if (argv[i][1] == '-' && argv[i][2] != '\0') {  /* a long option */
      if (strcmp(argv[i], "--help") == 0) return flags | HAS_HELP;
      if (strcmp(argv[i], "--version") == 0) return flags | HAS_VERSION;
      if (strcmp(argv[i], "--trace-coroutines") == 0) continue;
      if (value_option(argv[i]) == NULL) return flags | HAS_ERROR;
      if (option_value(argv, &i) == NULL) return flags | HAS_ERROR;
      continue;
    }
    switch (argv[i][1]) {
      case '-':
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
** The index of the next argument at or after i (below last) that may be
** one of host's own options, stepping over the values of -e and -l; 0 at
** "--" or the end.
*/
static int next_own_option(char **argv, int i, int last) {
  for (; argv[i] != NULL && i < last; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) return 0;
    if (a[0] == '-' && (a[1] == 'e' || a[1] == 'l') && a[2] == '\0') {
      if (argv[++i] == NULL) return 0;
      continue;
    }
    return i;
  }
  return 0;
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
  for (int i = 1; (i = next_own_option(argv, i, last)) > 0; i++) {
    const char *a = argv[i];
    const char *opt = value_option(a);
    const char *v = option_value(argv, &i);
    if (v == NULL || strncmp(opt, "--trace", 7) == 0) continue;  /* start_trace's */
    char *end;
    if (strcmp(opt, "--switch-interval") == 0) {
      double s = strtod(v, &end);
      if (*end != '\0' || end == v || !(s > 0 && s <= 3600)) {  /* NaN too */
        fprintf(stderr, "%s: --switch-interval must be a number of seconds in "
                "(0, 3600], not '%s'\n", progname, v);
        return false;
      }
      host_set_switch_interval(L, s);
    } else if (strcmp(opt, "--dump-tracebacks-after") == 0) {
      double s = strtod(v, &end);
      if (*end != '\0' || end == v || !(s >= 0 && s <= 1e9)) {  /* NaN too */
        fprintf(stderr, "%s: --dump-tracebacks-after must be a number of seconds in "
                "[0, 1e9], not '%s'\n", progname, v);
        return false;
      }
      host_dump_later(L, s);
    } else {
      errno = 0;
      long long n = strtoll(v, &end, 10);
      if (*end != '\0' || end == v || errno == ERANGE || n < 1 || n > 1000000000) {
        fprintf(stderr, "%s: --switch-instructions must be an integer in "
                "[1, 1000000000], not '%s'\n", progname, v);
        return false;
      }
      host_set_switch_instructions(L, (int)n);
    }
  }
  return true;
}

/* Protected part of start_trace: host.trace.start(path, {limit, coroutines}). */
static int trace_start(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "host.trace");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "start");
  lua_pushvalue(L, 1);
  lua_createtable(L, 0, 2);
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "limit");
  lua_pushvalue(L, 3);
  lua_setfield(L, -2, "coroutines");
  lua_call(L, 2, 0);
  return 0;
}

/*
** Starts the trace that --trace=PATH (or HOST_TRACE, unless -E) asks
** for, with --trace-limit and --trace-coroutines. False (after reporting)
** on a bad option.
*/
static bool start_trace(lua_State *L, char **argv, int script, bool ignore_env) {
  int last = script > 0 ? script : 1 << 30;
  const char *path = ignore_env ? NULL : getenv("HOST_TRACE");
  if (path != NULL && path[0] == '\0') path = NULL;
  double limit = 64;
  bool coroutines = false;
  for (int i = 1; (i = next_own_option(argv, i, last)) > 0; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--trace-coroutines") == 0) coroutines = true;
    const char *opt = value_option(a);
    const char *v = option_value(argv, &i);
    if (v == NULL) continue;
    if (strcmp(opt, "--trace") == 0) {
      if (v[0] == '\0') {
        fprintf(stderr, "%s: --trace needs a file name\n", progname);
        return false;
      }
      path = v;
    } else if (strcmp(opt, "--trace-limit") == 0) {
      char *end;
      limit = strtod(v, &end);
      if (*end != '\0' || end == v || !(limit > 0 && limit <= 1e6)) {  /* NaN too */
        fprintf(stderr, "%s: --trace-limit must be a number of megabytes in "
                "(0, 1000000], not '%s'\n", progname, v);
        return false;
      }
    }
  }
  if (path == NULL) return true;
  lua_pushcfunction(L, trace_start);
  lua_pushstring(L, path);
  lua_pushnumber(L, limit);
  lua_pushboolean(L, coroutines);
  return report(L, lua_pcall(L, 3, 0, 0)) == LUA_OK;
}

/* Runs the -e and -l options in order; also -W. */
static bool run_args(lua_State *L, char **argv, int script) {
  int last = script > 0 ? script : 1 << 30;
  for (int i = 1; argv[i] != NULL && i < last; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || strcmp(a, "--") == 0) break;
    if (option_value(argv, &i) != NULL) continue;  /* host's --switch-* */
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

/* Protected part of push_prompt: tostring of argument 1. */
static int prompt_tostring(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/*
** Pushes the prompt to show: _PROMPT (first line) or _PROMPT2 through
** tostring, as lua.c does, or the default when the global is nil. A
** __tostring that fails is reported and the default is shown.
*/
static const char *push_prompt(lua_State *L, bool first) {
  const char *fallback = first ? PROMPT : PROMPT2;
  lua_pushcfunction(L, prompt_tostring);
  if (lua_getglobal(L, first ? "_PROMPT" : "_PROMPT2") == LUA_TNIL) {
    lua_pop(L, 2);
    lua_pushstring(L, fallback);
  } else if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    report_message(progname, lua_pushfstring(L, "error in prompt (%s)",
                                             host_error_tostring(L)));
    lua_pop(L, 2);
    lua_pushstring(L, fallback);
  }
  return lua_tostring(L, -1);
}

/* Protected part of read_line: pushes the C string argument 1. */
static int push_text(lua_State *L) {
  lua_pushstring(L, (const char *)lua_touserdata(L, 1));
  return 1;
}

/*
** True while readline has the terminal in raw mode. Another thread may end
** the program then (os.exit): the exit handler gives the terminal back.
*/
static atomic_bool in_readline;

static void restore_terminal(void) {
  if (atomic_load(&in_readline)) rl_deprep_terminal();
}

/*
** Shows the prompt, reads one line with readline (the GIL released, so
** other threads run meanwhile) and pushes it; false at end of input.
*/
static bool read_line(lua_State *L, bool first) {
  const char *prompt = push_prompt(L, first);  /* anchored on the stack */
  host_gil_release(L);
  atomic_store(&in_readline, true);
  char *line = readline(prompt);
  atomic_store(&in_readline, false);
  host_gil_acquire(L);
  lua_pop(L, 1);
  if (line == NULL) return false;
  /* pushed protected: readline's memory is freed before any error */
  lua_pushcfunction(L, push_text);
  lua_pushlightuserdata(L, line);
  int status = lua_pcall(L, 1, 1, 0);
  free(line);
  if (status != LUA_OK) lua_error(L);
  return true;
}

/* Puts a non-empty entry (its text on top of the stack) in the history. */
static void save_line(lua_State *L) {
  const char *text = lua_tostring(L, -1);
  if (text[0] != '\0') add_history(text);
}

/* True when the load error on top of the stack means "unfinished chunk". */
static bool incomplete(lua_State *L, int status) {
  if (status != LUA_ERRSYNTAX) return false;
  size_t lmsg;
  const char *msg = lua_tolstring(L, -1, &lmsg);
  static const char eof_mark[] = "<eof>";
  size_t lmark = sizeof eof_mark - 1;
  return lmsg >= lmark && strcmp(msg + lmsg - lmark, eof_mark) == 0;
}

/*
** Compiles the entry whose first line is on the stack (slot 1): a leading
** '=' means "return"; then it is tried as "return <line>;" (an expression
** prints its values; the ';' keeps "f();" a statement, as in lua.c), and
** else as a statement, reading more lines while the chunk is unfinished.
** What the user typed goes into the history. Leaves only the function
** (or the error) on the stack.
*/
static int load_line(lua_State *L) {
  const char *typed = lua_tostring(L, 1);
  if (typed[0] == '=') lua_pushfstring(L, "return %s", typed + 1);
  else lua_pushvalue(L, 1);
  const char *retline = lua_pushfstring(L, "return %s;", lua_tostring(L, 2));
  int status = luaL_loadbuffer(L, retline, strlen(retline), "=stdin");
  if (status == LUA_OK) {
    lua_pushvalue(L, 1);
    save_line(L);
    lua_pop(L, 1);
  } else {
    lua_pop(L, 2);  /* error and "return" text */
    for (;;) {
      size_t len;
      const char *chunk = lua_tolstring(L, 2, &len);
      status = luaL_loadbuffer(L, chunk, len, "=stdin");
      if (!incomplete(L, status) || !read_line(L, false)) break;
      lua_remove(L, -2);  /* the "<eof>" error */
      for (int slot = 1; slot <= 2; slot++) {  /* add the line to both texts */
        lua_pushvalue(L, slot);
        lua_pushliteral(L, "\n");
        lua_pushvalue(L, -3);
        lua_concat(L, 3);
        lua_replace(L, slot);
      }
      lua_pop(L, 1);
    }
    lua_pushvalue(L, 1);
    save_line(L);
    lua_pop(L, 1);
  }
  lua_replace(L, 1);
  lua_settop(L, 1);
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
  rl_readline_name = "host";  /* for $if host in ~/.inputrc */
  atexit(restore_terminal);
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

/*
** Puts `entry` into package[field] after the user's own entries (those
** of LUA_CPATH_5_4 / LUA_CPATH, or the _PATH twins, before their ";;"),
** before Lua's defaults: the user may still override a module, and a
** stale copy under /usr/local cannot shadow the program's own. A variable
** without ";;" is the whole path, as in lua5.4: nothing is added. `envs`
** names the two variables; `noenv` is -E. An entry already there stays.
*/
static void add_own_path(lua_State *L, const char *field, const char *const envs[2],
                         const char *entry, bool noenv) {
  lua_getglobal(L, "package");
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  lua_getfield(L, -1, field);
  const char *cur = lua_tostring(L, -1);
  if (cur == NULL || strstr(cur, entry) != NULL) {
    lua_pop(L, 2);
    return;
  }
  const char *env = noenv ? NULL : getenv(envs[0]);
  if (env == NULL && !noenv) env = getenv(envs[1]);
  size_t at = 0;  /* where the entry goes in cur */
  if (env != NULL) {
    const char *dd = strstr(env, ";;");
    if (dd == NULL) {  /* no ";;": the user's path is the whole path, as in lua5.4 */
      lua_pop(L, 2);
      return;
    }
    at = (size_t)(dd - env);
    if (at > strlen(cur)) at = strlen(cur);
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, cur, at);
  if (at > 0 && cur[at - 1] != ';') luaL_addchar(&b, ';');
  luaL_addstring(&b, entry);
  if (cur[at] != '\0' && cur[at] != ';') luaL_addchar(&b, ';');
  luaL_addstring(&b, cur + at);
  luaL_pushresult(&b);
  lua_setfield(L, -3, field);
  lua_pop(L, 2);
}

/*
** Lets require find the modules host builds beside itself (host.mpi and
** host.mpi.run) without LUA_PATH/LUA_CPATH: relative to the program's own
** file (/proc/self/exe), <dir>/lua/ in the build tree (build/host beside
** build/lua/), else <prefix>/lib/lua/5.4/ and <prefix>/share/lua/5.4/ of
** an installed bin/host. Without /proc, nothing is added.
*/
static void add_own_paths(lua_State *L, bool noenv) {
  static const char *const cenv[2] = {"LUA_CPATH_5_4", "LUA_CPATH"};
  static const char *const lenv[2] = {"LUA_PATH_5_4", "LUA_PATH"};
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return;
  exe[n] = '\0';
  char *slash = strrchr(exe, '/');
  if (slash == NULL) return;
  *slash = '\0';  /* exe is now the program's directory */
  struct stat st;
  const char *lua = lua_pushfstring(L, "%s/lua/host", exe);
  bool build = stat(lua, &st) == 0 && S_ISDIR(st.st_mode);
  lua_pop(L, 1);
  if (build) {
    add_own_path(L, "cpath", cenv, lua_pushfstring(L, "%s/lua/?.so", exe), noenv);
    add_own_path(L, "path", lenv, lua_pushfstring(L, "%s/lua/?.lua", exe), noenv);
  } else {
    slash = strrchr(exe, '/');
    if (slash == NULL) return;
    *slash = '\0';  /* the prefix ("" for /bin/host) */
    add_own_path(L, "cpath", cenv,
                 lua_pushfstring(L, "%s/lib/lua/" LUA_VERSION_MAJOR "." LUA_VERSION_MINOR "/?.so", exe),
                 noenv);
    add_own_path(L, "path", lenv,
                 lua_pushfstring(L, "%s/share/lua/" LUA_VERSION_MAJOR "." LUA_VERSION_MINOR "/?.lua", exe),
                 noenv);
  }
  lua_pop(L, 2);
}


/* Everything main does with the state, run under lua_pcall as lua.c does. */
static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = (char **)lua_touserdata(L, 2);
  if (argv[0] != NULL && argv[0][0] != '\0') progname = argv[0];
  int script = 0;
  int flags = collect_args(argv, &script);
  if (flags & HAS_ERROR) {
    const char *bad = argv[script];
    if (bad[1] == 'e' || bad[1] == 'l' || value_option(bad) != NULL)
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
  if (flags & HAS_VERSION) {
    print_host_version();
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
  add_own_paths(L, flags & HAS_E);
  create_arg_table(L, argv, argc, script > 0 ? script : argc);
  lua_gc(L, LUA_GCGEN, 0, 0);
  if (!apply_switch_options(L, argv, script)) return 0;
  if (!start_trace(L, argv, script, flags & HAS_E)) return 0;
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
    report_message(argv[0] != NULL && argv[0][0] != '\0' ? argv[0] : progname,
                   "cannot create state: not enough memory");
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
