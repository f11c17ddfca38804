/* SAM's mask-decoder upscaling tail, fused per chunk of image tokens (CPU).
 *
 * For each prompt b and image token p (grid position (i, j) of an h x w grid):
 *   y   = shared[p] + ew[b]^T z[b, :, p]        first transposed conv, factored (4 x G values)
 *   y   = y * a[b, p] + bias1                   per-token scale of the factored form, bias
 *   y   = GELU(LayerNorm_G(y))                  per sub-pixel (a, b), G channels
 *   x2  = GELU(W2^T y + b2)                     second transposed conv: 4 x O values per sub-pixel
 *   out = hyper[b] . x2                         T mask logits per sub-sub-pixel
 * and sub-pixel (a, b) of sub-pixel (c, d) of token (i, j) is output pixel
 * (4i + 2a + c, 4j + 2b + d). A chunk's intermediates are channel-major (one row of the
 * chunk's tokens per channel), so LayerNorm, GELU and bias run along rows and every product
 * is a few weight rows against rows of tokens (small_gemm.h), in the core's cache. The chunks
 * of all prompts are shared between OpenMP threads. The Python side
 * (mobilesam/engine/native/kernels.py) documents the arguments; the arithmetic is that of the
 * engine's PyTorch tail (mobilesam/engine/upscale_tail.py) in another order of rounding.
 *
 * With bf16 set, the two convolutions take bfloat16 inputs (shared, ew^T and W2^T come in
 * bfloat16; z and the LayerNorm's output are rounded to it) with float32 sums, on the CPU's
 * AVX512-BF16 dot-product instruction; LayerNorm, GELUs and the hypernetwork product stay
 * float32, the GELUs with a cheaper erf whose error is far below that rounding.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "small_gemm.h"

/* erf by a rational minimax approximation on [-4, 4] (odd degree-13 numerator, even degree-8
 * denominator: the one Eigen and XLA use), clamped outside, where erf is +-1 in float32.
 * Absolute error ~3e-7, with 16 operations against the 25 of the exp-based formula below. */
static inline float erf_rational(float u) {
    const float x = u < -4.0f ? -4.0f : (u > 4.0f ? 4.0f : u);
    const float x2 = x * x;
    float p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
    p = x2 * p - 2.10102402082508e-06f;
    p = x2 * p - 5.69250639462346e-05f;
    p = x2 * p - 7.34990630326855e-04f;
    p = x2 * p - 2.95459980854025e-03f;
    p = x2 * p - 1.60960333262415e-02f;
    float q = x2 * -1.45660718464996e-05f - 2.13374055278905e-04f;
    q = x2 * q - 1.68282697438203e-03f;
    q = x2 * q - 7.37332916720468e-03f;
    q = x2 * q - 1.42647390514189e-02f;
    return x * p / q;
}

/* In-place exact-erf GELU, x * (1 + erf(x / sqrt 2)) / 2. With rational = 0, erf by
 * Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), the formula of PyTorch's vectorised
 * CPU erf; with rational = 1 (the bf16 tail), erf_rational: ~35% faster, GELU within 1.5e-6
 * absolute, far below the bfloat16 rounding of the products around it. */
static void gelu(float *restrict x, long n, int rational) {
    if (rational) {
        for (long i = 0; i < n; i++)
            x[i] = 0.5f * x[i] * (1.0f + erf_rational(x[i] * 0.70710678118654752f));
        return;
    }
    for (long i = 0; i < n; i++) {
        float v = x[i];
        float u = v * 0.70710678118654752f;
        float au = fabsf(u);
        float t = 1.0f / (1.0f + 0.3275911f * au);
        float poly = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t
                       - 0.284496736f) * t + 0.254829592f) * t;
        float erf_abs = 1.0f - poly * exp_nonpositive(-au * au);
        x[i] = 0.5f * v * (1.0f + copysignf(erf_abs, u));
    }
}

/* ---- bfloat16 products on AVX512-BF16 ------------------------------------------------- */

#if defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 10)
#include <immintrin.h>
#define BF16_KERNEL 1
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

