/* Sparse Pearson sums on the CPU, one buffer of tokens at a time (float32 features).
 *
 * Same maths as universality/compare/pearson/numba_kernels.py (its docstring has the details); the
 * numba path stays as the fallback where no compiler is found, and for float64 features.
 * Python threads run these functions in parallel (ctypes releases the GIL); every function
 * works on a disjoint range, so there are no races and every sum runs in token order
 * (deterministic, bitwise equal to the numba path: a float32 x float32 product is exact in
 * float64).
 *
 * Per buffer (universality/compare/pearson/native.py: NativeScatter.add drives it):
 *   1. pearson_count (with a check of the buffer, below), then pearson_fill: A's CSR ->
 *      feature-major (CSC) records {int32 token, float32 value}, 8 bytes each, in token order
 *      within a feature (a counting sort; one 8-byte record instead of the numba path's
 *      three arrays: one write stream per feature).
 *      pearson_moments beside it: B's check, per-feature sums, and indices as uint16.
 *   2. pearson_scatter: S[i, j] += a[t, i] * b[t, j] for A features i0..i1, which also sums
 *      A's moments from the records. Indices within one B row are distinct (canonical CSR),
 *      so with AVX-512 a row update is a gather of 8 cells, multiply-add, scatter back, with
 *      no conflict to resolve.
 * Measured against the numba kernel in one process (2 threads, F = 4096, 100k tokens, mean
 * L0 48, median of interleaved runs): 1.37-1.48x faster end to end of the stream; at F = 24576,
 * 1.09x.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#endif

#define PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 2)

typedef struct {
    int32_t tok;  /* token (row) within the buffer */
    float val;    /* A's value */
} entry_t;

/* ---- 1. transpose ---------------------------------------------------------------------- */

/* Buffers skip the Python-side checks (scipy's canonical-format test and NumPy's isfinite
 * cost 3% of the stream at F = 4096): the first pass over each side checks instead.
 * Codes: 0 canonical CSR (every row's indices strictly increase within [0, n_feat), values
 * finite), 1 a row unsorted or repeating an index (the caller sums the duplicates and
 * retries), 2 an index out of range (an error: the kernels would write out of bounds), 3 a NaN
 * or inf value (an error). */
#define CHECK_ENTRY(c, prev, canonical, finite, v, n_feat)                                       \
    do {                                                                                        \
        if ((uint64_t)(int64_t)(c) >= (uint64_t)(n_feat))                                      \
            return 2;                                                                           \
        canonical &= (c) > (prev);                                                              \
        finite &= isfinite(v);                                                                  \
        prev = (c);                                                                             \
    } while (0)

static int check_rows(const int64_t *restrict indptr, const int32_t *restrict indices,
                      const float *restrict data, int64_t n_rows, int64_t n_feat)
{
    int canonical = 1, finite = 1;
    for (int64_t r = 0; r < n_rows; r++) {
        int64_t prev = -1;
        for (int64_t p = indptr[r]; p < indptr[r + 1]; p++)
            CHECK_ENTRY(indices[p], prev, canonical, finite, data[p], n_feat);
    }
    return !finite ? 3 : (canonical ? 0 : 1);
}

/* counts[c] = number of entries of feature c (counts zeroed by the caller), with the check
 * above (returns its code; counts are valid only for 0). */
int pearson_count(const int64_t *restrict indptr, const int32_t *restrict indices,
                  const float *restrict data, int64_t n_rows, int64_t n_feat, int64_t *restrict counts)
{
    int canonical = 1, finite = 1;
    for (int64_t r = 0; r < n_rows; r++) {
        int64_t prev = -1;
        for (int64_t p = indptr[r]; p < indptr[r + 1]; p++) {
            const int32_t c = indices[p];
            CHECK_ENTRY(c, prev, canonical, finite, data[p], n_feat);
            counts[c]++;
        }
    }
    return !finite ? 3 : (canonical ? 0 : 1);
}

