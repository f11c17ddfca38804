/* Linear layers on a few prompt tokens (float32, CPU): y = act(x W^T + b) for M rows.
 *
 * The decoder's token side multiplies 7 or so rows by weights of up to 256 x 2048. A BLAS
 * GEMM packs and tiles for many rows; here the weight comes packed once, wp (N / COLS, K,
 * COLS) (each block of COLS outputs' weights transposed and contiguous), and each block is
 * one register-blocked product (small_gemm.h), the blocks shared between OpenMP threads.
 * Offered with AVX-512 only: elsewhere PyTorch's GEMM is as fast.
 */
#include "common.h"
#include "small_gemm.h"

#if defined(__AVX512F__)
enum { SUPPORTED = 1 };
#else
enum { SUPPORTED = 0 };
#endif

/* The column block COLS that N must be a multiple of; 0 where the kernel is not offered. */
int mobilesam_token_linear_cols(void) { return SUPPORTED ? SG_COLS : 0; }

/* y (M, N) = x (M, K) W^T + bias (N) (bias may be NULL), then ReLU if relu, with W packed as
 * wp; N a multiple of SG_COLS. Returns 0. */
int mobilesam_token_linear_f32(const float *x, const float *wp, const float *bias, float *y,
                               int M, int K, int N, int relu, int threads) {
    const int blocks = N / SG_COLS;
#pragma omp parallel for num_threads(threads < blocks ? threads : blocks) schedule(static)
    for (int blk = 0; blk < blocks; blk++) {
        const int n0 = blk * SG_COLS;
        rows_gemm(M, K, SG_COLS, x, K, wp + (long)blk * K * SG_COLS, SG_COLS,
                  bias ? bias + n0 : NULL, y + n0, N, 0);
        if (relu)
            for (int r = 0; r < M; r++)
                for (int c = 0; c < SG_COLS; c++) {
                    float *v = y + (long)r * N + n0 + c;
                    *v = *v > 0.0f ? *v : 0.0f;
                }
    }
    return 0;
}
