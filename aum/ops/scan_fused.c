/* The fused CPU selective scan (forward and backward), called from aum/ops/scan_fused.py through ctypes.
 *
 * What it computes, for every batch b and channel e (of E; channel e reads B / C group g = e / (E/G)):
 *
 *     h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t          (h: N values per channel, h_{-1} = 0)
 *     y_t = sum_n C_t[n] * h_t[n]
 *
 * and, given dL/dy, the adjoint recurrence (backwards in time)
 *
 *     gh_t = C_t * gy_t + exp(delta_{t+1} * A) * gh_{t+1}
 *     gu_t = delta_t * sum_n gh_t B_t          gdelta_t = u_t * sum_n gh_t B_t + sum_n A gh_t h_{t-1} exp(delta_t A)
 *     gA   = sum_t delta_t gh_t h_{t-1} exp(delta_t A)
 *     gB_t = sum_{e in g} delta_t u_t gh_t     gC_t = sum_{e in g} gy_t h_t
 *
 * (D, z, delta_bias and the softplus are applied around this kernel, in PyTorch.)
 *
 * Memory layout (all arrays dense, row-major, in the caller's dtype):
 *     u, delta, y, gy, gu, gdelta: [batch, E, L]     A: [E, N]     B, C: [batch, G, N, L]
 *     ckpt: [units, n_chunks, N, LANES]   the state at the start of every chunk of `chunk` steps
 *     gA_part: [batch, E, N]              per-batch partial sums of gA (the caller sums over batch)
 *     gB_part, gC_part: [batch, G, KB, N, L]   partial sums over the KB channel blocks of each group
 *
 * Work is split into units of LANES channels of one group of one batch element (KB = ceil((E/G) / LANES)
 * blocks per group), spread over OpenMP threads. Inside a unit the time axis is walked in chunks: a chunk
 * of u / delta / gy is copied into a small time-major [t][LANES] buffer (channels innermost), so that the
 * loops over channels are unit-stride and vectorise, `exp` included (exp2_f32 / exp2_f64 below are branch-free
 * polynomial, so no vector math library and no -ffast-math are needed). Tail lanes past the block's last
 * channel hold zeros and are never written back.
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

/* 2^t = 2^k * 2^f, k = round(t), f = t - k in [-1/2, 1/2] (exact); 2^f = exp(f ln 2) by its Taylor series
 * (degree 7 for float: error < 6e-9 relative; degree 12 for double: < 2e-16); 2^k built in the exponent bits.
 * Adding 1.5 * 2^(mantissa bits) rounds t to an integer k that then sits in the low mantissa bits of
 * `shifted`; shifting (those bits + exponent bias) into the exponent field keeps exactly k + bias. t is first
 * clamped to the normal range ([-126, 127] for float, [-1022, 1023] for double): below it the result is the
 * smallest normal number instead of a denormal or 0, above it the largest power of two instead of +inf
 * (the scan's decays exp(delta * A) have delta > 0 > A, so t <= 0). */
