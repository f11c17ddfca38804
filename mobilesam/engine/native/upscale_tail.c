/* SAM's mask-decoder upscaling tail, fused per chunk of image tokens (float32 or bfloat16
 * products, CPU).
 *
 * For each prompt b and image token p (grid position (i, j) of an h x w grid):
 *   y   = shared[p] + z[b, :, p]^T ew[b]        first transposed conv, factored (4 x G values)
 *   y   = y * a[b, p] + bias1                   per-token scale of the factored form, bias
 *   y   = GELU(LayerNorm_G(y))                  per sub-pixel (a, b), G channels
 *   x2  = GELU(y W2 + b2)                       second transposed conv: 4 x O values per sub-pixel
 *   out = hyper[b] . x2                         T mask logits per sub-sub-pixel
 * and sub-pixel (a, b) of sub-pixel (c, d) of token (i, j) is output pixel
 * (4i + 2a + c, 4j + 2b + d). Every intermediate of a chunk stays in the core's cache, the
 * products go to the BLAS sgemm_ that PyTorch links (MKL), and the chunks of all prompts are
 * shared between OpenMP threads. The Python side (mobilesam/engine/native/__init__.py) documents the
 * arguments; the arithmetic is that of MaskDecoder._tail, in a different order of rounding.
 * With bf16 set, the two convolutions take bfloat16 inputs (shared, ew and W2 come in
 * bfloat16; z and the first LayerNorm's output are rounded to it) with float32 sums; the
 * LayerNorm, GELUs and the hypernetwork product stay float32, the GELUs with a cheaper erf
 * whose error is far below that rounding.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

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

/* y (p, 4G) += shared rows (float32, or bfloat16 with bf16), then y = y * a + bias1,
 * LayerNorm over each G-channel group. */
static void scale_and_norm(float *restrict y, const void *shared, int bf16,
                           const float *restrict a, const float *restrict bias1,
                           const float *restrict lnw, const float *restrict lnb, float eps,
                           int p, int G) {
    for (int q = 0; q < p; q++) {
        float s = a ? a[q] : 1.0f;
        float *row = y + (long)q * 4 * G;
        if (bf16) {
            const bf16_t *sh = (const bf16_t *)shared + (long)q * 4 * G;
            for (int c = 0; c < 4 * G; c++) row[c] = (row[c] + from_bf16(sh[c])) * s + bias1[c];
        } else {
            const float *sh = (const float *)shared + (long)q * 4 * G;
            for (int c = 0; c < 4 * G; c++) row[c] = (row[c] + sh[c]) * s + bias1[c];
        }
        for (int g = 0; g < 4; g++) {
            float *v = row + g * G;
            float mean = 0.0f, var = 0.0f;
#pragma omp simd reduction(+ : mean)
            for (int c = 0; c < G; c++) mean += v[c];
            mean /= (float)G;
#pragma omp simd reduction(+ : var)
            for (int c = 0; c < G; c++) var += (v[c] - mean) * (v[c] - mean);
            float r = 1.0f / sqrtf(var / (float)G + eps);
            for (int c = 0; c < G; c++) v[c] = (v[c] - mean) * r * lnw[c] + lnb[c];
        }
    }
}

/* x2t (4O, rows) channel-major: += b2, GELU; then logits lg (T, 4, rows):
 * lg[t][s][r] = sum_c hyper[t][c] x2t[s O + c][r] for sub-sub-pixel s. */
static void second_act_and_hyper(float *restrict x2t, float *restrict lg,
                                 const float *restrict b2, const float *restrict hyper,
                                 int rows, int O, int T, int bf16) {
    for (int k = 0; k < 4 * O; k++) {
        float *col = x2t + (long)k * rows;
        for (int r = 0; r < rows; r++) col[r] += b2[k];
    }
    gelu(x2t, 4L * O * rows, bf16);
    for (int s = 0; s < 4; s++)  /* column-major (rows, T) with ld 4 rows */
        gemm('N', 'N', rows, T, O, x2t + (long)s * O * rows, rows, hyper, O, 0.0f,
             lg + (long)s * rows, 4 * rows);
}

/* Write lg (T, 4 [c, d], 4p [pp, a, b]) of grid rows r0.. (p = nrows * w tokens) into out
 * (T, 4h, 4w): pixel (4i + 2a + c, 4j + 2b + d). */
static void scatter(const float *restrict lg, float *restrict out, int T, int r0, int nrows,
                    int h, int w) {
    const long rows = 4L * nrows * w, W4 = 4L * w;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < nrows; i++)
            for (int a = 0; a < 2; a++)
                for (int c = 0; c < 2; c++) {
                    float *dst = out + ((long)t * 4 * h + 4L * (r0 + i) + 2 * a + c) * W4;
                    const float *s0 = lg + ((long)t * 4 + 2 * c) * rows + 4L * i * w + 2 * a;
                    const float *s1 = s0 + rows; /* d = 1 */
                    for (int j = 0; j < w; j++) {
                        dst[4 * j + 0] = s0[4 * j];     /* b = 0, d = 0 */
                        dst[4 * j + 1] = s1[4 * j];     /* b = 0, d = 1 */
                        dst[4 * j + 2] = s0[4 * j + 1]; /* b = 1, d = 0 */
                        dst[4 * j + 3] = s1[4 * j + 1]; /* b = 1, d = 1 */
                    }
                }
}

