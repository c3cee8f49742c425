/*
 * mpi_bench — a small MPI workload for the didact testbed (`didact testbed record`).
 *
 *   mpirun -np 2 mpi_bench compute SECONDS
 *   mpirun -np 2 mpi_bench comm    SECONDS [MESSAGE_BYTES]
 *
 * compute: every rank runs a dependent floating-point loop that stays in registers/L1
 *          (compute bound); every ~20 ms the ranks agree on whether the time is up
 *          with one 4-byte MPI_Allreduce, so communication is negligible.
 * comm:    ranks pair up (0<->1, 2<->3, ...) and ping-pong MESSAGE_BYTES (default
 *          65536) back and forth as fast as they can, with an MPI_Allreduce of a
 *          small vector every 64 round trips (communication bound; an unpaired last
 *          rank joins the allreduces only).
 *
 * Both stop after SECONDS (measured from a barrier after MPI_Init).  Rank 0 prints
 * "mpi_bench ready MODE ranks=N" after that barrier (the recorder labels from there on)
 * and, at the end, one line: mode, ranks, seconds, and operations per second.  SIGTERM from mpirun
 * ends them at once, which is how the recorder stops a segment.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int time_is_up(double deadline) {
    int mine = MPI_Wtime() >= deadline, any = 0;
    MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return any;
}

/* ~chunk_iters dependent multiply-adds on 8 independent accumulators */
static double burn(long chunk_iters, double seed) {
    double a[8];
    for (int k = 0; k < 8; k++) a[k] = seed + k * 1e-3;
    for (long i = 0; i < chunk_iters; i++)
        for (int k = 0; k < 8; k++) a[k] = a[k] * 0.999999 + 1e-7;
    double s = 0;
    for (int k = 0; k < 8; k++) s += a[k];
    return s;
}

static int run_compute(int rank, double deadline, double *ops) {
    long chunk = 200000; /* calibrated below to ~20 ms */
    double t = MPI_Wtime(), sink = 0;
    sink += burn(chunk, rank);
    double dt = MPI_Wtime() - t;
    if (dt > 0) chunk = (long)(chunk * 0.02 / dt) + 1;
    long chunks = 0;
    do {
        sink += burn(chunk, sink * 1e-12 + rank);
        chunks++;
    } while (!time_is_up(deadline));
    *ops = (double)chunks * chunk * 8;
    return sink == 12345.678; /* keep the loop from being optimised away */
}

static int run_comm(int rank, int size, double deadline, long bytes, double *ops) {
    char *buf = malloc(bytes > 0 ? bytes : 1);
    double vec[512], out[512];
    if (!buf) {
        fprintf(stderr, "mpi_bench: cannot allocate %ld bytes\n", bytes);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    memset(buf, rank, bytes);
    for (int k = 0; k < 512; k++) vec[k] = rank + k;
    int peer = rank ^ 1;
    int paired = peer < size;
    long trips = 0;
    for (;;) {
        if (paired) {
            for (int i = 0; i < 64; i++) {
                if (rank % 2 == 0) {
                    MPI_Send(buf, (int)bytes, MPI_BYTE, peer, 0, MPI_COMM_WORLD);
                    MPI_Recv(buf, (int)bytes, MPI_BYTE, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                } else {
                    MPI_Recv(buf, (int)bytes, MPI_BYTE, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                    MPI_Send(buf, (int)bytes, MPI_BYTE, peer, 0, MPI_COMM_WORLD);
                }
            }
            trips += 64;
        }
        MPI_Allreduce(vec, out, 512, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        if (time_is_up(deadline)) break;
    }
    *ops = (double)trips;
    free(buf);
    return 0;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 3 || (strcmp(argv[1], "compute") && strcmp(argv[1], "comm"))) {
        if (rank == 0) fprintf(stderr, "usage: %s compute|comm SECONDS [MESSAGE_BYTES]\n", argv[0]);
        MPI_Finalize();
        return 2;
    }
    double seconds = atof(argv[2]);
    long bytes = argc > 3 ? atol(argv[3]) : 65536;
    if (!(seconds > 0) || bytes < 0 || bytes > (1L << 30)) {
        if (rank == 0) fprintf(stderr, "mpi_bench: SECONDS must be > 0 and MESSAGE_BYTES in [0, 1 GiB]\n");
        MPI_Finalize();
        return 2;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) { /* the recorder starts the segment's label here */
        printf("mpi_bench ready %s ranks=%d\n", argv[1], size);
        fflush(stdout);
    }
    double t0 = MPI_Wtime(), ops = 0;
    double deadline = t0 + seconds;
    int rc = strcmp(argv[1], "compute") == 0 ? run_compute(rank, deadline, &ops)
                                             : run_comm(rank, size, deadline, bytes, &ops);
    double elapsed = MPI_Wtime() - t0, total = 0;
    MPI_Reduce(&ops, &total, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("mpi_bench %s ranks=%d seconds=%.2f ops_per_s=%.4g\n", argv[1], size, elapsed,
               elapsed > 0 ? total / elapsed : 0.0);
        fflush(stdout);
    }
    MPI_Finalize();
    return rc;
}
