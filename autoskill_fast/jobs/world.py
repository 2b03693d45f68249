"""The processes of one job: one (`python -m autoskill_fast ...`) or several (`torchrun --nproc-per-node N ...`).

Under torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, e.g. srun with them
exported) each process is one rank on one device: `cuda:LOCAL_RANK` with NCCL, or the CPU with gloo. A plain run is a
world of size 1, whose collectives do nothing, so every job runs the same code either way.

Collectives and sends of large tensors go in slices of at most `REDUCE_SLICE_BYTES` (1 GiB): c10d and gloo have
element-count and message-size limits, and a slice bounds the staging buffers. A watchdog thread keeps a heartbeat per
rank in the rendezvous store; when a rank stops beating (killed, crashed, its node lost) every other rank stops within
`LOST_AFTER_S` seconds with an error naming it, instead of waiting in a collective until the process-group timeout.
A collective that breaks off sooner (gloo notices a closed connection at once) stops the rank with the same error.

Under torchrun the process group starts in a store of its own at each start of the job (`rendezvous.attempt_store`),
so the restarts of `--max-restarts` work; the watchdog is `rendezvous.Watchdog`. The jobs check that every rank sees
the output folder (`check_shared`) and read the same model and corpus (`check_same`) before any work.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import importlib
import logging
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from ..errors import AutoskillError
from .rendezvous import COLLECTIVE_TIMEOUT_S, Watchdog, attempt_store

T = TypeVar("T")
log = logging.getLogger("autoskill_fast")
REDUCE_SLICE_BYTES = 1 << 30
# How long a rank looks for rank 0's file in the output folder (an NFS client caches a folder for up to 60 s).
SHARED_WAIT_S = float(os.environ.get("AUTOSKILL_FAST_SHARED_WAIT_S", 90))


def _collective(method: Callable[..., T]) -> Callable[..., T]:
    """A collective of the world. When it breaks off because another rank's process is gone (gloo: "Connection reset by
    peer"), this rank stops at once with an error naming that rank, as the watchdog would a little later."""

    @functools.wraps(method)
    def run(self: "World", *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as error:  # c10d's DistBackendError is one
            if self._watchdog is not None:
                self._watchdog.stop_if_a_rank_is_gone(error)
            raise

    return run


@dataclass
class World:
    """This process's place among the ranks of a job (see the module docstring)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "nccl", "gloo", or None for one process
    _watchdog: "Watchdog | None" = field(default=None, repr=False)
    _store: Any = field(default=None, repr=False)  # the client `together(main_only=True)` waits in
    tag: str = "run"  # names this start of the job's ranks in the rendezvous store (fresh at each torchrun restart)
    _alone_steps: int = field(default=0, repr=False)

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, spec: str) -> torch.device:
        """The device of this rank: `auto` is cuda:LOCAL_RANK when CUDA is there, else the CPU."""
        if spec == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda", self.local_rank if self.distributed else torch.cuda.current_device())
            return torch.device("cpu")
        device = torch.device(spec)
        if self.distributed and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    # ---- collectives (no-ops in a world of one) ------------------------------------------------------------------
    @_collective
    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj`, on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @_collective
    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` (small metadata: counts, ids of skipped examples), in rank order, on rank 0."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.size if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    @_collective
    def reduce_sum_(self, tensor: torch.Tensor, *, slice_bytes: int = REDUCE_SLICE_BYTES) -> None:
        """tensor (contiguous) += the other ranks' tensors, on rank 0, a slice of at most `slice_bytes` at a time."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for piece in _slices(tensor.view(-1), slice_bytes):
            dist.reduce(piece, dst=0, op=dist.ReduceOp.SUM)

    @_collective
    def send_tensors(self, tensors: dict[str, torch.Tensor], *, dst: int = 0,
                     slice_bytes: int = REDUCE_SLICE_BYTES) -> None:
        """Send named tensors to rank `dst` (which calls `recv_tensors` with this rank): their shapes and dtypes first,
        then each tensor in slices of at most `slice_bytes`. Several processes only."""
        if not self.distributed:
            raise RuntimeError("send_tensors in a world of one process: there is no other rank")
        import torch.distributed as dist

        meta = [(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in tensors.items()]
        dist.send_object_list([meta], dst=dst)
        for tensor in tensors.values():
            flat = tensor.to(self._wire_device()).contiguous().view(-1)
            for piece in _slices(flat, slice_bytes):
                dist.send(piece, dst=dst)

    @_collective
    def recv_tensors(self, src: int, *, device: torch.device | str = "cpu",
                     slice_bytes: int = REDUCE_SLICE_BYTES) -> dict[str, torch.Tensor]:
        """The named tensors rank `src` sent with `send_tensors` (the same `slice_bytes`), on `device`."""
        if not self.distributed:
            raise RuntimeError("recv_tensors in a world of one process: there is no other rank")
        import torch.distributed as dist

        box = [None]
        dist.recv_object_list(box, src=src)
        received = {}
        for name, shape, dtype in box[0]:
            tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=self._wire_device())
            for piece in _slices(tensor.view(-1), slice_bytes):
                dist.recv(piece, src=src)
            received[name] = tensor.to(device)
        return received

    def _wire_device(self) -> torch.device:
        """Where point-to-point tensors must be: NCCL sends from and to this rank's GPU, gloo from and to the CPU."""
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    @_collective
    def all_succeeded(self, error: str | None) -> str | None:
        """Every rank reports its outcome (None: fine, else its error); the first error (by rank), on every rank."""
        if not self.distributed:
            return error
        import torch.distributed as dist

        errors = [None] * self.size
        dist.all_gather_object(errors, error)
        for rank, message in enumerate(errors):
            if message is not None:
                return message if rank == self.rank else f"rank {rank}: {message}"
        return None

    @_collective
    def sum_ints_async(self, values: list[int]) -> Callable[[], list[int]]:
        """Each value summed over the ranks (one small all-reduce: flags, counts), started now; the sums on every rank
        come from calling what this returns, so the rank can work on until it needs them."""
        if not self.distributed:
            return lambda: list(values)
        import torch.distributed as dist

        summed = torch.tensor(values, dtype=torch.int64, device=self._wire_device())
        work = dist.all_reduce(summed, op=dist.ReduceOp.SUM, async_op=True)

        @_collective
        def sums(world: World) -> list[int]:
            work.wait()
            return summed.tolist()

        return lambda: sums(self)

    def together(self, step: Callable[[], T], *, main_only: bool = False) -> T | None:
        """Run `step` on every rank (on rank 0 alone with `main_only`; the others get None), then `settle` how every
        run went, so none waits in a later collective for a rank that failed. `step` must not itself call a
        collective. With `main_only` the other ranks wait for rank 0's outcome in the rendezvous store, with no
        collective open: rank 0 may take as long as it needs (a checkpoint written to slow storage, a fit on a CPU)
        without passing the collectives' timeout, and the watchdog still stops them if rank 0 is lost."""
        if main_only and self.distributed:
            return self._main_alone(step)
        result, failure = None, None
        try:
            result = step()
        except Exception as e:
            failure = e
        self.settle(failure)
        return result

    def _main_alone(self, step: Callable[[], T]) -> T | None:
        """`together(step, main_only=True)` in a world of several ranks (see there)."""
        import torch.distributed as dist

        self._alone_steps += 1
        key = f"autoskill-fast/main-alone/{self.tag}/{self._alone_steps}"
        if self._store is None:  # its own client: a long wait in it holds up nothing else (the watchdog's heartbeats)
            self._store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                        timeout=datetime.timedelta(seconds=60), wait_for_workers=False)
        if self.main:
            try:
                result = step()
            except Exception as e:
                self._store.set(key, _describe(e))
                raise
            self._store.set(key, "")
            return result
        while True:
            try:
                self._store.wait([key], datetime.timedelta(days=1))
                break
            except getattr(dist, "DistStoreError", RuntimeError):  # a day has passed: wait on
                continue
        error = self._store.get(key).decode()
        if error:
            raise AutoskillError(f"rank 0: {error}")
        return None

    def check_shared(self, folder: Path | str, *, wait_s: float = SHARED_WAIT_S) -> None:
        """Every rank must see the output folder `folder` as rank 0 does: the ranks write their parts of a job there
        (features, scores, samples, checkpoints) and rank 0 reads them back. Rank 0 makes the folder and leaves a file
        in it with a name no earlier run used; each other rank looks for that file. On a folder of a node's own disk
        (another node's rank does not find it within `wait_s`) every rank stops, naming the folder and the hosts,
        before any work is done. A world of one checks nothing."""
        if not self.distributed:
            return
        folder = Path(folder)
        marker, error = None, None
        if self.main:
            marker = folder / f".autoskill-fast-shared-{secrets.token_hex(8)}"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                marker.write_text(socket.gethostname())
            except OSError as e:
                error = f"{folder}: cannot write here ({e.strerror or e}); choose another output folder"
        name, where, error = self.broadcast_object((marker and marker.name, f"{folder.resolve()} on host "
                                                    f"{socket.gethostname()}", error))
        if error is not None:
            raise AutoskillError(error)

        def look() -> None:
            start, said = time.monotonic(), False
            while not _visible(folder / name):
                waited = time.monotonic() - start
                if waited > wait_s:
                    raise AutoskillError(
                        f"{folder.resolve()} on host {socket.gethostname()} does not hold the file rank 0 wrote in "
                        f"{where}, so the ranks' parts of the job would not meet; put the output folder on storage "
                        "every node sees (a shared filesystem), at the same path on every node")
                if waited > 10 and not said:
                    log.warning("rank %d: waiting for rank 0's file in %s to show here (up to %.0f s: "
                                "AUTOSKILL_FAST_SHARED_WAIT_S)", self.rank, folder, wait_s)
                    said = True
                time.sleep(0.2)

        try:
            self.together(look if not self.main else lambda: None)
        finally:
            if marker is not None:
                marker.unlink(missing_ok=True)

    def check_same(self, identities: dict[str, str]) -> None:
        """Every rank must have read what rank 0 read: `identities` names each input (the model, the corpus) with what
        identifies its content on this rank (a hash). A node reading its own copy of a file, different from rank 0's
        (an older copy, another checkpoint), would add its rows to theirs unnoticed; every rank stops instead, naming
        the first input that differs. A world of one checks nothing."""
        if not self.distributed:
            return
        first = self.broadcast_object(identities)

        def compare() -> None:
            for name, identity in identities.items():
                if identity != first.get(name):
                    raise AutoskillError(f"the {name} this rank read ({identity}) is not the one rank 0 read "
                                         f"({first.get(name)}); every node must read the same files")

        self.together(compare)

    def settle(self, failure: Exception | None) -> None:
        """Every rank says whether it failed (`failure`), and every rank stops if one did: a rank whose failure is not
        an AutoskillError (a CUDA out-of-memory, a full disk) re-raises it with its traceback; every other rank raises
        an AutoskillError with the first failure by rank (naming that rank when it is another)."""
        error = self.all_succeeded(None if failure is None else _describe(failure))
        if failure is not None and not isinstance(failure, AutoskillError):
            raise failure
        if error is not None:
            raise AutoskillError(error)

    def close(self) -> None:
        self._store = None
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _visible(path: Path) -> bool:
    """Whether `path` exists, as its file server says now. An NFS client may answer a lookup from a cached "no such
    file" until its copy of the folder's attributes expires (up to a minute), also for a folder rank 0 has just made
    that this rank looked for before. Opening a folder makes the client fetch its attributes afresh (close-to-open),
    so each folder on the way is opened first, from the root down."""
    for folder in reversed(path.parents):
        try:
            os.close(os.open(folder, os.O_RDONLY | os.O_DIRECTORY))
        except OSError:
            return False
    return path.exists()


