// Python bindings of autoskill_fast._core: a strict boundary over numpy arrays.
//
// Every entry point checks the type, dtype, shape, contiguity and finiteness of its arguments and names the
// offending one; no argument is ever converted or copied silently. The heavy work runs with the GIL released.
// The Python wrapper (autoskill_fast/linalg.py) turns torch tensors into these arrays without copies.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "blas.h"
#include "eigensolver.h"
#include "projection.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

std::string dtype_name(const py::array& arr) { return py::str(arr.dtype()).cast<std::string>(); }

py::array as_array(const py::object& obj, const char* name) {
    if (!py::isinstance<py::array>(obj)) {
        throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                             py::str(py::type::of(obj)).cast<std::string>());
    }
    return py::reinterpret_borrow<py::array>(obj);
}

template <typename T>
bool has_dtype(const py::array& arr) {
    return arr.dtype().num() == py::dtype::of<T>().num() && arr.dtype().byteorder() != '>';
}

void check_layout(const py::array& arr, const char* name, py::ssize_t ndim) {
    if (arr.ndim() != ndim) {
        throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D, got shape with " +
                              std::to_string(arr.ndim()) + " dimensions");
    }
    if (!(arr.flags() & py::array::c_style) || !(arr.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) {
        throw py::value_error(std::string(name) + " must be C-contiguous and aligned (call .contiguous() first)");
    }
    for (py::ssize_t d = 0; d < ndim; ++d) {
        if (arr.shape(d) > std::numeric_limits<int>::max()) {
            throw py::value_error(std::string(name) + " dimension " + std::to_string(d) + " is larger than 2^31-1");
        }
    }
}

// Index of the first NaN/Inf element, or -1. Tests the exponent bits (all ones for NaN and Inf) so that the
// loop vectorizes: a full pass over a 17k x 17k matrix costs about as much as reading it once.
template <typename T>
int64_t first_non_finite(const T* data, int64_t size) {
    using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    constexpr Bits exponent = static_cast<Bits>(sizeof(T) == 4 ? 0x7f800000ull : 0x7ff0000000000000ull);
    const auto* bits = reinterpret_cast<const Bits*>(data);
    constexpr int64_t chunk = 4096;
    for (int64_t start = 0; start < size; start += chunk) {
        const int64_t stop = std::min(size, start + chunk);
        Bits bad = 0;
        for (int64_t i = start; i < stop; ++i) bad |= static_cast<Bits>((bits[i] & exponent) == exponent);
        if (bad) {
            for (int64_t i = start; i < stop; ++i) {
                if (!std::isfinite(data[i])) return i;
            }
        }
    }
    return -1;
}

template <typename T>
void check_finite(const py::array& arr, const char* name) {
    const auto* data = static_cast<const T*>(arr.data());
    int64_t bad;
    {
        py::gil_scoped_release release;
        bad = first_non_finite(data, static_cast<int64_t>(arr.size()));
    }
    if (bad >= 0) {
        std::string where = "flat index " + std::to_string(bad);
        if (arr.ndim() == 2) {
            where = "row " + std::to_string(bad / arr.shape(1)) + ", column " + std::to_string(bad % arr.shape(1));
        }
        throw py::value_error(std::string(name) + " contains NaN or Inf (first at " + where + ")");
    }
}

// The solvers read both triangles and trust the caller's symmetry; this spot check on a few thousand
// deterministic pairs catches a non-symmetric matrix (say, a data matrix) at O(1) cost.
template <typename T>
void check_symmetric_sample(const T* a, int64_t n, const char* name) {
    if (n < 2) return;
    double diag_max = 0.0;
    for (int64_t i = 0; i < n; i += std::max<int64_t>(1, n / 1024)) {
        diag_max = std::max(diag_max, std::abs(static_cast<double>(a[i * n + i])));
    }
    uint64_t state = 0x2545F4914F6CDD1DULL;
    for (int trial = 0; trial < 4096; ++trial) {
        state ^= state << 13, state ^= state >> 7, state ^= state << 17;
        const int64_t i = static_cast<int64_t>(state % static_cast<uint64_t>(n));
        const int64_t j = static_cast<int64_t>((state >> 32) % static_cast<uint64_t>(n));
        const double upper = a[i * n + j], lower = a[j * n + i];
        const double allowed = 1e-3 * std::max(std::abs(upper), std::abs(lower)) +
                               100.0 * std::numeric_limits<T>::epsilon() * diag_max;
        if (std::abs(upper - lower) > allowed) {
            throw py::value_error(std::string(name) + " is not symmetric: " + name + "[" + std::to_string(i) + ", " +
                                  std::to_string(j) + "] = " + std::to_string(upper) + " but " + name + "[" +
                                  std::to_string(j) + ", " + std::to_string(i) + "] = " + std::to_string(lower) +
                                  " (pass a full symmetric matrix, e.g. (a + a.T) / 2)");
        }
    }
}

