// 64-bit content checksums for checkpoint files: fast (8 bytes per step),
// stable across machines, and sensitive to any flipped byte or truncation.
// Not cryptographic.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace longtrain {

uint64_t checksum_bytes(const void* data, size_t n, uint64_t seed = 0);
// Checksum and size of a whole file; throws std::runtime_error if unreadable.
uint64_t checksum_file(const std::string& path, uint64_t* size = nullptr);
std::string to_hex(uint64_t v);

}  // namespace longtrain
