// Read-only views of a weight matrix as the export stores it, and the dot products every kernel shares.
//
//   CSR:   row r is values[crow[r]:crow[r+1]] at columns col[crow[r]:crow[r+1]]
//          col: uint16 or int32 (read as stored, never widened in memory); values: fp32, fp16 or bf16
//   dense: row-major fp32 (matrices that the export kept dense, density 1.0)
//
// The canonical order of a row's sum (what makes a column's result independent of how many columns are
// computed with it): the row's stored entries in order, one multiply-add each (fused where the CPU has FMA).
// dot1, rows8 (8 rows through the SELL-8 copy, one column) and dot_block (8 * NV columns in vector lanes) follow it exactly;
// the throughput comes from independent chains: 8 rows at batch 1, 64 columns per pass over a row otherwise.
#pragma once
#include <cstdint>

#include <type_traits>

#include "simd.h"

extern "C" {
struct sd_matrix {
    int64_t rows, cols;
    int32_t layout;      // 0: CSR, 1: dense fp32
    int32_t index_bits;  // 16 or 32 (CSR column indices)
    int32_t value_type;  // 0: fp32, 1: fp16, 2: bf16
    int32_t sell_dense;  // 1: the batch-1 copy is the dense one below instead of SELL
    const int32_t* crow;
    const void* col;
    const void* val;
    // The same matrix as SELL-8-sigma (optional, for batch 1): within blocks of sell_block rows (a gate's rows,
    // for a recurrent matrix), windows of sell_sigma rows sorted by length (longest first), then slices of 8
    // of those positions, each slice padded to its longest row (so sorting cuts the padding: 17% -> 3-4% at
    // density 0.1), entry i of the slice's 8 rows stored together: sell_col/sell_val[sell_ptr[s] + 8 * i +
    // lane]. Padding is column 0, value 0. sell_perm[p]: the row at position p (within p's window).
    // Or, with sell_dense, the dense copy (faster at batch 1 from density ~0.15): fp32, within blocks of
    // sell_block rows, groups of 32 rows (the last one zero-padded), each group column-major: group g's
    // column k at sell_val[(g * cols + k) * 32 + lane]; no sell_ptr, sell_col or sell_perm (rows in order).
    const int64_t* sell_ptr;
    const void* sell_col;
    const void* sell_val;
    int64_t sell_block;
    const int32_t* sell_perm;
    int64_t sell_sigma;
    // Optional, for products of 1-4 columns on CPUs with AVX-512 (bp_rows16 and bp_rows16_cols below): the
    // block-permute copy, beside SELL or (gate blocks: sell_ptr null, sell_perm set) instead of it. The SELL positions in slices of 16 within blocks of sell_block rows (slice s = piece_of(p,
    // sell_block, 16)), each slice's entries grouped by blocks of 32 columns: for block b, bp_depth[s * nb + b]
    // entries (nb = ceil(cols / 32)), each 16 lanes of (column within the block, value) at
    // bp_idx/bp_val[(bp_ptr[s] + e) * 16 + lane]; a lane's entries in the row's stored order, padding column 0,
    // value 0. x's block of 32 columns sits in two registers, and one permute picks every lane's value: one
    // instruction instead of SELL's 8 loads and 7 shuffles per 8 entries. Null: no such copy.
    const int64_t* bp_ptr;
    const uint8_t* bp_depth;
    const uint8_t* bp_idx;
    const void* bp_val;
};

// A stacked LSTM/GRU/RNN language model for one generation step at batch 1 (sd_stack_step): per layer the
// input and recurrent matrices (both with SELL-8 copies in blocks of `hidden` rows) and the biases as the
// layered kernels take them (proj_bias = b_ih (+ b_hh except GRU), cell_bias = b_hh for GRU, else null).
struct sd_stack_layer {
    const sd_matrix* w_ih;
    const float* proj_bias;
    const sd_matrix* w_hh;
    const float* cell_bias;
};
struct sd_stack {
    int32_t cell;
    int32_t layers;
    const sd_matrix* encoder;  // used when table is null
    const float* table;        // (V, G*H0): W_ih0 E[v] + proj_bias of layer 0, or null
    const sd_stack_layer* layer;
    const sd_matrix* decoder;  // with its SELL-8 copy over all rows; null: the trunk only (logprobs unused)
    const float* decoder_bias;
};

// An RHN language model for one generation step at batch 1 (sd_rhn_step): per layer the input matrix W
// (2H, I) with proj_bias = b_W + b_R0, and `depth` matrices R_l (2H, H) in an array, bias[l] (2H) for l >= 1
// (bias[0] is not read); every matrix with SELL-8 copies in blocks of H rows.
struct sd_rhn_layer {
    const sd_matrix* w;
    const float* proj_bias;
    int32_t depth;
    int32_t reserved;
    const sd_matrix* r;
    const float* const* bias;
};
// An ON-LSTM language model for one generation step at batch 1 (sd_onlstm_step): per layer W_ih and W_hh
// (2n + 4H rows, n = H / chunk; SELL copies over all rows), bias = b_ih + b_hh, scale = 1 - wdrop.
struct sd_onlstm_layer {
    const sd_matrix* w_ih;
    const float* bias;
    const sd_matrix* w_hh;
    float scale;
    int32_t chunk;
};
struct sd_onlstm {
    int32_t layers;
    int32_t reserved;
    const sd_matrix* encoder;
    const sd_onlstm_layer* layer;
    const sd_matrix* decoder;  // with its SELL-8 copy over all rows
    const float* decoder_bias;
};
struct sd_rhn {
    int32_t layers;
    int32_t reserved;
    const sd_matrix* encoder;
    const sd_rhn_layer* layer;
    const sd_matrix* decoder;  // with its SELL-8 copy over all rows
    const float* decoder_bias;
};
}

