/*
 * Fused float32 CPU kernels for RMSNorm, RoPE and SwiGLU, forward and backward.
 *
 * PyTorch runs each of these as several elementwise operators, each of which
 * reads and writes the whole tensor. Here every kernel makes one pass over
 * memory per row (a row of width C fits in the L1 cache, so a second loop over
 * it costs no memory traffic). blocklab.nn.kernels compiles this file with the
 * system C compiler on first use and calls it through ctypes.
 *
 * Conventions: sizes and strides are int64 element counts, the last dimension
 * of every tensor has stride 1, and `threads` is the OpenMP team size (PyTorch's
 * intra-op thread count, so both share one libgomp thread pool). Optional
 * outputs are NULL when not requested. The file has no dependency beyond libm.
 */

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many elements a parallel region costs more than it saves. */
#define PARALLEL_MIN 32768

/* ---------------------------------------------------------------- RMSNorm */

/* out = x * rstd * gain per row, rstd = 1 / sqrt(mean(x^2) + eps). rstd may be NULL. */
void bl_rms_norm_forward(const float *x, const float *gain, float *out, float *rstd,
                         int64_t rows, int64_t width, float eps, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * width >= PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * width;
    float *yr = out + r * width;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < width; c++) sum += xr[c] * xr[c];
    float inv = 1.0f / sqrtf(sum / (float)width + eps);
    if (rstd) rstd[r] = inv;
#pragma omp simd
    for (int64_t c = 0; c < width; c++) yr[c] = (xr[c] * inv) * gain[c];
  }
}

/*
 * With xhat = x * rstd and y = xhat * gain:
 *   dx = rstd * (dy * gain - xhat * mean(dy * gain * xhat))
 *   dgain = sum over rows of dy * xhat
 * `gain_partials` contains `threads` rows of `width` zeros on entry. Thread t
 * adds its rows' dgain into row t, and the caller sums the rows.
 */
void bl_rms_norm_backward(const float *dy, const float *x, const float *gain, const float *rstd,
                          float *dx, float *gain_partials, int64_t rows, int64_t width,
                          int threads) {
  int parallel = rows * width >= PARALLEL_MIN;
#pragma omp parallel num_threads(threads) if (parallel)
  {
    int team = 1, id = 0;
#ifdef _OPENMP
    team = omp_get_num_threads();
    id = omp_get_thread_num();
#endif
    float *partial = gain_partials ? gain_partials + (int64_t)id * width : NULL;
    int64_t chunk = (rows + team - 1) / team;
    int64_t first = (int64_t)id * chunk;
    int64_t last = first + chunk < rows ? first + chunk : rows;
    for (int64_t r = first; r < last; r++) {
      const float *dyr = dy + r * width;
      const float *xr = x + r * width;
      float inv = rstd[r];
      if (dx) {
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t c = 0; c < width; c++) dot += dyr[c] * gain[c] * xr[c];
        float coef = dot * inv * inv * inv / (float)width;
        float *dxr = dx + r * width;
#pragma omp simd
        for (int64_t c = 0; c < width; c++) dxr[c] = inv * dyr[c] * gain[c] - coef * xr[c];
      }
      if (partial) {
#pragma omp simd
        for (int64_t c = 0; c < width; c++) partial[c] += dyr[c] * (xr[c] * inv);
      }
    }
  }
}

/* ------------------------------------------------------------------- RoPE */

/*
 * out (B, H, T, D) = x rotated by the angles of cos, sin (B or 1, T, R/2).
 * Pairs are (i, i + R/2), or (2i, 2i + 1) when `interleaved`; dimensions from R
 * on are copied. sign = 1 rotates by +angle; sign = -1 by -angle, which is the
 * backward (the transpose of a rotation is its inverse).
 * Strides of x: x_b, x_h, x_t; of out: o_b, o_h, o_t; of cos and sin: c_b (0 to
 * broadcast over the batch), c_t. out must not overlap x.
 */
void bl_rope(const float *x, const float *cos_table, const float *sin_table, float *out,
             int64_t batch, int64_t heads, int64_t length, int64_t dim, int64_t half,
             int64_t x_b, int64_t x_h, int64_t x_t, int64_t c_b, int64_t c_t,
             int64_t o_b, int64_t o_h, int64_t o_t, int interleaved, float sign, int threads) {
  int64_t rows = batch * heads * length;
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * dim >= PARALLEL_MIN)
  for (int64_t row = 0; row < rows; row++) {
    int64_t t = row % length;
    int64_t h = (row / length) % heads;
    int64_t b = row / (length * heads);
    const float *xr = x + b * x_b + h * x_h + t * x_t;
    const float *cr = cos_table + b * c_b + t * c_t;
    const float *sr = sin_table + b * c_b + t * c_t;
    float *yr = out + b * o_b + h * o_h + t * o_t;
    if (interleaved) {
#pragma omp simd
      for (int64_t i = 0; i < half; i++) {
        float first = xr[2 * i], second = xr[2 * i + 1];
        float c = cr[i], s = sign * sr[i];
        yr[2 * i] = first * c - second * s;
        yr[2 * i + 1] = second * c + first * s;
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < half; i++) {
        float first = xr[i], second = xr[half + i];
        float c = cr[i], s = sign * sr[i];
        yr[i] = first * c - second * s;
        yr[half + i] = second * c + first * s;
      }
    }
    if (2 * half < dim) memcpy(yr + 2 * half, xr + 2 * half, (size_t)(dim - 2 * half) * sizeof(float));
  }
}

