"""Atomic safetensors + JSON I/O, and validation of what is read back. No pickle anywhere."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import AutoskillError


_UMASK = os.umask(0)
os.umask(_UMASK)
STREAM_CHUNK_BYTES = 1 << 28  # a device tensor is written through two pinned host buffers of this size
_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}
_TORCH_DTYPES = {name: dtype for dtype, name in _SAFETENSORS_DTYPES.items()}


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Write `path` through a temporary file in the same folder: yields the temporary path; after the block the file is
    given the usual permissions (0666 less the umask), synced, and renamed over `path`, so a reader never sees half a
    file. Every output of autoskill-fast is written through here."""
    path = Path(path)
    if path.is_dir():
        raise AutoskillError(f"{path}: is a folder, not a file; choose another output path")
    with _writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # After the writer: mkstemp makes files private (0600), and some writers (safetensors) recreate the file.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Write the folder `path` through a temporary folder beside it: yields the temporary path; after the block every
    file in it is synced, the tree is given the usual permissions (a model folder is read by servers that may run as
    another user), and the folder is renamed to `path`, so a reader (a server, a resumed job) never sees half of it.
    `path` must not exist, or be an empty folder."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise AutoskillError(f"{path}: already exists and is not empty; choose another output or delete it")
    with _writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        for item in [tmp, *tmp.rglob("*")]:
            item.chmod((0o777 if item.is_dir() else 0o666) & ~_UMASK)
            if item.is_file():
                with open(item, "rb") as f:
                    os.fsync(f.fileno())
        try:
            if path.exists():
                path.rmdir()  # empty (checked above): a rename may not replace a folder on every platform
            os.replace(tmp, path)
        except OSError as e:  # another process wrote `path` meanwhile
            raise AutoskillError(f"{path}: appeared while this was being written ({e.strerror}); was another "
                                 "command writing the same output?") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def _writable(path: Path) -> Iterator[None]:
    """A folder for `path` that cannot be made or written is the user's to fix: one line naming it."""
    try:
        yield
    except OSError as e:
        raise AutoskillError(f"{path}: cannot write there ({e.strerror}: {e.filename}); choose another output path or "
                             "fix its folder's permissions") from None


def save_text(path: str | Path, text: str) -> Path:
    """A UTF-8 text file (HTML, JSONL, ...), written atomically."""
    with atomic_file(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def save_jsonl(path: str | Path, items: Iterable[Any]) -> Path:
    """One JSON value per line, UTF-8 (non-ASCII kept as is), written atomically. Strict JSON: a NaN or infinite
    number (a Parquet float column's missing value) is written null, which every JSON reader takes."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for item in items:
            # default=str: values JSON cannot hold (dates, bytes from Parquet) are written as text.
            try:
                line = json.dumps(item, ensure_ascii=False, default=str, allow_nan=False)
            except ValueError:  # a non-finite float somewhere in it
                line = json.dumps(_finite_or_null(item), ensure_ascii=False, default=str, allow_nan=False)
            f.write(line + "\n")
    return Path(path)


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def save_json(path: str | Path, obj: Any) -> None:
    save_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def load_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise AutoskillError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AutoskillError(f"{path}: corrupted or truncated JSON ({e}); rerun the command that wrote it") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically. Host tensors go through safetensors' own writer, which writes from their
    memory. When a tensor lives on an accelerator the file is streamed from it in chunks (`write_safetensors`): the
    host never holds a whole copy (30 GB for Llama-3-8B's statistics) and the device's own stream is not held up."""
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    with atomic_file(path) as tmp:
        if all(v.device.type == "cpu" for v in tensors.values()):
            save_file(tensors, str(tmp), metadata=metadata)
        else:
            write_safetensors(tmp, tensors, metadata)


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, *,
                      chunk_bytes: int = STREAM_CHUNK_BYTES) -> None:
    """The safetensors format, written a chunk at a time (not atomic: `save_tensors` is).

    The format: an 8-byte little-endian header length, a JSON header (each tensor's dtype, shape and byte range, and
    the optional string metadata) padded with spaces to a multiple of 8 bytes, then the tensors' bytes back to back.
    safetensors' reader loads what this writes (tests/test_artifacts.py); its writer needs every tensor on the host.
    """
    _write_pieces(path, {name: [tensor] for name, tensor in tensors.items()}, metadata, chunk_bytes)


