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
// Dropout draws 16 bits per element from a counter-based generator: word w of a stream is
// mix(mix(w + k0) ^ k1), mix being Chris Wellons' "lowbias32" integer hash (two multiply-xorshift rounds) and
// (k0, k1) the two halves of splitmix64(seed + stream * golden ratio); one stream per (sequence, head) pair of
// an attention call and one per row of a sublayer exit, the seed one 64-bit draw of torch's generator per
// call. A run of 32 draws takes 16 consecutive words: the low 16 bits of each, then the high 16 bits (no
// shuffles: 16 vector lanes compute 16 words at once). An element is kept when its draw, read as a signed
// 16-bit integer, is >= thr: the same rule and keep probability as models.attention.dropout. A draw is a
// function of (seed, stream, position) alone, like Philox's on GPUs: backward recomputes the mask instead of
// saving it, and no mask depends on the thread count. exp() is Cephes' single-precision method (range
// reduction to n ln2 + r, a degree-6 polynomial).
//
// Both attention passes read q, k and v straight from the QKV projection's output and add the projection's
// bias themselves (the matmul runs without it: addmm's copy of the bias into its [N, 3D] output is gone),
// and the backward takes the bias's gradient, the column sums of dq, dk and dv, while the pair's block is
// still in cache (AddmmBackward's separate pass over the [N, 3D] gradient is gone too).
//
// Under bf16 autocast the sublayer exit, GELU and the loss take bf16 where autocast would hand them bf16 (the
// matmuls' outputs, and their gradients back) and compute in fp32, as autocast's own fp32 ops would: a bf16
// element is the top half of an fp32 one, widened on load; results are rounded to nearest even on store, NaN
// kept a NaN (c10::BFloat16's rule). The attention kernel stays fp32: under autocast its bf16 matmuls run on the
// CPU's matrix units (AMX), which its own fp32 products cannot match.
//
// The vector type is GCC's generic 64-byte vector: AVX-512 registers where the CPU has them, pairs of AVX2
// or four SSE/NEON registers otherwise (the build passes -march=native).

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define VW 16
typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));

static inline vf vload(const float *p) { return *(const vfu *)p; }
static inline void vstore(float *p, vf x) { *(vfu *)p = x; }

