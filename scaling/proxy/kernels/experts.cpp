// The routed experts of one MoE layer as a torch operator: the experts run side by side, one per
// intra-op thread, instead of one after another with each op split over the threads
// (expert_threads.h). Each thread runs gather, matmuls and the fused SwiGLU pass (swiglu.cpp) on
// its experts. The threads are torch's own OpenMP team, so they do not compete with it for cores
// as a separate thread pool would.
//
// Outputs are allocated by the caller (scaling/native_mlp.py) so that the Python and native
// paths share one allocation and zeroing policy. Float32, contiguous, CPU only.
//
// The file also holds the SwiGLU operators of the dense MLPs and the shared experts: the same
// one-pass kernels, split by rows over the threads, at the end.
#include "expert_threads.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace moeplan {
void swiglu_weighted_forward(const float*, const float*, float*, int64_t, int64_t);
void swiglu_weighted_backward(const float*, const float*, const float*, float*, float*, float*, int64_t, int64_t);
void swiglu_forward(const float*, int64_t, float*, int64_t, int64_t);
void swiglu_backward(const float*, int64_t, const float*, float*, int64_t, int64_t, int64_t);
void add_pair_rows(const float*, const int64_t*, float*, int64_t, int64_t, int64_t);
}  // namespace moeplan

namespace {

void check_float_contiguous(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.device().is_cpu() && tensor.scalar_type() == at::kFloat && tensor.is_contiguous(), "moeplan::",
              name, " must be a contiguous float32 CPU tensor");
}

using moeplan::for_each_expert;
using moeplan::Scratch;

std::vector<int64_t> checked_sizes(at::IntArrayRef sizes, const at::Tensor& token_of_pair, const at::Tensor& gate_up) {
  TORCH_CHECK(token_of_pair.scalar_type() == at::kLong && token_of_pair.dim() == 1,
              "moeplan: token_of_pair must be int64 [pairs]");
  TORCH_CHECK(static_cast<int64_t>(sizes.size()) == gate_up.size(0), "moeplan: one size per expert");
  int64_t total = 0;
  for (int64_t size : sizes) {
    TORCH_CHECK(size >= 0, "moeplan: negative expert size");
    total += size;
  }
  TORCH_CHECK(total == token_of_pair.size(0), "moeplan: expert sizes must add up to the pairs");
  return {sizes.begin(), sizes.end()};
}

// The kernels in swiglu.cpp write through raw pointers: every buffer's shape is checked first.
void check_shapes(int64_t pairs, const at::Tensor& x, const at::Tensor& weights, const at::Tensor& gate_up,
                  const at::Tensor& down, const at::Tensor& gate_up_out, const at::Tensor& pair_rows) {
  const int64_t width = gate_up.size(1), hidden = down.size(1);
  TORCH_CHECK(gate_up.dim() == 3 && down.dim() == 3 && gate_up.size(2) == 2 * hidden && down.size(2) == width &&
                  down.size(0) == gate_up.size(0),
              "moeplan: gate_up must be [e, d, 2h] and down [e, h, d]");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == width, "moeplan: x must be [n, d]");
  TORCH_CHECK(weights.numel() == pairs, "moeplan: one weight per pair");
  TORCH_CHECK(gate_up_out.dim() == 2 && gate_up_out.size(0) == pairs && gate_up_out.size(1) == 2 * hidden,
              "moeplan: gate_up_out must be [pairs, 2h]");
  TORCH_CHECK(pair_rows.dim() == 2 && pair_rows.size(0) == pairs && pair_rows.size(1) == width,
              "moeplan: y_sorted and grad_x_sorted must be [pairs, d]");
}

// y_sorted = w * swiglu(x[token_of_pair] @ gate_up[e]) @ down[e] per expert; gate_up_out keeps
// the [gate | up] rows for backward. The gathered x rows are not kept: backward gathers them
// again from x, which autograd holds anyway, and so writes and reads 4 MB less per layer.
void experts_forward(const at::Tensor& x, const at::Tensor& token_of_pair, const at::Tensor& weights,
                     at::IntArrayRef sizes_argument, const at::Tensor& gate_up, const at::Tensor& down,
                     const at::Tensor& gate_up_out, const at::Tensor& y_sorted) {
  for (auto [tensor, name] : {std::pair{&x, "x"}, {&weights, "weights"}, {&gate_up, "gate_up"}, {&down, "down"},
                              {&gate_up_out, "gate_up_out"}, {&y_sorted, "y_sorted"}})
    check_float_contiguous(*tensor, name);
  const auto sizes = checked_sizes(sizes_argument, token_of_pair, gate_up);
  check_shapes(token_of_pair.size(0), x, weights, gate_up, down, gate_up_out, y_sorted);
  const int64_t hidden = down.size(1);
  const Scratch x_sorted(sizes, x.size(1), x.options()), weighted(sizes, hidden, x.options());
  for_each_expert(sizes, [&](int64_t expert, int64_t row, int64_t worker) {
    const int64_t rows = sizes[expert];
    auto x_rows = x_sorted.take(worker, rows), gate_up_rows = gate_up_out.narrow(0, row, rows);
    auto weighted_rows = weighted.take(worker, rows), y_rows = y_sorted.narrow(0, row, rows);
    at::index_select_out(x_rows, x, 0, token_of_pair.narrow(0, row, rows));
    at::mm_out(gate_up_rows, x_rows, gate_up[expert]);
    moeplan::swiglu_weighted_forward(gate_up_rows.data_ptr<float>(), weights.data_ptr<float>() + row,
                                     weighted_rows.data_ptr<float>(), rows, hidden);
    at::mm_out(y_rows, weighted_rows, down[expert]);
  });
}

