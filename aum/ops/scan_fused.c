/* The fused CPU selective scan (forward and backward), called from aum/ops/scan_fused.py through ctypes.
 *
 * What it computes, for every batch b and channel e (of E; channel e reads B / C group g = e / (E/G)):
 *
 *     d_t = softplus(delta_t + bias)   (or delta_t + bias without the softplus; bias = 0 when absent)
 *     h_t = exp(d_t * A) * h_{t-1} + d_t * B_t * u_t                (h: N values per channel, h_{-1} = 0)
 *     s_t = sum_n C_t[n] * h_t[n],     y_t = (s_t + D * u_t) * silu(z_t)   (D = 0 / no gate when absent)
 *
 * and, given dL/dy, the gradients: through the gate gs_t = gy_t silu(z_t), gz_t = gy_t (s_t + D u_t) silu'(z_t);
 * then the adjoint recurrence (backwards in time)
 *
 *     gh_t = C_t * gs_t + exp(d_{t+1} * A) * gh_{t+1}
 *     gu_t = d_t * sum_n gh_t B_t + D gs_t       gd_t = u_t * sum_n gh_t B_t + sum_n A gh_t h_{t-1} exp(d_t A)
 *     gdelta_t = gd_t * softplus'(delta_t + bias)    gbias = sum_t gdelta_t     gD = sum_t gs_t u_t
 *     gA   = sum_t d_t gh_t h_{t-1} exp(d_t A)
 *     gB_t = sum_{e in g} d_t u_t gh_t     gC_t = sum_{e in g} gs_t h_t
 *
 * Memory layout. u, delta, z, y and their gradients are [batch, E, L] and B, C are [batch, G, N, L], each
 * passed as a `view` (data pointer + one stride per dimension, in elements, any sign), so the caller hands
 * over PyTorch's own strides: a transposed [batch, L, E] tensor (channels innermost, what a Linear layer
 * produces) is read as it lies, no copies, and a negative time stride scans the sequence backwards. Dense
 * row-major buffers: A [E, N], D, bias [E];
 *     ckpt: [units, n_chunks, N, LANES]         the state at the start of every chunk of `chunk` steps
 *     gA_part: [batch, E, N], gD_part, gbias_part: [batch, E]   per-batch partial sums (the caller sums them)
 *     gB_part, gC_part: [batch, G, parts, N, L] partial sums over runs of the channel blocks of each group,
 *                                               in scan order (the caller flips them for a backward scan)
 *
 * Work is split into units of LANES channels of one group of one batch element (KB = ceil((E/G) / LANES)
 * blocks per group), spread over OpenMP threads. Inside a unit the time axis is walked in chunks: a chunk
 * of u / delta / z / gy is gathered into a small time-major [t][LANES] tile (channels innermost), so that the
 * loops over channels are unit-stride and vectorise, `exp`, the softplus and the sigmoid included (exp2_f32 /
 * exp2_f64 below are branch-free polynomials, so no vector math library and no -ffast-math are needed).
 * Tail lanes past the block's last channel hold zeros and are never written back. Where the compiler targets
 * AVX-512 (-march=native on such a CPU) the float32 inner loops - the chunk recurrences forward and backward,
 * the softplus and the gate - are written with intrinsics, one 16-float register per time step and state
 * (SCAN_AVX512 below); the plain C loops stay for every other target and for float64, and compute the same
 * formulas (tests/aum/ops/test_scan_fused.py builds both and checks each against the reference).
 *
 * The backward recomputes each chunk's states from the checkpoint the forward stored at its start, so
 * memory is ceil(L / chunk) states per channel, never L * N. The file includes itself twice to define the
 * float32 (suffix f32) and float64 (suffix f64) kernels from one body.
 */
#ifndef SCAN_REAL

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16

/* A strided tensor: element (i0, i1, i2, i3) lies at data[i0 * s[0] + i1 * s[1] + i2 * s[2] + i3 * s[3]]. */
typedef struct {
    void *data;
    int64_t s[4];
} aum_view;

/* 2^t = 2^k * 2^f, k = round(t), f = t - k in [-1/2, 1/2] (exact); 2^f = exp(f ln 2) by its Taylor series
 * (degree 7 for float: error < 6e-9 relative; degree 12 for double: < 2e-16); 2^k built in the exponent bits.
 * Adding 1.5 * 2^(mantissa bits) rounds t to an integer k that then sits in the low mantissa bits of
 * `shifted`; shifting (those bits + exponent bias) into the exponent field keeps exactly k + bias. t is first
 * clamped to the normal range ([-126, 127] for float, [-1022, 1023] for double): below it the result is the
 * smallest normal number instead of a denormal or 0, above it the largest power of two instead of +inf
 * (the scan's decays exp(delta * A) have delta > 0 > A, so t <= 0). */
/* 2^f on [-1/2, 1/2]: the degree-5 minimax polynomial for relative error (7.5e-8; 2.4e-7 in float32 Horner). */
#define EXP2_C5 1.3276471519102426e-03f
#define EXP2_C4 9.6755413306664480e-03f
#define EXP2_C3 5.5507132749621570e-02f
#define EXP2_C2 2.4022119723934282e-01f
#define EXP2_C1 6.9314696706386420e-01f
#define EXP2_C0 1.0000000716546555f

