// Name -> (parse, build) for mixers; see mixer.h.
#include <stdexcept>

#include "model/mixer.h"
#include "trainer/recipe_section.h"

namespace longtrain {

MixerRegistry& MixerRegistry::instance() {
  static MixerRegistry registry;
  return registry;
}

void MixerRegistry::add(const std::string& name, MixerEntry entry) {
  if (entries_.count(name)) {
    throw std::logic_error("mixer '" + name + "' is registered twice");
  }
  entries_.emplace(name, std::move(entry));
}

std::vector<std::string> MixerRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

const MixerEntry& MixerRegistry::get(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    std::string known;
    for (const auto& n : names()) known += (known.empty() ? "" : ", ") + n;
    throw std::invalid_argument("unknown mixer '" + name + "' (known mixers: " + known + ")");
  }
  return it->second;
}

MixerSpec parse_mixer(Section& section) {
  MixerSpec spec;
  section.get("type", spec.type);
  const MixerEntry* entry = nullptr;
  try {
    entry = &MixerRegistry::instance().get(spec.type);
  } catch (const std::invalid_argument& e) {
    section.fail("type", e.what());
  }
  spec.options = entry->parse(section);
  spec.origin = section.origin();
  section.finish();
  return spec;
}

Mixer build_mixer(const MixerSpec& spec, const MixerDims& dims) {
  return MixerRegistry::instance().get(spec.type).build(*spec.options, dims);
}

}  // namespace longtrain