template <typename T>
py::tuple to_python(askf::TopkEigh<T>&& result, int64_t n, int k) {
    py::array_t<T> values(k), residuals(k);
    py::array_t<T, py::array::f_style> vectors({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(k)});
    std::copy(result.values.begin(), result.values.end(), values.mutable_data());
    std::copy(result.residuals.begin(), result.residuals.end(), residuals.mutable_data());
    std::copy(result.vectors.begin(), result.vectors.end(), vectors.mutable_data());
    return py::make_tuple(values, vectors, residuals, result.steps, result.converged);
}

// Checks everything but finiteness, which costs a pass over memory: topk_eigh_exact checks it up front (LAPACK
// must not see a NaN), topk_eigh_krylov only when its first product with `a` is not finite.
py::array checked_matrix(const py::object& obj, int k) {
    py::array a = as_array(obj, "a");
    if (!has_dtype<float>(a) && !has_dtype<double>(a)) {
        throw py::type_error("a must be float32 or float64, got " + dtype_name(a));
    }
    check_layout(a, "a", 2);
    if (a.shape(0) != a.shape(1)) {
        throw py::value_error("a must be square, got shape (" + std::to_string(a.shape(0)) + ", " +
                              std::to_string(a.shape(1)) + ")");
    }
    if (a.shape(0) == 0) throw py::value_error("a must not be empty");
    if (k < 1 || k > a.shape(0)) {
        throw py::value_error("k must be in [1, " + std::to_string(a.shape(0)) + "], got " + std::to_string(k));
    }
    if (has_dtype<float>(a)) check_symmetric_sample(static_cast<const float*>(a.data()), a.shape(0), "a");
    else check_symmetric_sample(static_cast<const double*>(a.data()), a.shape(0), "a");
    return a;
}

void check_finite_matrix(const py::array& a) {
    if (has_dtype<float>(a)) check_finite<float>(a, "a");
    else check_finite<double>(a, "a");
}

py::tuple topk_eigh_exact(const py::object& obj, int k) {
    py::array a = checked_matrix(obj, k);
    check_finite_matrix(a);
    const int64_t n = a.shape(0);
    auto run = [&](auto tag) {
        using T = decltype(tag);
        askf::TopkEigh<T> result;
        {
            py::gil_scoped_release release;
            result = askf::topk_eigh_syevr<T>(static_cast<const T*>(a.data()), n, k);
        }
        return to_python(std::move(result), n, k);
    };
    return has_dtype<float>(a) ? run(float{}) : run(double{});
}

// The Krylov options, validated (the messages name the argument).
askf::KrylovOptions krylov_options(double tol, int max_steps, int block_size, int max_basis, uint64_t seed) {
    if (!(tol > 0.0) || !std::isfinite(tol)) {
        throw py::value_error("tol must be a positive number, got " + std::to_string(tol));
    }
    if (max_steps < 1) throw py::value_error("max_steps must be >= 1, got " + std::to_string(max_steps));
    if (block_size < 1) throw py::value_error("block_size must be >= 1, got " + std::to_string(block_size));
    if (max_basis < 0) throw py::value_error("max_basis must be >= 0 (0: automatic), got " + std::to_string(max_basis));
    askf::KrylovOptions opt;
    opt.tol = tol;
    opt.max_steps = max_steps;
    opt.block_size = block_size;
    opt.max_basis = max_basis;
    opt.seed = seed;
    return opt;
}

