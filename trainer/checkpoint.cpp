// See checkpoint.h.
#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <ftw.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "trainer/checksum.h"
#include "trainer/device.h"

namespace longtrain {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kFormat = "longtrain-checkpoint";
constexpr int kVersion = 1;
const std::vector<std::string> kFiles = {"model.pt", "optimizer.pt", "rng.pt", "state.json",
                                         "recipe.yaml"};

void fsync_path(const fs::path& p, bool directory) {
  const int fd = ::open(p.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) throw CheckpointError(p.string() + ": cannot open to fsync");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw CheckpointError(p.string() + ": fsync failed");
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
  out.close();
  if (!out) throw CheckpointError(p.string() + ": write failed");
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw CheckpointError(p.string() + ": cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

int remove_entry(const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }

TrainState parse_state(const fs::path& d) {
  const json st = json::parse(read_text(d / "state.json"));
  TrainState s;
  s.step = st.at("step").get<int64_t>();
  s.tokens = st.at("tokens").get<int64_t>();
  s.skipped_steps = st.at("skipped_steps").get<int64_t>();
  s.elapsed_s = st.at("elapsed_s").get<double>();
  s.sampler_seed = st.at("sampler").at("seed").get<uint64_t>();
  s.phase = st.value("phase", int64_t{0});
  return s;
}

}  // namespace

void remove_tree(const std::string& path) {
  if (::access(path.c_str(), F_OK) != 0) return;
  if (::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
    throw CheckpointError(path + ": cannot remove");
  }
}

std::string save_checkpoint(const std::string& run_dir, const YAML::Node& resolved_recipe,
                            torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                            const TrainState& state, int64_t keep_last) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  fs::create_directories(root);
  const fs::path final_dir = root / step_name(state.step);
  const fs::path tmp = root / (".tmp-" + step_name(state.step) + "-" + std::to_string(::getpid()));
  remove_tree(tmp.string());
  fs::create_directories(tmp);

  {
    torch::serialize::OutputArchive archive;
    model.save(archive);
    archive.save_to((tmp / "model.pt").string());
  }
  torch::save(optimizer, (tmp / "optimizer.pt").string());
  {
    torch::serialize::OutputArchive archive;
    for (const auto& [name, t] : rng_states()) archive.write(name, t.cpu());
    archive.save_to((tmp / "rng.pt").string());
  }
  json st = {{"step", state.step}, {"tokens", state.tokens}, {"skipped_steps", state.skipped_steps},
             {"elapsed_s", state.elapsed_s}, {"sampler", {{"seed", state.sampler_seed}, {"step", state.step}}}, {"phase", state.phase}};
  write_text(tmp / "state.json", st.dump(2) + "\n");
  YAML::Emitter em;
  em << resolved_recipe;
  write_text(tmp / "recipe.yaml", std::string(em.c_str()) + "\n");

  json manifest = {{"format", kFormat}, {"version", kVersion}, {"step", state.step}, {"files", json::object()}};
  for (const auto& f : kFiles) {
    uint64_t size = 0;
    const uint64_t sum = checksum_file((tmp / f).string(), &size);
    manifest["files"][f] = {{"size", size}, {"checksum", to_hex(sum)}};
    fsync_path(tmp / f, false);
  }
  write_text(tmp / "manifest.json", manifest.dump(2) + "\n");
  fsync_path(tmp / "manifest.json", false);
  fsync_path(tmp, true);

  remove_tree(final_dir.string());  // a re-save of the same step (e.g. final save after a signal)
  fs::rename(tmp, final_dir);
  fsync_path(root, true);

  auto all = list_checkpoints(run_dir);
  for (size_t i = static_cast<size_t>(keep_last); i < all.size(); ++i) remove_tree(all[i]);
  return final_dir.string();
}

void verify_checkpoint(const std::string& dir) {
  const fs::path d(dir);
  if (!fs::is_directory(d)) throw CheckpointError(dir + ": not a checkpoint directory");
  if (!fs::exists(d / "manifest.json")) throw CheckpointError(dir + ": manifest.json is missing (incomplete checkpoint)");
  json manifest;
  try {
    manifest = json::parse(read_text(d / "manifest.json"));
  } catch (const json::exception& e) {
    throw CheckpointError(dir + "/manifest.json: unreadable: " + e.what());
  }
  if (manifest.value("format", "") != kFormat) throw CheckpointError(dir + ": manifest is not a longtrain checkpoint");
  if (manifest.value("version", 0) != kVersion) {
    throw CheckpointError(dir + ": checkpoint format version " + std::to_string(manifest.value("version", 0)) +
                          " is not supported (this build reads version " + std::to_string(kVersion) + ")");
  }
  for (const auto& f : kFiles) {
    if (!manifest["files"].contains(f)) throw CheckpointError(dir + ": manifest does not list " + f);
    const fs::path p = d / f;
    if (!fs::exists(p)) throw CheckpointError(dir + ": " + f + " is missing");
    const auto want_size = manifest["files"][f]["size"].get<uint64_t>();
    uint64_t size = 0;
    const std::string sum = to_hex(checksum_file(p.string(), &size));
    if (size != want_size) {
      throw CheckpointError(dir + ": " + f + " has " + std::to_string(size) + " bytes, manifest says " +
                            std::to_string(want_size) + " (truncated?)");
    }
    if (sum != manifest["files"][f]["checksum"].get<std::string>()) {
      throw CheckpointError(dir + ": " + f + " checksum mismatch (corrupt)");
    }
  }
}

std::vector<std::string> list_checkpoints(const std::string& run_dir) {
  std::vector<std::string> out;
  const fs::path root = fs::path(run_dir) / "checkpoints";
  if (!fs::is_directory(root)) return out;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind("step-", 0) == 0) out.push_back(e.path().string());
  }
  std::sort(out.rbegin(), out.rend());  // zero-padded names: lexical order is step order
  return out;
}

std::string find_latest_checkpoint(const std::string& run_dir,
                                   const std::function<void(const std::string&)>& warn) {
  for (const auto& dir : list_checkpoints(run_dir)) {
    try {
      verify_checkpoint(dir);
      return dir;
    } catch (const CheckpointError& e) {
      warn(std::string(e.what()) + "; falling back to an older checkpoint");
    }
  }
  return "";
}

YAML::Node checkpoint_recipe(const std::string& dir) {
  verify_checkpoint(dir);
  return YAML::LoadFile((fs::path(dir) / "recipe.yaml").string());
}

TrainState load_checkpoint(const std::string& dir, torch::nn::Module& model,
                           torch::optim::Optimizer* optimizer, const torch::Device& device) {
  verify_checkpoint(dir);
  const fs::path d(dir);
  try {
    torch::serialize::InputArchive archive;
    archive.load_from((d / "model.pt").string(), device);
    model.load(archive);
    if (optimizer) torch::load(*optimizer, (d / "optimizer.pt").string(), device);
    torch::serialize::InputArchive rng;
    rng.load_from((d / "rng.pt").string());
    std::vector<std::pair<std::string, torch::Tensor>> states;
    for (const auto& key : rng.keys()) {
      torch::Tensor t;
      rng.read(key, t);
      states.emplace_back(key, t);
    }
    set_rng_states(states);
  } catch (const c10::Error& e) {
    throw CheckpointError(dir + ": does not match this model: " + e.what_without_backtrace());
  }
  return parse_state(d);
}

TrainState read_train_state(const std::string& dir) {
  verify_checkpoint(dir);
  return parse_state(dir);
}

}  // namespace longtrain
