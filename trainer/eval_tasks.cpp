// See eval_tasks.h.
#include "trainer/eval_tasks.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>
#include <stdexcept>

#include "trainer/device.h"
#include "trainer/lm_protocol.h"

namespace longtrain {
namespace {

struct EncodedItem {
  std::vector<int64_t> tokens;
  std::vector<std::pair<int64_t, int64_t>> answers;  // token [begin, end) of each answer
};

EncodedItem encode_item(const Tokenizer& tok, const TaskItem& item) {
  EncodedItem e;
  // Pieces are encoded one by one so that answer boundaries are token
  // boundaries whatever the tokenizer (exact for bytes).
  for (const auto& p : item.pieces) {
    const auto ids = tok.encode(p.text);
    const int64_t begin = static_cast<int64_t>(e.tokens.size());
    e.tokens.insert(e.tokens.end(), ids.begin(), ids.end());
    if (p.answer) {
      TORCH_CHECK(begin > 0 && !ids.empty(), "a task answer needs text before it and at least one token");
      e.answers.emplace_back(begin, static_cast<int64_t>(e.tokens.size()));
    }
  }
  return e;
}

// Runs `fn` and records an exception's message as a skipped entry.
template <typename Fn>
nlohmann::json or_skipped(Fn fn, std::ostream& log, const std::string& what) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    log << "  " << what << ": skipped (" << e.what_without_backtrace() << ")\n";
    return {{"skipped", e.what_without_backtrace()}};
  } catch (const std::exception& e) {
    log << "  " << what << ": skipped (" << e.what() << ")\n";
    return {{"skipped", e.what()}};
  }
}

nlohmann::json run_lm(LanguageModel& model, const TokenStream& val, const Tokenizer& tok, const EvalTaskOptions& opt,
                      std::ostream& log) {
  nlohmann::json out = nlohmann::json::array();
  for (int64_t length : opt.lengths) {
    LmProtocolOptions lo;
    lo.length = length;
    lo.stride = opt.stride > 0 ? std::min(opt.stride, length) : std::max<int64_t>(1, length / 2);
    lo.max_windows = opt.max_windows;
    lo.buckets = opt.buckets;
    lo.batch_size = opt.batch_size;
    lo.device = opt.device;
    lo.bf16 = opt.bf16;
    const std::string what = "lm length " + std::to_string(length);
    auto j = or_skipped(
        [&]() -> nlohmann::json {
          const auto r = evaluate_lm_protocol(model, val, tok, lo);
          std::vector<int64_t> starts;
          for (size_t b = 0; b < r.bucket_loss.size(); ++b) starts.push_back(static_cast<int64_t>(b) * r.bucket_size);
          nlohmann::json j = {{"windows", r.windows},
                              {"tokens", r.tokens},
                              {"loss", r.loss},
                              {"perplexity", r.perplexity},
                              {"bits_per_byte", r.bits_per_byte},
                              {"loss_by_position",
                               {{"bucket_size", r.bucket_size}, {"start", starts}, {"loss", r.bucket_loss},
                                {"count", r.bucket_count}}}};
          if (r.long_range_count) {
            j["long_range"] = {{"count", r.long_range_count}, {"accuracy", r.long_range_accuracy}};
          }
          log << "  " << what << " stride " << lo.stride << ": loss " << r.loss << " nats/token, "
              << r.bits_per_byte << " bits/byte over " << r.tokens << " tokens; loss first/last bucket "
              << r.bucket_loss.front() << " / " << r.bucket_loss.back() << "\n";
          return j;
        },
        log, what);
    j["length"] = length;
    j["stride"] = lo.stride;
    out.push_back(j);
  }
  return out;
}

// A (length x column) grid of recall accuracies; make(length, column, index) builds an item.
template <typename Column, typename Make>
nlohmann::json run_grid(LanguageModel& model, const Tokenizer& tok, const EvalTaskOptions& opt,
                        const std::string& task, const std::string& column_name, const std::vector<Column>& columns,
                        Make make, std::ostream& log) {
  nlohmann::json acc = nlohmann::json::array(), skipped = nlohmann::json::object();
  for (int64_t length : opt.lengths) {
    nlohmann::json row = nlohmann::json::array();
    for (const auto& c : columns) {
      std::ostringstream what;
      what << task << " length " << length << " " << column_name << " " << c;
      auto cell = or_skipped(
          [&]() -> nlohmann::json {
            std::vector<TaskItem> items;
            for (int64_t i = 0; i < opt.samples; ++i) items.push_back(make(length, c, i));
            const auto s = score_recall(model, tok, items, opt.batch_size, opt.device, opt.bf16);
            log << "  " << what.str() << ": " << std::fixed << std::setprecision(1) << 100 * s.accuracy()
                << std::defaultfloat << std::setprecision(6) << "% of " << s.answers << " answers\n";
            return s.accuracy();
          },
          log, what.str());
      if (cell.is_object()) {
        skipped[what.str()] = cell["skipped"];
        row.push_back(nullptr);
      } else {
        row.push_back(cell);
      }
    }
    acc.push_back(row);
  }
  nlohmann::json j = {{"lengths", opt.lengths}, {column_name + "s", columns}, {"samples", opt.samples},
                      {"seed", opt.seed}, {"accuracy", acc}};
  if (!skipped.empty()) j["skipped"] = skipped;
  return j;
}

}  // namespace

