// Top-k eigenpairs of a dense symmetric matrix: exact (LAPACK ?syevr) and thick-restart block Krylov.
//
// Conventions shared by both solvers:
// - `a` is a full symmetric n x n matrix (both triangles are read; symmetry is the caller's promise).
// - "top k" means the k algebraically largest eigenvalues, returned in descending order.
// - residuals[i] = ||A v_i - lambda_i v_i||_2 / scale, scale = max(|lambda_0|, |lambda_{k-1}|, tiny): the
//   largest magnitude among the returned eigenvalues (the largest eigenvalue of a covariance matrix).
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <vector>

namespace askf {

struct KrylovOptions {
    double tol = 1e-6;    // stop when every returned pair has residual <= tol (relative, see above)
    int max_steps = 300;  // block products A @ P allowed before giving up (converged = false)
    int block_size = 32;  // columns per block; also the largest eigenvalue multiplicity resolved reliably
    int max_basis = 0;    // basis size before a thick restart; 0 picks max(2k + 2b, k + 6b)
    uint64_t seed = 0;    // seed of the Gaussian starting block (results are deterministic per seed and thread count)
};

template <typename T>
struct TopkEigh {
    std::vector<T> values;     // [k], descending
    std::vector<T> vectors;    // [n x k] column-major: column i belongs to values[i]
    std::vector<T> residuals;  // [k], relative residuals actually reached
    int steps = 0;             // block products with A (0 for the exact solver)
    bool converged = true;     // false when max_steps ran out or rounding stopped progress above tol
};

// Thrown by topk_eigh_krylov when a product with A is not finite: A holds a NaN or Inf (the caller locates it;
// checking A up front would cost a full pass over memory, about half a block product).
struct NonFiniteMatrix : std::runtime_error {
    NonFiniteMatrix() : std::runtime_error("the matrix contains NaN or Inf") {}
};

template <typename T>
TopkEigh<T> topk_eigh_syevr(const T* a, int64_t n, int k);

template <typename T>
TopkEigh<T> topk_eigh_krylov(const T* a, int64_t n, int k, const KrylovOptions& opt);

// The product of a symmetric operator with a block: out[n x c] (fp64, column-major) = A x, x [n x c] column-major
// in T. The Krylov solver needs nothing else of A, so A may be stored in any form (e.g. packed, or on a device).
template <typename T>
using BlockProduct = std::function<void(const T* x, int c, double* out)>;

// The same block Krylov solver over an operator given by its product (called once per block step, with c <= the
// block size, from the calling thread).
template <typename T>
TopkEigh<T> topk_eigh_krylov(const BlockProduct<T>& multiply, int64_t n, int k, const KrylovOptions& opt);

}  // namespace askf
