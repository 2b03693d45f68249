"""Several processes (gloo on CPU, as torchrun launches them): collectives in slices, profile / project / eval equal to
one process, a killed rank stops the others with an error naming it, and the run resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from autoskill_fast import SkillBasis
from autoskill_fast.decomposition.statistics import load_statistics
from autoskill_fast.jobs.rendezvous import EXIT_RANK_LOST, LOST_AFTER_S
from autoskill_fast.jobs.world import end_process
from autoskill_fast.run.features import iter_feature_shards
from autoskill_fast.run.scores import Scores
from model_fixtures import write_jsonl
from test_profile import make_texts

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(n: int, *args, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
               "-m", "autoskill_fast", *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, **popen)


def plain(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoskill_fast", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def features_in_row_order(folder: Path) -> torch.Tensor:
    shards = list(iter_feature_shards(folder / "features"))
    rows = torch.cat([row for _, row, _ in shards])
    return torch.cat([features for features, _, _ in shards]).double()[torch.argsort(rows)]


COLLECTIVES = textwrap.dedent("""
    import json, sys, torch
    from autoskill_fast.jobs.world import current_world, end_process
    world = current_world()
    x = torch.arange(1000, dtype=torch.float64) * (world.rank + 1)
    world.reduce_sum_(x, slice_bytes=24)          # 3 numbers a slice: 334 slices
    objects = world.gather_objects({"rank": world.rank})
    shared = world.broadcast_object("from rank 0" if world.main else None)
    ok = world.all_succeeded(None)
    failed = world.all_succeeded("planted failure" if world.rank == 1 else None)
    gen = torch.Generator().manual_seed(7)
    sent = {"rows": torch.randn(37, 11, generator=gen).t(), "count": torch.tensor([5], dtype=torch.int64),
            "empty": torch.zeros(0, 11, dtype=torch.float64), "half": torch.randn(97, generator=gen).half()}
    if world.main:
        got = world.recv_tensors(1, slice_bytes=40)   # 10 fp32 numbers a slice: 41 slices for the rows
        same = list(got) == list(sent) and all(got[k].dtype == v.dtype and torch.equal(got[k], v)
                                                for k, v in sent.items())
    else:
        world.send_tensors(sent, slice_bytes=40)

    def planted():
        if world.rank == 1:
            raise ValueError("planted bug")
        return "done"

    try:
        together = world.together(planted)
    except Exception as e:  # rank 1: its own ValueError; rank 0: an AutoskillError naming rank 1
        together = f"{type(e).__name__}: {e}"
    only_main = world.together(lambda: world.rank, main_only=True)
    if not world.main:
        assert together == "ValueError: planted bug" and only_main is None, (together, only_main)
    if world.main:
        print(json.dumps({"sum_ok": bool(torch.equal(x, torch.arange(1000, dtype=torch.float64) * 3)),
                          "objects": objects, "shared": shared, "ok": ok, "failed": failed, "sent_ok": same,
                          "together": together, "only_main": only_main}))
    end_process(0)  # as the command line ends a rank
