// Sparse x dense panel product (the decoder's and spmm's inner loop) in isolation: a 10,000 x 650 CSR matrix (the
// reference model's decoder) times a packed 650 x 64 panel of X, the kernels' row-at-a-time loop against
// blockings that keep X in L1, and (AVX-512 builds) the same loops in 16-lane vectors; X on a cache line, and
// (the last rows) 16 bytes off one. Run by
// benchmarks/microkernels.py; arguments: density, clock in GHz.
#include "csr.h"
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
const int64_t CH = 256, P = 64;
// A: per row, 8 accumulators over 64 columns
__attribute__((noinline)) void vA(const Csr& W, const float* X, float* Y) {
  for (int64_t r = 0; r < W.rows; ++r) {
    vf8 acc[8] = {};
    for (int32_t i = W.ptr[r]; i < W.ptr[r + 1]; ++i) { vf8 v = splat(W.val[i]); const float* x = X + W.col[i] * P; for (int q = 0; q < 8; ++q) acc[q] = fma8(v, vload(x + 8 * q), acc[q]); }
    for (int q = 0; q < 8; ++q) vstore(Y + r * P + 8 * q, acc[q]);
  }
}
// A with the X row of the entry 16 on prefetched (across rows near a row's end), as the kernels' dot_block<8>
__attribute__((noinline)) void vAP(const Csr& W, const float* X, float* Y) {
  const int32_t nnz = W.ptr[W.rows];
  for (int64_t r = 0; r < W.rows; ++r) {
    vf8 acc[8] = {};
    for (int32_t i = W.ptr[r]; i < W.ptr[r + 1]; ++i) {
      if (i + 16 < nnz) { const char* p = (const char*)(X + W.col[i + 16] * P); for (int k = 0; k < 256; k += 64) __builtin_prefetch(p + k, 0, 3); }
      vf8 v = splat(W.val[i]); const float* x = X + W.col[i] * P; for (int q = 0; q < 8; ++q) acc[q] = fma8(v, vload(x + 8 * q), acc[q]);
    }
    for (int q = 0; q < 8; ++q) vstore(Y + r * P + 8 * q, acc[q]);
  }
}
// D: per chunk of 256 rows, 4 sub-panels of 16 columns (X repacked as 4 panels of 650x16), rows 4 at a time
__attribute__((noinline)) void vD(const Csr& W, const float* Xs, float* Y) {
  for (int64_t c0 = 0; c0 < W.rows; c0 += CH) {
    const int64_t c1 = std::min(W.rows, c0 + CH);
    for (int sp = 0; sp < 4; ++sp) {
      const float* X = Xs + sp * W.cols * 16;
      for (int64_t r = c0; r + 4 <= c1; r += 4) {
        vf8 a[4][2] = {};
        const int32_t* p = W.ptr.data() + r;
        int32_t i0 = p[0], i1 = p[1], i2 = p[2], i3 = p[3];
        int32_t n = std::min(std::min(p[1] - p[0], p[2] - p[1]), std::min(p[3] - p[2], p[4] - p[3]));
        for (int32_t k = 0; k < n; ++k) {
          #define STEP(j, ii) { vf8 v = splat(W.val[ii + k]); const float* x = X + W.col[ii + k] * 16; a[j][0] = fma8(v, vload(x), a[j][0]); a[j][1] = fma8(v, vload(x + 8), a[j][1]); }
          STEP(0, i0) STEP(1, i1) STEP(2, i2) STEP(3, i3)
        }
        for (int j = 0; j < 4; ++j) {
          for (int32_t k = p[j] + n; k < p[j + 1]; ++k) { vf8 v = splat(W.val[k]); const float* x = X + W.col[k] * 16; a[j][0] = fma8(v, vload(x), a[j][0]); a[j][1] = fma8(v, vload(x + 8), a[j][1]); }
          vstore(Y + (r + j) * P + sp * 16, a[j][0]); vstore(Y + (r + j) * P + sp * 16 + 8, a[j][1]);
        }
      }
    }
  }
}
// C: per chunk of 256 rows, K blocks of KB rows of X (L1), partial sums in Y
template <int KB>
__attribute__((noinline)) void vC(const Csr& W, const float* X, float* Y, std::vector<int32_t>& cur) {
  for (int64_t c0 = 0; c0 < W.rows; c0 += CH) {
    const int64_t c1 = std::min(W.rows, c0 + CH);
    for (int64_t r = c0; r < c1; ++r) { cur[r - c0] = W.ptr[r]; for (int q = 0; q < 8; ++q) vstore(Y + r * P + 8 * q, vf8{}); }
    for (int64_t k0 = 0; k0 < W.cols; k0 += KB) {
      const int64_t k1 = k0 + KB;
      for (int64_t r = c0; r < c1; ++r) {
        int32_t i = cur[r - c0]; const int32_t e = W.ptr[r + 1];
        if (i >= e || W.col[i] >= k1) continue;
        vf8 acc[8]; for (int q = 0; q < 8; ++q) acc[q] = vload(Y + r * P + 8 * q);
        for (; i < e && W.col[i] < k1; ++i) { vf8 v = splat(W.val[i]); const float* x = X + W.col[i] * P; for (int q = 0; q < 8; ++q) acc[q] = fma8(v, vload(x + 8 * q), acc[q]); }
        cur[r - c0] = i;
        for (int q = 0; q < 8; ++q) vstore(Y + r * P + 8 * q, acc[q]);
      }
    }
  }
}
#ifdef __AVX512F__
// E: as AP with 16-lane vectors (AVX-512): 4 loads and 4 FMAs per entry instead of 8 and 8
__attribute__((noinline)) void vE(const Csr& W, const float* X, float* Y) {
  const int32_t nnz = W.ptr[W.rows];
  for (int64_t r = 0; r < W.rows; ++r) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int32_t i = W.ptr[r]; i < W.ptr[r + 1]; ++i) {
      if (i + 16 < nnz) { const char* p = (const char*)(X + W.col[i + 16] * P); for (int k = 0; k < 256; k += 64) __builtin_prefetch(p + k, 0, 3); }
      __m512 v = _mm512_set1_ps(W.val[i]); const float* x = X + W.col[i] * P; for (int q = 0; q < 4; ++q) acc[q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + 16 * q), acc[q]);
    }
    for (int q = 0; q < 4; ++q) _mm512_storeu_ps(Y + r * P + 16 * q, acc[q]);
  }
}
// F: E with two rows interleaved (8 chains)
__attribute__((noinline)) void vF(const Csr& W, const float* X, float* Y) {
  const int32_t nnz = W.ptr[W.rows];
  int64_t r = 0;
  for (; r + 2 <= W.rows; r += 2) {
    __m512 a[4], b[4]; for (int q = 0; q < 4; ++q) a[q] = b[q] = _mm512_setzero_ps();
    int32_t ia = W.ptr[r], ib = W.ptr[r + 1], ea = W.ptr[r + 1], eb = W.ptr[r + 2];
    int32_t n = std::min(ea - ia, eb - ib);
    for (int32_t k = 0; k < n; ++k) {
      if (ib + k + 16 < nnz) { const char* p = (const char*)(X + W.col[ib + k + 16] * P); for (int j = 0; j < 256; j += 64) __builtin_prefetch(p + j, 0, 3); }
      __m512 va = _mm512_set1_ps(W.val[ia + k]), vb = _mm512_set1_ps(W.val[ib + k]);
      const float* xa = X + W.col[ia + k] * P; const float* xb = X + W.col[ib + k] * P;
      for (int q = 0; q < 4; ++q) { a[q] = _mm512_fmadd_ps(va, _mm512_loadu_ps(xa + 16 * q), a[q]); b[q] = _mm512_fmadd_ps(vb, _mm512_loadu_ps(xb + 16 * q), b[q]); }
    }
    for (int32_t k = ia + n; k < ea; ++k) { __m512 v = _mm512_set1_ps(W.val[k]); const float* x = X + W.col[k] * P; for (int q = 0; q < 4; ++q) a[q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + 16 * q), a[q]); }
    for (int32_t k = ib + n; k < eb; ++k) { __m512 v = _mm512_set1_ps(W.val[k]); const float* x = X + W.col[k] * P; for (int q = 0; q < 4; ++q) b[q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + 16 * q), b[q]); }
    for (int q = 0; q < 4; ++q) { _mm512_storeu_ps(Y + r * P + 16 * q, a[q]); _mm512_storeu_ps(Y + (r + 1) * P + 16 * q, b[q]); }
  }
  for (; r < W.rows; ++r) { __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int32_t i = W.ptr[r]; i < W.ptr[r + 1]; ++i) { __m512 v = _mm512_set1_ps(W.val[i]); const float* x = X + W.col[i] * P; for (int q = 0; q < 4; ++q) acc[q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + 16 * q), acc[q]); }
    for (int q = 0; q < 4; ++q) _mm512_storeu_ps(Y + r * P + 16 * q, acc[q]); }
}
// Dz<NR>: D in 16-lane vectors: per chunk of 256 rows, 4 sub-panels of 16 columns (L1), NR rows at a time in
// one zmm each (NR chains), each row's entries to the shortest of the NR, then each row's rest alone
template <int NR>
__attribute__((noinline)) void vDz(const Csr& W, const float* Xs, float* Y) {
  for (int64_t c0 = 0; c0 < W.rows; c0 += CH) {
    const int64_t c1 = std::min(W.rows, c0 + CH);
    for (int sp = 0; sp < 4; ++sp) {
      const float* X = Xs + sp * W.cols * 16;
      for (int64_t r = c0; r + NR <= c1; r += NR) {
        __m512 a[NR];
        const int32_t* p = W.ptr.data() + r;
        int32_t n = 1 << 30;
        for (int j = 0; j < NR; ++j) { a[j] = _mm512_setzero_ps(); n = std::min(n, p[j + 1] - p[j]); }
        for (int32_t k = 0; k < n; ++k)
          for (int j = 0; j < NR; ++j) a[j] = _mm512_fmadd_ps(_mm512_set1_ps(W.val[p[j] + k]), _mm512_loadu_ps(X + W.col[p[j] + k] * 16), a[j]);
        for (int j = 0; j < NR; ++j) {
          for (int32_t k = p[j] + n; k < p[j + 1]; ++k) a[j] = _mm512_fmadd_ps(_mm512_set1_ps(W.val[k]), _mm512_loadu_ps(X + W.col[k] * 16), a[j]);
          _mm512_storeu_ps(Y + (r + j) * P + sp * 16, a[j]);
        }
      }
    }
  }
}
#endif
int main(int argc, char** argv) {
  double d = argc > 1 ? atof(argv[1]) : 0.33, ghz = (argc > 2 ? atof(argv[2]) : 2.445) * 1e9;
  Csr W = make(10000, 650, d);
  std::vector<float> X(650 * P), Xs(650 * P), Y(10000 * P), Y2(10000 * P);
  for (auto& x : X) x = (rand() % 1000) * 1e-3f;
  for (int sp = 0; sp < 4; ++sp) for (int k = 0; k < 650; ++k) for (int j = 0; j < 16; ++j) Xs[sp * 650 * 16 + k * 16 + j] = X[k * P + sp * 16 + j];
  // X on a cache line, as the kernels' packed panels are (simd.h's floats), and a copy 16 bytes off one, as a
  // buffer from malloc (16-byte alignment) can be: there half of the 8-lane loads and all 16-lane ones split lines
  float* Xa = static_cast<float*>(std::aligned_alloc(64, 650 * P * 4 + 64));
  float* Xsa = static_cast<float*>(std::aligned_alloc(64, 650 * P * 4 + 64));
  float* Xoff = static_cast<float*>(std::aligned_alloc(64, 650 * P * 4 + 64)) + 4;
  std::copy(X.begin(), X.end(), Xa); std::copy(Xs.begin(), Xs.end(), Xsa); std::copy(X.begin(), X.end(), Xoff);
  std::vector<int32_t> cur(CH);
  std::vector<std::function<void()>> fs = {[&] { vA(W, Xa, Y.data()); }, [&] { vD(W, Xsa, Y2.data()); }, [&] { vC<96>(W, Xa, Y2.data(), cur); }, [&] { vC<128>(W, Xa, Y2.data(), cur); }, [&] { vC<64>(W, Xa, Y2.data(), cur); }, [&] { vAP(W, Xa, Y2.data()); }
#ifdef __AVX512F__
    , [&] { vE(W, Xa, Y2.data()); }, [&] { vF(W, Xa, Y2.data()); }, [&] { vDz<8>(W, Xsa, Y2.data()); }, [&] { vDz<4>(W, Xsa, Y2.data()); }
#endif
  };
  const char* names[] = {"a row x 64 columns (dot_block<8> before prefetching)", "16-column panels x 4 rows", "K blocks of 96 rows of X", "K blocks of 128", "K blocks of 64", "the same, X rows prefetched 16 on (dot_block<8>)"
#ifdef __AVX512F__
    , "the same in 16-lane vectors (AVX-512)", "16-lane vectors, two rows interleaved", "16-column panels x 8 rows, 16-lane vectors", "16-column panels x 4 rows, 16-lane vectors"
#endif
  };
  // The same loop with X small enough for L1 (96 rows, 24 KiB) and each row's entries at the same count (at most
  // 96): whether the loop is bound by where X lives or by its own instructions. Not compared with Y.
  Csr W1 = make(10000, 96, std::min(1.0, 650 * d / 96));
  float* X1 = static_cast<float*>(std::aligned_alloc(64, 96 * P * 4));
  std::vector<float> Y1(10000 * P);
  for (int64_t i = 0; i < 96 * P; ++i) X1[i] = (rand() % 1000) * 1e-3f;
  const size_t n_main = fs.size();
  fs.push_back([&] { vAP(W1, X1, Y1.data()); });
#ifdef __AVX512F__
  fs.push_back([&] { vE(W1, X1, Y1.data()); });
#endif
  const size_t n_l1 = fs.size();
  fs.push_back([&] { vAP(W, Xoff, Y2.data()); });
#ifdef __AVX512F__
  fs.push_back([&] { vE(W, Xoff, Y2.data()); });
#endif
  std::vector<double> best(fs.size(), 1e9);
  for (int r = 0; r < 15; ++r) for (size_t k = 0; k < fs.size(); ++k) { auto a = std::chrono::steady_clock::now(); for (int n = 0; n < 3; ++n) fs[k](); auto b = std::chrono::steady_clock::now(); best[k] = std::min(best[k], std::chrono::duration<double>(b - a).count() / 3);
    if (r == 0 && k > 0 && (k < n_main || k >= n_l1)) { double err = 0; for (size_t i = 0; i < Y.size(); ++i) err = std::max(err, (double)std::abs(Y[i] - Y2[i])); if (err > 1e-3) printf("%s mismatch %g\n", names[k], err); } }
  double macs = (double)W.col.size() * P, macs1 = (double)W1.col.size() * P;
  printf("density %.2f, multiply-adds per cycle at %.3f GHz, 1 thread:\n", d, ghz / 1e9);
  for (size_t k = 0; k < n_main; ++k) printf("  %-48s %.2f\n", names[k], macs / best[k] / ghz);
  const char* l1[] = {"X in L1 (96 rows; %.0f entries a row), dot_block<8>", "X in L1 (96 rows; %.0f entries a row), 16 lanes"};
  for (size_t k = n_main; k < n_l1; ++k) { char name[80]; snprintf(name, sizeof name, l1[k - n_main], W1.col.size() / 1e4); printf("  %-48s %.2f\n", name, macs1 / best[k] / ghz); }
  const char* off[] = {"X 16 B off a cache line, dot_block<8>", "X 16 B off a cache line, 16 lanes"};
  for (size_t k = n_l1; k < fs.size(); ++k) printf("  %-48s %.2f\n", off[k - n_l1], macs / best[k] / ghz);
}