static inline float exp2_f32(float t) {
    t = t > -126.0f ? t : -126.0f;               /* two plain selects: vmaxps / vminps */
    t = t < 127.0f ? t : 127.0f;
    const float shifted = t + 12582912.0f;
    const float k = shifted - 12582912.0f;
    const float f = t - k;
    float p = 1.5252733804059838e-05f;
    p = p * f + 1.5403530393381606e-04f;
    p = p * f + 1.3333558146428441e-03f;
    p = p * f + 9.6181291076284770e-03f;
    p = p * f + 5.5504108664821576e-02f;
    p = p * f + 2.4022650695910071e-01f;
    p = p * f + 6.9314718055994531e-01f;
    p = p * f + 1.0f;
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

#define LOG2E 1.4426950408889634
#define LN2 0.6931471805599453

/* Lanes per channel block: the Python side needs it to size the checkpoint and partial-sum buffers. */
int aum_scan_lanes(void) { return LANES; }

#define SCAN_REAL float
#define SCAN_EXP2 exp2_f32
#define SCAN_NAME(name) name##_f32
#include __FILE__
#undef SCAN_REAL
#undef SCAN_EXP2
#undef SCAN_NAME

#define SCAN_REAL double
#define SCAN_EXP2 exp2_f64
#define SCAN_NAME(name) name##_f64
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

/* [w channels of x (row length L) from t0, len steps] -> dst[len][LANES], zeros in unused lanes. */
static void SCAN_NAME(load_rows)(real *restrict dst, const real *restrict x, int64_t L, int64_t t0, int64_t len,
                                 int64_t w) {
    memset(dst, 0, sizeof(real) * (size_t)(len * LANES));
    for (int64_t j = 0; j < w; ++j)
        for (int64_t s = 0; s < len; ++s) dst[s * LANES + j] = x[j * L + t0 + s];
}

static void SCAN_NAME(store_rows)(real *restrict x, const real *restrict src, int64_t L, int64_t t0, int64_t len,
                                  int64_t w) {
    for (int64_t j = 0; j < w; ++j)
        for (int64_t s = 0; s < len; ++s) x[j * L + t0 + s] = src[s * LANES + j];
}

/* [N rows of x (row length L) from t0, len steps] -> dst[len][N]. */
static void SCAN_NAME(load_state_rows)(real *restrict dst, const real *restrict x, int64_t N, int64_t L,
                                       int64_t t0, int64_t len) {
    for (int64_t n = 0; n < N; ++n)
        for (int64_t s = 0; s < len; ++s) dst[s * N + n] = x[n * L + t0 + s];
}

/* One chunk forward: h [N][LANES] in / out; y[s][LANES] = C_s . h_s; states[s] = h after step s (if given). */
static void SCAN_NAME(forward_chunk)(int64_t len, int64_t N, const real *restrict a, real *restrict h,
                                     const real *restrict ut, const real *restrict dt, const real *restrict bt,
                                     const real *restrict ct, real *restrict yt, real *restrict states,
                                     real *restrict decays) {
    for (int64_t s = 0; s < len; ++s) {
        const real *ds = dt + s * LANES, *us = ut + s * LANES;
        real *ys = yt + s * LANES;
        real du[LANES];
#pragma omp simd
        for (int j = 0; j < LANES; ++j) { du[j] = ds[j] * us[j]; ys[j] = 0; }
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
                    ys[j] += v * cn;
                }
            } else {
#pragma omp simd
                for (int j = 0; j < LANES; ++j) {
                    const real v = SCAN_EXP2(ds[j] * an[j]) * hn[j] + du[j] * bn;
                    hn[j] = v;
                    ys[j] += v * cn;
                }
            }
        }
    }
}

/* y = scan(u, delta, A, B, C); ckpt (may be NULL) receives the state at each chunk start. Returns 0, or 1 when
 * memory for the work buffers could not be allocated. */
int SCAN_NAME(aum_scan_forward)(const real *u, const real *delta, const real *A, const real *B, const real *C,
                                real *y, real *ckpt, int64_t batch, int64_t E, int64_t G, int64_t N, int64_t L,
                                int64_t chunk, int nthreads) {
    const int64_t kb = (E / G + LANES - 1) / LANES, units = batch * G * kb, n_chunks = (L + chunk - 1) / chunk;
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) if(nthreads > 1) schedule(dynamic, 1)
    for (int64_t unit = 0; unit < units; ++unit) {
        SCAN_NAME(unit_t) p = SCAN_NAME(locate)(unit, E, G);
        const size_t nw = (size_t)(N * LANES), cw = (size_t)(chunk * LANES), cn = (size_t)(chunk * N);
        real *work = malloc(sizeof(real) * (2 * nw + 3 * cw + 2 * cn));
        if (!work) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        real *a = work, *h = a + nw, *ut = h + nw, *dt = ut + cw, *yt = dt + cw, *bt = yt + cw, *ct = bt + cn;
        memset(a, 0, sizeof(real) * 2 * nw);
        for (int64_t j = 0; j < p.w; ++j)
            for (int64_t n = 0; n < N; ++n) a[n * LANES + j] = (real)(A[(p.e0 + j) * N + n] * LOG2E);
        const int64_t row = (p.b * E + p.e0) * L, grp = (p.b * G + p.g) * N * L;
        for (int64_t c = 0; c < n_chunks; ++c) {
            const int64_t t0 = c * chunk, len = L - t0 < chunk ? L - t0 : chunk;
            if (ckpt) memcpy(ckpt + (unit * n_chunks + c) * (int64_t)nw, h, sizeof(real) * nw);
            SCAN_NAME(load_rows)(ut, u + row, L, t0, len, p.w);
            SCAN_NAME(load_rows)(dt, delta + row, L, t0, len, p.w);
            SCAN_NAME(load_state_rows)(bt, B + grp, N, L, t0, len);
            SCAN_NAME(load_state_rows)(ct, C + grp, N, L, t0, len);
            SCAN_NAME(forward_chunk)(len, N, a, h, ut, dt, bt, ct, yt, NULL, NULL);
            SCAN_NAME(store_rows)(y + row, yt, L, t0, len, p.w);
        }
        free(work);
    }
    return failed;
}

/* One chunk backward, steps len-1 .. 0. h0: state before the chunk; states[s], decays[s]: after / of step s.
 * carry [N][LANES] in / out: exp(delta_{t+1} A) gh_{t+1} from the following chunk. ga [N][LANES] accumulates.
 * Writes gut, gdt [len][LANES] and gbt, gct [len][N] (this block's partial sums over its channels). */
