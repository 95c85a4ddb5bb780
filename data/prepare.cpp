// See prepare.h.
#include "data/prepare.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <stdexcept>
#include <string_view>
#include <thread>

#include "data/documents.h"
#include "data/spm_tokenizer.h"
#include "data/text_corpus.h"
#include "data/tokenizer.h"
#include "trainer/checksum.h"
#include "trainer/metrics.h"

namespace longtrain {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// A batch is tokenized together; bounded so memory stays small whatever the corpus.
constexpr size_t kBatchBytes = size_t{32} << 20;
constexpr size_t kBatchDocs = 1024;
// Long documents are cut into pieces of about this size, after a line break.
constexpr size_t kPieceBytes = size_t{1} << 20;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Documents and megabytes per second on stderr, redrawn at most 4 times a
// second on a terminal, every 10 s otherwise.
class Throughput {
 public:
  Throughput(int64_t total_bytes, bool enabled)
      : total_(total_bytes), enabled_(enabled), tty_(::isatty(STDERR_FILENO) != 0) {}

  void update(int64_t docs, int64_t bytes, bool final = false) {
    if (!enabled_) return;
    const double elapsed = since(start_);
    if (!final && since(last_) < (tty_ ? 0.25 : 10.0)) return;
    last_ = Clock::now();
    const double mb = static_cast<double>(bytes) / 1e6;
    const double rate = elapsed > 0 ? static_cast<double>(bytes) / elapsed : 0;
    const double eta = rate > 0 ? static_cast<double>(total_ - bytes) / rate : NAN;
    std::fprintf(
        stderr,
        "%sprepare: %lld docs, %.1f / %.1f MB (%3.0f%%) | %.0f docs/s, %.1f MB/s | elapsed %s | ETA %s%s",
        tty_ ? "\r\033[K" : "", static_cast<long long>(docs), mb, static_cast<double>(total_) / 1e6,
        total_ > 0 ? 100.0 * static_cast<double>(bytes) / static_cast<double>(total_) : 100.0,
        elapsed > 0 ? static_cast<double>(docs) / elapsed : 0.0, rate / 1e6, format_duration(elapsed).c_str(),
        format_duration(final ? 0.0 : eta).c_str(), tty_ && !final ? "" : "\n");
    std::fflush(stderr);
  }

 private:
  int64_t total_;
  bool enabled_, tty_;
  Clock::time_point start_ = Clock::now(), last_ = start_;
};

// One split's shards: NAME-00000.bin, NAME-00001.bin, ...
class SplitWriter {
 public:
  SplitWriter(fs::path dir, std::string name, int64_t vocab_size, int64_t shard_tokens)
      : dir_(std::move(dir)), name_(std::move(name)), vocab_size_(vocab_size), shard_tokens_(shard_tokens) {}

  void add(const std::vector<int32_t>& ids, int64_t text_bytes) {
    const auto n = static_cast<int64_t>(ids.size());
    if (open_ && open_->num_tokens() > 0 && open_->num_tokens() + n > shard_tokens_) close();
    if (!open_) {
      char file[64];
      std::snprintf(file, sizeof file, "%s-%05zu.bin", name_.c_str(), info_.shards.size());
      info_.shards.push_back(file);
      open_.emplace((dir_ / file).string(), vocab_size_);
    }
    open_->add_document(ids);
    info_.tokens += n;
    info_.documents += 1;
    info_.text_bytes += text_bytes;
  }

  void close() {
    if (open_) open_->finish();
    open_.reset();
  }

  const ShardSplitInfo& info() const { return info_; }

