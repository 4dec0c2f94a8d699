/*
** bench/thread_floors.c: the floors under host's cross-thread figures on
** this machine, each a C loop with no Lua in it. Prints one line per floor,
** "name v1 v2 ..." (nanoseconds per operation, one value per run):
**   roundtrip_ns  a request to a waiting thread and its reply, two futex
**                 hand-offs (the floor of ThreadPool submit + result);
**   spawn_ns      pthread_create of an empty function + pthread_join (the
**                 floor of thread spawn + join without a thread cache);
**   cached_ns     a job handed to a cached idle thread (mutex + condvar,
**                 as runtime.c's worker cache does) and a join on its end.
** Usage: thread_floors [operations per run] [runs]
*/
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Sleeps while the futex word still holds `value`. */
static void futex_wait(atomic_int *word, int value) {
  syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
}

/* Wakes one waiter on the futex word. */
static void futex_wake(atomic_int *word) {
  syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* ---- roundtrip: request (0 -> 1) then reply (1 -> 2, read as 0 again) ---- */

static atomic_int state;   /* 0: idle, 1: a request waits, 2: the reply is there */
static long ops;

/* Serves `ops` requests: waits for one, replies, waits for the next. */
static void *server(void *arg) {
  (void)arg;
  for (long i = 0; i < ops; i++) {
    int s;
    while ((s = atomic_load(&state)) != 1) futex_wait(&state, s);
    atomic_store(&state, 2);
    futex_wake(&state);
  }
  return NULL;
}

/* Seconds per round trip: post a request, sleep until its reply. */
static double roundtrip(void) {
  pthread_t t;
  atomic_store(&state, 0);
  if (pthread_create(&t, NULL, server, NULL) != 0) exit(1);
  double t0 = now();
  for (long i = 0; i < ops; i++) {
    atomic_store(&state, 1);
    futex_wake(&state);
    int s;
    while ((s = atomic_load(&state)) != 2) futex_wait(&state, s);
  }
  double t1 = now();
  pthread_join(t, NULL);
  return (t1 - t0) / ops;
}

/* ---- spawn: pthread_create + pthread_join of an empty function ---- */

static void *empty(void *arg) {
  return arg;
}

static double spawn(void) {
  double t0 = now();
  for (long i = 0; i < ops; i++) {
    pthread_t t;
    if (pthread_create(&t, NULL, empty, NULL) != 0) exit(1);
    pthread_join(t, NULL);
  }
  return (now() - t0) / ops;
}

/* ---- cached: a job to an idle cached thread, then a join on its end ---- */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t job_cv = PTHREAD_COND_INITIALIZER, done_cv = PTHREAD_COND_INITIALIZER;
static bool job, done, stop;

/* The cached thread: runs each job given to it (empty) and says it is done. */
static void *cached_worker(void *arg) {
  (void)arg;
  pthread_mutex_lock(&mu);
  for (;;) {
    while (!job && !stop) pthread_cond_wait(&job_cv, &mu);
    if (stop) break;
    job = false;
    done = true;
    pthread_cond_signal(&done_cv);
  }
  pthread_mutex_unlock(&mu);
  return NULL;
}

static double cached(void) {
  pthread_t t;
  stop = false;
  if (pthread_create(&t, NULL, cached_worker, NULL) != 0) exit(1);
  double t0 = now();
  for (long i = 0; i < ops; i++) {
    pthread_mutex_lock(&mu);
    job = true;
    done = false;
    pthread_mutex_unlock(&mu);
    pthread_cond_signal(&job_cv);
    pthread_mutex_lock(&mu);
    while (!done) pthread_cond_wait(&done_cv, &mu);
    pthread_mutex_unlock(&mu);
  }
  double t1 = now();
  pthread_mutex_lock(&mu);
  stop = true;
  pthread_mutex_unlock(&mu);
  pthread_cond_signal(&job_cv);
  pthread_join(t, NULL);
  return (t1 - t0) / ops;
}

/* Prints "name v1 v2 ..." for f over `runs` runs. */
static void report(const char *name, double (*f)(void), int runs) {
  printf("%s", name);
  for (int r = 0; r < runs; r++) printf(" %.1f", f() * 1e9);
  printf("\n");
  fflush(stdout);
}

int main(int argc, char **argv) {
  ops = argc > 1 ? atol(argv[1]) : 20000;
  int runs = argc > 2 ? atoi(argv[2]) : 5;
  if (ops < 1 || runs < 1) {
    fprintf(stderr, "usage: thread_floors [operations >= 1] [runs >= 1]\n");
    return 2;
  }
  report("roundtrip_ns", roundtrip, runs);
  report("spawn_ns", spawn, runs);
  report("cached_ns", cached, runs);
  return 0;
}
