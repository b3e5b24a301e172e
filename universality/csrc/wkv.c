/* RWKV-4 WKV recurrence forward and backward for the CPU, float32.
 *
 * Same maths as universality/models/wkv.py (its docstring has the equations). Per batch row b
 * and channel c, with w = -exp(time_decay[c]) < 0 and u = time_first[c]:
 *
 *   y_t = (e^{o} a + e^{u + k_t} v_t) / (e^{o} b + e^{u + k_t})        (state (a, b, o) before t)
 *   (a, b, o) <- (e^{o + w - o'} a + e^{k_t - o'} v_t, e^{o + w - o'} b + e^{k_t - o'}, o'),
 *                o' = max(o + w, k_t)
 *
 * i.e. transformers' rwkv_linear_attention_cpu, with its max-normalised state: the real
 * numerator is a e^{o}, the real denominator b e^{o}. Start: a = b = 0, o = -1e38.
 *
 * Why C: the torch loop issues ~20 tiny ops per position; here one position of one batch row
 * is one vectorised pass over the channels (expf from glibc's libmvec under -ffast-math).
 *
 * Layout (batch-major, contiguous, as the model's linear layers write them):
 *   k, v, y, gy, gk, gv, num, den, mx   [Bt][T][C]
 *   w (already -exp(time_decay)), u, gw, gu   [C]
 * Each call handles the batch rows b0 <= b < b1, so Python threads can split the batch without
 * copies. gw and gu are ACCUMULATED into (callers pass one zeroed buffer per thread and sum them
 * in a fixed order: deterministic). gw is d/dw; the caller multiplies by w for d/d time_decay.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#define MIN_VALUE (-1e38f)
/* exp of a difference of two log-scales; one of each pair is exactly 0, the other <= 0. Below
 * -87 the true value (< 1.7e-38) is negligible against the other term (1), and the clamp keeps
 * libmvec's fast expf inside its documented range (the start state is -1e38). */
#define EXPD(x) expf(fmaxf((x), -87.0f))
#define ROW(p, b, t) ((p) + ((size_t)(b) * T + (t)) * C)

/* scratch: 3 * C floats. num/den/mx: the state after every position, or all NULL. */
void wkv_forward(const float *w, const float *u, const float *k, const float *v, float *y,
                 float *num, float *den, float *mx, float *scratch, int T, int C, int b0, int b1)
{
    float *restrict aa = scratch, *restrict bb = scratch + C, *restrict pp = scratch + 2 * C;
    for (int b = b0; b < b1; b++) {
        for (int c = 0; c < C; c++) { aa[c] = 0.0f; bb[c] = 0.0f; pp[c] = MIN_VALUE; }
        for (int t = 0; t < T; t++) {
            const float *restrict kt = ROW(k, b, t), *restrict vt = ROW(v, b, t);
            float *restrict yt = ROW(y, b, t);
#pragma omp simd
            for (int c = 0; c < C; c++) {
                const float kk = kt[c], vv = vt[c], ww = u[c] + kk;
                float q = fmaxf(pp[c], ww);
                float e1 = EXPD(pp[c] - q), e2 = EXPD(ww - q);
                yt[c] = (e1 * aa[c] + e2 * vv) / (e1 * bb[c] + e2);
                const float wo = pp[c] + w[c];
                q = fmaxf(wo, kk);
                e1 = EXPD(wo - q);
                e2 = EXPD(kk - q);
                aa[c] = e1 * aa[c] + e2 * vv;
                bb[c] = e1 * bb[c] + e2;
                pp[c] = q;
            }
            if (num) {
                memcpy(ROW(num, b, t), aa, C * sizeof(float));
                memcpy(ROW(den, b, t), bb, C * sizeof(float));
                memcpy(ROW(mx, b, t), pp, C * sizeof(float));
            }
        }
    }
}