 private:
  fs::path dir_;
  std::string name_;
  int64_t vocab_size_, shard_tokens_;
  std::optional<ShardWriter> open_;
  ShardSplitInfo info_;
};

// Each document's ids, <eos> appended, in order. Work items are documents or,
// where the tokenizer allows, line-aligned pieces of long ones.
std::vector<std::vector<int32_t>> tokenize(const std::vector<Document>& docs, const Tokenizer& tok,
                                           int threads) {
  struct Piece {
    size_t doc;
    std::string_view text;
  };
  std::vector<Piece> pieces;
  for (size_t d = 0; d < docs.size(); ++d) {
    const std::string_view text = docs[d].text;
    if (!tok.encodes_lines_independently()) {
      pieces.push_back({d, text});
      continue;
    }
    for (size_t at = 0; at < text.size();) {
      size_t end = text.size();
      if (text.size() - at > kPieceBytes) {
        const size_t nl = text.find('\n', at + kPieceBytes - 1);
        if (nl != std::string_view::npos) end = nl + 1;
      }
      pieces.push_back({d, text.substr(at, end - at)});
      at = end;
    }
  }
  std::vector<std::vector<int32_t>> encoded(pieces.size());
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto work = [&] {
    try {
      while (!failed) {
        const size_t i = next.fetch_add(1);
        if (i >= pieces.size()) break;
        encoded[i] = tok.encode(pieces[i].text);
      }
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  const size_t helpers = std::min(pieces.size(), static_cast<size_t>(threads)) - (pieces.empty() ? 0 : 1);
  for (size_t t = 0; t < helpers; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);

  std::vector<std::vector<int32_t>> out(docs.size());
  for (size_t i = 0; i < pieces.size(); ++i) {
    auto& ids = out[pieces[i].doc];
    ids.insert(ids.end(), encoded[i].begin(), encoded[i].end());
  }
  for (auto& ids : out) ids.push_back(tok.eos());
  return out;
}

// Whether `file` lies under `dir` (both canonical).
bool inside(const fs::path& f, const fs::path& d) {
  auto fi = f.begin();
  for (auto di = d.begin(); di != d.end(); ++di, ++fi) {
    if (di->empty()) continue;  // a trailing separator
    if (fi == f.end() || *fi != *di) return false;
  }
  return true;
}

// Sets up the tokenizer the shards are made with; SentencePiece models end up
// as OUT/tokenizer.model (trained there, or copied there) and are loaded from it.
std::unique_ptr<Tokenizer> setup_tokenizer(const PrepareOptions& o, const std::vector<std::string>& files,
                                           ShardMeta& meta) {
  const fs::path model = fs::path(o.out_dir) / kShardTokenizerFile;
  const std::string& spec = o.tokenizer;
  if (spec == "bytes") {
    fs::remove(model);
    meta.tokenizer = "bytes";
    return std::make_unique<ByteTokenizer>();
  }
  if (spec.rfind("spm:", 0) == 0 && spec.size() > 4) {
    const std::string source = spec.substr(4);
    if (!fs::is_regular_file(source)) throw std::runtime_error(source + ": no such SentencePiece model file");
    if (!fs::exists(model) || !fs::equivalent(source, model)) {
      write_file_atomically(model.string(), read_text_file(source));
    }
  } else if (spec.rfind("train-spm:", 0) == 0) {
    int64_t vocab = 0;
    try {
      size_t used = 0;
      vocab = std::stoll(spec.substr(10), &used);
      if (used != spec.size() - 10) vocab = 0;
    } catch (const std::exception&) {
      vocab = 0;
    }
    if (vocab <= 0)
      throw std::invalid_argument("--tokenizer " + spec + ": expected train-spm:VOCAB with VOCAB > 0");
    if (o.progress) {
      std::fprintf(stderr, "prepare: training a SentencePiece %s model (vocab %lld) on the train split\n",
                   o.spm_type.c_str(), static_cast<long long>(vocab));
    }
    // The same split as the tokenizing pass: validation text never shapes the vocabulary.
    DocumentSplitter docs(files, o.val_fraction, o.inputs);
    auto next_train_doc = [&docs](std::string& text) {
      Document d;
      while (docs.next(d)) {
        if (d.val) continue;
        text = std::move(d.text);
        return true;
      }
      return false;
    };
    write_file_atomically(model.string(), train_spm({vocab, o.spm_type}, next_train_doc));
    meta.spm_type = o.spm_type;
  } else {
    throw std::invalid_argument(
        "unknown --tokenizer '" + spec +
        "' (valid: bytes, spm:MODEL to use a SentencePiece model, train-spm:VOCAB to train one)");
  }
  meta.tokenizer = "spm";
  meta.tokenizer_checksum = checksum_file(model.string());
  return std::make_unique<SpmTokenizer>(model.string());
}

void remove_stale_shards(const fs::path& dir, const ShardMeta& meta) {
  std::set<std::string> keep(meta.train.shards.begin(), meta.train.shards.end());
  keep.insert(meta.val.shards.begin(), meta.val.shards.end());
  static const std::regex shard_name(R"((train|val)-\d{5,}\.bin)");
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && std::regex_match(name, shard_name) && !keep.count(name)) fs::remove(e.path());
  }
}

}  // namespace

