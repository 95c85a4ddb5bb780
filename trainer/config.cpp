// Recipe parsing and validation; see config.h.
#include "trainer/config.h"

#include <filesystem>
#include <initializer_list>
#include <map>

#include "data/shards.h"
#include "model/mixer.h"
#include "trainer/recipe_section.h"

namespace longtrain {
namespace {

void choice(Section& s, const std::string& key, const std::string& value,
            std::initializer_list<const char*> valid) {
  std::string list;
  for (const char* v : valid) {
    if (value == v) return;
    list += (list.empty() ? "" : ", ") + std::string(v);
  }
  s.fail(key, "'" + value + "' is not one of: " + list);
}

void parse_run(Section s, RunConfig& c) {
  s.get("dir", c.dir).get("seed", c.seed);
  s.check(!c.dir.empty(), "dir", "must not be empty");
  s.finish();
}

// Hybrid stacks: `mixers` names mixer sections, `pattern` lists names (or
// mixer types, with their default options), each optionally "xN" to repeat it;
// the pattern is repeated to n_layers. E.g. pattern: [linear x7, full].
void parse_hybrid(Section& s, ModelConfig& c) {
  std::map<std::string, MixerSpec> named;
  Section mixers = s.sub("mixers");
  for (const auto& name : s.child_keys("mixers")) {
    Section one = mixers.sub(name);
    named[name] = parse_mixer(one);
  }
  mixers.finish();
  std::vector<std::string> pattern;
  s.get("pattern", pattern);
  if (pattern.empty()) return;
  std::vector<MixerSpec> unit;
  for (const auto& entry : pattern) {
    std::string name = entry;
    int64_t repeat = 1;
    const auto x = entry.rfind(" x");
    if (x != std::string::npos) {
      name = entry.substr(0, x);
      try {
        repeat = std::stoll(entry.substr(x + 2));
      } catch (const std::exception&) {
        s.fail("pattern", "'" + entry + "': expected NAME or NAME xN");
      }
      s.check(repeat >= 1, "pattern", "'" + entry + "': the repeat count must be >= 1");
    }
    MixerSpec spec;
    if (named.count(name)) {
      spec = named[name];
    } else {
      YAML::Node n(YAML::NodeType::Map);
      n["type"] = name;
      YAML::Node scratch(YAML::NodeType::Map);
      Section defaults(n, s.path() + ".pattern", s.file(), scratch);
      try {
        spec = parse_mixer(defaults);
      } catch (const RecipeError&) {
        std::string known;
        for (const auto& kv : named) known += kv.first + ", ";
        for (const auto& t : MixerRegistry::instance().names()) known += t + ", ";
        s.fail("pattern", "'" + name + "' is neither a name under model.mixers nor a mixer type (known: " +
                              known.substr(0, known.size() - 2) + ")");
      }
    }
    for (int64_t i = 0; i < repeat; ++i) unit.push_back(spec);
  }
  const int64_t period = static_cast<int64_t>(unit.size());
  s.check(c.n_layers % period == 0, "pattern",
          "covers " + std::to_string(period) + " layers, which does not divide model.n_layers " +
              std::to_string(c.n_layers) + " (the pattern repeats to fill the stack; give a pattern whose length "
              "divides n_layers, or list every layer)");
  for (int64_t l = 0; l < c.n_layers; ++l) c.layer_mixers.push_back(unit[static_cast<size_t>(l % period)]);
}

void parse_model(Section s, ModelConfig& c) {
  s.get("vocab_size", c.vocab_size).get("d_model", c.d_model).get("n_layers", c.n_layers);
  s.get("n_heads", c.n_heads).get("mlp_ratio", c.mlp_ratio).get("max_positions", c.max_positions);
  s.get("positions", c.positions).get("norm", c.norm).get("tie_embeddings", c.tie_embeddings);
  s.get("residual", c.residual);
  s.get("dropout", c.dropout).get("init_std", c.init_std).get("causal", c.causal);
  s.get("rope_base", c.rope_base).get("rope_scale", c.rope_scale);
  s.check(c.vocab_size >= 0, "vocab_size", "must be >= 0 (0 takes the tokenizer's)");
  s.check(c.d_model > 0, "d_model", "must be > 0");
  s.check(c.n_layers > 0, "n_layers", "must be > 0");
  s.check(c.n_heads > 0, "n_heads", "must be > 0");
  s.check(c.d_model % c.n_heads == 0, "n_heads",
          "d_model " + std::to_string(c.d_model) + " is not divisible by n_heads " +
              std::to_string(c.n_heads));
  s.check(c.mlp_ratio > 0, "mlp_ratio", "must be > 0");
  s.check(c.max_positions > 0, "max_positions", "must be > 0");
  choice(s, "positions", c.positions, {"learned", "rope", "none"});
  s.check(c.rope_base > 1, "rope_base", "must be > 1");
  s.check(c.rope_scale >= 1, "rope_scale", "must be >= 1 (position interpolation stretches, never shrinks)");
  s.check(c.positions != "rope" || (c.d_model / c.n_heads) % 2 == 0, "positions",
          "rope needs an even head dimension (d_model / n_heads)");
  choice(s, "norm", c.norm, {"layernorm", "rmsnorm"});
  choice(s, "residual", c.residual, {"fp32", "bf16"});
  s.check(c.dropout >= 0 && c.dropout < 1, "dropout", "must be in [0, 1)");
  s.check(c.init_std > 0, "init_std", "must be > 0");
  Section mixer = s.sub("mixer");
  c.mixer = parse_mixer(mixer);
  parse_hybrid(s, c);
  s.finish();
}

void parse_data(Section s, DataConfig& c) {
  s.get("source", c.source).get("paths", c.paths);
  choice(s, "source", c.source, {"synthetic", "text", "shards"});
  s.check(c.source != "text" || !c.paths.empty(), "paths", "source 'text' needs at least one path");
  // Shards carry their tokenizer: it is the default, and one named explicitly must be it.
  ShardMeta meta;
  if (c.source == "shards") {
    s.check(c.paths.size() == 1, "paths",
            "source 'shards' needs exactly one directory written by `longtrain prepare`");
    try {
      meta = read_shard_meta(c.paths[0]);
    } catch (const std::runtime_error& e) {
      s.fail("paths", e.what());
    }
    c.tokenizer = shard_tokenizer_spec(meta, c.paths[0]);
  }
  const bool explicit_tokenizer = s.has("tokenizer");
  s.get("tokenizer", c.tokenizer);
  s.get("val_fraction", c.val_fraction).get("window_start", c.window_start);
  choice(s, "window_start", c.window_start, {"random", "document", "inside"});
  if (c.tokenizer.rfind("spm:", 0) == 0) {
    s.check(std::filesystem::is_regular_file(c.tokenizer.substr(4)), "tokenizer",
            "'" + c.tokenizer + "': no such SentencePiece model file");
  } else {
    s.check(c.tokenizer == "bytes", "tokenizer",
            "'" + c.tokenizer + "' is not one of: bytes, spm:PATH (a SentencePiece .model file)");
  }
  if (c.source == "shards" && explicit_tokenizer) {
    const std::string why = shard_tokenizer_mismatch(meta, c.paths[0], c.tokenizer);
    s.check(why.empty(), "tokenizer", why + " (leave data.tokenizer out to use the shards' own)");
  }
  s.check(c.val_fraction > 0 && c.val_fraction < 1, "val_fraction", "must be in (0, 1)");
  Section syn = s.sub("synthetic");
  SyntheticConfig& y = c.synthetic;
  syn.get("train_docs", y.train_docs).get("val_docs", y.val_docs).get("facts", y.facts);
  syn.get("recalls", y.recalls).get("filler", y.filler).get("min_filler", y.min_filler).get("seed", y.seed);
  syn.check(y.train_docs > 0, "train_docs", "must be > 0");
  syn.check(y.val_docs > 0, "val_docs", "must be > 0");
  syn.check(y.facts >= 1 && y.facts <= 1000, "facts", "must be in [1, 1000]");
  syn.check(y.recalls >= 1, "recalls", "must be >= 1");
  syn.check(y.filler >= 0, "filler", "must be >= 0");
  syn.check(y.min_filler >= 0 && (y.filler == 0 || y.min_filler <= y.filler), "min_filler",
            "must be in [0, filler = " + std::to_string(y.filler) + "]");
  syn.finish();
  s.finish();
}

void parse_train(Section s, TrainConfig& c, const ModelConfig& m, bool staged) {
  s.get("steps", c.steps).get("batch_size", c.batch_size).get("seq_len", c.seq_len);
  s.get("grad_accum", c.grad_accum).get("lr", c.lr).get("min_lr", c.min_lr).get("warmup", c.warmup);
  s.get("schedule", c.schedule).get("weight_decay", c.weight_decay);
  s.get("decay_embeddings", c.decay_embeddings).get("beta1", c.beta1).get("beta2", c.beta2);
  s.get("eps", c.eps).get("grad_clip", c.grad_clip).get("device", c.device).get("dtype", c.dtype);
  s.get("on_nonfinite", c.on_nonfinite).get("log_every", c.log_every);
  s.get("eval_every", c.eval_every).get("eval_docs", c.eval_docs).get("threads", c.threads);
  s.get("dist_timeout_s", c.dist_timeout_s);
  s.get("activation_checkpointing", c.activation_checkpointing).get("loss_chunk", c.loss_chunk);
  s.get("fused_adamw", c.fused_adamw);
  s.check(c.steps > 0, "steps", "must be > 0");
  s.check(c.batch_size > 0, "batch_size", "must be > 0");
  s.check(c.seq_len > 1, "seq_len", "must be > 1");
  // A curriculum's phases grow the table themselves (trainer/curriculum.h).
  s.check(staged || m.positions != "learned" || c.seq_len <= m.max_positions, "seq_len",
          std::to_string(c.seq_len) + " exceeds model.max_positions = " +
              std::to_string(m.max_positions) + " (the learned position table)");
  s.check(c.grad_accum >= 1, "grad_accum", "must be >= 1");
  s.check(c.lr > 0, "lr", "must be > 0");
  s.check(c.min_lr >= 0 && c.min_lr <= c.lr, "min_lr", "must be in [0, lr]");
  s.check(c.warmup >= 0, "warmup", "must be >= 0");
  choice(s, "schedule", c.schedule, {"cosine", "constant"});
  s.check(c.weight_decay >= 0, "weight_decay", "must be >= 0");
  s.check(c.beta1 >= 0 && c.beta1 < 1, "beta1", "must be in [0, 1)");
  s.check(c.beta2 >= 0 && c.beta2 < 1, "beta2", "must be in [0, 1)");
  s.check(c.eps > 0, "eps", "must be > 0");
  s.check(c.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)");
  choice(s, "device", c.device, {"auto", "cpu", "cuda"});
  choice(s, "dtype", c.dtype, {"auto", "fp32", "bf16"});
  choice(s, "on_nonfinite", c.on_nonfinite, {"stop", "skip"});
  s.check(c.log_every >= 1, "log_every", "must be >= 1");
  s.check(c.eval_every >= 0, "eval_every", "must be >= 0");
  s.check(c.eval_docs >= 1, "eval_docs", "must be >= 1");
  s.check(c.threads >= 0, "threads", "must be >= 0");
  s.check(c.dist_timeout_s > 0, "dist_timeout_s", "must be > 0 (seconds)");
  choice(s, "activation_checkpointing", c.activation_checkpointing, {"none", "mixer", "full"});
  s.check(c.loss_chunk >= 0, "loss_chunk", "must be >= 0 (tokens per chunk; 0: plain cross-entropy)");
  choice(s, "fused_adamw", c.fused_adamw, {"auto", "true", "false"});
  s.finish();
}

void parse_checkpoint(Section s, CheckpointConfig& c) {
  s.get("every", c.every).get("keep_last", c.keep_last);
  s.check(c.every >= 0, "every", "must be >= 0");
  s.check(c.keep_last >= 1, "keep_last", "must be >= 1");
  s.finish();
}

void parse_task(Section s, TaskConfig& c, const Recipe& r) {
  s.get("kind", c.kind);
  choice(s, "kind", c.kind, {"lm", "classification", "qa", "listops"});
  const bool files = c.kind == "classification" || c.kind == "qa";
  // Keys that only some kinds read are rejected for the others, so a typo in
  // `kind` cannot silently drop them.
  auto only = [&](const char* key, bool allowed, const std::string& kinds) {
    s.check(allowed || !s.has(key), key, "applies only to kind " + kinds + " (kind is '" + c.kind + "')");
  };
  only("train", files, "classification, qa");
  only("eval", files, "classification, qa");
  only("num_labels", c.kind == "classification", "classification");
  only("max_answer_len", c.kind == "qa", "qa");
  only("eval_items", files, "classification, qa");
  only("listops", c.kind == "listops", "listops");
  only("init", c.finetune(), "classification, qa, listops");
  only("global_attention", c.finetune(), "classification, qa, listops");
  if (!c.finetune()) {
    s.finish();
    return;
  }
  s.get("init", c.init).get("global_attention", c.global_attention);
  choice(s, "global_attention", c.global_attention, {"auto", "none"});
  s.check(c.init.empty() || std::filesystem::is_directory(c.init), "init",
          "'" + c.init + "': no such checkpoint directory");
  s.check(r.curriculum.phases.empty(), "kind",
          "fine-tuning runs one phase; remove the curriculum section (or use kind: lm)");
  if (files) {
    s.get("train", c.train).get("eval", c.eval).get("eval_items", c.eval_items);
    for (const char* key : {"train", "eval"}) {
      const std::string& path = std::string(key) == "train" ? c.train : c.eval;
      s.check(!path.empty(), key, "kind " + c.kind + " needs a JSONL file here");
      s.check(std::filesystem::is_regular_file(path), key, "'" + path + "': no such file");
    }
    s.check(c.eval_items >= 0, "eval_items", "must be >= 0 (0: all)");
  }
  if (c.kind == "classification") {
    s.get("num_labels", c.num_labels);
    s.check(c.num_labels == 0 || c.num_labels >= 2, "num_labels", "must be >= 2 (or 0: from the data)");
  }
  if (c.kind == "qa") {
    s.get("max_answer_len", c.max_answer_len);
    s.check(c.max_answer_len >= 1, "max_answer_len", "must be >= 1");
  }
  if (c.kind == "listops") {
    Section l = s.sub("listops");
    ListOpsTaskConfig& o = c.listops;
    l.get("max_depth", o.max_depth).get("max_args", o.max_args).get("train_items", o.train_items);
    l.get("eval_items", o.eval_items).get("seed", o.seed);
    l.check(o.max_depth >= 1, "max_depth", "must be >= 1");
    l.check(o.max_args >= 2, "max_args", "must be >= 2");
    l.check(o.train_items >= 0, "train_items", "must be >= 0 (0: a new item at every draw)");
    l.check(o.eval_items >= 1, "eval_items", "must be >= 1");
    // The generator needs 10 characters for its smallest expression, plus the classification token.
    l.finish();
    s.check(r.train.seq_len >= 11, "kind", "listops needs train.seq_len >= 11, got " + std::to_string(r.train.seq_len));
  }
  s.finish();
}

}  // namespace

Recipe parse_recipe(YAML::Node root, const std::string& file) {
  Recipe r;
  r.file = file;
  r.resolved = YAML::Node(YAML::NodeType::Map);
  Section top(root, "", file, r.resolved);
  parse_run(top.sub("run"), r.run);
  parse_model(top.sub("model"), r.model);
  parse_data(top.sub("data"), r.data);
  const YAML::Node& const_root = root;  // operator[] on a const node never inserts
  const bool staged = const_root.IsMap() && const_root["curriculum"].IsDefined();
  parse_train(top.sub("train"), r.train, r.model, staged);
  parse_checkpoint(top.sub("checkpoint"), r.checkpoint);
  {
    Section curriculum = top.sub("curriculum");
    parse_curriculum(curriculum, r);
  }
  // Only a recipe that has the section resolves it, so language-model recipes
  // (and their checkpoints) read as before.
  if (top.has("task")) parse_task(top.sub("task"), r.task, r);
  top.finish();
  if (!r.curriculum.phases.empty()) {
    // Each phase is a recipe of its own, validated (mixers included) here.
    build_phases(r);
    return r;
  }
  // Mixer options that depend on the model and the sequence length.
  const MixerCheck check{r.model.n_layers, r.model.n_heads, r.train.seq_len};
  std::vector<const MixerSpec*> specs{&r.model.mixer};
  for (const auto& spec : r.model.layer_mixers) specs.push_back(&spec);
  for (const MixerSpec* spec : specs) {
    try {
      spec->options->check(check);
    } catch (const std::invalid_argument& e) {
      throw RecipeError(spec->origin + ": " + e.what());
    }
  }
  return r;
}

Recipe load_recipe(const std::string& file, const std::vector<std::string>& overrides) {
  YAML::Node root;
  if (!file.empty()) {
    if (!std::filesystem::exists(file)) throw RecipeError(file + ": no such recipe file");
    try {
      root = YAML::LoadFile(file);
    } catch (const YAML::ParserException& e) {
      throw RecipeError(file + ":" + std::to_string(e.mark.line + 1) + ": invalid YAML: " + e.msg);
    }
  }
  if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  for (const auto& o : overrides) apply_override(root, o);
  return parse_recipe(root, file.empty() ? "<defaults>" : file);
}

std::string recipe_to_string(const Recipe& r) {
  YAML::Emitter out;
  out << r.resolved;
  return std::string(out.c_str()) + "\n";
}

}  // namespace longtrain
