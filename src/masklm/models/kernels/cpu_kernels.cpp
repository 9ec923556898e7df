// Fused CPU kernels for masklm's training step, forward and backward (models/cpu_kernels.py builds this file
// with the machine's C++ compiler at first use and loads it with ctypes):
// - attention with dropout on the probabilities (attn_forward, attn_backward);
// - BERT's post-LN sublayer exit, LayerNorm(residual + dropout(h + bias)) (addnorm_forward, addnorm_backward);
// - the FFN's activation with its bias, GELU(h + bias) (gelu_forward, gelu_backward);
// - the loss, cross-entropy over [N, V] logits (ce_forward, ce_backward).
//
// Why: on a CPU, PyTorch spells attention with dropout out as matmul, softmax, dropout and matmul, each a pass
// over a [B, H, T, T] tensor in memory, plus copies of q, k and v into contiguous blocks and of their gradients
// back into the fused QKV layout. Here each (sequence, head) pair is one task: its scores, softmax, dropout
// and products stay in the core's cache, q/k/v are read where the QKV projection left them, and the
// gradients are written straight into the QKV gradient. The maths is the same: softmax(scale q k^T + bias)
// with inverted dropout on the probabilities, times v; the softmax (before dropout) is saved for backward.
//
// The sublayer exit is one pass over each row instead of five (bias, dropout, residual, mean/variance, scale)
// and its backward one more (LayerNorm's backward, dropout's, and the bias, gamma and beta sums). GELU takes
// its bias in the same pass (no copy of the bias into the matmul's output) and its backward the bias sum.
// Cross-entropy's forward reads the logits once and writes only each row's logsumexp; its backward writes
// w (softmax - onehot) in one pass (log_softmax writes a full [N, V] array forward and reads it back).
//
// Attention's dropout draws 16 bits per probability from one SFC64 stream per (sequence, head) pair (Chris
// Doty-Humphrey's Small Fast Chaotic generator, the one numpy ships), seeded from one 64-bit draw of torch's
// generator per call, and keeps an element when its 16-bit draw, read as a signed integer, is >= thr: the
// same rule and keep probability as models.attention.dropout. Backward replays the stream instead of saving
// the mask; the sublayer exit has one stream per row, so no mask depends on the thread count. exp() is
// Cephes' single-precision method (range reduction to n ln2 + r, a degree-6 polynomial).
//
// The vector type is GCC's generic 64-byte vector: AVX-512 registers where the CPU has them, pairs of AVX2
// or four SSE/NEON registers otherwise (the build passes -march=native).

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define VW 16
typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef int16_t vs16 __attribute__((vector_size(32), aligned(2)));

static inline vf vload(const float *p) { return *(const vfu *)p; }
static inline void vstore(float *p, vf x) { *(vfu *)p = x; }
static inline vf vset(float x) { return vf{} + x; }

// exp(x) for x <= 0 (scores minus their row maximum); x below -87.3, -inf included, gives exactly 0.
// Cephes' single-precision method: x = n ln2 + r, a degree-6 polynomial for e^r, 2^n into the exponent.
static inline vf vexp(vf x) {
    const vf lo = vset(-87.33654f);
    vi under = x < lo;
    x = under ? lo : x;
    vf n = (x * vset(1.44269504088896341f) + vset(12582912.0f)) - vset(12582912.0f);  // round to nearest
    vf r = x - n * vset(0.693359375f) + n * vset(2.12194440e-4f);
    vf y = vset(1.9875691500e-4f);
    y = y * r + vset(1.3981999507e-3f);
    y = y * r + vset(8.3334519073e-3f);
    y = y * r + vset(4.1665795894e-2f);
    y = y * r + vset(1.6666665459e-1f);
    y = y * r + vset(5.0000001201e-1f);
    y = y * r * r + r + vset(1.0f);
    vi bits = (vi)y + (__builtin_convertvector(n, vi) << 23);
    return under ? vset(0.0f) : (vf)bits;
}