static inline float load_value(const float* v, int64_t p) { return v[p]; }
static inline float load_value(const _Float16* v, int64_t p) { return (float)v[p]; }
struct bf16 { uint16_t bits; };
static inline float load_value(const bf16* v, int64_t p) {
    uint32_t b = (uint32_t)v[p].bits << 16;
    float f;
    std::memcpy(&f, &b, sizeof f);
    return f;
}

// One row of a CSR matrix: n entries, column col(i), value val(i); `avail` entries of c are readable (the row
// and the rows after it), for looking ahead past the row's end.
template <class I, class V>
struct CsrRow {
    const I* c;
    const V* v;
    int64_t n;
    int64_t avail;
    int64_t col(int64_t i) const { return (int64_t)c[i]; }
    float val(int64_t i) const { return load_value(v, i); }
};

constexpr int64_t DENSE_GROUP = 32;  // rows per group of the dense batch-1 copy (4 vectors: 4 FMA chains)

template <class I, class V>
struct Csr {
    const int32_t* crow;
    const I* col;
    const V* val;
    int64_t rows, cols;
    const int64_t* sell_ptr;
    const I* sell_col;
    const V* sell_val;
    int64_t sell_block;
    const int32_t* sell_perm;
    int64_t sell_sigma;
    const float* dense1;  // the dense batch-1 copy, or null
    const int64_t* bp_ptr;  // the block-permute copy (sd_matrix), or null
    const uint8_t* bp_depth;
    const uint8_t* bp_idx;
    const V* bp_val;
    explicit Csr(const sd_matrix& m)
        : crow(m.crow), col((const I*)m.col), val((const V*)m.val), rows(m.rows), cols(m.cols),
          sell_ptr(m.sell_dense ? nullptr : m.sell_ptr), sell_col((const I*)m.sell_col),
          sell_val((const V*)m.sell_val), sell_block(m.sell_block), sell_perm(m.sell_perm),
          sell_sigma(m.sell_dense ? DENSE_GROUP : m.sell_perm ? m.sell_sigma : 8),
          dense1(m.sell_dense ? (const float*)m.sell_val : nullptr),
          bp_ptr(m.sell_dense ? nullptr : m.bp_ptr), bp_depth(m.bp_depth), bp_idx(m.bp_idx),
          bp_val((const V*)m.bp_val) {}
    int64_t row_at(int64_t p) const { return sell_perm ? sell_perm[p] : p; }  // the row rows8 puts at position p
    int64_t window() const { return sell_sigma; }
    CsrRow<I, V> row(int64_t r) const {
        int64_t b = crow[r];
        return {col + b, val + b, (int64_t)crow[r + 1] - b, (int64_t)crow[rows] - b};
    }
    int64_t row_nnz(int64_t r) const { return (int64_t)crow[r + 1] - crow[r]; }
    int64_t row_prefix(int64_t r) const { return crow[r]; }  // non-zeros before row r
};

struct DenseRow {
    const float* v;
    int64_t n;
    int64_t col(int64_t i) const { return i; }
    float val(int64_t i) const { return v[i]; }
};

struct Dense {
    const float* w;
    int64_t rows, cols;
    explicit Dense(const sd_matrix& m) : w((const float*)m.val), rows(m.rows), cols(m.cols) {}
    DenseRow row(int64_t r) const { return {w + r * cols, cols}; }
    int64_t row_at(int64_t p) const { return p; }
    int64_t window() const { return 8; }
    int64_t row_nnz(int64_t) const { return cols; }
    int64_t row_prefix(int64_t r) const { return r * cols; }
};

static inline float tree8(vf8 s) { return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])); }

// sum_i val(i) * X[col(i) * ldx] for one column of X, in the canonical order.
template <class Row>
static inline float dot1(const Row& row, const float* X, int64_t ldx) {
    float s = 0.f;
    for (int64_t i = 0; i < row.n; ++i) s = fmadd(row.val(i), X[row.col(i) * ldx], s);
    return s;
}

// dot1 of the 8 rows at SELL positions [r0, r0 + 8) with one column of X: out[k] equals dot1(row_at(r0 + k))
// bit for bit, but the 8 sums are independent chains (lanes), so the loop runs at the loads' pace, not the
// adds' latency. r0 starts a slice (a multiple of 8 within its block); positions past the block's end come out
// as 0.
#if SD_AVX2
static inline __m256 load8_values(const float* v) { return _mm256_loadu_ps(v); }
static inline __m256 load8_values(const _Float16* v) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)v)); }
static inline __m256 load8_values(const bf16* v) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)v));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
#endif