static inline float exp2_f32(float t) {
    t = t > -126.0f ? t : -126.0f;               /* two plain selects: vmaxps / vminps */
    t = t < 127.0f ? t : 127.0f;
    const float shifted = t + 12582912.0f;
    const float k = shifted - 12582912.0f;
    const float f = t - k;
    float p = EXP2_C5;
    p = p * f + EXP2_C4;
    p = p * f + EXP2_C3;
    p = p * f + EXP2_C2;
    p = p * f + EXP2_C1;
    p = p * f + EXP2_C0;
    uint32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    bits = (bits + 127u) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline double exp2_f64(double t) {
    t = t > -1022.0 ? t : -1022.0;
    t = t < 1023.0 ? t : 1023.0;
    const double shifted = t + 6755399441055744.0;
    const double k = shifted - 6755399441055744.0;
    const double f = t - k;
    double p = 2.5678435993488196e-11;
    p = p * f + 4.4455382718708100e-10;
    p = p * f + 7.0549116208011210e-09;
    p = p * f + 1.0178086009239696e-07;
    p = p * f + 1.3215486790144305e-06;
    p = p * f + 1.5252733804059838e-05;
    p = p * f + 1.5403530393381606e-04;
    p = p * f + 1.3333558146428441e-03;
    p = p * f + 9.6181291076284770e-03;
    p = p * f + 5.5504108664821576e-02;
    p = p * f + 2.4022650695910071e-01;
    p = p * f + 6.9314718055994531e-01;
    p = p * f + 1.0;
    uint64_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    bits = (bits + 1023u) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

#if defined(__AVX512F__) && !defined(AUM_SCAN_PORTABLE)
/* With AVX-512 (one register = LANES = 16 floats) the float32 forward chunk is written with intrinsics:
 * 2^t = scalef(2^f, k) for k = round(t), f = t - k. vscalefps multiplies by 2^k with the exponent range handled
 * in hardware (t far below -126 gives 0, far above 127 gives inf), so it needs no clamps and no bit tricks;
 * same polynomial as exp2_f32. AUM_SCAN_PORTABLE (or a compiler without AVX-512) selects the plain C loops. */
#include <immintrin.h>
#define SCAN_AVX512 1
static inline __m512 exp2_v16(__m512 t) {
    const __m512 k = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, k);
    __m512 p = _mm512_set1_ps(EXP2_C5);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C0));
    return _mm512_scalef_ps(p, k);
}

/* out[i] = sum of the 16 lanes of r[i], i < 16, for 16 rows r[i] = rows + 16 i: a transpose-and-add tree (45
 * shuffles and adds instead of 16 separate horizontal sums). */
static inline __m512 row_sums_v16(const float *rows) {
    __m512 t[8], u[4], v[2];
    for (int i = 0; i < 8; ++i) {              /* per 128-bit quarter: [a0+a2, b0+b2, a1+a3, b1+b3] */
        const __m512 a = _mm512_loadu_ps(rows + 32 * i), b = _mm512_loadu_ps(rows + 32 * i + 16);
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    }
    for (int i = 0; i < 4; ++i)                /* per quarter: the quarter's sum of rows 4i .. 4i+3 */
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 2; ++i)                /* quarters: rows 8i..8i+3 (halves 0, 1), rows 8i+4..8i+7 */
        v[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* sigmoid(x) from e = exp(-|x|): 1 / (1 + e) for x > 0, e / (1 + e) otherwise. */
static inline __m512 sigmoid_from_e_v16(__m512 x, __m512 e) {
    const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
    return _mm512_div_ps(_mm512_mask_blend_ps(pos, e, _mm512_set1_ps(1.0f)), _mm512_add_ps(e, _mm512_set1_ps(1.0f)));
}

/* exp(-|x|), the one exponential that softplus(x), its derivative and sigmoid(x) share. */
static inline __m512 exp_neg_abs_v16(__m512 x) {
    const __m512 neg_abs = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x));
    return exp2_v16(_mm512_mul_ps(neg_abs, _mm512_set1_ps((float)1.4426950408889634)));
}
#else
#define SCAN_AVX512 0
#endif

#define LOG2E 1.4426950408889634
#define LN2 0.6931471805599453

/* Lanes per channel block: the Python side needs it to size the checkpoint and partial-sum buffers. */
int aum_scan_lanes(void) { return LANES; }

/* SCAN_ATANH_TERMS: terms of the atanh series in the softplus (relative error below 9^-(terms+1)). */
#define SCAN_REAL float
#define SCAN_EXP2 exp2_f32
#define SCAN_ATANH_TERMS 6
#define SCAN_NAME(name) name##_f32
#define SCAN_VEC SCAN_AVX512
#include __FILE__
#undef SCAN_REAL
#undef SCAN_EXP2
#undef SCAN_ATANH_TERMS
#undef SCAN_NAME
#undef SCAN_VEC

#define SCAN_REAL double
#define SCAN_EXP2 exp2_f64
#define SCAN_ATANH_TERMS 16
#define SCAN_NAME(name) name##_f64
#define SCAN_VEC 0
#include __FILE__

#else  /* the body, once per dtype */

#define real SCAN_REAL

