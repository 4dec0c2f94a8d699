/*
** trace.c: the recorder of `host --trace` and the `host.trace` module.
**
** Ownership. A universe that has ever traced owns one host_trace (u->trace),
** freed with the universe; an interpreter-pool worker's universe shares its
** parent's (a reference each, `refs`). The trace owns one trace_buf per OS
** thread that recorded (the list `bufs`, under `mu`); a thread's record
** points at its buffer (ts->tbuf) and is the only writer of it, so the
** hot path takes that buffer's own lock alone (uncontended but for the
** moment a writer copies the buffer). When the thread ends its buffer is
** marked ended and the writer frees it once copied.
**
** Writing. The writer copies every buffer's events (plus the files the
** process-pool workers left, one per child), sorts them by time, drops
** the oldest beyond the size bound, drops an E whose B is gone, closes the
** spans still open at the end, and writes metadata first.
*/
#include <errno.h>
#include <glob.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lauxlib.h"
#include "host.h"
#include "modules.h"
#include "future.h"
#include "trace.h"

#define TRACE_MT "host.trace_state"
#define DEFAULT_LIMIT_MB 64.0
#define EVENT_COST 110  /* bytes an event takes in the file, about, plus its strings */

enum { CAT_GIL, CAT_WAIT, CAT_TASK, CAT_SWITCH, CAT_MARK, CAT_THREAD, CAT_COROUTINE,
       CAT_COUNTER };
static const char *const cat_names[] = {"gil", "wait", "task", "switch", "mark", "thread",
                                        "coroutine", "counter"};

/* What an event's args hold. */
enum { A_NONE, A_OBJECT, A_TIMED_OUT, A_TASK, A_OUTCOME, A_TO, A_VALUE, A_EMPTY };

typedef struct tev {
  double ts;            /* microseconds on CLOCK_MONOTONIC */
  char ph;              /* 'B', 'E', 'i', 'C' */
  unsigned char cat, args;
  bool flag;            /* A_TIMED_OUT */
  const char *name;     /* static, or `own` */
  char *own;            /* a name this event owns */
  char *str;            /* A_OBJECT's object; owned */
  const char *pool;     /* A_TASK's pool (static); A_OUTCOME's outcome */
  double num;           /* future id (A_TASK, A_OUTCOME), tid (A_TO), value (A_VALUE) */
  long seq;             /* a process-pool child's k-th task (names it by "@k") */
} tev;

typedef struct trace_buf trace_buf;
struct trace_buf {
  pthread_mutex_t mu;   /* the owner appends, a writer copies */
  tev *ev;
  size_t n, cap, bytes;
  pid_t pid;
  unsigned long tid;
  char *name;           /* the lane's name, or NULL */
  int resumes;          /* open resume spans (--trace-coroutines), owner only */
  bool ended;           /* its thread is done with it: freed once copied */
  trace_buf *next;
};

typedef struct fnode {  /* future -> its id (a chained hash) */
  const void *f;
  unsigned long id;
  struct fnode *next;
} fnode;

typedef struct dispatch_rec {  /* the k-th task given to a process-pool worker */
  pid_t pid;
  unsigned long id;
  size_t order;         /* its place among all dispatches (for sorting by pid) */
} dispatch_rec;

struct host_trace {
  atomic_int refs;
  atomic_bool on;
  pthread_mutex_t mu;   /* bufs, the futures' ids, dispatches, path */
  trace_buf *bufs;
  char *path;           /* where the file goes */
  char *process_name;
  double limit;         /* bytes */
  double started;       /* when the trace last started (us) */
  bool coroutines;
  atomic_ullong dropped;
  pid_t owner;          /* the process whose file it is */
  bool child;           /* a process-pool worker's copy: spills at exit */
  long child_tasks;     /* tasks a child has started */
  unsigned long next_id;
  atomic_long subs;     /* interpreter-pool universes attached so far */
  fnode **fbuckets;
  size_t nbuckets, nfutures;
  dispatch_rec *disp;
  size_t ndisp, capdisp;
  struct lane_name {    /* the names of the threads alive at start (mu) */
    unsigned long tid;
    char *name;
  } *names;
  size_t nnames, capnames;
};

/* ---- small helpers ---- */

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static char *dup_str(const char *s) {
  if (s == NULL) return NULL;
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d != NULL) memcpy(d, s, n);
  return d;
}

/* A growable byte string (the writer's; C only, so children use it too). */
typedef struct sbuf {
  char *p;
  size_t n, cap;
  bool failed;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t len) {
  if (b->failed) return;
  if (b->n + len + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + len + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
      b->failed = true;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, len);
  b->n += len;
  b->p[b->n] = '\0';
}

