// See checksum.h. Each 8-byte word is mixed into the state with a multiply and
// rotate (the core of xxhash64's round); the length is folded in at the end so
// that a truncation to a word boundary still changes the result.
#include "trainer/checksum.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <vector>

namespace longtrain {
namespace {

constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4FULL;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t round(uint64_t acc, uint64_t word) {
  return rotl(acc + word * kPrime2, 31) * kPrime1;
}

struct Hasher {
  uint64_t acc;
  uint64_t length = 0;
  explicit Hasher(uint64_t seed) : acc(seed + kPrime1) {}
  void update(const unsigned char* p, size_t n) {  // n is a multiple of 8 except at the end
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      acc = round(acc, w);
    }
    if (i < n) {
      uint64_t w = 0;
      std::memcpy(&w, p + i, n - i);
      acc = round(acc, w ^ (0xFFULL << 56));
    }
    length += n;
  }
  uint64_t digest() const {
    uint64_t h = round(acc, length);
    h ^= h >> 33;
    h *= kPrime2;
    return h ^ (h >> 29);
  }
};

}  // namespace

uint64_t checksum_bytes(const void* data, size_t n, uint64_t seed) {
  Hasher h(seed);
  h.update(static_cast<const unsigned char*>(data), n);
  return h.digest();
}

uint64_t checksum_file(const std::string& path, uint64_t* size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open for reading");
  Hasher h(0);
  std::vector<unsigned char> buf(1 << 20);  // a multiple of 8, so words never straddle reads
  while (in) {
    in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
    h.update(buf.data(), static_cast<size_t>(in.gcount()));
  }
  if (size) *size = h.length;
  return h.digest();
}

std::string to_hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace longtrain
