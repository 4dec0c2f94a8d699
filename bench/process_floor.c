/*
** bench/process_floor.c: the floors under the process pool's figures on
** this machine, in plain C (no Lua, no threads, no codec).
**
**   process_floor cycle RSS_KB [cycles per run] [runs] [children]
**     A parent whose heap of small live objects brings its resident set to
**     RSS_KB (give it the RSS of the host process compared) forks children
**     (default 1, at most 8), each over its own socketpair; each answers
**     one message and exits; the parent reaps them. What a pool's start +
**     1 task + shutdown cannot go below with that heap, a pool forking its
**     workers on demand forking one: a fork (page tables copied, the
**     parent's pages made copy-on-write), an exit and a waitpid each.
**     Prints "cycle_us v...".
**
**   process_floor roundtrip [round trips per run] [runs]
**     One child echoes a task-sized message (80 bytes) over a socketpair:
**     the floor under submit + result (one message each way, each a wake-up
**     of a process sleeping in recv). Prints "roundtrip_us v...".
**
**   process_floor fault [pages] [runs]
**     What a page fault costs here, which a fork-based pool pays for every
**     page a forked worker or its parent first writes: the first write to
**     fresh anonymous pages, then, in a forked child, to the same pages
**     shared copy-on-write. Prints "fault_us v..." and "cow_fault_us v..."
**     (microseconds per page). On most machines a few tenths of a
**     microsecond; on some virtual machines tens of microseconds.
**
** One value per run; bench/pools_bench.lua runs it next to host's figures.
*/
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MSG_LEN 80     /* about a tiny task's frame */
#define OBJ_LEN 48     /* about a small Lua object */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/*
** Reads exactly len bytes; false on EOF or error. It sleeps in poll, not in
** read, as host's workers do: a reader asleep in read on a Unix socket is
** also woken each time its peer takes what it sent (its write space grows),
** a wake-up for nothing that host does not pay either.
*/
static int read_all(int fd, char *p, size_t len) {
  while (len > 0) {
    struct pollfd one = {.fd = fd, .events = POLLIN};
    while (poll(&one, 1, -1) < 0 && errno == EINTR) {}
    ssize_t n = read(fd, p, len);
    if (n <= 0) return 0;
    p += n;
    len -= (size_t)n;
  }
  return 1;
}

/* Writes exactly len bytes; false on error. */
static int write_all(int fd, const char *p, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n <= 0) return 0;
    p += n;
    len -= (size_t)n;
  }
  return 1;
}

/* A child's life: echo each message until EOF. */
static void echo(int fd) {
  char buf[MSG_LEN];
  while (read_all(fd, buf, sizeof buf) && write_all(fd, buf, sizeof buf)) {}
  _exit(0);
}

/*
** Forks a child that echoes over a new socketpair; returns its pid, *fd
** the parent's end. The child closes `other` (a sibling's parent end, or
** -1), as host's workers close the pool's other fds: else that sibling
** would never read EOF.
*/
static pid_t spawn(int *fd, int other) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    if (other >= 0) close(other);
    echo(sv[1]);
  }
  close(sv[1]);
  if (pid < 0) close(sv[0]);
  *fd = sv[0];
  return pid;
}

#define CHILDREN_MAX 8

/* One cycle: n children forked, one message each answered, all reaped. */
static int cycle(int n) {
  char msg[MSG_LEN] = {1};
  int fd[CHILDREN_MAX];
  pid_t pid[CHILDREN_MAX];
  for (int i = 0; i < n; i++)
    if ((pid[i] = spawn(&fd[i], i > 0 ? fd[0] : -1)) < 0) return 0;
  for (int i = 0; i < n; i++)
    if (!write_all(fd[i], msg, sizeof msg)) return 0;
  for (int i = 0; i < n; i++)
    if (!read_all(fd[i], msg, sizeof msg)) return 0;
  for (int i = 0; i < n; i++) close(fd[i]);  /* EOF: all children exit at once */
  for (int i = 0; i < n; i++) {
    int status;
    if (waitpid(pid[i], &status, 0) != pid[i]) return 0;
  }
  return 1;
}

