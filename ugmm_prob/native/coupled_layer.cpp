// The input-coupled log-density of a layer of uGMM neurons, forward and backward in one
// call each (see ugmm_prob/kernels.py for the maths and the other backends):
//
//   out[b, j] = log sum_k exp(z[b, j, k]),   z = w[j, k] - t^2 / 2,
//   t[b, j, k] = (x[b, k] - mu[j, k]) * rs[j, k],
//
// with w = log_softmax(logits)[j, k] - log sigma - log sqrt(2 pi) and rs = 1 / sigma, both
// computed here from the parameters (J x N, cheap) so that a call is one operation for
// autograd. Component k of neuron j reads input k: the SIMD vectors run over k.
//
// Backward, for g = d loss / d out and q = g * exp(z - out) (the responsibilities times g),
// with m0 = sum_b q, m1 = sum_b q t, m2 = sum_b q t^2 (reductions over the batch):
//   d mu = rs m1,   d sigma = rs (m2 - m0),   d logits = m0 - pi * sum_k m0,
//   d x[b, k] = -sum_j q t rs   (a reduction over neurons).
// Nothing of size batch x J x N is stored: the backward pass recomputes z.
//
// The arithmetic is the eager backend's: the largest exponent is subtracted, differences are
// floored at -80 before exp (subnormal exponentials are several times slower on x86 and
// invisible in a sum whose largest term is 1), and components whose logit is -inf (dropped)
// get exactly zero gradients. The point of this file is small and medium layers, where the
// eager backend's dozens of tensor operations per call, not the exponentials, set the cost;
// on the MNIST network's first layer it is also faster than the torch.compile backend.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using at::vec::Vectorized;
// floored_exp, lane_sum and lane_max: vector_math.h, which load() puts before this file.
using namespace ugmm_native;

// Below this many exponentials a parallel region costs more than it saves.
constexpr int64_t kGrainElements = 1 << 15;

template <typename T>
struct Layer {
  const T* x;
  const T* mu;
  const T* rs;
  const T* w;
  int64_t batch, neurons, inputs;
};

// t and z for inputs k0 .. k0 + count of example b and neuron j (lanes past count hold junk
// that callers mask or never store).
template <typename T>
inline void exponent(const Layer<T>& l, int64_t b, int64_t j, int64_t k0, int64_t count,
                     Vectorized<T>& t, Vectorized<T>& z) {
  const int64_t p = j * l.inputs + k0;
  const Vectorized<T> x = Vectorized<T>::loadu(l.x + b * l.inputs + k0, count);
  t = (x - Vectorized<T>::loadu(l.mu + p, count)) * Vectorized<T>::loadu(l.rs + p, count);
  z = Vectorized<T>::loadu(l.w + p, count) - Vectorized<T>(T(0.5)) * t * t;
}

constexpr double kLogSqrt2Pi = 0.91893853320467274178;

// w = log_softmax(logits) - log sigma - log sqrt(2 pi), rs = 1 / sigma, and (for the
// backward pass) pi = softmax(logits), row by row.
template <typename T>
void prepare(const T* scale, const T* logits, int64_t neurons, int64_t inputs, T* w, T* rs,
             T* pi) {
  for (int64_t j = 0; j < neurons; ++j) {
    const T* row = logits + j * inputs;
    T largest = -std::numeric_limits<T>::infinity();
    for (int64_t k = 0; k < inputs; ++k) largest = std::max(largest, row[k]);
    T total = 0;
    for (int64_t k = 0; k < inputs; ++k) total += std::exp(row[k] - largest);
    const T log_normaliser = largest + std::log(total);
    for (int64_t k = 0; k < inputs; ++k) {
      const int64_t p = j * inputs + k;
      const T log_pi = row[k] - log_normaliser;
      w[p] = log_pi - std::log(scale[p]) - T(kLogSqrt2Pi);
      rs[p] = T(1) / scale[p];
      if (pi) pi[p] = std::exp(log_pi);
    }
  }
}

