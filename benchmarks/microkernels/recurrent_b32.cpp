// The batch recurrence's products in isolation: each step's W_hh h for a 2-layer LSTM's W_hh (2,600 x 650, the
// reference model) at batch 32, the kernels' loop (a unit's gate rows in pairs, 4 AVX2 vectors each:
// dot_block2<4>) against AVX-512 variants: pairs of rows in 2 zmm each, all four gate rows of a unit at once,
// and h in two packed halves of 16 columns (in L1) with 8 rows at a time.
// 64 steps on one thread, products only (no cell). Run by benchmarks/microkernels.py; arguments: density,
// clock in GHz.
#include "csr.h"
#include <algorithm>
#include <chrono>
#include <cstdio>
const int64_t H = 650, B = 32;
// current: pairs of rows, 4 ymm each (dot_block2<4>)
__attribute__((noinline)) void cur(const Csr& W, const float* X, float* P) {
  for (int64_t u = 0; u < H; ++u) for (int g = 0; g < 4; g += 2) {
    const int64_t ra = g * H + u, rb = (g + 1) * H + u;
    vf8 a[4] = {}, b[4] = {};
    int32_t ia = W.ptr[ra], ib = W.ptr[rb], na = W.ptr[ra + 1] - ia, nb = W.ptr[rb + 1] - ib, n = std::min(na, nb);
    int32_t i = 0;
    for (; i < n; ++i) { vf8 va = splat(W.val[ia + i]), vb = splat(W.val[ib + i]); const float* xa = X + W.col[ia + i] * B; const float* xb = X + W.col[ib + i] * B;
      for (int q = 0; q < 4; ++q) { a[q] = fma8(va, vload(xa + 8 * q), a[q]); b[q] = fma8(vb, vload(xb + 8 * q), b[q]); } }
    for (int32_t j = i; j < na; ++j) { vf8 v = splat(W.val[ia + j]); for (int q = 0; q < 4; ++q) a[q] = fma8(v, vload(X + W.col[ia + j] * B + 8 * q), a[q]); }
    for (int32_t j = i; j < nb; ++j) { vf8 v = splat(W.val[ib + j]); for (int q = 0; q < 4; ++q) b[q] = fma8(v, vload(X + W.col[ib + j] * B + 8 * q), b[q]); }
    for (int q = 0; q < 4; ++q) { memcpy(P + (u * 4 + g) * B + 8 * q, &a[q], 32); memcpy(P + (u * 4 + g + 1) * B + 8 * q, &b[q], 32); }
  }
}
#ifdef __AVX512F__
// AVX-512: pairs of rows, 2 zmm each
__attribute__((noinline)) void z2(const Csr& W, const float* X, float* P) {
  for (int64_t u = 0; u < H; ++u) for (int g = 0; g < 4; g += 2) {
    const int64_t ra = g * H + u, rb = (g + 1) * H + u;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
    int32_t ia = W.ptr[ra], ib = W.ptr[rb], na = W.ptr[ra + 1] - ia, nb = W.ptr[rb + 1] - ib, n = std::min(na, nb);
    int32_t i = 0;
    for (; i < n; ++i) { __m512 va = _mm512_set1_ps(W.val[ia + i]), vb = _mm512_set1_ps(W.val[ib + i]); const float* xa = X + W.col[ia + i] * B; const float* xb = X + W.col[ib + i] * B;
      a0 = _mm512_fmadd_ps(va, _mm512_loadu_ps(xa), a0); a1 = _mm512_fmadd_ps(va, _mm512_loadu_ps(xa + 16), a1);
      b0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(xb), b0); b1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(xb + 16), b1); }
    for (int32_t j = i; j < na; ++j) { __m512 v = _mm512_set1_ps(W.val[ia + j]); const float* x = X + W.col[ia + j] * B; a0 = _mm512_fmadd_ps(v, _mm512_loadu_ps(x), a0); a1 = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + 16), a1); }
    for (int32_t j = i; j < nb; ++j) { __m512 v = _mm512_set1_ps(W.val[ib + j]); const float* x = X + W.col[ib + j] * B; b0 = _mm512_fmadd_ps(v, _mm512_loadu_ps(x), b0); b1 = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + 16), b1); }
    float* pa = P + (u * 4 + g) * B; float* pb = pa + B;
    _mm512_storeu_ps(pa, a0); _mm512_storeu_ps(pa + 16, a1); _mm512_storeu_ps(pb, b0); _mm512_storeu_ps(pb + 16, b1);
  }
}
// AVX-512: four rows (all gates), 2 zmm each
__attribute__((noinline)) void z4(const Csr& W, const float* X, float* P) {
  for (int64_t u = 0; u < H; ++u) {
    __m512 a[4][2]; const uint16_t* c[4]; const float* v[4]; int32_t n[4];
    for (int g = 0; g < 4; ++g) { int64_t r = g * H + u; c[g] = W.col.data() + W.ptr[r]; v[g] = W.val.data() + W.ptr[r]; n[g] = W.ptr[r + 1] - W.ptr[r]; a[g][0] = a[g][1] = _mm512_setzero_ps(); }
    int32_t m = std::min(std::min(n[0], n[1]), std::min(n[2], n[3]));
    int32_t i = 0;
    for (; i < m; ++i) for (int g = 0; g < 4; ++g) { __m512 vv = _mm512_set1_ps(v[g][i]); const float* x = X + c[g][i] * B; a[g][0] = _mm512_fmadd_ps(vv, _mm512_loadu_ps(x), a[g][0]); a[g][1] = _mm512_fmadd_ps(vv, _mm512_loadu_ps(x + 16), a[g][1]); }
    for (int g = 0; g < 4; ++g) for (int32_t j = i; j < n[g]; ++j) { __m512 vv = _mm512_set1_ps(v[g][j]); const float* x = X + c[g][j] * B; a[g][0] = _mm512_fmadd_ps(vv, _mm512_loadu_ps(x), a[g][0]); a[g][1] = _mm512_fmadd_ps(vv, _mm512_loadu_ps(x + 16), a[g][1]); }
    for (int g = 0; g < 4; ++g) { _mm512_storeu_ps(P + (u * 4 + g) * B, a[g][0]); _mm512_storeu_ps(P + (u * 4 + g) * B + 16, a[g][1]); }
  }
}
// AVX-512, h in L1: the 32 columns as two packed halves of 16 (41.6 KB each), a half at a time; per unit its
// four gate rows in one zmm each, two units at once (8 chains)
__attribute__((noinline)) void zh(const Csr& W, const float* X, float* P, float* half) {
  for (int hf = 0; hf < 2; ++hf) {
    for (int64_t k = 0; k < H; ++k) memcpy(half + k * 16, X + k * B + 16 * hf, 64);
    for (int64_t u = 0; u < H; u += 2) {
      __m512 a[8]; const uint16_t* c[8]; const float* v[8]; int32_t n[8]; int32_t m = 1 << 30;
      for (int j = 0; j < 8; ++j) { int64_t r = (j & 3) * H + u + (j >> 2); c[j] = W.col.data() + W.ptr[r]; v[j] = W.val.data() + W.ptr[r]; n[j] = W.ptr[r + 1] - W.ptr[r]; a[j] = _mm512_setzero_ps(); m = std::min(m, n[j]); }
      int32_t i = 0;
      for (; i < m; ++i) for (int j = 0; j < 8; ++j) a[j] = _mm512_fmadd_ps(_mm512_set1_ps(v[j][i]), _mm512_loadu_ps(half + c[j][i] * 16), a[j]);
      for (int j = 0; j < 8; ++j) for (int32_t k = i; k < n[j]; ++k) a[j] = _mm512_fmadd_ps(_mm512_set1_ps(v[j][k]), _mm512_loadu_ps(half + c[j][k] * 16), a[j]);
      for (int j = 0; j < 8; ++j) _mm512_storeu_ps(P + ((u + (j >> 2)) * 4 + (j & 3)) * B + 16 * hf, a[j]);
    }
  }
}
#endif
int main(int argc, char** argv) {
  double d = argc > 1 ? atof(argv[1]) : 0.1, ghz = (argc > 2 ? atof(argv[2]) : 2.445) * 1e9;
  Csr W = make(4 * H, H, d);
  std::vector<float> X(H * B), P(4 * H * B), P2(4 * H * B);
  for (auto& x : X) x = (rand() % 1000) * 1e-3f - 0.5f;
  auto run = [&](const char* name, auto f, float* out) {
    double best = 1e9;
    for (int r = 0; r < 7; ++r) { auto a = std::chrono::steady_clock::now(); for (int t = 0; t < 64; ++t) f(out); auto b = std::chrono::steady_clock::now(); best = std::min(best, std::chrono::duration<double>(b - a).count()); }
    double err = 0; for (size_t i = 0; i < P.size(); ++i) err = std::max(err, (double)std::abs(P[i] - out[i]));
    if (err > 1e-3) printf("%s mismatch %g\n", name, err);
    printf("  %-48s %.2f\n", name, (double)W.col.size() * B * 64 / best / ghz);
  };
  printf("density %.2f, W_hh %ld x %ld times h (%ld x %ld), multiply-adds per cycle at %.3f GHz, 1 thread:\n", d, 4 * H, H, H, B, ghz / 1e9);
  {
  run("pairs of gate rows x 4 ymm (dot_block2<4>)", [&](float* o) { cur(W, X.data(), o); }, P.data());
#ifdef __AVX512F__
  run("pairs of gate rows x 2 zmm (AVX-512)", [&](float* o) { z2(W, X.data(), o); }, P2.data());
  run("a unit's 4 gate rows x 2 zmm (AVX-512)", [&](float* o) { z4(W, X.data(), o); }, P2.data());
  std::vector<float> half(H * 16);
  run("h in halves of 16 columns (L1), 8 rows x 1 zmm", [&](float* o) { zh(W, X.data(), o, half.data()); }, P2.data());
#endif
  }
}
