// See task_objective.h.
#include "trainer/task_objective.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "data/finetune_examples.h"
#include "data/listops.h"
#include "data/rng.h"
#include "model/task_heads.h"
#include "trainer/device.h"

namespace longtrain {
namespace {

using nlohmann::json;

// One example of any kind: tokens (starting with the [eos] classification
// token), and the label or the answer span.
struct Example {
  std::vector<int32_t> tokens;
  int64_t label = 0;
  int64_t question_len = 0, start = 0, end = 0;  // qa
};

// A padded batch: tokens [B, L]; labels, cls_index, start, end [B];
// global_mask (undefined when off) and context [B, L] bool.
struct Batch {
  torch::Tensor tokens, labels, cls_index, start, end, global_mask, context;
};

std::vector<Example> classification_examples(const ClassificationSet& set) {
  std::vector<Example> out;
  for (const auto& e : set.examples) out.push_back({e.tokens, e.label});
  return out;
}

std::vector<Example> qa_examples(const QaSet& set) {
  std::vector<Example> out;
  for (const auto& e : set.examples) out.push_back({e.tokens, 0, e.question_len, e.start, e.end});
  return out;
}

// Eval labels numbered as the training file numbers them (string labels are
// numbered in sorted order per file, so the two files may differ).
void renumber_like(ClassificationSet& eval, const ClassificationSet& train, const std::string& eval_path) {
  if (eval.label_names.empty() && train.label_names.empty()) return;
  if (eval.label_names.empty() != train.label_names.empty()) {
    throw std::runtime_error(eval_path + ": labels are " + (eval.label_names.empty() ? "integers" : "strings") +
                             " but the training file's are not");
  }
  for (auto& e : eval.examples) {
    const std::string& name = eval.label_names[static_cast<size_t>(e.label)];
    auto it = std::lower_bound(train.label_names.begin(), train.label_names.end(), name);
    if (it == train.label_names.end() || *it != name) {
      throw std::runtime_error(eval_path + ": label \"" + name + "\" does not occur in the training file");
    }
    e.label = it - train.label_names.begin();
  }
  eval.label_names = train.label_names;
}

double span_f1(int64_t ps, int64_t pe, int64_t gs, int64_t ge) {
  const int64_t overlap = std::min(pe, ge) - std::max(ps, gs) + 1;
  if (overlap <= 0) return 0.0;
  const double precision = static_cast<double>(overlap) / static_cast<double>(pe - ps + 1);
  const double recall = static_cast<double>(overlap) / static_cast<double>(ge - gs + 1);
  return 2 * precision * recall / (precision + recall);
}

class TaskObjective : public Objective {
 public:
  explicit TaskObjective(const ObjectiveContext& ctx)
      : ctx_(ctx), task_(ctx.recipe->task), seq_len_(ctx.recipe->train.seq_len) {
    const int64_t seq_len = seq_len_;
    const Tokenizer& tok = *ctx.tokenizer;
    if (task_.kind == "classification") {
      ClassificationSet train = read_classification_jsonl(task_.train, tok, seq_len);
      ClassificationSet eval = read_classification_jsonl(task_.eval, tok, seq_len);
      renumber_like(eval, train, task_.eval);
      num_classes_ = task_.num_labels > 0 ? task_.num_labels : std::max(train.num_classes, eval.num_classes);
      train_ = classification_examples(train);
      eval_ = classification_examples(eval);
      for (const auto* set : {&train_, &eval_}) {
        for (const auto& e : *set) {
          if (e.label >= num_classes_) {
            throw std::runtime_error("task.num_labels is " + std::to_string(num_classes_) + " but " +
                                     (set == &train_ ? task_.train : task_.eval) + " has label " +
                                     std::to_string(e.label));
          }
        }
      }
    } else if (task_.kind == "qa") {
      QaSet train = read_qa_jsonl(task_.train, tok, seq_len), eval = read_qa_jsonl(task_.eval, tok, seq_len);
      dropped_ = train.dropped + eval.dropped;
      train_ = qa_examples(train);
      eval_ = qa_examples(eval);
    } else {
      num_classes_ = 10;
      spec_.length = seq_len - 1;  // the [eos] classification token comes first
      spec_.max_depth = task_.listops.max_depth;
      spec_.max_args = task_.listops.max_args;
      for (int64_t i = 0; i < task_.listops.eval_items; ++i) eval_.push_back(listops(1, i));
    }
    if (task_.kind != "listops" && train_.empty()) throw std::runtime_error(task_.train + ": no examples");
    if (eval_.empty()) throw std::runtime_error(task_.eval + ": no examples");
    if (task_.eval_items > 0 && static_cast<int64_t>(eval_.size()) > task_.eval_items) {
      eval_.resize(static_cast<size_t>(task_.eval_items));
    }
  }