static void sb_puts(sbuf *b, const char *s) {
  sb_add(b, s, strlen(s));
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  sb_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/*
** The length of the well-formed UTF-8 sequence at c (1 to 4), or 0 when
** the bytes there are not one (a stray continuation, an overlong form, a
** surrogate, past U+10FFFF, cut short).
*/
static int utf8_len(const unsigned char *c) {
  if (c[0] < 0x80) return 1;
  int n;
  unsigned long cp;
  if (c[0] >= 0xc2 && c[0] <= 0xdf) n = 2, cp = c[0] & 0x1f;
  else if (c[0] >= 0xe0 && c[0] <= 0xef) n = 3, cp = c[0] & 0x0f;
  else if (c[0] >= 0xf0 && c[0] <= 0xf4) n = 4, cp = c[0] & 0x07;
  else return 0;
  for (int i = 1; i < n; i++) {
    if ((c[i] & 0xc0) != 0x80) return 0;  /* the NUL at the end stops here too */
    cp = cp << 6 | (c[i] & 0x3f);
  }
  if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
      (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
    return 0;
  return n;
}

/*
** A JSON string; '@' is escaped too (a child's "@k" task marks stay
** unique). A byte that is not part of well-formed UTF-8 becomes U+FFFD:
** JSON is UTF-8, and a parser refuses the whole file over one bad byte.
*/
static void sb_json_string(sbuf *b, const char *s) {
  sb_puts(b, "\"");
  for (const unsigned char *c = (const unsigned char *)s; *c;) {
    int n = utf8_len(c);
    if (*c == '"' || *c == '\\') {
      char e[2] = {'\\', (char)*c};
      sb_add(b, e, 2);
    } else if (*c < 0x20 || *c == '@' || *c == 0x7f) {
      sb_printf(b, "\\u%04x", *c);
    } else if (n == 0) {
      sb_puts(b, "\\ufffd");
      n = 1;
    } else {
      sb_add(b, (const char *)c, (size_t)n);
    }
    c += n;
  }
  sb_puts(b, "\"");
}

/* ---- recording ---- */

/* The trace ts records into, when it records now, else NULL. */
static host_trace *recording(host_tstate *ts) {
  host_trace *t = ts->u->trace;
  return t != NULL && atomic_load_explicit(&t->on, memory_order_acquire) ? t : NULL;
}

/*
** ts's lane: its thread number (the one locks and dumps show, never
** reused, unlike a pthread id once host reuses OS threads), offset for the
** universe of an interpreter-pool worker so its lanes stay apart.
*/
static unsigned long lane_id(const host_tstate *ts) {
  return (unsigned long)(ts->u->trace_lanes + ts->num);
}

/* Makes ts's buffer (its first event since it started). */
static trace_buf *buf_new(host_trace *t, host_tstate *ts) {
  trace_buf *b = calloc(1, sizeof *b);
  if (b == NULL) return NULL;
  pthread_mutex_init(&b->mu, NULL);
  b->pid = getpid();
  b->tid = lane_id(ts);
  pthread_mutex_lock(&t->mu);
  b->next = t->bufs;
  t->bufs = b;
  pthread_mutex_unlock(&t->mu);
  ts->tbuf = b;
  return b;
}

/* Drops the older half of b's events (mu held): the size bound. */
static void buf_shed(host_trace *t, trace_buf *b) {
  size_t k = b->n / 2;
  for (size_t i = 0; i < k; i++) {
    free(b->ev[i].own);
    free(b->ev[i].str);
  }
  memmove(b->ev, b->ev + k, (b->n - k) * sizeof *b->ev);
  b->n -= k;
  b->bytes = b->bytes / 2;
  atomic_fetch_add(&t->dropped, k);
}

/*
** Appends e to ts's buffer, stamped now. The strings e owns are freed
** when it cannot be kept. A buffer past the size bound sheds its older
** half (the writer trims to the bound exactly).
*/
static void record(host_trace *t, host_tstate *ts, tev *e) {
  trace_buf *b = ts->tbuf != NULL ? ts->tbuf : buf_new(t, ts);
  if (b == NULL) goto lost;
  pthread_mutex_lock(&b->mu);
  if (b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    tev *p = realloc(b->ev, cap * sizeof *p);
    if (p == NULL) {
      pthread_mutex_unlock(&b->mu);
      goto lost;
    }
    b->ev = p;
    b->cap = cap;
  }
  e->ts = now_us();
  b->ev[b->n++] = *e;
  b->bytes += EVENT_COST + (e->own ? strlen(e->own) : 0) + (e->str ? 2 * strlen(e->str) : 0);
  if ((double)b->bytes > 2 * t->limit) buf_shed(t, b);
  pthread_mutex_unlock(&b->mu);
  return;
lost:
  free(e->own);
  free(e->str);
  atomic_fetch_add(&t->dropped, 1);
}

/* Records an event without args on ts's lane. */
static void simple(host_tstate *ts, char ph, int cat, const char *name) {
  host_trace *t = recording(ts);
  if (t == NULL) return;
  tev e = {.ph = ph, .cat = (unsigned char)cat, .name = name};
  record(t, ts, &e);
}

/* Closes (or opens again) ts's open resume spans around a gap in its GIL. */
static void resumes_around_gap(host_tstate *ts, char ph) {
  int n = ts->tbuf != NULL ? ts->tbuf->resumes : 0;
  for (int i = 0; i < n; i++) simple(ts, ph, CAT_COROUTINE, "resume coroutine");
}

void host_trace_gil(host_tstate *ts, bool take) {
  if (ts->u->trace_sub) return;  /* an isolated worker's GIL: its lane shows tasks */
  if (!take) resumes_around_gap(ts, 'E');
  simple(ts, take ? 'B' : 'E', CAT_GIL, "GIL");
  if (take) resumes_around_gap(ts, 'B');
}

void host_trace_resume(host_tstate *ts, bool begin) {
  host_trace *t = recording(ts);
  if (t == NULL || !t->coroutines) return;
  if (!begin && (ts->tbuf == NULL || ts->tbuf->resumes == 0)) return;
  simple(ts, begin ? 'B' : 'E', CAT_COROUTINE, "resume coroutine");
  if (ts->tbuf != NULL) ts->tbuf->resumes += begin ? 1 : -1;
}

void host_trace_switch_request(host_tstate *ts) {
  simple(ts, 'i', CAT_SWITCH, "switch request");
}

void host_trace_handoff(host_tstate *ts, host_tstate *w) {
  host_trace *t = recording(ts);
  if (t == NULL || ts->u->trace_sub) return;
  tev e = {.ph = 'i', .cat = CAT_SWITCH, .name = "hand-off", .args = A_TO,
           .num = (double)lane_id(w)};
  record(t, ts, &e);
}

/* The wait span's name: "wait <what>" (owned), or NULL without memory. */
static char *wait_name(const char *what) {
  size_t n = strlen(what) + 6;
  char *name = malloc(n);
  if (name != NULL) snprintf(name, n, "wait %s", what);
  return name;
}

static unsigned long future_id(host_trace *t, const void *f, bool make);

/*
** "host.Lock (locked by)": what ts waits for, from host_wait_on; a pool's
** future is "host.Future #12 (pending)".
*/
static char *wait_object(host_trace *t, host_tstate *ts) {
  const char *what = ts->wait_what ? ts->wait_what : "a wait queue";
  const char *detail = ts->wait_detail;
  unsigned long id = 0;
  if (ts->wait_obj != NULL && strcmp(what, "host.Future") == 0) {
    pthread_mutex_lock(&t->mu);
    id = future_id(t, ts->wait_obj, false);
    pthread_mutex_unlock(&t->mu);
  }
  char num[32] = "";
  if (id > 0) snprintf(num, sizeof num, " #%lu", id);
  size_t n = strlen(what) + strlen(num) + (detail ? strlen(detail) + 3 : 0) + 1;
  char *s = malloc(n);
  if (s == NULL) return NULL;
  if (detail) snprintf(s, n, "%s%s (%s)", what, num, detail);
  else snprintf(s, n, "%s%s", what, num);
  return s;
}

void host_trace_wait_begin(host_tstate *ts) {
  host_trace *t = recording(ts);
  if (t == NULL) return;
  char *obj = wait_object(t, ts);
  char *name = wait_name(ts->wait_what ? ts->wait_what : "a wait queue");
  tev e = {.ph = 'B', .cat = CAT_WAIT, .name = name ? name : "wait", .own = name,
           .args = A_OBJECT, .str = obj};
  record(t, ts, &e);
}

/* Ends ts's wait on `what` (the name its B has). */
static void wait_end(host_tstate *ts, const char *what, bool timed_out) {
  host_trace *t = recording(ts);
  if (t == NULL) return;
  char *name = wait_name(what);
  tev e = {.ph = 'E', .cat = CAT_WAIT, .name = name ? name : "wait", .own = name,
           .args = A_TIMED_OUT, .flag = timed_out};
  record(t, ts, &e);
}

void host_trace_wait_end(host_tstate *ts, bool timed_out) {
  wait_end(ts, ts->wait_what ? ts->wait_what : "a wait queue", timed_out);
}

void host_trace_run(host_tstate *ts, bool start) {
  host_trace *t = recording(ts);
  if (t == NULL) return;
  tev run = {.ph = start ? 'B' : 'E', .cat = CAT_THREAD, .name = "run"};
  tev mark = {.ph = 'i', .cat = CAT_THREAD, .name = start ? "thread start" : "thread end"};
  record(t, ts, start ? &mark : &run);
  record(t, ts, start ? &run : &mark);
}

void host_trace_thread_exit(host_tstate *ts) {
  trace_buf *b = ts->tbuf;
  if (b == NULL) return;
  ts->tbuf = NULL;
  pthread_mutex_lock(&b->mu);
  b->ended = true;  /* the writer frees it */
  pthread_mutex_unlock(&b->mu);
}

/* Names ts's lane (its buffer, made now if need be). */
static void name_lane(host_trace *t, host_tstate *ts, const char *name) {
  trace_buf *b = ts->tbuf != NULL ? ts->tbuf : buf_new(t, ts);
  if (b == NULL) return;
  char *s = dup_str(name);
  pthread_mutex_lock(&b->mu);
  free(b->name);
  b->name = s;
  pthread_mutex_unlock(&b->mu);
}

bool host_trace_active(lua_State *L) {
  host_universe *u = host_universe_of(L);
  return u != NULL && atomic_load_explicit(&u->tracing, memory_order_acquire);
}

void host_trace_name(lua_State *L, const char *name) {
  host_tstate *ts = member_of(L);
  if (ts == NULL || ts->u->trace == NULL) return;
  name_lane(ts->u->trace, ts, name);
}

void host_trace_name_field(lua_State *L, int idx) {
  lua_getfield(L, idx, "name");
  const char *name = lua_tostring(L, -1);
  if (name != NULL) host_trace_name(L, name);
  lua_pop(L, 1);
}

void host_trace_io(lua_State *L, const char *what, bool begin) {
  host_tstate *ts = member_of(L);
  if (ts == NULL) return;
  host_trace *t = recording(ts);
  if (t == NULL) return;
  if (!begin) {
    wait_end(ts, what, false);
    return;
  }
  char *name = wait_name(what);
  tev e = {.ph = 'B', .cat = CAT_WAIT, .name = name ? name : "wait", .own = name,
           .args = A_OBJECT, .str = dup_str(what)};
  record(t, ts, &e);
}

/*
** ---- futures' ids ----
** A future gets its id at submit (a new one even when a future that lived
** at the same address had one: freed memory is reused) and keeps it while
** the trace lives, for its task's start and end, a process pool's
** dispatch and the waits for it. An address that comes back replaces its
** entry, so the map holds about as many entries as futures lived at once.
*/

static size_t fhash(const void *f, size_t n) {
  return (size_t)(((uintptr_t)f >> 4) * 0x9E3779B97F4A7C15ULL) & (n - 1);
}

/* The id of future f (mu held); a new one when `make`, else 0 if unknown. */
static unsigned long future_id(host_trace *t, const void *f, bool make) {
  if (t->nbuckets > 0) {
    for (fnode *x = t->fbuckets[fhash(f, t->nbuckets)]; x != NULL; x = x->next)
      if (x->f == f) return x->id;
  }
  if (!make) return 0;
  if (t->nfutures >= t->nbuckets) {  /* grow: rehash into twice the buckets */
    size_t nb = t->nbuckets ? t->nbuckets * 2 : 64;
    fnode **b = calloc(nb, sizeof *b);
    if (b == NULL) return ++t->next_id;
    for (size_t i = 0; i < t->nbuckets; i++) {
      for (fnode *x = t->fbuckets[i], *nx; x != NULL; x = nx) {
        nx = x->next;
        size_t h = fhash(x->f, nb);
        x->next = b[h];
        b[h] = x;
      }
    }
    free(t->fbuckets);
    t->fbuckets = b;
    t->nbuckets = nb;
  }
  fnode *x = malloc(sizeof *x);
  unsigned long id = ++t->next_id;
  if (x == NULL) return id;
  x->f = f;
  x->id = id;
  size_t h = fhash(f, t->nbuckets);
  x->next = t->fbuckets[h];
  t->fbuckets[h] = x;
  t->nfutures++;
  return id;
}

/* Forgets future f's id (mu held): its task has ended. */
static void future_forget(host_trace *t, const void *f) {
  if (t->nbuckets == 0) return;
  for (fnode **p = &t->fbuckets[fhash(f, t->nbuckets)]; *p != NULL; p = &(*p)->next) {
    if ((*p)->f == f) {
      fnode *x = *p;
      *p = x->next;
      free(x);
      t->nfutures--;
      return;
    }
  }
}

/* Gives future f a new id (mu held): it was just submitted. */
static unsigned long future_new_id(host_trace *t, const void *f) {
  future_forget(t, f);
  return future_id(t, f, true);
}

/* Forgets every future's id. */
static void futures_free(host_trace *t) {
  for (size_t i = 0; i < t->nbuckets; i++) {
    for (fnode *x = t->fbuckets[i], *nx; x != NULL; x = nx) {
      nx = x->next;
      free(x);
    }
  }
  free(t->fbuckets);
  t->fbuckets = NULL;
  t->nbuckets = t->nfutures = 0;
}

void host_trace_submit(lua_State *L, host_future *f, const char *pool) {
  host_tstate *ts = member_of(L);
  host_trace *t = ts ? recording(ts) : NULL;
  if (t == NULL || f == NULL) return;
  pthread_mutex_lock(&t->mu);
  unsigned long id = future_new_id(t, f);
  pthread_mutex_unlock(&t->mu);
  char *name = malloc(32);
  if (name != NULL) snprintf(name, 32, "submit #%lu", id);
  tev e = {.ph = 'i', .cat = CAT_TASK, .name = name ? name : "submit", .own = name,
           .args = A_TASK, .pool = pool, .num = (double)id};
  record(t, ts, &e);
}

void host_trace_task(lua_State *L, host_future *f, const char *pool, const char *outcome) {
  host_tstate *ts = member_of(L);
  host_trace *t = ts ? recording(ts) : NULL;
  if (t == NULL) return;
  unsigned long id = 0;
  long seq = 0;
  if (f != NULL) {
    pthread_mutex_lock(&t->mu);
    id = future_id(t, f, true);
    pthread_mutex_unlock(&t->mu);
  } else {  /* a process-pool worker: the parent knows its k-th task's id */
    if (outcome == NULL) t->child_tasks++;
    seq = t->child_tasks;
  }
  char *name = malloc(32);
  if (name != NULL) {
    if (f != NULL) snprintf(name, 32, "task #%lu", id);
    else snprintf(name, 32, "task #@%ld", seq);
  }
  tev e = {.ph = outcome ? 'E' : 'B', .cat = CAT_TASK, .name = name ? name : "task",
           .own = name, .args = outcome ? A_OUTCOME : A_TASK,
           .pool = outcome ? outcome : pool, .num = (double)id, .seq = seq};
  /* the task's span holds the GIL spans of its run (it may be preempted):
  ** the caller's GIL span ends at its edges and begins again inside */
  host_trace_gil(ts, false);
  record(t, ts, &e);
  host_trace_gil(ts, true);
}

void host_trace_dispatch(lua_State *L, int idx, pid_t pid) {
  host_tstate *ts = member_of(L);
  host_trace *t = ts ? recording(ts) : NULL;
  if (t == NULL) return;
  lua_rawgeti(L, idx, 1);
  host_future *f = host_future_of(L, -1);
  lua_pop(L, 1);
  pthread_mutex_lock(&t->mu);
  if (t->ndisp == t->capdisp) {
    size_t cap = t->capdisp ? t->capdisp * 2 : 64;
    dispatch_rec *p = realloc(t->disp, cap * sizeof *p);
    if (p == NULL) {
      pthread_mutex_unlock(&t->mu);
      return;
    }
    t->disp = p;
    t->capdisp = cap;
  }
  t->disp[t->ndisp].pid = pid;
  t->disp[t->ndisp].order = t->ndisp;
  t->disp[t->ndisp].id = future_id(t, f, true);
  t->ndisp++;
  pthread_mutex_unlock(&t->mu);
}

/* ---- writing ---- */

/* One event as the writer sees it: its JSON text and what sorting needs. */
typedef struct wev {
  double ts;
  size_t seq;
  char ph;
  pid_t pid;
  unsigned long tid;
  char *json;           /* owned */
  const char *cat, *name;  /* for closing an open B (own events only) */
  char *name_own;
  long task_seq;        /* a process-pool child's open task: closed as "task #@k" */
} wev;

typedef struct wlist {
  wev *v;
  size_t n, cap;
} wlist;

/* Appends e (numbered in order); false without memory. */
static bool wl_push(wlist *l, wev *e) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 1024;
    wev *p = realloc(l->v, cap * sizeof *p);
    if (p == NULL) return false;
    l->v = p;
    l->cap = cap;
  }
  e->seq = l->n;
  l->v[l->n++] = *e;
  return true;
}

