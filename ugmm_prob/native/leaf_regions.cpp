// Fused leaf regions of a uGMM circuit: products of tied-input Gaussian-mixture units.
//
//   out[r, p, i, b] = sum_{v < size[r, p]} keep[r, p, v, b] *
//                     log sum_k exp(w[r,p,v,i,k] - 0.5 * ((x[r,p,v,b] - mu[r,p,v,i,k]) * rs[r,p,v,i,k])^2)
//
// x holds, for leaf region p of repetition r, the values of its variables v (gathered by
// the caller), batch last so that one SIMD vector holds one variable in many examples and
// the unit parameters are broadcast scalars. Padded variables (v >= size) are skipped, so a
// region graph with uneven regions costs nothing extra. `keep` (0 or 1; empty = all 1)
// drops missing values. w = log pi - log sigma - log sqrt(2 pi), rs = 1 / sigma.
//
// The backward pass recomputes the responsibilities r_k = exp(z_k - out) and reduces over
// the batch in the same loop: for g = d loss / d out and q_k = g * keep * r_k,
//   d w_k = sum_b q_k,  d mu_k = rs_k * sum_b q_k t_k,  d rs_k = -sum_b q_k t_k^2 / rs_k,
// with t_k = (x - mu_k) * rs_k. Nothing of size batch x units x components is stored.
//
// Exponents are floored at -80: the result is unchanged (every sum has a term equal to 1)
// and subnormal exponentials, several times slower on x86, never occur.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace {

using at::vec::Vectorized;
// floored_exp, lane_sum and lane_max: vector_math.h, which load() puts before this file.
using namespace ugmm_native;

constexpr int64_t kMaxComponents = 32;

template <typename T>
struct Units {
  const T* w;
  const T* mu;
  const T* rs;
  int64_t components;
};

// z[k] = w_k - t_k^2 / 2 and t[k] for one unit (its K components) at the values x.
template <typename T>
inline void exponents(const Units<T>& u, int64_t offset, Vectorized<T> x, Vectorized<T>* z,
                      Vectorized<T>* t) {
  const Vectorized<T> half(T(0.5));
  // t^2 may overflow (x far out): the lowest finite exponent instead of -inf keeps the
  // differences of exponents finite (no inf - inf), and sums of them still reach -inf
  const Vectorized<T> lowest(std::numeric_limits<T>::lowest());
  for (int64_t k = 0; k < u.components; ++k) {
    t[k] = (x - Vectorized<T>(u.mu[offset + k])) * Vectorized<T>(u.rs[offset + k]);
    z[k] = at::vec::maximum(Vectorized<T>(u.w[offset + k]) - half * t[k] * t[k], lowest);
  }
}

// log sum_k exp(z_k) = shift + log(factor) with shift = max_k z_k and factor in [1, K]:
// a region's sum of log-densities is then the sum of its shifts plus the log of the
// product of its factors, so the logarithm is taken once per region, not once per unit.
template <typename T>
inline void log_sum_exp_parts(const Vectorized<T>* z, int64_t components, Vectorized<T>& shift,
                              Vectorized<T>& factor) {
  const Vectorized<T> one(T(1));
  if (components == 1) {
    shift = z[0];
    factor = one;
    return;
  }
  if (components == 2) {
    shift = at::vec::maximum(z[0], z[1]);
    factor = one + floored_exp(Vectorized<T>(T(0)) - (z[0] - z[1]).abs());
    return;
  }
  shift = z[0];
  for (int64_t k = 1; k < components; ++k) shift = at::vec::maximum(shift, z[k]);
  factor = Vectorized<T>(T(0));
  for (int64_t k = 0; k < components; ++k) factor = factor + floored_exp(z[k] - shift);
}

// How many factors (each <= K) a product may hold before its logarithm is taken: K^n stays
// below 2^100, far inside the float32 range.
inline int64_t product_span(int64_t components) {
  if (components <= 2) return 100;
  int64_t bits = 0;
  while ((int64_t(1) << bits) < components) ++bits;
  return std::max<int64_t>(1, 100 / bits);
}

