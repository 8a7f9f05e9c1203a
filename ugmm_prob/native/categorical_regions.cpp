// Leaf regions of a uGMM circuit whose input units are categorical: sums of looked-up
// log-probabilities.
//
//   out[r, p, i, b] = sum_{s < size[r, p], keep[r, p, s, b]} L[r, v, i, x[r, p, s, b]],
//   v = var[r, p, s],
//
// with L (R x D x I x V) the units' normalised log-probabilities (log_softmax of the logits,
// taken by the caller so that autograd differentiates it) and x, for leaf region p of
// repetition r, the values of its variables gathered by the caller, batch last. The plain
// PyTorch path gathers a B x R x D x I tensor of log-probabilities, then sums it over each
// region's variables with another gather; here nothing of that size is written, and a unit's
// V log-probabilities (one row of L, 1 KB for 8-bit pixels) stay in cache while the batch is
// read.
//
// Backward: dL[r, v, i, x[r, p, s, b]] += g[r, p, i, b] where kept, a scatter into the rows
// of L. Each task owns the rows of one (r, i), so no two threads write one row, even where a
// variable belongs to several regions.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace {

struct Shape {
  int64_t reps, regions, max_size, batch, variables, channels, values;
};

Shape shape_of(const torch::Tensor& x, const torch::Tensor& table) {
  return Shape{x.size(0), x.size(1), x.size(2), x.size(3),
               table.size(1), table.size(2), table.size(3)};
}

void check_inputs(const torch::Tensor& x, const torch::Tensor& keep, const torch::Tensor& sizes,
                  const torch::Tensor& variables, const torch::Tensor& table) {
  TORCH_CHECK(x.dim() == 4 && table.dim() == 4 && x.size(0) == table.size(0),
              "categorical_regions: expected x (R, P, S, B) and the table (R, D, I, V)");
  for (const torch::Tensor* index : {&x, &sizes, &variables}) {
    TORCH_CHECK(index->scalar_type() == torch::kInt64 && index->is_contiguous() &&
                    index->device().is_cpu(),
                "categorical_regions: x, sizes and variables must be contiguous int64 on the CPU");
  }
  TORCH_CHECK(table.is_contiguous() && table.device().is_cpu(),
              "categorical_regions: the table must be contiguous on the CPU");
  TORCH_CHECK(keep.numel() == 0 || (keep.scalar_type() == torch::kBool && keep.is_contiguous() &&
                                    keep.sizes() == x.sizes()),
              "categorical_regions: keep must be empty or a contiguous bool tensor shaped like x");
  TORCH_CHECK(sizes.numel() == x.size(0) * x.size(1) &&
                  variables.numel() == x.size(0) * x.size(1) * x.size(2),
              "categorical_regions: sizes must be (R, P) and variables (R, P, S)");
}

template <typename T>
void forward_kernel(const Shape& s, const int64_t* x, const bool* keep, const int64_t* sizes,
                    const int64_t* variables, const T* table, T* out) {
  const int64_t I = s.channels, V = s.values, B = s.batch;
  std::atomic<bool> out_of_range{false};
  at::parallel_for(0, s.reps * s.regions, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / s.regions;
      T* region_out = out + task * I * B;
      std::fill(region_out, region_out + I * B, T(0));
      for (int64_t slot = 0; slot < sizes[task]; ++slot) {
        const int64_t at = (task * s.max_size + slot) * B;
        const int64_t* value = x + at;
        const bool* kept = keep ? keep + at : nullptr;
        for (int64_t b = 0; b < B; ++b) {
          if ((!kept || kept[b]) && (value[b] < 0 || value[b] >= V)) out_of_range = true;
        }
        if (out_of_range) return;
        const T* unit_rows = table + (r * s.variables + variables[task * s.max_size + slot]) * I * V;
        for (int64_t i = 0; i < I; ++i) {
          const T* row = unit_rows + i * V;
          T* o = region_out + i * B;
          if (kept) {
            for (int64_t b = 0; b < B; ++b) o[b] += kept[b] ? row[value[b]] : T(0);
          } else {
            for (int64_t b = 0; b < B; ++b) o[b] += row[value[b]];
          }
        }
      }
    }
  });
  TORCH_CHECK(!out_of_range, "categorical_regions: a value outside 0..", V - 1);
}

template <typename T>
void backward_kernel(const Shape& s, const int64_t* x, const bool* keep, const int64_t* sizes,
                     const int64_t* variables, const T* grad, T* grad_table) {
  const int64_t I = s.channels, V = s.values, B = s.batch;
  at::parallel_for(0, s.reps * I, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / I, i = task % I;
      for (int64_t p = 0; p < s.regions; ++p) {
        const int64_t region = r * s.regions + p;
        const T* g = grad + (region * I + i) * B;
        for (int64_t slot = 0; slot < sizes[region]; ++slot) {
          const int64_t at = (region * s.max_size + slot) * B;
          const int64_t variable = variables[region * s.max_size + slot];
          T* row = grad_table + ((r * s.variables + variable) * I + i) * V;
          const int64_t* value = x + at;
          const bool* kept = keep ? keep + at : nullptr;
          for (int64_t b = 0; b < B; ++b) {
            if (!kept || kept[b]) row[value[b]] += g[b];
          }
        }
      }
    }
  });
}

}  // namespace

torch::Tensor categorical_regions_forward(torch::Tensor x, torch::Tensor keep,
                                          torch::Tensor sizes, torch::Tensor variables,
                                          torch::Tensor table) {
  check_inputs(x, keep, sizes, variables, table);
  const Shape s = shape_of(x, table);
  auto out = torch::empty({s.reps, s.regions, s.channels, s.batch}, table.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "categorical_regions_forward", [&] {
    forward_kernel<scalar_t>(s, x.data_ptr<int64_t>(),
                             keep.numel() ? keep.data_ptr<bool>() : nullptr,
                             sizes.data_ptr<int64_t>(), variables.data_ptr<int64_t>(),
                             table.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
  });
  return out;
}

torch::Tensor categorical_regions_backward(torch::Tensor grad, torch::Tensor x,
                                           torch::Tensor keep, torch::Tensor sizes,
                                           torch::Tensor variables, torch::Tensor table) {
  check_inputs(x, keep, sizes, variables, table);
  const Shape s = shape_of(x, table);
  grad = grad.contiguous();
  TORCH_CHECK(grad.scalar_type() == table.scalar_type() &&
                  grad.sizes() == torch::IntArrayRef({s.reps, s.regions, s.channels, s.batch}),
              "categorical_regions: the gradient must be (R, P, I, B) in the table's dtype");
  auto grad_table = torch::zeros_like(table);
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "categorical_regions_backward", [&] {
    backward_kernel<scalar_t>(s, x.data_ptr<int64_t>(),
                              keep.numel() ? keep.data_ptr<bool>() : nullptr,
                              sizes.data_ptr<int64_t>(), variables.data_ptr<int64_t>(),
                              grad.data_ptr<scalar_t>(), grad_table.data_ptr<scalar_t>());
  });
  return grad_table;
}