/* A's entries of features c0..c1 into their CSC slots (nxt[c]: the next slot of feature c,
 * advanced), rows in order, so each feature's records are in token order. Parallel tasks take
 * disjoint feature ranges (each reads all entries, writes only its own features' slots): token
 * ranges would have two threads write the same cache lines of every rare feature.
 * restrict + one 8-byte store per record: the compiler otherwise reloads the loop bounds after
 * every store. */
void pearson_fill(const int64_t *restrict indptr, const int32_t *restrict indices,
                  const float *restrict data, int64_t n_rows, int64_t c0, int64_t c1,
                  int64_t *restrict nxt, entry_t *restrict out)
{
    const uint32_t width = (uint32_t)(c1 - c0);
    for (int64_t r = 0; r < n_rows; r++) {
        const int64_t p1 = indptr[r + 1];
        for (int64_t p = indptr[r]; p < p1; p++) {
            const int32_t c = indices[p];
            if ((uint32_t)(c - c0) < width) {
                const entry_t e = {(int32_t)r, data[p]};
                out[nxt[c]++] = e;
            }
        }
    }
}

/* ---- 2. moments ------------------------------------------------------------------------ */

typedef struct {
    double sx, sxx, vmin, vmax;
    int64_t nnz, stored;
    double pad[2];  /* one 64-byte line per feature */
} moments_t;

/* Per-feature sums of B's entries (entry order = token order) for features j0..j1, into an
 * array-of-structs copy tmp [n_feat] of the six accumulators (one cache line per entry
 * instead of six: 2x faster), loaded from sx .. vmax; pearson_moments_commit writes them back
 * once every task has succeeded, so a buffer that fails its check changes nothing. With
 * `check`, first the check above (returns its code); with idx16, also all indices as uint16
 * (the scatter's narrow stream). A's moments are summed by the scatter, which walks each A
 * feature's entries in token order. */
int pearson_moments(const int64_t *restrict indptr, const int32_t *restrict indices,
                    const float *restrict data, int64_t n_rows, int64_t n_feat, int64_t j0,
                    int64_t j1, const double *sx, const double *sxx, const int64_t *nnz,
                    const int64_t *stored, const double *vmin, const double *vmax,
                    moments_t *restrict tmp, uint16_t *restrict idx16, int check)
{
    if (check) {
        const int code = check_rows(indptr, indices, data, n_rows, n_feat);
        if (code)
            return code;
    }
    const int64_t n = indptr[n_rows];
    const uint32_t width = (uint32_t)(j1 - j0);
    for (int64_t j = j0; j < j1; j++) {
        moments_t *m = tmp + j;
        m->sx = sx[j], m->sxx = sxx[j], m->vmin = vmin[j], m->vmax = vmax[j];
        m->nnz = nnz[j], m->stored = stored[j];
    }
    if (idx16 != NULL)
        for (int64_t p = 0; p < n; p++)
            idx16[p] = (uint16_t)indices[p];
    for (int64_t p = 0; p < n; p++) {
        if ((uint32_t)(indices[p] - j0) >= width)  /* also skips what a failed check rejects */
            continue;
        moments_t *m = tmp + indices[p];
        const double v = data[p];
        m->sx += v;
        m->sxx += v * v;
        m->nnz += v != 0.0;
        m->stored += 1;
        m->vmin = v < m->vmin ? v : m->vmin;
        m->vmax = v > m->vmax ? v : m->vmax;
    }
    return 0;
}

void pearson_moments_commit(const moments_t *restrict tmp, int64_t n_feat, double *sx, double *sxx,
                            int64_t *nnz, int64_t *stored, double *vmin, double *vmax)
{
    for (int64_t j = 0; j < n_feat; j++) {
        const moments_t *m = tmp + j;
        sx[j] = m->sx, sxx[j] = m->sxx, vmin[j] = m->vmin, vmax[j] = m->vmax;
        nnz[j] = m->nnz, stored[j] = m->stored;
    }
}

/* A's running sums for one feature, kept in registers while its row is summed. */
typedef struct {
    double sx, sxx, vmin, vmax;
    int64_t nnz;
} acc_t;