// Gradients of the gathered x rows (grad_x_sorted), the pair weights and each busy expert's
// matrices from grad_out (per token). Idle experts' gradient matrices are left for the caller
// to zero.
void experts_backward(const at::Tensor& x, const at::Tensor& token_of_pair, const at::Tensor& weights,
                      at::IntArrayRef sizes_argument, const at::Tensor& gate_up, const at::Tensor& down,
                      const at::Tensor& gate_up_out, const at::Tensor& grad_out, const at::Tensor& grad_x_sorted,
                      const at::Tensor& grad_weights, const at::Tensor& grad_gate_up, const at::Tensor& grad_down) {
  for (auto [tensor, name] :
       {std::pair{&x, "x"}, {&weights, "weights"}, {&gate_up, "gate_up"}, {&down, "down"},
        {&gate_up_out, "gate_up_out"}, {&grad_out, "grad_out"}, {&grad_x_sorted, "grad_x_sorted"},
        {&grad_weights, "grad_weights"}, {&grad_gate_up, "grad_gate_up"}, {&grad_down, "grad_down"}})
    check_float_contiguous(*tensor, name);
  const auto sizes = checked_sizes(sizes_argument, token_of_pair, gate_up);
  const int64_t pairs = token_of_pair.size(0), width = x.size(1), hidden = down.size(1);
  check_shapes(pairs, x, weights, gate_up, down, gate_up_out, grad_x_sorted);
  TORCH_CHECK(grad_weights.numel() == pairs && grad_gate_up.sizes() == gate_up.sizes() &&
                  grad_down.sizes() == down.sizes() && grad_out.sizes() == x.sizes(),
              "moeplan: gradient buffers must match their tensors");
  const auto options = x.options();
  const Scratch x_sorted(sizes, width, options), grad_y_sorted(sizes, width, options);
  const Scratch grad_gate_up_out(sizes, 2 * hidden, options), grad_product(sizes, hidden, options);
  const Scratch weighted_product(sizes, hidden, options);
  for_each_expert(sizes, [&](int64_t expert, int64_t row, int64_t worker) {
    const int64_t rows = sizes[expert];
    const auto tokens = token_of_pair.narrow(0, row, rows);
    auto x_rows = x_sorted.take(worker, rows), grad_y = grad_y_sorted.take(worker, rows);
    auto grad_product_rows = grad_product.take(worker, rows), weighted_rows = weighted_product.take(worker, rows);
    auto grad_gate_up_rows = grad_gate_up_out.take(worker, rows), grad_x_rows = grad_x_sorted.narrow(0, row, rows);
    auto grad_gate_up_matrix = grad_gate_up[expert], grad_down_matrix = grad_down[expert];
    at::index_select_out(grad_y, grad_out, 0, tokens);
    at::mm_out(grad_product_rows, grad_y, down[expert].t());
    moeplan::swiglu_weighted_backward(gate_up_out.data_ptr<float>() + row * 2 * hidden,
                                      weights.data_ptr<float>() + row, grad_product_rows.data_ptr<float>(),
                                      grad_gate_up_rows.data_ptr<float>(), weighted_rows.data_ptr<float>(),
                                      grad_weights.data_ptr<float>() + row, rows, hidden);
    at::mm_out(grad_down_matrix, weighted_rows.t(), grad_y);
    at::index_select_out(x_rows, x, 0, tokens);
    at::mm_out(grad_gate_up_matrix, x_rows.t(), grad_gate_up_rows);
    at::mm_out(grad_x_rows, grad_gate_up_rows, gate_up[expert].t());
  });
}

// [n, 2h] rows whose two halves are contiguous; the rows themselves may be strided.
void check_rows(const at::Tensor& tensor, int64_t rows, int64_t width, const char* name) {
  TORCH_CHECK(tensor.device().is_cpu() && tensor.scalar_type() == at::kFloat && tensor.dim() == 2 &&
                  tensor.size(0) == rows && tensor.size(1) == width && tensor.stride(1) == 1 &&
                  (rows < 2 || tensor.stride(0) >= width),
              "moeplan::", name, " must be float32 CPU rows of width ", width, " with contiguous columns");
}

