/*
 * A guest memory load for the QEMU end-to-end test. Linked statically and
 * run as a guest's workload from its initramfs.
 *
 * usage: memload START_MIB STEP_MIB STEP_SECONDS MAX_MIB [HOLD_SECONDS]
 *
 * Allocates and touches START_MIB, holds it for HOLD_SECONDS (default 0),
 * then every STEP_SECONDS grows its
 * working set by STEP_MIB until MAX_MIB, and keeps touching every page of
 * it forever. Prints "memload: growing to N MiB" at each step and
 * "memload: reached N MiB" once the maximum is allocated and touched.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MIB (1024L * 1024L)
#define MAX_CHUNKS 4096

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long parse(const char* s, const char* name) {
  char* end = NULL;
  long v = strtol(s, &end, 10);
  if (end == s || *end != '\0' || v < 0 || v > MAX_CHUNKS) {
    fprintf(stderr, "memload: %s must be an integer in [0, %d], got '%s'\n", name, MAX_CHUNKS, s);
    exit(2);
  }
  return v;
}

int main(int argc, char** argv) {
  static char* chunks[MAX_CHUNKS];
  long have = 0;
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: memload START_MIB STEP_MIB STEP_SECONDS MAX_MIB [HOLD_SECONDS]\n");
    return 2;
  }
  long start = parse(argv[1], "START_MIB");
  long step = parse(argv[2], "STEP_MIB");
  long seconds = parse(argv[3], "STEP_SECONDS");
  long max = parse(argv[4], "MAX_MIB");
  long hold = argc == 6 ? parse(argv[5], "HOLD_SECONDS") : 0;
  if (start > max) start = max;
  setvbuf(stdout, NULL, _IONBF, 0);

  long want = start;
  double next_step = now_seconds() + (double)hold + (double)seconds;
  int reached = 0;
  unsigned char pass = 0;
  printf("memload: starting with %ld MiB\n", want);
  for (;;) {
    while (have < want) {
      chunks[have] = malloc(MIB);
      if (chunks[have] == NULL) {
        printf("memload: malloc failed at %ld MiB\n", have);
        return 1;
      }
      memset(chunks[have], 1, MIB);
      ++have;
    }
    /* Touch every page of the working set. */
    ++pass;
    for (long c = 0; c < have; ++c) {
      for (long off = 0; off < MIB; off += 4096) chunks[c][off] = (char)pass;
    }
    if (now_seconds() >= next_step && want < max) {
      want += step;
      if (want > max) want = max;
      next_step = now_seconds() + (double)seconds;
      printf("memload: growing to %ld MiB\n", want);
    }
    if (!reached && have == max) {
      printf("memload: reached %ld MiB\n", max);
      reached = 1;
    }
  }
}
