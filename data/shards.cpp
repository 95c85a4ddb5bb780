// See shards.h for the format.
#include "data/shards.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "trainer/checksum.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the shard format is little-endian; this reader maps it directly"
#endif

namespace longtrain {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr char kMagic[8] = {'L', 'T', 'S', 'H', 'A', 'R', 'D', '\0'};
constexpr size_t kChecksummedHeader = 40;  // magic .. num_docs
constexpr size_t kChecksumOffset = 40;
constexpr const char* kMetaFormat = "longtrain-shards";

size_t align8(size_t n) { return (n + 7) & ~size_t{7}; }

template <class T>
void put(unsigned char* header, size_t offset, T v) {
  std::memcpy(header + offset, &v, sizeof v);
}

template <class T>
T get(const unsigned char* header, size_t offset) {
  T v;
  std::memcpy(&v, header + offset, sizeof v);
  return v;
}

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw ShardError(path + ": write failed: " + std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// Writes `parts` in order to `path` via a temporary sibling: fsync, rename,
// fsync the directory, so a crash leaves the old file or the whole new one.
void write_parts_atomically(const std::string& path,
                            const std::vector<std::pair<const void*, size_t>>& parts) {
  const fs::path final_path(path);
  const fs::path tmp = final_path.parent_path() /
                       ("." + final_path.filename().string() + ".tmp-" + std::to_string(::getpid()));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw ShardError(tmp.string() + ": cannot create: " + std::strerror(errno));
  try {
    for (const auto& [data, n] : parts) write_all(fd, data, n, tmp.string());
    if (::fsync(fd) != 0) throw ShardError(tmp.string() + ": fsync failed");
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    throw ShardError(path + ": cannot rename into place: " + std::strerror(errno));
  }
  const fs::path parent = final_path.has_parent_path() ? final_path.parent_path() : fs::path(".");
  const int dfd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

uint64_t payload_checksum(const unsigned char* header, const unsigned char* payload, size_t n) {
  return checksum_bytes(payload, n, checksum_bytes(header, kChecksummedHeader));
}

}  // namespace

int token_width_for(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

void write_file_atomically(const std::string& path, const std::string& bytes) {
  write_parts_atomically(path, {{bytes.data(), bytes.size()}});
}

// ---------------------------------------------------------------- writer

ShardWriter::ShardWriter(std::string path, int64_t vocab_size)
    : path_(std::move(path)), vocab_size_(vocab_size), width_(token_width_for(vocab_size)) {
  if (vocab_size <= 0 || vocab_size > (int64_t{1} << 31)) {
    throw ShardError(path_ + ": vocab_size " + std::to_string(vocab_size) + " is outside [1, 2^31]");
  }
}

void ShardWriter::add_document(const std::vector<int32_t>& ids) {
  doc_starts_.push_back(num_tokens_);
  const size_t at = tokens_.size();
  tokens_.resize(at + ids.size() * static_cast<size_t>(width_));
  unsigned char* dst = tokens_.data() + at;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size_) {
      throw ShardError(path_ + ": token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                       std::to_string(vocab_size_) + ")");
    }
    if (width_ == 2) {
      const auto v = static_cast<uint16_t>(id);
      std::memcpy(dst, &v, 2);
    } else {
      const auto v = static_cast<uint32_t>(id);
      std::memcpy(dst, &v, 4);
    }
    dst += width_;
  }
  num_tokens_ += static_cast<int64_t>(ids.size());
}

void ShardWriter::finish() {
  tokens_.resize(align8(tokens_.size()), 0);
  unsigned char header[kShardHeaderBytes] = {};
  std::memcpy(header, kMagic, 8);
  put<uint32_t>(header, 8, kShardVersion);
  put<uint32_t>(header, 12, static_cast<uint32_t>(width_));
  put<uint64_t>(header, 16, static_cast<uint64_t>(vocab_size_));
  put<uint64_t>(header, 24, static_cast<uint64_t>(num_tokens_));
  put<uint64_t>(header, 32, static_cast<uint64_t>(doc_starts_.size()));
  // Tokens, padding and offsets are one byte string, as the reader sees them
  // contiguous in the mapped file; the checksum runs over all of it.
  const size_t offsets_at = tokens_.size();
  tokens_.resize(offsets_at + doc_starts_.size() * sizeof(int64_t));
  if (!doc_starts_.empty())
    std::memcpy(tokens_.data() + offsets_at, doc_starts_.data(), doc_starts_.size() * sizeof(int64_t));
  put<uint64_t>(header, kChecksumOffset, payload_checksum(header, tokens_.data(), tokens_.size()));
  write_parts_atomically(path_, {{header, sizeof header}, {tokens_.data(), tokens_.size()}});
  tokens_.clear();
  tokens_.shrink_to_fit();
}

// ---------------------------------------------------------------- reader

ShardReader::ShardReader(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw ShardError(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail("cannot stat");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < kShardHeaderBytes) {
    ::close(fd);
    fail("truncated: " + std::to_string(size_) + " bytes, smaller than the " +
         std::to_string(kShardHeaderBytes) + "-byte header");
  }
  void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) fail(std::string("mmap failed: ") + std::strerror(errno));
  map_ = static_cast<const unsigned char*>(m);
  try {
    validate();
  } catch (...) {
    ::munmap(const_cast<unsigned char*>(map_), size_);
    map_ = nullptr;
    throw;
  }
}