/* The JSON text of event e of lane (pid, tid). */
static char *event_json(const tev *e, pid_t pid, unsigned long tid) {
  sbuf b = {0};
  sb_printf(&b, "{\"ph\":\"%c\",\"pid\":%ld,\"tid\":%lu,\"ts\":%.3f,\"cat\":\"%s\",\"name\":",
            e->ph, (long)pid, tid, e->ts, cat_names[e->cat]);
  if (e->seq > 0) sb_printf(&b, "\"task #@%ld\"", e->seq);  /* the parent resolves @k */
  else sb_json_string(&b, e->name);
  if (e->ph == 'i') sb_puts(&b, ",\"s\":\"t\"");
  switch (e->args) {
    case A_OBJECT:
      sb_puts(&b, ",\"args\":{\"object\":");
      sb_json_string(&b, e->str ? e->str : "?");
      sb_puts(&b, "}");
      break;
    case A_TIMED_OUT:
      sb_printf(&b, ",\"args\":{\"timed_out\":%s}", e->flag ? "true" : "false");
      break;
    case A_TASK:
      if (e->seq > 0) sb_printf(&b, ",\"args\":{\"future\":@%ld,\"pool\":\"%s\"}", e->seq, e->pool);
      else sb_printf(&b, ",\"args\":{\"future\":%.0f,\"pool\":\"%s\"}", e->num, e->pool);
      break;
    case A_OUTCOME:
      sb_printf(&b, ",\"args\":{\"outcome\":\"%s\"}", e->pool);
      break;
    case A_TO:
      sb_printf(&b, ",\"args\":{\"to\":%.0f}", e->num);
      break;
    case A_VALUE:
      sb_printf(&b, ",\"args\":{\"value\":%.17g}", e->num);
      break;
    case A_EMPTY:
      sb_puts(&b, ",\"args\":{}");
      break;
  }
  sb_puts(&b, "}");
  if (b.failed) {
    free(b.p);
    return NULL;
  }
  return b.p;
}

