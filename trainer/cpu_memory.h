// Peak CPU allocation of one computation: memory-honesty tests and the CPU
// scaling benchmark (bench/) measure with it.
//
// CountingCpuAllocator counts live bytes from the CPU allocator while
// installed, so a test can see the peak of one computation. (Max RSS is
// process-wide and never falls, and the OS may not even touch an allocated
// L x L page, so it cannot show this reliably.)
#pragma once

#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <functional>

namespace longtrain {

class CountingCpuAllocator : public c10::Allocator {
 public:
  CountingCpuAllocator() : inner_(c10::GetCPUAllocator()) { c10::SetCPUAllocator(this, kPriority); }
  ~CountingCpuAllocator() override { c10::SetCPUAllocator(inner_, kPriority); }

  c10::DataPtr allocate(size_t n) override {
    auto* ctx = new Context{inner_->allocate(n), static_cast<int64_t>(n)};
    const int64_t now = live() += ctx->bytes;
    int64_t p = peak().load();
    while (now > p && !peak().compare_exchange_weak(p, now)) {}
    return {ctx->inner.get(), ctx, &release, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  static std::atomic<int64_t>& live() {
    static std::atomic<int64_t> bytes{0};
    return bytes;
  }
  static std::atomic<int64_t>& peak() {
    static std::atomic<int64_t> bytes{0};
    return bytes;
  }

 private:
  // Above the default CPU allocator's registration (0), so it takes over.
  static constexpr uint8_t kPriority = 100;
  struct Context {
    c10::DataPtr inner;
    int64_t bytes;
  };
  static void release(void* p) {
    auto* ctx = static_cast<Context*>(p);
    live() -= ctx->bytes;
    delete ctx;
  }
  c10::Allocator* inner_;
};

// Bytes allocated at the peak of `f`, above what was live when it started
// (tensors made inside f and freed by its end count; those it keeps count too).
inline int64_t peak_cpu_bytes(const std::function<void()>& f) {
  const int64_t start = CountingCpuAllocator::live().load();
  CountingCpuAllocator::peak() = start;
  {
    CountingCpuAllocator counting;
    f();
  }
  return CountingCpuAllocator::peak().load() - start;
}

}  // namespace longtrain
