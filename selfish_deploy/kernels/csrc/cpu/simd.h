// 8-float vectors (GCC/Clang vector extensions) and the element-wise maths of the kernels.
//
// Compiled once per instruction set (isa_avx2.cpp, isa_generic.cpp): the same source becomes AVX2+FMA code
// or SSE2 code. Every non-linearity goes through these vector functions, whatever the batch size (lanes are
// batch columns, or hidden units at batch 1), so a value does not depend on which lane computed it: batched
// results equal one-at-a-time results bit for bit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

// Scratch buffers start on a cache line. glibc's malloc aligns to 16 bytes only, so a packed panel of X
// (rows a multiple of 64 bytes apart) could sit 16 or 48 bytes off a line, and then half of its 32-byte loads
// (every one of the 64-byte loads) would straddle two lines: the panel loop ran 1.3x (8 lanes) to 1.5x
// (16 lanes) slower that way (`benchmarks/microkernels.py --only spmm_panel`, the "off a cache line" rows).
template <class T>
struct LineAligned {
    using value_type = T;
    static constexpr std::align_val_t line{64};
    LineAligned() = default;
    template <class U>
    LineAligned(const LineAligned<U>&) {}
    T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), line)); }
    void deallocate(T* p, std::size_t) { ::operator delete(p, line); }
    template <class U>
    bool operator==(const LineAligned<U>&) const { return true; }
    template <class U>
    bool operator!=(const LineAligned<U>&) const { return false; }
};
using floats = std::vector<float, LineAligned<float>>;

typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));
typedef float vf16 __attribute__((vector_size(64)));  // AVX-512 target functions only
typedef int32_t vi16 __attribute__((vector_size(64)));

static inline vf8 vload(const float* p) { vf8 v; std::memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float* p, vf8 v) { std::memcpy(p, &v, sizeof v); }
// Lanes [0, n) from p (n < 8), the others 0; nothing past p + n is read (the last row of a matrix can end a
// page).
#if SD_AVX2
static inline vf8 vload_n(const float* p, int n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return (vf8)_mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane));
}
#else
static inline vf8 vload_n(const float* p, int n) {
    vf8 v = {};
    for (int q = 0; q < n; ++q) v[q] = p[q];
    return v;
}
#endif
// Lanes [0, n) (n <= 8) from p, p + stride, ...; the others 0.
static inline vf8 vload_lanes(const float* p, int64_t stride, int n) {
    if (stride == 1) return n == 8 ? vload(p) : vload_n(p, n);
    vf8 v = {};
    for (int q = 0; q < n; ++q) v[q] = p[q * stride];
    return v;
}
// Lanes [0, n) of v to p, p + stride, ...
static inline void vstore_lanes(float* p, int64_t stride, int n, vf8 v) {
    if (stride == 1 && n == 8) {
        vstore(p, v);
        return;
    }
    for (int q = 0; q < n; ++q) p[q * stride] = v[q];
}
// f(i, n) for the groups of 8 in [i0, i1): n a compile-time 8 for whole groups (plain vector loads and stores;
// a run-time n measured 5-13% slower on 2 threads), the run-time rest once.
template <class F>
static inline void in_groups_of_8(int64_t i0, int64_t i1, F&& f) {
    int64_t i = i0;
    for (; i + 8 <= i1; i += 8) f(i, std::integral_constant<int, 8>{});
    if (i < i1) f(i, (int)(i1 - i));
}
static inline vf8 vsplat(float x) { return vf8{x, x, x, x, x, x, x, x}; }
static inline vf8 vmin(vf8 a, vf8 b) { return a < b ? a : b; }
static inline vf8 vmax(vf8 a, vf8 b) { return a > b ? a : b; }