""")


def run_ranks(script: str, *args, world_size: int = 2) -> list[tuple[int, str, str]]:
    """`script` as every rank of a world launched by hand (rank 0 hosts the store): (returncode, stdout, stderr)."""
    port, procs = free_port(), []
    for rank in range(world_size):
        env = dict(os.environ, WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env, cwd=REPO))
    outs = [p.communicate(timeout=120) for p in procs]
    return [(p.returncode, *out) for p, out in zip(procs, outs)]


def test_collectives_in_many_slices():
    ranks = run_ranks(COLLECTIVES)
    assert all(returncode == 0 for returncode, _, _ in ranks), ranks
    result = json.loads(ranks[0][1].strip().splitlines()[-1])
    assert result == {"sum_ok": True, "objects": [{"rank": 0}, {"rank": 1}], "shared": "from rank 0", "ok": None,
                      "failed": "rank 1: planted failure", "sent_ok": True,
                      "together": "AutoskillError: rank 1: ValueError: planted bug", "only_main": 0}


ENDING = textwrap.dedent("""
    import atexit, json, os, sys, threading, time, torch
    marker, code = sys.argv[1], int(sys.argv[2])

    def threads_left():  # registered before the world, so it runs after World.close
        names = [open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task")]
        open(f"{marker}-{os.environ['RANK']}", "w").write(json.dumps(sorted(names)))

    atexit.register(threads_left)
    from autoskill_fast.jobs.world import current_world, end_process
    world = current_world()
    world.broadcast_object("a collective" if world.main else None)
    import torch.distributed.nn.functional  # as transformers does while it loads a model

    def spin():  # in torch calls that release the GIL: the interpreter's teardown aborts the process on such a thread
        a = torch.randn(1000)
        while True:
            a + a

    threading.Thread(target=spin, daemon=True).start()
    print(f"rank {world.rank} done", end="")  # left in the buffer: end_process flushes it
    time.sleep(0.2)
    end_process(code if world.rank == 1 else 0)
""")


def test_a_rank_ends_without_the_teardown_that_aborts_on_a_busy_thread(tmp_path):
    """A plain exit with that thread running ends in SIGABRT ("terminate called without an active exception");
    end_process still runs the atexit handlers, flushes the output and keeps each rank's exit status. And World.close
    ends gloo's threads, even after a module that keeps the default group was imported."""
    marker = tmp_path / "threads"
    ranks = run_ranks(ENDING, marker, 5)  # rank 0 ends with 0, rank 1 with 5
    assert [returncode for returncode, _, _ in ranks] == [0, 5], ranks
    assert [out for _, out, _ in ranks] == ["rank 0 done", "rank 1 done"], ranks
    assert all("terminate called" not in err for _, _, err in ranks), ranks
    for rank in range(2):
        left = json.loads(Path(f"{marker}-{rank}").read_text())
        assert left and not [name for name in left if "gloo" in name], left


LOST_PEER = textwrap.dedent("""
    import os, signal, time, torch
    from autoskill_fast.jobs.world import current_world, end_process
    world = current_world()
    world.sum_ints_async([1])()  # both ranks are connected
    if world.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    started = time.monotonic()
    try:
        world.reduce_sum_(torch.ones(10))
    finally:
        print(f"{time.monotonic() - started:.1f}", end="")  # not reached: the rank stops at once
    end_process(0)
""")


def test_a_collective_with_a_killed_rank_stops_at_once_naming_it():
    """gloo breaks the collective off ("Connection reset by peer") as soon as the other rank's process is gone: the
    rank stops with an error naming it, as the watchdog would only after its heartbeat was silent for 15 s."""
    started = time.monotonic()
    (code0, out0, err0), (code1, _, _) = run_ranks(LOST_PEER)
    assert code1 == -signal.SIGKILL
    assert code0 == EXIT_RANK_LOST and out0 == "", (code0, err0)
    assert "error: rank 0: a collective broke off" in err0 and "rank 1 failed" in err0, err0
    assert "Traceback" not in err0 and time.monotonic() - started < LOST_AFTER_S, err0


MAIN_ALONE = textwrap.dedent("""
    import json, time
    import autoskill_fast.jobs.world as world_module
    world_module.COLLECTIVE_TIMEOUT_S = 2  # a collective open while rank 0 works alone for 4 s would time out
    world = world_module.current_world()
    world.sum_ints_async([1])()

    def fail():
        raise ValueError("disk full")

    slow = world.together(lambda: time.sleep(4) or "written", main_only=True)
    try:
        world.together(fail, main_only=True)
        failed = None
    except Exception as e:
        failed = f"{type(e).__name__}: {e}"
    after = world.sum_ints_async([world.rank])()  # the collectives still line up
    print(json.dumps({"slow": slow, "failed": failed, "after": after}))
    world_module.end_process(0)
""")


def test_rank_0_alone_may_take_longer_than_a_collective_may_wait():
    """`together(main_only=True)`, as a checkpoint's write or the fit: the other ranks wait for rank 0's outcome in
    the rendezvous store, so a step longer than the collectives' timeout is fine, and rank 0's failure still reaches
    them."""
    ranks = run_ranks(MAIN_ALONE)
    assert [code for code, _, _ in ranks] == [0, 0], ranks
    rank0, rank1 = (json.loads(out) for _, out, _ in ranks)
    assert rank0 == {"slow": "written", "failed": "ValueError: disk full", "after": [1]}
    assert rank1 == {"slow": None, "failed": "AutoskillError: rank 0: ValueError: disk full", "after": [1]}


SHARED = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from autoskill_fast.jobs.world import current_world, end_process
    world = current_world()
    results = {}
    for case, folder in (("same", Path(sys.argv[1]) / "out"), ("own disk", Path(sys.argv[1]) / f"node{world.rank}")):
        try:
            world.check_shared(folder, wait_s=1.0)
            results[case] = sorted(p.name for p in folder.iterdir())
        except Exception as e:
            results[case] = f"{type(e).__name__}: {e}"
    for case, corpus in (("same files", "sha256 ab"), ("own copy", f"sha256 {world.rank}")):
        try:
            results[case] = world.check_same({"model": "weights 1", "corpus": corpus})
        except Exception as e:
            results[case] = f"{type(e).__name__}: {e}"
    print(json.dumps(results))
    end_process(0)
""")


def test_a_folder_or_file_a_rank_does_not_share_stops_every_rank(tmp_path):
    """Ranks on two nodes whose output folder is each node's own disk (here: two folders) would each write their part
    of the job where rank 0 never reads it: every rank stops before the work, naming the folders. A shared folder
    passes, and the check leaves nothing in it. So do ranks that read different copies of the model or corpus."""
    ranks = run_ranks(SHARED, tmp_path)
    assert [code for code, _, _ in ranks] == [0, 0], ranks
    rank0, rank1 = (json.loads(out) for _, out, _ in ranks)
    assert rank0["same"] == [] and isinstance(rank1["same"], list)  # rank 0 has removed its file once it returns
    mine = f"{tmp_path / 'node1'} on host {socket.gethostname()} does not hold the file rank 0 wrote in {tmp_path / 'node0'}"
    assert rank1["own disk"].startswith(f"AutoskillError: {mine}"), rank1
    assert rank0["own disk"].startswith(f"AutoskillError: rank 1: {mine}"), rank0
    assert "storage every node sees" in rank0["own disk"]
    assert not list((tmp_path / "node0").iterdir())
    assert rank0["same files"] is None and rank1["same files"] is None
    mine = "the corpus this rank read (sha256 1) is not the one rank 0 read (sha256 0); every node must read the same files"
    assert rank1["own copy"] == f"AutoskillError: {mine}" and rank0["own copy"] == f"AutoskillError: rank 1: {mine}"


def test_end_process_in_a_world_of_one_is_sys_exit():
    for code in (0, 3, None):
        with pytest.raises(SystemExit) as exit_:
            end_process(code)
        assert exit_.value.code == code


MEETINGS = textwrap.dedent("""
    import json, sys
    from types import SimpleNamespace
    from autoskill_fast.jobs.profiling import _Meetings
    from autoskill_fast.jobs.world import current_world, end_process
    world = current_world()

    def run(n_batches, every, seconds, fail_at=None, resumed_at=0):
        config = SimpleNamespace(checkpoint_every=every, checkpoint_seconds=seconds)
        meetings = _Meetings(world, config, saved_at=resumed_at)
        log, failure = [], None
        for batch in range(resumed_at + 1, n_batches + 1):
            if batch == fail_at:
                failure = ValueError(f"planted at batch {batch}")
                break
            if batch % meetings.period == 0:
                log.append([batch, *meetings.meet(batch, finished=False)])
        while True:
            finished, save = meetings.meet(n_batches, finished=True, failure=failure)
            log.append(["done", finished, save])
            if finished:
                return log

    logs = {"every 20": run([70, 37][world.rank], 20, 1e9), "every 4": run([9, 14][world.rank], 4, 1e9),
            "by time": run([40, 33][world.rank], None, 0.0),
            "every 20, resumed at 32": run([70, 37][world.rank], 20, 1e9, resumed_at=32)}
    try:
        run([70, 50][world.rank], 20, 1e9, fail_at=[None, 21][world.rank])
    except Exception as e:
        logs["failure"] = f"{type(e).__name__}: {e}"
    print(json.dumps(logs))
    end_process(0)
""")


def test_ranks_meet_to_checkpoint_finish_and_fail_together():
    """The ranks of a profile meet every few batches of their own (at most 16; as often as --checkpoint-every asks).
    A rank posts its flags and goes on; at its next meeting every rank acts on what all posted at the one before. A
    rank that is done keeps meeting the others until all are; a checkpoint is decided the same on every rank (by batch
    count: at the first meeting at or after each multiple of N the ranks still running pass; by time: rank 0's clock,
    at the meeting after) and taken in step; a rank that failed stops every rank within two meetings."""
    ranks = run_ranks(MEETINGS)
    assert [code for code, _, _ in ranks] == [0, 0], ranks
    rank0, rank1 = (json.loads(out) for _, out, _ in ranks)
    # Rank 0 runs 70 batches and rank 1 37, meeting every 16: checkpoints at the first meetings after batch 20, 40 and
    # 60, rank 0's at 32, 48 and 64, which rank 1 joins from its "done" meetings once it has run all its batches.
    assert rank0["every 20"] == [[16, False, False], [32, False, True], [48, False, True], [64, False, True],
                                 ["done", True, False]]
    assert rank1["every 20"] == [[16, False, False], [32, False, True], ["done", False, True], ["done", False, True],
                                 ["done", True, False]]
    # Resumed from the checkpoint at 32, the ranks decide as they did going on from it.
    assert rank0["every 20, resumed at 32"] == rank0["every 20"][2:]
    assert rank1["every 20, resumed at 32"] == rank1["every 20"][2:]
    # --checkpoint-every 4 meets every 4 batches and saves at each from the second on (the first has no meeting
    # before it to decide), while a rank runs: rank 1 alone from batch 12.
    assert rank0["every 4"] == [[4, False, False], [8, False, True], ["done", False, True], ["done", True, False]]
    assert rank1["every 4"] == [[4, False, False], [8, False, True], [12, False, True], ["done", True, False]]
    # By time (here: due at once): found at the first meeting, saved at the second.
    assert rank0["by time"] == [[16, False, False], [32, False, True], ["done", False, False], ["done", True, False]]
    assert rank1["by time"] == [[16, False, False], [32, False, True], ["done", False, False], ["done", True, False]]
    assert rank1["failure"] == "ValueError: planted at batch 21"
    assert rank0["failure"] == "AutoskillError: rank 1: ValueError: planted at batch 21"


@pytest.mark.slow
def test_two_processes_equal_one_profile_project_and_eval(tmp_path, tiny_model):
    model = tiny_model("llama")
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(37, seed=21)])
    common = ("--model", model, "--corpus", corpus, "-k", 4, "--quiet", "--save-features", "--token-budget", 64)
    two = torchrun(2, "profile", *common, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stdout + two.stderr
    one = plain("profile", *common, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    a, b = load_statistics(tmp_path / "one" / "stats.safetensors"), load_statistics(tmp_path / "two" / "stats.safetensors")
    assert a.n == b.n == 37
    # The ranks subtract other pilot means than one process does, before the fp32 rows are summed in fp64: equal to
    # the rows' fp32 rounding.
    scale = float(a.covariance().abs().max())
    assert float((a.covariance() - b.covariance()).abs().max()) <= 1e-6 * scale
    cosines = torch.linalg.svdvals(SkillBasis.load(tmp_path / "one").components_.double()
                                   @ SkillBasis.load(tmp_path / "two").components_.double().T)
    assert bool((cosines >= 1 - 1e-6).all()), cosines
    sa, sb = Scores.load(tmp_path / "one"), Scores.load(tmp_path / "two")
    assert sa.ids == sb.ids and torch.allclose(sa.projection, sb.projection, atol=1e-6 * float(sa.projection.abs().max()))
    record = json.loads((tmp_path / "two" / "run.json").read_text())
    assert record["environment"]["world_size"] == 2 and record["environment"]["backend"] == "gloo"
    assert sorted(p.name for p in (tmp_path / "two" / "features").iterdir())[:2] == ["shard-r0-00000.safetensors",
                                                                                     "shard-r1-00000.safetensors"]

    project = torchrun(2, "project", tmp_path / "one", "--model", model, "--corpus", corpus, "--out", tmp_path / "p2",
                       "--quiet")
    assert project.returncode == 0, project.stdout + project.stderr
    projected = Scores.load(tmp_path / "p2")
    assert projected.ids == sa.ids and torch.allclose(projected.projection, sa.projection, atol=1e-5)

    problems = write_jsonl(tmp_path / "p.jsonl", [{"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}
                                                 for i in range(9)])
    evals = ("eval", "--model", model, "--corpus", problems, "--metric", "nll", "--batch-size", 2, "--quiet")
    two_eval = torchrun(2, *evals, "--out", tmp_path / "e2")
    assert two_eval.returncode == 0, two_eval.stdout + two_eval.stderr
    one_eval = plain(*evals, "--out", tmp_path / "e1")
    assert one_eval.returncode == 0, one_eval.stderr
    assert (tmp_path / "e2" / "samples.jsonl").read_text() == (tmp_path / "e1" / "samples.jsonl").read_text()
    assert not list((tmp_path / "e2").glob("samples.jsonl.rank*"))


def two_nodes(*args, cwds=(REPO, REPO), timeout: float = 600, **env: str) -> list[subprocess.CompletedProcess]:
    """`args` under the README's multi-node command: two torchrun agents (two "nodes" on this host, one process each,
    in the folders `cwds`) that find each other through a c10d rendezvous, as `--nnodes 2 --rdzv-backend c10d` does
    across machines."""
    endpoint, agents = f"127.0.0.1:{free_port()}", []
    for cwd in cwds:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes",
                   "-m", "autoskill_fast", *map(str, args)]
        agents.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                                       env=dict(os.environ, OMP_NUM_THREADS="1", **env)))
    outs = [agent.communicate(timeout=timeout) for agent in agents]
    return [subprocess.CompletedProcess(agent.args, agent.returncode, *out) for agent, out in zip(agents, outs)]


@pytest.mark.slow
def test_two_nodes_through_a_c10d_rendezvous_equal_one_process(tmp_path, tiny_model):
    """Each node's one process has LOCAL_RANK 0: the rows are split by the global rank, and rank 0 (on whichever node
    the rendezvous made it) writes the run."""
    model = tiny_model("llama")
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(29, seed=24)])
    common = ("--model", model, "--corpus", corpus, "-k", 4, "--quiet", "--token-budget", 64)
    nodes = two_nodes("profile", *common, "--out", tmp_path / "nodes")
    assert all(node.returncode == 0 for node in nodes), [node.stderr[-3000:] for node in nodes]
    one = plain("profile", *common, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    a, b = load_statistics(tmp_path / "one" / "stats.safetensors"), load_statistics(tmp_path / "nodes" / "stats.safetensors")
    assert a.n == b.n == 29
    scale = float(a.covariance().abs().max())
    assert float((a.covariance() - b.covariance()).abs().max()) <= 1e-6 * scale
    sa, sb = Scores.load(tmp_path / "one"), Scores.load(tmp_path / "nodes")
    assert sa.ids == sb.ids and torch.allclose(sa.projection, sb.projection, atol=1e-6 * float(sa.projection.abs().max()))
    record = json.loads((tmp_path / "nodes" / "run.json").read_text())
    assert record["environment"]["world_size"] == 2 and record["environment"]["backend"] == "gloo"

    # An output folder on each node's own disk (here: a relative --out from two working folders). Rank 1's scores
    # would land where rank 0 never reads them: rank 0 once wrote a "complete" run with half the scores and exited 0.
    homes = [tmp_path / "node-a", tmp_path / "node-b"]
    for home in homes:
        home.mkdir()
    nodes = two_nodes("profile", *common, "--out", "run", cwds=homes, AUTOSKILL_FAST_SHARED_WAIT_S="3")
    assert all(node.returncode != 0 for node in nodes), [node.stderr[-3000:] for node in nodes]
    said = "does not hold the file rank 0 wrote in"
    assert all(said in node.stderr and "storage every node sees" in node.stderr for node in nodes), nodes[0].stderr
    assert not list(tmp_path.glob("node-*/run/scores.*")) and not list(tmp_path.glob("node-*/run/.features-tmp"))


@pytest.mark.slow
def test_two_processes_with_sketches_equal_one_exact_profile(tmp_path, tiny_model):
    """Each rank sketches its rows around its own pilot mean; rank 0 merges the sketches. One large enough to hold every
    row shrinks nothing, so the basis equals one process's exact statistics'."""
    model = tiny_model("llama")
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(37, seed=22)])
    common = ("--model", model, "--corpus", corpus, "-k", 4, "--quiet", "--token-budget", 64)
    two = torchrun(2, "profile", *common, "--sketch-size", 48, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stdout + two.stderr
    one = plain("profile", *common, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    sketched = load_statistics(tmp_path / "two" / "stats.safetensors")
    assert sketched.n == 37 and sketched.error_bound() == 0.0 and sketched.sketch.negative.shape[0] == 1
    a, b = SkillBasis.load(tmp_path / "one"), SkillBasis.load(tmp_path / "two")
    assert torch.allclose(a.eigenvalues_, b.eigenvalues_, rtol=0, atol=1e-5 * float(a.eigenvalues_[0]))
    cosines = torch.linalg.svdvals(a.components_.double() @ b.components_.double().T)
    assert bool((cosines >= 1 - 1e-6).all()), cosines
    sa, sb = Scores.load(tmp_path / "one"), Scores.load(tmp_path / "two")
    assert sa.ids == sb.ids
    assert torch.allclose(sa.projection, sb.projection, atol=1e-5 * float(sa.projection.abs().max()))


@pytest.mark.slow
def test_a_bad_example_on_one_rank_stops_every_rank_with_its_error(tmp_path, tiny_model):
    """Row 101 is rank 1's: its error reaches rank 0 at the next meeting of the ranks, and both stop with it (not with
    a lost rank's error, nor a hang until a timeout)."""
    model = tiny_model("llama")
    records = [{"text": t} for t in make_texts(200, seed=23)]
    records[101] = {"text": ""}
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    run = torchrun(2, "profile", "--model", model, "--corpus", corpus, "-k", 4, "--quiet", "--token-budget", 48,
                   "--out", tmp_path / "run", timeout=300)
    assert run.returncode != 0
    where = f"{corpus}:102: example '101': empty text"
    assert f"error: {where}" in run.stderr, run.stderr[-3000:]  # rank 1, the one that read it
    assert f"error: rank 1: {where}" in run.stderr, run.stderr[-3000:]  # rank 0
    assert "stopped responding" not in run.stderr and "broke off" not in run.stderr, run.stderr[-3000:]