// Responsibilities r_k = exp(z_k - log_sum_exp(z)), written over z.
template <typename T>
inline void responsibilities(Vectorized<T>* z, int64_t components) {
  const Vectorized<T> one(T(1));
  if (components == 1) {
    z[0] = one;
    return;
  }
  if (components == 2) {
    const Vectorized<T> ratio =
        at::vec::minimum(floored_exp(z[1] - z[0]), Vectorized<T>(T(5.54e34)));  // e^80
    const Vectorized<T> first = one / (one + ratio);
    z[0] = first;
    z[1] = ratio * first;
    return;
  }
  Vectorized<T> larger = z[0];
  for (int64_t k = 1; k < components; ++k) larger = at::vec::maximum(larger, z[k]);
  Vectorized<T> total(T(0));
  for (int64_t k = 0; k < components; ++k) {
    z[k] = floored_exp(z[k] - larger);
    total = total + z[k];
  }
  const Vectorized<T> inverse = one / total;
  for (int64_t k = 0; k < components; ++k) z[k] = z[k] * inverse;
}

struct Shape {
  int64_t reps, regions, max_size, channels, components, batch;
};

Shape shape_of(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(x.dim() == 4 && w.dim() == 5, "leaf_regions: expected x (R, P, V, B) and "
              "parameters (R, P, V, I, K)");
  const Shape s{x.size(0), x.size(1), x.size(2), w.size(3), w.size(4), x.size(3)};
  TORCH_CHECK(s.batch % Vectorized<float>::size() == 0,
              "leaf_regions: the batch must be padded to a multiple of ", Vectorized<float>::size());
  TORCH_CHECK(s.components <= kMaxComponents, "leaf_regions: at most ", kMaxComponents,
              " components");
  return s;
}

template <typename T>
void forward_kernel(const Shape& s, const T* x, const T* keep, const int64_t* sizes,
                    const Units<T>& u, T* out) {
  constexpr int64_t L = Vectorized<T>::size();
  const int64_t I = s.channels, K = s.components, B = s.batch;
  const int64_t span = product_span(K);
  const Vectorized<T> one(T(1));
  at::parallel_for(0, s.reps * s.regions, 1, [&](int64_t begin, int64_t end) {
    // per unit i: sum of shifts (and of logs of full products), running product of factors
    std::vector<Vectorized<T>> total(I), product(I);
    Vectorized<T> z[kMaxComponents], t[kMaxComponents];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t region_values = task * s.max_size * B;
      const int64_t region_units = task * s.max_size * I * K;
      for (int64_t b = 0; b < B; b += L) {
        std::fill(total.begin(), total.end(), Vectorized<T>(T(0)));
        std::fill(product.begin(), product.end(), one);
        for (int64_t v = 0; v < sizes[task]; ++v) {
          const int64_t at = region_values + v * B + b;
          const Vectorized<T> xv = Vectorized<T>::loadu(x + at);
          const Vectorized<T> kept = keep ? Vectorized<T>::loadu(keep + at) : one;
          const bool flush = (v + 1) % span == 0;
          for (int64_t i = 0; i < I; ++i) {
            Vectorized<T> shift, factor;
            exponents(u, region_units + (v * I + i) * K, xv, z, t);
            log_sum_exp_parts(z, K, shift, factor);
            total[i] = total[i] + kept * shift;
            product[i] = product[i] * (one + kept * (factor - one));
            if (flush) {
              total[i] = total[i] + product[i].log();
              product[i] = one;
            }
          }
        }
        for (int64_t i = 0; i < I; ++i) {
          (total[i] + product[i].log()).store(out + (task * I + i) * B + b);
        }
      }
    }
  });
}