py::tuple topk_eigh_krylov(const py::object& obj, int k, double tol, int max_steps, int block_size, int max_basis,
                           uint64_t seed) {
    py::array a = checked_matrix(obj, k);
    const int64_t n = a.shape(0);
    const askf::KrylovOptions opt = krylov_options(tol, max_steps, block_size, max_basis, seed);
    auto run = [&](auto tag) {
        using T = decltype(tag);
        askf::TopkEigh<T> result;
        try {
            py::gil_scoped_release release;
            result = askf::topk_eigh_krylov<T>(static_cast<const T*>(a.data()), n, k, opt);
        } catch (const askf::NonFiniteMatrix&) {
            check_finite_matrix(a);  // names the first bad entry
            throw;
        }
        return to_python(std::move(result), n, k);
    };
    return has_dtype<float>(a) ? run(float{}) : run(double{});
}

// The Krylov solver over a Python callable `multiply(x) -> A @ x` (x: [n, c] Fortran-ordered float32/float64, a
// copy the callable may keep; the result: any [n, c] array, converted to float64). The GIL is released while the
// solver works and taken back for each product.
py::tuple topk_eigh_krylov_operator(const py::function& multiply, int64_t n, const std::string& dtype, int k,
                                    double tol, int max_steps, int block_size, int max_basis, uint64_t seed) {
    if (n < 1) throw py::value_error("n must be >= 1, got " + std::to_string(n));
    if (n > std::numeric_limits<int>::max()) throw py::value_error("n is too large: " + std::to_string(n));
    if (k < 1 || k > n) {
        throw py::value_error("k must be in [1, " + std::to_string(n) + "], got " + std::to_string(k));
    }
    if (dtype != "float32" && dtype != "float64") {
        throw py::value_error("dtype must be 'float32' or 'float64', got '" + dtype + "'");
    }
    const askf::KrylovOptions opt = krylov_options(tol, max_steps, block_size, max_basis, seed);
    auto run = [&](auto tag) {
        using T = decltype(tag);
        const askf::BlockProduct<T> product = [&](const T* x, int c, double* out) {
            py::gil_scoped_acquire acquire;
            py::array_t<T, py::array::f_style> x_arr({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(c)});
            std::copy_n(x, static_cast<size_t>(n) * c, x_arr.mutable_data());
            py::object returned = multiply(x_arr);
            auto result = py::array_t<double, py::array::f_style | py::array::forcecast>::ensure(returned);
            if (!result || result.ndim() != 2 || result.shape(0) != n || result.shape(1) != c) {
                throw py::value_error("multiply(x) must return an array of shape (" + std::to_string(n) + ", " +
                                      std::to_string(c) + ") for x of that shape, got " +
                                      std::string(py::str(py::getattr(returned, "shape", py::none()))));
            }
            std::copy_n(result.data(), static_cast<size_t>(n) * c, out);
        };
        askf::TopkEigh<T> result;
        try {
            py::gil_scoped_release release;
            result = askf::topk_eigh_krylov<T>(product, n, k, opt);
        } catch (const askf::NonFiniteMatrix&) {
            throw py::value_error("the operator's product holds NaN or Inf: its matrix is not finite");
        }
        return to_python(std::move(result), n, k);
    };
    return dtype == "float32" ? run(float{}) : run(double{});
}

template <typename Tin, typename T>
py::array run_projection(const py::array& x, const py::array& mean, const py::array& components) {
    const int64_t rows = x.shape(0), dim = x.shape(1), k = components.shape(0);
    py::array_t<T> out({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(k)});
    askf::ProjectArgs<Tin, T> args{static_cast<const Tin*>(x.data()), static_cast<const T*>(mean.data()),
                                   static_cast<const T*>(components.data()), out.mutable_data(), rows, dim, k};
    int64_t bad_row;
    {
        py::gil_scoped_release release;
        bad_row = askf::project_rows(args);
    }
    if (bad_row >= 0) throw py::value_error("x contains NaN or Inf in row " + std::to_string(bad_row));
    return out;
}

