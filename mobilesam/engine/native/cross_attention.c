/* The decoder's two cross-attentions over factored image tokens (float32, CPU), each one pass
 * over the image (see mobilesam/modeling/decoder_cache.py for the factored form).
 *
 * Token->image: for each prompt b and head h, the T scaled queries q attend over the N image
 * tokens, whose keys come in factored form:
 *   S[t, n]  = a[n] (q_t . Kimg[:, n] + coef[t] . z[:, n]) + q_t . Kpe[:, n]
 *   P        = softmax over n of S
 *   out_v[t] = sum_n P[t, n] a[n] V[n]        (d values)
 *   out_z[t] = sum_n P[t, n] a[n] z[:, n]      (m values)
 * The image axis is cut into chunks. Each (prompt, chunk) task computes the chunk's scores
 * for all heads (the z chunk, read once, serves every head), exponentials against the chunk's
 * own maximum, and the chunk's pooled sums; the chunks are then merged exactly, as in flash
 * attention, rescaled by exp(chunk max - global max) and divided by the global sum.
 *
 * Image->token: the same scores (the image side now the queries), a softmax over the T tokens
 * per image token, written straight into the factored form's coefficient rows.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "small_gemm.h"

/* Scores of one task, (H T, nc) row-major:
 * S[h T + t, n] = a[n] (q_t . Kimg_h[:, n] + coef[h T + t] . z[:, n]) + q_t . Kpe_h[:, n]. */
static void chunk_scores(float *restrict s, const float *q, const float *k_img,
                         const float *k_pe, const float *coef, const float *z, const float *a,
                         int H, int T, int d, int N, int m, long n0, int nc) {
    const int HT = H * T;
    if (m > 0) /* (HT, nc) = coef (HT, m) z chunk (m, nc) */
        rows_gemm(HT, m, nc, coef, m, z + n0, N, NULL, s, nc, 0);
    for (int h = 0; h < H; h++)
        rows_gemm(T, d, nc, q + (long)h * T * d, d, k_img + (long)h * d * N + n0, N, NULL,
                  s + (long)h * T * nc, nc, m > 0);
    if (a)
        for (int row = 0; row < HT; row++) {
            float *sr = s + (long)row * nc;
            for (int n = 0; n < nc; n++) sr[n] *= a[n0 + n];
        }
    if (k_pe)
        for (int h = 0; h < H; h++)
            rows_gemm(T, d, nc, q + (long)h * T * d, d, k_pe + (long)h * d * N + n0, N, NULL,
                      s + (long)h * T * nc, nc, 1);
}

/* The scores of one task turned into exponentials against each row's maximum (times a),
 * in place; stats gets each row's maximum and sum of exponentials. */
static void chunk_weights(float *restrict s, float *restrict stats, const float *q,
                          const float *k_img, const float *k_pe, const float *coef,
                          const float *z, const float *a, int H, int T, int d, int N, int m,
                          long n0, int nc) {
    chunk_scores(s, q, k_img, k_pe, coef, z, a, H, T, d, N, m, n0, nc);
    for (int row = 0; row < H * T; row++) {
        float *sr = s + (long)row * nc;
        float mx = -INFINITY, sum = 0.0f;
#pragma omp simd reduction(max : mx)
        for (int n = 0; n < nc; n++) mx = sr[n] > mx ? sr[n] : mx;
#pragma omp simd reduction(+ : sum)
        for (int n = 0; n < nc; n++) {
            sr[n] = exp_nonpositive(sr[n] - mx);
            sum += sr[n];
        }
        if (a)
            for (int n = 0; n < nc; n++) sr[n] *= a[n0 + n];
        stats[2 * row] = mx;
        stats[2 * row + 1] = sum;
    }
}

/* out = sum over chunks of exp(max_c - max) part_c / sum over chunks of exp(max_c - max) l_c,
 * for the `len` values at `offset` of each chunk's part of row `row`. */
static void merge_row(const float *parts, long per_task, int chunks, int row, long offset,
                      int len, float *out) {
    float mx = -INFINITY, sum = 0.0f;
    for (int c = 0; c < chunks; c++) {
        const float v = parts[c * per_task + 2 * row];
        mx = v > mx ? v : mx;
    }
    memset(out, 0, sizeof(float) * len);
    for (int c = 0; c < chunks; c++) {
        const float *st = parts + c * per_task;
        const float w = expf(st[2 * row] - mx);
        sum += w * st[2 * row + 1];
        const float *src = st + offset;
        for (int k = 0; k < len; k++) out[k] += w * src[k];
    }
    const float inv = 1.0f / sum;
    for (int k = 0; k < len; k++) out[k] *= inv;
}