/* y (p, 4G) = z chunk^T (p, m) ew (m, 4G): float32, or bfloat16 inputs (z rounded into zb). */
static void first_conv(float *y, const float *z, long N, const void *ew, int bf16, bf16_t *zb,
                       int p, int m, int G) {
    if (bf16) {
        for (int k = 0; k < m; k++)
            for (int n = 0; n < p; n++) zb[(long)k * p + n] = to_bf16(z[k * N + n]);
        cblas_gemm_bf16bf16f32(CBLAS_ROW_MAJOR, CBLAS_TRANS, CBLAS_NO_TRANS, p, 4 * G, m, 1.0f,
                               zb, p, (const bf16_t *)ew, 4 * G, 0.0f, y, 4 * G);
    } else { /* column-major (4G, p) = ew^T (4G, m) z (m, p) */
        gemm('N', 'T', 4 * G, p, m, (const float *)ew, 4 * G, z, (int)N, 0.0f, y, 4 * G);
    }
}

/* x2t (4O, 4p) = W2^T y^T for y (4p, G): float32, or bfloat16 inputs (y rounded into yb). */
static void second_conv(float *x2t, const float *y, const void *w2, int bf16, bf16_t *yb,
                        int p, int G, int O) {
    if (bf16) {
        for (long i = 0; i < 4L * p * G; i++) yb[i] = to_bf16(y[i]);
        cblas_gemm_bf16bf16f32(CBLAS_ROW_MAJOR, CBLAS_TRANS, CBLAS_TRANS, 4 * O, 4 * p, G, 1.0f,
                               (const bf16_t *)w2, 4 * O, yb, G, 0.0f, x2t, 4 * p);
    } else { /* column-major (4p, 4O) = y (4p, G) W2 (G, 4O) */
        gemm('T', 'T', 4 * p, 4 * O, G, y, G, (const float *)w2, 4 * O, 0.0f, x2t, 4 * p);
    }
}

int mobilesam_has_bf16_gemm(void) { return cblas_gemm_bf16bf16f32 != NULL; }

int mobilesam_upscale_tail(const void *shared, const float *z, long z_batch_stride,
                               const void *ew, const float *a, const float *bias1,
                               const float *lnw, const float *lnb, float eps, const void *w2,
                               const float *b2, const float *hyper, float *out, int batch,
                               int h, int w, int m, int G, int O, int T, int rows_per_chunk,
                               int bf16, int threads) {
    const long N = (long)h * w;
    const int chunks = (h + rows_per_chunk - 1) / rows_per_chunk;
    const int P = rows_per_chunk * w;
    const size_t elem = bf16 ? sizeof(bf16_t) : sizeof(float);
    if (bf16 && !mobilesam_has_bf16_gemm()) return 2;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *y = malloc(sizeof(float) * (size_t)P * 4 * G);
        float *x2t = malloc(sizeof(float) * (size_t)P * 16 * O);
        float *lg = malloc(sizeof(float) * (size_t)P * 16 * T);
        bf16_t *zb = bf16 ? malloc(sizeof(bf16_t) * (size_t)P * (m > 4 * G ? m : 4 * G)) : NULL;
        failed = !y || !x2t || !lg || (bf16 && !zb);
#pragma omp for schedule(static)
        for (long task = 0; task < (long)batch * chunks; task++) {
            if (failed) continue;
            const int b = (int)(task / chunks), r0 = (int)(task % chunks) * rows_per_chunk;
            const int nrows = r0 + rows_per_chunk > h ? h - r0 : rows_per_chunk;
            const int p = nrows * w;
            const long p0 = (long)r0 * w;
            if (m > 0)
                first_conv(y, z + b * z_batch_stride + p0, N,
                           (const char *)ew + (long)b * m * 4 * G * elem, bf16, zb, p, m, G);
            else
                memset(y, 0, sizeof(float) * (size_t)p * 4 * G);
            scale_and_norm(y, (const char *)shared + p0 * 4 * G * elem, bf16,
                           a ? a + b * N + p0 : NULL, bias1, lnw, lnb, eps, p, G);
            gelu(y, (long)p * 4 * G, bf16);
            second_conv(x2t, y, w2, bf16, zb, p, G, O); /* zb reused for y's bfloat16 copy */
            second_act_and_hyper(x2t, lg, b2, hyper + (long)b * T * O, 4 * p, O, T, bf16);
            scatter(lg, out + (long)b * T * 16 * N, T, r0, nrows, h, w);
        }
        free(y);
        free(x2t);
        free(lg);
        free(zb);
    }
    return failed;
}
