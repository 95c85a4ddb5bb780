// Turns autocast off for a scope. The reference kernels accumulate in fp32 (or
// fp64): under autocast their matmuls would run in bf16 even on fp32 operands,
// losing the accumulation precision, and fp32-only constants (a masked score
// of float lowest) would overflow bf16.
#pragma once

#include <c10/core/impl/LocalDispatchKeySet.h>

namespace longtrain {

struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

}  // namespace longtrain
