// The routed experts of one MoE layer at inference, as one torch operator: route each token,
// run the experts it chose, and add their rows into the layer's output.
//
// Why one operator: at decode a token's routed work is k matrix-vector products of a few hundred
// microseconds in all, and the dozen torch ops of a Python path (softmax, top-k, sort, gathers,
// one matmul pair per expert, a scatter) cost about as much again in dispatch. Here routing is a
// loop over each token's logits, the experts run side by side on the intra-op threads
// (expert_threads.h), and only the experts some token chose are read at all: a decode step reads
// k experts' weights, never the other E - k.
//
// Nothing is kept for a backward pass, so the [pairs, 2h] gate|up rows the training operator
// saves live in per-worker scratch here. Float32, CPU only.
#include "expert_threads.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace moeplan {
void swiglu_weighted_forward(const float*, const float*, float*, int64_t, int64_t);
void add_pair_rows(const float*, const int64_t*, float*, int64_t, int64_t, int64_t);
}  // namespace moeplan

namespace {

// The routing of n tokens: experts' pair counts, and the (token, slot) pairs sorted stably by
// expert as their token and weight, with each pair's place in that order.
struct Routing {
  std::vector<int64_t> sizes, token_of_pair, position_of_pair;
  std::vector<float> sorted_weights;
};

// Softmax top-k over each token's logits (rows of a possibly wider matrix), ties to the lower
// expert index, weights renormalised over the chosen when asked: the arithmetic of routing.c,
// which the training path uses, so both choose the same experts with the same weights.
Routing route(const float* logits, int64_t stride, int64_t n, int64_t e, int64_t k, bool renorm) {
  Routing routing;
  routing.sizes.assign(e, 0);
  std::vector<int64_t> experts(n * k);
  std::vector<float> weights(n * k), probabilities(e);
  for (int64_t t = 0; t < n; ++t) {
    const float* row = logits + t * stride;
    float largest = row[0], total = 0.0f, chosen_total = 0.0f;
    for (int64_t j = 1; j < e; ++j) largest = row[j] > largest ? row[j] : largest;
    for (int64_t j = 0; j < e; ++j) {
      probabilities[j] = std::exp(row[j] - largest);
      total += probabilities[j];
    }
    for (int64_t j = 0; j < e; ++j) probabilities[j] /= total;
    int64_t* chosen = experts.data() + t * k;
    float* w = weights.data() + t * k;
    for (int64_t slot = 0; slot < k; ++slot) {
      int64_t best = -1;
      for (int64_t j = 0; j < e; ++j) {
        bool taken = false;
        for (int64_t earlier = 0; earlier < slot; ++earlier) taken |= chosen[earlier] == j;
        if (!taken && (best < 0 || probabilities[j] > probabilities[best])) best = j;
      }
      chosen[slot] = best;
      w[slot] = probabilities[best];
      chosen_total += probabilities[best];
      ++routing.sizes[best];
    }
    if (renorm)
      for (int64_t slot = 0; slot < k; ++slot) w[slot] /= chosen_total;
  }
  // counting sort of the pairs by expert; pairs are visited in order, so it is stable
  std::vector<int64_t> next(e, 0);
  for (int64_t j = 1; j < e; ++j) next[j] = next[j - 1] + routing.sizes[j - 1];
  routing.token_of_pair.resize(n * k);
  routing.position_of_pair.resize(n * k);
  routing.sorted_weights.resize(n * k);
  for (int64_t pair = 0; pair < n * k; ++pair) {
    const int64_t slot = next[experts[pair]]++;
    routing.position_of_pair[pair] = slot;
    routing.token_of_pair[slot] = pair / k;
    routing.sorted_weights[slot] = weights[pair];
  }
  return routing;
}

// out[t] += sum_slot w_slot * expert_slot(x[t]) for the top_k experts of token t under logits.
// x and out are [n, d] contiguous; logits are [n, e] rows with contiguous columns (they may sit
// inside the layer's joint projection); gate_up is [e, d, 2h] and down [e, h, d].
void moe_experts_infer(const at::Tensor& x, const at::Tensor& logits, int64_t top_k, bool renorm,
                       const at::Tensor& gate_up, const at::Tensor& down, const at::Tensor& out) {
  for (auto [tensor, name] : {std::pair{&x, "x"}, {&gate_up, "gate_up"}, {&down, "down"}, {&out, "out"}})
    TORCH_CHECK(tensor->device().is_cpu() && tensor->scalar_type() == at::kFloat && tensor->is_contiguous(),
                "moeplan::moe_experts_infer: ", name, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(x.dim() == 2 && out.sizes() == x.sizes(), "moeplan::moe_experts_infer: x and out must be [n, d]");
  const int64_t n = x.size(0), width = x.size(1), e = gate_up.size(0);
  TORCH_CHECK(gate_up.dim() == 3 && down.dim() == 3 && gate_up.size(1) == width && down.size(0) == e &&
                  gate_up.size(2) == 2 * down.size(1) && down.size(2) == width,
              "moeplan::moe_experts_infer: gate_up must be [e, d, 2h] and down [e, h, d]");
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == at::kFloat && logits.dim() == 2 &&
                  logits.size(0) == n && logits.size(1) == e && logits.stride(1) == 1 &&
                  (n < 2 || logits.stride(0) >= e),
              "moeplan::moe_experts_infer: logits must be float32 [n, e] rows with contiguous columns");
  TORCH_CHECK(top_k >= 1 && top_k <= e, "moeplan::moe_experts_infer: top_k must be in 1..", e);
  if (n == 0) return;
  const int64_t hidden = down.size(1);
  const Routing routing = route(logits.data_ptr<float>(), logits.stride(0), n, e, top_k, renorm);
  const auto options = x.options();
  const moeplan::Scratch x_rows(routing.sizes, width, options), gate_up_rows(routing.sizes, 2 * hidden, options);
  const moeplan::Scratch weighted_rows(routing.sizes, hidden, options);
  at::Tensor y_sorted = at::empty({n * top_k, width}, options);
  const float* source = x.data_ptr<float>();
  moeplan::for_each_expert(routing.sizes, [&](int64_t expert, int64_t row, int64_t worker) {
    const int64_t rows = routing.sizes[expert];
    auto gathered = x_rows.take(worker, rows), projected = gate_up_rows.take(worker, rows);
    auto weighted = weighted_rows.take(worker, rows), y_rows = y_sorted.narrow(0, row, rows);
    float* target = gathered.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r)  // a copy per row: an index_select op costs more at one row
      std::memcpy(target + r * width, source + routing.token_of_pair[row + r] * width, width * sizeof(float));
    at::mm_out(projected, gathered, gate_up[expert]);
    moeplan::swiglu_weighted_forward(projected.data_ptr<float>(), routing.sorted_weights.data() + row,
                                     weighted.data_ptr<float>(), rows, hidden);
    at::mm_out(y_rows, weighted, down[expert]);
  });
  // each token's rows added in slot order, by token over the threads (as add_pair_rows in experts.cpp)
  const int64_t* position = routing.position_of_pair.data();
  const float* rows = y_sorted.data_ptr<float>();
  float* target = out.data_ptr<float>();
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    moeplan::add_pair_rows(rows, position + begin * top_k, target + begin * width, end - begin, top_k, width);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(moeplan, library) {
  library.def(
      "moe_experts_infer(Tensor x, Tensor logits, int top_k, bool renorm, Tensor gate_up, Tensor down, "
      "Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(moeplan, CPU, library) { library.impl("moe_experts_infer", &moe_experts_infer); }