  torch::nn::Module& module() override {
    if (classifier_) return *classifier_;
    return *extractor_;
  }

  void start_phase(const Recipe& phase, LanguageModel body, int64_t rank, int64_t world_size) override {
    TORCH_CHECK(!classifier_ && !extractor_, "a fine-tuning task runs one phase");
    rank_ = rank;
    world_size_ = world_size;
    batch_size_ = phase.train.batch_size;
    grad_accum_ = phase.train.grad_accum;
    causal_ = phase.model.causal;
    if (task_.kind == "qa") {
      extractor_ = SpanExtractor(body);
      extractor_->to(ctx_.device);
    } else {
      classifier_ = SequenceClassifier(body, num_classes_);
      classifier_->to(ctx_.device);
    }
  }

  MicroBatchLoss micro_batch(int64_t step, int64_t micro) override {
    std::vector<const Example*> rows;
    std::vector<Example> generated;  // listops items live for this batch only
    generated.reserve(static_cast<size_t>(batch_size_));
    const int64_t first = (step * grad_accum_ + micro) * world_size_ * batch_size_ + rank_ * batch_size_;
    for (int64_t r = 0; r < batch_size_; ++r) {
      const int64_t slot = first + r;
      if (task_.kind == "listops") {
        const int64_t n = task_.listops.train_items;
        generated.push_back(listops(0, n > 0 ? slot % n : slot));
        rows.push_back(&generated.back());
      } else {
        rows.push_back(&train_[static_cast<size_t>(train_index(slot))]);
      }
    }
    const Batch b = make_batch(rows);
    return {loss_of(b, nullptr), batch_size_ * seq_len_};
  }

  Evaluation evaluate() override {
    torch::nn::Module& m = module();
    const bool was_training = m.is_training();
    m.eval();
    torch::NoGradGuard no_grad;
    TaskScore s;
    std::map<int64_t, int64_t> label_counts;
    double loss_sum = 0;
    for (size_t at = 0; at < eval_.size(); at += static_cast<size_t>(batch_size_)) {
      std::vector<const Example*> rows;
      for (size_t i = at; i < std::min(eval_.size(), at + static_cast<size_t>(batch_size_)); ++i) {
        rows.push_back(&eval_[i]);
        label_counts[eval_[i].label] += 1;
      }
      const Batch b = make_batch(rows);
      std::vector<double> correct, f1;
      const torch::Tensor loss = loss_of(b, &correct, &f1);
      loss_sum += loss.item<double>() * static_cast<double>(rows.size());
      s.examples += static_cast<int64_t>(rows.size());
      for (double c : correct) s.accuracy += c;
      for (double f : f1) s.f1 += f;
    }
    if (was_training) m.train();
    const double n = static_cast<double>(std::max<int64_t>(s.examples, 1));
    s.loss = loss_sum / n;
    s.accuracy /= n;
    s.f1 /= n;
    Evaluation e;
    e.task = s;
    e.record = {{"task", task_.kind}, {"val_loss", s.loss}, {"val_examples", s.examples}};
    std::ostringstream line;
    line << task_.kind << " loss " << s.loss << ", ";
    if (task_.kind == "qa") {
      e.record["val_exact_match"] = s.accuracy;
      e.record["val_f1"] = s.f1;
      line << "exact match " << 100 * s.accuracy << "%, span F1 " << 100 * s.f1 << "%";
    } else {
      int64_t majority = 0;
      for (const auto& kv : label_counts) majority = std::max(majority, kv.second);
      s.chance = static_cast<double>(majority) / n;
      e.task.chance = s.chance;
      e.record["val_accuracy"] = s.accuracy;
      e.record["chance_accuracy"] = s.chance;
      line << "accuracy " << 100 * s.accuracy << "% (majority class " << 100 * s.chance << "%)";
    }
    line << " over " << s.examples << " eval examples";
    e.line = line.str();
    return e;
  }

