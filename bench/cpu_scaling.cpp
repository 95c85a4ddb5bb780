// `longtrain_bench_cpu`: how each mixer's CPU time and memory grow with the
// sequence length L.
//
// For every mixer configuration and every L, one mixer layer is built through
// the registry (parse_mixer / build_mixer, as a recipe would build it) at one
// width for all: d_model 256, 4 heads (head dim 64), batch 1, fp32, causal.
// One step is x: [1, L, 256] (requires grad) -> mixer -> .pow(2).mean() ->
// backward, which reaches every parameter and x. The first step is the warm-up
// and also the memory measurement (peak_cpu_bytes: bytes the CPU allocator
// holds at the step's peak, parameter gradients included); the time is the
// median of --repeats further steps. All configurations run in one process on
// the same inputs, and every row also gives its ratio to `full` at the same L
// (STYLE.md rule 8: ratios against peers, measured in one run).
//
// A configuration stops growing once one step takes longer than --max-seconds
// (its longer L are recorded as skipped), and inherently dense mixers (full,
// aft-full) skip an L whose L x L fp32 score matrices would exceed
// --max-dense-gib. Results go to stdout as a table while running and to --out
// as JSON, rewritten after every row so that an interrupted sweep keeps what
// it measured. See bench/README.md.
#include <CLI/CLI.hpp>
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/mixer.h"
#include "trainer/cpu_memory.h"
#include "trainer/recipe_section.h"

namespace {

using namespace longtrain;

constexpr int64_t kModel = 256;
constexpr int64_t kHeads = 4;  // head dim 64
constexpr int64_t kBatch = 1;
constexpr int64_t kMaxPositions = 16384;  // AFT-full's bias table; the longest default L

struct BenchConfig {
  std::string name;
  std::string yaml;  // the model.mixer section, as a recipe would give it
  // Inherently dense mixers hold `dense_scores` L x L fp32 matrices per
  // sequence (0: not dense): full's [H, L, L] softmax scores, AFT-full's [L, L]
  // position weights.
  int64_t dense_scores = 0;
};

const std::vector<BenchConfig>& configs() {
  static const std::vector<BenchConfig> all = {
      {"full", "{type: full}", kHeads},
      {"sliding", "{type: sliding, window: 256, block: 64}"},
      // One layer entry with per-head dilations: heads 0-1 span 256 tokens, 2-3 span 512.
      {"sliding-dilated-global",
       "{type: sliding, window: 256, dilation: [[1, 1, 2, 2]], block: 64, global_first: 16}"},
      {"bigbird", "{type: bigbird, block: 64, window_blocks: 3, global_blocks: 2, random_blocks: 3}"},
      {"sparse-strided", "{type: sparse, pattern: strided, stride: 128, block: 64}"},
      {"linear", "{type: linear}"},
      {"linear-decay", "{type: linear, decay: fixed}"},
      {"aft-simple", "{type: aft, variant: simple}"},
      {"aft-local", "{type: aft, variant: local, window: 256}"},
      {"aft-conv", "{type: aft, variant: conv, window: 256}"},
      {"aft-full", "{type: aft, variant: full}", 1},
  };
  return all;
}

struct Options {
  std::vector<std::string> mixers;
  std::vector<int64_t> lengths{1024, 2048, 4096, 8192, 16384};
  int64_t repeats = 3;
  int64_t threads = 2;
  double max_seconds = 60.0;
  double max_dense_gib = 8.0;
  std::string out;
};

std::string today() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", &tm);
  return buf;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "unknown";
}

Mixer make_mixer(const BenchConfig& c) {
  Section s(YAML::Load(c.yaml), "model.mixer", "bench", YAML::Node(YAML::NodeType::Map));
  const MixerSpec spec = parse_mixer(s);
  MixerDims dims;
  dims.d_model = kModel;
  dims.n_heads = kHeads;
  dims.layer = 0;
  dims.n_layers = 1;
  dims.max_positions = kMaxPositions;
  dims.causal = true;
  return build_mixer(spec, dims);
}

