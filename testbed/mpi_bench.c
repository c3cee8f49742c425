/*
 * mpi_bench — a small MPI workload for the didact testbed (`didact testbed record`).
 *
 *   mpirun -np 2 mpi_bench compute SECONDS [BYTES_PER_RANK]
 *   mpirun -np 2 mpi_bench comm    SECONDS [MESSAGE_BYTES]
 *
 * compute: the shape of an HPC solver: a 2-D Jacobi stencil whose rows are split over the
 *          ranks.  Each rank sweeps its block (two grids of BYTES_PER_RANK / 2, default
 *          128 MiB in all: a resident working set, unlike a register-only loop) and after
 *          every sweep swaps its boundary rows (32 KiB) with its neighbours (MPI_Sendrecv);
 *          every 8 sweeps an MPI_Allreduce of the residual also decides whether the time is
 *          up.  Nearly all of its time is user-mode computation.
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

#define COLS 4096 /* doubles per grid row: a 32 KiB halo row */

/* one Jacobi sweep over rows 1..rows of a (rows + 2) x COLS grid; returns the residual */
static double sweep(const double *restrict u, double *restrict v, long rows) {
    double res = 0;
    for (long i = 1; i <= rows; i++) {
        const double *up = u + (i - 1) * COLS, *mid = u + i * COLS, *down = u + (i + 1) * COLS;
        double *out = v + i * COLS;
        out[0] = mid[0];
        out[COLS - 1] = mid[COLS - 1];
        for (long j = 1; j < COLS - 1; j++) {
            double x = 0.25 * (up[j] + down[j] + mid[j - 1] + mid[j + 1]);
            res += (x - mid[j]) * (x - mid[j]);
            out[j] = x;
        }
    }
    return res;
}

static int run_compute(int rank, int size, double deadline, long bytes, double *ops) {
    long rows = bytes / 2 / (COLS * (long)sizeof(double)) - 2;
    if (rows < 1) rows = 1;
    size_t n = (size_t)(rows + 2) * COLS;
    double *u = malloc(n * sizeof(double)), *v = malloc(n * sizeof(double));
    if (!u || !v) {
        fprintf(stderr, "mpi_bench: cannot allocate 2 x %zu bytes\n", n * sizeof(double));
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    for (size_t k = 0; k < n; k++) u[k] = v[k] = (double)((k * 2654435761u + rank) % 1000) / 1000.0;
    int up = rank > 0 ? rank - 1 : MPI_PROC_NULL, down = rank < size - 1 ? rank + 1 : MPI_PROC_NULL;
    long sweeps = 0;
    double res = 0, total = 0;
    for (;;) {
        /* halo exchange: my first row goes up, my last row down; theirs land in rows 0 and rows + 1 */
        MPI_Sendrecv(u + COLS, COLS, MPI_DOUBLE, up, 1, u + (rows + 1) * COLS, COLS, MPI_DOUBLE, down, 1,
                     MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Sendrecv(u + rows * COLS, COLS, MPI_DOUBLE, down, 2, u, COLS, MPI_DOUBLE, up, 2, MPI_COMM_WORLD,
                     MPI_STATUS_IGNORE);
        res = sweep(u, v, rows);
        double *t = u; u = v; v = t;
        if (++sweeps % 8 == 0) {
            MPI_Allreduce(&res, &total, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
            if (time_is_up(deadline)) break;
        }
    }
    *ops = (double)sweeps * rows * (COLS - 2);
    free(u);
    free(v);
    return total < 0; /* keep the sweeps from being optimised away */
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
        if (rank == 0) fprintf(stderr, "usage: %s compute SECONDS [BYTES_PER_RANK] | comm SECONDS [MESSAGE_BYTES]\n", argv[0]);
        MPI_Finalize();
        return 2;
    }
    double seconds = atof(argv[2]);
    int compute = strcmp(argv[1], "compute") == 0;
    long bytes = argc > 3 ? atol(argv[3]) : (compute ? 128L << 20 : 65536);
    if (!(seconds > 0) || bytes < 0 || bytes > (1L << 30)) {
        if (rank == 0) fprintf(stderr, "mpi_bench: SECONDS must be > 0 and BYTES in [0, 1 GiB]\n");
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
    int rc = compute ? run_compute(rank, size, deadline, bytes, &ops) : run_comm(rank, size, deadline, bytes, &ops);
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