// A slice entry's 8 column indices times ldx (offsets into X), from 64-bit loads split by shifts: 2 loads for
// uint16 indices (4 for int32) instead of 8. The batch-1 loop is bound by its loads (8 of X per entry as well),
// and the shifts run on the integer units beside them: the loop alone 1.23-1.27x the non-zeros per cycle
// (uint16, Zen 3, one core; benchmarks/microkernels.py).
static inline void offsets8(const uint16_t* c, int64_t ldx, int64_t* o) {
    uint64_t a, b;
    std::memcpy(&a, c, 8);
    std::memcpy(&b, c + 4, 8);
    for (int k = 0; k < 4; ++k) {
        o[k] = (int64_t)((a >> (16 * k)) & 0xffff) * ldx;
        o[k + 4] = (int64_t)((b >> (16 * k)) & 0xffff) * ldx;
    }
}
static inline void offsets8(const int32_t* c, int64_t ldx, int64_t* o) {
    for (int k = 0; k < 8; k += 2) {
        uint64_t a;
        std::memcpy(&a, c + k, 8);
        o[k] = (int64_t)(int32_t)(uint32_t)a * ldx;
        o[k + 1] = (int64_t)(int32_t)(uint32_t)(a >> 32) * ldx;
    }
}

// The piece of height h (a SELL slice, h = 8; a dense group, h = DENSE_GROUP) that holds position p, counted
// over blocks of `block` rows, each cut into ceil(block / h) pieces: (p / block) * ceil(block / h) + (p % block)
// / h, by subtraction instead of a 64-bit division per call (a matrix has one block, or one per gate). *in:
// p's position within its block.
static inline int64_t piece_of(int64_t p, int64_t block, int64_t h, int64_t* in) {
    int64_t piece = 0;
    for (; p >= block; p -= block) piece += (block + h - 1) / h;
    *in = p;
    return piece + p / h;
}

template <class I, class V>
static inline void rows8(const Csr<I, V>& W, int64_t r0, const float* X, int64_t ldx, float* out) {
    int64_t in;
    const int64_t sl = piece_of(r0, W.sell_block, 8, &in);
    const int64_t b = W.sell_ptr[sl], len = (W.sell_ptr[sl + 1] - b) / 8;
    const I* c = W.sell_col + b;
    const V* v = W.sell_val + b;
#if SD_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < len; ++i, c += 8, v += 8) {
        // eight scalar loads: faster than vgatherdps on AMD Zen (measured, one core)
        int64_t o[8];
        offsets8(c, ldx, o);
        __m256 x = _mm256_set_ps(X[o[7]], X[o[6]], X[o[5]], X[o[4]], X[o[3]], X[o[2]], X[o[1]], X[o[0]]);
        acc = _mm256_fmadd_ps(load8_values(v), x, acc);
    }
    _mm256_storeu_ps(out, acc);
#else
    float s[8] = {};
    for (int64_t i = 0; i < len; ++i, c += 8, v += 8)
        for (int k = 0; k < 8; ++k) s[k] = fmadd(load_value(v, k), X[(int64_t)c[k] * ldx], s[k]);
    for (int k = 0; k < 8; ++k) out[k] = s[k];
#endif
}

// Rows r0 + [0, 8 * NV) of a dense group (w: the group's first column, DENSE_GROUP floats per column) times
// X: lane l of vector q is row 8q + l's sum over every column in order, zeros included. A zero adds an exact
// zero, so each sum has rows8's bits (whose padding does the same): the canonical order, densely.
template <int NV>
static inline void dense_group(const float* w, int64_t cols, const float* X, int64_t ldx, float* out) {
    vf8 acc[NV] = {};
    for (int64_t k = 0; k < cols; ++k, w += DENSE_GROUP) {
        const vf8 x = vsplat(X[k * ldx]);
        for (int q = 0; q < NV; ++q) acc[q] = vfmadd(vload(w + 8 * q), x, acc[q]);
    }
    for (int q = 0; q < NV; ++q) vstore(out + 8 * q, acc[q]);
}