// Rows split over the intra-op threads: this runs outside any parallel region.
constexpr int64_t kRowGrain = 256;

// out[t] += rows[position_of_pair[t k + slot]] for each slot: each token's k expert rows gathered
// back from expert order and added to it, tokens split over the threads. This replaces an
// index_add_, a scatter that ATen runs on one thread; and since a token's rows are added in slot
// order, the sums do not depend on the thread count.
void add_pair_rows(const at::Tensor& out, const at::Tensor& rows, const at::Tensor& position_of_pair) {
  check_float_contiguous(out, "out");
  check_float_contiguous(rows, "rows");
  const int64_t tokens = out.size(0), width = out.size(1), pairs = rows.size(0);
  TORCH_CHECK(out.dim() == 2 && rows.dim() == 2 && rows.size(1) == width && tokens > 0 && pairs % tokens == 0,
              "moeplan: out must be [n, d] and rows [n k, d]");
  TORCH_CHECK(position_of_pair.scalar_type() == at::kLong && position_of_pair.is_contiguous() &&
                  position_of_pair.dim() == 1 && position_of_pair.size(0) == pairs,
              "moeplan: position_of_pair must be int64 [n k]");
  const int64_t* position = position_of_pair.data_ptr<int64_t>();
  TORCH_CHECK(std::all_of(position, position + pairs, [&](int64_t p) { return p >= 0 && p < pairs; }),
              "moeplan: position_of_pair out of range");
  const int64_t k = pairs / tokens;
  float* target = out.data_ptr<float>();
  const float* source = rows.data_ptr<float>();
  at::parallel_for(0, tokens, kRowGrain, [&](int64_t begin, int64_t end) {
    moeplan::add_pair_rows(source, position + begin * k, target + begin * width, end - begin, k, width);
  });
}

// product = silu(gate) * up, for the SwiGLU of a dense MLP or of the shared experts.
void swiglu_forward(const at::Tensor& gate_up, const at::Tensor& product) {
  const int64_t rows = gate_up.size(0), hidden = gate_up.size(1) / 2;
  check_rows(gate_up, rows, 2 * hidden, "gate_up");
  check_float_contiguous(product, "product");
  check_rows(product, rows, hidden, "product");
  const float* input = gate_up.data_ptr<float>();
  float* output = product.data_ptr<float>();
  const int64_t stride = gate_up.stride(0);
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    moeplan::swiglu_forward(input + begin * stride, stride, output + begin * hidden, end - begin, hidden);
  });
}

// grad_gate_up = [grad_gate | grad_up] of swiglu_forward, from grad_product.
void swiglu_backward(const at::Tensor& gate_up, const at::Tensor& grad_product, const at::Tensor& grad_gate_up) {
  const int64_t rows = gate_up.size(0), hidden = gate_up.size(1) / 2;
  check_rows(gate_up, rows, 2 * hidden, "gate_up");
  check_float_contiguous(grad_product, "grad_product");
  check_rows(grad_product, rows, hidden, "grad_product");
  check_rows(grad_gate_up, rows, 2 * hidden, "grad_gate_up");
  const float* input = gate_up.data_ptr<float>();
  const float* grad = grad_product.data_ptr<float>();
  float* output = grad_gate_up.data_ptr<float>();
  const int64_t stride = gate_up.stride(0), grad_stride = grad_gate_up.stride(0);
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    moeplan::swiglu_backward(input + begin * stride, stride, grad + begin * hidden, output + begin * grad_stride,
                             grad_stride, end - begin, hidden);
  });
}

}  // namespace

TORCH_LIBRARY(moeplan, library) {
  library.def(
      "experts_forward(Tensor x, Tensor token_of_pair, Tensor weights, int[] sizes, Tensor gate_up, Tensor down, "
      "Tensor(a!) gate_up_out, Tensor(b!) y_sorted) -> ()");
  library.def(
      "experts_backward(Tensor x, Tensor token_of_pair, Tensor weights, int[] sizes, Tensor gate_up, "
      "Tensor down, Tensor gate_up_out, Tensor grad_out, Tensor(a!) grad_x_sorted, Tensor(b!) grad_weights, "
      "Tensor(c!) grad_gate_up, Tensor(d!) grad_down) -> ()");
  library.def("add_pair_rows(Tensor(a!) out, Tensor rows, Tensor position_of_pair) -> ()");
  library.def("swiglu_forward(Tensor gate_up, Tensor(a!) product) -> ()");
  library.def("swiglu_backward(Tensor gate_up, Tensor grad_product, Tensor(a!) grad_gate_up) -> ()");
}

TORCH_LIBRARY_IMPL(moeplan, CPU, library) {
  library.impl("experts_forward", &experts_forward);
  library.impl("experts_backward", &experts_backward);
  library.impl("add_pair_rows", &add_pair_rows);
  library.impl("swiglu_forward", &swiglu_forward);
  library.impl("swiglu_backward", &swiglu_backward);
}