// Why `c` cannot run at length L (the mixer's own option check, its longest
// sequence, the dense limit), or nothing.
std::optional<std::string> reason_to_skip(const BenchConfig& c, const Mixer& mixer, int64_t L, double max_dense_gib) {
  Section s(YAML::Load(c.yaml), "model.mixer", "bench", YAML::Node(YAML::NodeType::Map));
  try {
    parse_mixer(s).options->check(MixerCheck{1, kHeads, L});
  } catch (const std::invalid_argument& e) {
    return std::string("invalid at this L: ") + e.what();
  }
  if (mixer->max_seq_len() >= 0 && L > mixer->max_seq_len()) {
    return "longer than the mixer's max_seq_len " + std::to_string(mixer->max_seq_len());
  }
  const double dense_gib = static_cast<double>(kBatch * c.dense_scores) * L * L * 4 / (1 << 30);
  if (dense_gib > max_dense_gib) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "dense: L x L fp32 scores would take %.1f GiB > --max-dense-gib %.1f", dense_gib,
                  max_dense_gib);
    return std::string(buf);
  }
  return std::nullopt;
}

// One forward + backward from scratch: parameter and input gradients are
// dropped first, so that every step allocates them as a training step would.
double step_seconds(MixerImpl& mixer, torch::Tensor& x, const MixerContext& ctx) {
  mixer.zero_grad(/*set_to_none=*/true);
  x.mutable_grad() = torch::Tensor();
  const auto t0 = std::chrono::steady_clock::now();
  mixer.forward(x, ctx).pow(2).mean().backward();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Measurement {
  double ms = 0;
  double peak_mib = 0;
  int64_t runs = 0;          // timed steps behind `ms`
  bool over_budget = false;  // some step took longer than --max-seconds
};

Measurement measure(Mixer& mixer, int64_t L, const Options& o) {
  torch::manual_seed(L);  // every mixer sees the same x at a given L
  auto x = torch::randn({kBatch, L, kModel}).requires_grad_();
  MixerContext ctx;
  ctx.tokens = torch::zeros({kBatch, L}, torch::kInt64);
  Measurement m;
  double warmup = 0;
  const int64_t peak = peak_cpu_bytes([&] { warmup = step_seconds(*mixer, x, ctx); });
  m.peak_mib = static_cast<double>(peak) / (1 << 20);
  if (warmup > o.max_seconds) {
    // Repeating a step already over the budget would only spend more of it:
    // the warm-up is the one sample (its allocator counting costs microseconds).
    m.ms = 1e3 * warmup;
    m.runs = 1;
    m.over_budget = true;
    return m;
  }
  std::vector<double> times;
  for (int64_t r = 0; r < o.repeats; ++r) {
    times.push_back(step_seconds(*mixer, x, ctx));
    m.over_budget = m.over_budget || times.back() > o.max_seconds;
  }
  m.ms = 1e3 * median(times);
  m.runs = o.repeats;
  return m;
}

void write_json(const nlohmann::json& j, const std::string& path) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << j.dump(2) << "\n";
    if (!out) throw std::runtime_error(tmp + ": cannot write");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": cannot rename " + tmp + " to it");
}

// What went wrong, without LibTorch's C++ backtrace.
std::string message(const std::exception& e) {
  if (const auto* t = dynamic_cast<const c10::Error*>(&e)) return t->what_without_backtrace();
  return e.what();
}

std::vector<BenchConfig> selected(const std::vector<std::string>& names) {
  if (names.empty()) return configs();
  std::vector<BenchConfig> out;
  for (const auto& n : names) {
    auto it = std::find_if(configs().begin(), configs().end(), [&](const BenchConfig& c) { return c.name == n; });
    if (it == configs().end()) {
      std::string known;
      for (const auto& c : configs()) known += (known.empty() ? "" : ", ") + c.name;
      throw std::invalid_argument("unknown mixer configuration '" + n + "' (known: " + known + ")");
    }
    out.push_back(*it);
  }
  return out;
}

