// Learning-rate schedule: linear warmup, then cosine decay to min_lr or constant.
#pragma once

#include <cstdint>

namespace longtrain {

struct TrainConfig;

// Learning rate for optimizer step `step` (0-based).
double lr_at(const TrainConfig& cfg, int64_t step);

}  // namespace longtrain