  std::string summary(const Evaluation& before, const Evaluation& after) const override {
    std::ostringstream s;
    const char* metric = task_.kind == "qa" ? "exact match " : "accuracy ";
    s << "summary: " << task_.kind << " loss " << before.task.loss << " -> " << after.task.loss << ", " << metric
      << 100 * before.task.accuracy << "% -> " << 100 * after.task.accuracy << "%";
    if (task_.kind == "qa") s << ", span F1 " << 100 * before.task.f1 << "% -> " << 100 * after.task.f1 << "%";
    return s.str();
  }

  std::string description() const override {
    std::ostringstream s;
    s << "task " << task_.kind << ": ";
    if (task_.kind == "listops") {
      s << "generated ListOps items of at most " << spec_.length << " characters (depth " << spec_.max_depth
        << ", args " << spec_.max_args << "), "
        << (task_.listops.train_items ? std::to_string(task_.listops.train_items) : std::string("endless"))
        << " train, " << eval_.size() << " eval";
    } else {
      s << train_.size() << " train examples from " << task_.train << ", " << eval_.size() << " eval from "
        << task_.eval;
      if (dropped_) s << " (" << dropped_ << " dropped: answer beyond train.seq_len)";
    }
    if (num_classes_) s << ", " << num_classes_ << " classes";
    s << ", global attention " << task_.global_attention;
    return s.str();
  }

 private:
  // ListOps item `index` of split 0 (train) or 1 (eval).
  Example listops(uint64_t split, int64_t index) const {
    const ListOpsItem item = listops_item(spec_, mix_keys(static_cast<uint64_t>(task_.listops.seed), split), index);
    Example e;
    e.tokens.push_back(ctx_.tokenizer->eos());
    const auto text = ctx_.tokenizer->encode(item.text);
    e.tokens.insert(e.tokens.end(), text.begin(), text.end());
    if (static_cast<int64_t>(e.tokens.size()) > seq_len_) e.tokens.resize(static_cast<size_t>(seq_len_));
    e.label = item.label;
    return e;
  }

  // The training file's example at stream slot `slot`: epoch slot / N walks a
  // permutation seeded by (run.seed, epoch).
  int64_t train_index(int64_t slot) {
    const int64_t n = static_cast<int64_t>(train_.size());
    const int64_t epoch = slot / n;
    if (epoch != perm_epoch_) {
      perm_.resize(static_cast<size_t>(n));
      std::iota(perm_.begin(), perm_.end(), int64_t{0});
      Rng rng(mix_keys(ctx_.seed, static_cast<uint64_t>(epoch), 0x7a5cULL));
      for (int64_t i = n - 1; i > 0; --i) {
        std::swap(perm_[static_cast<size_t>(i)], perm_[rng.below(static_cast<uint64_t>(i + 1))]);
      }
      perm_epoch_ = epoch;
    }
    return perm_[static_cast<size_t>(slot % n)];
  }