// Built by GCC only: clang's `#pragma clang attribute push` of the AVX2 target (isa_avx2.cpp) beside these
// functions' own AVX-512 target is untested (sd_has_avx512 then reports 0 and no copy is built).
#if SD_AVX2 && !defined(__clang__)
#define SD_BLOCK_PERMUTE 1
// The block-permute product (sd_matrix's bp_*) of slice s (16 positions) with a contiguous x of `cols` floats
// into out[0, 16): lane l is position l's sum over its entries in the stored order, one FMA each, padding adding
// exact zeros: rows8's sums bit for bit. x's last block is read with a mask (nothing past cols). The loop alone,
// the reference model's W_hh (2,600 x 650) on one Zen 4 core (`benchmarks/microkernels.py --only spmv_b1`):
// 1.76x rows8's pace at density 0.1, 2.33x at 0.33, 1.60x at 0.05 (deeper blocks pad less).
#define SD_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
SD_AVX512 static inline __m512 load16_values(const float* v) { return _mm512_loadu_ps(v); }
SD_AVX512 static inline __m512 load16_values(const _Float16* v) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)v));
}
SD_AVX512 static inline __m512 load16_values(const bf16* v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)v)), 16));
}
template <class V>
SD_AVX512 __attribute__((noinline)) static void bp_rows16(
        const int64_t* ptr, const uint8_t* depth, const uint8_t* idx, const V* val, int64_t s, int64_t cols,
        const float* x, float* out) {
    const int64_t nb = (cols + 31) / 32, full = cols / 32;
    const uint8_t* dp = depth + s * nb;
    const uint8_t* ip = idx + ptr[s] * 16;
    const V* vp = val + ptr[s] * 16;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        __m512 t0, t1;
        if (b < full) {
            t0 = _mm512_loadu_ps(x + 32 * b);
            t1 = _mm512_loadu_ps(x + 32 * b + 16);
        } else {
            const int64_t rem = cols - 32 * b;  // 1..31
            const __mmask16 m0 = rem >= 16 ? 0xffff : (__mmask16)((1u << rem) - 1);
            const __mmask16 m1 = rem > 16 ? (__mmask16)((1u << (rem - 16)) - 1) : 0;
            t0 = _mm512_maskz_loadu_ps(m0, x + 32 * b);
            t1 = _mm512_maskz_loadu_ps(m1, x + 32 * b + 16);
        }
        for (int d = dp[b]; d > 0; --d, ip += 16, vp += 16) {
            const __m512i id = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)ip));
            acc = _mm512_fmadd_ps(load16_values(vp), _mm512_permutex2var_ps(t0, id, t1), acc);
        }
    }
    _mm512_storeu_ps(out, acc);
}
// bp_rows16 for NC (2-4) columns at once: XT holds them one after another (column q at XT + q * ldt, cols
// floats each); every entry's indices and values are read once for all NC, and each column has its own two
// registers of x and its own chain: out[q * 16 + l] is bp_rows16's sum for column q, bit for bit.
template <int NC, class V>
SD_AVX512 __attribute__((noinline)) static void bp_rows16_cols(
        const int64_t* ptr, const uint8_t* depth, const uint8_t* idx, const V* val, int64_t s, int64_t cols,
        const float* XT, int64_t ldt, float* out) {
    const int64_t nb = (cols + 31) / 32, full = cols / 32;
    const uint8_t* dp = depth + s * nb;
    const uint8_t* ip = idx + ptr[s] * 16;
    const V* vp = val + ptr[s] * 16;
    __m512 acc[NC];
    for (int q = 0; q < NC; ++q) acc[q] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        __mmask16 m0 = 0xffff, m1 = 0xffff;
        if (b >= full) {
            const int64_t rem = cols - 32 * b;
            m0 = rem >= 16 ? 0xffff : (__mmask16)((1u << rem) - 1);
            m1 = rem > 16 ? (__mmask16)((1u << (rem - 16)) - 1) : 0;
        }
        __m512 t0[NC], t1[NC];
        for (int q = 0; q < NC; ++q) {
            t0[q] = _mm512_maskz_loadu_ps(m0, XT + q * ldt + 32 * b);
            t1[q] = _mm512_maskz_loadu_ps(m1, XT + q * ldt + 32 * b + 16);
        }
        for (int d = dp[b]; d > 0; --d, ip += 16, vp += 16) {
            const __m512i id = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)ip));
            const __m512 v = load16_values(vp);
            for (int q = 0; q < NC; ++q) acc[q] = _mm512_fmadd_ps(v, _mm512_permutex2var_ps(t0[q], id, t1[q]), acc[q]);
        }
    }
    for (int q = 0; q < NC; ++q) _mm512_storeu_ps(out + 16 * q, acc[q]);
}
#endif

// Batch 1: positions p .. p + n - 1 of W (p a multiple of 8 within its block) times one column of X into
// out[0, n) (room for DENSE_GROUP), n returned: one SELL slice (n = 8, or to `end`), or through the dense
// copy up to the end of p's group (or of its block, or `end`). Position i's row is W.row_at(i).
template <class I, class V>
static inline int64_t rows_b1(const Csr<I, V>& W, int64_t p, int64_t end, const float* X, int64_t ldx, float* out) {
#if SD_BLOCK_PERMUTE
    if (W.bp_ptr && ldx == 1) {
        int64_t in;
        const int64_t s = piece_of(p, W.sell_block, 16, &in);
        if (in % 16 == 0) {  // p starts a slice of 16 (else SELL's slice of 8 below)
            bp_rows16(W.bp_ptr, W.bp_depth, W.bp_idx, W.bp_val, s, W.cols, X, out);
            return std::min(std::min<int64_t>(16, end - p), W.sell_block - in);
        }
    }
#endif
    if (!W.dense1 && !W.sell_ptr) {  // only the block-permute copy, and p not at one of its slices: the CSR row
        out[0] = dot1(W.row(W.row_at(p)), X, ldx);
        return 1;
    }
    if (!W.dense1) {
        rows8(W, p, X, ldx, out);
        return std::min<int64_t>(8, end - p);
    }
    int64_t in;
    const int64_t g = piece_of(p, W.sell_block, DENSE_GROUP, &in), off = in % DENSE_GROUP;
    const int64_t n = std::min(std::min(end - p, DENSE_GROUP - off), W.sell_block - in);
    const float* w = W.dense1 + g * W.cols * DENSE_GROUP + off;
    switch ((n + 7) / 8) {
        case 1: dense_group<1>(w, W.cols, X, ldx, out); break;
        case 2: dense_group<2>(w, W.cols, X, ldx, out); break;
        case 3: dense_group<3>(w, W.cols, X, ldx, out); break;
        default: dense_group<4>(w, W.cols, X, ldx, out); break;
    }
    return n;
}

