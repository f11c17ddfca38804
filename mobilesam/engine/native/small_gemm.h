/* Products of a few rows against rows of contiguous values, in vector registers (float32).
 *
 * The decoder's kernels multiply T = 7 or so prompt rows (or H T = 56) by image-side rows of
 * a few hundred values: shapes where a BLAS call spends more time choosing and packing than
 * multiplying. Here a block of ROWS rows by COLS columns is accumulated in registers, reading
 * each weight value once per block.
 */
#ifndef MOBILESAM_NATIVE_SMALL_GEMM_H
#define MOBILESAM_NATIVE_SMALL_GEMM_H

#include <string.h>

#if defined(__AVX512F__)
enum { SG_LANES = 16, SG_ROWS = 8, SG_DOT_K = 4 }; /* 32 zmm registers */
#else
enum { SG_LANES = 8, SG_ROWS = 4, SG_DOT_K = 2 }; /* 16 ymm registers */
#endif
enum { SG_COLS = 2 * SG_LANES, SG_DOT_R = 4 };
typedef float sg_vec __attribute__((vector_size(SG_LANES * sizeof(float)), aligned(sizeof(float))));

/* y rows (SG_ROWS of them, the first mr stored) of `nv` vectors (1 or 2) from K terms:
 * y[r][c] (+)= alpha (sum_k x[r][k] w[k ldw + c] (+ bias[c])); x[r] the rows of the block. */
static inline __attribute__((always_inline)) void sg_block(
    const float *const *x, const float *restrict w, long ldw, int K, const float *bias,
    float *restrict y, long ldy, int mr, int nv, int accumulate, float alpha) {
    sg_vec acc[SG_ROWS][2];
    sg_vec b[2] = {{0}, {0}};
    if (bias) memcpy(b, bias, nv * sizeof(sg_vec));
#pragma GCC unroll 8
    for (int r = 0; r < SG_ROWS; r++) acc[r][0] = b[0], acc[r][1] = b[1];
    for (int k = 0; k < K; k++) {
        sg_vec wv[2];
        memcpy(wv, w + k * ldw, nv * sizeof(sg_vec));
#pragma GCC unroll 8
        for (int r = 0; r < SG_ROWS; r++) {
            const float s = x[r][k];
            acc[r][0] += s * wv[0];
            if (nv == 2) acc[r][1] += s * wv[1];
        }
    }
    float out[SG_ROWS][SG_COLS]; /* stored at fixed indices, so acc stays in registers */
#pragma GCC unroll 8
    for (int r = 0; r < SG_ROWS; r++) memcpy(out[r], acc[r], sizeof out[r]);
    for (int r = 0; r < mr; r++) {
        float *dst = y + r * ldy;
        if (accumulate)
            for (int c = 0; c < nv * SG_LANES; c++) dst[c] += alpha * out[r][c];
        else if (alpha != 1.0f)
            for (int c = 0; c < nv * SG_LANES; c++) dst[c] = alpha * out[r][c];
        else
            memcpy(dst, out[r], nv * sizeof(sg_vec));
    }
}

/* Y (M, n) (+)= alpha X (M, K) W (K, n) (+ bias (n), may be NULL): X rows of ldx, W rows of
 * ldw and Y rows of ldy floats, each row's values contiguous. Rows past M in a block repeat
 * row M - 1 (computed, not stored). */
static inline void rows_gemm_scaled(int M, int K, int n, float alpha, const float *x, long ldx,
                                    const float *w, long ldw, const float *bias, float *y,
                                    long ldy, int accumulate) {
    for (int m0 = 0; m0 < M; m0 += SG_ROWS) {
        const float *rows[SG_ROWS];
        for (int r = 0; r < SG_ROWS; r++) rows[r] = x + (m0 + r < M ? m0 + r : M - 1) * ldx;
        const int mr = M - m0 < SG_ROWS ? M - m0 : SG_ROWS;
        float *yb = y + m0 * ldy;
        int c = 0;
        for (; c + SG_COLS <= n; c += SG_COLS)
            sg_block(rows, w + c, ldw, K, bias ? bias + c : NULL, yb + c, ldy, mr, 2, accumulate,
                     alpha);
        for (; c + SG_LANES <= n; c += SG_LANES)
            sg_block(rows, w + c, ldw, K, bias ? bias + c : NULL, yb + c, ldy, mr, 1, accumulate,
                     alpha);
        for (; c < n; c++) /* columns past the last whole vector */
            for (int r = 0; r < mr; r++) {
                float sum = bias ? bias[c] : 0.0f;
                for (int k = 0; k < K; k++) sum += rows[r][k] * w[k * ldw + c];
                yb[r * ldy + c] = alpha * sum + (accumulate ? yb[r * ldy + c] : 0.0f);
            }
    }
}

/* rows_gemm_scaled with alpha = 1. */
static inline void rows_gemm(int M, int K, int n, const float *x, long ldx, const float *w,
                             long ldw, const float *bias, float *y, long ldy, int accumulate) {
    rows_gemm_scaled(M, K, n, 1.0f, x, ldx, w, ldw, bias, y, ldy, accumulate);
}

/* Y[r ldy + k] = sum_j P[r][j] Z[k][j] for r < R, k < Kz, j < n: dot products of P rows
 * (ldp) with Z rows (ldz), in blocks of SG_DOT_R x SG_DOT_K. */
static inline void rows_dot(int R, int Kz, int n, const float *p, long ldp, const float *z,
                            long ldz, float *y, long ldy) {
    const int nvec = n / SG_LANES * SG_LANES;
    for (int r0 = 0; r0 < R; r0 += SG_DOT_R)
        for (int k0 = 0; k0 < Kz; k0 += SG_DOT_K) {
            const float *pr[SG_DOT_R], *zr[SG_DOT_K];
            for (int i = 0; i < SG_DOT_R; i++) pr[i] = p + (r0 + i < R ? r0 + i : R - 1) * ldp;
            for (int i = 0; i < SG_DOT_K; i++) zr[i] = z + (k0 + i < Kz ? k0 + i : Kz - 1) * ldz;
            sg_vec acc[SG_DOT_R][SG_DOT_K];
            memset(acc, 0, sizeof acc);
            for (int j = 0; j < nvec; j += SG_LANES) {
                sg_vec pv[SG_DOT_R], zv[SG_DOT_K];
#pragma GCC unroll 4
                for (int i = 0; i < SG_DOT_R; i++) memcpy(&pv[i], pr[i] + j, sizeof pv[i]);
#pragma GCC unroll 4
                for (int i = 0; i < SG_DOT_K; i++) memcpy(&zv[i], zr[i] + j, sizeof zv[i]);
#pragma GCC unroll 4
                for (int a = 0; a < SG_DOT_R; a++)
#pragma GCC unroll 4
                    for (int b = 0; b < SG_DOT_K; b++) acc[a][b] += pv[a] * zv[b];
            }
            float sums[SG_DOT_R][SG_DOT_K];
#pragma GCC unroll 4
            for (int a = 0; a < SG_DOT_R; a++)
#pragma GCC unroll 4
                for (int b = 0; b < SG_DOT_K; b++) {
                    float s = 0.0f;
                    for (int l = 0; l < SG_LANES; l++) s += acc[a][b][l];
                    for (int j = nvec; j < n; j++) s += pr[a][j] * zr[b][j];
                    sums[a][b] = s;
                }
            for (int a = 0; a < SG_DOT_R && r0 + a < R; a++)
                for (int b = 0; b < SG_DOT_K && k0 + b < Kz; b++) y[(r0 + a) * ldy + k0 + b] = sums[a][b];
        }
}

#endif
