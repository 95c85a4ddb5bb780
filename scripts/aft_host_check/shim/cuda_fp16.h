// fp16 through _Float16 for the host check.
#pragma once
struct __half { _Float16 x; };
struct __half2 { __half x, y; };
inline float2 __half22float2(__half2 v) { return {float(v.x.x), float(v.y.x)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {{_Float16(a)}, {_Float16(b)}}; }
