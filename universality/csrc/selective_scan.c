/* Fused selective scan (Mamba S6) forward and backward for the CPU, float32.
 *
 * Same maths as universality/models/scan.py (its docstring has the equations). Why C: the torch
 * path materialises [chunk, batch, d_inner, d_state] tensors for exp(delta * A) and the states,
 * so it is bound by memory traffic; here the state of one batch row stays in L1 / L2.
 *
 * The state is laid out [d_state][d_inner] (N outer, D inner) and so is A (the wrapper passes A
 * transposed): every inner loop runs over d, contiguous, vectorised by gcc (16 floats per
 * AVX-512 vector, 16 vectors at d_inner 256), and the loop over n is outer. The sums over n
 * (y in the forward, dLoss/du and dLoss/ddelta in the backward) are then plain vertical
 * accumulations into [D] arrays; only the sums over d (dLoss/dB, dLoss/dC: one per (t, n))
 * need a horizontal reduction. With [D][N] the inner loop was one 16-lane vector and every
 * (t, d) ended in two or three horizontal reductions, which dominated. exp is an inline
 * polynomial (cephes' expf, ~1 ulp) so that the loops need no call into libmvec.
 *
 * Layout (time-major, contiguous, as SelectiveScanFn):
 *   u, delta, y, gy, gu, gdelta   [L][Bt][D]
 *   Bm, Cm, gB, gC                [L][Bt][N]
 *   At, gAt                       [N][D]   A and its gradient, TRANSPOSED
 *   Dk, gD                        [D]
 *   starts                        [n_chunks][Bt][N][D]  state before each chunk (saved by the
 *                                 forward, read by the backward, which recomputes one chunk at
 *                                 a time from it)
 * Each call handles the batch rows b0 <= b < b1, so Python threads can split the batch without
 * copies. gAt and gD are ACCUMULATED into (callers pass one zeroed buffer per thread and sum them
 * in a fixed order, which keeps results deterministic; every reduction here has a fixed order).
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#define IDX(t, b, i, Bt, W) ((((size_t)(t)) * (Bt) + (b)) * (W) + (i))

/* exp(x) for float32, cephes' expf (range reduction by ln 2, degree-5 polynomial, ~1 ulp);
 * inputs are clamped to [-87, 88] (results stay normal: exp(-87) ~ 1.6e-38 instead of 0 below).
 * Branch-free so that gcc vectorises it inline. */
static inline float exp_f(float x)
{
    x = fminf(fmaxf(x, -87.0f), 88.0f);
    const float k = rintf(x * 1.44269504088896341f);
    float r = fmaf(k, -0.693359375f, x);
    r = fmaf(k, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r + 1.0f);
    union { int i; float f; } s = { .i = ((int)k + 127) << 23 };
    return p * s.f;
}

/* One position of the recurrence for one batch row: h <- exp(dt A) h + dt u B, from hp (the
 * previous state; may equal h) into h, both [N][D]; writes y when yt is not NULL and
 * exp(dt A) into dA ([N][D]) when dA is not NULL. dx: scratch of D floats. */
static inline void step(const float *restrict ut, const float *restrict dtt, const float *restrict At,
                        const float *restrict Bt_, const float *restrict Ct_, const float *restrict Dk,
                        const float *hp, float *h, float *restrict yt, float *restrict dA,
                        float *restrict dx, int D, int N)
{
    for (int d = 0; d < D; d++) dx[d] = dtt[d] * ut[d];
    if (yt)
        for (int d = 0; d < D; d++) yt[d] = Dk[d] * ut[d];
    for (int n = 0; n < N; n++) {
        const float b = Bt_[n], c = Ct_[n];
        const float *restrict An = At + (size_t)n * D;
        const float *hpn = hp + (size_t)n * D;
        float *hn = h + (size_t)n * D;
        if (yt) {
#pragma omp simd
            for (int d = 0; d < D; d++) {
                const float v = exp_f(dtt[d] * An[d]) * hpn[d] + dx[d] * b;
                hn[d] = v;
                yt[d] += v * c;
            }
        } else {
            float *restrict dAn = dA + (size_t)n * D;
#pragma omp simd
            for (int d = 0; d < D; d++) {
                const float e = exp_f(dtt[d] * An[d]);
                dAn[d] = e;
                hn[d] = e * hpn[d] + dx[d] * b;
            }
        }
    }
}

/* h: scratch of (N + 1) * D floats (the state, then dx). */
void scan_forward(const float *u, const float *delta, const float *At, const float *Bm,
                  const float *Cm, const float *Dk, float *y, float *starts, float *h,
                  int L, int Bt, int D, int N, int chunk, int b0, int b1)
{
    const size_t DN = (size_t)D * N;
    float *dx = h + DN;
    for (int b = b0; b < b1; b++) {
        memset(h, 0, DN * sizeof(float));
        for (int t = 0; t < L; t++) {
            if (t % chunk == 0) memcpy(starts + IDX(t / chunk, b, 0, Bt, DN), h, DN * sizeof(float));
            step(u + IDX(t, b, 0, Bt, D), delta + IDX(t, b, 0, Bt, D), At, Bm + IDX(t, b, 0, Bt, N),
                 Cm + IDX(t, b, 0, Bt, N), Dk, h, h, y + IDX(t, b, 0, Bt, D), NULL, dx, D, N);
        }
    }
}

