// Batch-1 SELL-8 product (the inner loop of kernels' rows8) in isolation: one 2,600 x 650 matrix (the reference
// model's W_hh) times one vector, ways of loading a slice entry's 8 columns of x. Run by
// benchmarks/microkernels.py; arguments: density, clock in GHz.
#include <immintrin.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <chrono>
#include <algorithm>
#include <cstring>
#include <functional>
#include <type_traits>
typedef uint16_t I;
struct Sell { std::vector<int64_t> ptr; std::vector<I> col; std::vector<float> val; int64_t rows; };
Sell make(int64_t rows, int64_t cols, double d, unsigned seed) {
  srand(seed); Sell s; s.rows = rows; s.ptr.push_back(0);
  std::vector<std::vector<int>> r(rows);
  for (int64_t i = 0; i < rows; ++i) for (int64_t j = 0; j < cols; ++j) if (rand() < d * RAND_MAX) r[i].push_back(j);
  for (int64_t s0 = 0; s0 < rows; s0 += 8) {
    size_t len = 0; for (int k = 0; k < 8; ++k) len = std::max(len, r[s0 + k].size());
    for (size_t i = 0; i < len; ++i) for (int k = 0; k < 8; ++k) {
      bool ok = i < r[s0 + k].size(); s.col.push_back(ok ? r[s0 + k][i] : 0); s.val.push_back(ok ? 0.01f * (rand() % 100 + 1) : 0.f);  // never 0: make_bp reads entries back by value
    }
    s.ptr.push_back(s.col.size());
  }
  return s;
}
using One = std::integral_constant<int64_t, 1>;  // a stride known at compile time

// The slice loop, once: `gather(c)` builds x's 8 lanes for a slice entry's column indices c.
template <class Gather>
__attribute__((noinline)) void product(const Sell& W, float* out, Gather gather) {
  for (int64_t sl = 0; sl * 8 < W.rows; ++sl) {
    int64_t b = W.ptr[sl], len = (W.ptr[sl + 1] - b) / 8; const I* c = W.col.data() + b; const float* v = W.val.data() + b;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < len; ++i, c += 8, v += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(v), gather(c), acc);
    _mm256_storeu_ps(out + sl * 8, acc);
  }
}
// the ways of gathering: 8 scalar 16-bit index loads (the kernels' loop before), 2 64-bit loads split by shifts
// (offsets8, now), vgatherdps
template <class L>
static inline __m256 eight_loads(const float* X, const I* c, L ldx) {
  return _mm256_set_ps(X[c[7] * ldx], X[c[6] * ldx], X[c[5] * ldx], X[c[4] * ldx], X[c[3] * ldx], X[c[2] * ldx],
                       X[c[1] * ldx], X[c[0] * ldx]);
}
template <class L>
static inline __m256 two_u64_loads(const float* X, const I* c, L ldx) {
  uint64_t a, q; memcpy(&a, c, 8); memcpy(&q, c + 4, 8);
  __m128 lo = _mm_set_ps(X[(a >> 48) * ldx], X[((a >> 32) & 0xffff) * ldx], X[((a >> 16) & 0xffff) * ldx], X[(a & 0xffff) * ldx]);
  __m128 hi = _mm_set_ps(X[(q >> 48) * ldx], X[((q >> 32) & 0xffff) * ldx], X[((q >> 16) & 0xffff) * ldx], X[(q & 0xffff) * ldx]);
  return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}
