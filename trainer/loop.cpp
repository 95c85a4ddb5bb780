// See loop.h.
#include "trainer/loop.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>

#include "data/rng.h"
#include "trainer/checkpoint.h"
#include "trainer/checksum.h"
#include "trainer/device.h"
#include "trainer/distributed.h"
#include "trainer/extend.h"
#include "trainer/fused_adamw.h"
#include "trainer/step_health.h"
#include "trainer/metrics.h"
#include "trainer/profile.h"
#include "trainer/objective.h"
#include "trainer/schedule.h"
#include "trainer/signals.h"

namespace longtrain {
namespace fs = std::filesystem;
using nlohmann::json;

bool decays(const std::string& name, const torch::Tensor& p, bool decay_embeddings) {
  if (p.dim() < 2) return false;  // biases and norm gains
  const bool embedding = name.find("_emb.") != std::string::npos;
  return !embedding || decay_embeddings;
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

bool use_fused_adamw(const TrainConfig& c, const torch::Device& device) {
  return c.fused_adamw == "true" || (c.fused_adamw == "auto" && device.is_cuda());
}

std::unique_ptr<torch::optim::AdamW> make_optimizer(torch::nn::Module& module, const TrainConfig& c,
                                                    const torch::Device& device) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& item : module.named_parameters()) {
    (decays(item.key(), item.value(), c.decay_embeddings) ? decay : no_decay).push_back(item.value());
  }
  auto opts = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(c.lr).betas({c.beta1, c.beta2}).eps(c.eps).weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!decay.empty()) groups.emplace_back(decay, opts(c.weight_decay));
  if (!no_decay.empty()) groups.emplace_back(no_decay, opts(0.0));
  if (use_fused_adamw(c, device)) return std::make_unique<FusedAdamW>(groups, torch::optim::AdamWOptions(c.lr));
  return std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(c.lr));
}

int64_t count_parameters(torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
}

// Prints a curriculum's phases, one line each.
void print_phases(const std::vector<Phase>& phases) {
  if (phases.size() < 2) return;
  std::cout << "curriculum: " << phases.size() << " phases\n";
  for (const auto& p : phases) {
    const Recipe& r = *p.recipe;
    std::cout << "  phase " << p.index << ": steps " << p.first_step + 1 << "-" << p.end_step() << ", seq_len "
              << r.train.seq_len << ", batch " << r.train.batch_size << ", lr " << r.train.lr << ", warmup "
              << r.train.warmup;
    if (r.model.positions == "learned") std::cout << ", position table " << r.model.max_positions;
    if (r.model.positions == "rope") std::cout << ", rope_scale " << r.model.rope_scale;
    const YAML::Node window = r.resolved["model"]["mixer"]["window"];
    if (window) {
      YAML::Emitter e;
      e << YAML::Flow << window;
      std::cout << ", window " << e.c_str();
    }
    std::cout << "\n";
  }
}

}  // namespace