/* Where one unit (LANES channels of one group of one batch element) sits. */
typedef struct {
    int64_t b, g, k, e0, w;       /* batch, group, block in group, first channel, channels in use (<= LANES) */
} SCAN_NAME(unit_t);

static SCAN_NAME(unit_t) SCAN_NAME(locate)(int64_t unit, int64_t E, int64_t G) {
    int64_t per_group = E / G, kb = (per_group + LANES - 1) / LANES;
    SCAN_NAME(unit_t) p;
    p.b = unit / (G * kb);
    p.g = (unit / kb) % G;
    p.k = unit % kb;
    p.e0 = p.g * per_group + p.k * LANES;
    p.w = per_group - p.k * LANES < LANES ? per_group - p.k * LANES : LANES;
    return p;
}

/* The unit's first channel of a [batch, E, L] view (NULL for an absent tensor). */
static real *SCAN_NAME(rows)(const aum_view *v, const SCAN_NAME(unit_t) *p) {
    return v && v->data ? (real *)v->data + p->b * v->s[0] + p->e0 * v->s[1] : NULL;
}

/* [w channels (stride se) x len steps (stride sl) of x from step t0] -> dst[len][LANES], zeros in unused lanes.
 * The loop order follows the smaller stride, so both layouts are read in memory order. */
static void SCAN_NAME(load_tile)(real *restrict dst, const real *restrict x, int64_t se, int64_t sl, int64_t t0,
                                 int64_t len, int64_t w) {
    if (w == LANES && se == 1) {          /* a full block, channels innermost: LANES-wide copies (no memcpy calls) */
        for (int64_t s = 0; s < len; ++s)
#pragma omp simd
            for (int j = 0; j < LANES; ++j) dst[s * LANES + j] = x[(t0 + s) * sl + j];
        return;
    }
    memset(dst, 0, sizeof(real) * (size_t)(len * LANES));
    if (llabs(se) <= llabs(sl)) {
        for (int64_t s = 0; s < len; ++s)
            for (int64_t j = 0; j < w; ++j) dst[s * LANES + j] = x[(t0 + s) * sl + j * se];
    } else {
        for (int64_t j = 0; j < w; ++j)
            for (int64_t s = 0; s < len; ++s) dst[s * LANES + j] = x[(t0 + s) * sl + j * se];
    }
}

static void SCAN_NAME(store_tile)(real *restrict x, const real *restrict src, int64_t se, int64_t sl, int64_t t0,
                                  int64_t len, int64_t w) {
    if (w == LANES && se == 1) {
        for (int64_t s = 0; s < len; ++s)
#pragma omp simd
            for (int j = 0; j < LANES; ++j) x[(t0 + s) * sl + j] = src[s * LANES + j];
        return;
    }
    if (llabs(se) <= llabs(sl)) {
        for (int64_t s = 0; s < len; ++s)
            for (int64_t j = 0; j < w; ++j) x[(t0 + s) * sl + j * se] = src[s * LANES + j];
    } else {
        for (int64_t j = 0; j < w; ++j)
            for (int64_t s = 0; s < len; ++s) x[(t0 + s) * sl + j * se] = src[s * LANES + j];
    }
}

/* [N states (stride sn) x len steps (stride sl) of x from step t0] -> dst[len][N]. */
static void SCAN_NAME(load_states)(real *restrict dst, const real *restrict x, int64_t sn, int64_t sl, int64_t N,
                                   int64_t t0, int64_t len) {
    if (N == 16 && sn == 1) {             /* Mamba's N = 16, states innermost: fixed-width copies */
        for (int64_t s = 0; s < len; ++s)
#pragma omp simd
            for (int n = 0; n < 16; ++n) dst[s * 16 + n] = x[(t0 + s) * sl + n];
        return;
    }
    if (llabs(sn) <= llabs(sl)) {
        for (int64_t s = 0; s < len; ++s)
            for (int64_t n = 0; n < N; ++n) dst[s * N + n] = x[(t0 + s) * sl + n * sn];
    } else {
        for (int64_t n = 0; n < N; ++n)
            for (int64_t s = 0; s < len; ++s) dst[s * N + n] = x[(t0 + s) * sl + n * sn];
    }
}

/* Gather one chunk of a [batch, E, L] view for unit p into a tile (no-op for an absent tensor). */
static void SCAN_NAME(gather)(real *tile, const aum_view *v, const SCAN_NAME(unit_t) *p, int64_t t0, int64_t len) {
    const real *x = SCAN_NAME(rows)(v, p);
    if (x) SCAN_NAME(load_tile)(tile, x, v->s[1], v->s[2], t0, len, p->w);
}

static void SCAN_NAME(scatter)(const aum_view *v, const real *tile, const SCAN_NAME(unit_t) *p, int64_t t0,
                               int64_t len) {
    real *x = SCAN_NAME(rows)(v, p);
    if (x) SCAN_NAME(store_tile)(x, tile, v->s[1], v->s[2], t0, len, p->w);
}

/* B and C of unit p's group for one chunk, as [len][N] each. */
static void SCAN_NAME(gather_bc)(real *bt, real *ct, const aum_view *B, const aum_view *C,
                                 const SCAN_NAME(unit_t) *p, int64_t N, int64_t t0, int64_t len) {
    const real *b = (const real *)B->data + p->b * B->s[0] + p->g * B->s[1];
    const real *c = (const real *)C->data + p->b * C->s[0] + p->g * C->s[1];
    SCAN_NAME(load_states)(bt, b, B->s[2], B->s[3], N, t0, len);
    SCAN_NAME(load_states)(ct, c, C->s[2], C->s[3], N, t0, len);
}