static inline float hsum(vf x) { float s = 0; for (int i = 0; i < VW; i++) s += x[i]; return s; }
static inline float hmax(vf x) { float s = x[0]; for (int i = 1; i < VW; i++) s = x[i] > s ? x[i] : s; return s; }

// C[r][0:16*NV] = sum_k A(r, k) * B[k][0:16*NV] for R rows; A(r, k) at A[r * sr + k * sk] (so A may be read
// transposed), B rows ldb floats apart, C rows ldc floats apart
template <int NV, int R>
static inline void micro(const float *A, long sr, long sk, long K, const float *B, long ldb, float *C, long ldc) {
    vf acc[R][NV];
    for (int r = 0; r < R; r++) for (int v = 0; v < NV; v++) acc[r][v] = vset(0.0f);
    for (long k = 0; k < K; k++) {
        vf b[NV];
        for (int v = 0; v < NV; v++) b[v] = vload(B + k * ldb + v * VW);
        for (int r = 0; r < R; r++) {
            vf a = vset(A[r * sr + k * sk]);
            for (int v = 0; v < NV; v++) acc[r][v] += a * b[v];
        }
    }
    for (int r = 0; r < R; r++) for (int v = 0; v < NV; v++) vstore(C + r * ldc + v * VW, acc[r][v]);
}

template <int NV>
static void rows_nv(const float *A, long sr, long sk, long M, long K, const float *B, long ldb, float *C, long ldc) {
    constexpr int R = NV > 4 ? 2 : (NV > 2 ? 4 : 6);
    long i = 0;
    for (; i + R <= M; i += R) micro<NV, R>(A + i * sr, sr, sk, K, B, ldb, C + i * ldc, ldc);
    for (; i < M; i++) micro<NV, 1>(A + i * sr, sr, sk, K, B, ldb, C + i * ldc, ldc);
}

// C[M][N16] = A[M][K] B[K][N16], A(r, k) at A[r * sr + k * sk]; N16 a multiple of 16
static void gemm(const float *A, long sr, long sk, long M, long K, const float *B, long ldb, float *C, long ldc,
                 long N16) {
    for (long c = 0; c < N16; c += 8 * VW) {
        long nv = (N16 - c) / VW;
        if (nv > 8) nv = 8;
        switch (nv) {
            case 1: rows_nv<1>(A, sr, sk, M, K, B + c, ldb, C + c, ldc); break;
            case 2: rows_nv<2>(A, sr, sk, M, K, B + c, ldb, C + c, ldc); break;
            case 3: rows_nv<3>(A, sr, sk, M, K, B + c, ldb, C + c, ldc); break;
            case 4: rows_nv<4>(A, sr, sk, M, K, B + c, ldb, C + c, ldc); break;
            case 5: rows_nv<5>(A, sr, sk, M, K, B + c, ldb, C + c, ldc); break;
            case 6: rows_nv<6>(A, sr, sk, M, K, B + c, ldb, C + c, ldc); break;
            case 7: rows_nv<7>(A, sr, sk, M, K, B + c, ldb, C + c, ldc); break;
            default: rows_nv<8>(A, sr, sk, M, K, B + c, ldb, C + c, ldc); break;
        }
    }
}

