/* --slow's ground truth, built -O2 -fomit-frame-pointer like the usual C
 * program: 1000 fast getppid calls; a 20 ms nanosleep made by
 * nap_for_twenty_ms; a read of a pipe made by wait_for_writer, which a
 * thread named "writer" writes after spinning 30 ms (on the CPU, so that
 * its own wait is no slow syscall). It prints its pid, the reader's tid, the
 * writer's tid and how long the read took around the call (the reader may
 * get its CPU late, and start its read after the writer started), then
 * lingers 300 ms, unless told "exit": then it exits at once, most often
 * before probe has explained its calls. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int fds[2];
static volatile pid_t writer_tid;

__attribute__((noinline)) void nap_for_twenty_ms(void) {
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static long ns_between(struct timespec from, struct timespec to) {
    return (to.tv_sec - from.tv_sec) * 1000000000L + (to.tv_nsec - from.tv_nsec);
}

static void *writer(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "writer");
    writer_tid = gettid();
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (ns_between(start, now) < 30000000L);
    if (write(fds[1], "x", 1) != 1) {
        perror("write");
    }
    return NULL;
}

__attribute__((noinline)) long wait_for_writer(void) {
    char c;
    struct timespec before, after;
    clock_gettime(CLOCK_MONOTONIC, &before);
    if (read(fds[0], &c, 1) != 1) {
        perror("read");
    }
    clock_gettime(CLOCK_MONOTONIC, &after);
    return ns_between(before, after);
}

int main(int argc, char **argv) {
    for (int i = 0; i < 1000; i++) {
        getppid();
    }
    nap_for_twenty_ms();
    if (pipe(fds) != 0) {
        perror("pipe");
        return 1;
    }
    pthread_t thread;
    pthread_create(&thread, NULL, writer, NULL);
    long read_ns = wait_for_writer();
    pthread_join(thread, NULL);
    printf("pid %d reader %d writer %d read_ns %ld\n", getpid(), gettid(), writer_tid, read_ns);
    fflush(stdout);
    if (argc > 1 && strcmp(argv[1], "exit") == 0) {
        return 0;
    }
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (ns_between(start, now) < 300000000L);
    return 0;
}
