/*
** mpi.c: `host.mpi`, futures over MPI in world mode (mpi4py.futures'
** twin), a module loaded by `host` (built as host/mpi.so; the program never
** links libmpi). Under `mpiexec -n N host -l host.mpi.run script.lua`,
** rank 0 runs the script and ranks 1..N-1 serve tasks (mpi.serve); every
** futures.MPIPoolExecutor of rank 0 shares those worker ranks, each pool
** with its own MPI tag.
**
** MPI is one per process, so the world is process-global (`world`, under
** world.mu), the one exception to "no global mutable state": MPI_Init
** runs once per process, whatever universe loads the module first.
**
** Rank 0: a manager (a plain pthread, never touching Lua or the GIL) does
** every MPI call after MPI_Init (MPI_THREAD_SERIALIZED): it hands queued
** items to idle worker ranks and then one more to each one busy with a
** short task, to run next (so a worker that ends a task starts the next
** at once, without a round trip to rank 0; that item is running from
** then on, as in CPython's call queue), sends without blocking, polls results with
** MPI_Improbe while tasks are out (for 200 us yielding the CPU, then
** sleeping from 10 us up to 100 us; while only tasks longer than 1.6 ms
** run, sleeping at once, up to a sixteenth of their time or 1 ms; with
** none out it sleeps until a submit wakes it; a worker rank polls for
** work the same way, its naps growing to 1 ms), and completes futures with their bytes
** (host_future_set_payload), which stay bytes until someone asks. Each
** pool has a collector, a host.Thread of the caller's universe that runs
** done-callbacks and forgets finished futures (as the interpreter pool's
** manager does); it is woken only for callbacks and at the end.
**
** Messages, MPI_BYTE on MPI_COMM_WORLD: rank 0 -> worker, tag = the pool's:
** [u8 INIT][encode(initializer, initargs...)] before the worker's first
** task of that pool, and [u8 TASK][encode(fn, args...)]; tag 0 (empty):
** stop. Worker -> rank 0, same tag: [u8 OK][values] or [u8 ERROR][error,
** remote traceback] or [u8 INIT_FAILED][BrokenProcessPool error, nil].
**
** Exit: an on_exit handler of rank 0 stops the manager, which sends every
** worker the stop message, then calls MPI_Finalize (finalizing with workers
** still waiting deadlocks). Tasks still running at that point (os.exit
** while work was in flight) cannot finish: the job is aborted with a
** message instead of hanging.
*/
#include <dlfcn.h>
#include <sched.h>
#include <signal.h>
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mpi.h>

#include "executor.h"
#include "future.h"
#include "runtime.h"
#include "thread.h"

#define MPOOL_TYPE "host.MPIPoolExecutor"
#define HANDLE_TYPE "host.MPIPoolExecutor.handle"

enum { MSG_INIT = 1, MSG_TASK = 2 };
enum { RES_OK = 0, RES_ERROR = 1, RES_INIT_FAILED = 2 };
#define TAG_STOP 0  /* rank 0 -> worker: stop serving; worker -> rank 0: bye, I exit */
#define MAX_MESSAGE ((size_t)INT_MAX - 1)  /* an MPI count is an int; 1 byte of kind */
#define SPIN_SECONDS 200e-6  /* polling, yielding the CPU, after the last message */
#define NAP_MIN 10e-6        /* then sleeps doubling from this ... */
#define NAP_MAX 1e-3         /* ... up to this (a worker rank waiting for work) */
#define NAP_MAX_MANAGER 100e-6  /* ... or this (rank 0 with short tasks out: each
                                ** nap delays a result), up to NAP_MAX for long ones */
#define AHEAD_MAX 0.1  /* a task goes ahead behind one of a pool whose tasks take less */

typedef struct mpool mpool;

/* A task: queued, in flight on a worker, or done (for the collector). */
typedef struct mitem {
  struct mitem *next;
  host_future *f;   /* one reference */
  mpool *p;         /* one reference */
  char *payload;    /* the encoded task; NULL once sent */
  size_t len;
} mitem;

/*
** One pool (refcounted: the proxy, the handle its collector holds, each
** item). Its fields are used under world.mu.
*/
struct mpool {
  atomic_int refs;
  int tag;
  int max_workers, running;  /* worker ranks that hold an item of it now */
  int outstanding;           /* items queued, on workers, or done and not forgotten */
  double task_seconds;       /* how long its tasks take on a worker (a running mean) */
  char *init;                /* encoded initializer and initargs, or NULL */
  size_t init_len;
  unsigned char *inited;     /* by rank: the initializer was sent there */
  bool shutdown, broken, collector_done, collector_running;
  bool comm;                 /* a CommExecutor's: its end releases the worker ranks */
  unsigned long collector_ident;
  char *broken_payload;      /* the encoded BrokenProcessPool error */
  size_t broken_len;
  char *gone_payload;        /* a CommExecutor's: the encoded error of a rank that left */
  size_t gone_len;
  mitem *done;
  pthread_cond_t done_cv;    /* the collector waits here */
  pthread_cond_t end_cv;     /* shutdown waits here for the collector's end */
};

/* A send of the manager that MPI may still read: buf lives until then. */
typedef struct msend {
  struct msend *next;
  MPI_Request req;
  char *buf;
} msend;

typedef struct mproxy {
  host_object obj;
  mpool *p;  /* one reference */
} mproxy;

typedef struct mhandle {
  mpool *p;
} mhandle;

/* The world of this process (see the file's comment). */
static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;        /* the manager naps here; submit and exit signal it */
  int inited;               /* 0 no, 1 yes, -1 failed */
  int finalized;
  int rank, size;
  char init_error[256];
  mitem *head, *tail;       /* queued items of every pool */
  mitem **busy;             /* by rank: the item a worker runs, or NULL */
  mitem **ahead;            /* by rank: the item sent to run after busy[r], or NULL */
  double *since;            /* by rank: when busy[r] began (about) */
  unsigned char *gone;      /* by rank: it said bye (its script ended; every-rank mode) */
  int next_tag;
  bool world_mode;          /* ranks > 0 serve tasks (mpi.serve, or a CommExecutor) */
  bool release;             /* a CommExecutor ended: the manager stops the workers */
  pthread_cond_t released;  /* ... and says so here */
  bool manager_started, stopping, manager_done;
  pthread_t manager;
  msend *sends;             /* the manager's own (no lock): its sends in flight */
  pid_t pid;                /* the process that initialized MPI */
} world = {.mu = PTHREAD_MUTEX_INITIALIZER, .size = 1, .next_tag = 1};

