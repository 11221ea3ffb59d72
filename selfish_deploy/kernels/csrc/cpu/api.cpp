// C entry points (called through ctypes, see selfish_deploy/kernels/compiled.py): the instruction set is
// chosen once, at the first call, from the CPU's features (SELFISH_KERNELS_ISA=generic forces the baseline).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <vector>

#include <omp.h>

#include "matrix.h"

#define DECLARE(NS)                                                                                          \
    namespace NS {                                                                                           \
    int spmm_entry(const sd_matrix*, const float*, int64_t, int64_t, const float*, float*, int64_t, int);   \
    int embed_entry(const sd_matrix*, const int64_t*, int64_t, float*, int64_t);                            \
    int recurrent_entry(int, const sd_matrix*, const float*, const float*, int64_t, int, int64_t, int64_t,  \
                        float*, float*, float*, int64_t, int);                                              \
    int rhn_recurrent_entry(const sd_matrix*, int, const float* const*, const float*, int64_t, int64_t,      \
                            int64_t, float*, float*, int64_t, int);                                         \
    int decoder_entry(const sd_matrix*, const float*, const float*, int64_t, int64_t, const int64_t*,       \
                      float*, int64_t*, float*, float*, int);                                               \
    int logsumexp_rows_entry(const float*, int64_t, int64_t, int64_t, float*, int);                         \
    int onlstm_recurrent_entry(const sd_matrix*, float, const float*, int64_t, int64_t, int64_t, int64_t,     \
                               float*, float*, float*, int64_t, int);                                       \
    int onlstm_step_entry(const sd_onlstm*, int64_t, const float* const*, const float* const*, float* const*, \
                          float* const*, float*, int);                                                      \
    int rhn_step_entry(const sd_rhn*, int64_t, const float* const*, float* const*, float*, int);             \
    int stack_step_entry(const sd_stack*, int64_t, const float* const*, const float* const*, float* const*,  \
                         float* const*, float*, int);                                                        \
    }
DECLARE(generic)
#if defined(__x86_64__) || defined(_M_X64)
#define SD_X86 1
DECLARE(avx2)
#endif

static int use_avx2() {
    static int chosen = -1;
    if (chosen < 0) {
        const char* force = std::getenv("SELFISH_KERNELS_ISA");
        chosen = 0;
#ifdef SD_X86
        __builtin_cpu_init();
        const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
        chosen = has && !(force && std::strcmp(force, "generic") == 0);
#endif
    }
    return chosen;
}

#ifdef SD_X86
#define DISPATCH(call) (use_avx2() ? avx2::call : generic::call)
#else
#define DISPATCH(call) (generic::call)
#endif

