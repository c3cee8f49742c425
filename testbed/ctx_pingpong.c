/*
 * ctx_pingpong — set B's context-switch workload for the didact testbed: PAIRS pairs of
 * threads bounce one byte back and forth over AF_UNIX socket pairs (set A's stress-ng
 * --switch uses pipes between processes), each hand-over a sleep and a wake-up.
 *
 *   ctx_pingpong PAIRS SECONDS
 *
 * Prints "ctx_pingpong ready pairs=N" once the threads run, and round trips per second at
 * the end; SIGTERM ends it at once.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double deadline;
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

struct end { int fd; int serve; long trips; };

static void *run(void *arg) {
    struct end *e = arg;
    char c = 0;
    for (;;) {
        if (!e->serve) {
            if (e->trips % 1024 == 0 && now() >= deadline) { c = 1; write(e->fd, &c, 1); break; }
            if (write(e->fd, &c, 1) != 1 || read(e->fd, &c, 1) != 1) break;
        } else {
            if (read(e->fd, &c, 1) != 1 || c == 1) break;
            if (write(e->fd, &c, 1) != 1) break;
        }
        e->trips++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s PAIRS SECONDS\n", argv[0]);
        return 2;
    }
    int pairs = atoi(argv[1]);
    if (pairs < 1) pairs = 1;
    deadline = now() + atof(argv[2]);
    pthread_t *th = calloc(2 * pairs, sizeof(pthread_t));
    struct end *ends = calloc(2 * pairs, sizeof(struct end));
    for (int p = 0; p < pairs; p++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) { perror("socketpair"); return 1; }
        ends[2 * p] = (struct end){sv[0], 0, 0};
        ends[2 * p + 1] = (struct end){sv[1], 1, 0};
    }
    for (int i = 0; i < 2 * pairs; i++) pthread_create(&th[i], NULL, run, &ends[i]);
    printf("ctx_pingpong ready pairs=%d\n", pairs);
    fflush(stdout);
    double t0 = now();
    long trips = 0;
    for (int i = 0; i < 2 * pairs; i++) {
        pthread_join(th[i], NULL);
        if (!ends[i].serve) trips += ends[i].trips;
    }
    printf("ctx_pingpong pairs=%d round_trips_per_s=%.4g\n", pairs, trips / (now() - t0));
    return 0;
}