ShardReader::ShardReader(ShardReader&& o) noexcept
    : path_(std::move(o.path_)),
      map_(o.map_),
      size_(o.size_),
      width_(o.width_),
      vocab_size_(o.vocab_size_),
      num_tokens_(o.num_tokens_),
      num_docs_(o.num_docs_),
      checksum_(o.checksum_),
      tokens_(o.tokens_),
      doc_starts_(o.doc_starts_) {
  o.map_ = nullptr;
}

ShardReader::~ShardReader() {
  if (map_) ::munmap(const_cast<unsigned char*>(map_), size_);
}

void ShardReader::fail(const std::string& why) const { throw ShardError(path_ + ": " + why); }

void ShardReader::validate() {
  if (std::memcmp(map_, kMagic, 8) != 0) fail("not a longtrain shard (bad magic; expected \"LTSHARD\")");
  const auto version = get<uint32_t>(map_, 8);
  if (version != kShardVersion) {
    fail("shard format version " + std::to_string(version) + ", this build reads version " +
         std::to_string(kShardVersion));
  }
  width_ = static_cast<int>(get<uint32_t>(map_, 12));
  const auto vocab = get<uint64_t>(map_, 16);
  const auto tokens = get<uint64_t>(map_, 24);
  const auto docs = get<uint64_t>(map_, 32);
  checksum_ = get<uint64_t>(map_, kChecksumOffset);
  if (width_ != 2 && width_ != 4) fail("token width " + std::to_string(width_) + " (valid: 2, 4)");
  if (vocab == 0 || vocab > (uint64_t{1} << 31) || (width_ == 2 && vocab > 65536)) {
    fail("vocab_size " + std::to_string(vocab) + " is impossible for token width " + std::to_string(width_));
  }
  // Bounding the counts by the file size first keeps the size arithmetic from overflowing.
  if (tokens > size_ || docs > size_) {
    fail("header claims " + std::to_string(tokens) + " tokens and " + std::to_string(docs) +
         " documents, more than a file of " + std::to_string(size_) + " bytes holds (truncated or corrupt)");
  }
  const size_t token_bytes = align8(static_cast<size_t>(tokens) * static_cast<size_t>(width_));
  const size_t expected = kShardHeaderBytes + token_bytes + static_cast<size_t>(docs) * sizeof(int64_t);
  if (size_ != expected) {
    fail("size " + std::to_string(size_) + " bytes, but the header's " + std::to_string(tokens) +
         " tokens and " + std::to_string(docs) + " documents need " + std::to_string(expected) +
         (size_ < expected ? " (truncated)" : " (trailing bytes)"));
  }
  const uint64_t actual = payload_checksum(map_, map_ + kShardHeaderBytes, size_ - kShardHeaderBytes);
  if (actual != checksum_) {
    fail("checksum mismatch: header " + to_hex(checksum_) + ", contents " + to_hex(actual) + " (corrupt)");
  }
  vocab_size_ = static_cast<int64_t>(vocab);
  num_tokens_ = static_cast<int64_t>(tokens);
  num_docs_ = static_cast<int64_t>(docs);
  tokens_ = map_ + kShardHeaderBytes;
  doc_starts_ = reinterpret_cast<const int64_t*>(map_ + kShardHeaderBytes + token_bytes);
  for (int64_t i = 0; i < num_tokens_; ++i) {
    const int32_t id = token(i);
    if (id < 0 || id >= vocab_size_) {
      fail("token " + std::to_string(i) + " has id " + std::to_string(id) + ", outside the vocabulary [0, " +
           std::to_string(vocab_size_) + ")");
    }
  }
  if (num_tokens_ > 0 && (num_docs_ == 0 || doc_starts_[0] != 0))
    fail("document index does not start at token 0");
  for (int64_t d = 0; d < num_docs_; ++d) {
    const int64_t s = doc_starts_[d];
    if (s < 0 || s >= num_tokens_ || (d > 0 && s <= doc_starts_[d - 1])) {
      fail("document " + std::to_string(d) + " starts at " + std::to_string(s) +
           ": the index must increase strictly within [0, " + std::to_string(num_tokens_) + ")");
    }
  }
}

int32_t ShardReader::token(int64_t i) const {
  if (width_ == 2) {
    uint16_t v;
    std::memcpy(&v, tokens_ + i * 2, 2);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, tokens_ + i * 4, 4);
  return static_cast<int32_t>(v);
}