extern "C" {

double sd_min_work = 32768.0;  // multiply-adds per thread below which a kernel uses fewer threads

void sd_set_min_work(double w) { sd_min_work = w; }

int sd_abi_version() { return 10; }

// The block-permute batch-1 products (matrix.h) need AVX-512 F/BW/VL with the OS saving its registers (which
// __builtin_cpu_supports checks); SELFISH_KERNELS_ISA=avx2 or generic turns them off.
int sd_has_avx512() {
#if defined(SD_X86) && !defined(__clang__)  // clang builds leave the block-permute kernels out (matrix.h)
    const char* force = std::getenv("SELFISH_KERNELS_ISA");  // "generic" already turns use_avx2() off
    if (!use_avx2() || (force && std::strcmp(force, "avx2") == 0)) return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

const char* sd_isa() { return use_avx2() ? "avx2+fma+f16c" : "generic"; }

#define SD_STR2(x) #x
#define SD_STR(x) SD_STR2(x)
const char* sd_build() {
#if defined(__clang__)
    return "clang " __clang_version__ ", OpenMP " SD_STR(_OPENMP);
#elif defined(__GNUC__)
    return "gcc " __VERSION__ ", OpenMP " SD_STR(_OPENMP);
#else
    return "unknown compiler";
#endif
}

int sd_cpu_features(char* buf, int n) {  // the features the kernels look at, as "avx2 fma f16c"
    buf[0] = 0;
#ifdef SD_X86
    __builtin_cpu_init();
    const char* names[] = {"sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl"};
    int used = 0;
    for (const char* f : names) {
        bool has = false;
        if (!std::strcmp(f, "sse4.2")) has = __builtin_cpu_supports("sse4.2");
        if (!std::strcmp(f, "avx")) has = __builtin_cpu_supports("avx");
        if (!std::strcmp(f, "avx2")) has = __builtin_cpu_supports("avx2");
        if (!std::strcmp(f, "fma")) has = __builtin_cpu_supports("fma");
        if (!std::strcmp(f, "f16c")) has = __builtin_cpu_supports("f16c");
        if (!std::strcmp(f, "avx512f")) has = __builtin_cpu_supports("avx512f");
        if (!std::strcmp(f, "avx512bw")) has = __builtin_cpu_supports("avx512bw");
        if (!std::strcmp(f, "avx512vl")) has = __builtin_cpu_supports("avx512vl");
        if (has) used += std::snprintf(buf + used, n - used, used ? " %s" : "%s", f);
    }
#endif
    return 0;
}

int sd_max_threads() { return omp_get_max_threads(); }

// SELL-8-sigma layout of a CSR matrix (see matrix.h), built without temporaries: sd_sell_perm sorts each window
// of sigma rows by length (longest first, ties by row) into perm (rows entries); sd_sell_offsets fills the slice
// offsets ptr (n_slices + 1 entries, n_slices = rows / block * ceil(block / 8)); sd_sell_fill copies the
// entries into col/val (ptr[n_slices] entries each, zeroed by the caller). Index and value element sizes in
// bytes: 2 or 4.
int sd_sell_perm(const int32_t* crow, int64_t rows, int64_t block, int64_t sigma, int32_t* perm) {
    if (block <= 0 || rows % block || sigma <= 0 || sigma % 8) return 1;
    for (int64_t b0 = 0; b0 < rows; b0 += block) {
        for (int64_t w0 = b0; w0 < b0 + block; w0 += sigma) {
            const int64_t w1 = std::min(b0 + block, w0 + sigma);
            for (int64_t r = w0; r < w1; ++r) perm[r] = (int32_t)r;
            std::stable_sort(perm + w0, perm + w1, [&](int32_t a, int32_t b) {
                return crow[a + 1] - crow[a] > crow[b + 1] - crow[b];
            });
        }
    }
    return 0;
}

int sd_sell_offsets(const int32_t* crow, const int32_t* perm, int64_t rows, int64_t block, int64_t* ptr) {
    if (block <= 0 || rows % block) return 1;
    int64_t s = 0;
    ptr[0] = 0;
    for (int64_t b0 = 0; b0 < rows; b0 += block) {
        for (int64_t p0 = b0; p0 < b0 + block; p0 += 8, ++s) {
            int64_t width = 0;
            for (int64_t p = p0; p < p0 + 8 && p < b0 + block; ++p) {
                const int64_t r = perm[p], n = crow[r + 1] - crow[r];
                width = n > width ? n : width;
            }
            ptr[s + 1] = ptr[s] + 8 * width;
        }
    }
    return 0;
}

int sd_sell_fill(const int32_t* crow, const int32_t* perm, const void* col, const void* val, int64_t rows,
                 int64_t block, int index_bytes, int value_bytes, const int64_t* ptr, void* sell_col, void* sell_val) {
    if (block <= 0 || rows % block) return 1;
    const int64_t per_block = (block + 7) / 8;
    for (int64_t q = 0; q < rows; ++q) {  // position q holds row perm[q]
        const int64_t r = perm[q], within = q % block, slice = (q / block) * per_block + within / 8, lane = within % 8;
        for (int64_t p = crow[r], i = 0; p < crow[r + 1]; ++p, ++i) {
            const int64_t dst = ptr[slice] + 8 * i + lane;
            std::memcpy((char*)sell_col + dst * index_bytes, (const char*)col + p * index_bytes, index_bytes);
            std::memcpy((char*)sell_val + dst * value_bytes, (const char*)val + p * value_bytes, value_bytes);
        }
    }
    return 0;
}

// Entry p's column in a CSR index array of index_bytes (2: uint16, 4: int32) per entry.
static inline int64_t column_at(const void* col, int index_bytes, int64_t p) {
    return index_bytes == 2 ? ((const uint16_t*)col)[p] : ((const int32_t*)col)[p];
}

// The block-permute copy (see matrix.h, bp_*) of a CSR matrix whose positions are ordered by perm (the SELL
// copy's): per slice of 16 positions within blocks of `block` rows and per block of 32 columns, depth[s * nb +
// b] entries (the most non-zeros of one of the slice's rows in those columns), and ptr[s] the slice's first
// entry (ptr has n_slices + 1 elements, n_slices = rows / block * ceil(block / 16)). sd_bp_offsets fills depth
// and ptr; 1 if a row's columns are not strictly increasing (the copy's order would not be the stored one).
int sd_bp_offsets(const int32_t* crow, const int32_t* perm, const void* col, int index_bytes, int64_t rows,
                  int64_t cols, int64_t block, uint8_t* depth, int64_t* ptr) {
    if (block <= 0 || rows % block || (index_bytes != 2 && index_bytes != 4)) return 1;
    const int64_t nb = (cols + 31) / 32;
    std::vector<int64_t> per(nb), count(nb);
    int64_t s = 0;
    ptr[0] = 0;
    for (int64_t b0 = 0; b0 < rows; b0 += block) {
        for (int64_t p0 = b0; p0 < b0 + block; p0 += 16, ++s) {
            std::fill(per.begin(), per.end(), 0);
            for (int64_t q = p0; q < p0 + 16 && q < b0 + block; ++q) {
                const int64_t r = perm[q];
                std::fill(count.begin(), count.end(), 0);
                for (int64_t p = crow[r]; p < crow[r + 1]; ++p) {
                    if (p > crow[r] && column_at(col, index_bytes, p) <= column_at(col, index_bytes, p - 1)) return 1;
                    ++count[column_at(col, index_bytes, p) / 32];
                }
                for (int64_t b = 0; b < nb; ++b) per[b] = std::max(per[b], count[b]);
            }
            int64_t total = 0;
            for (int64_t b = 0; b < nb; ++b) {
                depth[s * nb + b] = (uint8_t)per[b];
                total += per[b];
            }
            ptr[s + 1] = ptr[s] + total;
        }
    }
    return 0;
}

// sd_bp_fill copies the entries (16 lanes each: idx the column within its block of 32, val the value in the
// stored type) into idx/val (16 * ptr[n_slices] elements each, zeroed by the caller: padding is column 0 of the
// block, value 0).
int sd_bp_fill(const int32_t* crow, const int32_t* perm, const void* col, int index_bytes, const void* val,
               int value_bytes, int64_t rows, int64_t cols, int64_t block, const uint8_t* depth, const int64_t* ptr,
               uint8_t* idx, void* bval) {
    if (block <= 0 || rows % block || (index_bytes != 2 && index_bytes != 4)) return 1;
    const int64_t nb = (cols + 31) / 32, per_block = (block + 15) / 16;
    for (int64_t q = 0; q < rows; ++q) {  // position q holds row perm[q]
        const int64_t r = perm[q], within = q % block, s = (q / block) * per_block + within / 16, lane = within % 16;
        int64_t e = ptr[s], b = 0, i = 0;  // entry of (s, b)'s i-th
        for (int64_t p = crow[r]; p < crow[r + 1]; ++p) {
            const int64_t c = column_at(col, index_bytes, p);
            for (; b < c / 32; ++b, i = 0) e += depth[s * nb + b];
            idx[(e + i) * 16 + lane] = (uint8_t)(c % 32);
            std::memcpy((char*)bval + ((e + i) * 16 + lane) * value_bytes, (const char*)val + p * value_bytes,
                        value_bytes);
            ++i;
        }
    }
    return 0;
}

// The dense batch-1 copy (see matrix.h, sell_dense) of a CSR matrix into out (zeroed by the caller: rows / block
// * ceil(block / 32) groups of cols x 32 floats), values converted to fp32 (value_type 0 fp32, 1 fp16, 2 bf16).
int sd_dense1_fill(const int32_t* crow, const void* col, int index_bytes, const void* val, int value_type,
                   int64_t rows, int64_t cols, int64_t block, float* out) {
    if (block <= 0 || rows % block || (index_bytes != 2 && index_bytes != 4) || value_type < 0 || value_type > 2) return 1;
    const int64_t G = DENSE_GROUP, per = (block + G - 1) / G;
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t within = r % block, group = (r / block) * per + within / G, lane = within % G;
        for (int64_t p = crow[r]; p < crow[r + 1]; ++p) {
            const int64_t c = column_at(col, index_bytes, p);
            float v;
            if (value_type == 0) v = ((const float*)val)[p];
            else if (value_type == 1) v = (float)((const _Float16*)val)[p];
            else { uint32_t b = (uint32_t)((const uint16_t*)val)[p] << 16; std::memcpy(&v, &b, 4); }
            out[(group * cols + c) * G + lane] = v;
        }
    }
    return 0;
}

int sd_spmm(const sd_matrix* W, const float* X, int64_t ldx, int64_t N, const float* bias, float* Y, int64_t ldy,
            int nt) {
    return DISPATCH(spmm_entry(W, X, ldx, N, bias, Y, ldy, nt));
}

int sd_embed(const sd_matrix* E, const int64_t* ids, int64_t N, float* XT, int64_t ldx) {
    return DISPATCH(embed_entry(E, ids, N, XT, ldx));
}

int sd_recurrent(int cell, const sd_matrix* W, const float* bhh, const float* G, int64_t ldg, int g_rows, int64_t T,
                 int64_t B, float* h, float* c, float* out, int64_t ldo, int nt) {
    return DISPATCH(recurrent_entry(cell, W, bhh, G, ldg, g_rows, T, B, h, c, out, ldo, nt));
}

int sd_rhn_recurrent(const sd_matrix* R, int L, const float* const* bias, const float* G, int64_t ldg, int64_t T,
                     int64_t B, float* s, float* out, int64_t ldo, int nt) {
    return DISPATCH(rhn_recurrent_entry(R, L, bias, G, ldg, T, B, s, out, ldo, nt));
}

int sd_decoder(const sd_matrix* W, const float* bias, const float* X, int64_t ldx, int64_t N, const int64_t* targets,
               float* target_lp, int64_t* argmax, float* max_lp, float* out, int nt) {
    return DISPATCH(decoder_entry(W, bias, X, ldx, N, targets, target_lp, argmax, max_lp, out, nt));
}

int sd_logsumexp_rows(const float* L, int64_t N, int64_t V, int64_t ld, float* lse, int nt) {
    return DISPATCH(logsumexp_rows_entry(L, N, V, ld, lse, nt));
}

int sd_stack_step(const sd_stack* S, int64_t id, const float* const* h_in, const float* const* c_in,
                  float* const* h_out, float* const* c_out, float* logprobs, int nt) {
    return DISPATCH(stack_step_entry(S, id, h_in, c_in, h_out, c_out, logprobs, nt));
}
}

extern "C" int sd_rhn_step(const sd_rhn* S, int64_t id, const float* const* s_in, float* const* s_out, float* logprobs,
                           int nt) {
    return DISPATCH(rhn_step_entry(S, id, s_in, s_out, logprobs, nt));
}

extern "C" int sd_onlstm_recurrent(const sd_matrix* W, float scale, const float* G, int64_t ldg, int64_t T, int64_t B,
                                   int64_t chunk, float* h, float* c, float* out, int64_t ldo, int nt) {
    return DISPATCH(onlstm_recurrent_entry(W, scale, G, ldg, T, B, chunk, h, c, out, ldo, nt));
}

extern "C" int sd_onlstm_step(const sd_onlstm* S, int64_t id, const float* const* h_in, const float* const* c_in,
                              float* const* h_out, float* const* c_out, float* logprobs, int nt) {
    return DISPATCH(onlstm_step_entry(S, id, h_in, c_in, h_out, c_out, logprobs, nt));
}
