/*
 * mpi_kernels_b — set B's MPI workloads for the didact testbed (`didact testbed record --set B`),
 * other kernels than mpi_bench.c, meant to run over Open MPI's shared-memory transport.
 *
 *   mpirun -np N mpi_kernels_b nbody    SECONDS [BODIES]
 *   mpirun -np N mpi_kernels_b alltoall SECONDS [BLOCK_BYTES]
 *
 * nbody:    compute-bound: every step each rank computes the gravitational forces on its
 *           share of BODIES (default 6144) from all of them (O(n^2 / N) flops on a few
 *           hundred KiB), then an MPI_Allgather of the new positions.
 * alltoall: communication-bound: MPI_Alltoall of BLOCK_BYTES (default 32768) per rank pair,
 *           then an MPI_Bcast of 64 KiB from a rotating root, as fast as they go.
 *
 * Both stop after SECONDS (measured from a barrier after MPI_Init).  Rank 0 prints
 * "mpi_kernels_b ready MODE ranks=N" after that barrier (the recorder labels from there on)
 * and one summary line at the end.  SIGTERM from mpirun ends them at once.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int time_is_up(double deadline) {
    int mine = MPI_Wtime() >= deadline, any = 0;
    MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return any;
}

static long nbody(double deadline, long n, int rank, int size) {
    long per = (n + size - 1) / size;
    n = per * size;
    double *pos = malloc(sizeof(double) * 3 * n), *vel = calloc(3 * per, sizeof(double));
    double *mine = malloc(sizeof(double) * 3 * per);
    for (long i = 0; i < 3 * n; i++) pos[i] = (double)((i * 7919) % 1000) / 1000.0;
    long steps = 0;
    do {
        for (long i = 0; i < per; i++) {
            const double *p = pos + 3 * (rank * per + i);
            double ax = 0, ay = 0, az = 0;
            for (long j = 0; j < n; j++) {
                double dx = pos[3 * j] - p[0], dy = pos[3 * j + 1] - p[1], dz = pos[3 * j + 2] - p[2];
                double r2 = dx * dx + dy * dy + dz * dz + 1e-3, inv = 1.0 / (r2 * sqrt(r2));
                ax += dx * inv; ay += dy * inv; az += dz * inv;
            }
            vel[3 * i] += 1e-6 * ax; vel[3 * i + 1] += 1e-6 * ay; vel[3 * i + 2] += 1e-6 * az;
            for (int d = 0; d < 3; d++) mine[3 * i + d] = p[d] + 1e-3 * vel[3 * i + d];
        }
        MPI_Allgather(mine, 3 * per, MPI_DOUBLE, pos, 3 * per, MPI_DOUBLE, MPI_COMM_WORLD);
        steps++;
    } while (!time_is_up(deadline));
    free(pos); free(vel); free(mine);
    return steps;
}

static long alltoall(double deadline, long block, int rank, int size) {
    char *out = malloc(block * size), *in = malloc(block * size), *b = malloc(65536);
    memset(out, rank, block * size);
    memset(b, 0, 65536);
    long rounds = 0;
    do {
        for (int r = 0; r < 16; r++, rounds++) {
            MPI_Alltoall(out, (int)block, MPI_BYTE, in, (int)block, MPI_BYTE, MPI_COMM_WORLD);
            MPI_Bcast(b, 65536, MPI_BYTE, (int)(rounds % size), MPI_COMM_WORLD);
        }
    } while (!time_is_up(deadline));
    free(out); free(in); free(b);
    return rounds;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 3 || (strcmp(argv[1], "nbody") && strcmp(argv[1], "alltoall"))) {
        if (rank == 0) fprintf(stderr, "usage: %s nbody SECONDS [BODIES] | alltoall SECONDS [BLOCK_BYTES]\n", argv[0]);
        MPI_Finalize();
        return 2;
    }
    double seconds = atof(argv[2]);
    int is_nbody = strcmp(argv[1], "nbody") == 0;
    long arg = argc > 3 ? atol(argv[3]) : (is_nbody ? 6144 : 32768);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    if (rank == 0) {
        printf("mpi_kernels_b ready %s ranks=%d\n", argv[1], size);
        fflush(stdout);
    }
    long ops = is_nbody ? nbody(t0 + seconds, arg, rank, size) : alltoall(t0 + seconds, arg, rank, size);
    if (rank == 0) {
        double elapsed = MPI_Wtime() - t0;
        printf("mpi_kernels_b %s ranks=%d seconds=%.2f ops_per_s=%.4g\n", argv[1], size, elapsed, ops / elapsed);
        fflush(stdout);
    }
    MPI_Finalize();
    return 0;
}
