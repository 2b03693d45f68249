"""Sampling with vLLM's offline engine from pre-tokenized prompts, for the `eval` job's vllm backend.

Run by whichever Python has vLLM (here .venv-vllm, see scripts/vllm_env.sh; on a GPU node the main environment):

    PYTHON vllm_worker.py --request request.json --out out.jsonl

Only vLLM and the standard library are imported: the vLLM environment does not have autoskill-fast installed.
request.json (written by vllm_backend.py) holds the engine options (model, dtype, max_model_len, enforce_eager, seed,
tensor_parallel), the sampling options (n, temperature, top_p, max_tokens, stop_token_ids) and the batches, in order,
each {"batch": b, "seed": s, "prompts": [[token ids], ...]}. out.jsonl receives one line when the engine is loaded
({"kind": "load", "load_s", "vllm"}) and then one line per batch as soon as it is generated ({"kind": "batch",
"batch", "outputs": per prompt, its n samples as {"token_ids", "finish_reason"}, "generate_s", "generated_tokens"}),
each flushed and fsynced, so a kill loses at most the batch being generated. load_s includes importing vLLM;
generated_tokens counts what the engine generated (when greedy, one sample per prompt, repeated n times).

Randomness: prompt i of a batch seeded s is sampled with the seed `request_seed(s, i)` and vLLM gives its n samples
the seeds seed, seed + 1, ..., seed + n - 1. Each batch is one `generate` call holding the same requests whether or
not earlier batches ran in this process, so a batch's samples do not depend on where a run was resumed. Temperature 0
is greedy. Generation stops at the tokens given in the request (the tokenizer's end of sequence and those the
model's generation_config.json lists, as the hf backend stops) and at max_tokens; vLLM does not read
generation_config.json itself (generation_config="vllm"), so it adds no default sampling options.
"""

import argparse
import gc
import hashlib
import json
import os
import time


def request_seed(batch_seed: int, position: int) -> int:
    """The seed of the `position`-th prompt of a batch seeded `batch_seed`: 31 bits, so that vLLM's per-sample seeds
    (this plus the sample index) stay far inside every integer range a sampler accepts."""
    return int.from_bytes(hashlib.sha256(f"{batch_seed}:{position}".encode()).digest()[:4], "little") >> 1


def write_line(f, record: dict) -> None:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--request", required=True, help="the request JSON file (see the module docstring)")
    parser.add_argument("--out", required=True, help="the JSON-lines file the batches are appended to")
    args = parser.parse_args()
    with open(args.request, encoding="utf-8") as f:
        request = json.load(f)

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    t0 = time.perf_counter()  # load_s counts importing vLLM too: seconds of it on a small machine
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    engine, sampling = request["engine"], request["sampling"]
    llm = LLM(model=engine["model"], dtype=engine["dtype"], max_model_len=engine["max_model_len"],
              enforce_eager=engine["enforce_eager"], seed=engine["seed"],
              tensor_parallel_size=engine.get("tensor_parallel", 1),
              trust_remote_code=engine.get("trust_remote_code", False), generation_config="vllm")
    load_s = time.perf_counter() - t0
    greedy = sampling["temperature"] == 0
    with open(args.out, "a", encoding="utf-8") as out:
        write_line(out, {"kind": "load", "load_s": load_s, "vllm": vllm.__version__})
        for batch in request["batches"]:
            prompts = [TokensPrompt(prompt_token_ids=ids) for ids in batch["prompts"]]
            # vLLM refuses n > 1 when greedy: sample once and repeat it (the hf backend's n greedy copies are equal).
            params = [SamplingParams(n=1 if greedy else sampling["n"], temperature=sampling["temperature"],
                                     top_p=1.0 if greedy else sampling["top_p"], max_tokens=sampling["max_tokens"],
                                     stop_token_ids=sampling["stop_token_ids"], seed=request_seed(batch["seed"], i))
                      for i in range(len(prompts))]
            t = time.perf_counter()
            results = llm.generate(prompts, params, use_tqdm=False)
            generate_s = time.perf_counter() - t
            outputs = [[{"token_ids": list(o.token_ids), "finish_reason": o.finish_reason}
                        for o in sorted(r.outputs, key=lambda o: o.index)] for r in results]
            generated = sum(len(o["token_ids"]) for per in outputs for o in per)
            if greedy:
                outputs = [per * sampling["n"] for per in outputs]
            write_line(out, {"kind": "batch", "batch": batch["batch"], "outputs": outputs, "generate_s": generate_s,
                             "generated_tokens": generated})
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


if __name__ == "__main__":
    main()
