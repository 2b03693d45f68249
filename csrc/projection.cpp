#include "projection.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "blas.h"

namespace askf {
namespace {

template <typename T>
inline T widen_bf16(uint16_t bits) {
    const uint32_t wide = static_cast<uint32_t>(bits) << 16;  // bfloat16 is the top half of an IEEE float
    float f;
    std::memcpy(&f, &wide, sizeof f);
    return static_cast<T>(f);
}

}  // namespace

template <typename Tin, typename T>
int64_t project_rows(const ProjectArgs<Tin, T>& args) {
    const int64_t dim = args.dim, k = args.k;
    // Rows per block: a centred block of ~8 MB stays in the last-level cache and is wide enough for GEMM.
    const int64_t block_rows = std::clamp<int64_t>((int64_t{1} << 21) / std::max<int64_t>(dim, 1), 64, 4096);
    std::vector<T> centred(static_cast<size_t>(std::min(block_rows, std::max<int64_t>(args.rows, 1)) * dim));
    for (int64_t r0 = 0; r0 < args.rows; r0 += block_rows) {
        const int64_t nrows = std::min(block_rows, args.rows - r0);
        for (int64_t r = 0; r < nrows; ++r) {
            const Tin* src = args.x + (r0 + r) * dim;
            T* dst = centred.data() + r * dim;
            bool bad = false;
            // Centre before the product: x @ C^T - mean @ C^T would cancel catastrophically when |mean| >> std.
            for (int64_t c = 0; c < dim; ++c) {
                T v;
                if constexpr (std::is_same_v<Tin, uint16_t>) v = widen_bf16<T>(src[c]) - args.mean[c];
                else v = static_cast<T>(src[c]) - args.mean[c];
                dst[c] = v;
                bad |= !(std::abs(v) <= std::numeric_limits<T>::max());  // false for NaN and +-Inf
            }
            if (bad) return r0 + r;
        }
        blas::gemm_rowmajor(CblasNoTrans, CblasTrans, static_cast<int>(nrows), static_cast<int>(k),
                            static_cast<int>(dim), T(1), centred.data(), static_cast<int>(dim), args.components,
                            static_cast<int>(dim), T(0), args.out + r0 * k, static_cast<int>(k));
    }
    return -1;
}

template int64_t project_rows<float, float>(const ProjectArgs<float, float>&);
template int64_t project_rows<double, double>(const ProjectArgs<double, double>&);
template int64_t project_rows<uint16_t, float>(const ProjectArgs<uint16_t, float>&);
template int64_t project_rows<float, double>(const ProjectArgs<float, double>&);
template int64_t project_rows<uint16_t, double>(const ProjectArgs<uint16_t, double>&);

}  // namespace askf
