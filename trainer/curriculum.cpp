// See curriculum.h.
#include "trainer/curriculum.h"

#include <cmath>

#include "trainer/config.h"
#include "trainer/recipe_section.h"

namespace longtrain {
namespace {

std::string to_text(const YAML::Node& n) {
  YAML::Emitter e;
  e << YAML::Flow << n;
  return e.c_str();
}

// Every integer in a window value (int, list, list of lists) times `factor`.
YAML::Node scale_window(const YAML::Node& w, int64_t factor) {
  if (w.IsScalar()) return YAML::Node(w.as<int64_t>() * factor);
  YAML::Node out(YAML::NodeType::Sequence);
  for (const auto& e : w) out.push_back(scale_window(e, factor));
  return out;
}

// Reads one phase's keys; `prev` supplies the defaults that carry over.
PhaseSpec read_phase(Section& s, const PhaseSpec& prev, const Recipe& r) {
  PhaseSpec p;
  p.origin = s.origin();
  s.check(s.has("seq_len"), "seq_len", "every phase needs seq_len");
  s.check(s.has("steps"), "steps", "every phase needs steps");
  p.lr = prev.lr;
  p.batch_size = prev.batch_size;
  p.warmup = r.train.warmup;
  s.get("seq_len", p.seq_len).get("steps", p.steps).get("lr", p.lr).get("warmup", p.warmup);
  p.min_lr = p.lr * (r.train.lr > 0 ? r.train.min_lr / r.train.lr : 0.0);
  s.get("min_lr", p.min_lr);
  s.check(!(s.has("batch_size") && s.has("tokens_per_step")), "tokens_per_step", "give batch_size or tokens_per_step, not both");
  s.get("batch_size", p.batch_size);
  int64_t tokens = 0;
  s.get("tokens_per_step", tokens);
  YAML::Node window;
  s.get("window", window).get("rope_scale", p.rope_scale);
  if (window.IsDefined() && !window.IsNull()) p.window = to_text(window);
  s.check(p.seq_len >= 1, "seq_len", "must be >= 1");
  s.check(p.steps >= 1, "steps", "must be >= 1");
  s.check(p.lr > 0, "lr", "must be > 0");
  s.check(p.min_lr >= 0 && p.min_lr <= p.lr, "min_lr", "must be in [0, lr]");
  s.check(p.warmup >= 0, "warmup", "must be >= 0");
  if (s.has("tokens_per_step")) {
    s.check(tokens >= p.seq_len && tokens % p.seq_len == 0, "tokens_per_step",
            std::to_string(tokens) + " is not a positive multiple of seq_len " + std::to_string(p.seq_len));
    p.batch_size = tokens / p.seq_len;
  }
  s.check(p.batch_size >= 1, "batch_size", "must be >= 1");
  s.check(p.rope_scale == 0 || p.rope_scale >= 1, "rope_scale", "must be >= 1");
  return p;
}

// Writes a phase into the resolved recipe's `phases` list.
YAML::Node phase_node(const PhaseSpec& p) {
  YAML::Node n(YAML::NodeType::Map);
  n["seq_len"] = p.seq_len;
  n["steps"] = p.steps;
  n["lr"] = p.lr;
  n["min_lr"] = p.min_lr;
  n["warmup"] = p.warmup;
  n["batch_size"] = p.batch_size;
  if (!p.window.empty()) n["window"] = YAML::Load(p.window);
  if (p.rope_scale > 0) n["rope_scale"] = p.rope_scale;
  return n;
}

}  // namespace

void parse_curriculum(Section& s, Recipe& r) {
  CurriculumConfig& c = r.curriculum;
  PhaseSpec prev;
  prev.lr = r.train.lr;
  prev.batch_size = r.train.batch_size;
  bool rope_interpolation = false;
  s.get("rope_interpolation", rope_interpolation);
  s.check(!(s.has("phases") && s.has("doubling")), "doubling", "give phases or doubling, not both");
  if (s.has("phases")) {
    YAML::Node list;
    s.get("phases", list);
    s.check(list.IsSequence() && list.size() >= 1, "phases", "must be a non-empty list of phases");
    YAML::Node scratch(YAML::NodeType::Map);
    for (size_t i = 0; i < list.size(); ++i) {
      Section one(list[i], s.path() + ".phases[" + std::to_string(i) + "]", s.file(), scratch);
      prev = read_phase(one, prev, r);
      one.finish();
      c.phases.push_back(prev);
    }
  } else if (s.has("doubling")) {
    Section d = s.sub("doubling");
    int64_t count = 0;
    d.get("count", count);
    d.check(count >= 1, "count", "must be >= 1 (the number of phases)");
    int64_t tokens = 0;
    d.get("tokens_per_step", tokens);
    const PhaseSpec first = read_phase(d, prev, r);
    d.finish();
    for (int64_t i = 0; i < count; ++i) {
      PhaseSpec p = first;
      const int64_t factor = int64_t{1} << i;
      p.seq_len = first.seq_len * factor;
      p.lr = first.lr / static_cast<double>(factor);
      p.min_lr = first.min_lr / static_cast<double>(factor);
      if (tokens > 0) {
        d.check(tokens % p.seq_len == 0, "tokens_per_step",
                std::to_string(tokens) + " is not a multiple of phase " + std::to_string(i) + "'s seq_len " +
                    std::to_string(p.seq_len));
        p.batch_size = tokens / p.seq_len;
      }
      if (!first.window.empty()) {
        try {
          p.window = to_text(scale_window(YAML::Load(first.window), factor));
        } catch (const YAML::Exception&) {
          d.fail("window", "expected an integer, a list (per layer) or a list of lists (per layer, per head)");
        }
      }
      p.origin = d.origin() + " (phase " + std::to_string(i) + ")";
      c.phases.push_back(p);
    }
  }
  if (rope_interpolation) {
    s.check(r.model.positions == "rope", "rope_interpolation", "applies to model.positions: rope only");
    for (auto& p : c.phases) {
      p.rope_scale = r.model.rope_scale * static_cast<double>(p.seq_len) / static_cast<double>(c.phases[0].seq_len);
    }
  }
  s.finish();
  if (c.phases.empty()) return;
  // The resolved recipe states the explicit phases, and the total step count.
  YAML::Node phases(YAML::NodeType::Sequence);
  int64_t total = 0;
  for (const auto& p : c.phases) {
    phases.push_back(phase_node(p));
    total += p.steps;
  }
  r.resolved["curriculum"] = YAML::Node(YAML::NodeType::Map);
  r.resolved["curriculum"]["phases"] = phases;
  r.train.steps = total;
  r.resolved["train"]["steps"] = total;
  // The top-level train section shows the first phase's shape.
  r.train.seq_len = c.phases[0].seq_len;
  r.train.batch_size = c.phases[0].batch_size;
  r.resolved["train"]["seq_len"] = r.train.seq_len;
  r.resolved["train"]["batch_size"] = r.train.batch_size;
}

std::vector<Phase> build_phases(const Recipe& r) {
  std::vector<Phase> out;
  if (r.curriculum.phases.empty()) {
    out.push_back({0, 0, r.train.steps, std::make_shared<Recipe>(r)});
    return out;
  }
  int64_t first = 0;
  for (size_t i = 0; i < r.curriculum.phases.size(); ++i) {
    const PhaseSpec& p = r.curriculum.phases[i];
    YAML::Node root = YAML::Clone(r.resolved);
    root.remove("curriculum");
    root["train"]["seq_len"] = p.seq_len;
    root["train"]["steps"] = p.steps;
    root["train"]["batch_size"] = p.batch_size;
    root["train"]["warmup"] = p.warmup;
    root["train"]["lr"] = p.lr;
    root["train"]["min_lr"] = p.min_lr;
    YAML::Node model = root["model"];
    // A learned table grows to the phase's length (by copying, at the boundary).
    if (model["positions"].as<std::string>() == "learned" && model["max_positions"].as<int64_t>() < p.seq_len) {
      model["max_positions"] = p.seq_len;
    }
    if (p.rope_scale > 0) model["rope_scale"] = p.rope_scale;
    if (!p.window.empty()) {
      int64_t sliding = 0;
      auto set_window = [&](YAML::Node mixer) {
        if (mixer["type"] && mixer["type"].as<std::string>() == "sliding") {
          mixer["window"] = YAML::Load(p.window);
          ++sliding;
        }
      };
      set_window(model["mixer"]);
      if (model["mixers"]) {
        for (auto it = model["mixers"].begin(); it != model["mixers"].end(); ++it) set_window(it->second);
      }
      if (sliding == 0) throw RecipeError(p.origin + ": window: the model has no sliding mixer to apply it to");
    }
    auto phase = std::make_shared<Recipe>();
    try {
      *phase = parse_recipe(root, r.file);
    } catch (const RecipeError& e) {
      throw RecipeError(p.origin + ": phase " + std::to_string(i) + " (seq_len " + std::to_string(p.seq_len) +
                        ") is not a valid recipe: " + e.what());
    }
    out.push_back({static_cast<int64_t>(i), first, p.steps, phase});
    first += p.steps;
  }
  return out;
}

int64_t phase_at(const std::vector<Phase>& phases, int64_t completed) {
  for (const auto& p : phases) {
    if (completed < p.end_step()) return p.index;
  }
  return phases.back().index;
}

}  // namespace longtrain