const std::vector<std::string>& eval_task_names() {
  static const std::vector<std::string> names = {"lm", "passkey", "mqar"};
  return names;
}

RecallScore score_recall(LanguageModel& model, const Tokenizer& tok, const std::vector<TaskItem>& items,
                         int64_t batch_size, const torch::Device& device, bool bf16) {
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard no_grad;
  std::vector<EncodedItem> enc;
  for (const auto& item : items) enc.push_back(encode_item(tok, item));
  RecallScore s;
  s.items = static_cast<int64_t>(items.size());
  for (size_t b0 = 0; b0 < enc.size(); b0 += static_cast<size_t>(batch_size)) {
    const size_t b1 = std::min(enc.size(), b0 + static_cast<size_t>(batch_size));
    const int64_t B = static_cast<int64_t>(b1 - b0);
    int64_t width = 0;
    for (size_t i = b0; i < b1; ++i) width = std::max<int64_t>(width, static_cast<int64_t>(enc[i].tokens.size()) - 1);
    // Inputs are tokens [0, n - 1); the prediction at i is for token i + 1.
    // Shorter items are padded at the end, unseen by causal positions before.
    auto inputs = torch::zeros({B, width}, torch::kInt64);
    auto in_a = inputs.accessor<int64_t, 2>();
    for (int64_t r = 0; r < B; ++r) {
      const auto& t = enc[b0 + r].tokens;
      for (size_t i = 0; i + 1 < t.size(); ++i) in_a[r][static_cast<int64_t>(i)] = t[i];
    }
    torch::Tensor logits;
    {
      AutocastGuard autocast(device, bf16);
      logits = model->forward(inputs.to(device));
    }
    auto pred = logits.argmax(-1).cpu();  // [B, width]
    auto pr_a = pred.accessor<int64_t, 2>();
    for (int64_t r = 0; r < B; ++r) {
      const auto& e = enc[b0 + r];
      for (const auto& [begin, end] : e.answers) {
        bool ok = true;
        for (int64_t i = begin; i < end; ++i) ok = ok && pr_a[r][i - 1] == e.tokens[i];
        s.answers += 1;
        s.correct += ok ? 1 : 0;
      }
    }
  }
  if (was_training) model->train();
  return s;
}

nlohmann::json run_eval_tasks(LanguageModel& model, const TokenStream& val, const Tokenizer& tok,
                              const EvalTaskOptions& opt, std::ostream& log) {
  TORCH_CHECK(!opt.lengths.empty(), "eval tasks need at least one length");
  TORCH_CHECK(opt.samples >= 1, "eval tasks need samples >= 1, got ", opt.samples);
  const auto& names = eval_task_names();
  for (const auto& t : opt.tasks) {
    if (std::find(names.begin(), names.end(), t) == names.end()) {
      std::string valid;
      for (const auto& n : names) valid += (valid.empty() ? "" : ", ") + n;
      throw std::invalid_argument("unknown eval task '" + t + "' (valid: " + valid + ")");
    }
  }
  auto asked = [&](const std::string& t) { return std::find(opt.tasks.begin(), opt.tasks.end(), t) != opt.tasks.end(); };
  nlohmann::json out = nlohmann::json::object();
  if (asked("lm")) out["lm"] = run_lm(model, val, tok, opt, log);
  if (asked("passkey")) {
    out["passkey"] = run_grid(model, tok, opt, "passkey", "depth", opt.depths,
                              [&](int64_t length, double depth, int64_t i) {
                                return passkey_item(length, depth, opt.seed, i);
                              },
                              log);
    out["passkey"]["chance"] = 1e-3;  // a uniform three-digit value
  }
  if (asked("mqar")) {
    out["mqar"] = run_grid(model, tok, opt, "mqar", "pair", opt.pairs,
                           [&](int64_t length, int64_t pairs, int64_t i) {
                             return mqar_item(length, pairs, opt.seed, i);
                           },
                           log);
    out["mqar"]["chance"] = 1e-3;
  }
  return out;
}

}  // namespace longtrain