void ShardReader::append_tokens(std::vector<int32_t>& out) const {
  const size_t at = out.size();
  out.resize(at + static_cast<size_t>(num_tokens_));
  for (int64_t i = 0; i < num_tokens_; ++i) out[at + static_cast<size_t>(i)] = token(i);
}

// ---------------------------------------------------------------- meta.json

namespace {

json split_json(const ShardSplitInfo& s) {
  return {
      {"shards", s.shards}, {"tokens", s.tokens}, {"documents", s.documents}, {"text_bytes", s.text_bytes}};
}

ShardSplitInfo split_from(const json& j) {
  ShardSplitInfo s;
  s.shards = j.at("shards").get<std::vector<std::string>>();
  s.tokens = j.at("tokens").get<int64_t>();
  s.documents = j.at("documents").get<int64_t>();
  s.text_bytes = j.at("text_bytes").get<int64_t>();
  return s;
}

}  // namespace

void write_shard_meta(const std::string& dir, const ShardMeta& m) {
  json j = {{"format", kMetaFormat},        {"version", kShardVersion},       {"tokenizer", m.tokenizer},
            {"made_with", m.made_with},     {"vocab_size", m.vocab_size},     {"eos", m.eos},
            {"token_width", m.token_width}, {"val_fraction", m.val_fraction}, {"input_files", m.input_files},
            {"train", split_json(m.train)}, {"val", split_json(m.val)}};
  if (m.tokenizer == "spm") {
    j["tokenizer_file"] = kShardTokenizerFile;
    j["tokenizer_checksum"] = to_hex(m.tokenizer_checksum);
  }
  if (!m.spm_type.empty()) j["spm_type"] = m.spm_type;
  write_file_atomically((fs::path(dir) / kShardMetaFile).string(), j.dump(2) + "\n");
}

ShardMeta read_shard_meta(const std::string& dir) {
  const std::string path = (fs::path(dir) / kShardMetaFile).string();
  std::ifstream in(path);
  if (!in) {
    throw std::runtime_error(path + ": cannot open (is " + dir +
                             " a directory written by `longtrain prepare`?)");
  }
  ShardMeta m;
  try {
    const json j = json::parse(in);
    if (j.value("format", "") != kMetaFormat)
      throw std::runtime_error("'format' is not \"" + std::string(kMetaFormat) + "\"");
    if (j.at("version").get<uint32_t>() != kShardVersion) {
      throw std::runtime_error("version " + j.at("version").dump() + ", this build reads " +
                               std::to_string(kShardVersion));
    }
    m.tokenizer = j.at("tokenizer").get<std::string>();
    m.made_with = j.value("made_with", "");
    m.spm_type = j.value("spm_type", "");
    m.vocab_size = j.at("vocab_size").get<int64_t>();
    m.eos = j.at("eos").get<int64_t>();
    m.token_width = j.at("token_width").get<int>();
    m.val_fraction = j.value("val_fraction", 0.0);
    m.input_files = j.value("input_files", int64_t{0});
    m.train = split_from(j.at("train"));
    m.val = split_from(j.at("val"));
    if (m.tokenizer == "spm")
      m.tokenizer_checksum = std::stoull(j.at("tokenizer_checksum").get<std::string>(), nullptr, 16);
    else if (m.tokenizer != "bytes")
      throw std::runtime_error("unknown tokenizer '" + m.tokenizer + "' (valid: bytes, spm)");
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": malformed: " + e.what());
  }
  return m;
}

std::string shard_tokenizer_spec(const ShardMeta& meta, const std::string& dir) {
  if (meta.tokenizer == "bytes") return "bytes";
  return "spm:" + (fs::path(dir) / kShardTokenizerFile).string();
}

std::string shard_tokenizer_mismatch(const ShardMeta& meta, const std::string& dir, const std::string& spec) {
  const std::string meta_path = (fs::path(dir) / kShardMetaFile).string();
  const std::string made =
      meta.tokenizer == "bytes" ? "'bytes'" : "SentencePiece (" + shard_tokenizer_spec(meta, dir) + ")";
  const std::string prefix = "tokenizer '" + spec + "' does not match the shards: " + meta_path +
                             " says they were made with " + made;
  if (meta.tokenizer == "bytes") return spec == "bytes" ? "" : prefix;
  if (spec.rfind("spm:", 0) != 0) return prefix;
  const std::string model = spec.substr(4);
  uint64_t sum = 0;
  try {
    sum = checksum_file(model);
  } catch (const std::exception&) {
    return prefix + ", and " + model + " cannot be read";
  }
  if (sum != meta.tokenizer_checksum) {
    return prefix + ", and " + model + " is a different model (checksum " + to_hex(sum) + ", shards' " +
           to_hex(meta.tokenizer_checksum) + ")";
  }
  return "";
}

}  // namespace longtrain