def save_row_pieces(path: str | Path, pieces: dict[str, list[torch.Tensor]],
                    metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically whose tensor `name` is `torch.cat(pieces[name])`, without making that
    concatenation: the pieces' bytes are written one after another. A writer that buffers rows then holds them once,
    not twice, when it writes them."""
    with atomic_file(path) as tmp:
        _write_pieces(tmp, pieces, metadata, STREAM_CHUNK_BYTES)


def _write_pieces(path: str | Path, pieces: dict[str, list[torch.Tensor]], metadata: dict[str, str] | None,
                  chunk_bytes: int) -> None:
    specs = {}
    for name, parts in pieces.items():
        if not parts:
            raise ValueError(f"tensor {name!r} has no pieces")
        first = parts[0]
        if first.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"tensor {name!r} is {first.dtype}, which this writer does not store")
        if len(parts) > 1 and any(p.dtype != first.dtype or p.dim() == 0 or p.shape[1:] != first.shape[1:]
                                  for p in parts):
            raise ValueError(f"the pieces of tensor {name!r} differ in dtype or in shape past the first dimension")
        shape = tuple(first.shape) if len(parts) == 1 else (sum(len(p) for p in parts), *first.shape[1:])
        specs[name] = (first.dtype, shape)
    with open(path, "wb") as f:
        f.write(safetensors_header(specs, metadata))
        for parts in pieces.values():
            for part in parts:
                for chunk in _host_chunks(part, chunk_bytes):
                    f.write(chunk)


def safetensors_header(specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                       metadata: dict[str, str] | None = None) -> bytes:
    """The bytes a safetensors file starts with, for tensors of these dtypes and shapes stored back to back in this
    order: the 8-byte little-endian header length, then the JSON header padded with spaces to a multiple of 8 bytes.
    Tensor i's bytes then start at len(header) + the sum of the sizes before it."""
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError(f"safetensors metadata must map str to str, got {metadata!r}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, (dtype, shape) in specs.items():
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _host_chunks(tensor: torch.Tensor, chunk_bytes: int) -> Iterator[memoryview]:
    """A tensor's bytes as consecutive host chunks of at most `chunk_bytes`: views of host memory, no copy. A CUDA
    tensor is copied on a side stream through two pinned buffers, the next chunk's copy running while the caller
    writes the current one."""
    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    if flat.device.type not in ("cpu", "cuda"):
        flat = flat.cpu()
    n = flat.numel()
    starts = range(0, n, chunk_bytes)
    if flat.device.type == "cpu":
        data = memoryview(flat.numpy())
        for start in starts:
            yield data[start:start + chunk_bytes]
        return
    stream = torch.cuda.Stream(flat.device)
    stream.wait_stream(torch.cuda.current_stream(flat.device))  # after the kernels that wrote the tensor
    buffers = [torch.empty(min(chunk_bytes, n), dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    copied = [torch.cuda.Event(), torch.cuda.Event()]

    def start_copy(i: int) -> None:
        start, end = starts[i], min(starts[i] + chunk_bytes, n)
        with torch.cuda.stream(stream):
            buffers[i % 2][:end - start].copy_(flat[start:end], non_blocking=True)
            copied[i % 2].record(stream)

    if starts:
        start_copy(0)
    for i, start in enumerate(starts):
        if i + 1 < len(starts):
            start_copy(i + 1)  # into the buffer the caller finished writing
        copied[i % 2].synchronize()
        yield memoryview(buffers[i % 2][:min(chunk_bytes, n - start)].numpy())


class TensorReader:
    """A safetensors file read one tensor at a time, and a large 1-D tensor in slices straight into memory the caller
    owns (`read_into`: a device accumulator, say), so it never has a whole host copy. A context manager; a missing,
    truncated or corrupted file is a one-line error naming it."""

    def __init__(self, path: str | Path, required: tuple[str, ...] = ()):
        self.path = Path(path)
        if not self.path.is_file():
            raise AutoskillError(f"{self.path}: file not found")
        try:
            self._file = safe_open(str(self.path), framework="pt", device="cpu")
            self._names = set(self._file.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise self._corrupted(e) from None
        missing = [k for k in required if k not in self._names]
        if missing:
            raise AutoskillError(f"{self.path}: missing tensors {missing}; the file was not written by this version "
                                 "of autoskill-fast")

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc) -> None:
        self._file = None  # safetensors closes its memory map when the handle goes

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def keys(self) -> list[str]:
        return sorted(self._names)

    def spec(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """The dtype and shape of a tensor, read from the header alone."""
        piece = self._file.get_slice(name)
        if piece.get_dtype() not in _TORCH_DTYPES:
            raise self._corrupted(ValueError(f"tensor {name!r} has dtype {piece.get_dtype()}, which this version does "
                                             "not read"))
        return _TORCH_DTYPES[piece.get_dtype()], tuple(piece.get_shape())

    def get(self, name: str) -> torch.Tensor:
        try:
            return self._file.get_tensor(name)
        except (SafetensorError, OSError, ValueError) as e:
            raise self._corrupted(e) from None

    def read_into(self, name: str, out: torch.Tensor, *, chunk_bytes: int = STREAM_CHUNK_BYTES) -> torch.Tensor:
        """Copy the tensor `name` into `out` (contiguous, same dtype and shape, any device) by plain reads of its bytes:
        straight into `out`'s memory on the CPU, through one pinned buffer of `chunk_bytes` for a GPU. Neither maps
        the file nor holds a second copy of the tensor in host memory."""
        dtype, shape = self.spec(name)
        if dtype != out.dtype or tuple(out.shape) != shape or not out.is_contiguous():
            raise ValueError(f"{self.path}: tensor {name!r} is {dtype} {shape}; cannot read it into "
                             f"{out.dtype} {tuple(out.shape)}")
        flat = out.view(-1)
        if flat.device.type != "cpu":
            for start, piece in self.slices(name, chunk_bytes=chunk_bytes, pinned=True):
                flat[start:start + piece.numel()].copy_(piece)
            return out
        raw = flat.view(torch.uint8)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self._data_start(name))
            for start in range(0, raw.numel(), chunk_bytes):
                self._read_exactly(f, memoryview(raw[start:start + chunk_bytes].numpy()))
        return out

    def slices(self, name: str, *, chunk_bytes: int = STREAM_CHUNK_BYTES,
               pinned: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
        """(index of its first element, a 1-D host tensor) for each consecutive slice of the tensor `name` (flattened),
        read into one buffer of `chunk_bytes` that the next slice overwrites: use each before asking for the next."""
        dtype, shape = self.spec(name)
        count = math.prod(shape)
        step = max(1, chunk_bytes // dtype.itemsize)
        buffer = torch.empty(min(step, count), dtype=dtype, pin_memory=pinned and torch.cuda.is_available())
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self._data_start(name))
            for start in range(0, count, step):
                piece = buffer[:min(step, count - start)]
                self._read_exactly(f, memoryview(piece.view(torch.uint8).numpy()))
                yield start, piece

    def _data_start(self, name: str) -> int:
        """The file offset of a tensor's first byte: after the 8-byte length and the JSON header (already validated
        by safetensors when the file was opened)."""
        with open(self.path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        return 8 + length + int(header[name]["data_offsets"][0])

    def _read_exactly(self, f, view: memoryview) -> None:
        done = 0
        while done < len(view):
            got = f.readinto(view[done:])
            if not got:
                raise self._corrupted(EOFError(f"the file ends {len(view) - done} bytes early"))
            done += got

    def _corrupted(self, error: Exception) -> AutoskillError:
        return AutoskillError(f"{self.path}: corrupted or truncated safetensors file ({error}); rerun the command "
                              "that wrote it")


def load_tensors(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or incomplete file is a one-line error naming it."""
    with TensorReader(path, required) as reader:
        return {name: reader.get(name) for name in reader.keys()}