/* Frees b's events (mu held). */
static void buf_clear(trace_buf *b) {
  for (size_t i = 0; i < b->n; i++) {
    free(b->ev[i].own);
    free(b->ev[i].str);
  }
  b->n = 0;
  b->bytes = 0;
}

/* Frees b and its events (it is out of the list). */
static void buf_free(trace_buf *b) {
  buf_clear(b);
  free(b->ev);
  free(b->name);
  pthread_mutex_destroy(&b->mu);
  free(b);
}

/* A lane's metadata line. */
static char *meta_json(const char *what, pid_t pid, unsigned long tid, const char *name) {
  sbuf b = {0};
  sb_printf(&b, "{\"ph\":\"M\",\"name\":\"%s\",\"pid\":%ld,\"tid\":%lu,\"ts\":0,\"args\":{\"name\":",
            what, (long)pid, tid);
  sb_json_string(&b, name);
  sb_puts(&b, "}}");
  if (b.failed) {
    free(b.p);
    return NULL;
  }
  return b.p;
}

/* The name of b's thread when the trace started (mu held), else "thread". */
static const char *name_at_start(host_trace *t, const trace_buf *b) {
  if (b->pid != getpid()) return "thread";
  for (size_t i = 0; i < t->nnames; i++)
    if (t->names[i].tid == b->tid) return t->names[i].name;
  return "thread";
}

/* Adds one metadata line per lane (names of one lane joined) and the process's. */
static void add_metadata(host_trace *t, wlist *out, trace_buf **bufs, size_t nb) {
  for (size_t i = 0; i < nb; i++) {  /* bufs sorted by lane: a lane's buffers are adjacent */
    if (i > 0 && bufs[i - 1]->pid == bufs[i]->pid && bufs[i - 1]->tid == bufs[i]->tid) continue;
    sbuf names = {0};
    for (size_t j = i; j < nb; j++) {
      if (bufs[j]->pid != bufs[i]->pid || bufs[j]->tid != bufs[i]->tid) break;
      const char *nm = bufs[j]->name ? bufs[j]->name : name_at_start(t, bufs[j]);
      if (names.n > 0 && strstr(names.p, nm) != NULL) continue;
      if (names.n > 0) sb_puts(&names, ", ");
      sb_puts(&names, nm);
    }
    wev e = {.ph = 'M', .pid = bufs[i]->pid, .tid = bufs[i]->tid,
             .json = meta_json("thread_name", bufs[i]->pid, bufs[i]->tid,
                               names.p ? names.p : "thread")};
    free(names.p);
    if (e.json != NULL && !wl_push(out, &e)) free(e.json);
  }
  wev p = {.ph = 'M', .pid = getpid(),
           .json = meta_json("process_name", getpid(), 0,
                             t->process_name ? t->process_name : "host")};
  if (p.json != NULL && !wl_push(out, &p)) free(p.json);
}

/* Orders buffers by process, then lane (qsort). */
static int buf_cmp(const void *a, const void *b) {
  const trace_buf *x = *(trace_buf *const *)a, *y = *(trace_buf *const *)b;
  if (x->pid != y->pid) return x->pid < y->pid ? -1 : 1;
  return (x->tid > y->tid) - (x->tid < y->tid);
}

/*
** Moves every buffer's events into `out` (as JSON) and frees the buffers
** whose threads have ended. t->mu held.
*/
static void collect(host_trace *t, wlist *out) {
  size_t nb = 0;
  for (trace_buf *b = t->bufs; b != NULL; b = b->next) nb++;
  trace_buf **bufs = calloc(nb ? nb : 1, sizeof *bufs);
  size_t i = 0;
  for (trace_buf *b = t->bufs; b != NULL && bufs != NULL; b = b->next) bufs[i++] = b;
  for (i = 0; i < nb && bufs != NULL; i++) {
    trace_buf *b = bufs[i];
    pthread_mutex_lock(&b->mu);
    for (size_t k = 0; k < b->n; k++) {
      tev *e = &b->ev[k];
      wev w = {.ts = e->ts, .ph = e->ph, .pid = b->pid, .tid = b->tid,
               .json = event_json(e, b->pid, b->tid), .cat = cat_names[e->cat]};
      if (e->ph == 'B') {
        w.name_own = dup_str(e->name);
        w.name = w.name_own;
        w.task_seq = e->seq;
      }
      if (w.json == NULL || !wl_push(out, &w)) {
        free(w.json);
        free(w.name_own);
        atomic_fetch_add(&t->dropped, 1);
      }
    }
    buf_clear(b);
    pthread_mutex_unlock(&b->mu);
  }
  if (bufs != NULL) {
    qsort(bufs, nb, sizeof *bufs, buf_cmp);  /* lanes in thread order: main first */
    add_metadata(t, out, bufs, nb);
  }
  for (trace_buf **p = &t->bufs; *p != NULL;) {
    trace_buf *b = *p;
    pthread_mutex_lock(&b->mu);
    bool ended = b->ended;
    pthread_mutex_unlock(&b->mu);
    if (ended) {
      *p = b->next;
      buf_free(b);
    } else {
      p = &b->next;
    }
  }
  free(bufs);
}