py::array project(const py::object& x_obj, const py::object& mean_obj, const py::object& components_obj,
                  bool x_is_bfloat16) {
    py::array x = as_array(x_obj, "x"), mean = as_array(mean_obj, "mean"),
              components = as_array(components_obj, "components");
    check_layout(x, "x", 2);
    check_layout(mean, "mean", 1);
    check_layout(components, "components", 2);
    const bool f64 = has_dtype<double>(components);
    if (!f64 && !has_dtype<float>(components)) {
        throw py::type_error("components must be float32 or float64, got " + dtype_name(components));
    }
    if (f64 ? !has_dtype<double>(mean) : !has_dtype<float>(mean)) {
        throw py::type_error("mean must have the dtype of components (" + dtype_name(components) + "), got " +
                             dtype_name(mean));
    }
    if (x_is_bfloat16 ? !has_dtype<uint16_t>(x)
                      : !(has_dtype<float>(x) || (f64 && has_dtype<double>(x)))) {
        const char* expected =
            x_is_bfloat16 ? "uint16 holding bfloat16 bits" : (f64 ? "float32 or float64" : "float32");
        throw py::type_error(std::string("x must be ") + expected + " for " + dtype_name(components) +
                             " components, got " + dtype_name(x));
    }
    if (mean.shape(0) != x.shape(1) || components.shape(1) != x.shape(1)) {
        throw py::value_error("shapes do not match: x is [" + std::to_string(x.shape(0)) + ", " +
                              std::to_string(x.shape(1)) + "], mean is [" + std::to_string(mean.shape(0)) +
                              "], components is [" + std::to_string(components.shape(0)) + ", " +
                              std::to_string(components.shape(1)) + "] (expected mean [D], components [k, D])");
    }
    if (f64) {
        check_finite<double>(mean, "mean");
        check_finite<double>(components, "components");
        if (x_is_bfloat16) return run_projection<uint16_t, double>(x, mean, components);
        return has_dtype<double>(x) ? run_projection<double, double>(x, mean, components)
                                    : run_projection<float, double>(x, mean, components);
    }
    check_finite<float>(mean, "mean");
    check_finite<float>(components, "components");
    if (x_is_bfloat16) return run_projection<uint16_t, float>(x, mean, components);
    return run_projection<float, float>(x, mean, components);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "autoskill_fast compiled core: top-k symmetric eigensolvers and projection over OpenBLAS/LAPACK "
              "(scipy-openblas32). Use it through autoskill_fast.linalg.";

    m.def("topk_eigh_exact", &topk_eigh_exact, "a"_a, "k"_a,
          "Top-k eigenpairs of the full symmetric matrix `a` [D, D] (float32/float64, C-contiguous) by LAPACK "
          "?syevr with an index range.\n\nReturns (values [k] descending, vectors [D, k] Fortran-ordered, "
          "residuals [k] = ||A v - lambda v|| / max(|lambda_0|, |lambda_{k-1}|), steps=0, converged=True).");
    m.def("topk_eigh_krylov", &topk_eigh_krylov, "a"_a, "k"_a, "tol"_a = 1e-6, "max_steps"_a = 300,
          "block_size"_a = 32, "max_basis"_a = 0, "seed"_a = 0,
          "Top-k eigenpairs of the full symmetric matrix `a` [D, D] by thick-restart block Lanczos (BLAS-3 "
          "products of `a` with D x block_size blocks, fp64 Rayleigh-Ritz).\n\nStops when every residual "
          "(relative as for topk_eigh_exact) is <= tol, after max_steps block products, or when rounding stops "
          "progress. Returns (values, vectors, residuals, steps, converged).");
    m.def("topk_eigh_krylov_operator", &topk_eigh_krylov_operator, "multiply"_a, "n"_a, "dtype"_a, "k"_a,
          "tol"_a = 1e-6, "max_steps"_a = 300, "block_size"_a = 32, "max_basis"_a = 0, "seed"_a = 0,
          "topk_eigh_krylov for a symmetric operator given by `multiply(x) -> A @ x` (x [n, c] Fortran-ordered in "
          "`dtype`, 'float32' or 'float64'; the result is read as float64), e.g. a packed matrix. Returns (values, "
          "vectors, residuals, steps, converged).");
    m.def("project", &project, "x"_a, "mean"_a, "components"_a, "x_is_bfloat16"_a = false,
          "(x - mean) @ components.T for x [N, D], mean [D], components [k, D]; centred and multiplied in blocks "
          "of rows in the dtype of components (float32 or float64). x may be float32, float64 (with float64 "
          "components) or uint16 bfloat16 bit patterns (x_is_bfloat16=True).");
    m.def("set_num_threads", [](int n) {
        if (n < 1) throw py::value_error("n must be >= 1, got " + std::to_string(n));
        askf::blas::set_num_threads(n);
    }, "n"_a, "Set the number of OpenBLAS threads used by this extension (its own OpenBLAS, not numpy's).");
    m.def("get_num_threads", &askf::blas::get_num_threads, "Number of OpenBLAS threads used by this extension.");
    m.attr("blas_config") = py::str(askf::blas::config());
}