/* Per-channel parameters of unit p as LANES values: a = A * log2(e) [N][LANES], D, bias (zeros when absent). */
static void SCAN_NAME(lane_params)(real *restrict a, real *restrict d, real *restrict bias, const real *A,
                                   const real *D, const real *delta_bias, const SCAN_NAME(unit_t) *p, int64_t N) {
    memset(a, 0, sizeof(real) * (size_t)(N * LANES));
    memset(d, 0, sizeof(real) * LANES);
    memset(bias, 0, sizeof(real) * LANES);
    for (int64_t j = 0; j < p->w; ++j) {
        for (int64_t n = 0; n < N; ++n) a[n * LANES + j] = (real)(A[(p->e0 + j) * N + n] * LOG2E);
        if (D) d[j] = D[p->e0 + j];
        if (delta_bias) bias[j] = delta_bias[p->e0 + j];
    }
}

static inline real SCAN_NAME(sigmoid)(real x) {
    const real e = SCAN_EXP2((x > 0 ? -x : x) * (real)LOG2E), r = 1 / (1 + e);
    return x > 0 ? r : e * r;
}

/* softplus(x) = max(x, 0) + log1p(e) for e = exp(-|x|), with log1p(e) = 2 atanh(e / (2 + e)) by its series (the
 * ratio is at most 1/3); x > 20 gives x, as PyTorch's softplus (threshold 20) does. */
static inline real SCAN_NAME(softplus)(real x, real e) {
    const real r = e / (2 + e), r2 = r * r;
    real p = (real)1 / (2 * SCAN_ATANH_TERMS + 1);
    for (int k = SCAN_ATANH_TERMS - 1; k >= 0; --k) p = p * r2 + (real)1 / (2 * k + 1);
    return x > 20 ? x : (x > 0 ? x : 0) + 2 * r * p;
}

/* In place on a [len][LANES] tile: delta <- softplus(delta + bias) (or delta + bias); dsp (may be NULL) <- the
 * softplus's derivative sigmoid(delta + bias) (1 above the threshold, and 1 everywhere without softplus). */
static void SCAN_NAME(prepare_delta)(real *restrict dt, real *restrict dsp, const real *restrict bias,
                                     int softplus, int64_t len) {
#if SCAN_VEC
    if (softplus) {                           /* the same formulas as the scalar softplus below, 16 lanes at once */
        const __m512 b = _mm512_loadu_ps(bias), two = _mm512_set1_ps(2.0f), twenty = _mm512_set1_ps(20.0f);
        for (int64_t s = 0; s < len; ++s) {
            const __m512 x = _mm512_add_ps(_mm512_loadu_ps(dt + s * LANES), b), e = exp_neg_abs_v16(x);
            const __m512 r = _mm512_div_ps(e, _mm512_add_ps(two, e)), r2 = _mm512_mul_ps(r, r);
            __m512 p = _mm512_set1_ps(1.0f / (2 * SCAN_ATANH_TERMS + 1));
            for (int k = SCAN_ATANH_TERMS - 1; k >= 0; --k)
                p = _mm512_fmadd_ps(p, r2, _mm512_set1_ps(1.0f / (2 * k + 1)));
            const __m512 sp = _mm512_fmadd_ps(_mm512_mul_ps(two, r), p, _mm512_max_ps(x, _mm512_setzero_ps()));
            const __mmask16 big = _mm512_cmp_ps_mask(x, twenty, _CMP_GT_OQ);
            _mm512_storeu_ps(dt + s * LANES, _mm512_mask_blend_ps(big, sp, x));
            if (dsp) _mm512_storeu_ps(dsp + s * LANES, _mm512_mask_blend_ps(big, sigmoid_from_e_v16(x, e),
                                                                            _mm512_set1_ps(1.0f)));
        }
        return;
    }
#endif
    for (int64_t s = 0; s < len; ++s) {
        real *ds = dt + s * LANES;
        if (softplus) {
#pragma omp simd
            for (int j = 0; j < LANES; ++j) {
                const real x = ds[j] + bias[j], e = SCAN_EXP2((x > 0 ? -x : x) * (real)LOG2E);
                ds[j] = SCAN_NAME(softplus)(x, e);
                if (dsp) dsp[s * LANES + j] = x > 20 ? 1 : (x > 0 ? 1 : e) / (1 + e);   /* sigmoid(x) */
            }
        } else {
#pragma omp simd
            for (int j = 0; j < LANES; ++j) {
                ds[j] += bias[j];
                if (dsp) dsp[s * LANES + j] = 1;
            }
        }
    }
}

/* One chunk forward: h [N][LANES] in / out; y[s][LANES] = C_s . h_s; states[s] = h after step s and decays[s] =
 * exp(d_s A) (if given; then h is read only at step 0 and its content afterwards is unspecified). */
