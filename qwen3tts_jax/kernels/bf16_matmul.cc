// y[M, N] = x[M, K] @ w[N, K]^T for float32 activations and bfloat16 weights (torch layout),
// an XLA FFI custom call for the CPU backend.
//
// Why: decoding reads every weight once per token, so on CPU it runs at the speed of memory.
// XLA's CPU dot has no bfloat16-weight, float32-compute form (it widens the whole matrix first,
// ~10x slower than reading float32), so a released checkpoint's bfloat16 weights had to be
// stored as float32: twice the bytes to read. Here the widening happens in registers and the
// arithmetic stays float32 with float32 accumulation: the same values as the float32 model,
// in half the memory traffic.
//
// Widening bfloat16 is exact and cheap: bfloat16 is the top half of a float32. A 64-byte load of
// 32 weights holds weight 2i in the low and 2i+1 in the high half of 32-bit lane i, so a shift
// gives the even weights and a mask the odd ones, already as float32; x is split into matching
// even/odd halves once per call.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

namespace ffi = xla::ffi;

inline float widen(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Any CPU, any K: rows [n0, n1) of y, and the K tail [k0, K) of the vector paths when k0 > 0.
void portable(const float* x, const uint16_t* w, float* y, int64_t M, int64_t K, int64_t N,
              int64_t n0, int64_t n1, int64_t k0, bool accumulate) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    for (int64_t n = n0; n < n1; ++n) {
      const uint16_t* wr = w + n * K;
      float a = 0.f;
#pragma omp simd reduction(+ : a)
      for (int64_t k = k0; k < K; ++k) a += xr[k] * widen(wr[k]);
      y[m * N + n] = accumulate ? y[m * N + n] + a : a;
    }
  }
}

#if defined(__AVX512F__)
constexpr int64_t kChunk = 32;      // weights per 64-byte load
constexpr int64_t kPrefetch = 2048; // weights ahead (4 KiB): two rows of a 1024-wide matrix
constexpr int64_t kTileRows = 64;   // weight rows kept in L2 while a block of x rows passes over them

inline __m512 even(__m512i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)); }
inline __m512 odd(__m512i v) {
  return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
inline __m512i load(const uint16_t* p) { return _mm512_loadu_si512(static_cast<const void*>(p)); }

// One x row (a decode step): one weight stream, four accumulators, software prefetch.
void gemv(const float* xs, const uint16_t* w, float* y, int64_t K, int64_t K32, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* wr = w + n * K;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 2 * kChunk <= K32; k += 2 * kChunk) {
      _mm_prefetch(reinterpret_cast<const char*>(wr + k + kPrefetch), _MM_HINT_T0);
      __m512i v0 = load(wr + k), v1 = load(wr + k + kChunk);
      a0 = _mm512_fmadd_ps(even(v0), _mm512_loadu_ps(xs + k), a0);
      a1 = _mm512_fmadd_ps(odd(v0), _mm512_loadu_ps(xs + k + 16), a1);
      a2 = _mm512_fmadd_ps(even(v1), _mm512_loadu_ps(xs + k + 32), a2);
      a3 = _mm512_fmadd_ps(odd(v1), _mm512_loadu_ps(xs + k + 48), a3);
    }
    for (; k < K32; k += kChunk) {
      __m512i v0 = load(wr + k);
      a0 = _mm512_fmadd_ps(even(v0), _mm512_loadu_ps(xs + k), a0);
      a1 = _mm512_fmadd_ps(odd(v0), _mm512_loadu_ps(xs + k + 16), a1);
    }
    y[n] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }
}

// R x rows against weight rows [n0, n1): each widened weight vector feeds R rows.
template <int R>
void block(const float* xs, const uint16_t* w, float* y, int64_t K, int64_t K32, int64_t N,
           int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* wr = w + n * K;
    __m512 ae[R], ao[R];
    for (int r = 0; r < R; ++r) ae[r] = ao[r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K32; k += kChunk) {
      __m512i v = load(wr + k);
      __m512 we = even(v), wo = odd(v);
      for (int r = 0; r < R; ++r) {
        ae[r] = _mm512_fmadd_ps(we, _mm512_loadu_ps(xs + r * K + k), ae[r]);
        ao[r] = _mm512_fmadd_ps(wo, _mm512_loadu_ps(xs + r * K + k + 16), ao[r]);
      }
    }
    for (int r = 0; r < R; ++r) y[r * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(ae[r], ao[r]));
  }
}

