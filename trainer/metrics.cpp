// See metrics.h.
#include "trainer/metrics.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace longtrain {

MetricsWriter::MetricsWriter(const std::string& path, bool append)
    : out_(path, append ? std::ios::app : std::ios::trunc) {
  if (!out_) throw std::runtime_error(path + ": cannot open for writing");
}

void MetricsWriter::write(const nlohmann::json& record) {
  out_ << record.dump() << "\n";
  out_.flush();
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  const auto total = static_cast<long long>(std::llround(s));
  char buf[32];
  if (total >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", total / 3600, (total / 60) % 60, total % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%02lld:%02lld", total / 60, total % 60);
  }
  return buf;
}

Progress::Progress(int64_t total_steps, int64_t first_step)
    : total_(total_steps), first_(first_step), tty_(::isatty(STDERR_FILENO) != 0) {}

void Progress::update(int64_t step, double loss, double lr, double tokens_per_s, double elapsed_s) {
  const double done = static_cast<double>(step - first_);
  const double eta = done > 0 ? elapsed_s / done * static_cast<double>(total_ - step) : NAN;
  std::fprintf(stderr, "%sstep %lld/%lld (%3.0f%%) | loss %.4f | lr %.2e | %.0f tok/s | elapsed %s | ETA %s%s",
               tty_ ? "\r\033[K" : "", static_cast<long long>(step), static_cast<long long>(total_),
               100.0 * step / total_, loss, lr, tokens_per_s, format_duration(elapsed_s).c_str(),
               format_duration(eta).c_str(), tty_ ? "" : "\n");
  std::fflush(stderr);
  dirty_ = tty_;
}

void Progress::newline() {
  if (dirty_) std::fprintf(stderr, "\n");
  dirty_ = false;
}

}  // namespace longtrain