// Batch 1 over positions [p0, p1) (p0 a multiple of 8 within its block): f(row, sum) for each, the row's sum of
// W times one column of X, through the SELL or the dense copy, a slice or a group at a time. (A Dense matrix
// has its own, below.)
template <class I, class V, class F>
static inline void each_row_b1(const Csr<I, V>& W, int64_t p0, int64_t p1, const float* X, int64_t ldx, F&& f) {
    float d[DENSE_GROUP];
    for (int64_t p = p0; p < p1;) {
        const int64_t n = rows_b1(W, p, p1, X, ldx, d);
        for (int64_t k = 0; k < n; ++k) f(W.row_at(p + k), d[k]);
        p += n;
    }
}

// rows8 for NC (2..4) columns at once. X4 (cols, 4): the columns packed four to a row (pack4 below; lanes past
// NC are read but not used), so that each entry's 8 rows of X are 8 loads of 16 bytes put into columns by a
// 4 x 4 transpose in each half of a register, instead of 8 * NC scalar loads and inserts (1.6-1.7x at 3
// columns: benchmarks/kernels_ab.py's product3 case, RESULTS.md "Products of 2-4 columns"). acc[q] lane k is row_at(r0 + k)'s sum for column q, bit
// for bit rows8's (the same entries in the same order). The slice's indices and values are read once for all
// NC columns: few columns (a small generation batch, MoS's experts at batch 1) cost less than one pass per
// column, and less than a row-wise pass with NC masked lanes.
template <int NC, class I, class V>
static inline void rows8_cols(const Csr<I, V>& W, int64_t r0, const float* X4, vf8* acc) {
    static_assert(NC >= 2 && NC <= 4, "X4 holds four columns");
    int64_t in;
    const int64_t sl = piece_of(r0, W.sell_block, 8, &in);
    const int64_t b = W.sell_ptr[sl], len = (W.sell_ptr[sl + 1] - b) / 8;
    const I* c = W.sell_col + b;
    const V* v = W.sell_val + b;
#if SD_AVX2
    __m256 a[NC];  // in registers: through acc, every step would be stored (acc may alias X for the compiler)
    for (int q = 0; q < NC; ++q) a[q] = _mm256_setzero_ps();
    for (int64_t i = 0; i < len; ++i, c += 8, v += 8) {
        const __m256 w = load8_values(v);
        int64_t o[8];
        offsets8(c, 4, o);
        __m256 y[4];  // y[k]: row k of the slice in the low half, row k + 4 in the high half
        for (int k = 0; k < 4; ++k)
            y[k] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(X4 + o[k])), _mm_loadu_ps(X4 + o[k + 4]), 1);
        const __m256 t0 = _mm256_unpacklo_ps(y[0], y[1]), t1 = _mm256_unpackhi_ps(y[0], y[1]);
        const __m256 t2 = _mm256_unpacklo_ps(y[2], y[3]), t3 = _mm256_unpackhi_ps(y[2], y[3]);
        const __m256 x[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                             _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};  // column q, lane k
        for (int q = 0; q < NC; ++q) a[q] = _mm256_fmadd_ps(w, x[q], a[q]);
    }
    for (int q = 0; q < NC; ++q) acc[q] = (vf8)a[q];
#else
    for (int q = 0; q < NC; ++q) acc[q] = vf8{};
    for (int64_t i = 0; i < len; ++i, c += 8, v += 8)
        for (int q = 0; q < NC; ++q)
            for (int k = 0; k < 8; ++k) acc[q][k] = fmadd(load_value(v, k), X4[(int64_t)c[k] * 4 + q], acc[q][k]);
#endif
}

// Columns [0, nc) (nc <= 4) of X (rows, ldx) into X4 (rows, 4), the layout rows8_cols reads; lanes past nc 0.
static inline void pack4(const float* X, int64_t ldx, int64_t nc, int64_t rows, float* X4) {
    for (int64_t k = 0; k < rows; ++k)
        for (int q = 0; q < 4; ++q) X4[k * 4 + q] = q < nc ? X[k * ldx + q] : 0.f;
}

// 2-4 columns of X (rows x nc, row stride ldx) as each_row_cols reads them, packed once per product: four to a
// row (x4, pack4) for SELL's rows8_cols, and one column after another (xt) for bp_rows16_cols where the matrix
// has the block-permute copy. The buffers are kept between packs (a recurrence repacks h every step).
struct SmallCols {
    floats x4, xt;
    int64_t rows = 0;
    template <class I, class V>
    void pack(const Csr<I, V>& W, const float* X, int64_t ldx, int64_t nc, int64_t n_rows) {
        rows = n_rows;
        if (W.sell_ptr) {
            x4.resize(rows * 4);
            pack4(X, ldx, nc, rows, x4.data());
        }
        if (W.bp_ptr) {
            xt.resize(nc * rows);
            for (int64_t k = 0; k < rows; ++k)
                for (int64_t q = 0; q < nc; ++q) xt[q * rows + k] = X[k * ldx + q];
        }
    }
};

// f(std::integral_constant<int, nc>) for 2 <= nc <= SMALL_N (the column counts rows8_cols serves).
constexpr int SMALL_N = 4;
template <class F>
static inline void with_small_n(int64_t nc, F&& f) {
    switch (nc) {
        case 2: f(std::integral_constant<int, 2>{}); break;
        case 3: f(std::integral_constant<int, 3>{}); break;
        default: f(std::integral_constant<int, 4>{}); break;
    }
}