/* y: the forward's output. scratch: 2 * T * C + 7 * C floats.
 *
 * Pass 1 (forward in time) re-runs the recurrence, accumulates gw and gu and keeps, per
 * position, iden = 1 / (e1 b + e2) and ez = k + u - o_out (o_out: the output's log-scale).
 * Pass 2 (backward in time) carries the gradients w.r.t. the real state (gp for the numerator,
 * gq for the denominator) in the same max-normalised form, with log-scale og:
 *   gk_t = gy_t e^{u+k_t} (v_t - y_t) / D_t + e^{k_t} (gp v_t + gq),  gv_t = gy_t e^{u+k_t} / D_t + e^{k_t} gp
 *   gp <- e^{w} gp + gy_t / D_t,  gq <- e^{w} gq - gy_t y_t / D_t     (D_t the real denominator)
 */
void wkv_backward(const float *w, const float *u, const float *k, const float *v, const float *y,
                  const float *gy, float *gk, float *gv, float *gw, float *gu, float *scratch,
                  int T, int C, int b0, int b1)
{
    float *restrict iden = scratch, *restrict ez = scratch + (size_t)T * C;
    float *restrict s = scratch + 2 * (size_t)T * C;
    float *restrict p = s, *restrict q = s + C, *restrict o = s + 2 * C;
    float *restrict dpdw = s + 3 * C, *restrict dqdw = s + 4 * C;
    float *restrict gp = s + 5 * C, *restrict gq = s + 6 * C;
    for (int b = b0; b < b1; b++) {
        for (int c = 0; c < C; c++) {
            p[c] = q[c] = dpdw[c] = dqdw[c] = 0.0f;
            o[c] = MIN_VALUE;
        }
        for (int t = 0; t < T; t++) {
            const float *restrict kt = ROW(k, b, t), *restrict vt = ROW(v, b, t);
            const float *restrict yt = ROW(y, b, t), *restrict gyt = ROW(gy, b, t);
            float *restrict it = iden + (size_t)t * C, *restrict et = ez + (size_t)t * C;
#pragma omp simd
            for (int c = 0; c < C; c++) {
                const float kk = kt[c], vv = vt[c], yy = yt[c], g = gyt[c];
                const float no = fmaxf(o[c], kk + u[c]);
                float A = EXPD(o[c] - no), B = EXPD(kk + u[c] - no);
                const float id = 1.0f / (A * q[c] + B);
                it[c] = id;
                et[c] = kk + u[c] - no;
                gw[c] += g * (dpdw[c] - dqdw[c] * yy) * id * A;
                gu[c] += g * (vv - yy) * B * id;
                const float wo = w[c] + o[c], n2 = fmaxf(wo, kk);
                A = EXPD(wo - n2);
                B = EXPD(kk - n2);
                dpdw[c] = A * (p[c] + dpdw[c]);
                dqdw[c] = A * (q[c] + dqdw[c]);
                p[c] = A * p[c] + B * vv;
                q[c] = A * q[c] + B;
                o[c] = n2;
            }
        }
        for (int c = 0; c < C; c++) { gp[c] = gq[c] = 0.0f; o[c] = MIN_VALUE; }
        for (int t = T - 1; t >= 0; t--) {
            const float *restrict kt = ROW(k, b, t), *restrict vt = ROW(v, b, t);
            const float *restrict yt = ROW(y, b, t), *restrict gyt = ROW(gy, b, t);
            const float *restrict it = iden + (size_t)t * C, *restrict et = ez + (size_t)t * C;
            float *restrict gkt = ROW(gk, b, t), *restrict gvt = ROW(gv, b, t);
#pragma omp simd
            for (int c = 0; c < C; c++) {
                const float kk = kt[c], vv = vt[c], yy = yt[c];
                const float gz = gyt[c] * it[c];
                const float A = gz * expf(et[c]);                /* et <= 0 */
                const float B = EXPD(kk + o[c]);                 /* k + o <= 0 (see wkv.py) */
                gkt[c] = A * (vv - yy) + B * (gp[c] * vv + gq[c]);
                gvt[c] = A + B * gp[c];
                const float wo = w[c] + o[c], lo = et[c] - kk - u[c];
                const float no = fmaxf(wo, lo);
                const float e1 = EXPD(wo - no), e2 = gz * EXPD(lo - no);
                gp[c] = e1 * gp[c] + e2;
                gq[c] = e1 * gq[c] - e2 * yy;
                o[c] = no;
            }
        }
    }
}