struct SFC64 {
    uint64_t a, b, c, w;
    static uint64_t splitmix(uint64_t &s) {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    explicit SFC64(uint64_t seed) {
        a = splitmix(seed); b = splitmix(seed); c = splitmix(seed); w = 1;
        for (int i = 0; i < 12; i++) next();
    }
    inline uint64_t next() {
        uint64_t t = a + b + w++;
        a = b ^ (b >> 11);
        b = c + (c << 3);
        c = ((c << 24) | (c >> 40)) + t;
        return t;
    }
    // n 16-bit draws (n a multiple of 4) into out, four per 64-bit draw, low bits first
    inline void bits(int16_t *out, long n) {
        for (long j = 0; j < n; j += 4) { uint64_t x = next(); memcpy(out + j, &x, 8); }
    }
};

// dropout's rule: keep where the signed 16-bit draw >= thr (probability 1 - p within 1/65536), scale kept ones
struct DropRule {
    int thr;
    float scale;
    explicit DropRule(float p) : thr(-32768 + (int)(p * 65536.0f + 0.5f)), scale(p > 0 ? 1.0f / (1.0f - p) : 1.0f) {}
};

// the dropout multiplier of a row: rule.scale where the 16-bit draw >= rule.thr, else 0 (Tk16 entries, padding 0)
static inline void row_keep(SFC64 &rng, int16_t *bits, float *keep, long Tk, long Tk16, const DropRule &rule) {
    rng.bits(bits, Tk16);
    for (long j = 0; j < Tk16; j += VW) {
        vi b = __builtin_convertvector(*(const vs16 *)(bits + j), vi);
        vf m = (b >= rule.thr) ? vset(rule.scale) : vset(0.0f);
        vstore(keep + j, m);
    }
    for (long j = Tk; j < Tk16; j++) keep[j] = 0.0f;
}

static inline long up16(long n) { return (n + VW - 1) / VW * VW; }
static inline void *alloc_floats(long n) { return aligned_alloc(64, sizeof(float) * up16(n + 32)); }

// Column sums of a [N, W] result over rows, for bias (and LayerNorm) gradients: each thread adds its rows in
// float for 64 rows at a time, then into its own double slice of parts [threads][W]; reduce_parts adds the
// slices in thread order, so a run gives the same sums every time (no atomics, no order of arrival).
struct ColumnSums {
    long W, rows = 0;
    float *acc;
    double *part;
    ColumnSums(long W_, double *parts)
        : W(W_), acc((float *)alloc_floats(W_)), part(parts + (size_t)omp_get_thread_num() * W_) {
        memset(acc, 0, sizeof(float) * W);
    }
    inline void row_done() {
        if (++rows == 64) { flush(); rows = 0; }
    }
    inline void flush() { for (long j = 0; j < W; j++) { part[j] += acc[j]; acc[j] = 0.0f; } }
    ~ColumnSums() { flush(); free(acc); }
};

// parts [used][W] -> their sum in parts[0..W), thread 0 first
static inline void reduce_parts(double *parts, int used, long W) {
    for (int t = 1; t < used; t++)
        for (long j = 0; j < W; j++) parts[j] += parts[(size_t)t * W + j];
}

// the SFC64 stream of one (sequence, head) pair of an attention call
static inline uint64_t pair_seed(uint64_t seed, long pair) { return seed + (uint64_t)pair * 0xD1B54A32D192ED03ull; }

// the [T, d] block of sequence b, head h in a [B, H, T, d] view with element strides s (b, h, t)
static inline const float *block(const float *base, const long *s, long b, long h) {
    return base + b * s[0] + h * s[1];
}
static inline float *block(float *base, const long *s, long b, long h) { return base + b * s[0] + h * s[1]; }

// K^T of one pair: dst[c][j] = src[j * ld + c], c < d, j < T; columns T..T16 zero
static inline void transpose(const float *src, long ld, long T, long d, float *dst, long T16) {
    for (long j = 0; j < T; j++) {
        const float *row = src + j * ld;
        for (long c = 0; c < d; c++) dst[c * T16 + j] = row[c];
    }
    for (long c = 0; c < d; c++) for (long j = T; j < T16; j++) dst[c * T16 + j] = 0.0f;
}

extern "C" {

// q [B,H,Tq,d], k/v [B,H,Tk,d] strided views (strides b, h, t; d contiguous, d % 16 == 0); out likewise;
// P [B,H,Tq,Tk16] contiguous, the softmax (before dropout) saved for backward, zero past Tk.
// bias: additive, element (b, i, j) at bias[b * bias_b + i * bias_q + j], or NULL.
void attn_forward(const float *q, const long *qs, const float *k, const long *ks, const float *v, const long *vs,
                  float *out, const long *os, float *P, long B, long H, long Tq, long Tk, long d,
                  const float *bias, long bias_b, long bias_q, float scale, float p, uint64_t seed, int threads) {
    const long Tk16 = up16(Tk);
    const DropRule rule(p);
    #pragma omp parallel num_threads(threads)
    {
        float *Kt = (float *)alloc_floats(d * Tk16 + Tq * Tk16 + Tk16);
        float *S = Kt + d * Tk16, *keep = S + Tq * Tk16;
        int16_t *bits = (int16_t *)alloc_floats(Tk16);
        #pragma omp for schedule(static)
        for (long pair = 0; pair < B * H; pair++) {
            long b = pair / H, h = pair % H;
            transpose(block(k, ks, b, h), ks[2], Tk, d, Kt, Tk16);
            gemm(block(q, qs, b, h), qs[2], 1, Tq, d, Kt, Tk16, S, Tk16, Tk16);
            SFC64 rng(pair_seed(seed, pair));
            float *Pp = P + pair * Tq * Tk16;
            for (long i = 0; i < Tq; i++) {
                float *s = S + i * Tk16;
                if (scale != 1.0f) for (long j = 0; j < Tk; j++) s[j] *= scale;
                if (bias) {
                    const float *bi = bias + b * bias_b + i * bias_q;
                    for (long j = 0; j < Tk; j++) s[j] += bi[j];
                }
                for (long j = Tk; j < Tk16; j++) s[j] = -__builtin_inff();
                vf mx = vset(-__builtin_inff());
                for (long j = 0; j < Tk16; j += VW) { vf x = vload(s + j); mx = x > mx ? x : mx; }
                vf sum = vset(0.0f), vm = vset(hmax(mx));
                for (long j = 0; j < Tk16; j += VW) { vf e = vexp(vload(s + j) - vm); vstore(s + j, e); sum += e; }
                vf vinv = vset(1.0f / hsum(sum));
                float *pp = Pp + i * Tk16;
                if (p > 0) {
                    row_keep(rng, bits, keep, Tk, Tk16, rule);
                    for (long j = 0; j < Tk16; j += VW) {
                        vf pr = vload(s + j) * vinv;
                        vstore(pp + j, pr);
                        vstore(s + j, pr * vload(keep + j));
                    }
                } else {
                    for (long j = 0; j < Tk16; j += VW) {
                        vf pr = vload(s + j) * vinv;
                        vstore(pp + j, pr);
                        vstore(s + j, pr);
                    }
                }
            }
            gemm(S, Tk16, 1, Tq, Tk, block(v, vs, b, h), vs[2], block(out, os, b, h), os[2], d);
        }
        free(Kt); free(bits);
    }
}

// gradients: dout [B,H,Tq,d] strided; dq/dk/dv strided like q/k/v, each written entirely
void attn_backward(const float *q, const long *qs, const float *k, const long *ks, const float *v, const long *vs,
                   const float *dout, const long *dos, const float *P, float *dq, const long *dqs, float *dk,
                   const long *dks, float *dv, const long *dvs, long B, long H, long Tq, long Tk, long d,
                   float scale, float p, uint64_t seed, int threads) {
    const long Tk16 = up16(Tk);
    const DropRule rule(p);
    #pragma omp parallel num_threads(threads)
    {
        float *Vt = (float *)alloc_floats(d * Tk16 + 3 * Tq * Tk16 + Tk16);
        float *G = Vt + d * Tk16, *Pd = G + Tq * Tk16, *dS = Pd + Tq * Tk16, *keep = dS + Tq * Tk16;
        int16_t *bits = (int16_t *)alloc_floats(Tk16);
        #pragma omp for schedule(static)
        for (long pair = 0; pair < B * H; pair++) {
            long b = pair / H, h = pair % H;
            const float *gp = block(dout, dos, b, h);
            transpose(block(v, vs, b, h), vs[2], Tk, d, Vt, Tk16);
            gemm(gp, dos[2], 1, Tq, d, Vt, Tk16, G, Tk16, Tk16);  // dPd = dO V^T
            SFC64 rng(pair_seed(seed, pair));
            const float *Pp = P + pair * Tq * Tk16;
            vf vscale = vset(scale);
            for (long i = 0; i < Tq; i++) {
                const float *pr = Pp + i * Tk16;
                float *g = G + i * Tk16, *pd = Pd + i * Tk16, *ds = dS + i * Tk16;
                vf dot = vset(0.0f);
                if (p > 0) {
                    row_keep(rng, bits, keep, Tk, Tk16, rule);
                    for (long j = 0; j < Tk16; j += VW) {
                        vf m = vload(keep + j), x = vload(pr + j), gj = vload(g + j) * m;
                        vstore(pd + j, x * m);
                        vstore(g + j, gj);
                        dot += gj * x;
                    }
                } else {
                    for (long j = 0; j < Tk16; j += VW) {
                        vf x = vload(pr + j);
                        vstore(pd + j, x);
                        dot += vload(g + j) * x;
                    }
                }
                vf vdot = vset(hsum(dot));
                for (long j = 0; j < Tk16; j += VW) vstore(ds + j, vload(pr + j) * (vload(g + j) - vdot) * vscale);
            }
            gemm(Pd, 1, Tk16, Tk, Tq, gp, dos[2], block(dv, dvs, b, h), dvs[2], d);  // dV = Pd^T dO
            gemm(dS, 1, Tk16, Tk, Tq, block(q, qs, b, h), qs[2], block(dk, dks, b, h), dks[2], d);  // dK = dS^T Q
            gemm(dS, Tk16, 1, Tq, Tk, block(k, ks, b, h), ks[2], block(dq, dqs, b, h), dqs[2], d);  // dQ = dS K
        }
        free(Vt); free(bits);
    }
}

}

// ---- post-LN sublayer exit: LayerNorm(residual + dropout(h + bias)) ----------------------------------------

// One SFC64 stream per row (seed + row * odd constant), so the mask does not depend on the thread count.
static inline uint64_t row_seed(uint64_t seed, long row) { return seed + (uint64_t)row * 0x9FB21C651E98DF25ull; }

extern "C" {

// h, residual, y, xhat: [N, D] contiguous (D % 16 == 0); rstd: [N]. y = LN(residual + keep * (h + bias)),
// keep = scale or 0 per the 16-bit rule; xhat (normalised, before gamma/beta) and rstd are saved for backward.
void addnorm_forward(const float *h, const float *bias, const float *residual, const float *gamma,
                     const float *beta, float *y, float *xhat, float *rstd, long N, long D, float eps, float p,
                     uint64_t seed, int threads) {
    const DropRule rule(p);
    #pragma omp parallel num_threads(threads)
    {
        float *keep = (float *)alloc_floats(D);
        int16_t *bits = (int16_t *)alloc_floats(D);
        #pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            const float *hn = h + n * D, *rn = residual + n * D;
            float *xn = xhat + n * D, *yn = y + n * D;
            if (p > 0) { SFC64 rng(row_seed(seed, n)); row_keep(rng, bits, keep, D, D, rule); }
            vf sum = vset(0.0f);
            for (long j = 0; j < D; j += VW) {
                vf z = vload(hn + j) + vload(bias + j);
                z = vload(rn + j) + (p > 0 ? z * vload(keep + j) : z);
                vstore(xn + j, z);
                sum += z;
            }
            vf mean = vset(hsum(sum) / D), sq = vset(0.0f);
            for (long j = 0; j < D; j += VW) { vf c = vload(xn + j) - mean; sq += c * c; }
            float r = 1.0f / __builtin_sqrtf(hsum(sq) / D + eps);
            rstd[n] = r;
            vf vr = vset(r);
            for (long j = 0; j < D; j += VW) {
                vf xh = (vload(xn + j) - mean) * vr;
                vstore(xn + j, xh);
                vstore(yn + j, xh * vload(gamma + j) + vload(beta + j));
            }
        }
        free(keep); free(bits);
    }
}

// dy: [N, D]; writes dres = d(residual) [N, D], dh [N, D], and the column sums dbias, dgamma, dbeta [D]
void addnorm_backward(const float *dy, const float *xhat, const float *rstd, const float *gamma, float *dres,
                      float *dh, float *dbias, float *dgamma, float *dbeta, long N, long D, float p, uint64_t seed,
                      int threads) {
    const DropRule rule(p);
    double *parts = (double *)calloc((size_t)threads * 3 * D, sizeof(double));  // per thread: dbias, dgamma, dbeta
    int used = 1;
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp single
        used = omp_get_num_threads();
        float *keep = (float *)alloc_floats(D);
        int16_t *bits = (int16_t *)alloc_floats(D);
        ColumnSums sums(3 * D, parts);  // dbias, dgamma, dbeta
        float *acc = sums.acc;
        #pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            const float *g = dy + n * D, *xh = xhat + n * D;
            if (p > 0) { SFC64 rng(row_seed(seed, n)); row_keep(rng, bits, keep, D, D, rule); }
            vf s1 = vset(0.0f), s2 = vset(0.0f);
            for (long j = 0; j < D; j += VW) {
                vf gx = vload(g + j) * vload(gamma + j), x = vload(xh + j);
                s1 += gx;
                s2 += gx * x;
                vstore(acc + D + j, vload(acc + D + j) + vload(g + j) * x);  // dgamma
                vstore(acc + 2 * D + j, vload(acc + 2 * D + j) + vload(g + j));  // dbeta
            }
            vf m1 = vset(hsum(s1) / D), m2 = vset(hsum(s2) / D), r = vset(rstd[n]);
            float *dr = dres + n * D, *dhn = dh + n * D;
            for (long j = 0; j < D; j += VW) {
                vf dz = r * (vload(g + j) * vload(gamma + j) - m1 - vload(xh + j) * m2);
                vstore(dr + j, dz);
                vf d = p > 0 ? dz * vload(keep + j) : dz;
                vstore(dhn + j, d);
                vstore(acc + j, vload(acc + j) + d);  // dbias
            }
            sums.row_done();
        }
        free(keep); free(bits);
    }
    reduce_parts(parts, used, 3 * D);
    for (long j = 0; j < D; j++) { dbias[j] = parts[j]; dgamma[j] = parts[D + j]; dbeta[j] = parts[2 * D + j]; }
    free(parts);
}

}