/* Metadata first, then by time, then in the order recorded. */
static int wev_cmp(const void *a, const void *b) {
  const wev *x = a, *y = b;
  bool mx = x->ph == 'M', my = y->ph == 'M';
  if (mx != my) return mx ? -1 : 1;
  if (x->ts != y->ts) return x->ts < y->ts ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Orders dispatches by process, then in the order they were made (qsort). */
static int disp_cmp(const void *a, const void *b) {
  const dispatch_rec *x = a, *y = b;
  if (x->pid != y->pid) return x->pid < y->pid ? -1 : 1;
  return (x->order > y->order) - (x->order < y->order);
}

/*
** The k-th task dispatched to process `pid`, 0 if unknown (t->mu held,
** t->disp sorted by disp_cmp: a binary search, so merging stays linear in
** the tasks, not quadratic).
*/
static unsigned long dispatched(host_trace *t, pid_t pid, long k) {
  size_t lo = 0, hi = t->ndisp;
  while (lo < hi) {  /* the first dispatch to pid */
    size_t mid = lo + (hi - lo) / 2;
    if (t->disp[mid].pid < pid) lo = mid + 1;
    else hi = mid;
  }
  if (k < 1 || (size_t)(k - 1) >= t->ndisp - lo) return 0;
  const dispatch_rec *d = &t->disp[lo + (size_t)(k - 1)];
  return d->pid == pid ? d->id : 0;
}

/* Replaces each "@k" of a child's line with the id of its k-th task. */
static char *resolve_tasks(host_trace *t, const char *line, pid_t pid) {
  if (strchr(line, '@') == NULL) return dup_str(line);
  sbuf b = {0};
  for (const char *c = line; *c;) {
    if (*c == '@') {
      char *end;
      long k = strtol(c + 1, &end, 10);
      sb_printf(&b, "%lu", dispatched(t, pid, k));
      c = end;
    } else {
      sb_add(&b, c, 1);
      c++;
    }
  }
  if (b.failed) {
    free(b.p);
    return NULL;
  }
  return b.p;
}

/* The glob pattern (or, with pid > 0, the name) of the children's files. */
static void part_name(host_trace *t, char *out, size_t n, pid_t pid) {
  const char *dir = getenv("TMPDIR");  /* one that is no writable directory: /tmp, as mkstemp users do */
  if (dir == NULL || dir[0] == '\0' || access(dir, W_OK | X_OK) != 0) dir = "/tmp";
  if (pid > 0) {
    snprintf(out, n, "%s/host-trace-%ld-%p-%ld.part", dir, (long)t->owner, (void *)t, (long)pid);
    return;
  }
  size_t k = 0;  /* the directory's own *, ?, [ and \ match only themselves */
  for (const char *c = dir; *c && k + 2 < n; c++) {
    if (strchr("*?[\\", *c) != NULL) out[k++] = '\\';
    out[k++] = *c;
  }
  snprintf(out + k, n - k, "/host-trace-%ld-%p-*.part", (long)t->owner, (void *)t);
}

/* Reads the files the process-pool workers left into `out`, and removes them. */
static void merge_children(host_trace *t, wlist *out) {
  char pattern[4096];
  part_name(t, pattern, sizeof pattern, 0);
  glob_t g;
  if (glob(pattern, 0, NULL, &g) != 0) return;
  if (t->ndisp > 1) qsort(t->disp, t->ndisp, sizeof *t->disp, disp_cmp);
  for (size_t i = 0; i < g.gl_pathc; i++) {
    FILE *f = fopen(g.gl_pathv[i], "r");
    if (f == NULL) continue;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
      if (line[len - 1] == '\n') line[--len] = '\0';
      if (strncmp(line, "dropped ", 8) == 0) {
        atomic_fetch_add(&t->dropped, strtoull(line + 8, NULL, 10));
        continue;
      }
      wev w = {0};
      long pid;
      if (sscanf(line, "{\"ph\":\"%c\",\"pid\":%ld,\"tid\":%lu,\"ts\":%lf", &w.ph, &pid, &w.tid,
                 &w.ts) != 4 &&
          sscanf(line, "{\"ph\":\"M\",\"name\":\"%*[a-z_]\",\"pid\":%ld,\"tid\":%lu", &pid,
                 &w.tid) != 2)
        continue;
      if (strncmp(line, "{\"ph\":\"M\"", 9) == 0) w.ph = 'M';
      /* a worker forked during an earlier trace records on until it exits:
      ** what it did before this trace started is not this trace's */
      if (w.ph != 'M' && w.ts < t->started) continue;
      w.pid = (pid_t)pid;
      w.json = resolve_tasks(t, line, w.pid);
      if (w.json == NULL || !wl_push(out, &w)) free(w.json);
    }
    free(line);
    fclose(f);
    unlink(g.gl_pathv[i]);
  }
  globfree(&g);
}

typedef struct lane {
  pid_t pid;
  unsigned long tid;
  size_t *open;         /* indices of its open B events */
  size_t nopen, cap;
} lane;

/* The lanes met so far, found by (pid, tid) through an open-addressed index. */
typedef struct lane_set {
  lane *v;
  size_t n, cap;
  size_t *slots;        /* 1 + an index into v, or 0: free */
  size_t nslots;        /* a power of two, at least twice n */
} lane_set;

static size_t lane_slot(pid_t pid, unsigned long tid, size_t nslots) {
  uint64_t h = (uint64_t)pid * 0x9E3779B97F4A7C15ULL ^ (uint64_t)tid * 0xC2B2AE3D27D4EB4FULL;
  return (size_t)(h ^ (h >> 29)) & (nslots - 1);
}

/*
** The lane (pid, tid) of set `ls`, added when new; NULL without memory.
** A hash, not a scan: a trace of 20 000 short threads has 20 000 lanes.
*/
static lane *lane_of(lane_set *ls, pid_t pid, unsigned long tid) {
  if (ls->nslots > 0) {
    for (size_t i = lane_slot(pid, tid, ls->nslots); ls->slots[i] != 0;
         i = (i + 1) & (ls->nslots - 1)) {
      lane *l = &ls->v[ls->slots[i] - 1];
      if (l->pid == pid && l->tid == tid) return l;
    }
  }
  if (2 * (ls->n + 1) > ls->nslots) {  /* a bigger index, every lane again */
    size_t ns = ls->nslots ? ls->nslots * 2 : 64;
    size_t *slots = calloc(ns, sizeof *slots);
    if (slots == NULL) return NULL;
    for (size_t k = 0; k < ls->n; k++) {
      size_t i = lane_slot(ls->v[k].pid, ls->v[k].tid, ns);
      while (slots[i] != 0) i = (i + 1) & (ns - 1);
      slots[i] = k + 1;
    }
    free(ls->slots);
    ls->slots = slots;
    ls->nslots = ns;
  }
  if (ls->n == ls->cap) {
    size_t c = ls->cap ? ls->cap * 2 : 16;
    lane *p = realloc(ls->v, c * sizeof *p);
    if (p == NULL) return NULL;
    ls->v = p;
    ls->cap = c;
  }
  size_t i = lane_slot(pid, tid, ls->nslots);
  while (ls->slots[i] != 0) i = (i + 1) & (ls->nslots - 1);
  ls->slots[i] = ls->n + 1;
  lane *l = &ls->v[ls->n++];
  memset(l, 0, sizeof *l);
  l->pid = pid;
  l->tid = tid;
  return l;
}