static void SCAN_NAME(forward_chunk)(int64_t len, int64_t N, const real *restrict a, real *restrict h,
                                     const real *restrict ut, const real *restrict dt, const real *restrict bt,
                                     const real *restrict ct, real *restrict yt, real *restrict states,
                                     real *restrict decays) {
#if SCAN_VEC
    for (int64_t s = 0; s < len; ++s) {
        const __m512 d = _mm512_loadu_ps(dt + s * LANES), du = _mm512_mul_ps(d, _mm512_loadu_ps(ut + s * LANES));
        __m512 acc = _mm512_setzero_ps();
        /* with states, row s - 1 of states is the previous h and row s receives the new one (h is not written) */
        const real *prev = states && s > 0 ? states + (s - 1) * N * LANES : h;
        real *next = states ? states + s * N * LANES : h;
        for (int64_t n = 0; n < N; ++n) {
            const __m512 e = exp2_v16(_mm512_mul_ps(d, _mm512_loadu_ps(a + n * LANES)));
            const __m512 v = _mm512_fmadd_ps(e, _mm512_loadu_ps(prev + n * LANES),
                                             _mm512_mul_ps(du, _mm512_set1_ps(bt[s * N + n])));
            _mm512_storeu_ps(next + n * LANES, v);
            acc = _mm512_fmadd_ps(v, _mm512_set1_ps(ct[s * N + n]), acc);
            if (decays) _mm512_storeu_ps(decays + (s * N + n) * LANES, e);
        }
        _mm512_storeu_ps(yt + s * LANES, acc);
    }
#else
    for (int64_t s = 0; s < len; ++s) {
        const real *ds = dt + s * LANES, *us = ut + s * LANES;
        real *ys = yt + s * LANES;
        real du[LANES], acc[LANES];
#pragma omp simd
        for (int j = 0; j < LANES; ++j) { du[j] = ds[j] * us[j]; acc[j] = 0; }
        for (int64_t n = 0; n < N; ++n) {
            const real bn = bt[s * N + n], cn = ct[s * N + n];
            const real *an = a + n * LANES;
            real *hn = h + n * LANES;
            real *keep = states ? states + (s * N + n) * LANES : NULL;
            real *dec = decays ? decays + (s * N + n) * LANES : NULL;
            if (keep) {
#pragma omp simd
                for (int j = 0; j < LANES; ++j) {
                    const real e = SCAN_EXP2(ds[j] * an[j]);
                    const real v = e * hn[j] + du[j] * bn;
                    dec[j] = e;
                    keep[j] = v;
                    hn[j] = v;
                    acc[j] += v * cn;
                }
            } else {
#pragma omp simd
                for (int j = 0; j < LANES; ++j) {
                    const real v = SCAN_EXP2(ds[j] * an[j]) * hn[j] + du[j] * bn;
                    hn[j] = v;
                    acc[j] += v * cn;
                }
            }
        }
#pragma omp simd
        for (int j = 0; j < LANES; ++j) ys[j] = acc[j];
    }
#endif
}

/* In place on a chunk's [len][LANES] tile of scan outputs: y <- (y + D u) * silu(z) (no gate when not gated). */
static void SCAN_NAME(finish_chunk)(real *restrict yt, const real *restrict ut, const real *restrict zt,
                                    const real *restrict dl, int gated, int64_t len) {
#if SCAN_VEC
    if (gated) {
        const __m512 dv = _mm512_loadu_ps(dl);
        for (int64_t s = 0; s < len; ++s) {
            const __m512 zs = _mm512_loadu_ps(zt + s * LANES);
            const __m512 v = _mm512_fmadd_ps(dv, _mm512_loadu_ps(ut + s * LANES), _mm512_loadu_ps(yt + s * LANES));
            _mm512_storeu_ps(yt + s * LANES, _mm512_mul_ps(v, _mm512_mul_ps(zs, sigmoid_from_e_v16(zs,
                                                                                     exp_neg_abs_v16(zs)))));
        }
        return;
    }
#endif
    for (int64_t s = 0; s < len; ++s) {
        real *ys = yt + s * LANES;
        const real *us = ut + s * LANES, *zs = zt + s * LANES;
#pragma omp simd
        for (int j = 0; j < LANES; ++j) {
            const real v = ys[j] + dl[j] * us[j];
            ys[j] = gated ? v * zs[j] * SCAN_NAME(sigmoid)(zs[j]) : v;
        }
    }
}

/* y = (scan(u, d, A, B, C) + D u) * silu(z), d = softplus(delta + bias); z, D, bias may be absent (NULL data /
 * NULL). ckpt (may be NULL) receives the state at each chunk start. Returns 0, or 1 when memory for the work
 * buffers could not be allocated. */