/* The resident set of this process, in KiB (0 when unknown). */
static long resident_kb(void) {
  long size = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL) return 0;
  if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
  fclose(f);
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* Grows the heap with small live objects, each touched, until the resident set is rss_kb. */
static void fill_heap(long rss_kb) {
  for (long i = 0; resident_kb() < rss_kb; i++) {
    for (int j = 0; j < 1024; j++) {
      char *p = malloc(OBJ_LEN);  /* kept: the heap of a long-lived process */
      if (p == NULL) exit(1);
      memset(p, (int)(i + j), OBJ_LEN);
    }
  }
}

/*
** Times the first writes to `pages` fresh pages (*fresh, us per page), then
** a forked child's first writes to them, copy-on-write (*cow); the child
** sends its time over a pipe. False when a system call fails.
*/
static int fault_run(long pages, double *fresh, double *cow) {
  long page = sysconf(_SC_PAGESIZE);
  char *p = mmap(NULL, (size_t)(pages * page), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 0;
  double t0 = now();
  for (long i = 0; i < pages; i++) p[i * page] = 1;
  *fresh = (now() - t0) / pages * 1e6;
  int fds[2];
  if (pipe(fds) != 0) return 0;
  pid_t pid = fork();
  if (pid < 0) return 0;
  if (pid == 0) {
    double t1 = now();
    for (long i = 0; i < pages; i++) p[i * page] = 2;
    double us = (now() - t1) / pages * 1e6;
    _exit(write(fds[1], &us, sizeof us) == (ssize_t)sizeof us ? 0 : 1);
  }
  close(fds[1]);
  int ok = read_all(fds[0], (char *)cow, sizeof *cow);
  close(fds[0]);
  waitpid(pid, NULL, 0);
  munmap(p, (size_t)(pages * page));
  return ok;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "";
  if (strcmp(mode, "cycle") == 0 && argc > 2) {
    long rss_kb = atol(argv[2]);
    long cycles = argc > 3 ? atol(argv[3]) : 20;
    int runs = argc > 4 ? atoi(argv[4]) : 3;
    int children = argc > 5 ? atoi(argv[5]) : 1;
    if (rss_kb < 0 || cycles < 1 || runs < 1 || children < 1 || children > CHILDREN_MAX) goto usage;
    fill_heap(rss_kb);
    printf("cycle_us");
    for (int r = 0; r < runs; r++) {
      double t0 = now();
      for (long i = 0; i < cycles; i++)
        if (!cycle(children)) return perror("cycle"), 1;
      printf(" %.2f", (now() - t0) / cycles * 1e6);
    }
    printf("\n");
    return 0;
  }
  if (strcmp(mode, "roundtrip") == 0) {
    long rounds = argc > 2 ? atol(argv[2]) : 20000;
    int runs = argc > 3 ? atoi(argv[3]) : 3;
    if (rounds < 1 || runs < 1) goto usage;
    int fd;
    pid_t pid = spawn(&fd, -1);
    if (pid < 0) return perror("fork"), 1;
    char msg[MSG_LEN] = {1};
    printf("roundtrip_us");
    for (int r = 0; r < runs; r++) {
      double t0 = now();
      for (long i = 0; i < rounds; i++)
        if (!write_all(fd, msg, sizeof msg) || !read_all(fd, msg, sizeof msg))
          return perror("roundtrip"), 1;
      printf(" %.2f", (now() - t0) / rounds * 1e6);
    }
    printf("\n");
    close(fd);
    waitpid(pid, NULL, 0);
    return 0;
  }
  if (strcmp(mode, "fault") == 0) {
    long pages = argc > 2 ? atol(argv[2]) : 2000;
    int runs = argc > 3 ? atoi(argv[3]) : 3;
    if (pages < 1 || runs < 1 || runs > 100) goto usage;
    double fresh[100], cow[100];
    for (int r = 0; r < runs; r++)
      if (!fault_run(pages, &fresh[r], &cow[r])) return perror("fault"), 1;
    printf("fault_us");
    for (int r = 0; r < runs; r++) printf(" %.3f", fresh[r]);
    printf("\ncow_fault_us");
    for (int r = 0; r < runs; r++) printf(" %.3f", cow[r]);
    printf("\n");
    return 0;
  }
usage:
  fprintf(stderr, "usage: process_floor cycle RSS_KB [cycles] [runs] [children]\n"
                  "       process_floor roundtrip [round trips] [runs]\n"
                  "       process_floor fault [pages] [runs]\n");
  return 2;
}