int run(const Options& o) {
  const auto chosen = selected(o.mixers);
  for (int64_t L : o.lengths) {
    if (L < 1) throw std::invalid_argument("--lengths: " + std::to_string(L) + " is not a positive length");
  }
  torch::set_num_threads(static_cast<int>(o.threads));
  const std::string date = today();
  nlohmann::json j = {{"device", "cpu"},   {"cpu", cpu_model()},  {"threads", o.threads}, {"date", date},
                      {"torch", TORCH_VERSION}, {"d_model", kModel}, {"n_heads", kHeads},   {"batch", kBatch},
                      {"dtype", "fp32"},   {"causal", true},      {"repeats", o.repeats},
                      {"max_seconds", o.max_seconds}, {"max_dense_gib", o.max_dense_gib},
                      {"results", nlohmann::json::array()}};
  const std::string out = o.out.empty() ? "cpu_scaling_" + date + ".json" : o.out;
  std::printf("longtrain_bench_cpu: %s, %lld threads, torch %s, %s; d_model %lld, %lld heads, batch %lld, fp32, "
              "causal; median of %lld steps after one warm-up\n",
              j["cpu"].get<std::string>().c_str(), static_cast<long long>(o.threads), TORCH_VERSION, date.c_str(),
              static_cast<long long>(kModel), static_cast<long long>(kHeads), static_cast<long long>(kBatch),
              static_cast<long long>(o.repeats));
  std::printf("%-24s %6s %14s %8s %10s %8s\n", "mixer", "L", "ms fwd+bwd", "x full", "peak MiB", "x full");
  std::map<int64_t, Measurement> full_at;  // the peer every row is compared with
  int status = 0;
  for (const auto& c : chosen) {
    bool over_budget = false;
    for (int64_t L : o.lengths) {
      nlohmann::json row = {{"mixer", c.name}, {"config", c.yaml}, {"L", L}};
      std::optional<std::string> skip;
      if (over_budget) skip = "over time budget";
      try {
        Mixer mixer;
        if (!skip) {
          torch::manual_seed(0);  // the same weights at every L
          mixer = make_mixer(c);
          skip = reason_to_skip(c, mixer, L, o.max_dense_gib);
        }
        if (!skip) {
          const Measurement m = measure(mixer, L, o);
          over_budget = m.over_budget;
          row["ms"] = m.ms;
          row["peak_mib"] = m.peak_mib;
          row["runs"] = m.runs;
          if (c.name == "full") full_at[L] = m;
          std::string ms_ratio = "-", mib_ratio = "-";
          if (auto it = full_at.find(L); it != full_at.end()) {
            row["ms_vs_full"] = m.ms / it->second.ms;
            row["peak_vs_full"] = m.peak_mib / it->second.peak_mib;
            char a[32], b[32];
            std::snprintf(a, sizeof a, "%.2f", m.ms / it->second.ms);
            std::snprintf(b, sizeof b, "%.2f", m.peak_mib / it->second.peak_mib);
            ms_ratio = a;
            mib_ratio = b;
          }
          std::printf("%-24s %6lld %14.1f %8s %10.1f %8s%s\n", c.name.c_str(), static_cast<long long>(L), m.ms,
                      ms_ratio.c_str(), m.peak_mib, mib_ratio.c_str(),
                      m.runs == 1 && o.repeats > 1 ? "  (warm-up only: over time budget)" : "");
        }
      } catch (const std::exception& e) {
        // A failure (an out-of-memory, a rejected option) is recorded and
        // fails the run, but the other configurations still get measured.
        skip = "error: " + message(e);
        status = 1;
      }
      if (skip) {
        row["skipped"] = *skip;
        std::printf("%-24s %6lld   skipped: %s\n", c.name.c_str(), static_cast<long long>(L), skip->c_str());
      }
      std::fflush(stdout);
      j["results"].push_back(row);
      write_json(j, out);
    }
  }
  std::printf("wrote %s\n", out.c_str());
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"longtrain_bench_cpu: forward+backward time and peak CPU memory of one layer of every mixer "
               "as the sequence length grows (bench/README.md)"};
  Options o;
  app.add_option("--mixers", o.mixers, "Comma-separated configurations to run (default: all)")->delimiter(',');
  app.add_option("--lengths", o.lengths, "Comma-separated sequence lengths, ascending")->delimiter(',');
  app.add_option("--repeats", o.repeats, "Timed steps per (mixer, L) after the warm-up; the median is reported")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", o.threads, "CPU intra-op threads (torch::set_num_threads)")->check(CLI::PositiveNumber);
  app.add_option("--max-seconds", o.max_seconds,
                 "Per-configuration time budget: once one step takes longer, its longer L are skipped")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-dense-gib", o.max_dense_gib,
                 "Skip an L where a dense mixer's L x L fp32 scores would exceed this many GiB")
      ->check(CLI::PositiveNumber);
  app.add_option("--out", o.out, "JSON results file (default: cpu_scaling_<date>.json)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (!std::is_sorted(o.lengths.begin(), o.lengths.end())) {
    std::cerr << "longtrain_bench_cpu: error: --lengths must be ascending (the time budget skips longer ones)\n";
    return 2;
  }
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::cerr << "longtrain_bench_cpu: error: " << message(e) << std::endl;
  }
  return 1;
}
