"""What the ranks of a torchrun job keep in the launcher's rendezvous store: the part of it their process group starts
in at each start of the job (`attempt_store`), and a heartbeat per rank that a `Watchdog` thread checks, so a lost rank stops
the others within seconds (see `world` for the job's side)."""

from __future__ import annotations

import datetime
import os
import secrets
import signal
import socket
import sys
import threading
import time
from typing import Any

from ..errors import AutoskillError

HEARTBEAT_S = 1.0  # how often each rank says it is alive
LOST_AFTER_S = 15.0  # a rank silent this long is lost: every rank stops
EXIT_RANK_LOST = 3
COLLECTIVE_TIMEOUT_S = 1800  # a collective waits this long at most (the watchdog normally ends things much sooner)


def attempt_store(rank: int, size: int) -> Any:
    """The store the process group starts in: None (the launcher's, as `env://` finds it), or under torchrun a part of
    torchrun's store that is this start of the job's own.

    torchrun shares its rendezvous store with the workers (TORCHELASTIC_USE_AGENT_STORE) and keeps it across the
    restarts of `--max-restarts`. The process group's keys from the start before are still there, so a restarted group
    can read a dead rank's address and fail to start: "Gloo connectFullMesh failed ... Connection refused"
    (pytorch/pytorch#135712, #167288). So the ranks first agree on a fresh word, and the group's keys go under it, in
    the store torchrun keeps (it outlives every rank, as NCCL's watchdog needs). Rank 0 draws the word. Each other rank
    asks for it under a fresh word of its own, and rank 0 answers every question it finds until each rank has confirmed
    under the new word: an old question may get an answer no one reads, and an old answer never matches a new question."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None
    import torch.distributed as dist

    wait = datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
    launcher = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=wait,
                             wait_for_workers=False)
    base = f"autoskill-fast/start/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}"
    if rank == 0:
        word, answered, waiting = secrets.token_hex(8), {}, set(range(1, size))
        deadline = time.monotonic() + COLLECTIVE_TIMEOUT_S
        while waiting:
            for other in sorted(waiting):
                if launcher.check([f"{base}/confirmed/{word}/{other}"]):
                    waiting.discard(other)
                elif launcher.check([f"{base}/ask/{other}"]):
                    question = launcher.get(f"{base}/ask/{other}").decode()
                    if answered.get(other) != question:
                        launcher.set(f"{base}/answer/{question}", word)
                        answered[other] = question
            if time.monotonic() > deadline:
                raise AutoskillError(f"rank {', '.join(map(str, sorted(waiting)))} did not start within "
                                     f"{COLLECTIVE_TIMEOUT_S} s")
            if waiting:
                time.sleep(0.05)
    else:
        question = secrets.token_hex(8)
        launcher.set(f"{base}/ask/{rank}", question)
        launcher.wait([f"{base}/answer/{question}"])
        word = launcher.get(f"{base}/answer/{question}").decode()
        launcher.set(f"{base}/confirmed/{word}/{rank}", "")
    return dist.PrefixStore(f"{base}/{word}/", launcher)


class Watchdog:
    """Heartbeats of every rank in the rendezvous store (its own client connection), checked by a daemon thread: rank
    `rank` of `size`, its keys under `tag` (this start of the job's)."""

    def __init__(self, rank: int, size: int, tag: str):
        import torch.distributed as dist

        self.rank, self.size = rank, size
        self.store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                   timeout=datetime.timedelta(seconds=30), wait_for_workers=False)
        self.prefix = f"autoskill-fast/heartbeat/{tag}/"
        self.started = time.monotonic()
        self._beats = 0
        self._seen: dict[int, tuple[str, float]] = {}  # rank -> (its last beat, when this rank saw it change)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autoskill-fast-watchdog", daemon=True)

    def start(self) -> None:
        self.store.set(f"{self.prefix}process/{self.rank}", f"{socket.gethostname()}:{os.getpid()}")
        self._beat()
        self._thread.start()
        signal.signal(signal.SIGTERM, self._terminated)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * HEARTBEAT_S + 30)

    def _beat(self) -> None:
        self._beats += 1
        self.store.set(f"{self.prefix}{self.rank}", str(self._beats))

    def silent_ranks(self, older_than: float) -> list[int]:
        """The other ranks whose heartbeat has not changed for `older_than` seconds (or who never beat). A beat is a
        counter, timed on this rank's own monotonic clock: the nodes' clocks need not agree."""
        now, silent = time.monotonic(), []
        for rank in range(self.size):
            if rank == self.rank:
                continue
            key = f"{self.prefix}{rank}"
            beat = self.store.get(key).decode() if self.store.check([key]) else ""
            last_beat, since = self._seen.get(rank, ("", self.started))
            if beat != last_beat:
                self._seen[rank] = (beat, now)
            elif now - since > older_than:
                silent.append(rank)
        return silent

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
                lost = self.silent_ranks(LOST_AFTER_S)
            except Exception as error:  # the store is gone: the launcher (or the rank that hosted it) stopped
                self._die(f"lost the rendezvous store ({type(error).__name__}): the launcher or rank 0 stopped")
            else:
                if lost:
                    self._die(f"rank {', '.join(map(str, lost))} stopped responding (no heartbeat for "
                              f"{LOST_AFTER_S:.0f} s)")

    def _die(self, why: str) -> None:
        restarts_left = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0)) - int(
            os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
        then = ("torchrun restarts the job (--max-restarts), which resumes from the last checkpoint" if restarts_left > 0
                else "Rerun the same command to resume from the last checkpoint")
        sys.stderr.write(f"error: rank {self.rank}: {why}; every rank stops now. {then}.\n")
        sys.stderr.flush()
        os._exit(EXIT_RANK_LOST)

    def dead_ranks(self) -> list[int]:
        """The other ranks whose process is gone (on this host: checked directly; elsewhere: by their heartbeat)."""
        here, dead = socket.gethostname(), []
        for rank in range(self.size):
            key = f"{self.prefix}process/{rank}"
            if rank == self.rank or not self.store.check([key]):
                continue
            host, _, pid = self.store.get(key).decode().rpartition(":")
            if host == here:
                if _process_gone(int(pid)):
                    dead.append(rank)
            elif rank in self.silent_ranks(2.5 * HEARTBEAT_S):
                dead.append(rank)
        return dead

    def stop_if_a_rank_is_gone(self, error: Exception) -> None:
        """After a collective failed with `error`: if another rank's process is gone (looked for over a few heartbeats,
        which a lost node's silence takes), stop this rank with an error naming it; else return (the caller raises)."""
        deadline = time.monotonic() + 5 * HEARTBEAT_S  # a lost node's beats stop counting after 2.5, seen 1 late
        while True:
            try:
                lost = self.dead_ranks()
            except Exception as store_error:
                self._die(f"a collective failed ({type(error).__name__}) and the rendezvous store is gone "
                          f"({type(store_error).__name__}): the launcher or rank 0 stopped")
            if lost:
                self._die(f"a collective broke off ({type(error).__name__}): rank {', '.join(map(str, lost))} failed")
            if time.monotonic() > deadline:
                return
            time.sleep(HEARTBEAT_S / 4)

    def _terminated(self, signum, frame) -> None:
        """torchrun ends the other workers when one fails: say which one."""
        try:
            lost = self.dead_ranks()
        except Exception:
            lost = []
        who = f"rank {', '.join(map(str, lost))} failed" if lost else "another rank failed"
        self._die(f"the launcher ended the job: {who}")


def _process_gone(pid: int) -> bool:
    """Whether process `pid` (on this host) has ended: gone, or a zombie its parent has not reaped yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except (OSError, IndexError):  # no /proc (not Linux): alive as far as can be told
        return False