// Whether a product of W times nc columns takes the SELL slices with all columns at once (each_row_cols):
// 2-4 columns of a CSR matrix with a SELL copy.
template <class M>
static inline bool sell_cols(const M& W, int64_t nc) {
    if constexpr (std::is_same<M, Dense>::value) return false;
    else return nc >= 2 && nc <= SMALL_N && (W.sell_ptr || W.bp_ptr);
}

// each_row_b1 for nc (2-4) columns packed in X (SmallCols::pack for W): SELL positions [p0, p1) (p0 a multiple
// of 8 in its block, p1 the end of a window or block) through rows8_cols, or slices of 16 through
// bp_rows16_cols where the matrix has the block-permute copy (then perhaps no SELL copy: a position off its
// slices, which no caller makes, is summed from the CSR row in the same order), f(row, q, sum) for each row
// and column q.
template <class I, class V, class F>
static inline void each_row_cols(const Csr<I, V>& W, int64_t p0, int64_t p1, const SmallCols& X, int64_t nc, F&& f) {
    with_small_n(nc, [&](auto n) {
        constexpr int NC = decltype(n)::value;
        for (int64_t p = p0; p < p1;) {
#if SD_BLOCK_PERMUTE
            if (W.bp_ptr) {
                int64_t in;
                const int64_t s = piece_of(p, W.sell_block, 16, &in);
                if (in % 16 == 0) {
                    float out[NC * 16];
                    bp_rows16_cols<NC>(W.bp_ptr, W.bp_depth, W.bp_idx, W.bp_val, s, W.cols, X.xt.data(), X.rows,
                                       out);
                    const int64_t m = std::min(std::min<int64_t>(16, p1 - p), W.sell_block - in);
                    for (int64_t k = 0; k < m; ++k) {
                        const int64_t row = W.row_at(p + k);
                        for (int q = 0; q < NC; ++q) f(row, q, out[q * 16 + k]);
                    }
                    p += m;
                    continue;
                }
            }
#endif
            if (!W.sell_ptr) {  // the CSR row, one column after another
                const int64_t row = W.row_at(p);
                const auto r = W.row(row);
                for (int q = 0; q < NC; ++q) f(row, q, dot1(r, X.xt.data() + q * X.rows, 1));
                ++p;
                continue;
            }
            vf8 acc[NC];
            rows8_cols<NC>(W, p, X.x4.data(), acc);
            for (int k = 0; k < 8 && p + k < p1; ++k) {
                const int64_t row = W.row_at(p + k);
                for (int q = 0; q < NC; ++q) f(row, q, acc[q][k]);
            }
            p += 8;
        }
    });
}

// The same sums for 8 * NV consecutive columns of X at once (lanes are columns). A CSR row of 32 or 64 columns
// also prefetches the X row of the entry PANEL_AHEAD on (in the rows after this one near its end: callers go
// through rows in order), which the hardware cannot guess: the loop alone 1.04x as fast at density 0.1 and
// 1.14x at 0.33 (10,000 x 650, 64 columns, one Zen 4 core: `benchmarks/microkernels.py --only spmm_panel`);
// scoring 32 x 64 tokens 1.02-1.06x (`kernels_ab.py`). Not in dot_block2 (a batch recurrence's pairs of gate
// rows): 0.97-0.98x there.
constexpr int64_t PANEL_AHEAD = 16;
template <int NV, class Row>
static inline void dot_block(const Row& row, const float* X, int64_t ldx, vf8* acc) {
    for (int q = 0; q < NV; ++q) acc[q] = vf8{};
    for (int64_t i = 0; i < row.n; ++i) {
        if constexpr (NV >= 4 && !std::is_same<Row, DenseRow>::value) {
            if (i + PANEL_AHEAD < row.avail) {
                const char* ahead = (const char*)(X + row.col(i + PANEL_AHEAD) * ldx);
                for (int k = 0; k < NV * 32; k += 64) __builtin_prefetch(ahead + k, 0, 3);
            }
        }
        const vf8 v = vsplat(row.val(i));
        const float* x = X + row.col(i) * ldx;
        for (int q = 0; q < NV; ++q) acc[q] = vfmadd(v, vload(x + 8 * q), acc[q]);
    }
}

// Two rows against the same 8 * NV columns, interleaved: twice the independent chains of dot_block (for 32
// columns, 8 instead of 4), each row's sums still in its own order.
template <int NV, class Row>
static inline void dot_block2(const Row& ra, const Row& rb, const float* X, int64_t ldx, vf8* acc_a, vf8* acc_b) {
    for (int q = 0; q < NV; ++q) acc_a[q] = acc_b[q] = vf8{};
    const int64_t n = ra.n < rb.n ? ra.n : rb.n;
    int64_t i = 0;
    for (; i < n; ++i) {
        const vf8 va = vsplat(ra.val(i)), vb = vsplat(rb.val(i));
        const float* xa = X + ra.col(i) * ldx;
        const float* xb = X + rb.col(i) * ldx;
        for (int q = 0; q < NV; ++q) {
            acc_a[q] = vfmadd(va, vload(xa + 8 * q), acc_a[q]);
            acc_b[q] = vfmadd(vb, vload(xb + 8 * q), acc_b[q]);
        }
    }
    for (int64_t j = i; j < ra.n; ++j) {
        const vf8 va = vsplat(ra.val(j));
        for (int q = 0; q < NV; ++q) acc_a[q] = vfmadd(va, vload(X + ra.col(j) * ldx + 8 * q), acc_a[q]);
    }
    for (int64_t j = i; j < rb.n; ++j) {
        const vf8 vb = vsplat(rb.val(j));
        for (int q = 0; q < NV; ++q) acc_b[q] = vfmadd(vb, vload(X + rb.col(j) * ldx + 8 * q), acc_b[q]);
    }
}