/* Monotonic seconds. */
static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Drops a reference to p; the last frees it. */
static void mpool_unref(mpool *p) {
  if (atomic_fetch_sub(&p->refs, 1) != 1) return;
  pthread_cond_destroy(&p->done_cv);
  pthread_cond_destroy(&p->end_cv);
  free(p->init);
  free(p->inited);
  free(p->broken_payload);
  free(p->gone_payload);
  free(p);
}

/* ---- the manager (rank 0; no Lua, no GIL) ---- */

/*
** Hands item `it` done to its pool's collector (world.mu held), waking the
** collector when callbacks wait or when it was the pool's last item after
** shutdown.
*/
static void post_done(mitem *it) {
  mpool *p = it->p;
  free(it->payload);
  it->payload = NULL;
  it->next = p->done;
  p->done = it;
  if (host_future_wants_callbacks(it->f) || p->shutdown) pthread_cond_signal(&p->done_cv);
}

/* A copy of n bytes (NULL when memory is short). */
static char *copy_bytes(const char *b, size_t n) {
  char *c = malloc(n ? n : 1);
  if (c != NULL && n) memcpy(c, b, n);
  return c;
}

/*
** Takes pool p's items out of the world's queue (world.mu held) and
** returns them, in queue order, linked by next.
*/
static mitem *take_queued(mpool *p) {
  mitem *taken = NULL, **taken_tail = &taken;
  mitem **link = &world.head;
  world.tail = NULL;
  while (*link != NULL) {
    mitem *it = *link;
    if (it->p != p) {
      world.tail = it;
      link = &it->next;
      continue;
    }
    *link = it->next;
    it->next = NULL;
    *taken_tail = it;
    taken_tail = &it->next;
  }
  return taken;
}

/*
** Breaks pool p with the encoded error `payload` (owned by p from now on;
** world.mu held): its queued items fail with it now, and so do the ones
** still on workers (their results, when they come, are dropped).
*/
static void break_pool(mpool *p, char *payload, size_t len) {
  if (p->broken) {
    free(payload);
    return;
  }
  p->broken = true;
  p->broken_payload = payload;
  p->broken_len = len;
  for (mitem *it = take_queued(p), *next; it != NULL; it = next) {
    next = it->next;
    if (host_future_set_running(it->f))
      host_future_set_payload(it->f, false, copy_bytes(payload, len), len);
    post_done(it);
  }
  for (int r = 1; r < world.size; r++) {
    mitem *on[2] = {world.busy[r], world.ahead[r]};
    for (int k = 0; k < 2; k++)
      if (on[k] != NULL && on[k]->p == p)
        host_future_set_payload(on[k]->f, false, copy_bytes(payload, len), len);
  }
}

