/* --slow's ground truth, built -O2 -fomit-frame-pointer like the usual C
 * program: 1000 fast getppid calls; a 20 ms nanosleep made by
 * nap_for_twenty_ms; a read of a pipe made by wait_for_writer, which a
 * thread named "writer" writes after spinning 30 ms (on the CPU, so that
 * its own wait is no slow syscall). It prints its pid, the reader's tid and
 * the writer's tid, then lingers 300 ms, unless told "exit": then it exits
 * at once, most often before probe has explained its calls. */
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

static void *writer(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "writer");
    writer_tid = gettid();
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) < 30000000L);
    if (write(fds[1], "x", 1) != 1) {
        perror("write");
    }
    return NULL;
}

__attribute__((noinline)) void wait_for_writer(void) {
    char c;
    if (read(fds[0], &c, 1) != 1) {
        perror("read");
    }
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
    wait_for_writer();
    pthread_join(thread, NULL);
    printf("pid %d reader %d writer %d\n", getpid(), gettid(), writer_tid);
    fflush(stdout);
    if (argc > 1 && strcmp(argv[1], "exit") == 0) {
        return 0;
    }
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) < 300000000L);
    return 0;
}
