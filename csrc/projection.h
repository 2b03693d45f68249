// Projection of centred rows onto principal components: out = (x - mean) @ components^T.
#pragma once

#include <cstdint>

namespace askf {

// Input element types of x: the compute type T itself, or bfloat16 bit patterns (uint16_t) widened to T.
template <typename Tin, typename T>
struct ProjectArgs {
    const Tin* x;          // [rows x dim] row-major
    const T* mean;         // [dim]
    const T* components;   // [k x dim] row-major (one component per row)
    T* out;                // [rows x k] row-major
    int64_t rows, dim, k;
};

// Centres blocks of rows in fp32/fp64 and multiplies each block with one BLAS-3 call (threaded by OpenBLAS).
// Returns -1 if every element of x was finite, otherwise the index of the first row holding a NaN or Inf
// (the rows after it are not computed).
template <typename Tin, typename T>
int64_t project_rows(const ProjectArgs<Tin, T>& args);

}  // namespace askf
