// The core's FMA ceiling, for reading the other loops' rates against: 12 independent FMA chains on registers
// only (no loads), 8 lanes (AVX2) and, in AVX-512 builds on CPUs that have it, 16 lanes. Run by
// benchmarks/microkernels.py; arguments: density (unused), clock in GHz.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#define FMA12(R) "vfmadd231ps %%" R "14,%%" R "15,%%" R "0\n vfmadd231ps %%" R "14,%%" R "15,%%" R "1\n" \
  "vfmadd231ps %%" R "14,%%" R "15,%%" R "2\n vfmadd231ps %%" R "14,%%" R "15,%%" R "3\n" \
  "vfmadd231ps %%" R "14,%%" R "15,%%" R "4\n vfmadd231ps %%" R "14,%%" R "15,%%" R "5\n" \
  "vfmadd231ps %%" R "14,%%" R "15,%%" R "6\n vfmadd231ps %%" R "14,%%" R "15,%%" R "7\n" \
  "vfmadd231ps %%" R "14,%%" R "15,%%" R "8\n vfmadd231ps %%" R "14,%%" R "15,%%" R "9\n" \
  "vfmadd231ps %%" R "14,%%" R "15,%%" R "10\n vfmadd231ps %%" R "14,%%" R "15,%%" R "11\n"
#define CLOBBER "rcx", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11"
static double seconds(void (*f)(uint64_t), uint64_t n) {
  double best = 1e9;
  for (int r = 0; r < 5; ++r) { auto a = std::chrono::steady_clock::now(); f(n); auto b = std::chrono::steady_clock::now(); double s = std::chrono::duration<double>(b - a).count(); if (s < best) best = s; }
  return best;
}
static void ymm(uint64_t n) { asm volatile("mov %0, %%rcx\n 1:\n" FMA12("ymm") "dec %%rcx\n jnz 1b\n" : : "r"(n) : CLOBBER); }
#ifdef __AVX512F__
static void zmm(uint64_t n) { asm volatile("mov %0, %%rcx\n 1:\n" FMA12("zmm") "dec %%rcx\n jnz 1b\n" : : "r"(n) : CLOBBER); }
#endif
int main(int argc, char** argv) {
  const double ghz = (argc > 2 ? atof(argv[2]) : 2.445) * 1e9;
  const uint64_t n = 50000000;  // 600 M FMAs per call
  printf("FMA ceiling, registers only, 12 chains, multiply-adds per cycle at %.3f GHz, 1 thread:\n", ghz / 1e9);
  printf("  %-48s %.2f\n", "8 lanes (ymm)", 12.0 * n * 8 / seconds(ymm, n) / ghz);
#ifdef __AVX512F__
  if (__builtin_cpu_supports("avx512f")) printf("  %-48s %.2f\n", "16 lanes (zmm)", 12.0 * n * 16 / seconds(zmm, n) / ghz);
#endif
}