static inline void acc_load(acc_t *m, const double *sx, const double *sxx, const int64_t *nnz,
                            const double *vmin, const double *vmax, int64_t i)
{
    m->sx = sx[i], m->sxx = sxx[i], m->nnz = nnz[i], m->vmin = vmin[i], m->vmax = vmax[i];
}

static inline void acc_add(acc_t *m, double v)
{
    m->sx += v;
    m->sxx += v * v;
    m->nnz += v != 0.0;
    m->vmin = v < m->vmin ? v : m->vmin;
    m->vmax = v > m->vmax ? v : m->vmax;
}

static inline void acc_store(const acc_t *m, double *sx, double *sxx, int64_t *nnz, int64_t *stored,
                             double *vmin, double *vmax, int64_t i, int64_t count)
{
    sx[i] = m->sx, sxx[i] = m->sxx, nnz[i] = m->nnz, vmin[i] = m->vmin, vmax[i] = m->vmax;
    stored[i] += count;
}

/* ---- 3. scatter ------------------------------------------------------------------------ */

/* B's entry indices are uint16 when n_b <= 65536 (6 instead of 8 bytes of B read per
 * product: +15-20% measured at F = 4096), else int32; `wide` says which. The branches on it
 * are loop-invariant (the compiler unswitches them). */
static inline uint32_t b_index(const void *bidx, int64_t k, int wide)
{
    return wide ? (uint32_t)((const int32_t *)bidx)[k] : (uint32_t)((const uint16_t *)bidx)[k];
}

/* The S cells that the entry `s_ahead` later will update, when s_ahead > 0: pays once a row
 * of S is too wide for L1 (its cells, scattered at random, would each miss). */
static inline void prefetch_cells(const double *row, int64_t p, int64_t row_end, const entry_t *ent,
                                  const int64_t *b_indptr, const void *bidx, int wide, int s_ahead)
{
    if (s_ahead > 0 && p + s_ahead < row_end) {
        const int32_t t = ent[p + s_ahead].tok;
        for (int64_t k = b_indptr[t]; k < b_indptr[t + 1]; k++)
            PREFETCH(row + b_index(bidx, k, wide));
    }
}

/* Row i+1 of S, spread over row i's entries, for rows narrow enough to sit in L1: such a row
 * is mostly touched by its feature's tokens, and its cells, scattered at random, would
 * otherwise each miss (+8% on SAE-like data at F_B = 4096, +26% on uniform data). Only when
 * row i+1 has at least `min_entries` entries (0: off). */
typedef struct {
    const char *next;
    int64_t lines, per, done;
} row_prefetch_t;

static inline void row_prefetch_start(row_prefetch_t *rp, const double *S, int64_t n_b,
                                      const int64_t *colptr, int64_t i, int64_t i1, int64_t min_entries)
{
    const int64_t cnt = colptr[i + 1] - colptr[i];
    rp->lines = (n_b * 8 + 63) / 64;
    rp->next = (const char *)S;
    rp->per = 0;
    rp->done = rp->lines;  /* nothing to do unless set below */
    if (min_entries > 0 && i + 1 < i1 && cnt > 0 && colptr[i + 2] - colptr[i + 1] >= min_entries) {
        rp->next = (const char *)(S + (i + 1) * n_b);
        rp->per = (rp->lines + cnt - 1) / cnt;
        rp->done = 0;
    }
}

static inline void row_prefetch_step(row_prefetch_t *rp)
{
    for (int64_t q = 0; q < rp->per && rp->done < rp->lines; q++, rp->done++)
        __builtin_prefetch(rp->next + 64 * rp->done, 1, 3);
}

/* row[j] += a * b_j over B's entries s..e of one token: scalar, four cells per step (the
 * indices are distinct, so four loads before four stores is safe and overlaps the latencies). */