def _describe(failure: Exception) -> str:
    """A failure as the other ranks report it: an AutoskillError's message, else the exception's type and message."""
    return str(failure) if isinstance(failure, AutoskillError) else f"{type(failure).__name__}: {failure}"


def _slices(flat: torch.Tensor, slice_bytes: int):
    """Consecutive views of a 1-D tensor, each of at most `slice_bytes` (at least one element)."""
    step = max(1, slice_bytes // flat.element_size())
    for start in range(0, flat.numel(), step):
        yield flat[start:start + step]


_WORLD: World | None = None


def current_world() -> World:
    """This process's world, initialized from the environment on first use (torchrun's variables, or one process)."""
    global _WORLD
    if _WORLD is None:
        _WORLD = _init_from_env()
    return _WORLD


def several_ranks() -> bool:
    """Whether this process joined a world of several ranks (without starting one)."""
    return _WORLD is not None and _WORLD.distributed


def end_process(code: int | str | None) -> None:
    """Leave the process as `sys.exit(code)` does; in a world of several ranks, without the interpreter's teardown.

    That teardown stops each thread that asks for the GIL by unwinding it (`pthread_exit`). If the thread is a C++ one,
    or in a torch call that released the GIL, the unwinding aborts the whole process: "terminate called without an
    active exception", then SIGABRT (pytorch/pytorch#38228). In CI a torchrun rank that had finished its run died so,
    and torchrun reported the whole job as failed. Gloo's threads were then still alive at the teardown (see the import
    in `_init_from_env`); which thread asked is not known. So whatever else is left running, here everything a normal
    exit does before the teardown still runs: non-daemon threads are joined, the `atexit` handlers run (`World.close`
    among them: the watchdog stops, the process group is destroyed), and the standard streams are flushed. Then the
    process ends with `os._exit`. Every file this package writes is closed and renamed into place before that."""
    if not several_ranks():
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message") prints the message and exits with 1
        sys.stderr.write(f"{code}\n")
        status = 1
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to say on it
            pass
    os._exit(status)


def _init_from_env() -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise AutoskillError(f"WORLD_SIZE={size} but {', '.join(missing)} not set; launch with torchrun "
                             "(or export RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every process)")
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = os.environ.get("AUTOSKILL_FAST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    # Imported after the group exists, this module keeps it as the default `group=` of ten functions, and the group,
    # its threads with it, then outlives destroy_process_group until the interpreter's teardown (transformers imports
    # it while loading a model). Imported first, it keeps None.
    importlib.import_module("torch.distributed.nn.functional")
    store = attempt_store(rank, size)
    timeout = datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
    if store is None:
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    world = World(rank, size, local_rank, backend)
    # Rank 0's word for this start of the job: keys in the rendezvous store that a restart must not read back.
    world.tag = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{world.broadcast_object(secrets.token_hex(8))}"
    world._watchdog = Watchdog(rank, size, world.tag)
    world._watchdog.start()
    atexit.register(world.close)  # the watchdog thread and the process group end before the interpreter does
    return world