template <typename T>
void backward_kernel(const Shape& s, const T* x, const T* keep, const int64_t* sizes,
                     const Units<T>& u, const T* grad, T* grad_w, T* grad_mu, T* grad_rs) {
  constexpr int64_t L = Vectorized<T>::size();
  const int64_t I = s.channels, K = s.components, B = s.batch;
  at::parallel_for(0, s.reps * s.regions, 1, [&](int64_t begin, int64_t end) {
    Vectorized<T> z[kMaxComponents], t[kMaxComponents];
    Vectorized<T> sum_q[kMaxComponents], sum_qt[kMaxComponents], sum_qtt[kMaxComponents];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t region_values = task * s.max_size * B;
      for (int64_t v = 0; v < sizes[task]; ++v) {
        const int64_t values = region_values + v * B;
        for (int64_t i = 0; i < I; ++i) {
          const int64_t unit = ((task * s.max_size + v) * I + i) * K;
          const T* g = grad + (task * I + i) * B;
          for (int64_t k = 0; k < K; ++k) {
            sum_q[k] = sum_qt[k] = sum_qtt[k] = Vectorized<T>(T(0));
          }
          for (int64_t b = 0; b < B; b += L) {
            const Vectorized<T> xv = Vectorized<T>::loadu(x + values + b);
            Vectorized<T> weight = Vectorized<T>::loadu(g + b);
            if (keep) weight = weight * Vectorized<T>::loadu(keep + values + b);
            exponents(u, unit, xv, z, t);
            responsibilities(z, K);
            for (int64_t k = 0; k < K; ++k) {
              const Vectorized<T> q = weight * z[k];
              const Vectorized<T> qt = q * t[k];
              sum_q[k] = sum_q[k] + q;
              sum_qt[k] = sum_qt[k] + qt;
              sum_qtt[k] = sum_qtt[k] + qt * t[k];
            }
          }
          for (int64_t k = 0; k < K; ++k) {
            const T rs = u.rs[unit + k];
            grad_w[unit + k] = lane_sum(sum_q[k]);
            grad_mu[unit + k] = rs * lane_sum(sum_qt[k]);
            grad_rs[unit + k] = -lane_sum(sum_qtt[k]) / rs;
          }
        }
      }
    }
  });
}

void check_inputs(const torch::Tensor& x, const torch::Tensor& keep, const torch::Tensor& sizes,
                  const torch::Tensor& w, const torch::Tensor& mu, const torch::Tensor& rs) {
  for (const torch::Tensor* tensor : {&x, &w, &mu, &rs}) {
    TORCH_CHECK(tensor->is_contiguous() && tensor->device().is_cpu() &&
                    tensor->scalar_type() == x.scalar_type(),
                "leaf_regions: expected contiguous CPU tensors of one dtype");
  }
  TORCH_CHECK(!keep.defined() || keep.numel() == 0 || keep.sizes() == x.sizes(),
              "leaf_regions: keep must be empty or shaped like x");
  TORCH_CHECK(sizes.scalar_type() == torch::kInt64 && sizes.is_contiguous() &&
                  sizes.numel() == x.size(0) * x.size(1),
              "leaf_regions: sizes must be contiguous int64 (R, P)");
}

}  // namespace

torch::Tensor leaf_regions_forward(torch::Tensor x, torch::Tensor keep, torch::Tensor sizes,
                                   torch::Tensor w, torch::Tensor mu, torch::Tensor rs) {
  check_inputs(x, keep, sizes, w, mu, rs);
  const Shape s = shape_of(x, w);
  auto out = torch::empty({s.reps, s.regions, s.channels, s.batch}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "leaf_regions_forward", [&] {
    const Units<scalar_t> u{w.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(),
                            rs.data_ptr<scalar_t>(), s.components};
    forward_kernel<scalar_t>(s, x.data_ptr<scalar_t>(),
                             keep.numel() ? keep.data_ptr<scalar_t>() : nullptr,
                             sizes.data_ptr<int64_t>(), u, out.data_ptr<scalar_t>());
  });
  return out;
}

std::vector<torch::Tensor> leaf_regions_backward(torch::Tensor grad, torch::Tensor x,
                                                 torch::Tensor keep, torch::Tensor sizes,
                                                 torch::Tensor w, torch::Tensor mu,
                                                 torch::Tensor rs) {
  check_inputs(x, keep, sizes, w, mu, rs);
  const Shape s = shape_of(x, w);
  grad = grad.contiguous();
  auto grad_w = torch::zeros_like(w), grad_mu = torch::zeros_like(mu),
       grad_rs = torch::zeros_like(rs);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "leaf_regions_backward", [&] {
    const Units<scalar_t> u{w.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(),
                            rs.data_ptr<scalar_t>(), s.components};
    backward_kernel<scalar_t>(s, x.data_ptr<scalar_t>(),
                              keep.numel() ? keep.data_ptr<scalar_t>() : nullptr,
                              sizes.data_ptr<int64_t>(), u, grad.data_ptr<scalar_t>(),
                              grad_w.data_ptr<scalar_t>(), grad_mu.data_ptr<scalar_t>(),
                              grad_rs.data_ptr<scalar_t>());
  });
  return {grad_w, grad_mu, grad_rs};
}

int64_t batch_multiple() { return Vectorized<float>::size(); }