template <typename T>
void forward_kernel(const Layer<T>& l, T* out) {
  constexpr int64_t L = Vectorized<T>::size();
  const int64_t N = l.inputs;
  const Vectorized<T> lowest(-std::numeric_limits<T>::infinity()), zero(T(0));
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(N, 1));
  at::parallel_for(0, l.batch * l.neurons, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> z_row(N + L);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / l.neurons, j = task % l.neurons;
      Vectorized<T> peak = lowest, t, z;
      for (int64_t k0 = 0; k0 < N; k0 += L) {
        const int64_t count = std::min(L, N - k0);
        exponent(l, b, j, k0, count, t, z);
        z.store(z_row.data() + k0, count);
        peak = at::vec::maximum(peak, Vectorized<T>::set(lowest, z, count));
      }
      const T shift = lane_max(peak);
      Vectorized<T> total = zero;
      for (int64_t k0 = 0; k0 < N; k0 += L) {
        const int64_t count = std::min(L, N - k0);
        const Vectorized<T> e =
            floored_exp(Vectorized<T>::loadu(z_row.data() + k0, count) - Vectorized<T>(shift));
        total = total + Vectorized<T>::set(zero, e, count);
      }
      out[task] = std::log(lane_sum(total)) + shift;
    }
  });
}

// m0, m1, m2 (see the top): reductions over the batch, one neuron's row per task.
template <typename T>
void moment_kernel(const Layer<T>& l, const T* grad, const T* out, T* m0, T* m1, T* m2) {
  constexpr int64_t L = Vectorized<T>::size();
  const int64_t N = l.inputs, J = l.neurons;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(N * l.batch, 1));
  at::parallel_for(0, J, grain, [&](int64_t begin, int64_t end) {
    Vectorized<T> t, z;
    for (int64_t j = begin; j < end; ++j) {
      for (int64_t k0 = 0; k0 < N; k0 += L) {
        const int64_t count = std::min(L, N - k0);
        Vectorized<T> sum_q(T(0)), sum_qt(T(0)), sum_qtt(T(0));
        for (int64_t b = 0; b < l.batch; ++b) {
          exponent(l, b, j, k0, count, t, z);
          const Vectorized<T> q =
              Vectorized<T>(grad[b * J + j]) * floored_exp(z - Vectorized<T>(out[b * J + j]));
          const Vectorized<T> qt = q * t;
          sum_q = sum_q + q;
          sum_qt = sum_qt + qt;
          sum_qtt = sum_qtt + qt * t;
        }
        const int64_t p = j * N + k0;
        sum_q.store(m0 + p, count);
        sum_qt.store(m1 + p, count);
        sum_qtt.store(m2 + p, count);
      }
    }
  });
}

// The parameters' gradients from the moments, written over them (m0 -> d logits,
// m1 -> d mu, m2 -> d sigma).
template <typename T>
void parameter_grads(const T* w, const T* rs, const T* pi, int64_t neurons, int64_t inputs,
                     T* m0, T* m1, T* m2) {
  for (int64_t j = 0; j < neurons; ++j) {
    T row_total = 0;
    for (int64_t p = j * inputs; p < (j + 1) * inputs; ++p) {
      if (w[p] == -std::numeric_limits<T>::infinity()) m0[p] = m1[p] = m2[p] = T(0);
      row_total += m0[p];
    }
    for (int64_t p = j * inputs; p < (j + 1) * inputs; ++p) {
      m2[p] = rs[p] * (m2[p] - m0[p]);
      m1[p] = rs[p] * m1[p];
      m0[p] = m0[p] - pi[p] * row_total;
    }
  }
}

// d x: a reduction over neurons, one example's row per task.
template <typename T>
void input_grad_kernel(const Layer<T>& l, const T* grad, const T* out, T* grad_x) {
  constexpr int64_t L = Vectorized<T>::size();
  const int64_t N = l.inputs, J = l.neurons;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(N * J, 1));
  at::parallel_for(0, l.batch, grain, [&](int64_t begin, int64_t end) {
    Vectorized<T> t, z;
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t k0 = 0; k0 < N; k0 += L) {
        const int64_t count = std::min(L, N - k0);
        Vectorized<T> total(T(0));
        for (int64_t j = 0; j < J; ++j) {
          exponent(l, b, j, k0, count, t, z);
          const Vectorized<T> q =
              Vectorized<T>(grad[b * J + j]) * floored_exp(z - Vectorized<T>(out[b * J + j]));
          total = total + q * t * Vectorized<T>::loadu(l.rs + j * N + k0, count);
        }
        (Vectorized<T>(T(0)) - total).store(grad_x + b * N + k0, count);
      }
    }
  });
}

