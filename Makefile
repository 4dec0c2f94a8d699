# Makefile of host: builds the `host` program and its bindings, and runs the
# specs (plain, ASan+UBSan, TSan on an instrumented Lua core, valgrind), the
# experiment scripts, the benchmarks and the fuzzer.
#
# The user-facing targets first install what a fresh Debian 12 lacks
# (tools/deps.sh), then call this Makefile again to build, so pkg-config is
# read after the packages exist.

CC ?= cc
PREFIX ?= /usr/local
DESTDIR ?=
BUILD ?= build
CFLAGS ?= -O2 -g
LDFLAGS ?=

WARNINGS = -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes
LUA_CFLAGS ?= $(shell pkg-config --cflags lua5.4)
LUA_LIBS ?= $(shell pkg-config --libs lua5.4)
# The prompt's line editing and history; linked into the program only.
READLINE_LIBS ?= -lreadline
# -fno-plt: each call into liblua5.4 goes through its GOT slot, not a PLT
# stub (a Lock acquire+release is about four API calls: 0.94x paired).
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARNINGS) -fno-plt $(CFLAGS) $(LUA_CFLAGS) \
             -Ibindings -pthread -MMD -MP
# -rdynamic: users' bindings loaded with require call host_* from the program.
ALL_LDFLAGS = $(LDFLAGS) -pthread -rdynamic