int SCAN_NAME(aum_scan_forward)(const aum_view *u, const aum_view *delta, const aum_view *z, const aum_view *B,
                                const aum_view *C, const aum_view *y, const real *A, const real *D,
                                const real *delta_bias, real *ckpt, int64_t batch, int64_t E, int64_t G, int64_t N,
                                int64_t L, int64_t chunk, int softplus, int nthreads) {
    /* Work items: runs of consecutive channel blocks of one group of one batch element, walked chunk by chunk and,
     * inside a chunk, block by block, so that each chunk's rows of u / delta / z / y are read and written as
     * contiguous runs of channels (and B, C gathered once per chunk). Channels never interact, so the split (about
     * four items per thread) changes nothing in the results. */
    const int64_t kb = (E / G + LANES - 1) / LANES, n_chunks = (L + chunk - 1) / chunk;
    const int64_t want = (4 * (int64_t)nthreads + batch * G - 1) / (batch * G);
    const int64_t parts = want < 1 ? 1 : (want > kb ? kb : want), per_part = (kb + parts - 1) / parts;
    const int64_t items = batch * G * parts;
    const int gated = z && z->data;
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) if(nthreads > 1) schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
        const int64_t bg = item / parts, k_lo = (item % parts) * per_part;
        const int64_t nblk = (k_lo + per_part < kb ? k_lo + per_part : kb) - k_lo;
        const size_t nw = (size_t)(N * LANES), cw = (size_t)(chunk * LANES), cn = (size_t)(chunk * N);
        if (nblk <= 0) continue;                          /* more parts than blocks: an empty run */
        real *work = malloc(sizeof(real) * (nblk * (2 * nw + 2 * LANES) + 4 * cw + 2 * cn));
        if (!work) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        real *ap = work, *hp = ap + nblk * nw, *dlp = hp + nblk * nw, *blp = dlp + nblk * LANES;
        real *ut = blp + nblk * LANES, *dt = ut + cw, *zt = dt + cw, *yt = zt + cw, *bt = yt + cw, *ct = bt + cn;
        SCAN_NAME(unit_t) p0 = SCAN_NAME(locate)(bg * kb + k_lo, E, G);
        for (int64_t i = 0; i < nblk; ++i) {
            SCAN_NAME(unit_t) p = SCAN_NAME(locate)(bg * kb + k_lo + i, E, G);
            SCAN_NAME(lane_params)(ap + i * nw, dlp + i * LANES, blp + i * LANES, A, D, delta_bias, &p, N);
        }
        memset(hp, 0, sizeof(real) * nblk * nw);
        for (int64_t c = 0; c < n_chunks; ++c) {
            const int64_t t0 = c * chunk, len = L - t0 < chunk ? L - t0 : chunk;
            SCAN_NAME(gather_bc)(bt, ct, B, C, &p0, N, t0, len);            /* one group: the same for all blocks */
            for (int64_t i = 0; i < nblk; ++i) {
                const int64_t unit = bg * kb + k_lo + i;
                SCAN_NAME(unit_t) p = SCAN_NAME(locate)(unit, E, G);
                real *h = hp + i * nw, *dl = dlp + i * LANES;
                if (ckpt) memcpy(ckpt + (unit * n_chunks + c) * (int64_t)nw, h, sizeof(real) * nw);
                SCAN_NAME(gather)(ut, u, &p, t0, len);
                SCAN_NAME(gather)(dt, delta, &p, t0, len);
                SCAN_NAME(prepare_delta)(dt, NULL, blp + i * LANES, softplus, len);
                SCAN_NAME(forward_chunk)(len, N, ap + i * nw, h, ut, dt, bt, ct, yt, NULL, NULL);
                if (gated) SCAN_NAME(gather)(zt, z, &p, t0, len);
                SCAN_NAME(finish_chunk)(yt, ut, zt, dl, gated, len);
                SCAN_NAME(scatter)(y, yt, &p, t0, len);
            }
        }
        free(work);
    }
    return failed;
}

/* One chunk backward of the bare scan, steps len-1 .. 0. h0: state before the chunk; states[s], decays[s]: after /
 * of step s. carry [N][LANES] in / out: exp(d_{t+1} A) gh_{t+1} from the following chunk. ga [N][LANES]
 * accumulates. gst: dL/ds. Writes gut, gdt [len][LANES] (dL/du, dL/dd) and gbt, gct [len][N] (this block's
 * partial sums over its channels). */