// ---- the FFN's first activation: GELU(h + bias), exact (erf) form ----------------------------------------

// erf(x) = sign(x) (1 - t P(t) exp(-x^2)), t = 1 / (1 + 0.3275911 |x|), P of degree 4: Abramowitz and Stegun
// 7.1.26 (Hastings; absolute error < 1.5e-7), the formula PyTorch's own vectorised CPU erf uses for GELU.
static inline vf verf(vf x) {
    vf a = x < 0.0f ? -x : x;
    vf t = vset(1.0f) / (vset(1.0f) + vset(0.3275911f) * a);
    vf p = vset(1.061405429f);
    p = p * t + vset(-1.453152027f);
    p = p * t + vset(1.421413741f);
    p = p * t + vset(-0.284496736f);
    p = p * t + vset(0.254829592f);
    vf e = vset(1.0f) - p * t * vexp(-(a * a));
    return x < 0.0f ? -e : e;
}

extern "C" {

// h, y: [N, D] contiguous (D % 16 == 0): y = gelu(h + bias)
void gelu_forward(const float *h, const float *bias, float *y, long N, long D, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++) {
        const float *hn = h + n * D;
        float *yn = y + n * D;
        for (long j = 0; j < D; j += VW) {
            vf z = vload(hn + j) + vload(bias + j);
            vstore(yn + j, vset(0.5f) * z * (vset(1.0f) + verf(z * vset(0.70710678118654752f))));
        }
    }
}