BINDING_SRC = $(sort $(wildcard bindings/*.c))
BINDING_OBJ = $(BINDING_SRC:bindings/%.c=$(BUILD)/obj/%.o)
HOST_OBJ = $(BUILD)/obj/main.o
HOST = $(BUILD)/host

# Debian packages each kind of work needs (libreadline-dev: the prompt;
# groff-base: the spec that renders the man page; librsvg2-bin: the spec
# that renders the experiments' pictures).
DEPS_BUILD = make gcc pkg-config liblua5.4-dev libreadline-dev
DEPS_TEST = $(DEPS_BUILD) lua5.4 lua-busted python3 lua-lpeg lua-filesystem groff-base librsvg2-bin
DEPS_CHECK = $(DEPS_TEST) clang libclang-rt-14-dev valgrind dpkg-dev
DEPS_MPI = $(DEPS_TEST) openmpi-bin libopenmpi-dev
DEPS = tools/deps.sh

# How the specs run: busted inside host, counting into $(BUILD)/counts.
SPEC_WRAP ?=
SPEC_ENV ?=
SPECS ?= spec

.PHONY: all mpi test-mpi test demo sanitize tsan tsan-negative valgrind bench bench-floors fuzz soak \
        install uninstall clean deps build-host run-specs

all: $(HOST)

$(HOST): $(HOST_OBJ) $(BUILD)/libhost.a
	$(CC) -o $@ $(HOST_OBJ) $(BUILD)/libhost.a $(ALL_LDFLAGS) $(LUA_LIBS) $(READLINE_LIBS) -lm -ldl

$(BUILD)/libhost.a: $(BINDING_OBJ)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/obj/main.o: host/main.c | $(BUILD)/obj
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/obj/%.o: bindings/%.c | $(BUILD)/obj
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/obj:
	mkdir -p $@

# host.trace.svg is Lua assembled into the object with .incbin (-MMD cannot
# see it).
$(BUILD)/obj/trace_svg.o: bindings/trace_svg.lua

-include $(BINDING_OBJ:.o=.d) $(HOST_OBJ:.o=.d)

# ---- host.mpi: futures over MPI (bindings/mpi/) ----
# A module of its own, $(MPI_LUA)/host/mpi.so, built when Debian's Open MPI
# is installed (pkg-config ompi): the host program never links libmpi. Where
# it is not, $(MPI_LUA)/host/mpi.lua takes its place and says so when
# required. host finds both beside itself, with no LUA_PATH or LUA_CPATH:
# $(MPI_LUA) beside $(HOST) in the build tree, $(LIBDIR)/lua/5.4 and
# $(PREFIX)/share/lua/5.4 installed (host/main.c, add_own_paths).
# run-specs builds it beside every host it tests (build/asan/lua/...).
HAVE_MPI := $(shell pkg-config --exists ompi 2>/dev/null && echo 1)
MPI_CFLAGS ?= $(shell pkg-config --cflags ompi 2>/dev/null)
MPI_LIBS ?= $(shell pkg-config --libs ompi 2>/dev/null)
MPI_LUA = $(BUILD)/lua
MPI_FILES = $(MPI_LUA)/host/mpi/run.lua $(if $(HAVE_MPI),$(MPI_LUA)/host/mpi.so,$(MPI_LUA)/host/mpi.lua)
# How the MPI specs and bench launch: 3 ranks on any machine, as root too;
# --bind-to none, or each rank is pinned to one core.
MPIEXEC = mpiexec --allow-run-as-root --oversubscribe --bind-to none
all: mpi
mpi: $(MPI_FILES)

$(MPI_LUA)/host/mpi.so: bindings/mpi/mpi.c | $(HOST)
	@mkdir -p $(dir $@)
	rm -f $(MPI_LUA)/host/mpi.lua
	$(CC) $(ALL_CFLAGS) $(MPI_CFLAGS) -fPIC -shared -o $@ $< $(MPI_LIBS)

$(MPI_LUA)/host/mpi.lua: bindings/mpi/stub.lua
	@mkdir -p $(dir $@)
	cp $< $@

$(MPI_LUA)/host/mpi/run.lua: bindings/mpi/run.lua
	@mkdir -p $(dir $@)
	cp $< $@

-include $(MPI_LUA)/host/mpi.d

# ---- running the specs ----

deps:
	@$(DEPS) $(DEPS_CHECK)

# A test helper the specs load with package.loadlib: a second universe made
# through host.h (spec/support/universe.c). Its host_* and lua_* symbols come
# from $(HOST), which exports them (-rdynamic).
SPEC_LIB = $(BUILD)/spec/universe.so
$(SPEC_LIB): spec/support/universe.c | $(BUILD)/spec
	$(CC) $(ALL_CFLAGS) -fPIC -shared -o $@ $<

$(BUILD)/spec:
	mkdir -p $@

-include $(SPEC_LIB:.so=.d)

# Runs every spec under $(HOST), prefixed by $(SPEC_WRAP); fails on any failure.
# With SPEC_EACH=1 each spec file runs in a process of its own, and a run
# that dies without counting its results counts as one failure.
SPEC_FILES = $(foreach s,$(SPECS),$(or $(wildcard $(s)/*_spec.lua),$(s)))
COUNTS = $(abspath $(BUILD))/counts
run-specs: $(HOST) $(SPEC_LIB) $(MPI_FILES)
	@rm -f $(COUNTS)
	@status=0; for specs in $(if $(SPEC_EACH),$(SPEC_FILES),"$(SPECS)"); do \
	  before=$$(cat $(COUNTS) 2>/dev/null | wc -l); \
	  echo "busted $$specs"; \
	  $(SPEC_ENV) HOST_BIN=$(abspath $(HOST)) HOST_TEST_COUNTS=$(COUNTS) \
	    HOST_SPEC_UNIVERSE=$(abspath $(SPEC_LIB)) \
	    $(SPEC_WRAP) $(HOST) /usr/bin/busted --output=spec/support/counting.lua $$specs || { \
	      status=1; \
	      [ "$$(cat $(COUNTS) 2>/dev/null | wc -l)" -gt "$$before" ] || echo "0 1" >> $(COUNTS); }; \
	done; exit $$status

test:
	@$(DEPS) $(DEPS_TEST)
	@$(MAKE) --no-print-directory run-specs

# The MPI specs (spec/mpi_spec.lua), each world under `timeout`, with
# Debian's Open MPI installed first; counted into $(BUILD)/mpi-counts.
# Under plain `make test` they are pending.
test-mpi:
	@$(DEPS) $(DEPS_MPI)
	@$(MAKE) --no-print-directory mpi run-specs SPECS=spec/mpi_spec.lua \
	  COUNTS=$(abspath $(BUILD))/mpi-counts \
	  SPEC_ENV='HOST_MPI=1 HOST_MPIEXEC="$(MPIEXEC)"'

# The experiment scripts; their pictures (SVG) go to $(DEMO_OUT).
# DEMO_QUICK=1 runs them on a small workload (what spec/experiments_spec.lua does).
DEMO_OUT ?= $(BUILD)/demo
demo:
	@$(DEPS) $(DEPS_TEST)
	@$(MAKE) --no-print-directory $(HOST)
	@for s in $(wildcard scripts/*.lua); do echo "== $$s"; \
	  HOST_DEMO_OUT=$(DEMO_OUT) HOST_DEMO_QUICK=$(DEMO_QUICK) $(HOST) $$s || exit 1; echo; done
	@echo "Pictures written to $(DEMO_OUT)/:"; ls -1 $(DEMO_OUT)/*.svg | sed 's/^/  /'

# ASan+UBSan over the bindings and over a Lua core built from Debian's
# source with the same sanitizers and LUA_USE_APICHECK, so that a misuse of
# the Lua C API (a push beyond the stack, a bad index) fails a spec at once.
SAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
SAN_LUA = build/asan-lua
sanitize:
	@$(DEPS) $(DEPS_CHECK)
	CC=$(CC) tools/lua-core.sh $(SAN_LUA) "$(SAN_FLAGS) -DLUA_USE_APICHECK -fPIC"
	@$(MAKE) --no-print-directory run-specs BUILD=build/asan \
	  CFLAGS="$(SAN_FLAGS)" LDFLAGS="-fsanitize=address,undefined" \
	  LUA_CFLAGS="-I$(SAN_LUA)/include" LUA_LIBS="$(abspath $(SAN_LUA))/liblua.a" \
	  SPEC_ENV="ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1"

# TSan needs the Lua core instrumented too: built from Debian's lua5.4 source.
# Each spec file runs in its own process: clang 14's TSan runtime crashed in
# its own interceptor (a SEGV in ScopedInterceptor, the main thread merely
# interning a string) after ~350 specs in one long process, in some address
# layouts only.
TSAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=thread
TSAN_LUA = build/tsan-lua
# Lua's core throws with _longjmp under LUA_USE_POSIX, which clang 14's
# TSan does not intercept (setjmp, _setjmp and longjmp it does): each error
# or yield then left its frames on TSan's shadow stack, which overflowed
# (a SEGV in __tsan_func_entry) after ~10^5 pcall errors or yields.
TSAN_LUA_JUMP = -D_longjmp=longjmp
TSAN_ENV = TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
tsan:
	@$(DEPS) $(DEPS_CHECK)
	tools/lua-core.sh $(TSAN_LUA) "$(TSAN_FLAGS) $(TSAN_LUA_JUMP) -fPIC"
	@$(MAKE) --no-print-directory run-specs BUILD=build/tsan CC=clang SPEC_EACH=1 \
	  CFLAGS="$(TSAN_FLAGS)" LDFLAGS="-fsanitize=thread" \
	  LUA_CFLAGS="-I$(TSAN_LUA)/include" LUA_LIBS="$(abspath $(TSAN_LUA))/liblua.a" \
	  SPEC_ENV='$(TSAN_ENV)'
	@$(MAKE) --no-print-directory tsan-negative

# The negative control: spawned threads skip the GIL; TSan must say so.
tsan-negative:
	@$(MAKE) --no-print-directory build/tsan-nogil/host BUILD=build/tsan-nogil CC=clang \
	  CFLAGS="$(TSAN_FLAGS) -DHOST_NO_GIL_CONTROL" LDFLAGS="-fsanitize=thread" \
	  LUA_CFLAGS="-I$(TSAN_LUA)/include" LUA_LIBS="$(abspath $(TSAN_LUA))/liblua.a"
	@$(TSAN_ENV) build/tsan-nogil/host tools/tsan_control.lua > build/tsan-nogil/report 2>&1; \
	if grep -q 'WARNING: ThreadSanitizer: data race' build/tsan-nogil/report; then \
	  echo "tsan negative control: caught ($$(grep -c 'WARNING: ThreadSanitizer' build/tsan-nogil/report) report(s))"; \
	else echo "tsan negative control: NOT caught"; cat build/tsan-nogil/report; exit 1; fi

# Forked pool workers are checked too but say nothing (a worker never frees
# its copy of the parent's state, by design).
VALGRIND = valgrind --quiet --error-exitcode=99 --leak-check=full --child-silent-after-fork=yes \
           --show-leak-kinds=definite,indirect,possible --errors-for-leak-kinds=definite,indirect,possible \
           --suppressions=$(abspath tools/valgrind.supp)
valgrind:
	@$(DEPS) $(DEPS_CHECK)
	@$(MAKE) --no-print-directory run-specs BUILD=build/valgrind CFLAGS="-O1 -g" \
	  SPEC_WRAP="$(VALGRIND)" SPEC_ENV="HOST_UNDER_VALGRIND=1"

# The pools under faults (tools/soak.lua): errors, cancels, interrupts and a
# killed worker, with preemption every ~1000 instructions. Fails when a task
# is lost, stuck or wrong.
SOAK_ROUNDS ?= 3
soak:
	@$(DEPS) $(DEPS_TEST)
	@$(MAKE) --no-print-directory $(HOST)
	$(HOST) --switch-instructions=1000 tools/soak.lua $(SOAK_ROUNDS)

# Every bench/*_bench.lua through bench/run.lua: figures as medians with
# min-max, a summary table of the goals (met / MISSED), $(BUILD)/bench.json
# and $(BUILD)/bench.svg. bench/futex_pingpong.c is the C floor under the
# GIL hand-off figure, bench/process_floor.c those under the process
# pool's. `host bench/readme_table.lua` turns bench.json into the README's
# "What it costs" table. bench/mpi_bench.lua runs where Open MPI and
# host.mpi are there (make test-mpi installs them), else says why not.
bench:
	@$(DEPS) $(DEPS_TEST)
	@$(MAKE) --no-print-directory $(HOST) mpi $(BENCH_FLOORS)
	@HOST_BENCH_PINGPONG=$(BUILD)/bench/futex_pingpong HOST_BENCH_PROCESS_FLOOR=$(BUILD)/bench/process_floor \
	  $(HOST) bench/run.lua $(BUILD)

# The C floors the figures are set against (bench/thread_bench.lua,
# bench/futures_bench.lua, bench/pools_bench.lua).
BENCH_FLOORS = $(BUILD)/bench/futex_pingpong $(BUILD)/bench/thread_floors $(BUILD)/bench/process_floor \
  $(BUILD)/bench/floor_udata.so $(BUILD)/bench/floor_codec.so
bench-floors: $(BENCH_FLOORS)

$(BUILD)/bench/futex_pingpong $(BUILD)/bench/thread_floors $(BUILD)/bench/process_floor: $(BUILD)/bench/%: bench/%.c
	@mkdir -p $(BUILD)/bench
	$(CC) -std=c11 -D_GNU_SOURCE $(WARNINGS) -O2 -pthread -o $@ $<

$(BUILD)/bench/floor_udata.so $(BUILD)/bench/floor_codec.so: $(BUILD)/bench/%.so: bench/%.c
	@mkdir -p $(BUILD)/bench
	$(CC) $(ALL_CFLAGS) -fPIC -shared -o $@ $<

# libFuzzer on the codec's decoder (tools/fuzz_loads.c), for FUZZ_SECONDS,
# seeded with valid payloads that tools/fuzz_corpus.lua writes with the plain
# build. The bindings get coverage + ASan + UBSan; the Lua core is built from
# Debian's source with ASan + UBSan (tools/lua-core.sh). Extra libFuzzer
# options go in FUZZ_FLAGS (e.g. "-jobs=2 -workers=2"); it runs inside
# $(FUZZ_DIR), where crash files and job logs land. Fails on any crash.
FUZZ_SECONDS ?= 60
FUZZ_FLAGS ?=
FUZZ_DIR = build/fuzz
FUZZ_LUA = build/fuzz-lua
FUZZ_SAN = -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link $(FUZZ_SAN)
fuzz:
	@$(DEPS) $(DEPS_CHECK)
	@$(MAKE) --no-print-directory $(HOST)
	CC=clang tools/lua-core.sh $(FUZZ_LUA) "-O1 -g -fno-omit-frame-pointer $(FUZZ_SAN) -fPIC"
	@$(MAKE) --no-print-directory $(FUZZ_DIR)/fuzz_loads BUILD=$(FUZZ_DIR) CC=clang \
	  CFLAGS="$(FUZZ_CFLAGS)" LDFLAGS="-fsanitize=fuzzer $(FUZZ_SAN)" \
	  LUA_CFLAGS="-I$(FUZZ_LUA)/include" LUA_LIBS="$(abspath $(FUZZ_LUA))/liblua.a"
	rm -rf $(FUZZ_DIR)/seeds && mkdir -p $(FUZZ_DIR)/seeds $(FUZZ_DIR)/corpus
	$(HOST) tools/fuzz_corpus.lua $(FUZZ_DIR)/seeds
	cd $(FUZZ_DIR) && UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ./fuzz_loads \
	  -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(FUZZ_FLAGS) corpus seeds

$(FUZZ_DIR)/fuzz_loads: tools/fuzz_loads.c $(BUILD)/libhost.a
	$(CC) $(ALL_CFLAGS) -o $@ $< $(BUILD)/libhost.a $(ALL_LDFLAGS) $(LUA_LIBS) -lm -ldl

# ---- install ----
# host.pc is for modules loaded by the program (no libraries: the program
# exports them); host-embed.pc for C programs that link the bindings in.
# Both find their prefix from where they lie, so any DESTDIR works.
# install records the directories it had to make in $(DIRS_MADE), so that
# uninstall removes those (once empty) and no others: a /usr/local/bin that
# was there before stays. Without DESTDIR, install warns when another
# `host` (Debian's bind9-host: the DNS lookup tool) and this one hide each
# other on PATH, or when $(PREFIX)/bin is not on PATH.

LIBDIR = $(PREFIX)/lib
INCDIR = $(PREFIX)/include/host
MANDIR = $(PREFIX)/share/man/man1
SHAREDIR = $(PREFIX)/share/host
# host.mpi goes where Lua's default paths look (for PREFIX /usr/local).
LUA_CMOD = $(LIBDIR)/lua/5.4/host
LUA_LMOD = $(PREFIX)/share/lua/5.4/host
INSTALL_DIRS = $(PREFIX)/bin $(INCDIR) $(LIBDIR)/pkgconfig $(MANDIR) $(SHAREDIR) \
               $(LUA_CMOD) $(LUA_LMOD)/mpi
DIRS_MADE = $(SHAREDIR)/dirs-made
INSTALLED = $(PREFIX)/bin/host $(INCDIR)/host.h $(LIBDIR)/libhost.a \
            $(LIBDIR)/pkgconfig/host.pc $(LIBDIR)/pkgconfig/host-embed.pc \
            $(MANDIR)/host.1 $(LUA_CMOD)/mpi.so $(LUA_LMOD)/mpi.lua $(LUA_LMOD)/mpi/run.lua
# make splits words at blanks: a PREFIX or DESTDIR with one would install
# into, or remove, other paths (`rm -f /a/victim x/bin/host`). Refused.
BLANK := $(subst ,, )
CHECK_PATHS = $(if $(findstring $(BLANK),$(PREFIX)$(DESTDIR)),$(error PREFIX and DESTDIR \
  must not contain blanks: '$(DESTDIR)' '$(PREFIX)'; install elsewhere and link))
install: $(HOST) mpi
	$(CHECK_PATHS)
	@made=$$(for d in $(INSTALL_DIRS); do \
	    while [ "$$d" != / ] && [ "$$d" != . ] && [ ! -d "$(DESTDIR)$$d" ]; do \
	      echo "$$d"; d=$$(dirname "$$d"); done; done); \
	  install -d $(addprefix $(DESTDIR),$(INSTALL_DIRS)) && \
	  { cat "$(DESTDIR)$(DIRS_MADE)" 2>/dev/null; echo "$$made"; } | sed '/^$$/d' | sort -u \
	    > "$(DESTDIR)$(DIRS_MADE).tmp" && mv "$(DESTDIR)$(DIRS_MADE).tmp" "$(DESTDIR)$(DIRS_MADE)"
	install -m 755 $(HOST) $(DESTDIR)$(PREFIX)/bin/host
	install -m 644 bindings/host.h $(DESTDIR)$(INCDIR)/host.h
	install -m 644 $(BUILD)/libhost.a $(DESTDIR)$(LIBDIR)/libhost.a
	install -m 644 tools/host.pc.in $(DESTDIR)$(LIBDIR)/pkgconfig/host.pc
	install -m 644 tools/host-embed.pc.in $(DESTDIR)$(LIBDIR)/pkgconfig/host-embed.pc
	install -m 644 host/host.1 $(DESTDIR)$(MANDIR)/host.1
	install -m 644 $(MPI_LUA)/host/mpi/run.lua $(DESTDIR)$(LUA_LMOD)/mpi/run.lua
	rm -f $(DESTDIR)$(LUA_CMOD)/mpi.so $(DESTDIR)$(LUA_LMOD)/mpi.lua
	$(if $(HAVE_MPI),install -m 755 $(MPI_LUA)/host/mpi.so $(DESTDIR)$(LUA_CMOD)/mpi.so,install -m 644 $(MPI_LUA)/host/mpi.lua $(DESTDIR)$(LUA_LMOD)/mpi.lua)
	@[ -n "$(DESTDIR)" ] || { \
	  bin=$$(cd "$(PREFIX)/bin" && pwd -P); mine=; IFS=:; \
	  for d in $$PATH; do \
	    [ -n "$$d" ] && [ -x "$$d/host" ] && [ ! -d "$$d/host" ] || continue; \
	    if [ "$$(cd "$$d" 2>/dev/null && pwd -P)" = "$$bin" ]; then mine=1; \
	    elif [ -z "$$mine" ]; then \
	      echo "warning: $$d/host comes first on PATH, so 'host' runs it, not $(PREFIX)/bin/host;"; \
	      echo "  put $(PREFIX)/bin before $$d in PATH, or run $(PREFIX)/bin/host"; \
	    else \
	      echo "warning: $(PREFIX)/bin/host hides $$d/host on PATH (Debian's bind9-host"; \
	      echo "  installs its DNS lookup tool as host); run that one as $$d/host"; \
	    fi; \
	  done; \
	  [ -n "$$mine" ] || echo "note: $(PREFIX)/bin is not on PATH: export PATH=\"$(PREFIX)/bin:\$$PATH\""; \
	  echo "man page: MANPATH=\"$(PREFIX)/share/man:\" man host"; }

uninstall:
	$(CHECK_PATHS)
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	@if [ -f "$(DESTDIR)$(DIRS_MADE)" ]; then \
	  dirs=$$(sort -r "$(DESTDIR)$(DIRS_MADE)"); rm -f "$(DESTDIR)$(DIRS_MADE)"; \
	  for d in $$dirs; do rmdir "$(DESTDIR)$$d" 2>/dev/null || true; done; \
	else rmdir "$(DESTDIR)$(INCDIR)" 2>/dev/null || true; fi

clean:
	rm -rf build
