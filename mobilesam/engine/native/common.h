/* Helpers shared by the native decoder kernels: tasks, bfloat16 rounding, a vectorisable exp. */
#ifndef MOBILESAM_NATIVE_COMMON_H
#define MOBILESAM_NATIVE_COMMON_H

#include <stdint.h>
#include <string.h>

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

typedef uint16_t bf16_t;

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