/*
** Writes the events of `w` (sorted) from index `from` on: an E whose B
** is not written, a B still open at the end gets an E at `end`. Returns
** the number of E left out.
*/
static unsigned long long write_balanced(sbuf *s, wlist *w, size_t from, double end,
                                         const char *sep) {
  unsigned long long dropped = 0;
  lane_set ls = {0};
  bool any = false;
  bool *skip = calloc(w->n ? w->n : 1, sizeof *skip);
  for (size_t i = 0; i < w->n && skip != NULL; i++) {
    wev *e = &w->v[i];
    if (e->ph == 'M' || i < from) continue;
    if (e->ph != 'B' && e->ph != 'E') continue;
    lane *l = lane_of(&ls, e->pid, e->tid);
    if (l == NULL) continue;
    if (e->ph == 'B') {
      if (l->nopen == l->cap) {
        size_t c = l->cap ? l->cap * 2 : 8;
        size_t *p = realloc(l->open, c * sizeof *p);
        if (p == NULL) continue;
        l->open = p;
        l->cap = c;
      }
      l->open[l->nopen++] = i;
    } else if (l->nopen == 0) {
      skip[i] = true;
      dropped++;
    } else {
      l->nopen--;
    }
  }
  for (size_t i = 0; i < w->n; i++) {
    wev *e = &w->v[i];
    if ((e->ph != 'M' && i < from) || (skip != NULL && skip[i])) continue;
    sb_puts(s, any ? sep : "\n");
    sb_puts(s, e->json);
    any = true;
  }
  for (size_t k = 0; k < ls.n; k++) {
    for (size_t j = ls.v[k].nopen; j-- > 0;) {
      wev *b = &w->v[ls.v[k].open[j]];
      sb_printf(s, "%s{\"ph\":\"E\",\"pid\":%ld,\"tid\":%lu,\"ts\":%.3f,\"cat\":\"%s\",\"name\":",
                any ? sep : "\n", (long)b->pid, b->tid, end, b->cat ? b->cat : "thread");
      if (b->task_seq > 0) sb_printf(s, "\"task #@%ld\"", b->task_seq);  /* as its B */
      else sb_json_string(s, b->name ? b->name : "?");
      sb_puts(s, "}");
      any = true;
    }
    free(ls.v[k].open);
  }
  free(ls.v);
  free(ls.slots);
  free(skip);
  return dropped;
}

/* The index from which the events fit in `limit` bytes (metadata always kept). */
static size_t trim_from(wlist *w, double limit, size_t *nmeta) {
  size_t m = 0;
  double total = 0;
  while (m < w->n && w->v[m].ph == 'M') total += (double)strlen(w->v[m++].json) + 2;
  *nmeta = m;
  size_t from = w->n;
  while (from > m) {
    double len = (double)strlen(w->v[from - 1].json) + 2;
    if (total + len > limit) break;
    total += len;
    from--;
  }
  return from;
}

/* Frees the writer's copies. */
static void wlist_free(wlist *w) {
  for (size_t i = 0; i < w->n; i++) {
    free(w->v[i].json);
    free(w->v[i].name_own);
  }
  free(w->v);
}

/*
** The whole file (or, for a process-pool child, its lines for the parent)
** into s; t->mu held. Every buffer is emptied.
*/
static void render(host_trace *t, sbuf *s) {
  wlist w = {0};
  collect(t, &w);
  if (!t->child) merge_children(t, &w);
  qsort(w.v, w.n, sizeof *w.v, wev_cmp);
  double end = now_us();
  size_t nmeta;
  size_t from = trim_from(&w, t->limit - 400, &nmeta);
  unsigned long long dropped = atomic_exchange(&t->dropped, 0) + (from - nmeta);
  sbuf body = {0};
  /* An E without its B: its B was dropped with the oldest events, or its
     span began before the trace did (a wait under way at trace.start) */
  unsigned long long unmatched = write_balanced(&body, &w, from, end, t->child ? "\n" : ",\n");
  if (dropped > 0) dropped += unmatched;
  wlist_free(&w);
  if (t->child) {  /* one event a line, and what was dropped */
    sb_printf(s, "dropped %llu\n", dropped);
    if (body.p) sb_puts(s, body.p);
    sb_puts(s, "\n");
  } else {
    sb_puts(s, "{\"traceEvents\":[");
    if (body.p) sb_puts(s, body.p);
    sb_printf(s, "\n],\n\"displayTimeUnit\":\"ms\",\n\"otherData\":{\"program\":\"host\","
              "\"version\":\"%s\",\"dropped_events\":%llu", HOST_VERSION, dropped);
    if (dropped > 0)
      sb_printf(s, ",\"note\":\"the oldest %llu events were dropped: the file is bounded at "
                "%.3g MB (--trace-limit)\"", dropped, t->limit / 1e6);
    sb_puts(s, "}}\n");
  }
  free(body.p);
}

/* Writes s to `path`; false with errno set when it could not. */
static bool write_file(const char *path, const char *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (f == NULL) return false;
  bool ok = fwrite(data, 1, n, f) == n;
  int err = errno;
  if (fclose(f) != 0 && ok) return false;
  errno = err;
  return ok;
}

/* True when path ends in ".svg". */
static bool wants_svg(const char *path) {
  size_t n = strlen(path);
  return n >= 4 && strcmp(path + n - 4, ".svg") == 0;
}

/* True when host.trace.svg can be required (preloaded or on package.path). */
static bool svg_available(lua_State *L) {
  int top = lua_gettop(L);
  bool found = false;
  if (lua_getglobal(L, "package") == LUA_TTABLE) {
    if (lua_getfield(L, top + 1, "loaded") == LUA_TTABLE)
      found = lua_getfield(L, -1, "host.trace.svg") != LUA_TNIL;
    if (!found && lua_getfield(L, top + 1, "preload") == LUA_TTABLE)
      found = lua_getfield(L, -1, "host.trace.svg") != LUA_TNIL;
  }
  lua_settop(L, top);
  return found;
}

/*
** Turns the JSON on top of L's stack into SVG with host.trace.svg's
** render (protected), replacing it. False with the error on top instead.
*/
static int svg_render(lua_State *L) {
  if (!svg_available(L)) return luaL_error(L, "SVG output needs host.trace.svg");
  lua_getglobal(L, "require");
  lua_pushliteral(L, "host.trace.svg");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK)
    return luaL_error(L, "SVG output needs host.trace.svg: %s", lua_tostring(L, -1));
  lua_getfield(L, -1, "render");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  if (!lua_isstring(L, -1)) return luaL_error(L, "host.trace.svg.render returned no string");
  return 1;
}

/*
** Writes t's file now (L's thread holds the GIL), and stops tracing. Pushes
** nothing; returns NULL or an error message (pushed) on failure.
*/
static const char *write_trace(lua_State *L, host_universe *u) {
  host_trace *t = u->trace;
  atomic_store(&u->tracing, false);
  atomic_store(&t->on, false);
  sbuf s = {0};
  pthread_mutex_lock(&t->mu);
  render(t, &s);
  char *path = dup_str(t->path);
  pthread_mutex_unlock(&t->mu);
  if (s.failed || path == NULL) {
    free(s.p);
    free(path);
    return lua_pushliteral(L, "trace: not enough memory to write the trace");
  }
  const char *err = NULL;
  if (wants_svg(path)) {
    lua_pushcfunction(L, svg_render);
    lua_pushlstring(L, s.p, s.n);
    free(s.p);
    s.p = NULL;
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      err = lua_pushfstring(L, "trace: %s", lua_tostring(L, -1));
      lua_remove(L, -2);
    } else {
      size_t n;
      const char *svg = lua_tolstring(L, -1, &n);
      if (!write_file(path, svg, n))
        err = lua_pushfstring(L, "trace: cannot write %s: %s", path, strerror(errno));
      else
        lua_pop(L, 1);
      if (err) lua_remove(L, -2);
    }
  } else if (!write_file(path, s.p, s.n)) {
    err = lua_pushfstring(L, "trace: cannot write %s: %s", path, strerror(errno));
  }
  free(s.p);
  free(path);
  return err;
}

