// SIMD helpers shared by the kernels of this folder. `load` (see __init__.py) puts this text
// before each kernel's own source, so a change here rebuilds every kernel that uses it.
//
// Exponents are floored at -80 before exp: every sum these kernels take has a largest term
// of 1, so the result is unchanged, and subnormal exponentials (several times slower on
// x86) never occur.

#include <ATen/cpu/vec/vec.h>

#include <cmath>

namespace ugmm_native {

using at::vec::Vectorized;

template <typename T>
inline Vectorized<T> floored_exp(Vectorized<T> v) {
  return at::vec::maximum(v, Vectorized<T>(T(-80))).exp();
}

// The sum of the lanes of v.
template <typename T>
inline T lane_sum(const Vectorized<T>& v) {
  T lanes[Vectorized<T>::size()];
  v.store(lanes);
  T total = 0;
  for (int64_t i = 0; i < Vectorized<T>::size(); ++i) total += lanes[i];
  return total;
}

// The largest lane, NaN if any lane is NaN (as torch.amax).
template <typename T>
inline T lane_max(const Vectorized<T>& v) {
  T lanes[Vectorized<T>::size()];
  v.store(lanes);
  T largest = lanes[0];
  for (int64_t i = 1; i < Vectorized<T>::size(); ++i) {
    if (std::isnan(lanes[i]) || lanes[i] > largest) largest = lanes[i];
  }
  return largest;
}

}  // namespace ugmm_native
