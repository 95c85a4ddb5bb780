// bf16 in software for the host check (round to nearest even).
#pragma once
#include <cstdint>
#include <cstring>
struct __nv_bfloat16 { uint16_t x; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
inline float bf2f(__nv_bfloat16 h) { uint32_t u = uint32_t(h.x) << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 f2bf(float f) { uint32_t u; std::memcpy(&u, &f, 4); u += 0x7fff + ((u >> 16) & 1); return {uint16_t(u >> 16)}; }
#include "cuda_runtime.h"
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {bf2f(v.x), bf2f(v.y)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {f2bf(a), f2bf(b)}; }