def rank_pids(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in out]


def kill_rank_1_after_a_checkpoint(command: list[str], out: Path, *, timeout: float = 90) -> tuple[int, str, float]:
    """Start `command` (torchrun over two ranks), SIGKILL rank 1 once the run in `out` has a checkpoint, and wait for
    torchrun: its return code, its stderr, and how long it ran on after the kill."""
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
    progress = out / "checkpoint" / "progress.json"
    deadline = time.time() + 300
    while not progress.exists() and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert progress.exists(), "the run never checkpointed"
    workers = rank_pids(launcher.pid)
    assert len(workers) == 2
    killed_at = time.time()
    os.kill(max(workers), signal.SIGKILL)  # the workers start in rank order
    _, err = launcher.communicate(timeout=timeout)
    return launcher.returncode, err, time.time() - killed_at


@pytest.mark.slow
def test_a_killed_rank_stops_the_others_and_the_run_resumes(tmp_path, tiny_model):
    model = tiny_model("llama")
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(6000, seed=5)])
    common = ("profile", "--model", model, "--corpus", corpus, "-k", 4, "--quiet", "--token-budget", 48,
              "--checkpoint-every", 20)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "autoskill_fast", *map(str, common), "--out", str(tmp_path / "run")]
    returncode, err, stopped_after = kill_rank_1_after_a_checkpoint(command, tmp_path / "run")
    assert returncode != 0 and stopped_after < 60, (stopped_after, err[-2000:])
    assert "error: rank 0:" in err and "rank 1 failed" in err and "Rerun the same command" in err, err[-3000:]
    progress = tmp_path / "run" / "checkpoint" / "progress.json"

    # One checkpoint for the run, saved by rank 0: every rank's statistics added, every rank's position beside them.
    saved = json.loads(progress.read_text())
    assert not list(progress.parent.glob("rank-*"))
    assert len(saved["ranks"]) == 2 and saved["batches"] % 16 == 0  # the ranks meet every 16 batches
    assert load_statistics(progress.parent / saved["stats_file"]).n == sum(r["counts"]["examples"] for r in saved["ranks"])

    # Resuming with another number of processes is refused, saying how to continue.
    other = plain(*common, "--out", tmp_path / "run")
    assert other.returncode == 2 and "started by 2 process(es)" in other.stderr and "--nproc-per-node 2" in other.stderr

    resumed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = torchrun(2, *common, "--out", tmp_path / "whole", timeout=900)
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = load_statistics(tmp_path / "whole" / "stats.safetensors"), load_statistics(tmp_path / "run" / "stats.safetensors")
    assert a.n == b.n == 6000
    assert torch.equal(a.sumsq.data, b.sumsq.data) and torch.equal(a.sum, b.sum) and torch.equal(a.shift, b.shift)

    # With torchrun's --max-restarts the job restarts by itself and resumes. torchrun keeps its store, and the keys of
    # the attempt before, across restarts: the restarted process group once failed to start in it.
    restarting = [*command[:3], "--max-restarts", "1", *command[3:-1], str(tmp_path / "restarted")]
    returncode, err, _ = kill_rank_1_after_a_checkpoint(restarting, tmp_path / "restarted", timeout=900)
    assert returncode == 0, err[-3000:]
    assert "torchrun restarts the job" in err, err[-3000:]
    c = load_statistics(tmp_path / "restarted" / "stats.safetensors")
    assert c.n == 6000 and torch.equal(a.sumsq.data, c.sumsq.data) and torch.equal(a.sum, c.sum)