static void SCAN_NAME(backward_chunk)(int64_t len, int64_t N, const real *restrict a, const real *restrict h0,
                                      const real *restrict states, const real *restrict decays,
                                      const real *restrict ut, const real *restrict dt, const real *restrict gst,
                                      const real *restrict bt, const real *restrict ct, real *restrict carry,
                                      real *restrict ga, real *restrict gut, real *restrict gdt,
                                      real *restrict gbt, real *restrict gct) {
#if SCAN_VEC
    float rows_c[16 * LANES], rows_b[16 * LANES];     /* per state n: the lanes' terms of gC_t[n] and gB_t[n] */
    for (int64_t s = len - 1; s >= 0; --s) {
        const __m512 d = _mm512_loadu_ps(dt + s * LANES), u = _mm512_loadu_ps(ut + s * LANES);
        const __m512 gs = _mm512_loadu_ps(gst + s * LANES), du = _mm512_mul_ps(d, u);
        const real *prev = s > 0 ? states + (s - 1) * N * LANES : h0;
        __m512 ghb = _mm512_setzero_ps(), gexp_a = _mm512_setzero_ps();
        for (int64_t n0 = 0; n0 < N; n0 += 16) {
            const int64_t nb = N - n0 < 16 ? N - n0 : 16;
            for (int64_t i = 0; i < nb; ++i) {
                const int64_t n = n0 + i, at = (s * N + n) * LANES;
                const __m512 dec = _mm512_loadu_ps(decays + at);
                const __m512 gh = _mm512_fmadd_ps(_mm512_set1_ps(ct[s * N + n]), gs,
                                                  _mm512_loadu_ps(carry + n * LANES));
                const __m512 gexp = _mm512_mul_ps(_mm512_mul_ps(gh, _mm512_loadu_ps(prev + n * LANES)), dec);
                _mm512_storeu_ps(rows_c + i * LANES, _mm512_mul_ps(gs, _mm512_loadu_ps(states + at)));
                _mm512_storeu_ps(rows_b + i * LANES, _mm512_mul_ps(gh, du));
                ghb = _mm512_fmadd_ps(gh, _mm512_set1_ps(bt[s * N + n]), ghb);
                gexp_a = _mm512_fmadd_ps(gexp, _mm512_loadu_ps(a + n * LANES), gexp_a);
                _mm512_storeu_ps(ga + n * LANES, _mm512_fmadd_ps(gexp, d, _mm512_loadu_ps(ga + n * LANES)));
                _mm512_storeu_ps(carry + n * LANES, _mm512_mul_ps(dec, gh));
            }
            if (nb == 16) {
                _mm512_storeu_ps(gct + s * N + n0, row_sums_v16(rows_c));
                _mm512_storeu_ps(gbt + s * N + n0, row_sums_v16(rows_b));
            } else {
                for (int64_t i = 0; i < nb; ++i) {
                    gct[s * N + n0 + i] = _mm512_reduce_add_ps(_mm512_loadu_ps(rows_c + i * LANES));
                    gbt[s * N + n0 + i] = _mm512_reduce_add_ps(_mm512_loadu_ps(rows_b + i * LANES));
                }
            }
        }
        _mm512_storeu_ps(gut + s * LANES, _mm512_mul_ps(ghb, d));
        _mm512_storeu_ps(gdt + s * LANES, _mm512_fmadd_ps(gexp_a, _mm512_set1_ps((float)LN2), _mm512_mul_ps(ghb, u)));
    }
#else
    for (int64_t s = len - 1; s >= 0; --s) {
        const real *ds = dt + s * LANES, *us = ut + s * LANES, *gys = gst + s * LANES;
        const real *prev = s > 0 ? states + (s - 1) * N * LANES : h0;
        real du[LANES], ghb[LANES], gexp_a[LANES];
#pragma omp simd
        for (int j = 0; j < LANES; ++j) { du[j] = ds[j] * us[j]; ghb[j] = 0; gexp_a[j] = 0; }
        for (int64_t n = 0; n < N; ++n) {
            const real bn = bt[s * N + n], cn = ct[s * N + n];
            const real *an = a + n * LANES, *hn = states + (s * N + n) * LANES, *pn = prev + n * LANES;
            const real *dec = decays + (s * N + n) * LANES;
            real *cr = carry + n * LANES, *gan = ga + n * LANES;
            real sum_c = 0, sum_b = 0;
#pragma omp simd reduction(+:sum_c, sum_b)
            for (int j = 0; j < LANES; ++j) {
                const real gh = cn * gys[j] + cr[j];
                const real gexp = gh * pn[j] * dec[j];          /* d loss / d (d A): A = a ln 2 */
                sum_c += gys[j] * hn[j];
                sum_b += gh * du[j];
                ghb[j] += gh * bn;
                gexp_a[j] += gexp * an[j];
                gan[j] += gexp * ds[j];
                cr[j] = dec[j] * gh;
            }
            gct[s * N + n] = sum_c;
            gbt[s * N + n] = sum_b;
        }
#pragma omp simd
        for (int j = 0; j < LANES; ++j) {
            gut[s * LANES + j] = ghb[j] * ds[j];
            gdt[s * LANES + j] = ghb[j] * us[j] + gexp_a[j] * (real)LN2;
        }
    }
#endif
}

/* Gradients of sum(gy * y) for y as in aum_scan_forward, from its checkpoints: gu, gdelta, gz (views like u,
 * delta, z; gz absent without z) and the partial sums gA_part, gD_part, gbias_part (NULL without D / bias),
 * gB_part, gC_part ([batch, G, parts, N, L]: the channel blocks of a group are split into `parts` runs of
 * consecutive blocks, one work item each, that add their blocks' terms in block order; the caller sums the
 * parts, so the result depends on the shapes and `parts`, never on the thread count). Returns 0, or 1 when
 * memory for the work buffers could not be allocated. */