// dz = dy * gelu'(h + bias) [N, D]; dbias = column sums of dz [D]
void gelu_backward(const float *dy, const float *h, const float *bias, float *dz, float *dbias, long N, long D,
                   int threads) {
    double *parts = (double *)calloc((size_t)threads * D, sizeof(double));
    int used = 1;
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp single
        used = omp_get_num_threads();
        ColumnSums sums(D, parts);
        #pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            const float *hn = h + n * D, *gn = dy + n * D;
            float *dn = dz + n * D;
            for (long j = 0; j < D; j += VW) {
                vf z = vload(hn + j) + vload(bias + j);
                vf cdf = vset(0.5f) * (vset(1.0f) + verf(z * vset(0.70710678118654752f)));
                vf pdf = vexp(vset(-0.5f) * z * z) * vset(0.39894228040143268f);
                vf d = vload(gn + j) * (cdf + z * pdf);
                vstore(dn + j, d);
                vstore(sums.acc + j, vload(sums.acc + j) + d);
            }
            sums.row_done();
        }
    }
    reduce_parts(parts, used, D);
    for (long j = 0; j < D; j++) dbias[j] = parts[j];
    free(parts);
}

// ---- cross-entropy over [N, V] logits with its one-pass backward ------------------------------------------

// per row: loss[n] = w_n (logsumexp_j x[n, j] - x[n, t_n]) in double, the excluded column (or -1) left out
// of the softmax; lse [N] saved for backward
static inline vf load_except(const float *row, long j, long excluded) {
    vf v = vload(row + j);
    if (excluded >= j && excluded < j + VW) v[excluded - j] = -__builtin_inff();
    return v;
}

