"""Profiler overhead over the bare forward on GPU, at the real shapes of Qwen2.5-3B and Llama-3-8B (issue 3, bench 3).

    python bench/gpu_profile.py [--models qwen2.5-3b,llama-3-8b] [--tokens-per-batch 16384] [--seq-len 512]
                                [--batches 8] [--reps 5] [--fit-k 64] [--json results.json]

Models are built from hand-written configs with random bf16 weights directly on the GPU (nothing is downloaded), base
model only (no LM head). Batches are random token ids with ragged lengths (half to all of --seq-len, right padding,
fixed seed), put through `batching.collate` so the profiler's own masks, positions and pooling weights are used, and
moved to the GPU once, before timing (host-to-device copies are left out of every variant).

Four variants run over the same batches, interleaved with rotating order, after one warm-up pass each; a pass is all
--batches batches, timed with CUDA events; medians over --reps passes:
  floor     the bare base model, full depth, no hooks
  capture   `PooledCapture` on the default layers 1..L-2 (it stops the forward after block L-2), rows discarded
  profiler  `Profiler.step(batch)` per batch, the per-batch body of `profile()` itself (capture, non-finite check,
            shift, `StreamingCovariance.update_shifted`; no feature writer), and a `flush()` at the end of every pass:
            C is read and written once per pass, not once per 4096 rows as in a long run, so this overstates the
            covariance's share (its time is printed as "flush ms").
  profiler_bf16  the same with `--covariance-rows bfloat16` (the centered rows rounded to bf16 before the covariance
            update), on the same accumulator; its flush time and peak memory are not recorded apart.
Overhead = profiler / floor - 1 (target <= 3%); it can be negative because the capture skips the last block. Tokens/s
count real (unpadded) tokens.
Peak memory is `torch.cuda.max_memory_allocated`: for the floor before the accumulator exists, for the profiler with it.

The accumulator is the Profiler's `StreamingCovariance` (block-packed fp32 upper triangle: 30 GiB for Llama-3-8B's
122,880 dims) over all default layers; a model whose accumulator does not fit beside its activations is reported as
skipped, with the sizes.

After the passes, the fit: `StreamingCovariance.top_eigenpairs(--fit-k)` on the device (block Krylov in torch, products
with the packed sums in place), timed once, with its peak memory. The passes repeat the same rows, so the covariance
has low rank (rows per pass): this times the solver's products and bookkeeping, not its behaviour on a real spectrum.

Model FLOP utilization (MFU) of each forward: real tokens/s x 2 x the non-embedding parameters of the blocks it runs
(all L for the floor, 0 .. L-2 for the profiler), over the device's measured dense bf16 matmul rate (8192^3).

Then the covariance kernel alone: `cov_update_` (Triton on CUDA) on N = 4096 bf16 rows into a block-packed fp32
accumulator, against a plain bf16 `torch.matmul(x.T, x)` of the same shape, timed with `triton.testing.do_bench`
(median). FLOPs are counted as 2*N*D*D for both; the kernel computes only the upper-triangle tiles, so its rate can
exceed the matmul's (target >= 70%). The same rows in fp32, which is what `profile()` stages (3xTF32 in the kernel), are
timed beside them.
`bench/gpu_kernels.py` has the finer kernel breakdown.

    python bench/gpu_profile.py --cpu-smoke
runs the same code on CPU with tiny shapes (2 layers, hidden 64, vocab 1000) and the torch reference kernels: it checks
the script; its timings mean nothing. Record real runs (command, device, date) in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

# Runnable as `python bench/gpu_profile.py` without installing, and importable from tests (for gpu_kernels).
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402

from autoskill_fast.capture.features import resolve_pooling  # noqa: E402
from autoskill_fast.capture.hooks import PooledCapture  # noqa: E402
from autoskill_fast.config import PoolingConfig  # noqa: E402
from autoskill_fast.data.batching import Batch, Tokenized, collate  # noqa: E402
from autoskill_fast.data.rendering import Example  # noqa: E402
from autoskill_fast.jobs.profiling import Profiler  # noqa: E402
from autoskill_fast.kernels import PackedSymmetric, cov_update_  # noqa: E402
from autoskill_fast.kernels.packed import BlockPackedLayout, default_tile  # noqa: E402
from gpu_kernels import free_bytes, median_ms, peak_mib, reset_peak  # noqa: E402

GIB = 2**30
# The published configs of the two models, shape-relevant fields only.
MODEL_CONFIGS = {
    "qwen2.5-3b": dict(model_type="qwen2", hidden_size=2048, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2, intermediate_size=11008, vocab_size=151936, tie_word_embeddings=True,
                       rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768),  # Qwen2: q/k/v carry biases
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
                       rope_theta=5e5, rms_norm_eps=1e-5, max_position_embeddings=8192, attention_bias=False,
                       mlp_bias=False),
}
TINY_SHAPES = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, vocab_size=1000)
VARIANTS = ("floor", "capture", "profiler", "profiler_bf16")  # the last: --covariance-rows bfloat16


def hf_config(name: str, tiny: bool):
    from transformers import AutoConfig

    fields = dict(MODEL_CONFIGS[name], **(TINY_SHAPES if tiny else {}))
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def build_model(config, device: torch.device) -> torch.nn.Module:
    """Random-weight base model in bf16, allocated and initialized on `device` (no CPU copy, no download)."""
    from transformers import AutoModel

    with torch.device(device):
        model = AutoModel.from_config(config, dtype=torch.bfloat16)
    return model.eval().requires_grad_(False)


def model_bytes(config) -> int:
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config, dtype=torch.bfloat16)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def synthetic_batches(vocab: int, tokens_per_batch: int, seq_len: int, n_batches: int, device: torch.device,
                      seed: int = 0) -> list[Batch]:
    """Ragged random batches, collated as profile() collates them (right padding, mean pooling after BOS)."""
    gen = torch.Generator().manual_seed(seed)
    rows = max(1, tokens_per_batch // seq_len)
    batches = []
    for b in range(n_batches):
        lengths = torch.randint(max(2, seq_len // 2), seq_len + 1, (rows,), generator=gen)
        lengths[0] = seq_len  # every batch pads to exactly rows x seq_len
        items = []
        for i, n in enumerate(lengths.tolist()):
            row = b * rows + i
            ids = torch.randint(0, vocab, (n,), generator=gen).tolist()
            example = Example(row, f"synthetic-{row}", "")
            items.append(Tokenized(example, ids, pool_start=1, pool_end=n, truncated=False))  # BOS not pooled
        batch = collate(items, pad_id=0, padding_side="right", mode="mean")
        batches.append(dataclasses.replace(batch, **{f: getattr(batch, f).to(device) for f in (
            "input_ids", "attention_mask", "position_ids", "weights")}))
    return batches


def packed_bytes(dim: int) -> int:
    return 4 * BlockPackedLayout(dim, default_tile(dim)).numel


def block_parameters(model: torch.nn.Module, upto: int) -> int:
    """Parameters of decoder blocks 0 .. upto (what a forward through them multiplies; embeddings excluded)."""
    from autoskill_fast.capture.models import decoder_blocks

    return sum(p.numel() for block in list(decoder_blocks(model))[:upto + 1] for p in block.parameters())


def peak_bf16_tflops(device: torch.device, n: int = 8192) -> float:
    """The device's measured dense bf16 matmul rate (an n x n x n product), the ceiling model FLOP utilization is
    measured against."""
    if device.type != "cuda":
        n = 512
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = median_ms(lambda: a @ b, device)
    return 2 * n ** 3 / ms / 1e9


def accumulator_fits(dim: int, free: int, reserve: int) -> bool:
    """Whether the packed fp32 sums of `dim` features fit in `free` bytes next to `reserve` bytes."""
    return packed_bytes(dim) + reserve <= free


def _mark(device: torch.device):
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def _ms(start, end) -> float:
    if isinstance(start, float):
        return (end - start) * 1e3
    end.synchronize()
    return start.elapsed_time(end)


def bench_model(name: str, args, device: torch.device) -> dict:
    config = hf_config(name, args.cpu_smoke)
    weights = model_bytes(config)
    result = dict(model=name, layers=config.num_hidden_layers, hidden=config.hidden_size, weights_gib=weights / GIB)
    if weights + 2 * GIB > free_bytes(device):
        return dict(result, skipped=f"{weights / GIB:.1f} GiB of weights + 2 GiB do not fit in the "
                                    f"{free_bytes(device) / GIB:.1f} GiB free")
    model = build_model(config, device)
    resolved = resolve_pooling(PoolingConfig(), model, None)  # the default layers 1 .. L-2, as profile() takes them
    layout = resolved.layout
    batches = synthetic_batches(config.vocab_size, args.tokens_per_batch, args.seq_len, args.batches, device)
    real_tokens = sum(b.n_tokens for b in batches)
    result.update(layer_ids=[layout.layer_ids[0], layout.layer_ids[-1]], feature_dim=layout.feature_dim,
                  batches=len(batches), rows_per_pass=sum(len(b) for b in batches), tokens_per_pass=real_tokens,
                  padded_tokens_per_pass=sum(b.input_ids.numel() for b in batches))

    def floor_pass():
        with torch.inference_mode():
            for batch in batches:
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      position_ids=batch.position_ids, use_cache=False)

    # Warm-up floor pass first, before the accumulator exists: its peak is the model's own, and it sizes the reserve.
    reset_peak(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    floor_pass()
    result["peak_floor_gib"] = (peak_mib(device) or 0) / 1024 or None
    activations = (torch.cuda.max_memory_allocated(device) - before) if device.type == "cuda" else 0
    reset_peak(device)  # also empties the cache, so free_bytes sees what the allocator could hand out

    capture = PooledCapture(model, layout)
    max_rows = max(len(b) for b in batches) * len(batches)
    # Room for the activations (twice the floor's, in case the allocator fragments), the staged rows and their
    # concatenation, and a tenth of the device (at least 4 GiB) for everything not counted.
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
    reserve = 2 * activations + 2 * 4 * max_rows * layout.feature_dim + max(4 * GIB, total // 10)
    if not accumulator_fits(layout.feature_dim, free_bytes(device), reserve):
        return dict(result, skipped=f"the packed sums of {layout.feature_dim} dims "
                                    f"({packed_bytes(layout.feature_dim) / GIB:.1f} GiB) do not fit in "
                                    f"{free_bytes(device) / GIB:.1f} GiB free next to a {reserve / GIB:.1f} GiB reserve")
    profiler = Profiler(model, resolved)
    profiler.prepare()
    profiler.__exit__(None, None, None)  # hooks on only during its own passes: the floor runs the model without them
    stats = profiler.stats
    result.update(cov_storage="all layers", cov_dim=layout.feature_dim,
                  accumulator_gib=stats.sumsq.data.numel() * stats.sumsq.data.element_size() / GIB)

    def capture_pass():
        with capture:  # hooks on for this pass only
            for batch in batches:
                capture(batch)

    def profiler_pass(rows_dtype=None):
        stats.rows_dtype = rows_dtype  # the same accumulator (its values do not matter here): one fits on an H100
        profiler.capture.__enter__()
        try:
            for batch in batches:
                profiler.step(batch)  # profile()'s own per-batch body
        finally:
            profiler.capture.__exit__(None, None, None)
        flush_start = _mark(device)
        stats.flush()
        return flush_start

    passes = dict(floor=floor_pass, capture=capture_pass, profiler=profiler_pass,
                  profiler_bf16=lambda: profiler_pass(torch.bfloat16))
    times = {v: [] for v in VARIANTS}
    flush_ms, peak_profiler = [], 0.0
    try:
        for rep in range(1 + args.reps):  # rep 0 is the warm-up
            turn = rep % len(VARIANTS)
            for variant in VARIANTS[turn:] + VARIANTS[:turn]:  # rotating order: no variant always goes first
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                start = _mark(device)
                flush_start = passes[variant]()
                elapsed = _ms(start, _mark(device))
                if rep == 0:
                    continue
                times[variant].append(elapsed)
                if variant == "profiler":
                    flush_ms.append(elapsed - _ms(start, flush_start))
                    peak_profiler = max(peak_profiler, peak_mib(device) or 0.0)
    except torch.cuda.OutOfMemoryError as e:
        return dict(result, skipped=f"out of GPU memory during the timed passes ({e}); try a smaller "
                                    "--tokens-per-batch")
    medians = {v: statistics.median(times[v]) for v in VARIANTS}
    result.update({f"{v}_ms": medians[v] for v in VARIANTS})
    result.update({f"{v}_tokens_per_s": real_tokens / medians[v] * 1e3 for v in VARIANTS})
    result.update(flush_ms=statistics.median(flush_ms), peak_profiler_gib=peak_profiler / 1024 or None,
                  capture_overhead_pct=100 * (medians["capture"] / medians["floor"] - 1),
                  overhead_pct=100 * (medians["profiler"] / medians["floor"] - 1),
                  overhead_bf16_pct=100 * (medians["profiler_bf16"] / medians["floor"] - 1), reps=args.reps)
    # Model FLOP utilization: tokens/s x 2 x the parameters of the blocks run (attention's own FLOPs not counted) over
    # the device's measured bf16 matmul rate. The floor runs every block, the profiler stops after block L-2.
    floor_params = block_parameters(model, config.num_hidden_layers - 1)
    profiler_params = block_parameters(model, max(layout.layer_ids))
    peak = args.peak_tflops
    result.update(block_params_floor=floor_params, block_params_profiler=profiler_params, peak_bf16_tflops=peak,
                  mfu_floor=result["floor_tokens_per_s"] * 2 * floor_params / (peak * 1e12),
                  mfu_profiler=result["profiler_tokens_per_s"] * 2 * profiler_params / (peak * 1e12))
    del model, capture, profiler, batches  # they hold the weights: the fit's peak must not count them
    gc.collect()
    reset_peak(device)
    start = _mark(device)
    fit = stats.top_eigenpairs(min(args.fit_k, layout.feature_dim))
    result.update(fit_s=_ms(start, _mark(device)) / 1e3, fit_method=fit.method, fit_k=len(fit.eigenvalues),
                  fit_max_residual=float(fit.residuals.max()), peak_fit_gib=(peak_mib(device) or 0) / 1024 or None)
    return result


def bench_cov_rate(D: int, N: int, device: torch.device) -> dict:
    result = dict(D=D, N=N, flops=2 * N * D * D)
    need = packed_bytes(D) + 2 * D * D + 6 * N * D  # packed fp32 accumulator, bf16 matmul product, bf16 and fp32 rows
    if need * 1.2 + GIB > free_bytes(device):
        return dict(result, skipped=f"needs {need / GIB:.1f} GiB, {free_bytes(device) / GIB:.1f} GiB free")
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(N, D, device=device, dtype=torch.bfloat16, generator=gen)
    cov = PackedSymmetric.zeros(D, device=device)
    product = torch.empty(D, D, device=device, dtype=torch.bfloat16)
    x_fp32 = x.float()  # what profile() feeds it: the capture's staging rows are fp32 (3xTF32 in the kernel)
    kernel_ms = median_ms(lambda: cov_update_(cov, x), device)
    fp32_kernel_ms = median_ms(lambda: cov_update_(cov, x_fp32), device)
    matmul_ms = median_ms(lambda: torch.matmul(x.T, x, out=product), device)
    del x, x_fp32, cov, product
    reset_peak(device)
    return dict(result, kernel_ms=kernel_ms, kernel_tflops=result["flops"] / kernel_ms / 1e9, matmul_ms=matmul_ms,
                matmul_tflops=result["flops"] / matmul_ms / 1e9, ratio=matmul_ms / kernel_ms,
                fp32_kernel_ms=fp32_kernel_ms, fp32_kernel_tflops=result["flops"] / fp32_kernel_ms / 1e9,
                fp32_ratio=matmul_ms / fp32_kernel_ms)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_tables(models: list[dict], covs: list[dict]) -> None:
    print(f"\n{'model':<12} {'D':>7} {'cov dims':<30} {'tokens/pass':>11} {'floor ms':>9} {'capture ms':>10} "
          f"{'profiler ms':>11} {'flush ms':>8} {'capture %':>9} {'overhead %':>10} {'floor tok/s':>11} "
          f"{'profiler tok/s':>14} {'peak floor GiB':>14} {'peak profiler GiB':>17} {'fit s':>7} {'peak fit GiB':>12}")
    for r in models:
        if "skipped" in r or "error" in r:
            print(f"{r['model']:<12} {'skipped: ' + r['skipped'] if 'skipped' in r else 'failed: ' + r['error']}")
            continue
        print(f"{r['model']:<12} {r['feature_dim']:>7} {r['cov_storage']:<30} {r['tokens_per_pass']:>11} "
              f"{r['floor_ms']:>9.1f} {r['capture_ms']:>10.1f} {r['profiler_ms']:>11.1f} {r['flush_ms']:>8.1f} "
              f"{r['capture_overhead_pct']:>+9.2f} {r['overhead_pct']:>+10.2f} {r['floor_tokens_per_s']:>11.0f} "
              f"{r['profiler_tokens_per_s']:>14.0f} {_fmt(r['peak_floor_gib'], '.2f'):>14} "
              f"{_fmt(r['peak_profiler_gib'], '.2f'):>17} {r['fit_s']:>7.2f} {_fmt(r['peak_fit_gib'], '.2f'):>12}"
              f"  MFU floor {100 * r['mfu_floor']:.1f}% profiler {100 * r['mfu_profiler']:.1f}% (of "
              f"{r['peak_bf16_tflops']:.0f} TFLOP/s bf16); --covariance-rows bfloat16: {r['profiler_bf16_ms']:.1f} ms, "
              f"overhead {r['overhead_bf16_pct']:+.2f}%")
    print(f"\ncovariance kernel (bf16 rows; fp32 rows as profile() feeds them) vs bf16 matmul, "
          f"FLOPs = 2*N*D*D for all\n"
          f"{'D':>7} {'N':>6} {'kernel ms':>10} {'kernel TFLOP/s':>14} {'matmul ms':>10} {'matmul TFLOP/s':>14} "
          f"{'kernel/matmul':>13} {'fp32-rows TFLOP/s':>17} {'fp32/matmul':>11}")
    for r in covs:
        if "skipped" in r or "error" in r:
            print(f"{r['D']:>7} {r['N']:>6} {'skipped: ' + r['skipped'] if 'skipped' in r else 'failed: ' + r['error']}")
            continue
        print(f"{r['D']:>7} {r['N']:>6} {r['kernel_ms']:>10.3f} {r['kernel_tflops']:>14.2f} {r['matmul_ms']:>10.3f} "
              f"{r['matmul_tflops']:>14.2f} {r['ratio']:>13.2f} {r['fp32_kernel_tflops']:>17.2f} "
              f"{r['fp32_ratio']:>11.2f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODEL_CONFIGS), help=f"comma-separated, of {list(MODEL_CONFIGS)}")
    parser.add_argument("--tokens-per-batch", type=int, default=16384, help="padded tokens per batch (rows x seq-len)")
    parser.add_argument("--seq-len", type=int, default=512, help="longest example; others are half to all of it")
    parser.add_argument("--batches", type=int, default=8, help="batches per timed pass")
    parser.add_argument("--reps", type=int, default=5, help="timed passes per variant (after one warm-up)")
    parser.add_argument("--fit-k", type=int, default=64, help="directions of the timed fit")
    parser.add_argument("--cov-dims", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--cov-rows", type=int, default=4096, help="N, rows per covariance update")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU: checks the script, times nothing")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        if n not in MODEL_CONFIGS:
            parser.error(f"unknown model {n!r}; choose from {list(MODEL_CONFIGS)}")
    if args.cpu_smoke:
        device = torch.device("cpu")
        args.tokens_per_batch, args.seq_len, args.batches, args.reps = 48, 16, 2, 1
        args.cov_dims, args.cov_rows = [64, 96], 32
        print("--cpu-smoke: tiny shapes on CPU with the torch reference kernels; the timings below mean nothing")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        parser.error("no CUDA device: run on a GPU, or pass --cpu-smoke to check the script")

    import transformers
    import triton

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    header = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), command=" ".join(sys.argv),
                  device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                  torch=torch.__version__, triton=triton.__version__, transformers=transformers.__version__,
                  cuda=torch.version.cuda, threads=torch.get_num_threads(), cpu_smoke=args.cpu_smoke)
    print(json.dumps(header), flush=True)
    torch.manual_seed(0)
    args.peak_tflops = peak_bf16_tflops(device)
    print(json.dumps({"peak_bf16_tflops": args.peak_tflops}), flush=True)
    models, covs = [], []
    out = dict(header, models=models, covariance=covs)  # written again after each row: a kill keeps what ran
    for name in names:
        models.append(attempt(bench_model, name, args, device, row=dict(model=name)))
        print(json.dumps(models[-1]), flush=True)
        save(out, args.json)
        gc.collect()  # the model, its hooks and the accumulator are garbage now; hand their memory back
        reset_peak(device)
    for D in args.cov_dims:
        covs.append(attempt(bench_cov_rate, D, args.cov_rows, device, row=dict(D=D, N=args.cov_rows)))
        print(json.dumps(covs[-1]), flush=True)
        save(out, args.json)
    print_tables(models, covs)
    return out


def attempt(bench, *args, row: dict) -> dict:
    """bench(*args), or `row` with the error it raised: a failed row costs itself, not the rows after it (the device
    runs this once, unattended). A CUDA error that leaves the context broken fails the later rows too, each said."""
    try:
        return bench(*args)
    except Exception as e:
        return dict(row, error=f"{type(e).__name__}: {e}"[:300])


def save(out: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