// a * b + c, fused where the instruction set has FMA. The build turns off the compiler's own contraction
// (-ffp-contract=off), so every fused multiply-add is one of these, the same in scalar and vector code.
#if SD_AVX2
static inline float fmadd(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
static inline vf8 vfmadd(vf8 a, vf8 b, vf8 c) { return (vf8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
#else
static inline float fmadd(float a, float b, float c) { return a * b + c; }
static inline vf8 vfmadd(vf8 a, vf8 b, vf8 c) { return a * b + c; }
#endif

// exp(x), Cephes expf: x = n ln2 + r, |r| <= ln2/2, 2^n from the exponent bits. About 1 ulp. Written once for
// any width of vector (V floats, VI int32 lanes): every lane goes through the same operations, so a 16-lane
// caller (the decoder's AVX-512 statistics) gets the 8-lane function's bits.
template <class V, class VI>
__attribute__((always_inline)) static inline V vexp_lanes(V x) {
    const V lo = V{} + -87.3365f, hi = V{} + 88.0f;
    x = x > lo ? x : lo;  // vmax, then vmin, as the 8-lane helpers
    x = x < hi ? x : hi;
    const V magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
    V t = x * (V{} + 1.44269504088896341f) + magic;
    V n = t - magic;
    V r = x - n * (V{} + 0.693359375f);
    r = r - n * (V{} + -2.12194440e-4f);
    V p = V{} + 1.9875691500e-4f;
    p = p * r + (V{} + 1.3981999507e-3f);
    p = p * r + (V{} + 8.3334519073e-3f);
    p = p * r + (V{} + 4.1665795894e-2f);
    p = p * r + (V{} + 1.6666665459e-1f);
    p = p * r + (V{} + 5.0000001201e-1f);
    V y = p * (r * r) + r + (V{} + 1.0f);
    VI ni = __builtin_convertvector(n, VI);
    VI bits = (ni + 127) << 23;
    V scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}
static inline vf8 vexp(vf8 x) { return vexp_lanes<vf8, vi8>(x); }

static inline vf8 vsigmoid(vf8 x) { return vsplat(1.0f) / (vsplat(1.0f) + vexp(-x)); }

// tanh: Cephes' odd polynomial for |x| < 0.625 (no cancellation near 0), else 1 - 2 / (e^{2|x|} + 1).
static inline vf8 vtanh(vf8 x) {
    vf8 ax = x < vsplat(0.0f) ? -x : x;
    vf8 z = x * x;
    vf8 p = vsplat(-5.70498872745e-3f);
    p = p * z + vsplat(2.06390887954e-2f);
    p = p * z + vsplat(-5.37397155531e-2f);
    p = p * z + vsplat(1.33314422036e-1f);
    p = p * z + vsplat(-3.33332819422e-1f);
    vf8 small = p * z * x + x;
    vf8 big = vsplat(1.0f) - vsplat(2.0f) / (vexp(ax + ax) + vsplat(1.0f));
    big = x < vsplat(0.0f) ? -big : big;
    return ax < vsplat(0.625f) ? small : big;
}

static inline vf8 vrelu(vf8 x) { return vmax(x, vsplat(0.0f)); }

// One LSTM cell on 8 lanes (PyTorch's equations, gates i f g o): c <- s(f) c + s(i) tanh(g), h = s(o) tanh(c).
static inline void lstm_cell8(vf8 i, vf8 f, vf8 g, vf8 o, vf8& c, vf8& h) {
    vf8 fc = vsigmoid(f) * c;
    vf8 ig = vsigmoid(i) * vtanh(g);
    c = fc + ig;
    h = vsigmoid(o) * vtanh(c);
}

// One GRU cell (gates r z n; b_hn stays inside r * (.), as in PyTorch): gi_* include b_ih, gh_* include b_hh.
static inline vf8 gru_cell8(vf8 gir, vf8 giz, vf8 gin, vf8 ghr, vf8 ghz, vf8 ghn, vf8 h) {
    vf8 r = vsigmoid(gir + ghr);
    vf8 z = vsigmoid(giz + ghz);
    vf8 rn = r * ghn;
    vf8 n = vtanh(gin + rn);
    vf8 zh = z * h;
    return (vsplat(1.0f) - z) * n + zh;
}

// One coupled recurrent highway micro-step (Zilly et al.; Selfish-RNN's HighwayBlock with --couple):
// h = tanh(a_h), t = sigmoid(a_t), s <- h * t + s * (1 - t).
static inline vf8 rhn_cell8(vf8 ah, vf8 at, vf8 s) {
    const vf8 t = vsigmoid(at);
    return vtanh(ah) * t + s * (vsplat(1.0f) - t);
}