TrainResult train(Recipe recipe, const TrainOptions& options) {
  if (recipe.train.threads > 0) torch::set_num_threads(static_cast<int>(recipe.train.threads));
  const DistEnv env = dist_env_from_environment();
  torch::Device device = choose_device(recipe.train.device);
  if (env.active() && device.is_cuda()) {
    // One GPU per process: LOCAL_RANK picks it.
    if (env.local_rank >= static_cast<int>(torch::cuda::device_count())) {
      throw std::runtime_error("LOCAL_RANK=" + std::to_string(env.local_rank) + " but this node has " +
                               std::to_string(torch::cuda::device_count()) + " CUDA device(s)");
    }
    device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
  }
  const bool bf16 = use_bf16(recipe.train.dtype, device);
  Distributed dist(env, device,
                   std::chrono::milliseconds(static_cast<int64_t>(recipe.train.dist_timeout_s * 1000.0)));
  // Only rank 0 prints, evaluates, and writes metrics and checkpoints.
  const bool main_rank = dist.is_main();
  {
    const std::string given = recipe_to_string(recipe);
    check_same_on_all_ranks(dist, checksum_bytes(given.data(), given.size()), "the resolved recipe");
  }

  auto tokenizer = make_tokenizer(recipe.data.tokenizer);
  if (recipe.model.vocab_size == 0) {
    recipe.model.vocab_size = tokenizer->vocab_size();
    recipe.resolved["model"]["vocab_size"] = recipe.model.vocab_size;
  }
  if (recipe.model.vocab_size < tokenizer->vocab_size()) {
    throw std::runtime_error("model.vocab_size " + std::to_string(recipe.model.vocab_size) +
                             " is smaller than the tokenizer's " + std::to_string(tokenizer->vocab_size()));
  }
  const std::vector<Phase> phases = build_phases(recipe);
  const int64_t total_steps = phases.back().end_step();
  ObjectiveContext octx;
  octx.recipe = &recipe;
  octx.tokenizer = tokenizer.get();
  octx.device = device;
  octx.bf16 = bf16;
  octx.seed = static_cast<uint64_t>(recipe.run.seed);
  // The hook between this loop and what it trains (trainer/objective.h).
  std::unique_ptr<Objective> objective = make_objective(octx);

  TrainResult result;
  result.run_dir = recipe.run.dir;
  fs::create_directories(recipe.run.dir);
  std::string resume_from;
  if (options.resume == "auto") {
    resume_from = find_latest_checkpoint(recipe.run.dir, [](const std::string& w) {
      std::cerr << "warning: " << w << std::endl;
    });
    if (resume_from.empty() && main_rank) {
      std::cout << "resume auto: no checkpoint in " << recipe.run.dir << ", starting fresh\n";
    }
  } else if (!options.resume.empty()) {
    resume_from = options.resume;
  }
  // Every rank loads the checkpoint itself (the run directory is shared).
  check_same_on_all_ranks(dist, checksum_bytes(resume_from.data(), resume_from.size()), "the checkpoint to resume from");

  // The model is built for the phase that saved the checkpoint (its position
  // table and windows); a checkpoint at a boundary moves on to the next
  // phase in the loop, as the uninterrupted run did.
  int64_t phase = resume_from.empty() ? 0 : read_train_state(resume_from).phase;
  if (phase < 0 || phase >= static_cast<int64_t>(phases.size())) {
    throw std::runtime_error(resume_from + " was saved in curriculum phase " + std::to_string(phase) +
                             " but the recipe has " + std::to_string(phases.size()) + " phase(s)");
  }
  torch::manual_seed(static_cast<uint64_t>(recipe.run.seed));
  LanguageModel model(phases[phase].recipe->model);
  model->to(device);
  model->set_checkpointing(parse_checkpointing(phases[phase].recipe->train.activation_checkpointing));
  // A fine-tuning task puts its head on the body here (module() holds both).
  objective->start_phase(*phases[phase].recipe, model, dist.rank(), dist.world_size());
  auto optimizer = make_optimizer(objective->module(), phases[phase].recipe->train, device);
  TrainState state;
  state.sampler_seed = static_cast<uint64_t>(recipe.run.seed);
  // A task's pretrained body: --init, or the recipe's task.init.
  const std::string init = options.init.empty() ? recipe.task.init : options.init;
  if (!resume_from.empty()) {
    state = load_checkpoint(resume_from, objective->module(), optimizer.get(), device);
    if (main_rank) std::cout << "resumed from " << resume_from << " at step " << state.step << std::endl;
  } else if (!init.empty()) {
    init_from_checkpoint(init, *model, device);
    if (main_rank) std::cout << "initialised from " << init << std::endl;
  }
  if (!resume_from.empty()) {
    // Each rank keeps its own optimizer state, so each must have loaded the same checkpoint.
    check_same_on_all_ranks(dist, parameter_checksum(objective->module()) ^ static_cast<uint64_t>(state.step),
                            "the checkpoint loaded from " + resume_from + " (is run.dir on a file system all nodes share?)");
  }
  // Replicas start from rank 0's weights, whatever each rank built or loaded.
  broadcast_module(dist, objective->module());
  check_same_on_all_ranks(dist, parameter_checksum(objective->module()), "the parameters after the broadcast from rank 0");

  if (main_rank) {
    if (options.print_recipe) std::cout << "# resolved recipe\n" << recipe_to_string(recipe);
    {
      std::ofstream out(fs::path(recipe.run.dir) / "recipe.yaml");
      out << recipe_to_string(recipe);
    }
    std::cout << "data: " << objective->description() << "\n"
              << "model: " << count_parameters(objective->module()) << " parameters, mixer '" << recipe.model.mixer.type
              << "', device " << device << (bf16 ? " (bf16 autocast)" : " (fp32)") << std::endl;
    if (dist.active()) {
      std::cout << "data parallel: " << dist.world_size() << " ranks over " << dist.backend_name()
                << ", global batch " << dist.world_size() << " x " << recipe.train.batch_size << " x "
                << recipe.train.grad_accum << " sequences" << std::endl;
    }
    print_phases(phases);
  }

  std::unique_ptr<MetricsWriter> metrics;
  if (main_rank) {
    metrics = std::make_unique<MetricsWriter>((fs::path(recipe.run.dir) / "metrics.jsonl").string(),
                                              !resume_from.empty());
  }
  auto write_metrics = [&](const json& j) {
    if (metrics) metrics->write(j);
  };
  // Evaluates, logs the record to metrics.jsonl and a line to the terminal.
  auto run_eval = [&](const char* label, int64_t step) {
    Evaluation e = objective->evaluate();
    json j = {{"eval", true}, {"step", step}};
    j.update(e.record);
    j["phase"] = phase;
    write_metrics(j);
    std::cout << label << " (step " << step << "): " << e.line << std::endl;
    return e;
  };
  Evaluation before;
  if (state.step == 0 && main_rank) {
    before = run_eval("eval before training", 0);
    result.before = before.lm;
    result.task_before = before.task;
    result.has_before = true;
  }

  install_stop_handlers();
  model->train();
  std::vector<torch::Tensor> params = objective->module().parameters();
  std::unique_ptr<GradientReducer> reducer;
  if (dist.active()) reducer = std::make_unique<GradientReducer>(dist, params);
  double allreduce_ms = 0, allreduce_wait_ms = 0;  // summed since the last log line
  int64_t local_tokens_at_log = 0, local_tokens = 0;
  Progress progress(total_steps, state.step);
  auto newline = [&] {
    if (main_rank) progress.newline();
  };
  const auto t_start = Clock::now();
  const double elapsed_before = state.elapsed_s;
  const int64_t first_step = state.step;
  auto t_log = Clock::now();
  int64_t tokens_at_log = state.tokens;
  reset_peak_memory(device);
  StepProfiler profiler(main_rank ? options.profile_dir : "", options.profile_steps, options.profile_warmup, device);
  DeferredNonFinite nonfinite;
  // Brings the fused path's non-finite steps home: counted as skipped, or the
  // run stops naming the first one (its update, and any after it, were skipped).
  auto settle = [&] {
    const DeferredNonFinite::Seen seen = nonfinite.take();
    if (seen.count == 0) return;
    if (phases[phase].recipe->train.on_nonfinite == "stop") {
      newline();
      throw_nonfinite(seen.first_step, seen.loss, seen.grad_norm);
    }
    state.skipped_steps += seen.count;
  };
  auto save = [&]() -> std::string {
    settle();
    if (!main_rank) return "";
    state.phase = phase;
    return save_checkpoint(recipe.run.dir, phases[phase].recipe->resolved, objective->module(), *optimizer, state,
                           recipe.checkpoint.keep_last);
  };

  while (state.step < total_steps) {
    profiler.before_step(state.step - first_step);
    if (const int64_t next = phase_at(phases, state.step); next != phase) {
      settle();
      // Phase boundary: the next phase's model (longer table, new windows)
      // takes every parameter over; AdamW and the LR schedule start afresh.
      // Building it must not draw from the training RNG, or a run resumed
      // here would differ from one that went straight through.
      const auto rng = rng_states();
      LanguageModel next_model(phases[next].recipe->model);
      set_rng_states(rng);
      copy_parameters(*model, *next_model);
      next_model->to(device);
      next_model->train();
      next_model->set_checkpointing(parse_checkpointing(phases[next].recipe->train.activation_checkpointing));
      model = next_model;
      objective->start_phase(*phases[next].recipe, model, dist.rank(), dist.world_size());
      optimizer = make_optimizer(objective->module(), phases[next].recipe->train, device);
      params = objective->module().parameters();
      reducer.reset();
      if (dist.active()) reducer = std::make_unique<GradientReducer>(dist, params);
      phase = next;
      newline();
      if (main_rank) std::cout << "phase " << phase << " from step " << state.step + 1 << ": seq_len " << phases[phase].recipe->train.seq_len << ", lr "
                << phases[phase].recipe->train.lr << std::endl;
    }
    const TrainConfig& tc = phases[phase].recipe->train;
    const double lr = lr_at(tc, state.step - phases[phase].first_step);
    for (auto& group : optimizer->param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    maybe_inject_test_fault(dist.rank(), state.step + 1);
    // Dropout masks must differ between ranks as their data does. Rank 0 keeps
    // the single-process stream (in checkpoints); the others draw from
    // (seed, step, rank), so a resume reproduces them too.
    if (dist.rank() > 0) {
      torch::manual_seed(mix_keys(static_cast<uint64_t>(recipe.run.seed), static_cast<uint64_t>(state.step),
                                  static_cast<uint64_t>(dist.rank())));
    }
    const bool log_step = (state.step + 1) % tc.log_every == 0 || state.step + 1 == total_steps;
    optimizer->zero_grad();
    torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().device(device));
    // Each micro-batch loss is a mean over its tokens (or examples), and every
    // micro-batch of every rank weighs the same, so dividing by their number in
    // the global step makes the gradient summed over ranks that of the mean
    // loss over the global batch.
    const double micro_batches = static_cast<double>(tc.grad_accum * dist.world_size());
    int64_t step_tokens = 0;  // this rank's
    for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
      if (reducer) reducer->prepare_for_backward(micro + 1 == tc.grad_accum);
      const MicroBatchLoss mb = objective->micro_batch(state.step, micro);
      (mb.loss / micro_batches).backward();
      loss_sum = loss_sum + mb.loss.detach();
      step_tokens += mb.tokens;
    }
    const torch::Tensor loss_mean = loss_sum / static_cast<double>(tc.grad_accum);
    const double max_norm = tc.grad_clip > 0 ? tc.grad_clip : std::numeric_limits<double>::infinity();
    bool stop_signalled = stop_requested();
    double loss_v = 0, grad_norm = 0;
    auto* fused = dynamic_cast<FusedAdamW*>(optimizer.get());
    if (fused && !reducer) {
      // No host synchronisation in the step: the non-finite decision is made
      // on the device (the fused kernel then leaves everything as it was) and
      // read at the next settle; loss and norm are read on log steps only.
      const torch::Tensor norm = clip_grad_norm(params, max_norm);
      const torch::Tensor bad = torch::logical_not(torch::isfinite(loss_mean) & torch::isfinite(norm));
      fused->set_found_inf(bad.to(torch::kFloat32));
      optimizer->step();
      nonfinite.add(bad, state.step + 1, loss_mean, norm);
      if (log_step) {
        loss_v = loss_mean.item<double>();
        grad_norm = norm.item<double>();
      }
    } else {
      // Unfused or data parallel: the ranks agree on the loss and on a stop
      // through host values, so the step reads them.
      loss_v = loss_mean.item<double>();
      if (reducer) {
        reducer->finish(/*synchronize=*/log_step);
        allreduce_ms += reducer->allreduce_ms();
        allreduce_wait_ms += reducer->wait_ms();
        // What every rank must agree on: the global mean loss (NaN when any
        // rank's is, so the non-finite decision is shared; the clipped gradient
        // norm is computed from identical summed gradients) and whether a signal
        // reached any rank, so all stop at the same step.
        const auto agreed = all_reduce_values(dist, {loss_v, stop_signalled ? 1.0 : 0.0});
        loss_v = agreed[0] / dist.world_size();
        stop_signalled = agreed[1] > 0;
      }
      if (fused) fused->set_found_inf(torch::Tensor());
      grad_norm = clip_grad_norm(params, max_norm).item<double>();
      if (!std::isfinite(loss_v) || !std::isfinite(grad_norm)) {
        if (tc.on_nonfinite == "stop") {
          newline();
          throw_nonfinite(state.step + 1, loss_v, grad_norm);
        }
        optimizer->zero_grad();
        state.skipped_steps += 1;
      } else {
        optimizer->step();
      }
    }
    state.step += 1;
    profiler.after_step(state.step - first_step);
    local_tokens += step_tokens;
    state.tokens += step_tokens * dist.world_size();
    state.elapsed_s = elapsed_before + seconds_since(t_start);

    if (log_step) {
      settle();
      const double dt = seconds_since(t_log);
      const double tps = dt > 0 ? static_cast<double>(state.tokens - tokens_at_log) / dt : 0.0;
      const int64_t steps_logged = (state.tokens - tokens_at_log) / std::max<int64_t>(step_tokens * dist.world_size(), 1);
      t_log = Clock::now();
      tokens_at_log = state.tokens;
      json record = {{"step", state.step}, {"loss", loss_v}, {"lr", lr}, {"grad_norm", grad_norm},
                     {"tokens_per_s", tps}, {"tokens", state.tokens}, {"elapsed_s", state.elapsed_s},
                     {"memory_bytes", peak_memory_bytes(device)}, {"skipped_steps", state.skipped_steps},
                     {"seq_len", tc.seq_len}, {"phase", phase}, {"world_size", dist.world_size()}};
      if (dist.active()) {
        record["rank_tokens_per_s"] = all_gather_value(
            dist, dt > 0 ? static_cast<double>(local_tokens - local_tokens_at_log) / dt : 0.0);
        const double n = static_cast<double>(std::max<int64_t>(steps_logged, 1));
        record["allreduce_ms"] = allreduce_ms / n;
        record["allreduce_wait_ms"] = allreduce_wait_ms / n;
        record["allreduce_buckets"] = reducer->num_buckets();
        record["allreduce_buckets_overlapped"] = reducer->launched_in_backward();
        allreduce_ms = allreduce_wait_ms = 0;
      }
      local_tokens_at_log = local_tokens;
      write_metrics(record);
      if (main_rank) progress.update(state.step, loss_v, lr, tps, state.elapsed_s - elapsed_before);
    }
    const bool last = state.step == total_steps;
    if (!last && tc.eval_every > 0 && state.step % tc.eval_every == 0 && main_rank) {
      settle();
      newline();
      run_eval("eval", state.step);
    }
    const bool stop_after = options.stop_after > 0 && state.step - first_step >= options.stop_after;
    if (!dist.active()) stop_signalled = stop_requested();  // alone, a signal counts until the step's end
    if (!last && (stop_signalled || stop_after)) {
      newline();
      result.checkpoint = save();
      if (main_rank) {
        std::cout << "stopped "
                  << (stop_after ? "by --stop-after"
                                 : dist.active() ? std::string("by a signal") : "by signal " + std::to_string(stop_signal()))
                  << " after step " << state.step << "; checkpoint " << result.checkpoint
                  << " (continue with --resume auto)" << std::endl;
      }
      result.interrupted = true;
      break;
    }
    if (!last && recipe.checkpoint.every > 0 && state.step % recipe.checkpoint.every == 0) {
      result.checkpoint = save();
    }
  }
  settle();
  newline();
  profiler.finish();
  result.step = state.step;
  result.skipped_steps = state.skipped_steps;
  result.phase = phase;
  if (dist.active()) {
    const uint64_t sum = parameter_checksum(objective->module());
    std::cout << "rank " << dist.rank() << ": parameter checksum " << to_hex(sum) << std::endl;
    check_same_on_all_ranks(dist, sum, "the trained parameters");
    if (main_rank) std::cout << "parameters identical on all " << dist.world_size() << " ranks" << std::endl;
  }
  if (!result.interrupted) {
    result.checkpoint = save();
    if (main_rank) {
      const Evaluation after = run_eval("eval after training", state.step);
      result.after = after.lm;
      result.task_after = after.task;
      if (result.has_before) result.summary = objective->summary(before, after);
      std::cout << "checkpoint: " << result.checkpoint << std::endl;
    }
  }
  // No rank reports success before rank 0's checkpoint exists.
  dist.barrier();
  result.model = model;
  return result;
}

}  // namespace longtrain