@pytest.mark.slow
def test_default_model_two_processes_equal_one(tmp_path):
    common = ("profile", "--limit", 32, "-k", 4, "--quiet", "--save-features")
    two = torchrun(2, *common, "--out", tmp_path / "two", timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    one = plain(*common, "--out", tmp_path / "one", timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = load_statistics(tmp_path / "one" / "stats.safetensors"), load_statistics(tmp_path / "two" / "stats.safetensors")
    assert a.n == b.n == 32
    scale = float(a.covariance().abs().max())
    assert float((a.covariance() - b.covariance()).abs().max()) <= 1e-6 * scale
    cosines = torch.linalg.svdvals(SkillBasis.load(tmp_path / "one").components_.double()
                                   @ SkillBasis.load(tmp_path / "two").components_.double().T)
    assert bool((cosines >= 1 - 1e-6).all()), cosines
    # Scores in row order. The two runs batch different rows together, so their fp32 forwards (and through them the
    # trailing directions, whose eigengap is small) differ by rounding; a score may differ by at most what the measured
    # feature and direction differences allow (Cauchy-Schwarz), while a row out of order would differ by its whole size.
    sa, sb = Scores.load(tmp_path / "one").sorted_by_row(), Scores.load(tmp_path / "two").sorted_by_row()
    assert sa.ids == sb.ids and torch.equal(sa.row, sb.row)
    xa, xb = features_in_row_order(tmp_path / "one"), features_in_row_order(tmp_path / "two")
    basis_a, basis_b = SkillBasis.load(tmp_path / "one"), SkillBasis.load(tmp_path / "two")
    assert float((xa - xb).abs().max()) <= 1e-4 * float(xa.abs().max())
    wa, wb = basis_a.components_.double(), basis_b.components_.double()
    centred = xb - basis_b.mean_.double()
    bound = ((xa - xb).norm(dim=1, keepdim=True) + (basis_a.mean_.double() - basis_b.mean_.double()).norm()
             + centred.norm(dim=1, keepdim=True) * (wa - wb).norm(dim=1)
             + 1e-5 * centred.norm(dim=1, keepdim=True))  # fp32 rounding of the stored scores
    difference = (sa.projection.double() - sb.projection.double()).abs()
    assert bool((difference <= bound).all()), float((difference - bound).max())
    assert float(bound.max()) <= 1e-3 * float(sa.projection.abs().max())  # the allowance itself stays small