  Batch make_batch(const std::vector<const Example*>& rows) const {
    const int64_t B = static_cast<int64_t>(rows.size()), L = seq_len_;
    const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    Batch b;
    b.tokens = torch::full({B, L}, static_cast<int64_t>(ctx_.tokenizer->eos()), i64);
    b.labels = torch::zeros({B}, i64);
    b.cls_index = torch::zeros({B}, i64);
    b.start = torch::zeros({B}, i64);
    b.end = torch::zeros({B}, i64);
    b.context = torch::zeros({B, L}, torch::kBool);
    auto global = torch::zeros({B, L}, torch::kBool);
    auto tok = b.tokens.accessor<int64_t, 2>();
    for (int64_t r = 0; r < B; ++r) {
      const Example& e = *rows[static_cast<size_t>(r)];
      const int64_t n = static_cast<int64_t>(e.tokens.size());
      for (int64_t t = 0; t < n; ++t) tok[r][t] = e.tokens[static_cast<size_t>(t)];
      b.labels[r] = e.label;
      const int64_t cls = causal_ ? n - 1 : 0;
      b.cls_index[r] = cls;
      if (task_.kind == "qa") {
        b.start[r] = e.start;
        b.end[r] = e.end;
        b.context[r].narrow(0, e.question_len, n - e.question_len).fill_(true);
        global[r].narrow(0, 0, e.question_len).fill_(true);
      } else {
        global[r][cls] = true;
      }
    }
    if (task_.global_attention == "auto") b.global_mask = global.to(ctx_.device);
    b.tokens = b.tokens.to(ctx_.device);
    b.context = b.context.to(ctx_.device);
    for (auto* t : {&b.labels, &b.cls_index, &b.start, &b.end}) *t = t->to(ctx_.device);
    return b;
  }

  // The batch's mean loss; with `correct` (and `f1` for QA), each row's score.
  torch::Tensor loss_of(const Batch& b, std::vector<double>* correct, std::vector<double>* f1 = nullptr) {
    if (extractor_) {
      std::pair<torch::Tensor, torch::Tensor> se;
      {
        AutocastGuard autocast(ctx_.device, ctx_.bf16);
        se = extractor_->forward(b.tokens, b.global_mask);  // 2 x [B, L]
      }
      auto loss = span_loss(se.first, se.second, b.start, b.end, b.context);
      if (correct) {
        auto [ps, pe] = best_span(se.first, se.second, b.context, task_.max_answer_len);
        auto ps_c = ps.cpu(), pe_c = pe.cpu(), gs = b.start.cpu(), ge = b.end.cpu();
        for (int64_t r = 0; r < ps_c.size(0); ++r) {
          const int64_t p0 = ps_c[r].item<int64_t>(), p1 = pe_c[r].item<int64_t>();
          const int64_t g0 = gs[r].item<int64_t>(), g1 = ge[r].item<int64_t>();
          correct->push_back(p0 == g0 && p1 == g1 ? 1.0 : 0.0);
          f1->push_back(span_f1(p0, p1, g0, g1));
        }
      }
      return loss;
    }
    torch::Tensor logits;
    {
      AutocastGuard autocast(ctx_.device, ctx_.bf16);
      logits = classifier_->forward(b.tokens, b.cls_index, b.global_mask);  // [B, C]
    }
    auto loss = classification_loss(logits, b.labels);
    if (correct) {
      auto hit = (logits.argmax(1) == b.labels).cpu();
      for (int64_t r = 0; r < hit.size(0); ++r) correct->push_back(hit[r].item<bool>() ? 1.0 : 0.0);
    }
    return loss;
  }

  ObjectiveContext ctx_;
  TaskConfig task_;
  int64_t seq_len_;
  ListOpsSpec spec_;
  std::vector<Example> train_, eval_;
  int64_t num_classes_ = 0, dropped_ = 0;
  SequenceClassifier classifier_{nullptr};
  SpanExtractor extractor_{nullptr};
  int64_t rank_ = 0, world_size_ = 1, batch_size_ = 1, grad_accum_ = 1;
  bool causal_ = true;
  std::vector<int64_t> perm_;
  int64_t perm_epoch_ = -1;
};

}  // namespace

std::unique_ptr<Objective> make_task_objective(const ObjectiveContext& ctx) {
  return std::make_unique<TaskObjective>(ctx);
}

}  // namespace longtrain