// x in every lane (a plain broadcast: vf{} + x would add 0.0, which is no identity for -0.0, so the compiler
// must keep the addition)
static inline vf vset(float x) {
#ifdef __AVX512F__
    return (vf)_mm512_set1_ps(x);
#else
    return (vf){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
#endif
}

// bf16: 16 of them in 32 bytes
typedef uint16_t bf16;
typedef uint16_t vh __attribute__((vector_size(32)));
typedef uint16_t vhu __attribute__((vector_size(32), aligned(2)));
static inline vf vload(const bf16 *p) { return (vf)(__builtin_convertvector(*(const vhu *)p, vu) << 16); }
static inline void vstore(bf16 *p, vf x) {
    vu u = (vu)x;
    vu r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;  // round to nearest, ties to even
    r = x != x ? (vu{} + 0x7FC0u) : r;  // a NaN stays a NaN (the rounding could carry it to +-0 or inf)
    *(vhu *)p = __builtin_convertvector(r, vh);
}
static inline float load1(const float *p) { return *p; }
static inline float load1(const bf16 *p) {
    uint32_t u = (uint32_t)*p << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline void store1(float *p, float x) { *p = x; }
static inline void store1(bf16 *p, float x) {
    vh h;
    vstore((bf16 *)&h, vset(x));  // one rounding rule for every store
    *p = h[0];
}

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

// splitmix64's output function (Steele, Lea and Flood 2014): a 64-bit seed -> a well-mixed 64-bit key
static inline uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Wellons' lowbias32, on 16 words at once
static inline vu mix32(vu x) {
    x ^= x >> 16;
    x *= 0x21F0AAADu;
    x ^= x >> 15;
    x *= 0xD35A2D97u;
    x ^= x >> 15;
    return x;
}

// the dropout stream of one (seed, stream): its key halves
struct Stream {
    uint32_t k0, k1;
    Stream(uint64_t seed, uint64_t stream) {
        uint64_t key = splitmix64(seed + stream * 0x9E3779B97F4A7C15ull);
        k0 = (uint32_t)key;
        k1 = (uint32_t)(key >> 32);
    }
};

// dropout's rule: keep where the signed 16-bit draw >= thr (probability 1 - p within 1/65536), scale kept ones
struct DropRule {
    int thr;
    float scale;
    explicit DropRule(float p) : thr(-32768 + (int)(p * 65536.0f + 0.5f)), scale(p > 0 ? 1.0f / (1.0f - p) : 1.0f) {}
};

// the dropout multipliers of n16 elements (a multiple of 16) whose draws start at word `word` of the stream:
// keep[j] = rule.scale where draw j >= rule.thr, else 0; entries from n on are set to 0
static inline void row_keep(const Stream &st, uint32_t word, float *keep, long n, long n16, const DropRule &rule) {
    const vu lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const vf kept = vset(rule.scale), dropped = vset(0.0f);
    for (long j = 0; j < n16; j += 2 * VW, word += VW) {
        vu w = mix32(mix32(lane + (word + st.k0)) ^ st.k1);
        vi lo = (vi)(w << 16) >> 16, hi = (vi)w >> 16;  // sign-extended halves
        vstore(keep + j, lo >= rule.thr ? kept : dropped);
        if (j + VW < n16) vstore(keep + j + VW, hi >= rule.thr ? kept : dropped);
    }
    for (long j = n; j < n16; j++) keep[j] = 0.0f;
}

// words per row of n16 draws: rows of a stream start at multiples of this
static inline uint32_t row_words(long n16) { return (uint32_t)((n16 + 2 * VW - 1) / (2 * VW) * VW); }

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

// the [T, d] block of sequence b, head h in a [B, H, T, d] view with element strides s (b, h, t)
static inline const float *block(const float *base, const long *s, long b, long h) {
    return base + b * s[0] + h * s[1];
}
static inline float *block(float *base, const long *s, long b, long h) { return base + b * s[0] + h * s[1]; }

// ask for the T rows (d floats each, ld floats apart) of a [T, d] block ahead of use: the rows of one pair's
// q, k and v lie 3 H d floats apart in the QKV output, a stride the hardware prefetcher does not follow
static inline void prefetch_rows(const float *src, long ld, long T, long d) {
    for (long j = 0; j < T; j++)
        for (long c = 0; c < d; c += VW) __builtin_prefetch(src + j * ld + c, 0, 1);
}

// dst[j][c] = src[j * ld + c] + bias[c] (bias NULL: + 0), j < T, c < d: one pair's q, k or v with the
// projection's bias, contiguous
static inline void with_bias(const float *src, long ld, const float *bias, long T, long d, float *dst) {
    for (long j = 0; j < T; j++)
        for (long c = 0; c < d; c += VW)
            vstore(dst + j * d + c, bias ? vload(src + j * ld + c) + vload(bias + c) : vload(src + j * ld + c));
}

#ifdef __AVX512F__
// the 16 x 16 block in r[0..16) transposed in registers (unpack, then 128-bit lane shuffles)
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int k = 0; k < 4; k++) {
        t[k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);
        t[4 + k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xDD);
        t[8 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
        t[12 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xDD);
    }
    for (int k = 0; k < 4; k++) {
        r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
        r[4 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88);
        r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xDD);
        r[12 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xDD);
    }
}
#endif

// (k + bias)^T of one pair: dst[c][j] = src[j * ld + c] + bias[c] (bias NULL: + 0), c < d, j < T; columns
// T..T16 zero; d a multiple of 16
static inline void transpose(const float *src, long ld, const float *bias, long T, long d, float *dst, long T16) {
#ifdef __AVX512F__
    for (long c = 0; c < d; c += VW) {
        __m512 b = bias ? _mm512_loadu_ps(bias + c) : _mm512_setzero_ps();
        for (long j = 0; j < T16; j += VW) {
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = j + i < T ? _mm512_add_ps(_mm512_loadu_ps(src + (j + i) * ld + c), b) : _mm512_setzero_ps();
            transpose16(r);
            for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + (c + i) * T16 + j, r[i]);
        }
    }
