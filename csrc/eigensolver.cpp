// Top-k symmetric eigensolvers. See eigensolver.h for the conventions.
//
// The Krylov solver is a thick-restart block Lanczos with full reorthogonalization, arranged so that every
// O(n^2) operation is one BLAS-3 product of A with an n x b block:
//   Q  [n x m]  orthonormal basis of the (block) Krylov subspace, built one block of b columns at a time
//   W  [n x m]  W = A Q, kept so that Ritz vectors and their residuals never need another product with A
//   H  [m x m]  H = Q^T A Q in fp64, filled one block column at a time (Rayleigh-Ritz problem)
//   P  [n x b]  next block: the part of A Q_last orthogonal to Q, orthonormalized (A Q = Q H + P Rf E^T)
// Ritz pairs (theta, Q s) come from the eigenpairs of H; their residual norm is ||Rf s_last|| without touching
// A. When the basis is full, the best `keep` Ritz vectors replace it (thick restart) and P carries on: the
// residuals of all Ritz vectors lie in span(P), so the subspace stays a Krylov subspace and converged pairs are
// never multiplied by A again.
#include "eigensolver.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "blas.h"

namespace askf {
namespace {

using blas::gemm;

// xoshiro256** seeded by splitmix64 and Box-Muller: the same Gaussian stream on every platform and compiler
// (std::normal_distribution is implementation-defined).
class Gaussian {
  public:
    explicit Gaussian(uint64_t seed) {
        for (auto& s : state_) {
            seed += 0x9E3779B97F4A7C15ULL;
            uint64_t z = seed;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
            s = z ^ (z >> 31);
        }
    }
    double next() {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        double u1 = uniform(), u2 = uniform();
        while (u1 <= 0.0) u1 = uniform();
        const double radius = std::sqrt(-2.0 * std::log(u1)), angle = 6.283185307179586 * u2;
        spare_ = radius * std::sin(angle);
        has_spare_ = true;
        return radius * std::cos(angle);
    }