/* y (M, n) = x (M, 2 K2) w, bf16 inputs, float32 sums: x rows of ldx bf16 values (pairs of
 * adjacent terms), w packed in pairs, (K2, n, 2). Blocks of 8 rows by 32 columns in
 * registers, as rows_gemm (masked at the last columns); rows past M repeat row M - 1. */
BF16_TARGET static void bf16_gemm(int M, int K2, int n, const bf16_t *x, long ldx,
                                  const bf16_t *w, float *y, long ldy) {
    for (int m0 = 0; m0 < M; m0 += 8) {
        const bf16_t *rows[8];
        for (int r = 0; r < 8; r++) rows[r] = x + (long)(m0 + r < M ? m0 + r : M - 1) * ldx;
        const int mr = M - m0 < 8 ? M - m0 : 8;
        for (int c = 0; c < n; c += 32) {
            const int n0 = n - c < 16 ? n - c : 16, n1 = n - c - 16 < 0 ? 0 : (n - c - 16 < 16 ? n - c - 16 : 16);
            const __mmask16 k0 = (__mmask16)((1u << n0) - 1u), k1 = (__mmask16)((1u << n1) - 1u);
            __m512 acc[8][2];
            for (int r = 0; r < 8; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
            for (int k = 0; k < K2; k++) {
                const bf16_t *wk = w + ((long)k * n + c) * 2;
                const __m512bh w0 = (__m512bh)_mm512_maskz_loadu_epi32(k0, wk);
                const __m512bh w1 = (__m512bh)_mm512_maskz_loadu_epi32(k1, wk + 32);
#pragma GCC unroll 8
                for (int r = 0; r < 8; r++) {
                    int32_t pair;
                    memcpy(&pair, rows[r] + 2 * k, sizeof pair);
                    const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
                    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xv, w0);
                    acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xv, w1);
                }
            }
            float out[8][32]; /* stored at fixed indices, so acc stays in registers */
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) {
                _mm512_storeu_ps(out[r], acc[r][0]);
                _mm512_storeu_ps(out[r] + 16, acc[r][1]);
            }
            for (int r = 0; r < mr; r++)
                memcpy(y + (long)(m0 + r) * ldy + c, out[r], sizeof(float) * (size_t)(n0 + n1));
        }
    }
}
#else
#define BF16_KERNEL 0
static void bf16_gemm(int M, int K2, int n, const bf16_t *x, long ldx, const bf16_t *w,
                      float *y, long ldy) {
    (void)M, (void)K2, (void)n, (void)x, (void)ldx, (void)w, (void)y, (void)ldy;
}
#endif

int mobilesam_has_bf16_kernel(void) { return BF16_KERNEL; }

/* The bfloat16 bits of x, rounded to nearest even, in the upper half of a 32-bit word
 * (finite x; the lower half is garbage). Branch-free, so that loops of it vectorise. */
static inline uint32_t bf16_high(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u + 0x7fffu + ((u >> 16) & 1u);
}

/* rows (K, p) of float32 with row stride ld -> bf16 pairs (ceil(K / 2), p, 2), zero-padded:
 * each 32-bit word holds row k's value in its lower half and row k + 1's in its upper. */
static void pack_pairs(bf16_t *restrict dst, const float *src, long ld, int K, int p) {
    for (int k = 0; k < K; k += 2) {
        const float *r0 = src + (long)k * ld, *r1 = r0 + ld;
        uint32_t *d = (uint32_t *)(dst + (long)k * p);
        if (k + 1 < K)
            for (int q = 0; q < p; q++)
                d[q] = (bf16_high(r1[q]) & 0xffff0000u) | (bf16_high(r0[q]) >> 16);
        else
            for (int q = 0; q < p; q++) d[q] = bf16_high(r0[q]) >> 16;
    }
}

/* ---- one chunk of one prompt ------------------------------------------------------------ */

typedef struct {
    const void *shared, *ewt, *w2t;
    const float *z, *a, *bias1, *lnw, *lnb, *b2, *hyper;
    float *out;
    long z_batch_stride;
    float eps;
    int h, w, m, G, O, T, bf16;
} tail;

