// SwiGLU's elementwise work in one pass forward and one backward: weighted, for one routed
// expert's rows, and plain, for the rows of a dense MLP or of the shared experts. At the end, the
// loop that adds each token's expert rows back (add_pair_rows), here for this file's flags.
//
// The kernels are single-threaded: experts.cpp runs the experts side by side, one per thread,
// and splits plain rows over the threads itself. This file is compiled apart from experts.cpp,
// with -ffast-math, so that std::exp vectorises (glibc's libmvec on x86-64); the library is
// linked without -ffast-math, which would otherwise set flush-to-zero for the whole process.
// There are no comparisons here, so NaN and inf pass through as IEEE arithmetic has them.
#include <cmath>
#include <cstdint>

namespace moeplan {

static inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// silu'(gate) from s = sigmoid(gate): s (1 + gate (1 - s)).
static inline float silu_grad(float gate, float s) { return s * (1.0f + gate * (1.0f - s)); }

// weighted[r, j] = w[r] * silu(gate[r, j]) * up[r, j], where the rows of gate_up are [gate | up].
void swiglu_weighted_forward(const float* __restrict__ gate_up, const float* __restrict__ w,
                             float* __restrict__ weighted, int64_t rows, int64_t hidden) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = gate_up + r * 2 * hidden;
    const float* up = gate + hidden;
    float* out = weighted + r * hidden;
    const float weight = w[r];
    for (int64_t j = 0; j < hidden; ++j) out[j] = weight * gate[j] * sigmoid(gate[j]) * up[j];
  }
}

// From grad_product = grad_y @ down^T (not yet weighted) and the saved gate_up rows, with
// product = silu(gate) * up recomputed rather than saved:
//   grad_weight[r]       = <grad_product[r], product[r]>
//   weighted_product[r]  = w[r] * product[r]   (the left factor of down's gradient)
//   grad_gate_up[r]      = [grad_gate | grad_up] of w[r] * grad_product[r]
void swiglu_weighted_backward(const float* __restrict__ gate_up, const float* __restrict__ w,
                              const float* __restrict__ grad_product, float* __restrict__ grad_gate_up,
                              float* __restrict__ weighted_product, float* __restrict__ grad_weight, int64_t rows,
                              int64_t hidden) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = gate_up + r * 2 * hidden;
    const float* up = gate + hidden;
    const float* grad = grad_product + r * hidden;
    float* grad_gate = grad_gate_up + r * 2 * hidden;
    float* grad_up = grad_gate + hidden;
    float* out = weighted_product + r * hidden;
    const float weight = w[r];
    float dot = 0.0f;
    for (int64_t j = 0; j < hidden; ++j) {
      const float s = sigmoid(gate[j]);
      const float activated = gate[j] * s;
      const float product = activated * up[j];
      const float weighted_grad = weight * grad[j];
      dot += grad[j] * product;
      out[j] = weight * product;
      grad_up[j] = weighted_grad * activated;
      grad_gate[j] = weighted_grad * up[j] * silu_grad(gate[j], s);
    }
    grad_weight[r] = dot;
  }
}

// product[r, j] = silu(gate[r, j]) * up[r, j] for a dense SwiGLU or the shared experts, whose
// [gate | up] rows may sit inside a wider matrix (row stride gate_up_stride).
void swiglu_forward(const float* __restrict__ gate_up, int64_t gate_up_stride, float* __restrict__ product,
                    int64_t rows, int64_t hidden) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = gate_up + r * gate_up_stride;
    const float* up = gate + hidden;
    float* out = product + r * hidden;
    for (int64_t j = 0; j < hidden; ++j) out[j] = gate[j] * sigmoid(gate[j]) * up[j];
  }
}

// [grad_gate | grad_up] of swiglu_forward from grad_product; either side's rows may be strided.
void swiglu_backward(const float* __restrict__ gate_up, int64_t gate_up_stride, const float* __restrict__ grad_product,
                     float* __restrict__ grad_gate_up, int64_t grad_stride, int64_t rows, int64_t hidden) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = gate_up + r * gate_up_stride;
    const float* up = gate + hidden;
    const float* grad = grad_product + r * hidden;
    float* grad_gate = grad_gate_up + r * grad_stride;
    float* grad_up = grad_gate + hidden;
    for (int64_t j = 0; j < hidden; ++j) {
      const float s = sigmoid(gate[j]);
      grad_up[j] = grad[j] * gate[j] * s;
      grad_gate[j] = grad[j] * up[j] * silu_grad(gate[j], s);
    }
  }
}

// out[t] += rows[position[t k + slot]] for slot = 0 .. k-1, for tokens t of one block. Here
// rather than in experts.cpp for this file's -O3 and -march: the loop then vectorises. Each
// token's sum is formed by the same code whichever thread runs it, so the result does not depend
// on the thread count (-ffast-math may group the adds differently from index_add_, within
// rounding).
void add_pair_rows(const float* __restrict__ rows, const int64_t* __restrict__ position, float* __restrict__ out,
                   int64_t tokens, int64_t k, int64_t width) {
  for (int64_t t = 0; t < tokens; ++t) {
    float* row = out + t * width;
    for (int64_t slot = 0; slot < k; ++slot) {
      const float* pair_row = rows + position[t * k + slot] * width;
      for (int64_t j = 0; j < width; ++j) row[j] += pair_row[j];
    }
  }
}

}  // namespace moeplan
