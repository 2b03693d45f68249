// Thin, typed C++ wrappers over the BLAS / LAPACK routines of scipy-openblas32.
//
// scipy-openblas32 exports every symbol with a `scipy_` prefix and 32-bit integers (`blasint` is `int`).
// Its cblas.h declares the prefixed CBLAS functions correctly; its lapack.h does not apply the prefix to the
// Fortran LAPACK symbols, so those few are declared here by hand (hidden Fortran string lengths last, as
// gfortran passes them).
#pragma once

#include <cblas.h>

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

extern "C" {
void scipy_ssyevr_(const char* jobz, const char* range, const char* uplo, const int* n, float* a, const int* lda,
                   const float* vl, const float* vu, const int* il, const int* iu, const float* abstol, int* m,
                   float* w, float* z, const int* ldz, int* isuppz, float* work, const int* lwork, int* iwork,
                   const int* liwork, int* info, size_t, size_t, size_t);
void scipy_dsyevr_(const char* jobz, const char* range, const char* uplo, const int* n, double* a, const int* lda,
                   const double* vl, const double* vu, const int* il, const int* iu, const double* abstol, int* m,
                   double* w, double* z, const int* ldz, int* isuppz, double* work, const int* lwork, int* iwork,
                   const int* liwork, int* info, size_t, size_t, size_t);
void scipy_sgeqrf_(const int* m, const int* n, float* a, const int* lda, float* tau, float* work, const int* lwork,
                   int* info);
void scipy_dgeqrf_(const int* m, const int* n, double* a, const int* lda, double* tau, double* work,
                   const int* lwork, int* info);
void scipy_sorgqr_(const int* m, const int* n, const int* k, float* a, const int* lda, const float* tau, float* work,
                   const int* lwork, int* info);
void scipy_dorgqr_(const int* m, const int* n, const int* k, double* a, const int* lda, const double* tau,
                   double* work, const int* lwork, int* info);
}

namespace askf::blas {

// All matrices below are column-major; `ld*` are leading dimensions in elements.

inline void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc) {
    scipy_cblas_sgemm(CblasColMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha, const double* a,
                 int lda, const double* b, int ldb, double beta, double* c, int ldc) {
    scipy_cblas_dgemm(CblasColMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void gemm_rowmajor(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha, const float* a,
                          int lda, const float* b, int ldb, float beta, float* c, int ldc) {
    scipy_cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void gemm_rowmajor(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha,
                          const double* a, int lda, const double* b, int ldb, double beta, double* c, int ldc) {
    scipy_cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

inline void check_info(int info, const char* routine) {
    if (info != 0) {
        throw std::runtime_error(std::string("LAPACK ") + routine + " failed with info=" + std::to_string(info) +
                                 (info > 0 ? " (no convergence; the matrix may be badly scaled)" : ""));
    }
}

// ?syevr for the eigenpairs il..iu (1-based, ascending) of the n x n matrix `a` (destroyed).
// Writes iu - il + 1 ascending eigenvalues to w[0..] and their vectors to z (n x (iu - il + 1), leading dim n).
// LAPACK uses all of w as workspace: it must hold n elements, not just iu - il + 1.
template <typename T>
void syevr_index_range(int n, T* a, int il, int iu, T* w, T* z) {
    const char jobz = 'V', range = 'I', uplo = 'L';
    const T zero = 0, abstol = 0;  // abstol 0: LAPACK's default, eps * ||T||_1
    int found = 0, info = 0, lwork = -1, liwork = -1, iwork_query = 0;
    const int lda = n > 0 ? n : 1, ldz = lda;
    std::vector<int> isuppz(2 * static_cast<size_t>(n > 0 ? n : 1));  // 2 * max(1, n) is always enough
    T work_query = 0;
    auto call = [&](T* work, int* iwork) {
        if constexpr (sizeof(T) == 4) {
            scipy_ssyevr_(&jobz, &range, &uplo, &n, a, &lda, &zero, &zero, &il, &iu, &abstol, &found, w, z, &ldz,
                          isuppz.data(), work, &lwork, iwork, &liwork, &info, 1, 1, 1);
        } else {
            scipy_dsyevr_(&jobz, &range, &uplo, &n, a, &lda, &zero, &zero, &il, &iu, &abstol, &found, w, z, &ldz,
                          isuppz.data(), work, &lwork, iwork, &liwork, &info, 1, 1, 1);
        }
    };
    call(&work_query, &iwork_query);
    check_info(info, "?syevr (workspace query)");
    lwork = static_cast<int>(work_query) + 1;
    liwork = iwork_query;
    std::vector<T> work(static_cast<size_t>(lwork));
    std::vector<int> iwork(static_cast<size_t>(liwork));
    call(work.data(), iwork.data());
    check_info(info, "?syevr");
    if (found != iu - il + 1) {
        throw std::runtime_error("LAPACK ?syevr returned " + std::to_string(found) + " eigenpairs, expected " +
                                 std::to_string(iu - il + 1));
    }
}

// In-place thin QR of the m x n block `a` (m >= n): on return `a` holds Q (orthonormal columns) and `r`
// (n x n, leading dim n, column-major) the upper-triangular factor.
template <typename T>
void thin_qr(int m, int n, T* a, T* r) {
    int info = 0, lwork = -1;
    std::vector<T> tau(static_cast<size_t>(n));
    T work_query = 0;
    auto geqrf = [&](T* work) {
        if constexpr (sizeof(T) == 4) scipy_sgeqrf_(&m, &n, a, &m, tau.data(), work, &lwork, &info);
        else scipy_dgeqrf_(&m, &n, a, &m, tau.data(), work, &lwork, &info);
    };
    auto orgqr = [&](T* work) {
        if constexpr (sizeof(T) == 4) scipy_sorgqr_(&m, &n, &n, a, &m, tau.data(), work, &lwork, &info);
        else scipy_dorgqr_(&m, &n, &n, a, &m, tau.data(), work, &lwork, &info);
    };
    geqrf(&work_query);
    check_info(info, "?geqrf (workspace query)");
    T orgqr_query = 0;
    orgqr(&orgqr_query);
    check_info(info, "?orgqr (workspace query)");
    lwork = static_cast<int>(std::max(work_query, orgqr_query)) + 1;
    std::vector<T> work(static_cast<size_t>(lwork));
    geqrf(work.data());
    check_info(info, "?geqrf");
    for (int j = 0; j < n; ++j) {
        for (int i = 0; i < n; ++i) {
            r[i + static_cast<size_t>(j) * n] = i <= j ? a[i + static_cast<size_t>(j) * m] : T(0);
        }
    }
    orgqr(work.data());
    check_info(info, "?orgqr");
}

inline int get_num_threads() { return scipy_openblas_get_num_threads(); }
inline void set_num_threads(int n) { scipy_openblas_set_num_threads(n); }
inline const char* config() { return scipy_openblas_get_config(); }

}  // namespace askf::blas
