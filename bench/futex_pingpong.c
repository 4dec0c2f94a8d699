/*
** bench/futex_pingpong.c: the floor under a GIL hand-off on this machine.
** Two threads pass a turn back and forth through one futex word: each
** hand-off is one FUTEX_WAKE plus the woken thread's return from
** FUTEX_WAIT (a context switch when both share a core). Prints
** "handoff_ns v1 v2 ..." (nanoseconds per hand-off, one value per run).
** Usage: futex_pingpong [rounds per run] [runs]
*/
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static atomic_int turn;
static long rounds;

/* Sleeps while the futex word still holds `value`. */
static void futex_wait(atomic_int *word, int value) {
  syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
}

/* Wakes one waiter on the futex word. */
static void futex_wake(atomic_int *word) {
  syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Plays `me` (0 or 1): waits for its turn, passes it on, `rounds` times. */
static void play(int me) {
  for (long i = 0; i < rounds; i++) {
    int t;
    while ((t = atomic_load(&turn)) != me) futex_wait(&turn, t);
    atomic_store(&turn, 1 - me);
    futex_wake(&turn);
  }
}

static void *other(void *arg) {
  (void)arg;
  play(1);
  return NULL;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  rounds = argc > 1 ? atol(argv[1]) : 20000;
  int runs = argc > 2 ? atoi(argv[2]) : 5;
  if (rounds < 1 || runs < 1) {
    fprintf(stderr, "usage: futex_pingpong [rounds >= 1] [runs >= 1]\n");
    return 2;
  }
  printf("handoff_ns");
  for (int r = 0; r < runs; r++) {
    pthread_t t;
    atomic_store(&turn, 0);
    double t0 = now();
    if (pthread_create(&t, NULL, other, NULL) != 0) return 1;
    play(0);
    pthread_join(t, NULL);
    printf(" %.1f", (now() - t0) / (2.0 * rounds) * 1e9);
  }
  printf("\n");
  return 0;
}
