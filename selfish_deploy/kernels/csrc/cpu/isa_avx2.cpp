// The kernels for x86-64 CPUs with AVX2 and FMA (chosen at run time, see api.cpp).
#if defined(__x86_64__) || defined(_M_X64)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <immintrin.h>
#include <omp.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif
#define ISA_NS avx2
#define SD_AVX2 1
#include "kernels.inc"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#define SD_HAVE_AVX2 1
#endif