static inline void add_row_scalar(double *restrict row, double a, const void *bidx, int wide,
                                  const float *bval, int64_t s, int64_t e)
{
    int64_t k = s;
    for (; k + 4 <= e; k += 4) {
        const uint32_t j0 = b_index(bidx, k, wide), j1 = b_index(bidx, k + 1, wide);
        const uint32_t j2 = b_index(bidx, k + 2, wide), j3 = b_index(bidx, k + 3, wide);
        const double v0 = row[j0] + a * bval[k], v1 = row[j1] + a * bval[k + 1];
        const double v2 = row[j2] + a * bval[k + 2], v3 = row[j3] + a * bval[k + 3];
        row[j0] = v0;
        row[j1] = v1;
        row[j2] = v2;
        row[j3] = v3;
    }
    for (; k < e; k++)
        row[b_index(bidx, k, wide)] += a * bval[k];
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define HAVE_AVX512 1

static inline __m256i b_index8(const void *bidx, int64_t k, int wide, __mmask8 m)
{
    if (wide)
        return _mm256_maskz_loadu_epi32(m, (const int32_t *)bidx + k);
    return _mm256_cvtepu16_epi32(_mm_maskz_loadu_epi16(m, (const uint16_t *)bidx + k));
}

/* The same with AVX-512: gather 8 cells, multiply-add, scatter back (no conflicts to resolve). */
static inline void add_row_avx512(double *row, double a, const void *bidx, int wide,
                                  const float *bval, int64_t s, int64_t e)
{
    const __m512d va = _mm512_set1_pd(a);
    for (int64_t k = s; k < e; k += 8) {
        const __mmask8 m = e - k >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (e - k)) - 1u);
        const __m256i j = b_index8(bidx, k, wide, m);
        const __m512d b = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, bval + k));
        __m512d r = _mm512_mask_i32gather_pd(_mm512_setzero_pd(), m, j, row, 8);
        /* mul then add (not FMA): the scalar variant's rounding for any input */
        r = _mm512_add_pd(r, _mm512_mul_pd(va, b));
        _mm512_mask_i32scatter_pd(row, m, j, r, 8);
    }
}
#else
#define HAVE_AVX512 0
#endif

/* S [.., n_b] float64 (C order); rows i0..i1 get their products, and A features i0..i1 their
 * moments (sx .. vmax [n_a], updated). B's entries: indices `bidx` (uint16 if wide == 0, else
 * int32), values `bval` float32, rows `b_indptr` (an empty B still sums A's moments).
 * variant 1 = AVX-512 where compiled in, else (and for 0) scalar. s_ahead: prefetch distance
 * for S cells (0: off); row_min_entries: prefetch row i+1 during row i when it has that many
 * entries (0: off). */
void pearson_scatter(double *S, int64_t n_b, const int64_t *colptr, const entry_t *ent,
                     const int64_t *b_indptr, const void *bidx, int wide, const float *bval,
                     int64_t i0, int64_t i1, int s_ahead, int64_t row_min_entries, int variant,
                     double *sx, double *sxx, int64_t *nnz, int64_t *stored, double *vmin, double *vmax)
{
    const int avx = HAVE_AVX512 && variant == 1;  /* loop-invariant: the compiler unswitches it */
    (void)avx;
    for (int64_t i = i0; i < i1; i++) {
        double *row = S + i * n_b;
        row_prefetch_t rp;
        row_prefetch_start(&rp, S, n_b, colptr, i, i1, row_min_entries);
        acc_t mom;
        acc_load(&mom, sx, sxx, nnz, vmin, vmax, i);
        for (int64_t p = colptr[i]; p < colptr[i + 1]; p++) {
            prefetch_cells(row, p, colptr[i + 1], ent, b_indptr, bidx, wide, s_ahead);
            row_prefetch_step(&rp);
            const double a = ent[p].val;
            acc_add(&mom, a);
            const int64_t s = b_indptr[ent[p].tok], e = b_indptr[ent[p].tok + 1];
#if HAVE_AVX512
            if (avx) {
                add_row_avx512(row, a, bidx, wide, bval, s, e);
                continue;
            }
#endif
            add_row_scalar(row, a, bidx, wide, bval, s, e);
        }
        acc_store(&mom, sx, sxx, nnz, stored, vmin, vmax, i, colptr[i + 1] - colptr[i]);
    }
}