/* ---- lifecycle ---- */

static host_trace *trace_new(void) {
  host_trace *t = calloc(1, sizeof *t);
  if (t == NULL) return NULL;
  atomic_init(&t->refs, 1);
  pthread_mutex_init(&t->mu, NULL);
  t->limit = DEFAULT_LIMIT_MB * 1e6;
  t->owner = getpid();
  return t;
}

/* Forgets the names of the threads alive at the last start (mu held or unshared). */
static void names_free(host_trace *t) {
  for (size_t i = 0; i < t->nnames; i++) free(t->names[i].name);
  free(t->names);
  t->names = NULL;
  t->nnames = t->capnames = 0;
}

/* Drops a reference; the last frees the trace and every buffer left. */
static void trace_unref(host_trace *t) {
  if (t == NULL || atomic_fetch_sub(&t->refs, 1) != 1) return;
  for (trace_buf *b = t->bufs, *nx; b != NULL; b = nx) {
    nx = b->next;
    buf_free(b);
  }
  futures_free(t);
  names_free(t);
  free(t->disp);
  free(t->path);
  free(t->process_name);
  pthread_mutex_destroy(&t->mu);
  free(t);
}

/*
** Removes the files that process-pool workers left after the file was
** written (a pool that outlived trace.stop()): nobody will merge them.
*/
static void remove_parts(host_trace *t) {
  char pattern[4096];
  part_name(t, pattern, sizeof pattern, 0);
  glob_t g;
  if (glob(pattern, 0, NULL, &g) != 0) return;
  for (size_t i = 0; i < g.gl_pathc; i++) unlink(g.gl_pathv[i]);
  globfree(&g);
}

void host_trace_free(host_universe *u) {
  if (u->trace == NULL) return;
  if (!u->trace_sub && !u->trace->child && u->trace->owner == getpid()) remove_parts(u->trace);
  host_trace_thread_exit(&u->main_ts);
  trace_unref(u->trace);
  u->trace = NULL;
}

void host_trace_after_fork(host_universe *u) {
  host_trace *t = u->trace;
  if (t == NULL) return;
  pthread_mutex_init(&t->mu, NULL);
  for (trace_buf *b = t->bufs, *nx; b != NULL; b = nx) {  /* the parent's: not ours */
    nx = b->next;
    pthread_mutex_init(&b->mu, NULL);
    buf_free(b);
  }
  t->bufs = NULL;
  for (host_tstate *ts = host_current(); ts != NULL; ts = ts->outer) ts->tbuf = NULL;
  u->main_ts.tbuf = NULL;
  futures_free(t);
  names_free(t);
  t->ndisp = 0;
  atomic_store(&t->dropped, 0);
  if (!atomic_load(&t->on) || u->trace_sub) {
    atomic_store(&u->tracing, false);
    return;
  }
  t->child = true;
  t->child_tasks = 0;
  char name[64];
  snprintf(name, sizeof name, "process-pool worker %ld", (long)getpid());
  free(t->process_name);
  t->process_name = dup_str(name);
  host_tstate *ts = tstate_in(u);
  if (ts == NULL) return;
  name_lane(t, ts, name);
  host_trace_gil(ts, true);  /* the forking thread held the GIL: so does the child */
}

void host_trace_child_exit(void) {
  host_tstate *ts = host_current();
  if (ts == NULL) return;
  host_universe *u = ts->u;
  host_trace *t = u->trace;
  if (t == NULL || !t->child || !atomic_load(&t->on)) return;
  atomic_store(&t->on, false);
  sbuf s = {0};
  pthread_mutex_lock(&t->mu);
  render(t, &s);
  pthread_mutex_unlock(&t->mu);
  char name[4096], tmp[4200];
  part_name(t, name, sizeof name, getpid());
  snprintf(tmp, sizeof tmp, "%s.tmp", name);
  if (!s.failed && write_file(tmp, s.p, s.n)) rename(tmp, name);  /* whole or none */
  else unlink(tmp);
  free(s.p);
}

void *host_trace_share(lua_State *parent) {
  host_universe *u = host_universe_of(parent);
  if (u == NULL || u->trace == NULL || !atomic_load(&u->tracing)) return NULL;
  atomic_fetch_add(&u->trace->refs, 1);
  return u->trace;
}

void host_trace_attach(lua_State *L, void *shared, const char *what, int index) {
  host_universe *u = host_universe_of(L);
  if (u == NULL || shared == NULL || u->trace != NULL) return;
  host_trace *t = shared;
  atomic_fetch_add(&t->refs, 1);
  u->trace = t;
  u->trace_sub = true;
  u->trace_lanes = 1000000 * (atomic_fetch_add(&t->subs, 1) + 1);
  atomic_store(&u->tracing, true);
  char name[128];
  snprintf(name, sizeof name, "%s %d", what, index);
  name_lane(t, &u->main_ts, name);
}

void host_trace_unshare(void *shared) {
  trace_unref(shared);
}

void host_trace_at_exit(lua_State *L) {
  host_universe *u = host_universe_of(L);
  if (u == NULL || u->trace == NULL || u->trace_sub || u->fork_child) return;
  if (!atomic_load(&u->trace->on)) return;
  const char *err = write_trace(L, u);
  if (err != NULL) {
    fprintf(stderr, "host: %s\n", err);
    fflush(stderr);
    lua_pop(L, 1);
  }
}

/* ---- the host.trace module ---- */

/* The calling thread's record, or an error when it has none. */
static host_tstate *check_member(lua_State *L) {
  host_tstate *ts = member_of(L);
  if (ts == NULL) luaL_error(L, "host.trace: this thread runs no code of a host universe");
  return ts;
}

/* Raises unless the universe owns its trace (an interpreter worker shares one). */
static void check_owner(lua_State *L, host_universe *u) {
  if (u->trace_sub)
    luaL_error(L, "host.trace: an interpreter-pool worker records into its parent's "
                  "trace; start and stop it there");
  if (u->fork_child) luaL_error(L, "host.trace: a process-pool worker cannot start or stop "
                                   "the trace; start it in the parent");
}

/*
** Forgets the resume spans u's lanes had open when the trace last stopped
** (their E came while nothing recorded): else each GIL gap of the new
** trace would close and reopen them, one more for every stop. Every
** thread that changes a count holds u's GIL, as the caller does.
*/
static void forget_resumes(host_trace *t, host_universe *u) {
  pthread_mutex_lock(&t->mu);
  for (trace_buf *b = t->bufs; b != NULL; b = b->next) {
    if (b->pid == getpid() && b->tid >= (unsigned long)u->trace_lanes &&
        b->tid < (unsigned long)u->trace_lanes + 1000000)
      b->resumes = 0;
  }
  pthread_mutex_unlock(&t->mu);
}