/*
** Starts sending kind + payload to rank r with tag (the manager; world.mu
** not held). Never blocks: a blocking MPI_Send of even a small message
** can wait until the worker calls MPI again, i.e. until it ends the task
** it runs, and a task sent ahead would stall the manager that long.
*/
static void send_msg(int r, int tag, int kind, const char *payload, size_t len) {
  msend *s = malloc(sizeof *s);
  char *buf = malloc(len + 1);
  if (s == NULL || buf == NULL) {
    fprintf(stderr, "host.mpi: not enough memory to send a task\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  buf[0] = (char)kind;
  memcpy(buf + 1, payload, len);
  MPI_Isend(buf, (int)(len + 1), MPI_BYTE, r, tag, MPI_COMM_WORLD, &s->req);
  s->buf = buf;
  s->next = world.sends;
  world.sends = s;
}

/*
** Frees the manager's sends that MPI is done with; with `all`, waits for
** each first (every worker has taken its messages or is about to).
*/
static void reap_sends(bool all) {
  for (msend **link = &world.sends; *link != NULL;) {
    msend *s = *link;
    int done = 1;
    if (all) MPI_Wait(&s->req, MPI_STATUS_IGNORE);
    else MPI_Test(&s->req, &done, MPI_STATUS_IGNORE);
    if (!done) {
      link = &s->next;
      continue;
    }
    *link = s->next;
    free(s->buf);
    free(s);
  }
}

/* True when worker rank r holds an item of pool p (world.mu held). */
static bool holds(int r, const mpool *p) {
  return (world.busy[r] != NULL && world.busy[r]->p == p) ||
         (world.ahead[r] != NULL && world.ahead[r]->p == p);
}

/*
** Gives workers the first queued items whose pools may go there (world.mu
** held; released around the sends): first one to each idle worker, then
** one more to each busy worker, to run after its task (CPython's process
** pool queues calls ahead the same way): a worker that ends a task finds
** its next one waiting and never waits for this thread. Only behind short
** tasks (AHEAD_MAX): behind a long one, the round trip saved is small and
** the item would wait there while another worker may be free. A pool goes
** to at most max_workers ranks at once. An item sent is running from then on
** (it can no longer be cancelled). Returns true when it sent.
*/
static bool dispatch(void) {
  bool sent = false;
  for (int pass = 0; pass < 2; pass++) {
    for (int r = 1; r < world.size && world.head != NULL; r++) {
      if (world.gone[r]) continue;
      if (pass == 0 ? world.busy[r] != NULL
                    : world.busy[r] == NULL || world.ahead[r] != NULL ||
                      world.busy[r]->p->task_seconds >= AHEAD_MAX)
        continue;
      mitem **link = &world.head, *prev = NULL;
      while (*link != NULL && !holds(r, (*link)->p) &&
             (*link)->p->running >= (*link)->p->max_workers) {
        prev = *link;
        link = &(*link)->next;
      }
      mitem *it = *link;
      if (it == NULL) continue;
      *link = it->next;
      if (world.tail == it) world.tail = prev;
      mpool *p = it->p;
      if (!host_future_set_running(it->f)) {  /* cancelled while queued */
        post_done(it);
        r--;  /* this worker's slot is still free */
        continue;
      }
      if (!holds(r, p)) p->running++;
      if (pass == 0) world.since[r] = now();
      *(pass == 0 ? &world.busy[r] : &world.ahead[r]) = it;
      bool init = p->init != NULL && !p->inited[r];
      p->inited[r] = 1;
      pthread_mutex_unlock(&world.mu);
      if (init) send_msg(r, p->tag, MSG_INIT, p->init, p->init_len);
      send_msg(r, p->tag, MSG_TASK, it->payload, it->len);
      pthread_mutex_lock(&world.mu);
      free(it->payload);
      it->payload = NULL;
      sent = true;
    }
  }
  return sent;
}

/*
** The manager's longest nap with tasks out (world.mu held): a sixteenth of
** the shortest mean task time among the items running, between
** NAP_MAX_MANAGER and NAP_MAX. A result then waits at most ~6 % of its
** task's time to be seen (a worker busy with a short task has its next
** already), and while long tasks run the manager seldom wakes.
*/
static double nap_cap(void) {
  double shortest = NAP_MAX * 16;
  for (int r = 1; r < world.size; r++)
    if (world.busy[r] != NULL && world.busy[r]->p->task_seconds < shortest)
      shortest = world.busy[r]->p->task_seconds;
  double cap = shortest / 16;
  return cap < NAP_MAX_MANAGER ? NAP_MAX_MANAGER : cap;
}

/* The number of items on workers, running or sent ahead (world.mu held). */
static int items_out(void) {
  int n = 0;
  for (int r = 1; r < world.size; r++) n += (world.busy[r] != NULL) + (world.ahead[r] != NULL);
  return n;
}

/*
** Takes item `it` off worker rank r, where it ran (world.mu held): the
** item sent ahead, if any, runs there now. Its time goes into its pool's
** running mean.
*/
static void take_off(int r, mitem *it) {
  double t = now();
  it->p->task_seconds += (t - world.since[r] - it->p->task_seconds) / 4;
  world.since[r] = t;
  world.busy[r] = world.ahead[r];
  world.ahead[r] = NULL;
  if (!holds(r, it->p)) it->p->running--;
}

/*
** When every worker rank has said bye (world.mu held), breaks the pools
** of the queued items: nobody is left to run them.
*/
static void break_if_all_gone(void) {
  for (int k = 1; k < world.size; k++)
    if (!world.gone[k]) return;
  while (world.head != NULL) {
    mpool *p = world.head->p;
    if (p->gone_payload == NULL) return;
    break_pool(p, copy_bytes(p->gone_payload, p->gone_len), p->gone_len);
  }
}

/*
** Rank r said bye (world.mu held): its script ended without serving a
** CommExecutor of rank 0 (which every rank must call). No task goes there
** again; the pool of the task it was given breaks, and so does every
** pool with queued work once no worker rank is left.
*/
static void take_bye(int r) {
  world.gone[r] = 1;
  mitem *it;
  while ((it = world.busy[r]) != NULL) {
    mpool *p = it->p;
    take_off(r, it);
    if (p->gone_payload == NULL) {  /* world mode: workers never say bye */
      pthread_mutex_unlock(&world.mu);
      fprintf(stderr, "host.mpi: worker rank %d left while it ran a task\n", r);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    host_future_set_payload(it->f, false, copy_bytes(p->gone_payload, p->gone_len), p->gone_len);
    break_pool(p, copy_bytes(p->gone_payload, p->gone_len), p->gone_len);
    post_done(it);
  }
  break_if_all_gone();
}

/* Takes the result message `msg` of rank r (world.mu not held). */
static void take_result(MPI_Message *msg, MPI_Status *st) {
  int count = 0;
  MPI_Get_count(st, MPI_BYTE, &count);
  char *buf = malloc(count > 0 ? (size_t)count : 1);
  if (buf == NULL) {
    fprintf(stderr, "host.mpi: not enough memory for a result\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Mrecv(buf, count, MPI_BYTE, msg, MPI_STATUS_IGNORE);
  int r = st->MPI_SOURCE;
  pthread_mutex_lock(&world.mu);
  if (st->MPI_TAG == TAG_STOP && r > 0 && r < world.size) {
    free(buf);
    take_bye(r);
    pthread_mutex_unlock(&world.mu);
    return;
  }
  mitem *it = r > 0 && r < world.size ? world.busy[r] : NULL;
  if (it == NULL || count < 1 || st->MPI_TAG != it->p->tag) {
    pthread_mutex_unlock(&world.mu);
    fprintf(stderr, "host.mpi: rank %d sent a message it was not asked for (tag %d)\n", r,
            st->MPI_TAG);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  take_off(r, it);
  int kind = buf[0];
  size_t len = (size_t)count - 1;
  memmove(buf, buf + 1, len);
  if (kind == RES_INIT_FAILED) {
    host_future_set_payload(it->f, false, copy_bytes(buf, len), len);
    break_pool(it->p, buf, len);
  } else {
    host_future_set_payload(it->f, kind == RES_OK, buf, len);
  }
  post_done(it);
  pthread_mutex_unlock(&world.mu);
}

/* Sleeps until the deadline `t` (monotonic seconds) or a signal of world.cv. */
static void nap_until(double t) {
  struct timespec ts;
  ts.tv_sec = (time_t)t;
  ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_cond_timedwait(&world.cv, &world.mu, &ts);
}

/* Tells every worker rank to leave mpi.serve (in world mode). */
static void stop_workers(void) {
  reap_sends(true);
  if (!world.world_mode) return;
  for (int r = 1; r < world.size; r++) MPI_Send(NULL, 0, MPI_BYTE, r, TAG_STOP, MPI_COMM_WORLD);
}

/*
** The manager thread: dispatches and polls until the exit handler sets
** `stopping`; then, with no task on a worker, tells every worker to stop,
** else aborts the job (a task that never ends would hang MPI_Finalize).
*/
static void *manager_main(void *arg) {
  (void)arg;
  double last = now(), nap = NAP_MIN;
  pthread_mutex_lock(&world.mu);
  for (;;) {
    if (world.stopping) break;
    if (world.release && items_out() == 0) {  /* a CommExecutor is done */
      pthread_mutex_unlock(&world.mu);
      stop_workers();
      pthread_mutex_lock(&world.mu);
      world.release = false;
      world.world_mode = false;
      pthread_cond_broadcast(&world.released);
      continue;
    }
    if (dispatch()) {
      last = now();
      nap = NAP_MIN;
    }
    int busy = items_out();
    if (busy == 0) break_if_all_gone();
    if (busy == 0 && !world.release) {  /* nothing to poll for: sleep until a submit */
      pthread_cond_wait(&world.cv, &world.mu);
      last = now();
      nap = NAP_MIN;
      continue;
    }
    double cap = nap_cap();
    pthread_mutex_unlock(&world.mu);
    reap_sends(false);
    int flag = 0;
    MPI_Message msg;
    MPI_Status st;
    MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &msg, &st);
    if (flag) {
      take_result(&msg, &st);
      last = now();
      nap = NAP_MIN;
      pthread_mutex_lock(&world.mu);
      continue;
    }
    double t = now();
    if (t - last < SPIN_SECONDS && cap <= NAP_MAX_MANAGER) {  /* spin for short tasks only */
      sched_yield();
      pthread_mutex_lock(&world.mu);
      continue;
    }
    pthread_mutex_lock(&world.mu);
    nap_until(t + nap);
    nap = nap * 2 < cap ? nap * 2 : cap;
  }
  int busy = items_out();
  world.manager_done = true;
  pthread_mutex_unlock(&world.mu);
  if (busy > 0) {
    fprintf(stderr, "host.mpi: rank 0 is exiting while %d task%s still run%s on worker "
            "ranks: aborting the MPI job\n", busy, busy == 1 ? "" : "s", busy == 1 ? "s" : "");
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  stop_workers();
  return NULL;
}

/*
** The exit handler of every rank (on_exit: it knows the status). Rank 0
** stops its manager (which stops the workers) before MPI_Finalize; a
** worker rank finalized in mpi.serve already. A rank that exits with work
** left in flight aborts the job rather than hang.
*/
static void at_exit(int status, void *arg) {
  (void)arg;
  (void)status;
  pthread_mutex_lock(&world.mu);
  if (world.inited != 1 || world.finalized || world.pid != getpid()) {
    pthread_mutex_unlock(&world.mu);
    return;
  }
  world.finalized = 1;
  world.stopping = true;
  bool started = world.manager_started;
  pthread_cond_broadcast(&world.cv);
  pthread_mutex_unlock(&world.mu);
  if (started) {
    pthread_join(world.manager, NULL);
  } else if (world.rank == 0) {
    stop_workers();
  } else if (world.world_mode) {  /* a worker rank that left mpi.serve's loop by an error */
    fprintf(stderr, "host.mpi: worker rank %d is exiting while rank 0 still runs: aborting "
            "the MPI job\n", world.rank);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, status ? status : 1);
  } else {  /* every-rank mode: rank 0's CommExecutor must not wait for this rank */
    MPI_Send(NULL, 0, MPI_BYTE, 0, TAG_STOP, MPI_COMM_WORLD);
  }
  MPI_Finalize();
}

/* ---- starting MPI ---- */

/*
** Refuses, before MPI_Init, a launch by another MPI's mpiexec (MPICH's
** Hydra sets PMI_* and no Open MPI variable): Open MPI would start each
** rank as a singleton, N separate copies of the script. Returns a message
** or NULL.
*/
static const char *launcher_mismatch(char *buf, size_t n) {
  const char *pmi = getenv("PMI_SIZE");
  if (pmi == NULL) pmi = getenv("MPI_LOCALNRANKS");
  if (pmi == NULL && getenv("HYDRA_CONTROL_FD") == NULL && getenv("PMI_FD") == NULL) return NULL;
  if (getenv("OMPI_COMM_WORLD_SIZE") != NULL || getenv("PMIX_RANK") != NULL) return NULL;
  snprintf(buf, n, "host.mpi was built with Open MPI but launched by another MPI's mpiexec "
           "(MPICH's Hydra: PMI_SIZE=%s); each rank would run alone: run it with Open MPI's "
           "mpiexec (mpiexec.openmpi)", pmi != NULL ? pmi : "?");
  return buf;
}

/*
** Initializes MPI once per process; raises with the reason when it cannot.
** The first call releases the GIL: MPI_Init takes a good part of a second
** (it starts Open MPI's runtime) and the universe's other threads go on.
*/
static void world_init(lua_State *L) {
  pthread_mutex_lock(&world.mu);
  bool first = world.inited == 0;
  pthread_mutex_unlock(&world.mu);
  bool in_child = host_in_fork_child(L);
  if (first) host_gil_release(L);
  pthread_mutex_lock(&world.mu);
  if (world.inited == 0) {
    world.inited = -1;
    host_cond_init(&world.cv);        /* nap_until counts on CLOCK_MONOTONIC */
    host_cond_init(&world.released);
    char why[256];
    const char *bad = launcher_mismatch(why, sizeof why);
    int provided = 0;
    /* a pool's child of a launched rank inherits its OMPI_* variables: its
    ** MPI_Init would take the parent's place in the job */
    bool child = in_child &&
                 (getenv("OMPI_COMM_WORLD_SIZE") != NULL || getenv("PMIX_RANK") != NULL);
    if (child) {
      snprintf(world.init_error, sizeof world.init_error,
               "host.mpi cannot be used in a process forked from an MPI rank");
    } else if (bad != NULL) {
      snprintf(world.init_error, sizeof world.init_error, "%s", bad);
    } else {
      /* Open MPI's plugins need libmpi's symbols global; Lua loaded us RTLD_LOCAL */
      dlopen("libmpi.so.40", RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
      int argc = 0;
      char **argv = NULL;
      MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
      MPI_Comm_rank(MPI_COMM_WORLD, &world.rank);
      MPI_Comm_size(MPI_COMM_WORLD, &world.size);
      world.busy = calloc((size_t)world.size, sizeof *world.busy);
      world.ahead = calloc((size_t)world.size, sizeof *world.ahead);
      world.since = calloc((size_t)world.size, sizeof *world.since);
      world.gone = calloc((size_t)world.size, 1);
      if (provided < MPI_THREAD_SERIALIZED)
        snprintf(world.init_error, sizeof world.init_error,
                 "host.mpi needs MPI_THREAD_SERIALIZED; this MPI gives level %d", provided);
      else if (world.busy == NULL || world.ahead == NULL || world.since == NULL ||
               world.gone == NULL)
        snprintf(world.init_error, sizeof world.init_error, "not enough memory");
      else
        world.inited = 1;
      world.pid = getpid();
      on_exit(at_exit, NULL);
      if (world.inited != 1) world.finalized = 1;
    }
  }
  int ok = world.inited;
  bool forked = ok == 1 && world.pid != getpid();
  pthread_mutex_unlock(&world.mu);
  if (first) host_gil_acquire(L);
  if (ok != 1) luaL_error(L, "%s", world.init_error);
  if (forked) luaL_error(L, "host.mpi cannot be used in a process forked from an MPI rank");
}

/* ---- a worker rank ---- */

/*
** Encodes the failure on top (the error and its traceback from
** host_pcall_task, both popped) into *buf as [kind][error, traceback
** text]; an error the codec cannot carry crosses as its text.
*/
static void encode_failure(lua_State *L, int kind, char **buf, size_t *len) {
  char who[48];
  snprintf(who, sizeof who, "MPI worker rank %d", world.rank);
  host_executor_remote_traceback(L, who);
  int err = lua_gettop(L) - 1;
  if (kind == RES_INIT_FAILED) {  /* a BrokenProcessPool error that says it all */
    const char *tb = lua_tostring(L, -1);
    lua_pushvalue(L, err);
    const char *msg = host_error_tostring(L);
    const char *why = lua_pushfstring(L, "an MPI initializer failed on rank %d: %s%s%s%s",
                                      world.rank, msg, tb != NULL ? "\n" : "",
                                      tb != NULL ? tb : "", tb != NULL ? "\n" : "");
    host_error_push(L, "BrokenProcessPool", why, 0);
    lua_replace(L, err);
    lua_settop(L, err);
    lua_pushnil(L);
  }
  char *b = NULL;
  if (host_codec_encode(L, err, 2, &b, len) != LUA_OK) {
    lua_pop(L, 1);
    lua_pushvalue(L, err);
    host_error_tostring(L);
    lua_replace(L, err);
    if (host_codec_encode(L, err, 2, &b, len) != LUA_OK) lua_error(L);
  }
  lua_settop(L, err - 1);
  *buf = malloc(*len + 1);
  if (*buf == NULL) {
    free(b);
    luaL_error(L, "not enough memory");
  }
  (*buf)[0] = (char)kind;
  memcpy(*buf + 1, b, *len);
  free(b);
  *len += 1;
}

/*
** Receives the next message from rank 0 (GIL released while it polls,
** yielding for 200 us, then napping up to 1 ms). Returns a malloc'd buffer,
** its length and tag.
*/
static char *worker_recv(lua_State *L, int *count, int *tag) {
  MPI_Message msg;
  MPI_Status st;
  int flag = 0;
  double last = now(), nap = NAP_MIN;
  host_gil_release(L);
  for (;;) {
    MPI_Improbe(0, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &msg, &st);
    if (flag) break;
    double t = now();
    if (t - last < SPIN_SECONDS) {
      sched_yield();
      continue;
    }
    struct timespec ts = {0, (long)(nap * 1e9)};
    nanosleep(&ts, NULL);
    nap = nap * 2 < NAP_MAX ? nap * 2 : NAP_MAX;
  }
  MPI_Get_count(&st, MPI_BYTE, count);
  char *buf = malloc(*count > 0 ? (size_t)*count : 1);
  if (buf == NULL) {
    fprintf(stderr, "host.mpi: not enough memory on rank %d\n", world.rank);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Mrecv(buf, *count, MPI_BYTE, &msg, MPI_STATUS_IGNORE);
  host_gil_acquire(L);
  *tag = st.MPI_TAG;
  return buf;
}

/*
** Runs one INIT or TASK message of the pool `tag` (inits at index 1:
** tag -> true, or the encoded failure of its initializer). Returns the
** reply of a task (malloc'd) or NULL for an initializer.
*/
static char *serve_one(lua_State *L, int tag, const char *buf, size_t len, size_t *outlen) {
  int base = lua_gettop(L);
  int kind = buf[0], n = 0;
  if (kind == MSG_TASK && lua_rawgeti(L, 1, tag) == LUA_TSTRING) {  /* its initializer failed */
    size_t l;
    const char *s = lua_tolstring(L, -1, &l);
    char *out = copy_bytes(s, l);
    *outlen = l;
    lua_settop(L, base);
    return out;
  }
  lua_settop(L, base);
  int status = host_codec_decode(L, buf + 1, len - 1, HOST_CODEC_FUNCTIONS, &n);
  bool chunk = status == LUA_OK && host_executor_is_chunk(L, base + 1);
  if (status == LUA_OK) status = host_pcall_task(L, n - 1, kind == MSG_INIT ? 0 : LUA_MULTRET);
  else lua_pushnil(L);  /* a payload that does not decode has no traceback */
  char *out = NULL;
  if (kind == MSG_INIT) {
    if (status == LUA_OK) {
      lua_pushboolean(L, 1);
    } else {
      encode_failure(L, RES_INIT_FAILED, &out, outlen);
      lua_pushlstring(L, out, *outlen);
      free(out);
      out = NULL;
    }
    lua_rawseti(L, 1, tag);
    lua_settop(L, base);
    return NULL;
  }
  if (status != LUA_OK) {
    encode_failure(L, RES_ERROR, &out, outlen);
  } else {
    char *b;
    size_t l;
    int st = host_executor_encode_results(L, base + 1, chunk, &b, &l);
    if (st == LUA_OK && l >= MAX_MESSAGE) {
      free(b);
      lua_pushliteral(L, "cannot send the result back: it is larger than an MPI message can be "
                      "(2 GiB)");
      st = LUA_ERRRUN;
    }
    if (st != LUA_OK) {
      lua_pushnil(L);
      encode_failure(L, RES_ERROR, &out, outlen);
    } else {
      out = malloc(l + 1);
      if (out == NULL) luaL_error(L, "not enough memory");
      out[0] = RES_OK;
      memcpy(out + 1, b, l);
      free(b);
      *outlen = l + 1;
    }
  }
  lua_settop(L, base);
  return out;
}

static void serve_loop(lua_State *L);

/*
** mpi.serve() -> served: world mode (host.mpi.run calls it on every rank).
** Rank 0 returns false at once and runs the script; its exit stops the
** workers. Any other rank serves the tasks rank 0 sends until it says
** stop, finalizes MPI and returns true: its process should exit then.
*/
static int mpi_serve(lua_State *L) {
  world_init(L);
  pthread_mutex_lock(&world.mu);
  /* a task calling it on a worker rank would serve inside the task and
  ** finalize MPI under it: the job would hang */
  bool again = world.rank != 0 && world.world_mode, done = world.finalized;
  if (!again && !done) world.world_mode = true;
  pthread_mutex_unlock(&world.mu);
  if (again)
    return luaL_error(L, "mpi.serve: rank %d serves rank 0's tasks already (a task cannot call it)",
                      world.rank);
  if (done) return luaL_error(L, "mpi.serve: MPI is finalized on rank %d", world.rank);
  if (world.rank == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_settop(L, 0);
  serve_loop(L);
  pthread_mutex_lock(&world.mu);
  world.finalized = 1;
  pthread_mutex_unlock(&world.mu);
  MPI_Finalize();
  lua_pushboolean(L, 1);
  return 1;
}

/*
** Serves rank 0's tasks until it says stop (a worker rank, world_mode set;
** the stack empty). Leaves the stack as it found it. A result goes back
** without blocking (a blocking MPI_Send waits for rank 0's manager to poll)
** and the worker goes on to the next task, often there already; the send
** is completed before the next one.
*/
static void serve_loop(lua_State *L) {
  MPI_Request sending = MPI_REQUEST_NULL;
  char *sent = NULL;  /* the buffer of `sending` */
  lua_newtable(L);  /* 1: tag -> initializer outcome */
  for (;;) {
    int count = 0, tag = 0;
    char *buf = worker_recv(L, &count, &tag);
    if (tag == TAG_STOP) {  /* rank 0 has every result: the last send is done */
      free(buf);
      break;
    }
    if (count < 1) {
      free(buf);
      continue;
    }
    size_t outlen = 0;
    char *out = serve_one(L, tag, buf, (size_t)count, &outlen);
    free(buf);
    host_flush_std();
    if (out != NULL) {
      host_gil_release(L);
      MPI_Wait(&sending, MPI_STATUS_IGNORE);
      free(sent);
      MPI_Isend(out, (int)outlen, MPI_BYTE, 0, tag, MPI_COMM_WORLD, &sending);
      sent = out;
      host_gil_acquire(L);
    }
  }
  MPI_Wait(&sending, MPI_STATUS_IGNORE);
  free(sent);
  lua_pop(L, 1);
  pthread_mutex_lock(&world.mu);
  world.world_mode = false;
  pthread_mutex_unlock(&world.mu);
}

/* ---- the pool, in the caller's universe (GIL held) ---- */

/* The pool of the handle at idx (the collector's upvalue). */
static mpool *handle_pool(lua_State *L, int idx) {
  mhandle *h = luaL_checkudata(L, idx, HANDLE_TYPE);
  if (h->p == NULL) luaL_error(L, "attempt to use a finalized %s", MPOOL_TYPE);
  return h->p;
}

/* __gc of the handle: drops its reference. */
static int handle_gc(lua_State *L) {
  mhandle *h = luaL_checkudata(L, 1, HANDLE_TYPE);
  if (h->p != NULL) mpool_unref(h->p);
  h->p = NULL;
  return 0;
}

/*
** Takes p's done list and runs their callbacks (if not run yet) through
** their proxies in the table at inflight, which forgets them.
*/
static void forget_done(lua_State *L, mpool *p, int inflight) {
  pthread_mutex_lock(&world.mu);
  mitem *done = p->done;
  p->done = NULL;
  pthread_mutex_unlock(&world.mu);
  int n = 0;
  while (done != NULL) {
    mitem *next = done->next;
    lua_pushlightuserdata(L, done->f);
    if (lua_rawget(L, inflight) != LUA_TNIL) host_future_run_callbacks(L, -1);
    lua_pop(L, 1);
    lua_pushlightuserdata(L, done->f);
    lua_pushnil(L);
    lua_rawset(L, inflight);
    host_future_unref(done->f);
    free(done);
    n++;
    done = next;
  }
  if (n > 0) {
    pthread_mutex_lock(&world.mu);
    p->outstanding -= n;
    pthread_mutex_unlock(&world.mu);
    for (int i = 0; i < n; i++) mpool_unref(p);
  }
}

/*
** The collector, a host.Thread of the caller's universe: runs the done
** callbacks and forgets finished futures until the pool is shut down and
** has nothing left. Upvalue 1: the handle; 2: the futures in flight.
*/
static int collector_main(lua_State *L) {
  mpool *p = handle_pool(L, lua_upvalueindex(1));
  lua_pushvalue(L, lua_upvalueindex(2));
  int inflight = lua_gettop(L);
  host_deadline never = host_deadline_in(-1);
  pthread_mutex_lock(&world.mu);
  p->collector_ident = host_thread_ident();
  p->collector_running = true;
  for (;;) {
    if (p->done != NULL) {
      pthread_mutex_unlock(&world.mu);
      forget_done(L, p, inflight);
      pthread_mutex_lock(&world.mu);
      continue;
    }
    if (p->shutdown && p->outstanding == 0) break;
    host_cond_wait(L, &world.mu, &p->done_cv, &never);
    pthread_mutex_lock(&world.mu);
  }
  if (p->comm) {  /* the worker ranks go back to their scripts */
    world.release = true;
    pthread_cond_signal(&world.cv);
    while (world.release) {
      host_cond_wait(L, &world.mu, &world.released, &never);
      pthread_mutex_lock(&world.mu);
    }
  }
  p->collector_done = true;
  p->collector_running = false;
  pthread_cond_broadcast(&p->end_cv);
  pthread_mutex_unlock(&world.mu);
  return 0;
}

/* The pool at 1 (raises for a finalized one). */
static mproxy *check_mpool(lua_State *L) {
  return host_object_check(L, 1, MPOOL_TYPE);
}

/*
** Pushes the error a submit to p gets now and returns true; false when p
** takes work.
*/
static bool refused(lua_State *L, mpool *p) {
  pthread_mutex_lock(&world.mu);
  bool broken = p->broken, shut = p->shutdown || world.stopping;
  char *b = broken ? copy_bytes(p->broken_payload, p->broken_len) : NULL;
  size_t len = p->broken_len;
  pthread_mutex_unlock(&world.mu);
  if (broken) {
    int n = 0;
    if (b != NULL && host_codec_decode(L, b, len, HOST_CODEC_FUNCTIONS, &n) == LUA_OK && n >= 1)
      lua_settop(L, lua_gettop(L) - n + 1);
    else if (b == NULL)
      lua_pushliteral(L, "not enough memory");
    free(b);
  } else if (shut) {
    lua_pushliteral(L, "cannot schedule new futures after shutdown");
  }
  return broken || shut;
}

/* ex:submit(fn, ...) -> Future; the arguments are encoded at once. */
static int mpool_submit(lua_State *L) {
  mproxy *px = check_mpool(L);
  mpool *p = px->p;
  host_check_callable(L, 2);
  int nvalues = lua_gettop(L) - 1;
  if (refused(L, p)) return lua_error(L);
  mitem *it = calloc(1, sizeof *it);
  if (it == NULL) return luaL_error(L, "not enough memory");
  if (host_executor_encode_call(L, 2, nvalues, &it->payload, &it->len) != LUA_OK) {
    free(it);
    return lua_error(L);
  }
  if (it->len >= MAX_MESSAGE) {
    free(it->payload);
    free(it);
    return luaL_error(L, "cannot submit: the task is larger than an MPI message can be (2 GiB)");
  }
  lua_getiuservalue(L, 1, 1);
  int inflight = lua_gettop(L);
  forget_done(L, p, inflight);
  host_future *f = host_future_push_new(L);  /* may raise: it is not queued yet */
  int fut = lua_gettop(L);
  lua_pushcfunction(L, host_executor_decoder);
  host_future_set_decoder(L, fut);
  lua_pushlightuserdata(L, f);
  lua_pushvalue(L, fut);
  lua_rawset(L, inflight);
  pthread_mutex_lock(&world.mu);
  /* the GIL may have gone since the check above (the codec's lua_pcall, a
  ** finalizer) to a thread that shut the pool down, after which its
  ** collector may have ended: an item queued now would never complete */
  bool open = !p->broken && !p->shutdown && !world.stopping;
  if (open) {
    it->f = f;
    host_future_ref(f);
    it->p = p;
    atomic_fetch_add(&p->refs, 1);
    p->outstanding++;
    if (world.tail != NULL) world.tail->next = it;
    else world.head = it;
    world.tail = it;
    pthread_cond_signal(&world.cv);
  }
  pthread_mutex_unlock(&world.mu);
  if (open) return 1;
  free(it->payload);
  free(it);
  lua_pushlightuserdata(L, f);
  lua_pushnil(L);
  lua_rawset(L, inflight);
  refused(L, p);
  return lua_error(L);
}

/*
** ex:shutdown{wait = true, cancel_futures = false}: refuses work from now
** on; cancel_futures cancels what no worker has started.
*/
static int mpool_shutdown(lua_State *L) {
  mproxy *px = check_mpool(L);
  mpool *p = px->p;
  bool wait, cancel, interrupt;
  host_executor_shutdown_options(L, 2, &wait, &cancel, &interrupt);
  (void)interrupt;  /* a task on another rank cannot be interrupted */
  lua_getiuservalue(L, 1, 1);
  int inflight = lua_gettop(L);
  mitem *cancelled = NULL;
  pthread_mutex_lock(&world.mu);
  p->shutdown = true;
  if (cancel) cancelled = take_queued(p);
  pthread_cond_signal(&p->done_cv);
  bool own = p->collector_running && p->collector_ident == host_thread_ident();
  pthread_mutex_unlock(&world.mu);
  while (cancelled != NULL) {  /* each is cancelled, then forgotten by the collector */
    mitem *next = cancelled->next;
    lua_pushlightuserdata(L, cancelled->f);
    if (lua_rawget(L, inflight) != LUA_TNIL) host_future_cancel(L, -1);
    lua_pop(L, 1);
    pthread_mutex_lock(&world.mu);
    free(cancelled->payload);
    cancelled->payload = NULL;
    cancelled->next = p->done;
    p->done = cancelled;
    pthread_cond_signal(&p->done_cv);
    pthread_mutex_unlock(&world.mu);
    cancelled = next;
  }
  if (!wait) return 0;
  if (own)
    return luaL_error(L, "cannot join current thread (a done-callback cannot wait for its own pool)");
  host_deadline never = host_deadline_in(-1);
  pthread_mutex_lock(&world.mu);
  while (!p->collector_done) {
    if (host_cond_wait(L, &world.mu, &p->end_cv, &never) == HOST_WAIT_INTERRUPTED)
      return host_raise_interrupt(L);
    pthread_mutex_lock(&world.mu);
  }
  pthread_mutex_unlock(&world.mu);
  return 0;
}

/* __gc: the program dropped the pool: shutdown{wait = false}. */
static int mpool_gc(lua_State *L) {
  mproxy *px = host_object_finalize(L, MPOOL_TYPE);
  if (px == NULL) return 0;
  host_executor_track(L, 1, MPOOL_TYPE, false);
  if (px->p != NULL) {
    pthread_mutex_lock(&world.mu);
    px->p->shutdown = true;
    pthread_cond_signal(&px->p->done_cv);
    pthread_mutex_unlock(&world.mu);
    mpool_unref(px->p);
    px->p = NULL;
  }
  return 0;
}

/* __tostring: "host.MPIPoolExecutor (2 workers, tag 1): 0x...". */
static int mpool_tostring(lua_State *L) {
  if (host_object_tostring_finalized(L, MPOOL_TYPE)) return 1;
  mproxy *px = check_mpool(L);
  pthread_mutex_lock(&world.mu);
  bool broken = px->p->broken, shut = px->p->shutdown;
  pthread_mutex_unlock(&world.mu);
  lua_pushfstring(L, "host.MPIPoolExecutor (%d workers, tag %d%s%s): %p", px->p->max_workers,
                  px->p->tag, broken ? ", broken" : "", shut ? ", shut down" : "",
                  (void *)px->p);
  return 1;
}

/* Starts the manager thread once (world.mu held); 0 or an errno value. */
static int start_manager(void) {
  if (world.manager_started) return 0;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);  /* signals stay the script's */
  int rc = pthread_create(&world.manager, NULL, manager_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc == 0) world.manager_started = true;
  return rc;
}

/*
** The pool behind futures.MPIPoolExecutor{max_workers =, initializer =,
** initargs =} and (comm true) mpi.CommExecutor on rank 0: a pool over the
** world's worker ranks (max_workers: at most that many tasks at once;
** default and cap: every worker rank).
*/
static int pool_new(lua_State *L, bool comm) {
  static const char *const known[] = {"max_workers", "initializer", "initargs", NULL};
  world_init(L);
  if (world.rank != 0)
    return luaL_error(L, "MPIPoolExecutor: only rank 0 runs the script's pools (this is rank %d)",
                      world.rank);
  if (world.size < 2 || !world.world_mode)
    return luaL_error(L, "MPIPoolExecutor: %s: run the script with "
                      "mpiexec -n N host -l host.mpi.run script.lua (N >= 2)",
                      world.size < 2 ? "no worker ranks (the world has 1 rank)"
                                     : "the other ranks do not serve tasks");
  lua_Integer n = host_executor_options(L, world.size - 1, known);
  if (n > world.size - 1) n = world.size - 1;
  if (host_exiting(L)) return luaL_error(L, "cannot start a new pool after interpreter shutdown");
  lua_settop(L, 3);
  mproxy *px = host_object_new(L, sizeof *px, MPOOL_TYPE, 2);
  int idx = lua_gettop(L);
  mpool *p = calloc(1, sizeof *p);
  if (p == NULL) return luaL_error(L, "not enough memory");
  atomic_init(&p->refs, 1);
  host_cond_init(&p->done_cv);
  host_cond_init(&p->end_cv);
  p->max_workers = (int)n;
  p->comm = comm;
  px->p = p;  /* from here, __gc frees it */
  p->inited = calloc((size_t)world.size, 1);
  if (p->inited == NULL) return luaL_error(L, "not enough memory");
  int first = lua_gettop(L) + 1;
  int nargs = host_executor_push_initializer(L, 1);
  if (nargs >= 0 && host_executor_encode_initializer(L, first, nargs + 1, &p->init,
                                                    &p->init_len) != LUA_OK)
    return lua_error(L);
  if (p->init_len >= MAX_MESSAGE)
    return luaL_error(L, "cannot send the initializer: it is larger than an MPI message can be "
                      "(2 GiB)");
  lua_settop(L, idx);
  if (comm) {  /* what its futures get when a rank ends without calling CommExecutor */
    host_error_push(L, "BrokenProcessPool", "a rank ended its script without calling "
                    "mpi.CommExecutor (every rank must call it)", 0);
    lua_pushnil(L);
    if (host_codec_encode(L, idx + 1, 2, &p->gone_payload, &p->gone_len) != LUA_OK)
      return luaL_error(L, "CommExecutor: %s", lua_tostring(L, -1));
    lua_settop(L, idx);
  }
  pthread_mutex_lock(&world.mu);
  int tag = world.next_tag++;
  int e = world.stopping ? ECANCELED : start_manager();
  pthread_mutex_unlock(&world.mu);
  if (e != 0) {
    p->shutdown = true;
    errno = e;
    return luaL_fileresult(L, 0, "pthread_create");
  }
  p->tag = tag;
  lua_newtable(L);
  lua_setiuservalue(L, idx, 1);
  mhandle *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->p = NULL;
  luaL_setmetatable(L, HANDLE_TYPE);
  atomic_fetch_add(&p->refs, 1);
  h->p = p;
  lua_setiuservalue(L, idx, 2);
  lua_getiuservalue(L, idx, 2);
  lua_getiuservalue(L, idx, 1);
  lua_pushcclosure(L, collector_main, 2);
  int rc = host_thread_start(L, "MPIPoolCollector", false, 0);
  if (rc != 0) return luaL_error(L, "cannot start thread: %s", strerror(rc));
  lua_settop(L, idx);
  host_executor_track(L, idx, MPOOL_TYPE, true);
  return 1;
}

/* futures.MPIPoolExecutor{...}: see pool_new. */
static int mpool_new(lua_State *L) {
  return pool_new(L, false);
}

/*
** mpi.CommExecutor{root = 0, max_workers =, initializer =, initargs =}, for
** a script that every rank runs (mpiexec -n N host script.lua): on the
** root, an executor over the other ranks; on every other rank it serves
** the root's tasks until the root shuts that executor down, then returns
** nil (mpi4py's MPICommExecutor). Use it with <close> and test for nil.
*/
static int comm_new(lua_State *L) {
  static const char *const known[] = {"root", "max_workers", "initializer", "initargs", NULL};
  world_init(L);
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  host_check_options(L, 1, known);
  lua_getfield(L, 1, "root");
  int isint = 1;
  lua_Integer root = lua_isnil(L, -1) ? 0 : lua_tointegerx(L, -1, &isint);
  lua_pop(L, 1);
  luaL_argcheck(L, isint && root == 0, 1, "'root' must be 0 (the rank that runs the pools)");
  if (world.size < 2)
    return luaL_error(L, "CommExecutor: no worker ranks (the world has 1 rank): run the script "
                      "with mpiexec -n N (N >= 2)");
  pthread_mutex_lock(&world.mu);
  bool busy = world.world_mode;
  if (!busy) world.world_mode = true;
  pthread_mutex_unlock(&world.mu);
  if (busy)
    return luaL_error(L, "CommExecutor: the worker ranks serve another executor already");
  if (world.rank != 0) {
    lua_settop(L, 0);
    serve_loop(L);
    lua_pushnil(L);
    return 1;
  }
  lua_createtable(L, 0, 3);  /* the options without root */
  static const char *const pass[] = {"max_workers", "initializer", "initargs"};
  for (int i = 0; i < 3; i++) {
    lua_getfield(L, 1, pass[i]);
    lua_setfield(L, -2, pass[i]);
  }
  lua_replace(L, 1);
  lua_settop(L, 1);
  return pool_new(L, true);
}

/* mpi.rank() -> this process's rank in MPI_COMM_WORLD. */
static int mpi_rank(lua_State *L) {
  world_init(L);
  lua_pushinteger(L, world.rank);
  return 1;
}

/* mpi.size() -> the number of ranks. */
static int mpi_size(lua_State *L) {
  world_init(L);
  lua_pushinteger(L, world.size);
  return 1;
}

static const luaL_Reg mpool_methods[] = {
  {"submit", mpool_submit},
  {"shutdown", mpool_shutdown},
  {NULL, NULL}
};

static const luaL_Reg handle_meta[] = {
  {"__gc", handle_gc},
  {NULL, NULL}
};

static const luaL_Reg no_methods[] = {
  {NULL, NULL}
};

static const luaL_Reg mpi_funcs[] = {
  {"rank", mpi_rank},
  {"size", mpi_size},
  {"serve", mpi_serve},
  {"PoolExecutor", mpool_new},
  {"CommExecutor", comm_new},
  {NULL, NULL}
};

int luaopen_host_mpi(lua_State *L);

/*
** require "host.mpi": starts MPI (once per process) and returns the
** module; also adds MPIPoolExecutor to host.futures.
*/
int luaopen_host_mpi(lua_State *L) {
  /* lua_close unloads C modules, but MPI, the manager and the exit handler
  ** live on to the process's end: keep this library mapped */
  Dl_info self;
  if (dladdr((void *)luaopen_host_mpi, &self) != 0 && self.dli_fname != NULL)
    dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
  world_init(L);
  host_type_define(L, HANDLE_TYPE, no_methods, handle_meta, NULL);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "host.futures");
  lua_call(L, 1, 1);
  int futures = lua_gettop(L);
  host_executor_define(L, MPOOL_TYPE, mpool_methods, mpool_gc, mpool_tostring);
  luaL_newlib(L, mpi_funcs);
  lua_pushcfunction(L, mpool_new);
  lua_setfield(L, futures, "MPIPoolExecutor");
  return 1;
}
