// The learning-rate schedule: warmup is linear, cosine ends at min_lr, constant stays.
#include <gtest/gtest.h>

#include "trainer/config.h"
#include "trainer/schedule.h"

namespace longtrain {
namespace {

TEST(Schedule, WarmupThenCosine) {
  TrainConfig c;
  c.lr = 1.0;
  c.min_lr = 0.1;
  c.warmup = 10;
  c.steps = 110;
  EXPECT_DOUBLE_EQ(lr_at(c, 0), 0.1);
  EXPECT_DOUBLE_EQ(lr_at(c, 9), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(c, 10), 1.0);
  EXPECT_NEAR(lr_at(c, 60), 0.55, 1e-12);
  EXPECT_NEAR(lr_at(c, 110), 0.1, 1e-12);
  for (int64_t s = 11; s < 110; ++s) EXPECT_LT(lr_at(c, s), lr_at(c, s - 1));
}

TEST(Schedule, Constant) {
  TrainConfig c;
  c.lr = 0.5;
  c.warmup = 0;
  c.schedule = "constant";
  c.steps = 50;
  EXPECT_DOUBLE_EQ(lr_at(c, 0), 0.5);
  EXPECT_DOUBLE_EQ(lr_at(c, 49), 0.5);
}

}  // namespace
}  // namespace longtrain