void rows_block(int rows, const float* xs, const uint16_t* w, float* y, int64_t K, int64_t K32, int64_t N,
                int64_t n0, int64_t n1) {
  switch (rows) {
    case 1: return block<1>(xs, w, y, K, K32, N, n0, n1);
    case 2: return block<2>(xs, w, y, K, K32, N, n0, n1);
    case 3: return block<3>(xs, w, y, K, K32, N, n0, n1);
    case 4: return block<4>(xs, w, y, K, K32, N, n0, n1);
    case 5: return block<5>(xs, w, y, K, K32, N, n0, n1);
    case 6: return block<6>(xs, w, y, K, K32, N, n0, n1);
    case 7: return block<7>(xs, w, y, K, K32, N, n0, n1);
    default: return block<8>(xs, w, y, K, K32, N, n0, n1);
  }
}

void vectorized(const float* x, const float* xs, const uint16_t* w, float* y, int64_t M, int64_t K,
                int64_t N, int64_t n0, int64_t n1) {
  const int64_t K32 = K - K % kChunk;
  if (M == 1) {
    gemv(xs, w, y, K, K32, n0, n1);
  } else {
    for (int64_t t0 = n0; t0 < n1; t0 += kTileRows) {
      const int64_t t1 = t0 + kTileRows < n1 ? t0 + kTileRows : n1;
      for (int64_t m = 0; m < M; m += 8) {
        const int rows = static_cast<int>(M - m < 8 ? M - m : 8);
        rows_block(rows, xs + m * K, w, y + m * N, K, K32, N, t0, t1);
      }
    }
  }
  if (K32 < K) portable(x, w, y, M, K, N, n0, n1, K32, true);
}

// x rows with each 32-chunk reordered to [even lanes, odd lanes] (the tail stays in place).
void split_even_odd(const float* x, float* xs, int64_t M, int64_t K) {
  const int64_t K32 = K - K % kChunk;
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    float* out = xs + m * K;
    for (int64_t c = 0; c < K32; c += kChunk)
      for (int i = 0; i < 16; ++i) {
        out[c + i] = xr[c + 2 * i];
        out[c + 16 + i] = xr[c + 2 * i + 1];
      }
    for (int64_t k = K32; k < K; ++k) out[k] = xr[k];
  }
}
#endif

// Below this many weights one thread is faster than waking a second one.
constexpr int64_t kMinParallelWeights = 1 << 18;

// Parts of the output rows, claimed by whichever thread gets there first. The calling thread
// claims too and never waits for a part nobody has started: XLA may run two of these calls at
// once on its pool, and waiting for a queued task there could wait forever. A task that starts
// late finds nothing left; it holds the job by shared_ptr, so it may outlive the call.
struct Job {
  std::function<void(int64_t, int64_t)> run;
  int64_t rows = 0, parts = 1;
  std::atomic<int64_t> next{0}, done{0};

  void work() {
    for (int64_t p; (p = next.fetch_add(1, std::memory_order_relaxed)) < parts;) {
      run(rows * p / parts, rows * (p + 1) / parts);
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  }
};

ffi::Error Bf16MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::BF16> w,
                          ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[1])
    return ffi::Error::InvalidArgument("bf16_matmul expects x [M, K] and w [N, K]");
  const int64_t M = xd[0], K = xd[1], N = wd[0];
  const float* xp = x.typed_data();
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.typed_data());
  float* yp = y->typed_data();
  if (M == 0 || N == 0) return ffi::Error::Success();

  auto job = std::make_shared<Job>();
#if defined(__AVX512F__)
  std::vector<float> scratch(static_cast<size_t>(M * K));
  split_even_odd(xp, scratch.data(), M, K);
  const float* xs = scratch.data();
  job->run = [=](int64_t n0, int64_t n1) { vectorized(xp, xs, wp, yp, M, K, N, n0, n1); };
#else
  job->run = [=](int64_t n0, int64_t n1) { portable(xp, wp, yp, M, K, N, n0, n1, 0, false); };
#endif
  const int64_t threads = N * K < kMinParallelWeights ? 1 : pool.num_threads();
  job->rows = N;
  job->parts = std::max<int64_t>(1, std::min(threads, N));
  for (int64_t t = 1; t < job->parts; ++t) pool.Schedule([job] { job->work(); });
  job->work();
  while (job->done.load(std::memory_order_acquire) < job->parts) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Qwen3TtsBf16Matmul, Bf16MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