  private:
    static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    double uniform() {
        const uint64_t result = rotl(state_[1] * 5, 7) * 9, t = state_[1] << 17;
        state_[2] ^= state_[0];
        state_[3] ^= state_[1];
        state_[1] ^= state_[2];
        state_[0] ^= state_[3];
        state_[2] ^= t;
        state_[3] = rotl(state_[3], 45);
        return static_cast<double>(result >> 11) * 0x1.0p-53;
    }
    uint64_t state_[4];
    double spare_ = 0.0;
    bool has_spare_ = false;
};

// residuals[i] = ||av[:, i] - values[i] v[:, i]|| / scale with scale = max(|values[0]|, |values[k-1]|, tiny(T)).
template <typename T>
std::vector<double> relative_residuals(const double* av, const double* v, const std::vector<T>& values, int64_t n,
                                       int k) {
    const double scale = std::max({std::abs(static_cast<double>(values[0])),
                                   std::abs(static_cast<double>(values[static_cast<size_t>(k) - 1])),
                                   static_cast<double>(std::numeric_limits<T>::min())});
    std::vector<double> out(static_cast<size_t>(k));
    for (int i = 0; i < k; ++i) {
        const double* avi = av + i * n;
        const double* vi = v + i * n;
        double sum = 0.0;
        for (int64_t r = 0; r < n; ++r) {
            const double d = avi[r] - static_cast<double>(values[i]) * vi[r];
            sum += d * d;
        }
        out[i] = std::sqrt(sum) / scale;
    }
    return out;
}

// Top `count` eigenpairs of the m x m fp64 matrix h (leading dim ldh), descending: theta[count], s[m x count].
void top_eigenpairs(const std::vector<double>& h, int ldh, int m, int count, std::vector<double>& theta,
                    std::vector<double>& s) {
    std::vector<double> copy(static_cast<size_t>(m) * m);
    for (int j = 0; j < m; ++j) std::copy_n(&h[static_cast<size_t>(j) * ldh], m, &copy[static_cast<size_t>(j) * m]);
    std::vector<double> w(static_cast<size_t>(m)), z(static_cast<size_t>(m) * count);  // w: m, see blas.h
    blas::syevr_index_range(m, copy.data(), m - count + 1, m, w.data(), z.data());
    theta.resize(static_cast<size_t>(count));
    s.resize(static_cast<size_t>(m) * count);
    for (int i = 0; i < count; ++i) {
        theta[i] = w[count - 1 - i];
        std::copy_n(&z[static_cast<size_t>(count - 1 - i) * m], m, &s[static_cast<size_t>(i) * m]);
    }
}

// Classical Gram-Schmidt pass: x[n x c] -= q[n x m] (q^T x).
template <typename T>
void project_out(const T* q, int64_t n, int m, T* x, int c, std::vector<T>& scratch) {
    if (m == 0 || c == 0) return;
    scratch.resize(static_cast<size_t>(m) * c);
    gemm(CblasTrans, CblasNoTrans, m, c, static_cast<int>(n), T(1), q, static_cast<int>(n), x,
         static_cast<int>(n), T(0), scratch.data(), m);
    gemm(CblasNoTrans, CblasNoTrans, static_cast<int>(n), c, m, T(-1), q, static_cast<int>(n), scratch.data(), m,
         T(1), x, static_cast<int>(n));
}

template <typename T>
double column_norm(const T* x, int64_t n) {
    double sum = 0.0;
    for (int64_t r = 0; r < n; ++r) sum += static_cast<double>(x[r]) * x[r];
    return std::sqrt(sum);
}

// Replace column j of the orthonormal block p[n x c] by a random unit vector orthogonal to q[n x m] and to the
// other columns of p (used when a Krylov direction is lost to rounding or the subspace became invariant).
template <typename T>
void replace_with_random(const T* q, int64_t n, int m, T* p, int c, int j, Gaussian& rng, std::vector<T>& scratch) {
    std::vector<T> x(static_cast<size_t>(n));
    std::fill_n(p + j * n, n, T(0));  // a zero column j drops out of the projection against p
    for (int attempt = 0; attempt < 4; ++attempt) {
        for (auto& v : x) v = static_cast<T>(rng.next());
        for (int pass = 0; pass < 2; ++pass) {  // "twice is enough" (Giraud et al.)
            project_out(q, n, m, x.data(), 1, scratch);
            project_out(p, n, c, x.data(), 1, scratch);
        }
        const double norm = column_norm(x.data(), n);
        if (norm > 0.0 && std::isfinite(norm)) {
            for (int64_t r = 0; r < n; ++r) p[j * n + r] = static_cast<T>(x[r] / norm);
            return;
        }
    }
    throw std::runtime_error("block Krylov: could not extend the basis with a random vector");
}

// r <- l r for upper-triangular c x c matrices (column-major, leading dim c).
inline void upper_triangular_product(const double* l, double* r, int c) {
    std::vector<double> out(static_cast<size_t>(c) * c, 0.0);
    for (int j = 0; j < c; ++j) {
        for (int i = 0; i <= j; ++i) {
            double sum = 0.0;
            for (int t = i; t <= j; ++t) sum += l[i + static_cast<size_t>(t) * c] * r[t + static_cast<size_t>(j) * c];
            out[i + static_cast<size_t>(j) * c] = sum;
        }
    }
    std::copy(out.begin(), out.end(), r);
}

// out[n x c] (fp64, column-major) = A[n x n] x[n x c], computed in T as (x^T A)^T: OpenBLAS packs its second
// operand far more cheaply than its first when the first is tall (2-3x faster for n = 8192, c = 32).
template <typename T>
void multiply_by_a(const T* a, int n, const T* x, int c, T* xt_a, double* out) {
    gemm(CblasTrans, CblasNoTrans, c, n, n, T(1), x, n, a, n, T(0), xt_a, c);  // xt_a = x^T A  [c x n]
    for (int r = 0; r < n; ++r) {
        for (int j = 0; j < c; ++j) out[r + static_cast<size_t>(j) * n] = xt_a[j + static_cast<size_t>(r) * c];
    }
}

}  // namespace

template <typename T>
TopkEigh<T> topk_eigh_syevr(const T* a, int64_t n64, int k) {
    // fp32 input is solved in fp64: ssyevr's eigenvectors lose orthogonality (~1e-5 at n = 100) and their
    // residuals miss 1e-6, while dsyevr's, rounded to fp32, meet both.
    const int n = static_cast<int>(n64);
    const size_t nz = static_cast<size_t>(n);
    std::vector<double> a64(a, a + nz * nz), w(nz), z(nz * k);  // w: n elements, see blas.h
    blas::syevr_index_range(n, a64.data(), n - k + 1, n, w.data(), z.data());  // overwrites a64

    TopkEigh<T> out;
    out.values.resize(static_cast<size_t>(k));
    out.vectors.resize(nz * k);
    std::vector<double> v(nz * k);  // the returned (rounded) vectors, for an exact residual in fp64
    for (int i = 0; i < k; ++i) {
        out.values[i] = static_cast<T>(w[k - 1 - i]);
        for (size_t r = 0; r < nz; ++r) {
            out.vectors[i * nz + r] = static_cast<T>(z[(k - 1 - i) * nz + r]);
            v[i * nz + r] = out.vectors[i * nz + r];
        }
    }
    std::copy(a, a + nz * nz, a64.begin());
    std::vector<double> av(nz * k), vt_a(nz * k);
    multiply_by_a(a64.data(), n, v.data(), k, vt_a.data(), av.data());
    const std::vector<double> residuals = relative_residuals(av.data(), v.data(), out.values, n, k);
    out.residuals.assign(residuals.begin(), residuals.end());
    return out;
}

template <typename T>
TopkEigh<T> topk_eigh_krylov(const T* a, int64_t n64, int k, const KrylovOptions& opt) {
    const int n = static_cast<int>(n64);
    std::vector<T> xt_a(static_cast<size_t>(n) * std::clamp(opt.block_size, 1, n));
    const BlockProduct<T> multiply = [&](const T* x, int c, double* out) {
        multiply_by_a(a, n, x, c, xt_a.data(), out);
    };
    return topk_eigh_krylov<T>(multiply, n64, k, opt);
}

template <typename T>
TopkEigh<T> topk_eigh_krylov(const BlockProduct<T>& multiply, int64_t n64, int k, const KrylovOptions& opt) {
    const int n = static_cast<int>(n64);
    const size_t nz = static_cast<size_t>(n);
    const int b = std::clamp(opt.block_size, 1, n);
    const int mmax = std::min(opt.max_basis > 0 ? opt.max_basis : std::max(2 * k + 2 * b, k + 6 * b), n);
    // When the basis may grow to the whole space it never restarts: at m == n the Rayleigh-Ritz step is exact.
    const bool full_space = mmax == n;
    if (!full_space && mmax < k + 2 * b) {
        throw std::invalid_argument("max_basis=" + std::to_string(mmax) + " must be at least k + 2 * block_size = " +
                                    std::to_string(k + 2 * b));
    }
    const int keep = full_space ? mmax : std::min(mmax - b, k + (mmax - k) / 2);
    const double tol = opt.tol;
    // A projected column shorter than this fraction of A q is rounding noise (exact breakdown).
    const double lost_direction = 64.0 * std::numeric_limits<double>::epsilon();
    double anorm = 0.0;  // running lower bound of ||A||: the largest ||A p|| seen

    // The basis Q, W = A Q and everything O(n m b) are fp64 whatever T is: with an fp32 basis, its loss of
    // orthogonality (~1e-7 * sqrt(m)) puts a floor near 1e-6 under the residuals. Only the product with A, the
    // O(n^2 b) part, runs in T; the block is rounded to T first so that Q holds exactly what A multiplied.
    std::vector<double> q(nz * mmax), w(nz * mmax), p(nz * b), coef, scratch, rf(static_cast<size_t>(b) * b),
        r2(static_cast<size_t>(b) * b), w_norm(static_cast<size_t>(b));
    std::vector<T> p_t(std::is_same_v<T, double> ? 0 : nz * b);
    std::vector<double> h(static_cast<size_t>(mmax) * mmax, 0.0), theta, s;
    Gaussian rng(opt.seed);

    for (size_t i = 0; i < nz * b; ++i) p[i] = rng.next();
    blas::thin_qr(n, b, p.data(), rf.data());

    TopkEigh<T> out;
    int m = 0, bw = b, next_check = 0, prev_check = -1, best_step = 0;
    double prev_log_ratio = 0.0, best_est = std::numeric_limits<double>::infinity();
    while (true) {
        // Append P to the basis and multiply it by A: the only O(n^2) work of the iteration.
        double* q_new = q.data() + nz * m;
        double* w_new = w.data() + nz * m;
        if constexpr (!std::is_same_v<T, double>) {
            for (size_t i = 0; i < nz * bw; ++i) {
                p_t[i] = static_cast<T>(p[i]);
                q_new[i] = p_t[i];
            }
            multiply(p_t.data(), bw, w_new);
        } else {
            std::copy_n(p.data(), nz * bw, q_new);
            multiply(q_new, bw, w_new);
        }
        if (out.steps == 0) {  // every entry of A reaches A P (P is dense), so a NaN or Inf shows up here
            bool bad = false;
            for (size_t i = 0; i < nz * bw; ++i) bad |= !(std::abs(w_new[i]) <= std::numeric_limits<double>::max());
            if (bad) throw NonFiniteMatrix();
        }
        ++out.steps;

        // New block column of H = Q^T A Q.
        const int mb = m + bw;
        coef.resize(static_cast<size_t>(mb) * bw);
        gemm(CblasTrans, CblasNoTrans, mb, bw, n, 1.0, q.data(), n, w_new, n, 0.0, coef.data(), mb);
        for (int j = 0; j < bw; ++j) {
            for (int i = 0; i < m; ++i) {
                const double v = coef[i + static_cast<size_t>(j) * mb];
                h[i + static_cast<size_t>(m + j) * mmax] = v;
                h[(m + j) + static_cast<size_t>(i) * mmax] = v;
            }
            for (int i = 0; i < bw; ++i) {  // symmetrize the diagonal block
                h[(m + i) + static_cast<size_t>(m + j) * mmax] =
                    0.5 * (coef[(m + i) + static_cast<size_t>(j) * mb] + coef[(m + j) + static_cast<size_t>(i) * mb]);
            }
        }
        m = mb;
        const bool exhausted = m == n;  // Q spans the whole space: Rayleigh-Ritz is exact

        // Next block: P Rf = (I - Q Q^T) A Q_last, two Gram-Schmidt passes then a Householder QR.
        const int bw_last = bw;
        if (!exhausted) {
            const int next_bw = full_space ? std::min(b, n - m) : b;
            std::copy_n(w_new, nz * bw, p.data());
            gemm(CblasNoTrans, CblasNoTrans, n, bw, m, -1.0, q.data(), n, coef.data(), mb, 1.0, p.data(), n);
            project_out(q.data(), n, m, p.data(), bw, scratch);
            blas::thin_qr(n, bw, p.data(), rf.data());
            double weakest = std::numeric_limits<double>::infinity();
            for (int j = 0; j < bw; ++j) {
                w_norm[j] = column_norm(w_new + nz * j, n);
                anorm = std::max(anorm, w_norm[j]);
                const double ratio = w_norm[j] > 0.0 ? std::abs(rf[j + static_cast<size_t>(j) * bw]) / w_norm[j] : 0.0;
                weakest = std::min(weakest, ratio);
            }
            if (weakest < 1e-3) {
                // Heavy cancellation in some column: the QR divided rounding errors (along Q) by a tiny diagonal
                // of Rf. One more pass restores orthogonality to Q; P Rf = P2 (R2 Rf) keeps the Krylov relation.
                project_out(q.data(), n, m, p.data(), bw, scratch);
                blas::thin_qr(n, bw, p.data(), r2.data());
                upper_triangular_product(r2.data(), rf.data(), bw);
                // A column whose residual is negligible (below a hundredth of tol, or pure rounding) carries no
                // Krylov information: the subspace is (nearly) invariant there, e.g. A = I or a null space. It is
                // replaced by a random direction so the basis keeps growing.
                for (int j = 0; j < bw; ++j) {
                    const double diag = std::abs(rf[j + static_cast<size_t>(j) * bw]);
                    if (diag <= std::max(lost_direction * w_norm[j], 1e-2 * tol * anorm) || w_norm[j] == 0.0) {
                        replace_with_random(q.data(), n, m, p.data(), bw, j, rng, scratch);
                    }
                }
            }
            if (next_bw < bw) {  // only n - m directions are left: take a basis of the complement
                for (size_t i = 0; i < nz * next_bw; ++i) p[i] = rng.next();
                project_out(q.data(), n, m, p.data(), next_bw, scratch);
                project_out(q.data(), n, m, p.data(), next_bw, scratch);
                std::vector<double> unused(static_cast<size_t>(next_bw) * next_bw);
                blas::thin_qr(n, next_bw, p.data(), unused.data());
            }
            bw = next_bw;
        }

        const bool restart = !full_space && m + b > mmax;
        const bool out_of_steps = out.steps >= opt.max_steps && m >= k;  // k Ritz pairs need m >= k
        if (!(exhausted || restart || out_of_steps || (m >= k + bw_last && out.steps >= next_check))) continue;

        // Rayleigh-Ritz on the current subspace.
        const int count = restart ? keep : k;
        top_eigenpairs(h, mmax, m, count, theta, s);
        const double scale = std::max({std::abs(theta[0]), std::abs(theta[k - 1]),
                                       static_cast<double>(std::numeric_limits<T>::min())});
        double est = 0.0;  // largest residual norm of the wanted pairs, from the Krylov relation
        if (!exhausted) {
            for (int i = 0; i < k; ++i) {
                const double* s_last = &s[static_cast<size_t>(i) * m + (m - bw_last)];
                double sum = 0.0;
                for (int r = 0; r < bw_last; ++r) {
                    double v = 0.0;
                    for (int c = r; c < bw_last; ++c) v += rf[r + static_cast<size_t>(c) * bw_last] * s_last[c];
                    sum += v * v;
                }
                est = std::max(est, std::sqrt(sum));
            }
        }
        est /= scale;
        // What T can resolve: a product with A carries rounding of about eps(T) ||A|| (anorm bounds ||A|| from
        // below), so below that, relative to scale, tol is out of reach: stop there and report converged = false.
        anorm = std::max({anorm, std::abs(theta[0]), std::abs(theta[k - 1])});
        const double target = std::max(tol, std::numeric_limits<T>::epsilon() * anorm / scale);
        // Stagnation: no progress of the estimate for many steps means rounding dominates.
        if (est < 0.9 * best_est) {
            best_est = est;
            best_step = out.steps;
        }
        const bool stalled = out.steps - best_step >= 30;

        if (exhausted || est <= target || out_of_steps || stalled) {
            // Form the Ritz vectors and measure their residuals explicitly (A V = W S: no product with A).
            std::vector<double> v(nz * k), av(nz * k);
            gemm(CblasNoTrans, CblasNoTrans, n, k, m, 1.0, q.data(), n, s.data(), m, 0.0, v.data(), n);
            gemm(CblasNoTrans, CblasNoTrans, n, k, m, 1.0, w.data(), n, s.data(), m, 0.0, av.data(), n);
            std::vector<T> values(theta.begin(), theta.begin() + k);
            const std::vector<double> residuals = relative_residuals(av.data(), v.data(), values, n, k);
            const double reached = *std::max_element(residuals.begin(), residuals.end());
            // Stop when converged, or when the Krylov estimate is far below the target but rounding keeps the
            // measured residual above it: more steps cannot help.
            if (reached <= target || exhausted || out_of_steps || stalled || est <= 1e-2 * target) {
                out.converged = reached <= tol;
                out.values.assign(values.begin(), values.end());
                out.residuals.assign(residuals.begin(), residuals.end());
                out.vectors.assign(v.begin(), v.end());
                return out;
            }
        }

        // Schedule the next Rayleigh-Ritz check from the observed linear convergence rate of the estimate.
        const double log_ratio = std::log(std::max(est / target, 1.0 + 1e-12));
        int gap = 1;
        if (prev_check >= 0 && prev_log_ratio > log_ratio) {
            const double rate = (prev_log_ratio - log_ratio) / (out.steps - prev_check);
            gap = std::clamp(static_cast<int>(0.7 * log_ratio / rate), 1, 8);
        }
        prev_check = out.steps;
        prev_log_ratio = log_ratio;
        next_check = out.steps + gap;

        if (restart) {
            // Thick restart: keep the best `keep` Ritz vectors (and A times them) as the new basis.
            std::vector<double> tmp(nz * keep);
            gemm(CblasNoTrans, CblasNoTrans, n, keep, m, 1.0, q.data(), n, s.data(), m, 0.0, tmp.data(), n);
            std::copy(tmp.begin(), tmp.end(), q.begin());
            gemm(CblasNoTrans, CblasNoTrans, n, keep, m, 1.0, w.data(), n, s.data(), m, 0.0, tmp.data(), n);
            std::copy(tmp.begin(), tmp.end(), w.begin());
            std::fill(h.begin(), h.end(), 0.0);
            for (int i = 0; i < keep; ++i) h[i + static_cast<size_t>(i) * mmax] = theta[i];
            m = keep;
        }
    }
}

template TopkEigh<float> topk_eigh_syevr<float>(const float*, int64_t, int);
template TopkEigh<double> topk_eigh_syevr<double>(const double*, int64_t, int);
template TopkEigh<float> topk_eigh_krylov<float>(const float*, int64_t, int, const KrylovOptions&);
template TopkEigh<double> topk_eigh_krylov<double>(const double*, int64_t, int, const KrylovOptions&);
template TopkEigh<float> topk_eigh_krylov<float>(const BlockProduct<float>&, int64_t, int, const KrylovOptions&);
template TopkEigh<double> topk_eigh_krylov<double>(const BlockProduct<double>&, int64_t, int, const KrylovOptions&);

}  // namespace askf
