// What spmm_panel.cpp and recurrent_b32.cpp share: 8-float vectors with AVX2 FMA, and a random CSR matrix with
// uint16 column indices (the reference model's layout) at a given density.
#pragma once
#include <immintrin.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>
typedef float vf8 __attribute__((vector_size(32)));
static inline vf8 vload(const float* p) { vf8 v; memcpy(&v, p, 32); return v; }
static inline void vstore(float* p, vf8 v) { memcpy(p, &v, 32); }
static inline vf8 fma8(vf8 a, vf8 b, vf8 c) { return (vf8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
static inline vf8 splat(float x) { return vf8{x,x,x,x,x,x,x,x}; }
struct Csr { int64_t rows, cols; std::vector<int32_t> ptr; std::vector<uint16_t> col; std::vector<float> val; };
static Csr make(int64_t rows, int64_t cols, double d) {
  Csr m{rows, cols}; m.ptr.push_back(0);
  for (int64_t r = 0; r < rows; ++r) { for (int64_t c = 0; c < cols; ++c) if (rand() < d * RAND_MAX) { m.col.push_back(c); m.val.push_back((rand() % 1000) * 1e-3f - 0.5f); } m.ptr.push_back(m.col.size()); }
  return m;
}
