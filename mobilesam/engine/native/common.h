/* Helpers shared by the native decoder kernels: the BLAS product and a vectorisable exp. */
#ifndef MOBILESAM_NATIVE_COMMON_H
#define MOBILESAM_NATIVE_COMMON_H

#include <stdint.h>
#include <string.h>

void sgemm_(const char *ta, const char *tb, const int *m, const int *n, const int *k,
            const float *alpha, const float *a, const int *lda, const float *b, const int *ldb,
            const float *beta, float *c, const int *ldc);

/* Column-major C(m, n) = alpha op(A) op(B) + beta C. */
static inline void gemm_scaled(char ta, char tb, int m, int n, int k, float alpha,
                               const float *a, int lda, const float *b, int ldb, float beta,
                               float *c, int ldc) {
    sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

/* Column-major C(m, n) = op(A) op(B) + beta C. */
static inline void gemm(char ta, char tb, int m, int n, int k, const float *a, int lda,
                        const float *b, int ldb, float beta, float *c, int ldc) {
    gemm_scaled(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}

/* Task `task` of the (prompt, chunk) tasks over an image of N tokens cut into chunks of
 * `chunk`: its prompt b and its tokens n0 .. n0 + nc. */
typedef struct {
    int b, nc;
    long n0;
} chunk_task;

static inline chunk_task task_of(long task, int chunks, int chunk, long N) {
    chunk_task t;
    t.b = (int)(task / chunks);
    t.n0 = (task % chunks) * (long)chunk;
    t.nc = N - t.n0 < chunk ? (int)(N - t.n0) : chunk;
    return t;
}

/* bfloat16 products with float32 sums (MKL's; a weak reference, null under another BLAS). */
typedef uint16_t bf16_t;
void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k,
                            float alpha, const bf16_t *a, int lda, const bf16_t *b, int ldb,
                            float beta, float *c, int ldc) __attribute__((weak));
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };

/* float -> bfloat16, rounded to nearest even (NaN stays NaN), as torch's .to(bfloat16). */
static inline bf16_t to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (bf16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded);
}

static inline float from_bf16(bf16_t v) {
    const uint32_t u = (uint32_t)v << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* exp(x) for x <= 0 (Cody-Waite reduction, degree-6 polynomial: ~1 ulp), vectorisable. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f;
}

#endif
