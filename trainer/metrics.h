// The run's one metrics stream (RUN_DIR/metrics.jsonl, one JSON object per
// logged step or evaluation) and the human-facing progress line: redrawn in
// place with an ETA on a terminal, plain periodic lines otherwise (logs, CI).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace longtrain {

class MetricsWriter {
 public:
  // append: keep earlier lines (resume); otherwise start the file afresh.
  MetricsWriter(const std::string& path, bool append);
  void write(const nlohmann::json& record);

 private:
  std::ofstream out_;
};

class Progress {
 public:
  Progress(int64_t total_steps, int64_t first_step);
  // Prints a line for `step` (1-based steps completed).
  void update(int64_t step, double loss, double lr, double tokens_per_s, double elapsed_s);
  // Ends an in-place line before other output.
  void newline();

 private:
  int64_t total_, first_;
  bool tty_;
  bool dirty_ = false;
};

std::string format_duration(double seconds);

}  // namespace longtrain