typedef struct {
    float *y, *x2, *lg, *stats;
    bf16_t *packed;
} buffers;

/* y (4G, p) = shared + ew^T z chunk, scaled by a, plus bias1 (channel-major). */
static void first_conv(const tail *t, const buffers *bf, int b, long p0, int p) {
    const long N = (long)t->h * t->w;
    const int C4 = 4 * t->G, mp = t->m + (t->m & 1);
    const float *z = t->z + b * t->z_batch_stride + p0;
    if (t->m == 0)
        memset(bf->y, 0, sizeof(float) * (size_t)C4 * p);
    else if (t->bf16) {
        pack_pairs(bf->packed, z, N, t->m, p);
        bf16_gemm(C4, mp / 2, p, (const bf16_t *)t->ewt + (long)b * C4 * mp, mp, bf->packed,
                  bf->y, p);
    } else
        rows_gemm(C4, t->m, p, (const float *)t->ewt + (long)b * C4 * t->m, t->m, z, N, NULL,
                  bf->y, p, 0);
    const float *a = t->a ? t->a + b * N + p0 : NULL;
    for (int c = 0; c < C4; c++) {
        float *row = bf->y + (long)c * p;
        if (t->bf16) {
            const bf16_t *sh = (const bf16_t *)t->shared + c * N + p0;
            for (int q = 0; q < p; q++) row[q] += from_bf16(sh[q]);
        } else {
            const float *sh = (const float *)t->shared + c * N + p0;
            for (int q = 0; q < p; q++) row[q] += sh[q];
        }
        const float bias = t->bias1[c];
        if (a)
            for (int q = 0; q < p; q++) row[q] = row[q] * a[q] + bias;
        else
            for (int q = 0; q < p; q++) row[q] += bias;
    }
}

/* LayerNorm over each sub-pixel's G channels (rows g G .. g G + G of y), then GELU. */
static void norm_and_gelu(const tail *t, const buffers *bf, int p) {
    const int G = t->G;
    float *mean = bf->stats, *inv = bf->stats + p;
    for (int g = 0; g < 4; g++) {
        float *rows = bf->y + (long)g * G * p;
        memset(mean, 0, sizeof(float) * (size_t)p);
        memset(inv, 0, sizeof(float) * (size_t)p);
        for (int c = 0; c < G; c++)
            for (int q = 0; q < p; q++) mean[q] += rows[(long)c * p + q];
        for (int q = 0; q < p; q++) mean[q] /= (float)G;
        for (int c = 0; c < G; c++)
            for (int q = 0; q < p; q++) {
                const float v = rows[(long)c * p + q] - mean[q];
                inv[q] += v * v;
            }
        for (int q = 0; q < p; q++) inv[q] = 1.0f / sqrtf(inv[q] / (float)G + t->eps);
        for (int c = 0; c < G; c++) {
            float *row = rows + (long)c * p;
            const float wc = t->lnw[c], bc = t->lnb[c];
            for (int q = 0; q < p; q++) row[q] = (row[q] - mean[q]) * inv[q] * wc + bc;
        }
    }
    gelu(bf->y, 4L * G * p, t->bf16);
}

/* x2 (4 sub-pixels, 4O, p) = GELU(W2^T y_g + b2) per sub-pixel g. */
static void second_conv(const tail *t, const buffers *bf, int p) {
    const int G = t->G, O4 = 4 * t->O;
    for (int g = 0; g < 4; g++) {
        const float *yg = bf->y + (long)g * G * p;
        float *x2 = bf->x2 + (long)g * O4 * p;
        if (t->bf16) {
            pack_pairs(bf->packed, yg, p, G, p);
            bf16_gemm(O4, (G + 1) / 2, p, (const bf16_t *)t->w2t, G + (G & 1), bf->packed, x2, p);
        } else
            rows_gemm(O4, G, p, (const float *)t->w2t, G, yg, p, NULL, x2, p, 0);
        for (int k = 0; k < O4; k++) {
            float *row = x2 + (long)k * p;
            const float bias = t->b2[k];
            for (int q = 0; q < p; q++) row[q] += bias;
        }
    }
    gelu(bf->x2, 16L * t->O * p, t->bf16);
}