int SCAN_NAME(aum_scan_backward)(const aum_view *u, const aum_view *delta, const aum_view *z, const aum_view *B,
                                 const aum_view *C, const aum_view *gy, const real *A, const real *D,
                                 const real *delta_bias, const real *ckpt, const aum_view *gu,
                                 const aum_view *gdelta, const aum_view *gz, real *gA_part, real *gD_part,
                                 real *gbias_part, real *gB_part, real *gC_part, int64_t batch, int64_t E,
                                 int64_t G, int64_t N, int64_t L, int64_t chunk, int64_t parts, int softplus,
                                 int nthreads) {
    const int64_t kb = (E / G + LANES - 1) / LANES, n_chunks = (L + chunk - 1) / chunk;
    const int64_t per_part = (kb + parts - 1) / parts, items = batch * G * parts;
    const int gated = z && z->data;
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) if(nthreads > 1) schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
        const int64_t bg = item / parts, k_lo = (item % parts) * per_part;
        const int64_t k_hi = k_lo + per_part < kb ? k_lo + per_part : kb;
        const size_t nw = (size_t)(N * LANES), cw = (size_t)(chunk * LANES), cn = (size_t)(chunk * N);
        real *work = malloc(sizeof(real) * (4 * nw + 4 * LANES + 2 * chunk * nw + 8 * cw + 4 * cn));
        if (!work) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        real *a = work, *h = a + nw, *carry = h + nw, *ga = carry + nw, *dl = ga + nw, *bl = dl + LANES;
        real *gdl = bl + LANES, *gbl = gdl + LANES, *states = gbl + LANES, *decays = states + chunk * nw;
        real *ut = decays + chunk * nw, *dt = ut + cw, *dsp = dt + cw, *zt = dsp + cw, *gyt = zt + cw;
        real *gut = gyt + cw, *gdt = gut + cw, *gzt = gdt + cw;
        real *bt = gzt + cw, *ct = bt + cn, *gbt = ct + cn, *gct = gbt + cn;
        real *gB_item = gB_part + item * N * L, *gC_item = gC_part + item * N * L;
        memset(gB_item, 0, sizeof(real) * (size_t)(N * L));
        memset(gC_item, 0, sizeof(real) * (size_t)(N * L));
        for (int64_t k = k_lo; k < k_hi; ++k) {
            const int64_t unit = bg * kb + k;               /* the forward's unit: its checkpoints */
            SCAN_NAME(unit_t) p = SCAN_NAME(locate)(unit, E, G);
            SCAN_NAME(lane_params)(a, dl, bl, A, D, delta_bias, &p, N);
            memset(carry, 0, sizeof(real) * 2 * nw);                              /* carry, ga */
            memset(gdl, 0, sizeof(real) * 2 * LANES);                             /* gdl, gbl */
            for (int64_t c = n_chunks - 1; c >= 0; --c) {
                const int64_t t0 = c * chunk, len = L - t0 < chunk ? L - t0 : chunk;
                const real *h0 = ckpt + (unit * n_chunks + c) * (int64_t)nw;
                SCAN_NAME(gather)(ut, u, &p, t0, len);
                SCAN_NAME(gather)(dt, delta, &p, t0, len);
                SCAN_NAME(gather)(gyt, gy, &p, t0, len);
                SCAN_NAME(gather_bc)(bt, ct, B, C, &p, N, t0, len);
                SCAN_NAME(prepare_delta)(dt, dsp, bl, softplus, len);
                memcpy(h, h0, sizeof(real) * nw);
                SCAN_NAME(forward_chunk)(len, N, a, h, ut, dt, bt, ct, gut, states, decays);   /* gut: scan s */
                if (gated) {                         /* gy <- gs = gy silu(z); gz = gy (s + D u) silu'(z) */
                    SCAN_NAME(gather)(zt, z, &p, t0, len);
                    for (int64_t s = 0; s < len; ++s) {
                        real *gys = gyt + s * LANES, *gzs = gzt + s * LANES;
                        const real *zs = zt + s * LANES, *ss = gut + s * LANES, *us = ut + s * LANES;
#pragma omp simd
                        for (int j = 0; j < LANES; ++j) {
                            const real sg = SCAN_NAME(sigmoid)(zs[j]), y0 = ss[j] + dl[j] * us[j];
                            gzs[j] = gys[j] * y0 * sg * (1 + zs[j] * (1 - sg));
                            gys[j] *= zs[j] * sg;
                        }
                    }
                    SCAN_NAME(scatter)(gz, gzt, &p, t0, len);
                }
                SCAN_NAME(backward_chunk)(len, N, a, h0, states, decays, ut, dt, gyt, bt, ct, carry, ga, gut,
                                          gdt, gbt, gct);
                for (int64_t s = len - 1; s >= 0; --s) {     /* the skip D u and delta's bias + softplus */
                    real *gus = gut + s * LANES, *gds = gdt + s * LANES;
                    const real *gys = gyt + s * LANES, *us = ut + s * LANES, *ps = dsp + s * LANES;
#pragma omp simd
                    for (int j = 0; j < LANES; ++j) {
                        gus[j] += dl[j] * gys[j];
                        gdl[j] += gys[j] * us[j];
                        gds[j] *= ps[j];
                        gbl[j] += gds[j];
                    }
                }
                SCAN_NAME(scatter)(gu, gut, &p, t0, len);
                SCAN_NAME(scatter)(gdelta, gdt, &p, t0, len);
                for (int64_t n = 0; n < N; ++n)
                    for (int64_t s = 0; s < len; ++s) {
                        gB_item[n * L + t0 + s] += gbt[s * N + n];
                        gC_item[n * L + t0 + s] += gct[s * N + n];
                    }
            }
            for (int64_t j = 0; j < p.w; ++j) {
                for (int64_t n = 0; n < N; ++n) gA_part[(p.b * E + p.e0 + j) * N + n] = ga[n * LANES + j];
                if (gD_part) gD_part[p.b * E + p.e0 + j] = gdl[j];
                if (gbias_part) gbias_part[p.b * E + p.e0 + j] = gbl[j];
            }
        }
        free(work);
    }
    return failed;
}

#undef real
#endif