PrepareResult prepare(const PrepareOptions& o) {
  const auto t0 = Clock::now();
  if (o.inputs.empty()) throw std::invalid_argument("prepare: name at least one input file or directory");
  if (o.out_dir.empty()) throw std::invalid_argument("prepare: --out DIR is required");
  if (!(o.val_fraction > 0 && o.val_fraction < 1)) {
    throw std::invalid_argument("--val-fraction " + std::to_string(o.val_fraction) + " must be in (0, 1)");
  }
  if (o.shard_tokens <= 0) throw std::invalid_argument("--shard-tokens must be > 0");
  if (o.threads <= 0) throw std::invalid_argument("--threads must be > 0");
  if (o.spm_type != "bpe" && o.spm_type != "unigram") {
    throw std::invalid_argument("--spm-type '" + o.spm_type + "' (valid: bpe, unigram)");
  }

  // Earlier output inside an input directory is not input.
  std::vector<std::string> files;
  const fs::path out_canonical = fs::weakly_canonical(o.out_dir);
  for (auto& f : list_corpus_files(o.inputs)) {
    if (!inside(fs::weakly_canonical(f), out_canonical)) files.push_back(std::move(f));
  }
  if (files.empty()) throw std::runtime_error(o.out_dir + ": the inputs hold nothing but earlier output");
  int64_t total_bytes = 0;
  for (const auto& f : files) total_bytes += static_cast<int64_t>(fs::file_size(f));

  const fs::path out(o.out_dir);
  fs::create_directories(out);
  fs::remove(out / kShardMetaFile);

  ShardMeta meta;
  meta.made_with = o.tokenizer;
  meta.val_fraction = o.val_fraction;
  meta.input_files = static_cast<int64_t>(files.size());
  const auto tok = setup_tokenizer(o, files, meta);
  meta.vocab_size = tok->vocab_size();
  meta.eos = tok->eos();
  meta.token_width = token_width_for(meta.vocab_size);

  SplitWriter train(out, "train", meta.vocab_size, o.shard_tokens);
  SplitWriter val(out, "val", meta.vocab_size, o.shard_tokens);
  DocumentSplitter docs(files, o.val_fraction, o.inputs);
  Throughput progress(total_bytes, o.progress);
  int64_t docs_done = 0, bytes_done = 0;
  for (bool more = true; more;) {
    std::vector<Document> batch;
    size_t batch_bytes = 0;
    Document d;
    while (batch_bytes < kBatchBytes && batch.size() < kBatchDocs && (more = docs.next(d))) {
      batch_bytes += d.text.size();
      batch.push_back(std::move(d));
    }
    const auto ids = tokenize(batch, *tok, o.threads);
    for (size_t i = 0; i < batch.size(); ++i) {
      (batch[i].val ? val : train).add(ids[i], static_cast<int64_t>(batch[i].text.size()));
      bytes_done += batch[i].input_bytes;
    }
    docs_done += static_cast<int64_t>(batch.size());
    progress.update(docs_done, bytes_done);
  }
  train.close();
  val.close();
  progress.update(docs_done, bytes_done, true);

  meta.train = train.info();
  meta.val = val.info();
  remove_stale_shards(out, meta);
  write_shard_meta(o.out_dir, meta);
  return {meta, since(t0)};
}

}  // namespace longtrain