#if SD_BLOCK_PERMUTE
extern "C" int sd_has_avx512();
// Whether 64-column blocks run in 16-lane vectors (AVX-512 CPUs; SELFISH_KERNELS_ISA=avx2 turns it off).
static inline bool wide_blocks() {
    static const bool wide = sd_has_avx512() != 0;
    return wide;
}
// dot_block<8> plus b in four 16-lane vectors: lane l is column l's chain, the row's entries in order, one FMA
// each, so the same bits as the 8-lane loop. Half the loads and FMAs per entry; with X's panel on a cache line
// (floats) none of its loads splits a line. Scoring 32 x 64 tokens 1.07-1.11x (`kernels_ab.py`, medians). Under
// SD_BLOCK_PERMUTE because that is where the AVX-512 target functions are built, not because it uses that copy.
template <class Row>
SD_AVX512 __attribute__((noinline)) static void dot_block64_wide(const Row& row, const float* X, int64_t ldx,
                                                                 float b, float* y) {
    __m512 acc[4];
    for (int q = 0; q < 4; ++q) acc[q] = _mm512_setzero_ps();
    for (int64_t i = 0; i < row.n; ++i) {
        if constexpr (!std::is_same<Row, DenseRow>::value) {
            if (i + PANEL_AHEAD < row.avail) {
                const char* ahead = (const char*)(X + row.col(i + PANEL_AHEAD) * ldx);
                for (int k = 0; k < 256; k += 64) __builtin_prefetch(ahead + k, 0, 3);
            }
        }
        const __m512 v = _mm512_set1_ps(row.val(i));
        const float* x = X + row.col(i) * ldx;
        for (int q = 0; q < 4; ++q) acc[q] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + 16 * q), acc[q]);
    }
    const __m512 bv = _mm512_set1_ps(b);
    for (int q = 0; q < 4; ++q) _mm512_storeu_ps(y + 16 * q, _mm512_add_ps(acc[q], bv));
}
#endif

// One row times columns [0, nc) of X into y[0, nc) (plus b): blocks of 64, then 32, 16, 8, then the rest in one
// vector's lanes.
template <class Row>
static inline void dot_cols(const Row& row, const float* X, int64_t ldx, int64_t nc, float b, float* y) {
    int64_t j = 0;
    vf8 acc[8];
#if SD_BLOCK_PERMUTE
    if (wide_blocks())
        for (; j + 64 <= nc; j += 64) dot_block64_wide(row, X + j, ldx, b, y + j);
#endif
    for (; j + 64 <= nc; j += 64) {
        dot_block<8>(row, X + j, ldx, acc);
        for (int q = 0; q < 8; ++q) vstore(y + j + 8 * q, acc[q] + vsplat(b));
    }
    if (j + 32 <= nc) {
        dot_block<4>(row, X + j, ldx, acc);
        for (int q = 0; q < 4; ++q) vstore(y + j + 8 * q, acc[q] + vsplat(b));
        j += 32;
    }
    if (j + 16 <= nc) {
        dot_block<2>(row, X + j, ldx, acc);
        for (int q = 0; q < 2; ++q) vstore(y + j + 8 * q, acc[q] + vsplat(b));
        j += 16;
    }
    if (j + 8 <= nc) {
        dot_block<1>(row, X + j, ldx, acc);
        vstore(y + j, acc[0] + vsplat(b));
        j += 8;
    }
    if (j < nc) {  // the last nc % 8 columns in the lanes of one vector (the same chain per lane as dot1)
        const int n = (int)(nc - j);
        vf8 a = {};
        for (int64_t i = 0; i < row.n; ++i) a = vfmadd(vsplat(row.val(i)), vload_n(X + j + row.col(i) * ldx, n), a);
        vstore_lanes(y + j, 1, n, a + vsplat(b));
    }
}

// Dense rows at batch 1, eight at a time: rows [0, nr) (nr <= 8) of a row-major matrix (row stride ld) times
// x (n): one 8-lane accumulator per row along the row (the last n % 8 columns masked), x loaded once for all
// eight, then lane l = row l's lanes summed as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)); lanes past nr are 0.
// A row's sum does not depend on which rows share the call, so every batch-1 path gives the same bits.
// Dense weights are the exception to the canonical order (see README): at batch > 1 they use dot_block.
static inline vf8 lane_sums8(const vf8* a) {
#if SD_AVX2
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps((__m256)a[0], (__m256)a[1]), _mm256_hadd_ps((__m256)a[2], (__m256)a[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps((__m256)a[4], (__m256)a[5]), _mm256_hadd_ps((__m256)a[6], (__m256)a[7]));
    return (vf8)_mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
#else
    vf8 s;
    for (int l = 0; l < 8; ++l) {
        const vf8& v = a[l];
        s[l] = ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
    }
    return s;
#endif
}

static inline vf8 dense_rows8(const float* w, int64_t ld, int64_t n, const float* x, int nr) {
    const float* row[8];
    for (int l = 0; l < 8; ++l) row[l] = w + (l < nr ? l : 0) * ld;  // past nr: row 0 again, lane zeroed
    vf8 acc[8] = {};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const vf8 xv = vload(x + i);
        for (int l = 0; l < 8; ++l) acc[l] = vfmadd(vload(row[l] + i), xv, acc[l]);
    }
    if (i < n) {
        const int m = (int)(n - i);
        const vf8 xv = vload_n(x + i, m);
        for (int l = 0; l < 8; ++l) acc[l] = vfmadd(vload_n(row[l] + i, m), xv, acc[l]);
    }
    vf8 s = lane_sums8(acc);
    for (int l = nr; l < 8; ++l) s[l] = 0.f;
    return s;
}