/* Keeps `name` as lane tid's name (mu held); false without memory. */
static bool name_keep(host_trace *t, unsigned long tid, const char *name) {
  if (t->nnames == t->capnames) {
    size_t cap = t->capnames ? t->capnames * 2 : 16;
    struct lane_name *p = realloc(t->names, cap * sizeof *p);
    if (p == NULL) return false;
    t->names = p;
    t->capnames = cap;
  }
  char *s = dup_str(name);
  if (s == NULL) return false;
  t->names[t->nnames].tid = tid;
  t->names[t->nnames++].name = s;
  return true;
}

/*
** (protected, GIL held) Keeps the names of the universe's threads alive
** now (host.thread's enumerate, if it was loaded: no Thread exists
** before), for the lanes of those that started before the trace: their
** thread_name is their Thread's name, not "thread". Argument 1: the trace.
*/
static int names_at_start(lua_State *L) {
  host_trace *t = lua_touserdata(L, 1);
  host_universe *u = host_universe_of(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "host.thread") != LUA_TTABLE) return 0;
  lua_getfield(L, -1, "enumerate");
  lua_call(L, 0, 1);
  luaL_checktype(L, -1, LUA_TTABLE);
  lua_Integer n = luaL_len(L, -1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, -1, i);
    lua_getfield(L, -1, "ident");
    lua_getfield(L, -2, "name");
    lua_Integer ident = lua_tointeger(L, -2);
    const char *name = lua_tostring(L, -1);
    host_tstate *ts = host_tstate_of_ident(L, (unsigned long)ident);
    if (ts != NULL && name != NULL) {
      const char *lane_name = ts == &u->main_ts ? "main" : name;
      pthread_mutex_lock(&t->mu);
      bool ok = name_keep(t, lane_id(ts), lane_name);
      pthread_mutex_unlock(&t->mu);
      if (!ok) return luaL_error(L, "not enough memory");
    }
    lua_pop(L, 3);
  }
  return 0;
}

/*
** trace.start(path [, {limit = MB, coroutines = bool}]): starts recording
** into `path` (written at stop or at exit). Starting twice is an error.
*/
static int l_start(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_argcheck(L, path[0] != '\0', 1, "empty path");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  double limit = DEFAULT_LIMIT_MB;
  bool coroutines = false;
  if (lua_istable(L, 2)) {
    if (lua_getfield(L, 2, "limit") != LUA_TNIL) {
      int isnum;
      limit = lua_tonumberx(L, -1, &isnum);
      luaL_argcheck(L, isnum && limit > 0 && limit <= 1e6, 2,
                    "limit must be a number of megabytes in (0, 1e6]");
    }
    lua_getfield(L, 2, "coroutines");
    coroutines = lua_toboolean(L, -1);
    lua_pop(L, 2);
  }
  host_tstate *ts = check_member(L);
  host_universe *u = ts->u;
  check_owner(L, u);
  if (wants_svg(path) && !svg_available(L))
    return luaL_error(L, "host.trace: SVG output needs host.trace.svg (write .json instead)");
  if (atomic_load(&u->tracing)) return luaL_error(L, "host.trace: already tracing (to %s)",
                                                  u->trace->path);
  FILE *probe = fopen(path, "ab");  /* a path that cannot be written fails now, not at exit */
  if (probe == NULL) return luaL_error(L, "host.trace: cannot write %s: %s", path, strerror(errno));
  fclose(probe);
  if (u->trace == NULL && (u->trace = trace_new()) == NULL)
    return luaL_error(L, "host.trace: not enough memory");
  host_trace *t = u->trace;
  int top = lua_gettop(L);
  const char *script = NULL;  /* before any malloc: _G's __index may raise */
  if (lua_getglobal(L, "arg") == LUA_TTABLE && lua_rawgeti(L, -1, 0) == LUA_TSTRING)
    script = lua_tostring(L, -1);
  char *p = dup_str(path);
  char *pname = malloc(script ? strlen(script) + 6 : 5);
  if (p == NULL || pname == NULL) {
    free(p);
    free(pname);
    return luaL_error(L, "host.trace: not enough memory");
  }
  if (script) sprintf(pname, "host %s", script);
  else strcpy(pname, "host");
  lua_settop(L, top);
  pthread_mutex_lock(&t->mu);
  free(t->path);
  t->path = p;
  free(t->process_name);
  t->process_name = pname;
  t->limit = limit * 1e6;
  t->coroutines = coroutines;
  pthread_mutex_unlock(&t->mu);
  atomic_store(&t->dropped, 0);
  forget_resumes(t, u);
  pthread_mutex_lock(&t->mu);
  names_free(t);
  pthread_mutex_unlock(&t->mu);
  lua_pushcfunction(L, names_at_start);
  lua_pushlightuserdata(L, t);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) lua_pop(L, 1);  /* lanes keep "thread" */
  if (ts == &u->main_ts) name_lane(t, ts, "main");
  else if (ts->tbuf == NULL || ts->tbuf->name == NULL) {
    trace_buf b = {.pid = getpid(), .tid = lane_id(ts)};
    pthread_mutex_lock(&t->mu);
    char *name = dup_str(name_at_start(t, &b));
    pthread_mutex_unlock(&t->mu);
    name_lane(t, ts, name ? name : "thread");
    free(name);
  }
  t->started = now_us();
  atomic_store(&t->on, true);
  atomic_store(&u->tracing, true);
  host_trace_gil(ts, true);  /* it holds the GIL from now on */
  return 0;
}

/* trace.stop() -> path: writes the file and stops recording. */
static int l_stop(lua_State *L) {
  host_tstate *ts = check_member(L);
  host_universe *u = ts->u;
  check_owner(L, u);
  if (u->trace == NULL || !atomic_load(&u->tracing))
    return luaL_error(L, "host.trace: not tracing (call trace.start(path) first)");
  lua_pushstring(L, u->trace->path);
  if (write_trace(L, u) != NULL) return lua_error(L);
  return 1;
}

/* trace.mark(name): an instant on the calling thread's lane. */
static int l_mark(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  host_tstate *ts = check_member(L);
  host_trace *t = recording(ts);
  if (t == NULL) return 0;
  tev e = {.ph = 'i', .cat = CAT_MARK, .name = "mark", .own = dup_str(name), .args = A_EMPTY};
  if (e.own) e.name = e.own;
  record(t, ts, &e);
  return 0;
}

/* trace.counter(name, value): a counter sample. */
static int l_counter(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  lua_Number v = luaL_checknumber(L, 2);
  luaL_argcheck(L, v == v && v - v == 0, 2, "a finite number expected");
  host_tstate *ts = check_member(L);
  host_trace *t = recording(ts);
  if (t == NULL) return 0;
  tev e = {.ph = 'C', .cat = CAT_COUNTER, .name = "counter", .own = dup_str(name),
           .args = A_VALUE, .num = v};
  if (e.own) e.name = e.own;
  record(t, ts, &e);
  return 0;
}

/* trace.enabled() -> boolean. */
static int l_enabled(lua_State *L) {
  host_tstate *ts = member_of(L);
  lua_pushboolean(L, ts != NULL && recording(ts) != NULL);
  return 1;
}

/* The host.trace module. */
int luaopen_host_trace(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"start", l_start}, {"stop", l_stop}, {"mark", l_mark},
    {"counter", l_counter}, {"enabled", l_enabled}, {NULL, NULL}
  };
  luaL_newlib(L, funcs);
  return 1;
}