#else
    for (long j = 0; j < T; j++)
        for (long c = 0; c < d; c++) dst[c * T16 + j] = src[j * ld + c] + (bias ? bias[c] : 0.0f);
    for (long c = 0; c < d; c++) for (long j = T; j < T16; j++) dst[c * T16 + j] = 0.0f;
#endif
}

// the column sums of a [T, d] block (rows ld floats apart) added to out[0..d) (double)
static inline void add_column_sums(const float *src, long ld, long T, long d, double *out) {
    for (long c = 0; c < d; c += VW) {
        vf acc = vset(0.0f);
        for (long j = 0; j < T; j++) acc += vload(src + j * ld + c);
        for (int l = 0; l < VW; l++) out[c + l] += acc[l];
    }
}

extern "C" {

// q [B,H,Tq,d], k/v [B,H,Tk,d] strided views (strides b, h, t; d contiguous, d % 16 == 0); qb/kb/vb: the
// projection's biases [H, d] (head h at h * d), added to q, k and v, or NULL; out like q;
// P [B,H,Tq,Tk16] contiguous, the softmax (before dropout) saved for backward, zero past Tk.
// mask: additive, element (b, i, j) at mask[b * mask_b + i * mask_q + j], or NULL.
void attn_forward(const float *q, const long *qs, const float *k, const long *ks, const float *v, const long *vs,
                  const float *qb, const float *kb, const float *vb, float *out, const long *os, float *P, long B,
                  long H, long Tq, long Tk, long d, const float *mask, long mask_b, long mask_q, float scale,
                  float p, uint64_t seed, int threads) {
    const long Tk16 = up16(Tk);
    const DropRule rule(p);
    const uint32_t words = row_words(Tk16);
    #pragma omp parallel num_threads(threads)
    {
        float *Kt = (float *)alloc_floats(d * Tk16 + Tq * Tk16 + Tk16 + Tq * d + Tk * d);
        float *S = Kt + d * Tk16, *keep = S + Tq * Tk16, *Qp = keep + Tk16, *Vp = Qp + Tq * d;
        #pragma omp for schedule(static)
        for (long pair = 0; pair < B * H; pair++) {
            long b = pair / H, h = pair % H;
            if (pair + 1 < B * H) {  // the next pair's q, k and v (static schedule: usually this thread's)
                long b1 = (pair + 1) / H, h1 = (pair + 1) % H;
                prefetch_rows(block(q, qs, b1, h1), qs[2], Tq, d);
                prefetch_rows(block(k, ks, b1, h1), ks[2], Tk, d);
                prefetch_rows(block(v, vs, b1, h1), vs[2], Tk, d);
            }
            transpose(block(k, ks, b, h), ks[2], kb ? kb + h * d : nullptr, Tk, d, Kt, Tk16);
            with_bias(block(q, qs, b, h), qs[2], qb ? qb + h * d : nullptr, Tq, d, Qp);
            with_bias(block(v, vs, b, h), vs[2], vb ? vb + h * d : nullptr, Tk, d, Vp);
            gemm(Qp, d, 1, Tq, d, Kt, Tk16, S, Tk16, Tk16);
            const Stream st(seed, pair);
            float *Pp = P + pair * Tq * Tk16;
            for (long i = 0; i < Tq; i++) {
                float *s = S + i * Tk16;
                if (scale != 1.0f) for (long j = 0; j < Tk; j++) s[j] *= scale;
                if (mask) {
                    const float *mi = mask + b * mask_b + i * mask_q;
                    for (long j = 0; j < Tk; j++) s[j] += mi[j];
                }
                for (long j = Tk; j < Tk16; j++) s[j] = -__builtin_inff();
                vf mx = vset(-__builtin_inff());
                for (long j = 0; j < Tk16; j += VW) { vf x = vload(s + j); mx = x > mx ? x : mx; }
                vf sum = vset(0.0f), vm = vset(hmax(mx));
                for (long j = 0; j < Tk16; j += VW) { vf e = vexp(vload(s + j) - vm); vstore(s + j, e); sum += e; }
                vf vinv = vset(1.0f / hsum(sum));
                float *pp = Pp + i * Tk16;
                if (p > 0) {
                    row_keep(st, i * words, keep, Tk, Tk16, rule);
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
            gemm(S, Tk16, 1, Tq, Tk, Vp, d, block(out, os, b, h), os[2], d);
        }
        free(Kt);
    }
}

// gradients: dout [B,H,Tq,d] strided; dq/dk/dv strided like q/k/v, each written entirely; dqb/dkb/dvb: the
// biases' gradients [H, d] (written entirely; NULL where the bias was NULL)
void attn_backward(const float *q, const long *qs, const float *k, const long *ks, const float *v, const long *vs,
                   const float *qb, const float *kb, const float *vb, const float *dout, const long *dos,
                   const float *P, float *dq, const long *dqs, float *dk, const long *dks, float *dv,
                   const long *dvs, float *dqb, float *dkb, float *dvb, long B, long H, long Tq, long Tk, long d,
                   float scale, float p, uint64_t seed, int threads) {
    const long Tk16 = up16(Tk), HD = H * d;
    const DropRule rule(p);
    const uint32_t words = row_words(Tk16);
    double *parts = (double *)calloc((size_t)threads * 3 * HD, sizeof(double));  // per thread: dqb, dkb, dvb
    int used = 1;
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp single
        used = omp_get_num_threads();
        double *part = parts + (size_t)omp_get_thread_num() * 3 * HD;
        float *Vt = (float *)alloc_floats(d * Tk16 + 3 * Tq * Tk16 + Tk16 + Tq * d + Tk * d);
        float *G = Vt + d * Tk16, *Pd = G + Tq * Tk16, *dS = Pd + Tq * Tk16, *keep = dS + Tq * Tk16;
        float *Qp = keep + Tk16, *Kp = Qp + Tq * d;
        #pragma omp for schedule(static)
        for (long pair = 0; pair < B * H; pair++) {
            long b = pair / H, h = pair % H;
            if (pair + 1 < B * H) {  // the next pair's q, k, v and output gradient
                long b1 = (pair + 1) / H, h1 = (pair + 1) % H;
                prefetch_rows(block(q, qs, b1, h1), qs[2], Tq, d);
                prefetch_rows(block(k, ks, b1, h1), ks[2], Tk, d);
                prefetch_rows(block(v, vs, b1, h1), vs[2], Tk, d);
                prefetch_rows(block(dout, dos, b1, h1), dos[2], Tq, d);
            }
            const float *gp = block(dout, dos, b, h);
            transpose(block(v, vs, b, h), vs[2], vb ? vb + h * d : nullptr, Tk, d, Vt, Tk16);
            with_bias(block(q, qs, b, h), qs[2], qb ? qb + h * d : nullptr, Tq, d, Qp);
            with_bias(block(k, ks, b, h), ks[2], kb ? kb + h * d : nullptr, Tk, d, Kp);
            gemm(gp, dos[2], 1, Tq, d, Vt, Tk16, G, Tk16, Tk16);  // dPd = dO V^T
            const Stream st(seed, pair);
            const float *Pp = P + pair * Tq * Tk16;
            vf vscale = vset(scale);
            for (long i = 0; i < Tq; i++) {
                const float *pr = Pp + i * Tk16;
                float *g = G + i * Tk16, *pd = Pd + i * Tk16, *ds = dS + i * Tk16;
                vf dot = vset(0.0f);
                if (p > 0) {
                    row_keep(st, i * words, keep, Tk, Tk16, rule);
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
            float *dvp = block(dv, dvs, b, h), *dkp = block(dk, dks, b, h), *dqp = block(dq, dqs, b, h);
            gemm(Pd, 1, Tk16, Tk, Tq, gp, dos[2], dvp, dvs[2], d);  // dV = Pd^T dO
            gemm(dS, 1, Tk16, Tk, Tq, Qp, d, dkp, dks[2], d);  // dK = dS^T Q
            gemm(dS, Tk16, 1, Tq, Tk, Kp, d, dqp, dqs[2], d);  // dQ = dS K
            if (qb) add_column_sums(dqp, dqs[2], Tq, d, part + h * d);
            if (kb) add_column_sums(dkp, dks[2], Tk, d, part + HD + h * d);
            if (vb) add_column_sums(dvp, dvs[2], Tk, d, part + 2 * HD + h * d);
        }
        free(Vt);
    }
    reduce_parts(parts, used, 3 * HD);
    float *outs[3] = {dqb, dkb, dvb};
    for (int w = 0; w < 3; w++)
        if (outs[w]) for (long j = 0; j < HD; j++) outs[w][j] = (float)parts[w * HD + j];
    free(parts);
}

}

// ---- post-LN sublayer exit: LayerNorm(residual + dropout(h + bias)) ----------------------------------------

// One dropout stream per row (the row's index), so the mask does not depend on the thread count.

// h, residual, y, xhat: [N, D] contiguous (D % 16 == 0); rstd: [N]. y = LN(residual + keep * (h + bias)),
// keep = scale or 0 per the 16-bit rule; xhat (normalised, before gamma/beta) and rstd are saved for backward.
// h is T (fp32, or bf16 under autocast); the rest fp32.
template <typename T>
static void addnorm_fwd(const T *h, const float *bias, const float *residual, const float *gamma,
                        const float *beta, float *y, float *xhat, float *rstd, long N, long D, float eps, float p,
                        uint64_t seed, int threads) {
    const DropRule rule(p);
    #pragma omp parallel num_threads(threads)
    {
        float *keep = (float *)alloc_floats(D);
        #pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            const T *hn = h + n * D;
            const float *rn = residual + n * D;
            float *xn = xhat + n * D, *yn = y + n * D;
            if (p > 0) row_keep(Stream(seed, n), 0, keep, D, D, rule);
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
        free(keep);
    }
}

// dy: [N, D]; writes dres = d(residual) [N, D], dh [N, D] (T, like h), and the column sums dbias, dgamma,
// dbeta [D]
template <typename T>
static void addnorm_bwd(const float *dy, const float *xhat, const float *rstd, const float *gamma, float *dres,
                        T *dh, float *dbias, float *dgamma, float *dbeta, long N, long D, float p, uint64_t seed,
                        int threads) {
    const DropRule rule(p);
    double *parts = (double *)calloc((size_t)threads * 3 * D, sizeof(double));  // per thread: dbias, dgamma, dbeta
    int used = 1;
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp single
        used = omp_get_num_threads();
        float *keep = (float *)alloc_floats(D);
        ColumnSums sums(3 * D, parts);  // dbias, dgamma, dbeta
        float *acc = sums.acc;
        #pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            const float *g = dy + n * D, *xh = xhat + n * D;
            if (p > 0) row_keep(Stream(seed, n), 0, keep, D, D, rule);
            vf s1 = vset(0.0f), s2 = vset(0.0f);
            for (long j = 0; j < D; j += VW) {
                vf gx = vload(g + j) * vload(gamma + j), x = vload(xh + j);
                s1 += gx;
                s2 += gx * x;
                vstore(acc + D + j, vload(acc + D + j) + vload(g + j) * x);  // dgamma
                vstore(acc + 2 * D + j, vload(acc + 2 * D + j) + vload(g + j));  // dbeta
            }
            vf m1 = vset(hsum(s1) / D), m2 = vset(hsum(s2) / D), r = vset(rstd[n]);
            float *dr = dres + n * D;
            T *dhn = dh + n * D;
            for (long j = 0; j < D; j += VW) {
                vf dz = r * (vload(g + j) * vload(gamma + j) - m1 - vload(xh + j) * m2);
                vstore(dr + j, dz);
                vf d = p > 0 ? dz * vload(keep + j) : dz;
                vstore(dhn + j, d);
                vstore(acc + j, vload(acc + j) + d);  // dbias
            }
            sums.row_done();
        }
        free(keep);
    }
    reduce_parts(parts, used, 3 * D);
    for (long j = 0; j < D; j++) { dbias[j] = parts[j]; dgamma[j] = parts[D + j]; dbeta[j] = parts[2 * D + j]; }
    free(parts);
}

extern "C" {

void addnorm_forward(const float *h, const float *bias, const float *residual, const float *gamma,
                     const float *beta, float *y, float *xhat, float *rstd, long N, long D, float eps, float p,
                     uint64_t seed, int threads) {
    addnorm_fwd(h, bias, residual, gamma, beta, y, xhat, rstd, N, D, eps, p, seed, threads);
}
void addnorm_forward_bf16(const bf16 *h, const float *bias, const float *residual, const float *gamma,
                          const float *beta, float *y, float *xhat, float *rstd, long N, long D, float eps, float p,
                          uint64_t seed, int threads) {
    addnorm_fwd(h, bias, residual, gamma, beta, y, xhat, rstd, N, D, eps, p, seed, threads);
}
void addnorm_backward(const float *dy, const float *xhat, const float *rstd, const float *gamma, float *dres,
                      float *dh, float *dbias, float *dgamma, float *dbeta, long N, long D, float p, uint64_t seed,
                      int threads) {
    addnorm_bwd(dy, xhat, rstd, gamma, dres, dh, dbias, dgamma, dbeta, N, D, p, seed, threads);
}
void addnorm_backward_bf16(const float *dy, const float *xhat, const float *rstd, const float *gamma, float *dres,
                           bf16 *dh, float *dbias, float *dgamma, float *dbeta, long N, long D, float p,
                           uint64_t seed, int threads) {
    addnorm_bwd(dy, xhat, rstd, gamma, dres, dh, dbias, dgamma, dbeta, N, D, p, seed, threads);
}

}

// ---- the FFN's first activation: GELU(h + bias), exact (erf) form ----------------------------------------

// 1 / x: the 14-bit hardware estimate and one Newton step (relative error about 2^-28) where AVX-512 has
// one; a division (several times slower per vector) elsewhere
static inline vf vrcp(vf x) {
#ifdef __AVX512F__
    vf r = (vf)_mm512_rcp14_ps((__m512)x);
    return r * (vset(2.0f) - x * r);
#else
    return vset(1.0f) / x;
#endif
}

// GELU's pieces at z, sharing one exp: the normal cdf Phi(z) = (1 + erf(z / sqrt 2)) / 2 and, when pdf is
// given, the density phi(z) = exp(-z^2 / 2) / sqrt(2 pi). erf(x) = sign(x) (1 - t P(t) exp(-x^2)),
// t = 1 / (1 + 0.3275911 |x|), P of degree 4: Abramowitz and Stegun 7.1.26 (Hastings; absolute error
// < 1.5e-7), the formula PyTorch's own vectorised CPU erf uses; here exp(-x^2) = exp(-z^2 / 2) is phi's too.
static inline vf normal_cdf(vf z, vf *pdf) {
    vf x = z * vset(0.70710678118654752f), a = x < 0.0f ? -x : x;
    vf t = vrcp(vset(1.0f) + vset(0.3275911f) * a);
    vf poly = vset(1.061405429f);
    poly = poly * t + vset(-1.453152027f);
    poly = poly * t + vset(1.421413741f);
    poly = poly * t + vset(-0.284496736f);
    poly = poly * t + vset(0.254829592f);
    vf g = vexp(-(a * a));
    if (pdf) *pdf = g * vset(0.39894228040143268f);
    vf e = vset(1.0f) - poly * t * g;
    return vset(0.5f) * (vset(1.0f) + (x < 0.0f ? -e : e));
}

// h, y: [N, D] contiguous (D % 16 == 0), T (fp32, or bf16 under autocast): y = gelu(h + bias)
template <typename T>
static void gelu_fwd(const T *h, const float *bias, T *y, long N, long D, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++) {
        const T *hn = h + n * D;
        T *yn = y + n * D;
        for (long j = 0; j < D; j += VW) {
            vf z = vload(hn + j) + vload(bias + j);
            vstore(yn + j, z * normal_cdf(z, nullptr));
        }
    }
}

