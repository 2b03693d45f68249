"""Greedy generation with vLLM from pre-tokenized prompts; runs inside .venv-vllm (see scripts/vllm_env.sh).

Used by tests/test_vllm.py and bench/bench_steering.py, which tokenize in the main environment (so both engines see
the same token ids) and read back the generated ids and timings:

    .venv-vllm/bin/python scripts/vllm_generate.py --model DIR [--model DIR2 ...] --prompts prompts.json \
        --max-tokens 32 --out out.json

prompts.json is a JSON list of token-id lists. Generation ignores EOS so every sequence has exactly --max-tokens
tokens. With --repeat R the whole batch is generated R more times after the first pass, and each pass is timed.
Several models are run one after the other in this process (vLLM's start-up is paid once for the imports), or with
--interleave all at once, alternating passes (for benchmarks); out.json holds one entry per model, in order.
Only vLLM and the standard library are imported: this file does not need autoskill-fast installed.
"""

import argparse
import gc
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, action="append", help="a model folder; repeat for several")
    parser.add_argument("--prompts", required=True, help="JSON file: a list of token-id lists")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=0, help="timed passes after one warm-up pass (0: one pass)")
    parser.add_argument("--interleave", action="store_true",
                        help="load every model first, then alternate the timed passes between them")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    with open(args.prompts) as f:
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in json.load(f)]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    def load(model):
        t0 = time.perf_counter()
        llm = LLM(model=model, dtype=args.dtype, max_model_len=args.max_model_len, enforce_eager=True, seed=0)
        return llm, time.perf_counter() - t0

    def generate(llm):
        t = time.perf_counter()
        results = llm.generate(prompts, params, use_tqdm=False)
        return [list(r.outputs[0].token_ids) for r in results], time.perf_counter() - t

    def close(llm):
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()

    runs = []
    if args.interleave:
        # All engines alive at once, timed passes alternating between them: on a shared machine, load from other
        # processes falls on every model alike.
        engines = [load(model) for model in args.model]
        for model, (llm, load_s) in zip(args.model, engines):
            outputs, first_s = generate(llm)
            runs.append({"model": model, "outputs": outputs, "load_s": load_s, "first_pass_s": first_s, "pass_s": []})
        for _ in range(args.repeat):
            for run, (llm, _) in zip(runs, engines):
                run["pass_s"].append(generate(llm)[1])
        for llm, _ in engines:
            close(llm)
    else:
        for model in args.model:
            llm, load_s = load(model)
            outputs, first_s = generate(llm)
            passes = [generate(llm)[1] for _ in range(args.repeat)]
            runs.append({"model": model, "outputs": outputs, "load_s": load_s, "first_pass_s": first_s,
                         "pass_s": passes})
            close(llm)
    for run in runs:
        run["generated_tokens_per_pass"] = sum(len(o) for o in run["outputs"])
    with open(args.out, "w") as f:
        json.dump({"runs": runs, "threads": os.environ.get("OMP_NUM_THREADS")}, f)


if __name__ == "__main__":
    main()