/* H: scratch of 2 * chunk * N * D floats (the states of one chunk, then exp(delta A) of each of
 * its positions); G: scratch of N * D floats (the carried gradient dA_{t+1} * g_h_{t+1});
 * acc: scratch of 3 * D floats. */
void scan_backward(const float *u, const float *delta, const float *At, const float *Bm,
                   const float *Cm, const float *Dk, const float *starts, const float *gy,
                   float *gu, float *gdelta, float *gAt, float *gB, float *gC, float *gD,
                   float *H, float *G, float *acc, int L, int Bt, int D, int N, int chunk,
                   int b0, int b1)
{
    const size_t DN = (size_t)D * N;
    const int n_chunks = (L + chunk - 1) / chunk;
    const int kmax = chunk < L ? chunk : L;
    float *restrict E = H + (size_t)kmax * DN;
    float *restrict g_du = acc, *restrict g_dd = acc + D, *restrict dx = acc + 2 * (size_t)D;
    for (int b = b0; b < b1; b++) {
        memset(G, 0, DN * sizeof(float));
        for (int c = n_chunks - 1; c >= 0; c--) {
            const int t0 = c * chunk, t1 = (t0 + chunk < L) ? t0 + chunk : L;
            const float *h0 = starts + IDX(c, b, 0, Bt, DN);
            /* Recompute this chunk's states (and exp(delta A)) from its saved start. */
            for (int t = t0; t < t1; t++) {
                float *Ht = H + (size_t)(t - t0) * DN;
                step(u + IDX(t, b, 0, Bt, D), delta + IDX(t, b, 0, Bt, D), At,
                     Bm + IDX(t, b, 0, Bt, N), Cm + IDX(t, b, 0, Bt, N), Dk,
                     t > t0 ? Ht - DN : h0, Ht, NULL, E + (size_t)(t - t0) * DN, dx, D, N);
            }
            for (int t = t1 - 1; t >= t0; t--) {
                const float *restrict ut = u + IDX(t, b, 0, Bt, D);
                const float *restrict dtt = delta + IDX(t, b, 0, Bt, D);
                const float *restrict gyt = gy + IDX(t, b, 0, Bt, D);
                const float *restrict Bt_ = Bm + IDX(t, b, 0, Bt, N);
                const float *restrict Ct_ = Cm + IDX(t, b, 0, Bt, N);
                const float *restrict Ht = H + (size_t)(t - t0) * DN;
                const float *restrict Et = E + (size_t)(t - t0) * DN;
                const float *restrict Hp = (t > t0) ? Ht - DN : h0;
                float *restrict gBt = gB + IDX(t, b, 0, Bt, N), *restrict gCt = gC + IDX(t, b, 0, Bt, N);
                for (int d = 0; d < D; d++) {
                    g_du[d] = 0.0f;
                    g_dd[d] = 0.0f;
                    dx[d] = dtt[d] * ut[d];
                }
                for (int n = 0; n < N; n++) {
                    const float bn = Bt_[n], cn = Ct_[n];
                    const float *restrict An = At + (size_t)n * D, *restrict En = Et + (size_t)n * D;
                    const float *restrict hn = Ht + (size_t)n * D, *restrict hpn = Hp + (size_t)n * D;
                    float *restrict Gn = G + (size_t)n * D, *restrict gAn = gAt + (size_t)n * D;
                    float sB = 0.0f, sC = 0.0f;
#pragma omp simd reduction(+ : sB, sC)
                    for (int d = 0; d < D; d++) {
                        const float dA = En[d];
                        const float g = Gn[d] + gyt[d] * cn;    /* dLoss/dh_t */
                        const float gdA = g * dA;
                        const float P = gdA * hpn[d];           /* dLoss/d(dt * A[d, n]) */
                        sC += gyt[d] * hn[d];
                        sB += g * dx[d];
                        g_du[d] += g * bn;
                        g_dd[d] += P * An[d];
                        gAn[d] += P * dtt[d];
                        Gn[d] = gdA;
                    }
                    gBt[n] = sB;
                    gCt[n] = sC;
                }
                float *restrict gut = gu + IDX(t, b, 0, Bt, D);
                float *restrict gdt = gdelta + IDX(t, b, 0, Bt, D);
                for (int d = 0; d < D; d++) {
                    gut[d] = g_du[d] * dtt[d] + gyt[d] * Dk[d];
                    gdt[d] = g_du[d] * ut[d] + g_dd[d];
                    gD[d] += gyt[d] * ut[d];
                }
            }
        }
    }
}