void check_inputs(const torch::Tensor& x, const torch::Tensor& loc, const torch::Tensor& scale,
                  const torch::Tensor& logits) {
  for (const torch::Tensor* tensor : {&x, &loc, &scale, &logits}) {
    TORCH_CHECK(tensor->is_contiguous() && tensor->device().is_cpu() &&
                    tensor->scalar_type() == x.scalar_type() && tensor->dim() == 2,
                "coupled_layer: expected contiguous 2-d CPU tensors of one dtype");
  }
  TORCH_CHECK(loc.sizes() == scale.sizes() && loc.sizes() == logits.sizes() &&
                  x.size(1) == loc.size(1),
              "coupled_layer: expected x (B, N) and parameters (J, N)");
}

// w, rs (and pi) as tensors, and the layer that reads them.
template <typename T>
struct Prepared {
  torch::Tensor w, rs, pi;
  Layer<T> layer;
};

template <typename T>
Prepared<T> prepared(const torch::Tensor& x, const torch::Tensor& mu, const torch::Tensor& scale,
                     const torch::Tensor& logits, bool with_pi) {
  torch::Tensor w = torch::empty_like(mu), rs = torch::empty_like(mu), pi;
  if (with_pi) pi = torch::empty_like(mu);
  prepare<T>(scale.data_ptr<T>(), logits.data_ptr<T>(), mu.size(0), mu.size(1), w.data_ptr<T>(),
             rs.data_ptr<T>(), with_pi ? pi.data_ptr<T>() : nullptr);
  const Layer<T> layer{x.data_ptr<T>(), mu.data_ptr<T>(), rs.data_ptr<T>(), w.data_ptr<T>(),
                       x.size(0),       mu.size(0),       mu.size(1)};
  Prepared<T> r{w, rs, pi, layer};
  return r;
}

}  // namespace

torch::Tensor coupled_forward(torch::Tensor x, torch::Tensor loc, torch::Tensor scale,
                              torch::Tensor logits) {
  check_inputs(x, loc, scale, logits);
  auto out = torch::empty({x.size(0), loc.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "coupled_forward", [&] {
    const Prepared<scalar_t> p = prepared<scalar_t>(x, loc, scale, logits, false);
    forward_kernel<scalar_t>(p.layer, out.data_ptr<scalar_t>());
  });
  return out;
}

// Returns {d x, d loc, d scale, d logits}; undefined (None) for what is not asked for.
std::vector<torch::Tensor> coupled_backward(torch::Tensor grad, torch::Tensor x,
                                            torch::Tensor loc, torch::Tensor scale,
                                            torch::Tensor logits, torch::Tensor out,
                                            bool need_input, bool need_parameters) {
  check_inputs(x, loc, scale, logits);
  grad = grad.contiguous();
  out = out.contiguous();
  TORCH_CHECK(grad.sizes() == out.sizes() && out.size(0) == x.size(0) &&
                  out.size(1) == loc.size(0) && grad.scalar_type() == x.scalar_type(),
              "coupled_layer: expected grad and out of shape (B, J)");
  torch::Tensor grad_x, grad_loc, grad_scale, grad_logits;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "coupled_backward", [&] {
    const Prepared<scalar_t> p = prepared<scalar_t>(x, loc, scale, logits, need_parameters);
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* o = out.data_ptr<scalar_t>();
    if (need_parameters) {
      grad_logits = torch::empty_like(loc);
      grad_loc = torch::empty_like(loc);
      grad_scale = torch::empty_like(loc);
      scalar_t* m0 = grad_logits.data_ptr<scalar_t>();
      scalar_t* m1 = grad_loc.data_ptr<scalar_t>();
      scalar_t* m2 = grad_scale.data_ptr<scalar_t>();
      moment_kernel<scalar_t>(p.layer, g, o, m0, m1, m2);
      parameter_grads<scalar_t>(p.layer.w, p.layer.rs, p.pi.data_ptr<scalar_t>(), loc.size(0),
                                loc.size(1), m0, m1, m2);
    }
    if (need_input) {
      grad_x = torch::empty_like(x);
      input_grad_kernel<scalar_t>(p.layer, g, o, grad_x.data_ptr<scalar_t>());
    }
  });
  return {grad_x, grad_loc, grad_scale, grad_logits};
}
