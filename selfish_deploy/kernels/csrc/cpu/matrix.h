// Read-only views of a weight matrix as the export stores it, and the dot products every kernel shares.
//
//   CSR:   row r is values[crow[r]:crow[r+1]] at columns col[crow[r]:crow[r+1]]
//          col: uint16 or int32 (read as stored, never widened in memory); values: fp32, fp16 or bf16
//   dense: row-major fp32 (matrices that the export kept dense, density 1.0)
//
// The canonical order of a row's sum (what makes a column's result independent of how many columns are
// computed with it): the row's stored entries in order, one multiply-add each (fused where the CPU has FMA).
// dot1, dot1_rows8 (8 rows, one column) and dot_block (8 * NV columns in vector lanes) follow it exactly;
// the throughput comes from independent chains: 8 rows at batch 1, 64 columns per pass over a row otherwise.
#pragma once
#include <cstdint>

#include "simd.h"

extern "C" {
struct sd_matrix {
    int64_t rows, cols;
    int32_t layout;      // 0: CSR, 1: dense fp32
    int32_t index_bits;  // 16 or 32 (CSR column indices)
    int32_t value_type;  // 0: fp32, 1: fp16, 2: bf16
    int32_t reserved;
    const int32_t* crow;
    const void* col;
    const void* val;
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

// One row of a CSR matrix: n entries, column col(i), value val(i).
template <class I, class V>
struct CsrRow {
    const I* c;
    const V* v;
    int64_t n;
    int64_t col(int64_t i) const { return (int64_t)c[i]; }
    float val(int64_t i) const { return load_value(v, i); }
};

template <class I, class V>
struct Csr {
    const int32_t* crow;
    const I* col;
    const V* val;
    int64_t rows, cols;
    explicit Csr(const sd_matrix& m)
        : crow(m.crow), col((const I*)m.col), val((const V*)m.val), rows(m.rows), cols(m.cols) {}
    CsrRow<I, V> row(int64_t r) const {
        int64_t b = crow[r];
        return {col + b, val + b, (int64_t)crow[r + 1] - b};
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

// dot1 of 8 consecutive rows [r0, r0 + 8) with one column of X: out[k] equals dot1(row r0 + k) bit for bit,
// but the 8 sums are independent chains, so the loop runs at the loads' pace instead of the adds' latency.
template <class M>
static inline void dot1_rows8(const M& W, int64_t r0, const float* X, int64_t ldx, float* out) {
    decltype(W.row(r0)) rows[8] = {W.row(r0), W.row(r0 + 1), W.row(r0 + 2), W.row(r0 + 3),
                                   W.row(r0 + 4), W.row(r0 + 5), W.row(r0 + 6), W.row(r0 + 7)};
    int64_t m = rows[0].n, longest = rows[0].n;
    for (int k = 1; k < 8; ++k) {
        m = rows[k].n < m ? rows[k].n : m;
        longest = rows[k].n > longest ? rows[k].n : longest;
    }
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f, s4 = 0.f, s5 = 0.f, s6 = 0.f, s7 = 0.f;
    for (int64_t i = 0; i < m; ++i) {
        s0 = fmadd(rows[0].val(i), X[rows[0].col(i) * ldx], s0);
        s1 = fmadd(rows[1].val(i), X[rows[1].col(i) * ldx], s1);
        s2 = fmadd(rows[2].val(i), X[rows[2].col(i) * ldx], s2);
        s3 = fmadd(rows[3].val(i), X[rows[3].col(i) * ldx], s3);
        s4 = fmadd(rows[4].val(i), X[rows[4].col(i) * ldx], s4);
        s5 = fmadd(rows[5].val(i), X[rows[5].col(i) * ldx], s5);
        s6 = fmadd(rows[6].val(i), X[rows[6].col(i) * ldx], s6);
        s7 = fmadd(rows[7].val(i), X[rows[7].col(i) * ldx], s7);
    }
    float s[8] = {s0, s1, s2, s3, s4, s5, s6, s7};
    for (int64_t i = m; i < longest; ++i) {  // the longer rows' tails, still interleaved
        for (int k = 0; k < 8; ++k)
            if (i < rows[k].n) s[k] = fmadd(rows[k].val(i), X[rows[k].col(i) * ldx], s[k]);
    }
    for (int k = 0; k < 8; ++k) out[k] = s[k];
}

// The same sums for 8 * NV consecutive columns of X at once (lanes are columns).
template <int NV, class Row>
static inline void dot_block(const Row& row, const float* X, int64_t ldx, vf8* acc) {
    for (int q = 0; q < NV; ++q) acc[q] = vf8{};
    for (int64_t i = 0; i < row.n; ++i) {
        const vf8 v = vsplat(row.val(i));
        const float* x = X + row.col(i) * ldx;
        for (int q = 0; q < NV; ++q) acc[q] = vfmadd(v, vload(x + 8 * q), acc[q]);
    }
}

// One row times columns [0, nc) of X into y[0, nc) (plus b): blocks of 64, then 8, then single columns.
template <class Row>
static inline void dot_cols(const Row& row, const float* X, int64_t ldx, int64_t nc, float b, float* y) {
    int64_t j = 0;
    vf8 acc[8];
    for (; j + 64 <= nc; j += 64) {
        dot_block<8>(row, X + j, ldx, acc);
        for (int q = 0; q < 8; ++q) vstore(y + j + 8 * q, acc[q] + vsplat(b));
    }
    for (; j + 8 <= nc; j += 8) {
        dot_block<1>(row, X + j, ldx, acc);
        vstore(y + j, acc[0] + vsplat(b));
    }
    for (; j < nc; ++j) y[j] = dot1(row, X + j, ldx) + b;
}

// Dense rows at batch 1: contiguous, so vectorised along the row (32 partial sums, then a fixed tree).
// Dense weights are the exception to the canonical order (see README): at batch > 1 they use dot_block.
static inline float dense_dot1(const float* w, const float* x, int64_t n) {
    vf8 a = {}, b = {}, c = {}, d = {};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a = vfmadd(vload(w + i), vload(x + i), a);
        b = vfmadd(vload(w + i + 8), vload(x + i + 8), b);
        c = vfmadd(vload(w + i + 16), vload(x + i + 16), c);
        d = vfmadd(vload(w + i + 24), vload(x + i + 24), d);
    }
    vf8 s = (a + b) + (c + d);
    float t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; ++i) t = fmadd(w[i], x[i], t);
    return t;
}
