/* Linear layers on a few prompt tokens (float32, CPU): y = act(x W^T + b) for M rows.
 *
 * The decoder's token side multiplies 7 or so rows by weights of up to 256 x 2048. A BLAS
 * GEMM packs and tiles for many rows; here every weight value is read once per block of
 * ROWS rows, from a packed copy wp (N / COLS, K, COLS) (each block of COLS outputs' weights
 * transposed and contiguous), into a ROWS x COLS block of outputs held in vector registers.
 * The blocks are shared between OpenMP threads. Built for AVX-512 only: with 16 vector
 * registers (AVX2) the blocks spill, and PyTorch's GEMM is faster.
 */
#include <stdlib.h>

#include "common.h"

#if defined(__AVX512F__)
enum { LANES = 16, ROWS = 8, SUPPORTED = 1 }; /* 16 zmm accumulators */
#else
enum { LANES = 8, ROWS = 4, SUPPORTED = 0 };
#endif
enum { VECS = 2, COLS = LANES * VECS };
typedef float vec __attribute__((vector_size(LANES * sizeof(float)), aligned(sizeof(float))));

/* Rows m0 .. m0 + mr (mr <= ROWS) and columns n0 .. n0 + COLS of y, from xt (K, ROWS): the
 * block's rows transposed, zero-padded to ROWS. */
static void block(const float *restrict xt, const float *restrict wp, const float *restrict bias,
                  float *restrict y, int K, int N, int m0, int mr, int n0, int relu) {
    vec acc[ROWS][VECS];
    vec b[VECS] = {{0}};
    if (bias) memcpy(b, bias + n0, sizeof b);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; r++)
#pragma GCC unroll 2
        for (int v = 0; v < VECS; v++) acc[r][v] = b[v];
    for (int k = 0; k < K; k++) {
        vec w[VECS];
        memcpy(w, wp + (long)k * COLS, sizeof w);
#pragma GCC unroll 8
        for (int r = 0; r < ROWS; r++) {
            const float s = xt[k * ROWS + r];
#pragma GCC unroll 2
            for (int v = 0; v < VECS; v++) acc[r][v] += s * w[v];
        }
    }
    float out[ROWS][COLS]; /* stored at fixed indices, so acc stays in registers */
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; r++) memcpy(out[r], acc[r], sizeof out[r]);
    for (int r = 0; r < mr; r++) {
        float *dst = y + (long)(m0 + r) * N + n0;
        for (int c = 0; c < COLS; c++) dst[c] = relu && out[r][c] < 0.0f ? 0.0f : out[r][c];
    }
}

/* The column block COLS that N must be a multiple of; 0 where the kernel is not offered. */
int mobilesam_token_linear_cols(void) { return SUPPORTED ? COLS : 0; }

/* y (M, N) = x (M, K) W^T + bias (N) (bias may be NULL), then ReLU if relu, with W packed as
 * wp; N a multiple of COLS. Returns 1 if a buffer could not be allocated. */
int mobilesam_token_linear_f32(const float *x, const float *wp, const float *bias, float *y,
                               int M, int K, int N, int relu, int threads) {
    const int col_blocks = N / COLS, row_blocks = (M + ROWS - 1) / ROWS;
    float *xt = calloc((size_t)row_blocks * K * ROWS, sizeof(float));
    if (!xt) return 1;
    for (int m = 0; m < M; m++) /* each row block's rows, transposed and zero-padded */
        for (int k = 0; k < K; k++) xt[((long)(m / ROWS) * K + k) * ROWS + m % ROWS] = x[(long)m * K + k];
    const int tasks = col_blocks * row_blocks;
#pragma omp parallel for num_threads(threads < tasks ? threads : tasks) schedule(static)
    for (int task = 0; task < tasks; task++) {
        const int n0 = (task % col_blocks) * COLS, rb = task / col_blocks, m0 = rb * ROWS;
        block(xt + (long)rb * K * ROWS, wp + (long)(n0 / COLS) * K * COLS, bias, y, K, N, m0, M - m0 < ROWS ? M - m0 : ROWS,
              n0, relu);
    }
    free(xt);
    return 0;
}