/* ----------------------------------------------------------------- SwiGLU */

/*
 * exp(x) for x in [-87, 88] (clamped outside, NaN stays NaN), written so that
 * the compiler vectorizes it: x = k ln2 + r with k an integer and |r| <= ln2 / 2,
 * exp(r) by its Taylor series to r^7 (truncation error below 1e-8 relative),
 * 2^k built in the exponent bits. Adding and subtracting 1.5 * 2^23 rounds
 * x / ln2 to the nearest integer without a library call.
 */
static inline float vector_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - k * 0.693145751953125f;  /* ln2 split in two for an exact k * hi */
  r = r - k * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  union {
    int32_t bits;
    float value;
  } scale = {((int32_t)k + 127) << 23};
  return p * scale.value;
}

/* Elements per task of the elementwise SwiGLU loops: 64 KiB of each operand. */
#define BLOCK 16384

/* out = silu(gate) * up, silu(g) = g * sigmoid(g). */
void bl_swiglu_forward(const float *gate, const float *up, float *out, int64_t n, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (n >= PARALLEL_MIN)
  for (int64_t start = 0; start < n; start += BLOCK) {
    int64_t stop = start + BLOCK < n ? start + BLOCK : n;
#pragma omp simd
    for (int64_t i = start; i < stop; i++) {
      float g = gate[i];
      float s = 1.0f / (1.0f + vector_exp(-g));
      out[i] = g * s * up[i];
    }
  }
}

/*
 * d gate = dy * up * silu'(gate), silu'(g) = s (1 + g (1 - s)) with s = sigmoid(g);
 * d up = dy * silu(gate). Either output may be NULL.
 */
void bl_swiglu_backward(const float *dy, const float *gate, const float *up, float *dgate,
                        float *dup, int64_t n, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (n >= PARALLEL_MIN)
  for (int64_t start = 0; start < n; start += BLOCK) {
    int64_t stop = start + BLOCK < n ? start + BLOCK : n;
    if (dgate && dup) {
#pragma omp simd
      for (int64_t i = start; i < stop; i++) {
        float g = gate[i];
        float s = 1.0f / (1.0f + vector_exp(-g));
        dgate[i] = dy[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
        dup[i] = dy[i] * (g * s);
      }
    } else if (dgate) {
#pragma omp simd
      for (int64_t i = start; i < stop; i++) {
        float g = gate[i];
        float s = 1.0f / (1.0f + vector_exp(-g));
        dgate[i] = dy[i] * up[i] * (s * (1.0f + g * (1.0f - s)));
      }
    } else if (dup) {
#pragma omp simd
      for (int64_t i = start; i < stop; i++) {
        float g = gate[i];
        float s = 1.0f / (1.0f + vector_exp(-g));
        dup[i] = dy[i] * (g * s);
      }
    }
  }
}

/* ------------------------------------------------------- Few-row linear */

/*
 * out (rows, N) = x (rows, K) @ weight (N, K)^T + bias (N, or NULL), for the
 * handful of rows of a decoding step. Such a product reads every weight once
 * and does two FLOPs per weight, so memory bandwidth bounds it. Each thread
 * streams a contiguous block of weight rows. It takes the dot product of each
 * with every input row while that weight row is in the L1 cache.
 */
/* Weights below 1 MiB are streamed by one thread. NOTE: the threshold was
 * chosen, not measured, to keep small layers clear of parallel start-up costs. */
#define LINEAR_PARALLEL_MIN 262144

void bl_linear_rows(const float *x, const float *weight, const float *bias, float *out,
                    int64_t rows, int64_t in_features, int64_t out_features, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) \
    if (out_features * in_features >= LINEAR_PARALLEL_MIN)
  for (int64_t n = 0; n < out_features; n++) {
    const float *w = weight + n * in_features;
    for (int64_t r = 0; r < rows; r++) {
      const float *xr = x + r * in_features;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t k = 0; k < in_features; k++) sum += w[k] * xr[k];
      out[r * out_features + n] = bias ? sum + bias[n] : sum;
    }
  }
}

/*
 * out (rows, N) = silu(x @ gate^T) * (x @ up^T) for gate and up (N, K): the
 * first half of a SwiGLU feed-forward layer in one pass over both weights.
 */
void bl_linear_rows_swiglu(const float *x, const float *gate, const float *up, float *out,
                           int64_t rows, int64_t in_features, int64_t out_features, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) \
    if (2 * out_features * in_features >= LINEAR_PARALLEL_MIN)
  for (int64_t n = 0; n < out_features; n++) {
    const float *wg = gate + n * in_features;
    const float *wu = up + n * in_features;
    for (int64_t r = 0; r < rows; r++) {
      const float *xr = x + r * in_features;
      float g = 0.0f, u = 0.0f;
#pragma omp simd reduction(+ : g, u)
      for (int64_t k = 0; k < in_features; k++) {
        g += wg[k] * xr[k];
        u += wu[k] * xr[k];
      }
      out[r * out_features + n] = g / (1.0f + vector_exp(-g)) * u;
    }
  }
}