// dz = dy * gelu'(h + bias) [N, D] (dy, h, dz: T); dbias = column sums of dz [D], taken before any rounding
template <typename T>
static void gelu_bwd(const T *dy, const T *h, const float *bias, T *dz, float *dbias, long N, long D, int threads) {
    double *parts = (double *)calloc((size_t)threads * D, sizeof(double));
    int used = 1;
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp single
        used = omp_get_num_threads();
        ColumnSums sums(D, parts);
        #pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            const T *hn = h + n * D, *gn = dy + n * D;
            T *dn = dz + n * D;
            for (long j = 0; j < D; j += VW) {
                vf z = vload(hn + j) + vload(bias + j);
                vf pdf, cdf = normal_cdf(z, &pdf);
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
// of the softmax; lse [N] saved for backward. x: T (fp32, or bf16 under autocast)
template <typename T>
static inline vf load_except(const T *row, long j, long excluded) {
    vf v = vload(row + j);
    if (excluded >= j && excluded < j + VW) v[excluded - j] = -__builtin_inff();
    return v;
}

template <typename T>
static void ce_fwd(const T *x, const int64_t *target, const float *weights, long excluded, float *lse,
                   double *loss, long N, long V, int threads) {
    const long V16 = V / VW * VW;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++) {
        const T *xn = x + n * V;
        vf mx = vset(-__builtin_inff());
        for (long j = 0; j < V16; j += VW) { vf v = load_except(xn, j, excluded); mx = v > mx ? v : mx; }
        float m = hmax(mx);
        for (long j = V16; j < V; j++) if (j != excluded && load1(xn + j) > m) m = load1(xn + j);
        vf vm = vset(m), s = vset(0.0f);
        for (long j = 0; j < V16; j += VW) s += vexp(load_except(xn, j, excluded) - vm);
        float sum = hsum(s);
        for (long j = V16; j < V; j++) if (j != excluded) sum += vexp(vset(load1(xn + j) - m))[0];
        float l = m + __builtin_logf(sum);
        lse[n] = l;
        loss[n] = (double)(weights ? weights[n] : 1.0f) * ((double)l - (double)load1(xn + target[n]));
    }
}

// grad[n, j] = g w_n (exp(x[n, j] - lse[n]) - [j == t_n]) (grad: T); exactly 0 at the excluded column
template <typename T>
static void ce_bwd(const T *x, const int64_t *target, const float *weights, long excluded, const float *lse,
                   float g, T *grad, long N, long V, int threads) {
    const long V16 = V / VW * VW;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++) {
        const T *xn = x + n * V;
        T *gn = grad + n * V;
        float w = g * (weights ? weights[n] : 1.0f);
        vf vl = vset(lse[n]), vw = vset(w);
        for (long j = 0; j < V16; j += VW) vstore(gn + j, vexp(vload(xn + j) - vl) * vw);
        for (long j = V16; j < V; j++) store1(gn + j, vexp(vset(load1(xn + j) - lse[n]))[0] * w);
        // the target's entry again, minus w before its one rounding
        long t = target[n];
        store1(gn + t, vexp(vset(load1(xn + t) - lse[n]))[0] * w - w);
        if (excluded >= 0) store1(gn + excluded, 0.0f);
    }
}

