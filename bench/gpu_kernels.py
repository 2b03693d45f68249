"""Micro-benchmarks of the Triton kernels against the two ceilings of the same device.

- covariance: `cov_update_triton` (upper-triangle tiles, fp32 accumulator) on N x D bf16 rows, against a plain bf16
  `torch.matmul(x.T, x)` of the same shape. TFLOP/s are reported two ways: "useful" counts the full product, 2*N*D*D,
  so the kernel (which computes only the triangle) can beat the matmul; "executed" counts the tiles it really computes,
  2*N*BLOCK_D^2 * T(T+1)/2 with T = ceil(D / BLOCK_D), i.e. about N*D*(D + BLOCK_D).
- pooling: `masked_pool_triton` bandwidth (bytes of hidden read / time) against a device-to-device copy of the same
  bytes (read + write / time), and the torch reference; out is a column slice of a [B, L*H] staging buffer.
- peak memory: torch.cuda.max_memory_allocated during each case.
- fp32 sweep (--fp32-sweep D): fp32 rows, which is what profile() feeds the kernel (3xTF32), timed over tile and
  pipeline settings (FP32_SWEEP, the default first), then over tl.dot's other fp32 precisions (FP32_PRECISIONS:
  bf16x3 and bf16x6 split each value into bf16 parts, 3 or 6 bf16 products) at the default and the fastest setting.
  The H200 run of 2026-11-27 measured the default at 60-62 TFLOP/s, 8% of a bf16 matmul: this is the table to choose
  a better default from, by rate and by error against fp64.
Each result also carries a correctness check against fp64 on a corner of the output.

Timing: triton.testing.do_bench (warm-up 25 ms, 100 ms of repetitions), median. Run from the repository root:
    PYTHONPATH=. python bench/gpu_kernels.py [--dims 4096 16384 65536] [--n 4096] [--json results.json]
and record the command, device and date in bench/RESULTS.md.
    TRITON_INTERPRET=1 PYTHONPATH=. python bench/gpu_kernels.py --cpu-smoke
runs tiny shapes through the interpreter on CPU: it checks the script, it measures nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

if "--cpu-smoke" in sys.argv:  # Triton reads it when the kernels are decorated, i.e. at import
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import triton  # noqa: E402

from autoskill_fast.kernels import PackedSymmetric, covariance, masked_pool_ref, masked_pool_triton  # noqa: E402
from autoskill_fast.kernels.covariance import cov_update_triton  # noqa: E402


def median_ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()  # CPU smoke: one warm-up, then the median of three
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def free_bytes(device: torch.device) -> int:
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 1 << 62


def bench_covariance(D: int, N: int, packed: bool, device: torch.device) -> dict:
    block_d = covariance._default_config(torch.bfloat16)["BLOCK_D"]
    n_tiles = triton.cdiv(D, block_d)
    useful_flops = 2 * N * D * D
    executed_flops = 2 * N * block_d * block_d * n_tiles * (n_tiles + 1) // 2
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(N, D, device=device, dtype=torch.bfloat16, generator=gen)
    cov = PackedSymmetric.zeros(D, device=device) if packed else torch.zeros(D, D, device=device)

    # Correctness on one update into zeros: the first rows of the result (block row 0 when packed) against fp64.
    cov_update_triton(cov, x)
    k = min(D, cov.layout.tile if packed else 256)
    upper = torch.ones(k, D, dtype=torch.bool, device=device).triu()  # rows 0..k-1, columns >= row
    got = (cov.block_row(0)[:k, :D] if packed else cov[:k])[upper]
    x64 = x.double()
    want = (x64[:, :k].T @ x64)[upper]
    bound = (x64[:, :k].abs().T @ x64.abs())[upper]
    max_rel_err = float(((got.double() - want).abs() / bound).max())
    del x64

    reset_peak(device)
    t_kernel = median_ms(lambda: cov_update_triton(cov, x), device)
    peak_kernel = peak_mib(device)
    result = dict(op="covariance", D=D, N=N, packed=packed, dtype="bf16", block_d=block_d, kernel_ms=t_kernel,
                  useful_tflops=useful_flops / t_kernel / 1e9, executed_tflops=executed_flops / t_kernel / 1e9,
                  executed_fraction=executed_flops / useful_flops, kernel_peak_mib=peak_kernel,
                  max_rel_err_vs_fp64=max_rel_err)
    del cov
    if free_bytes(device) > 2.2 * D * D * 2:  # room for the bf16 D x D product
        reset_peak(device)
        product = torch.empty(D, D, device=device, dtype=torch.bfloat16)
        t_mm = median_ms(lambda: torch.matmul(x.T, x, out=product), device)
        result.update(matmul_ms=t_mm, matmul_tflops=useful_flops / t_mm / 1e9, matmul_peak_mib=peak_mib(device),
                      speedup_vs_matmul=t_mm / t_kernel)
        del product
    else:
        result.update(matmul_ms=None, note="bf16 D x D product does not fit next to x; no matmul ceiling")
    return result


FP32_SWEEP = [  # (BLOCK_D, BLOCK_N, num_warps, num_stages): the default first, then larger K-steps, stages, warps
    (128, 32, 8, 3), (128, 64, 8, 2), (128, 32, 8, 4), (128, 16, 8, 4), (128, 32, 4, 3), (64, 32, 4, 3),
    (64, 64, 4, 3), (128, 64, 8, 3)]


FP32_PRECISIONS = ("bf16x3", "bf16x6", "ieee", "tf32")  # tl.dot's other ways to multiply fp32 (tf32 for its speed)


def bench_fp32_sweep(D: int, N: int, device: torch.device) -> list[dict]:
    """The fp32-row update (what profile() stages; 3xTF32) over tile and pipeline settings, into a square fp32
    accumulator, each against fp64 on a corner: which setting the default should be. Then the other input precisions
    of tl.dot (FP32_PRECISIONS) at the default setting and at the fastest one. A setting the device cannot hold (shared
    memory) is reported, not raised. On CPU (the interpreter) two settings and ieee only: a smoke test."""
    gen = torch.Generator(device=device).manual_seed(2)
    x = torch.randn(N, D, device=device, generator=gen)
    x64 = x[:, :256].double()
    want = x64.T @ x64
    scale = (x64.abs().T @ x64.abs()).triu().clamp_min(1e-30)

    def one(block_d: int, block_n: int, warps: int, stages: int, precision: str) -> dict:
        row = dict(op="covariance-fp32-sweep", D=D, N=N, block_d=block_d, block_n=block_n, num_warps=warps,
                   num_stages=stages, input_precision=precision)
        cov = torch.zeros(D, D, device=device)
        settings = dict(block_d=block_d, block_n=block_n, num_warps=warps, num_stages=stages, input_precision=precision)
        try:  # the whole of it: a CUDA error may surface only at the next synchronization
            cov_update_triton(cov, x, **settings)
            max_rel_err = float(((cov[:256, :256].double().triu() - want.triu()).abs() / scale).max())
            t = median_ms(lambda: cov_update_triton(cov, x, **settings), device)
            row.update(kernel_ms=t, useful_tflops=2 * N * D * D / t / 1e9, max_rel_err_vs_fp64=max_rel_err)
        except Exception as e:  # e.g. triton's OutOfResources for shared memory
            row.update(error=f"{type(e).__name__}: {e}"[:200])
        print(json.dumps(row), flush=True)
        return row

    cuda = device.type == "cuda"
    results = [one(*setting, "tf32x3") for setting in (FP32_SWEEP if cuda else FP32_SWEEP[:2])]
    timed = [r for r in results if "kernel_ms" in r]
    settings = [FP32_SWEEP[0]]
    if timed:
        fastest = min(timed, key=lambda r: r["kernel_ms"])
        fastest = (fastest["block_d"], fastest["block_n"], fastest["num_warps"], fastest["num_stages"])
        settings += [fastest] if fastest != FP32_SWEEP[0] else []
    for setting in settings:
        for precision in FP32_PRECISIONS if cuda else ("ieee",):
            results.append(one(*setting, precision))
    return results


def bench_pooling(B: int, S: int, H: int, layers: int, device: torch.device) -> dict:
    gen = torch.Generator(device=device).manual_seed(1)
    hidden = torch.randn(B, S, H, device=device, dtype=torch.bfloat16, generator=gen)
    weights = torch.full((B, S), 1.0 / S, device=device)  # all valid: every byte of hidden is read
    shift = torch.randn(H, device=device, generator=gen)
    staging = torch.empty(B, layers * H, device=device)
    out = staging[:, H:2 * H]
    hidden_bytes = hidden.numel() * hidden.element_size()

    masked_pool_triton(hidden, weights, out, shift)
    want = (weights.double()[..., None] * hidden.double()).sum(1) - shift.double()
    bound = (weights.double()[..., None] * hidden.double().abs()).sum(1) + shift.double().abs()
    max_rel_err = float(((out.double() - want).abs() / bound).max())

    reset_peak(device)
    t_kernel = median_ms(lambda: masked_pool_triton(hidden, weights, out, shift), device)
    peak_kernel = peak_mib(device)
    t_ref = median_ms(lambda: masked_pool_ref(hidden, weights, out, shift), device)
    dst = torch.empty_like(hidden)
    t_copy = median_ms(lambda: dst.copy_(hidden), device)
    return dict(op="pooling", B=B, S=S, H=H, dtype="bf16", kernel_ms=t_kernel,
                kernel_gbps=hidden_bytes / t_kernel / 1e6, copy_gbps=2 * hidden_bytes / t_copy / 1e6,
                fraction_of_copy=(hidden_bytes / t_kernel) / (2 * hidden_bytes / t_copy),
                torch_reference_ms=t_ref, speedup_vs_reference=t_ref / t_kernel, kernel_peak_mib=peak_kernel,
                max_rel_err_vs_fp64=max_rel_err)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[4096, 16384, 65536],
                        help="covariance feature dims D (122880 fits only packed on an 80 GB device)")
    parser.add_argument("--n", type=int, default=4096, help="rows per covariance update")
    parser.add_argument("--pool-shapes", default="16x2048x4096,1x32768x4096,64x512x576",
                        help="comma-separated BxSxH pooling shapes")
    parser.add_argument("--fp32-sweep", type=int, default=16384, metavar="D",
                        help="also time fp32 rows over tile settings at this D (0: skip)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes, interpreted on CPU (tests the script)")
    args = parser.parse_args(argv)

    if args.cpu_smoke:
        device = torch.device("cpu")
        args.dims, args.n, args.pool_shapes = [8, 40], 16, "2x5x24,1x33x8"
        args.fp32_sweep = 40 if args.fp32_sweep else 0
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        parser.error("no CUDA device: run on a GPU, or pass --cpu-smoke to check the script")

    header = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), command=" ".join(sys.argv),
                  device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                  torch=torch.__version__, triton=triton.__version__, threads=torch.get_num_threads(),
                  interpreted=os.environ.get("TRITON_INTERPRET") == "1")
    print(json.dumps(header))
    results = []

    def record(rows: list[dict], printed: bool = False) -> None:
        """Print the rows (unless their bench did) and write everything so far: a kill or a failed row keeps what
        ran."""
        for row in [] if printed else rows:
            print(json.dumps(row), flush=True)
        results.extend(rows)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(header, results=results), f, indent=1)

    for D in args.dims:
        # The square fp32 accumulator takes 4 * D^2 bytes: where that is over half the free memory, time only the
        # block-packed one (about 2 * D^2 bytes), which is what StreamingCovariance keeps.
        for packed in ([False, True] if 4 * D * D < free_bytes(device) / 2 else [True]):
            record(attempt(bench_covariance, D, args.n, packed, device, row=dict(op="covariance", D=D, packed=packed)))
    if args.fp32_sweep:
        swept = attempt(bench_fp32_sweep, args.fp32_sweep, args.n, device,
                        row=dict(op="covariance-fp32-sweep", D=args.fp32_sweep))
        record(swept, printed="error" not in swept[0])  # the sweep prints each setting as it is timed
    for shape in args.pool_shapes.split(","):
        B, S, H = (int(v) for v in shape.split("x"))
        record(attempt(bench_pooling, B, S, H, 4, device, row=dict(op="pooling", shape=shape)))
    return results


def attempt(bench, *args, row: dict) -> list[dict]:
    """bench(*args) as a list of rows, or [`row` with the error it raised]: a failed item costs itself, not the items
    after it (the device runs this once, unattended)."""
    try:
        out = bench(*args)
    except Exception as e:
        return [dict(row, error=f"{type(e).__name__}: {e}"[:300])]
    return out if isinstance(out, list) else [out]


if __name__ == "__main__":
    main()
