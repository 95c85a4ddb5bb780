// Constants the kernels share (host and device: plain constexpr).
#pragma once

namespace longtrain::kernels {

// log2(e): exp(x) = exp2(x * kLog2e), the form the kernels' exponents take.
constexpr float kLog2e = 1.4426950408889634f;

}  // namespace longtrain::kernels