int mobilesam_token_attention_f32(const float *q, const float *k_img, const float *k_pe,
                                  const float *coef, const float *z, long z_batch_stride,
                                  const float *a, const float *v_img, float *out_v,
                                  float *out_z, int batch, int H, int T, int d, int N, int m,
                                  int chunk, int threads) {
    const int HT = H * T, chunks = (N + chunk - 1) / chunk;
    const long tasks = (long)batch * chunks, per_task = (long)HT * (2 + d + m);
    float *parts = malloc(sizeof(float) * (size_t)(tasks * per_task));
    if (!parts) return 1;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *s = malloc(sizeof(float) * (size_t)HT * chunk);
        failed = !s;
#pragma omp for schedule(static)
        for (long task = 0; task < tasks; task++) {
            if (failed) continue;
            const chunk_task ct = task_of(task, chunks, chunk, N);
            const int b = ct.b, nc = ct.nc;
            const long n0 = ct.n0;
            float *stats = parts + task * per_task, *pv = stats + 2 * HT, *pz = pv + HT * d;
            const float *zb = m > 0 ? z + b * z_batch_stride : NULL;
            chunk_weights(s, stats, q + (long)b * HT * d, k_img, k_pe,
                          m > 0 ? coef + (long)b * HT * m : NULL, zb,
                          a ? a + (long)b * N : NULL, H, T, d, N, m, n0, nc);
            for (int h = 0; h < H; h++) /* (T, d) = P_h (T, nc) V chunk (nc, d) */
                rows_gemm(T, nc, d, s + (long)h * T * nc, nc, v_img + ((long)h * N + n0) * d, d,
                          NULL, pv + (long)h * T * d, d, 0);
            if (m > 0) /* (HT, m) = P (HT, nc) z chunk^T (nc, m) */
                rows_dot(HT, m, nc, s, nc, zb + n0, N, pz, m);
        }
        free(s);
    }
    if (!failed)
#pragma omp parallel for num_threads(threads) schedule(static)
        for (long br = 0; br < (long)batch * HT; br++) {
            const int b = (int)(br / HT), row = (int)(br % HT);
            const float *first = parts + (long)b * chunks * per_task;
            merge_row(first, per_task, chunks, row, 2L * HT + (long)row * d, d,
                      out_v + br * d);
            if (m > 0)
                merge_row(first, per_task, chunks, row, 2L * HT + (long)HT * d + (long)row * m,
                          m, out_z + br * m);
        }
    free(parts);
    return failed;
}

/* Image->token attention weights over factored image tokens: for each prompt, head h and
 * image token n, the softmax over the T tokens of the scores above (queries q are the tokens'
 * scaled keys, Kimg/Kpe the image side's queries), divided by a[n] when given, written to
 * out[b, h T + t, n] (out_batch_stride between prompts, rows of N values): the coefficients
 * of the update's rows in the factored form, relative to a. With first = 1 each head's first
 * token is left out (rows h (T - 1) + t - 1): its weights follow from the others'. */
int mobilesam_image_attention_f32(const float *q, const float *k_img, const float *k_pe,
                                  const float *coef, const float *z, long z_batch_stride,
                                  const float *a, float *out, long out_batch_stride, int batch,
                                  int H, int T, int d, int N, int m, int first, int chunk,
                                  int threads) {
    const int HT = H * T, chunks = (N + chunk - 1) / chunk;
    const long tasks = (long)batch * chunks;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *s = malloc(sizeof(float) * (size_t)HT * chunk);
        float *mx = malloc(sizeof(float) * (size_t)chunk * 2);
        failed = !s || !mx;
#pragma omp for schedule(static)
        for (long task = 0; task < tasks; task++) {
            if (failed) continue;
            const chunk_task ct = task_of(task, chunks, chunk, N);
            const int b = ct.b, nc = ct.nc;
            const long n0 = ct.n0;
            const float *ab = a ? a + (long)b * N : NULL;
            chunk_scores(s, q + (long)b * HT * d, k_img, k_pe,
                         m > 0 ? coef + (long)b * HT * m : NULL,
                         m > 0 ? z + b * z_batch_stride : NULL, ab, H, T, d, N, m, n0, nc);
            float *sum = mx + chunk;
            for (int h = 0; h < H; h++) {
                float *sh = s + (long)h * T * nc;
                for (int n = 0; n < nc; n++) mx[n] = sh[n], sum[n] = 0.0f;
                for (int t = 1; t < T; t++)
                    for (int n = 0; n < nc; n++)
                        mx[n] = sh[(long)t * nc + n] > mx[n] ? sh[(long)t * nc + n] : mx[n];
                for (int t = 0; t < T; t++) {
                    float *st = sh + (long)t * nc;
                    for (int n = 0; n < nc; n++) {
                        st[n] = exp_nonpositive(st[n] - mx[n]);
                        sum[n] += st[n];
                    }
                }
                for (int n = 0; n < nc; n++)  /* 1 / (sum a), or 1 / sum */
                    sum[n] = 1.0f / (ab ? sum[n] * ab[n0 + n] : sum[n]);
                for (int t = first; t < T; t++) {
                    const float *st = sh + (long)t * nc;
                    const long row = (long)h * (T - first) + t - first;
                    float *dst = out + b * out_batch_stride + row * N + n0;
                    for (int n = 0; n < nc; n++) dst[n] = st[n] * sum[n];
                }
            }
        }
        free(s);
        free(mx);
    }
    return failed;
}