/* Mask logits of grid rows r0 .. r0 + nrows (p = nrows w tokens): lg (T, 16, p) from the
 * hypernetwork product, then written to out (T, 4h, 4w) at pixel (4i + 2a + c, 4j + 2b + d)
 * for sub-pixel g = 2a + b and sub-sub-pixel s = 2c + d. */
static void logits(const tail *t, const buffers *bf, int b, int r0, int nrows) {
    const int w = t->w, p = nrows * w, O = t->O, T = t->T;
    const float *hyper = t->hyper + (long)b * T * O;
    for (int gs = 0; gs < 16; gs++) /* (T, p) rows of lg for sub-pixel g, sub-sub-pixel s */
        rows_gemm(T, O, p, hyper, O, bf->x2 + (long)gs * O * p, p, NULL, bf->lg + (long)gs * p,
                  16L * p, 0);
    const long W4 = 4L * w;
    float *out = t->out + (long)b * T * 16 * t->h * w;
    for (int tk = 0; tk < T; tk++)
        for (int i = 0; i < nrows; i++)
            for (int a = 0; a < 2; a++)
                for (int c = 0; c < 2; c++) {
                    float *dst = out + ((long)tk * 4 * t->h + 4L * (r0 + i) + 2 * a + c) * W4;
                    const float *src = bf->lg + (long)tk * 16 * p + (long)i * w;
                    const float *s00 = src + (long)((2 * a) * 4 + 2 * c) * p;     /* b 0, d 0 */
                    const float *s01 = src + (long)((2 * a) * 4 + 2 * c + 1) * p; /* b 0, d 1 */
                    const float *s10 = src + (long)((2 * a + 1) * 4 + 2 * c) * p; /* b 1, d 0 */
                    const float *s11 = s10 + p;                                   /* b 1, d 1 */
                    for (int j = 0; j < w; j++) {
                        dst[4 * j + 0] = s00[j];
                        dst[4 * j + 1] = s01[j];
                        dst[4 * j + 2] = s10[j];
                        dst[4 * j + 3] = s11[j];
                    }
                }
}

int mobilesam_upscale_tail(const void *shared, const float *z, long z_batch_stride,
                           const void *ewt, const float *a, const float *bias1, const float *lnw,
                           const float *lnb, float eps, const void *w2t, const float *b2,
                           const float *hyper, float *out, int batch, int h, int w, int m, int G,
                           int O, int T, int rows_per_chunk, int bf16, int threads) {
    if (bf16 && !BF16_KERNEL) return 2;
    const tail t = {shared, ewt, w2t, z, a, bias1, lnw, lnb, b2, hyper, out, z_batch_stride,
                    eps, h, w, m, G, O, T, bf16};
    const int chunks = (h + rows_per_chunk - 1) / rows_per_chunk;
    const int P = rows_per_chunk * w, K = m > G ? m : G;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        buffers bf = {
            malloc(sizeof(float) * (size_t)P * 4 * G),
            malloc(sizeof(float) * (size_t)P * 16 * O),
            malloc(sizeof(float) * (size_t)P * 16 * T),
            malloc(sizeof(float) * (size_t)P * 2),
            bf16 ? malloc(sizeof(bf16_t) * (size_t)P * (K + 1)) : NULL,
        };
        failed = !bf.y || !bf.x2 || !bf.lg || !bf.stats || (bf16 && !bf.packed);
#pragma omp for schedule(static)
        for (long task = 0; task < (long)batch * chunks; task++) {
            if (failed) continue;
            const int b = (int)(task / chunks), r0 = (int)(task % chunks) * rows_per_chunk;
            const int nrows = r0 + rows_per_chunk > h ? h - r0 : rows_per_chunk;
            const int p = nrows * w;
            first_conv(&t, &bf, b, (long)r0 * w, p);
            norm_and_gelu(&t, &bf, p);
            second_conv(&t, &bf, p);
            logits(&t, &bf, b, r0, nrows);
        }
        free(bf.y);
        free(bf.x2);
        free(bf.lg);
        free(bf.stats);
        free(bf.packed);
    }
    return failed;
}