// each_row_b1 for a matrix the export kept dense: rows in order, eight at a time through dense_rows8; a column
// of X that is not contiguous (ldx > 1: one of a few columns, as spmm's, the decoder's and a small batch's) is
// copied first, so every batch-1 path sums a row in the same order.
template <class F>
static inline void each_row_b1(const Dense& W, int64_t p0, int64_t p1, const float* X, int64_t ldx, F&& f) {
    floats xc(ldx != 1 ? W.cols : 0);
    if (ldx != 1) {
        for (int64_t k = 0; k < W.cols; ++k) xc[k] = X[k * ldx];
        X = xc.data();
    }
    for (int64_t p = p0; p < p1; p += 8) {
        const int nr = (int)std::min<int64_t>(8, p1 - p);
        const vf8 d = dense_rows8(W.w + p * W.cols, W.cols, W.cols, X, nr);
        for (int k = 0; k < nr; ++k) f(p + k, d[k]);
    }
}

#if SD_BLOCK_PERMUTE
// dot_block2<4> plus the biases in 16-lane vectors: two rows against 32 columns, lane l column l's chain, each
// row's entries in order, one FMA each: the same bits as the 8-lane loop, in half the loads and FMAs.
template <class Row>
SD_AVX512 __attribute__((noinline)) static void dot_block2_32_wide(const Row& ra, const Row& rb, const float* X,
                                                                   int64_t ldx, float ba, float bb, float* ya,
                                                                   float* yb) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    const int64_t n = ra.n < rb.n ? ra.n : rb.n;
    int64_t i = 0;
    for (; i < n; ++i) {
        const __m512 va = _mm512_set1_ps(ra.val(i)), vb = _mm512_set1_ps(rb.val(i));
        const float* xa = X + ra.col(i) * ldx;
        const float* xb = X + rb.col(i) * ldx;
        a0 = _mm512_fmadd_ps(va, _mm512_loadu_ps(xa), a0);
        a1 = _mm512_fmadd_ps(va, _mm512_loadu_ps(xa + 16), a1);
        b0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(xb), b0);
        b1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(xb + 16), b1);
    }
    for (int64_t j = i; j < ra.n; ++j) {
        const __m512 va = _mm512_set1_ps(ra.val(j));
        const float* xa = X + ra.col(j) * ldx;
        a0 = _mm512_fmadd_ps(va, _mm512_loadu_ps(xa), a0);
        a1 = _mm512_fmadd_ps(va, _mm512_loadu_ps(xa + 16), a1);
    }
    for (int64_t j = i; j < rb.n; ++j) {
        const __m512 vb = _mm512_set1_ps(rb.val(j));
        const float* xb = X + rb.col(j) * ldx;
        b0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(xb), b0);
        b1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(xb + 16), b1);
    }
    const __m512 bav = _mm512_set1_ps(ba), bbv = _mm512_set1_ps(bb);
    _mm512_storeu_ps(ya, _mm512_add_ps(a0, bav));
    _mm512_storeu_ps(ya + 16, _mm512_add_ps(a1, bav));
    _mm512_storeu_ps(yb, _mm512_add_ps(b0, bbv));
    _mm512_storeu_ps(yb + 16, _mm512_add_ps(b1, bbv));
}
#endif

// dot_cols of two rows at once: 32-column blocks through dot_block2 (16-lane vectors on AVX-512 CPUs), the
// rest row by row.
template <class Row>
static inline void dot_cols2(const Row& ra, const Row& rb, const float* X, int64_t ldx, int64_t nc, float ba,
                             float bb, float* ya, float* yb) {
    int64_t j = 0;
    vf8 acc_a[4], acc_b[4];
#if SD_BLOCK_PERMUTE
    if (wide_blocks())
        for (; j + 32 <= nc; j += 32) dot_block2_32_wide(ra, rb, X + j, ldx, ba, bb, ya + j, yb + j);
#endif
    for (; j + 32 <= nc; j += 32) {
        dot_block2<4>(ra, rb, X + j, ldx, acc_a, acc_b);
        for (int q = 0; q < 4; ++q) {
            vstore(ya + j + 8 * q, acc_a[q] + vsplat(ba));
            vstore(yb + j + 8 * q, acc_b[q] + vsplat(bb));
        }
    }
    if (j < nc) {
        dot_cols(ra, X + j, ldx, nc - j, ba, ya + j);
        dot_cols(rb, X + j, ldx, nc - j, bb, yb + j);
    }
}