extern "C" {

void gelu_forward(const float *h, const float *bias, float *y, long N, long D, int threads) {
    gelu_fwd(h, bias, y, N, D, threads);
}
void gelu_forward_bf16(const bf16 *h, const float *bias, bf16 *y, long N, long D, int threads) {
    gelu_fwd(h, bias, y, N, D, threads);
}
void gelu_backward(const float *dy, const float *h, const float *bias, float *dz, float *dbias, long N, long D,
                   int threads) {
    gelu_bwd(dy, h, bias, dz, dbias, N, D, threads);
}
void gelu_backward_bf16(const bf16 *dy, const bf16 *h, const float *bias, bf16 *dz, float *dbias, long N, long D,
                        int threads) {
    gelu_bwd(dy, h, bias, dz, dbias, N, D, threads);
}
void ce_forward(const float *x, const int64_t *target, const float *weights, long excluded, float *lse,
                double *loss, long N, long V, int threads) {
    ce_fwd(x, target, weights, excluded, lse, loss, N, V, threads);
}
void ce_forward_bf16(const bf16 *x, const int64_t *target, const float *weights, long excluded, float *lse,
                     double *loss, long N, long V, int threads) {
    ce_fwd(x, target, weights, excluded, lse, loss, N, V, threads);
}
void ce_backward(const float *x, const int64_t *target, const float *weights, long excluded, const float *lse,
                 float g, float *grad, long N, long V, int threads) {
    ce_bwd(x, target, weights, excluded, lse, g, grad, N, V, threads);
}
void ce_backward_bf16(const bf16 *x, const int64_t *target, const float *weights, long excluded, const float *lse,
                      float g, bf16 *grad, long N, long V, int threads) {
    ce_bwd(x, target, weights, excluded, lse, g, grad, N, V, threads);
}

}
