// Running whole experts side by side on torch's intra-op threads, and the per-worker scratch
// rows they use: shared by the training operators (experts.cpp) and the inference operator
// (moe_infer.cpp).
//
// At a few hundred rows per expert, an op split over 2 threads pays a fork and join for a few
// microseconds of work, and its rows leave the cache between ops. Each thread instead takes
// whole experts (largest first); inside the parallel region ATen and MKL run single-threaded.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace moeplan {

// How many experts run at once: one per intra-op thread, at most one per busy expert.
inline int64_t worker_count(const std::vector<int64_t>& sizes) {
  const int64_t busy = std::count_if(sizes.begin(), sizes.end(), [](int64_t size) { return size > 0; });
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), busy));
}

// Calls body(expert, first_row, worker) once for each expert that has rows; experts sorted by
// row count, largest first, are handed to whichever worker is free. As worker < worker_count(sizes),
// a body can reuse that worker's scratch rows from one expert to the next.
template <typename Body>
void for_each_expert(const std::vector<int64_t>& sizes, const Body& body) {
  std::vector<int64_t> first(sizes.size()), queue;
  int64_t row = 0;
  for (size_t expert = 0; expert < sizes.size(); ++expert) {
    first[expert] = row;
    row += sizes[expert];
    if (sizes[expert]) queue.push_back(static_cast<int64_t>(expert));
  }
  std::stable_sort(queue.begin(), queue.end(), [&](int64_t a, int64_t b) { return sizes[a] > sizes[b]; });
  std::atomic<size_t> next{0};
  // grain 1 over [0, workers): each thread gets its own worker index
  at::parallel_for(0, worker_count(sizes), 1, [&](int64_t begin, int64_t end) {
    for (int64_t worker = begin; worker < end; ++worker)
      for (size_t index = next++; index < queue.size(); index = next++)
        body(queue[index], first[queue[index]], worker);
  });
}

// Rows that live only while one expert runs (its gathered inputs, SwiGLU products, gradients
// before the matmuls) go to one buffer per worker, reused expert after expert. Whole-layer buffers
// would send ~20 MB per layer through DRAM, a few ms on a 2-core VM; a worker's rows stay in cache.
struct Scratch {
  at::Tensor rows;  // [workers, most rows of any expert, width]
  Scratch(const std::vector<int64_t>& sizes, int64_t width, const at::TensorOptions& options) {
    const int64_t most = sizes.empty() ? 0 : *std::max_element(sizes.begin(), sizes.end());
    rows = at::empty({worker_count(sizes), most, width}, options);
  }
  at::Tensor take(int64_t worker, int64_t count) const { return rows[worker].narrow(0, 0, count); }
};

}  // namespace moeplan