void ce_forward(const float *x, const int64_t *target, const float *weights, long excluded, float *lse,
                double *loss, long N, long V, int threads) {
    const long V16 = V / VW * VW;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++) {
        const float *xn = x + n * V;
        vf mx = vset(-__builtin_inff());
        for (long j = 0; j < V16; j += VW) { vf v = load_except(xn, j, excluded); mx = v > mx ? v : mx; }
        float m = hmax(mx);
        for (long j = V16; j < V; j++) if (j != excluded && xn[j] > m) m = xn[j];
        vf vm = vset(m), s = vset(0.0f);
        for (long j = 0; j < V16; j += VW) s += vexp(load_except(xn, j, excluded) - vm);
        float sum = hsum(s);
        for (long j = V16; j < V; j++) if (j != excluded) sum += vexp(vset(xn[j] - m))[0];
        float l = m + __builtin_logf(sum);
        lse[n] = l;
        loss[n] = (double)(weights ? weights[n] : 1.0f) * ((double)l - (double)xn[target[n]]);
    }
}

// grad[n, j] = g w_n (exp(x[n, j] - lse[n]) - [j == t_n]); exactly 0 at the excluded column
void ce_backward(const float *x, const int64_t *target, const float *weights, long excluded, const float *lse,
                 float g, float *grad, long N, long V, int threads) {
    const long V16 = V / VW * VW;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++) {
        const float *xn = x + n * V;
        float *gn = grad + n * V;
        float w = g * (weights ? weights[n] : 1.0f);
        vf vl = vset(lse[n]), vw = vset(w);
        for (long j = 0; j < V16; j += VW) vstore(gn + j, vexp(vload(xn + j) - vl) * vw);
        for (long j = V16; j < V; j++) gn[j] = vexp(vset(xn[j] - lse[n]))[0] * w;
        gn[target[n]] -= w;
        if (excluded >= 0) gn[excluded] = 0.0f;
    }
}

}