static inline __m256 vgather(const float* X, const I* c) {
  return _mm256_i32gather_ps(X, _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)c)), 4);
}
// The block-permute layout (the kernels' bp_rows16, AVX-512): 16 rows per slice in zmm lanes, each slice's
// entries grouped by blocks of 32 columns (depth = the block's deepest lane), x's block in two registers and
// one vpermi2ps picking every lane's value; built from the same rows as the SELL-8 copy.
struct Bp { std::vector<int32_t> depth; std::vector<uint8_t> idx; std::vector<float> val; int64_t rows, nb; };
Bp make_bp(const Sell& s8) {  // from the SELL-8 copy's rows (read back from its lanes)
  const int64_t rows = s8.rows, cols = 650; Bp o; o.rows = rows; o.nb = (cols + 31) / 32;
  std::vector<std::vector<std::pair<int, float>>> r(rows);
  for (int64_t sl = 0; sl * 8 < rows; ++sl)
    for (int64_t e = s8.ptr[sl]; e < s8.ptr[sl + 1]; ++e) if (s8.val[e] != 0.f) r[sl * 8 + (e - s8.ptr[sl]) % 8].push_back({s8.col[e], s8.val[e]});
  for (int64_t s0 = 0; s0 < rows; s0 += 16)
    for (int64_t b = 0; b < o.nb; ++b) {
      int d = 0; std::vector<std::vector<std::pair<int, float>>> in(16);
      for (int k = 0; k < 16 && s0 + k < rows; ++k) { for (auto& e : r[s0 + k]) if (e.first / 32 == b) in[k].push_back(e); d = std::max<int>(d, in[k].size()); }
      o.depth.push_back(d);
      for (int i = 0; i < d; ++i) for (int k = 0; k < 16; ++k) { bool ok = i < (int)in[k].size();
        o.idx.push_back(ok ? in[k][i].first - 32 * b : 0); o.val.push_back(ok ? in[k][i].second : 0.f); }
    }
  return o;
}
__attribute__((target("avx512f,avx512bw,avx512vl"), noinline)) void bp_product(const Bp& W, const float* X, float* out) {
  const int32_t* dp = W.depth.data(); const uint8_t* ip = W.idx.data(); const float* vp = W.val.data();
  for (int64_t s0 = 0; s0 < W.rows; s0 += 16) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < W.nb; ++b) {
      const __m512 t0 = _mm512_loadu_ps(X + 32 * b), t1 = _mm512_loadu_ps(X + 32 * b + 16);  // X padded to 32 * nb
      for (int d = *dp++; d > 0; --d, ip += 16, vp += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(vp), _mm512_permutex2var_ps(t0, _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)ip)), t1), acc);
    }
    _mm512_storeu_ps(out + s0, acc);
  }
}
int main(int argc, char** argv) {
  double d = argc > 1 ? atof(argv[1]) : 0.1, ghz = (argc > 2 ? atof(argv[2]) : 2.445) * 1e9;
  Sell W = make(2600, 650, d, 1);
  std::vector<float> X(672, 0.f);
  for (int i = 0; i < 650; ++i) X[i] = (rand() % 100) * 0.01f;
  int64_t nnz = W.col.size();
  volatile int64_t runtime_ldx = 1;
  const int64_t ldx = runtime_ldx;  // 1, but not known to the compiler (the kernels' rows8 takes it at run time)
  const float* x = X.data();
  std::vector<std::vector<float>> outs(6, std::vector<float>(2608));
  const Bp bp = make_bp(W);
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  std::vector<std::function<void()>> fs = {
      [&] { product(W, outs[0].data(), [=](const I* c) { return eight_loads(x, c, ldx); }); },
      [&] { product(W, outs[1].data(), [=](const I* c) { return eight_loads(x, c, One{}); }); },
      [&] { product(W, outs[2].data(), [=](const I* c) { return two_u64_loads(x, c, One{}); }); },
      [&] { product(W, outs[3].data(), [=](const I* c) { return vgather(x, c); }); },
      [&] { product(W, outs[4].data(), [=](const I* c) { return two_u64_loads(x, c, ldx); }); }};
  const char* names[] = {"8 loads of 16-bit indices (x ldx)", "the same, ldx = 1", "two 64-bit loads, ldx = 1", "vgatherdps", "two 64-bit loads (x ldx; the kernels' rows8)",
                         "block-permute, AVX-512 (the kernels' bp_rows16)"};
  if (avx512) fs.push_back([&] { bp_product(bp, x, outs[5].data()); });
  std::vector<double> best(fs.size(), 1e9);
  // alternating, best of 40 rounds of 50 calls
  for (int r = 0; r < 40; ++r) for (size_t k = 0; k < fs.size(); ++k) {
    auto a = std::chrono::steady_clock::now(); for (int n = 0; n < 50; ++n) fs[k](); auto b = std::chrono::steady_clock::now();
    best[k] = std::min(best[k], std::chrono::duration<double>(b - a).count() / 50);
  }
  for (size_t k = 1; k < fs.size(); ++k)  // the same sums in the same order: the same bits
    if (outs[k] != outs[0]) printf("%s: a different result\n", names[k]);
  printf("density %.2f, %ld entries (SELL-8, unsorted: padding included), SELL-8 entries per cycle (a rate of the same work for every variant) at %.3f GHz, 1 thread:\n", d, nnz, ghz / 1e9);
  for (size_t k = 0; k < fs.size(); ++k) printf("  %-48s %.2f\n", names[k], nnz / best[k] / ghz);
}