static void SCAN_NAME(backward_chunk)(int64_t len, int64_t N, const real *restrict a, const real *restrict h0,
                                      const real *restrict states, const real *restrict decays,
                                      const real *restrict ut, const real *restrict dt, const real *restrict gyt,
                                      const real *restrict bt, const real *restrict ct, real *restrict carry,
                                      real *restrict ga, real *restrict gut, real *restrict gdt,
                                      real *restrict gbt, real *restrict gct) {
    for (int64_t s = len - 1; s >= 0; --s) {
        const real *ds = dt + s * LANES, *us = ut + s * LANES, *gys = gyt + s * LANES;
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
                const real gexp = gh * pn[j] * dec[j];          /* d loss / d (delta A): A = a ln 2 */
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
}

/* Gradients of sum(gy * scan(u, delta, A, B, C)) from the forward's checkpoints. Returns 0, or 1 when memory
 * for the work buffers could not be allocated. */
int SCAN_NAME(aum_scan_backward)(const real *u, const real *delta, const real *A, const real *B, const real *C,
                                 const real *gy, const real *ckpt, real *gu, real *gdelta, real *gA_part,
                                 real *gB_part, real *gC_part, int64_t batch, int64_t E, int64_t G, int64_t N,
                                 int64_t L, int64_t chunk, int nthreads) {
    const int64_t kb = (E / G + LANES - 1) / LANES, units = batch * G * kb, n_chunks = (L + chunk - 1) / chunk;
    int failed = 0;
#pragma omp parallel for num_threads(nthreads) if(nthreads > 1) schedule(dynamic, 1)
    for (int64_t unit = 0; unit < units; ++unit) {
        SCAN_NAME(unit_t) p = SCAN_NAME(locate)(unit, E, G);
        const size_t nw = (size_t)(N * LANES), cw = (size_t)(chunk * LANES), cn = (size_t)(chunk * N);
        real *work = malloc(sizeof(real) * (4 * nw + 2 * chunk * nw + 5 * cw + 4 * cn));
        if (!work) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        real *a = work, *h = a + nw, *carry = h + nw, *ga = carry + nw, *states = ga + nw;
        real *decays = states + chunk * nw, *ut = decays + chunk * nw, *dt = ut + cw, *gyt = dt + cw;
        real *gut = gyt + cw, *gdt = gut + cw, *bt = gdt + cw, *ct = bt + cn, *gbt = ct + cn, *gct = gbt + cn;
        memset(a, 0, sizeof(real) * 4 * nw);
        for (int64_t j = 0; j < p.w; ++j)
            for (int64_t n = 0; n < N; ++n) a[n * LANES + j] = (real)(A[(p.e0 + j) * N + n] * LOG2E);
        const int64_t row = (p.b * E + p.e0) * L, grp = (p.b * G + p.g) * N * L;
        const int64_t part = ((p.b * G + p.g) * kb + p.k) * N * L;
        for (int64_t c = n_chunks - 1; c >= 0; --c) {
            const int64_t t0 = c * chunk, len = L - t0 < chunk ? L - t0 : chunk;
            const real *h0 = ckpt + (unit * n_chunks + c) * (int64_t)nw;
            SCAN_NAME(load_rows)(ut, u + row, L, t0, len, p.w);
            SCAN_NAME(load_rows)(dt, delta + row, L, t0, len, p.w);
            SCAN_NAME(load_rows)(gyt, gy + row, L, t0, len, p.w);
            SCAN_NAME(load_state_rows)(bt, B + grp, N, L, t0, len);
            SCAN_NAME(load_state_rows)(ct, C + grp, N, L, t0, len);
            memcpy(h, h0, sizeof(real) * nw);
            SCAN_NAME(forward_chunk)(len, N, a, h, ut, dt, bt, ct, gut, states, decays);   /* gut: scratch y */
            SCAN_NAME(backward_chunk)(len, N, a, h0, states, decays, ut, dt, gyt, bt, ct, carry, ga, gut, gdt,
                                      gbt, gct);
            SCAN_NAME(store_rows)(gu + row, gut, L, t0, len, p.w);
            SCAN_NAME(store_rows)(gdelta + row, gdt, L, t0, len, p.w);
            for (int64_t n = 0; n < N; ++n)
                for (int64_t s = 0; s < len; ++s) {
                    gB_part[part + n * L + t0 + s] = gbt[s * N + n];
                    gC_part[part + n * L + t0 + s] = gct[s * N + n];
                }
        }
        for (int64_t j = 0; j < p.w; ++j)
            for (int64_t n = 0; n < N; ++n) gA_part[(p.b * E + p.e0 + j) * N + n] = ga[n * LANES + j];
        free(work);
    }
    return failed;
}

#undef real
#endif
