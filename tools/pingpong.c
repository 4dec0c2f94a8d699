/*
** pingpong.c: the floor of a hand-off between two OS threads. Two threads
** pass a turn back and forth through one futex word: each sleeps in
** FUTEX_WAIT until the word says it is its turn, flips it and wakes the
** other. Prints "futex ping-pong <ns> ns per round trip" (the median of
** `runs` runs of `n` round trips; defaults 20000 and 5). A round trip is
** two hand-offs, each a futex wake plus the sleeper's wake-up: the figure
** the GIL's hand-off between two busy threads is compared with.
*/
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static atomic_int turn;  /* 0: the main thread's turn, 1: the partner's */
static long rounds;

static void futex_wait(atomic_int *w, int val) {
  syscall(SYS_futex, w, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(atomic_int *w) {
  syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* Waits for turn `mine`, then hands the turn to the other thread. */
static void play(int mine) {
  while (atomic_load(&turn) != mine) futex_wait(&turn, !mine);
  atomic_store(&turn, !mine);
  futex_wake(&turn);
}

/* The partner thread: answers every round. */
static void *partner(void *arg) {
  (void)arg;
  for (long i = 0; i < rounds; i++) play(1);
  return NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  rounds = argc > 1 ? atol(argv[1]) : 20000;
  int runs = argc > 2 ? atoi(argv[2]) : 5;
  if (rounds <= 0 || runs <= 0 || runs > 100) {
    fprintf(stderr, "usage: pingpong [round trips] [runs (1-100)]\n");
    return 2;
  }
  double ns[100];
  for (int r = 0; r < runs; r++) {
    pthread_t t;
    atomic_store(&turn, 0);
    if (pthread_create(&t, NULL, partner, NULL) != 0) {
      perror("pthread_create");
      return 1;
    }
    double t0 = now();
    for (long i = 0; i < rounds; i++) play(0);
    while (atomic_load(&turn) != 0) futex_wait(&turn, 1);  /* the last answer */
    double t1 = now();
    pthread_join(t, NULL);
    ns[r] = (t1 - t0) * 1e9 / (double)rounds;
  }
  qsort(ns, (size_t)runs, sizeof ns[0], cmp);
  printf("futex ping-pong %.0f ns per round trip\n", ns[runs / 2]);
  return 0;
}
