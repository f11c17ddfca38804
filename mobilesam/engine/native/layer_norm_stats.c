/* LayerNorm statistics of factored image tokens (float32, CPU), one pass over the image.
 *
 * The tokens of prompt b are P = a (.) Q with Q[n] = X g[n] + sum_k z[k, n] e[k] (module
 * docstring of mobilesam/modeling/decoder_cache.py). With centred rows e~ and G = e~ e~^T:
 *   mean[n]   = (x_sum[n] + sum_k z[k, n] rowsum(e)[k]) / C
 *   C var Q[n] = x_sq[n] + sum_k z[k, n] ((G z)[k, n] + 2 x~[n] . e~_k)
 * where x~[n] . e~_k comes from per-image products: a cached row for a fixed e_k, or
 * values_k . cross_u for the rows of an attention update. Each (prompt, chunk) task forms
 * (G z | rowsum(e) z) for its chunk in cache, adds the cross terms and reduces it against the
 * same z chunk, so the (m x N) intermediate never reaches memory. Outputs mean and
 * r = 1 / sqrt(a^2 var Q + eps), the LayerNorm's inverse standard deviation of P.
 */
#include <math.h>
#include <stdlib.h>

#include "common.h"
#include "small_gemm.h"

/* One run of rows [start, stop) of z: fixed rows (values == NULL, cross = (stop - start, N)
 * cached products), or an update of `heads` heads (values (B, heads, T, d), cross = (heads,
 * d, N)) with one row per head and token, or with `summed` one row per token (the sum over
 * the heads). */
typedef struct {
    int start, stop, heads, d, summed;
    const float *values;
    const float *cross;
} mobilesam_segment;

int mobilesam_layer_norm_stats_f32(const float *z, long z_batch_stride, const float *lhs,
                                   const mobilesam_segment *segments, int n_segments,
                                   const float *x_sum, const float *x_sq, const float *a,
                                   float channels, float eps, float *mean, float *r,
                                   int batch, int N, int m, int chunk, int threads) {
    const int chunks = (N + chunk - 1) / chunk;
    const long tasks = (long)batch * chunks;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *acc = malloc(sizeof(float) * (size_t)(m + 1) * chunk);
        failed = !acc;
#pragma omp for schedule(static)
        for (long task = 0; task < tasks; task++) {
            if (failed) continue;
            const chunk_task ct = task_of(task, chunks, chunk, N);
            const int b = ct.b, nc = ct.nc;
            const long n0 = ct.n0;
            const float *zc = z + b * z_batch_stride + n0;
            /* acc (m + 1, nc) = lhs (m + 1, m) z chunk (m, nc) */
            rows_gemm(m + 1, m, nc, lhs + (long)b * (m + 1) * m, m, zc, N, NULL, acc, nc, 0);
            for (int s = 0; s < n_segments; s++) {
                const mobilesam_segment *seg = segments + s;
                if (seg->values == NULL) {
                    for (int k = seg->start; k < seg->stop; k++) {
                        const float *src = seg->cross + (long)(k - seg->start) * N + n0;
                        float *dst = acc + (long)k * nc;
                        for (int n = 0; n < nc; n++) dst[n] += 2.0f * src[n];
                    }
                } else {
                    const int rows = seg->stop - seg->start, d = seg->d;
                    const int t = seg->summed ? rows : rows / seg->heads;
                    const float *vb = seg->values + (long)b * seg->heads * t * d;
                    for (int h = 0; h < seg->heads; h++) { /* (t, nc) += 2 v (t, d) cross (d, nc) */
                        float *dst = acc + (long)(seg->start + (seg->summed ? 0 : h * t)) * nc;
                        rows_gemm_scaled(t, d, nc, 2.0f, vb + (long)h * t * d, d,
                                         seg->cross + (long)h * d * N + n0, N, NULL, dst, nc, 1);
                    }
                }
            }
            float *mb = mean + (long)b * N + n0, *rb = r + (long)b * N + n0;
            const float *ab = a ? a + (long)b * N + n0 : NULL;
            for (int n = 0; n < nc; n++) rb[n] = 0.0f;
            for (int k = 0; k < m; k++) {
                const float *ak = acc + (long)k * nc, *zk = zc + (long)k * N;
                for (int n = 0; n < nc; n++) rb[n] += ak[n] * zk[n];
            }
            const float *rowsum = acc + (long)m * nc;
            for (int n = 0; n < nc; n++) {
                mb[n] = (rowsum[n] + x_sum[n0 + n]) / channels;
                float var = (x_sq[n0 + n] + rb[n]) / channels;
                if (ab) var *= ab[n] * ab[n];
                rb[n] = 1.0f / sqrtf((var > 0.0f ? var : 0.0f) + eps);
            }
        }
        free(acc);
    }
    return failed;
}
