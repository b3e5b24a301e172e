/* Fused selective scan (Mamba S6) forward and backward for the CPU, float32.
 *
 * Same maths as universality/scan.py (its docstring has the equations). Why C: the torch path
 * materialises [chunk, batch, d_inner, d_state] tensors for exp(delta * A) and the states, so it
 * is bound by memory traffic; here the state of one batch row, [d_inner][d_state], stays in L1,
 * and gcc vectorises the d_state loop (expf included, through glibc's libmvec under -ffast-math).
 *
 * Layout (time-major, contiguous, as SelectiveScanFn):
 *   u, delta, y, gy, gu, gdelta   [L][Bt][D]
 *   Bm, Cm, gB, gC                [L][Bt][N]
 *   A, gA                         [D][N]
 *   Dk, gD                        [D]
 *   starts                        [n_chunks][Bt][D][N]  state before each chunk (saved by the
 *                                 forward, read by the backward, which recomputes one chunk at
 *                                 a time from it)
 * Each call handles the batch rows b0 <= b < b1, so Python threads can split the batch without
 * copies. gA and gD are ACCUMULATED into (callers pass one zeroed buffer per thread and sum them
 * in a fixed order, which keeps results deterministic).
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#define IDX(t, b, i, Bt, W) ((((size_t)(t)) * (Bt) + (b)) * (W) + (i))

/* One position of the recurrence for one batch row: h <- exp(dt A) h + dt u B; returns nothing,
 * writes y[d] when y is not NULL. */
static inline void step(const float *restrict ut, const float *restrict dtt, const float *restrict A,
                        const float *restrict Bt_, const float *restrict Ct_, const float *restrict Dk,
                        float *restrict h, float *restrict yt, int D, int N)
{
    for (int d = 0; d < D; d++) {
        const float dt = dtt[d], x = ut[d], dx = dt * x;
        const float *restrict Ad = A + (size_t)d * N;
        float *restrict hd = h + (size_t)d * N;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int n = 0; n < N; n++) {
            const float hn = expf(dt * Ad[n]) * hd[n] + dx * Bt_[n];
            hd[n] = hn;
            acc += hn * Ct_[n];
        }
        if (yt) yt[d] = acc + Dk[d] * x;
    }
}

void scan_forward(const float *u, const float *delta, const float *A, const float *Bm,
                  const float *Cm, const float *Dk, float *y, float *starts, float *h,
                  int L, int Bt, int D, int N, int chunk, int b0, int b1)
{
    const size_t DN = (size_t)D * N;
    for (int b = b0; b < b1; b++) {
        memset(h, 0, DN * sizeof(float));
        for (int t = 0; t < L; t++) {
            if (t % chunk == 0) memcpy(starts + IDX(t / chunk, b, 0, Bt, DN), h, DN * sizeof(float));
            step(u + IDX(t, b, 0, Bt, D), delta + IDX(t, b, 0, Bt, D), A, Bm + IDX(t, b, 0, Bt, N),
                 Cm + IDX(t, b, 0, Bt, N), Dk, h, y + IDX(t, b, 0, Bt, D), D, N);
        }
    }
}

/* H: scratch of chunk * D * N floats (the states of one chunk); G: scratch of D * N floats (the
 * carried gradient dA_{t+1} * g_h_{t+1}); acc: scratch of 2 * N floats. */
void scan_backward(const float *u, const float *delta, const float *A, const float *Bm,
                   const float *Cm, const float *Dk, const float *starts, const float *gy,
                   float *gu, float *gdelta, float *gA, float *gB, float *gC, float *gD,
                   float *H, float *G, float *acc, int L, int Bt, int D, int N, int chunk,
                   int b0, int b1)
{
    const size_t DN = (size_t)D * N;
    const int n_chunks = (L + chunk - 1) / chunk;
    float *restrict gB_acc = acc, *restrict gC_acc = acc + N;
    for (int b = b0; b < b1; b++) {
        memset(G, 0, DN * sizeof(float));
        for (int c = n_chunks - 1; c >= 0; c--) {
            const int t0 = c * chunk, t1 = (t0 + chunk < L) ? t0 + chunk : L;
            const float *h0 = starts + IDX(c, b, 0, Bt, DN);
            /* Recompute this chunk's states from its saved start. */
            memcpy(H, h0, DN * sizeof(float));
            for (int t = t0; t < t1; t++) {
                float *Ht = H + (size_t)(t - t0) * DN;
                if (t > t0) memcpy(Ht, Ht - DN, DN * sizeof(float));
                step(u + IDX(t, b, 0, Bt, D), delta + IDX(t, b, 0, Bt, D), A,
                     Bm + IDX(t, b, 0, Bt, N), Cm + IDX(t, b, 0, Bt, N), Dk, Ht, NULL, D, N);
            }
            for (int t = t1 - 1; t >= t0; t--) {
                const float *restrict ut = u + IDX(t, b, 0, Bt, D);
                const float *restrict dtt = delta + IDX(t, b, 0, Bt, D);
                const float *restrict gyt = gy + IDX(t, b, 0, Bt, D);
                const float *restrict Bt_ = Bm + IDX(t, b, 0, Bt, N);
                const float *restrict Ct_ = Cm + IDX(t, b, 0, Bt, N);
                const float *restrict Ht = H + (size_t)(t - t0) * DN;
                const float *restrict Hp = (t > t0) ? Ht - DN : h0;
                float *restrict gut = gu + IDX(t, b, 0, Bt, D);
                float *restrict gdt = gdelta + IDX(t, b, 0, Bt, D);
                memset(acc, 0, 2 * N * sizeof(float));
                for (int d = 0; d < D; d++) {
                    const float dt = dtt[d], x = ut[d], dx = dt * x, g_y = gyt[d];
                    const float *restrict Ad = A + (size_t)d * N;
                    const float *restrict hd = Ht + (size_t)d * N, *restrict hp = Hp + (size_t)d * N;
                    float *restrict Gd = G + (size_t)d * N, *restrict gAd = gA + (size_t)d * N;
                    float g_du = 0.0f, g_dd = 0.0f;
#pragma omp simd reduction(+ : g_du, g_dd)
                    for (int n = 0; n < N; n++) {
                        const float dA = expf(dt * Ad[n]);
                        const float g = Gd[n] + g_y * Ct_[n];   /* dLoss/dh_t */
                        const float P = g * dA * hp[n];         /* dLoss/d(dt * A[d, n]) */
                        gC_acc[n] += g_y * hd[n];
                        gB_acc[n] += g * dx;
                        g_du += g * Bt_[n];
                        g_dd += P * Ad[n];
                        gAd[n] += P * dt;
                        Gd[n] = g * dA;
                    }
                    gut[d] = g_du * dt + g_y * Dk[d];
                    gdt[d] = g_du * x + g_dd;
                    gD[d] += g_y * x;
                }
                memcpy(gB + IDX(t, b, 0, Bt, N), gB_acc, N * sizeof(float));
                memcpy(gC + IDX(t, b, 0, Bt, N), gC_acc, N * sizeof(float));
            }
        }
    }
}
