"""Atomic artifacts: the streamed safetensors writer against safetensors' own reader."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from autoskill_fast.artifacts import (TensorReader, atomic_folder, load_tensors, save_json, save_jsonl,
                                     save_row_pieces, save_tensors, write_safetensors)
from autoskill_fast.errors import AutoskillError

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int8,
          torch.uint8, torch.bool)


def random_tensors(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, dtype in enumerate(DTYPES):
        shape = [(3, 5, 7), (1,), (0, 4), (), (13,)][i % 5]
        if dtype.is_floating_point:
            t = torch.randn(shape, generator=gen).to(dtype)
        elif dtype == torch.bool:
            t = torch.randint(0, 2, shape, generator=gen).bool()
        else:
            t = torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=gen).to(dtype)
        tensors[f"t{i}.{str(dtype).removeprefix('torch.')}"] = t
    tensors["transposed"] = torch.randn(6, 9, generator=gen).T.contiguous()
    return tensors


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
def test_streamed_writer_is_read_back_exactly_by_safetensors(tmp_path, chunk_bytes):
    tensors = random_tensors(chunk_bytes)
    path = tmp_path / "x.safetensors"
    write_safetensors(path, tensors, {"format": "pt", "note": "é ünïcode"}, chunk_bytes=chunk_bytes)
    loaded = load_file(str(path))
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape, name
        assert torch.equal(loaded[name], t), name
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "note": "é ünïcode"}
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert header_len % 8 == 0
    assert path.stat().st_size == 8 + header_len + sum(t.numel() * t.element_size() for t in tensors.values())


def test_streamed_writer_without_metadata_and_without_tensors(tmp_path):
    write_safetensors(tmp_path / "empty.safetensors", {})
    assert load_file(str(tmp_path / "empty.safetensors")) == {}
    t = torch.arange(10, dtype=torch.float32)
    write_safetensors(tmp_path / "one.safetensors", {"a": t})
    with safe_open(str(tmp_path / "one.safetensors"), framework="pt") as f:
        assert f.metadata() is None
        assert torch.equal(f.get_tensor("a"), t)


def test_streamed_writer_rejects_what_safetensors_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match="complex128"):
        write_safetensors(tmp_path / "c.safetensors", {"c": torch.zeros(2, dtype=torch.complex128)})
    with pytest.raises(TypeError, match="metadata"):
        write_safetensors(tmp_path / "m.safetensors", {"a": torch.zeros(2)}, {"n": 3})


def test_save_tensors_is_atomic_and_loads_back(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    save_tensors(path, {"a": torch.arange(6.0).reshape(2, 3).T})  # a non-contiguous view is written as its values
    assert torch.equal(load_tensors(path)["a"], torch.arange(6.0).reshape(2, 3).T)

    import autoskill_fast.artifacts as artifacts

    def failing_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts, "save_file", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_tensors(path, {"a": torch.zeros(3)})
    assert torch.equal(load_tensors(path)["a"], torch.arange(6.0).reshape(2, 3).T)  # the old file is intact
    assert os.listdir(tmp_path) == ["a.safetensors"]  # and no temporary file is left behind
    with pytest.raises(AutoskillError, match="missing tensors"):
        load_tensors(path, required=("b",))


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out and not out.exists()
        save_json(tmp / "a.json", {"x": 1})
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "b.txt").write_text("b")
        os.chmod(tmp / "sub" / "b.txt", 0o600)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["a.json", "sub", "sub/b.txt"]
    assert os.listdir(tmp_path) == ["out"]
    # Temporary folders and files are created private; the folder is given the umask's usual modes (servers read it).
    assert (out.stat().st_mode & 0o777, (out / "sub").stat().st_mode & 0o777) == (0o777 & ~umask,) * 2
    assert (out / "sub" / "b.txt").stat().st_mode & 0o777 == 0o666 & ~umask

    with pytest.raises(AutoskillError, match="already exists and is not empty"):
        with atomic_folder(out):
            pass
    assert sorted(os.listdir(out)) == ["a.json", "sub"]

    (tmp_path / "empty").mkdir()
    with atomic_folder(tmp_path / "empty") as tmp:
        (tmp / "c").write_text("c")
    assert os.listdir(tmp_path / "empty") == ["c"]

    with pytest.raises(OSError, match="disk full"):
        with atomic_folder(tmp_path / "failed") as tmp:
            (tmp / "half").write_text("half")
            raise OSError("disk full")
    assert sorted(os.listdir(tmp_path)) == ["empty", "out"]  # neither the folder nor its temporary one is left


def test_an_output_whose_folder_cannot_be_made_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(AutoskillError, match=r"file/sub/x.json: cannot write there \(.*\); choose another output"):
        save_json(tmp_path / "file" / "sub" / "x.json", {"x": 1})
    with pytest.raises(AutoskillError, match=r"file/out: cannot write there \(.*\); choose another output"):
        with atomic_folder(tmp_path / "file" / "out"):
            pass
    assert os.listdir(tmp_path) == ["file"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_row_pieces_are_written_as_their_concatenation(tmp_path, dtype):
    gen = torch.Generator().manual_seed(7)
    sizes = [1, 97, 0, 123, 4]  # an empty piece among them
    features = [(torch.randn(n, 13, generator=gen) * 1000).to(dtype) for n in sizes]
    features[1] = (torch.randn(13, 97, generator=gen) * 1000).to(dtype).T  # a non-contiguous piece
    rows = [torch.randint(0, 10**9, (n,), generator=gen) for n in sizes]
    path = tmp_path / "s.safetensors"
    save_row_pieces(path, {"features": features, "row": rows}, {"ids": '["a", "é"]'})
    loaded = load_file(str(path))
    assert loaded["features"].dtype == dtype and torch.equal(loaded["features"], torch.cat(features))
    assert torch.equal(loaded["row"], torch.cat(rows))
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"ids": '["a", "é"]'}
    save_row_pieces(path, {"one": [torch.arange(5.0)]})  # one piece is the tensor itself; the file is replaced
    assert list(load_file(str(path))) == ["one"] and torch.equal(load_file(str(path))["one"], torch.arange(5.0))


def test_row_pieces_that_do_not_stack_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'x'.*shape"):
        save_row_pieces(tmp_path / "a.safetensors", {"x": [torch.zeros(2, 3), torch.zeros(2, 4)]})
    with pytest.raises(ValueError, match="'x'.*dtype"):
        save_row_pieces(tmp_path / "b.safetensors", {"x": [torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64)]})
    with pytest.raises(ValueError, match="no pieces"):
        save_row_pieces(tmp_path / "c.safetensors", {"x": []})
    assert os.listdir(tmp_path) == []  # nothing half-written is left


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
def test_tensor_reader_reads_every_tensor_into_given_memory_or_in_slices(tmp_path, chunk_bytes):
    tensors = random_tensors(5)
    write_safetensors(tmp_path / "r.safetensors", tensors, {"n": "3"})
    with TensorReader(tmp_path / "r.safetensors", required=("transposed",)) as reader:
        assert reader.keys() == sorted(tensors) and "transposed" in reader and "absent" not in reader
        for name, want in tensors.items():
            assert reader.spec(name) == (want.dtype, tuple(want.shape)), name
            assert torch.equal(reader.get(name), want), name
            out = torch.full_like(want, 1 if want.dtype == torch.bool else 3)
            assert reader.read_into(name, out, chunk_bytes=chunk_bytes) is out
            assert torch.equal(out, want), name
            pieces = [(start, piece.clone()) for start, piece in reader.slices(name, chunk_bytes=chunk_bytes)]
            assert [start for start, _ in pieces] == list(range(0, want.numel(), max(1, chunk_bytes // want.itemsize)))
            got = torch.cat([piece for _, piece in pieces]) if pieces else torch.empty(0, dtype=want.dtype)
            assert torch.equal(got, want.reshape(-1)), name
        with pytest.raises(ValueError, match="cannot read it into"):
            reader.read_into("transposed", torch.empty(6, 9))  # the shape is [9, 6]
        with pytest.raises(ValueError, match="cannot read it into"):
            reader.read_into("transposed", torch.empty(9, 6, dtype=torch.float64))


def test_tensor_reader_errors_name_the_file(tmp_path):
    with pytest.raises(AutoskillError, match="absent.safetensors: file not found"):
        TensorReader(tmp_path / "absent.safetensors")
    path = tmp_path / "r.safetensors"
    write_safetensors(path, {"a": torch.arange(1000.0), "b": torch.ones(3)})
    with pytest.raises(AutoskillError, match="r.safetensors: missing tensors \\['c'\\]"):
        TensorReader(path, required=("a", "c"))
    data = path.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:-4])
    with pytest.raises(AutoskillError, match="short.safetensors: corrupted or truncated"):
        TensorReader(tmp_path / "short.safetensors")
    # A file cut short after it was opened (a disk gone, a copy still running): the read says so.
    with TensorReader(path) as reader:
        path.write_bytes(data[:200])
        with pytest.raises(AutoskillError, match="r.safetensors: corrupted or truncated.*ends .* bytes early"):
            reader.read_into("a", torch.empty(1000))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_tensors_are_streamed_through_pinned_chunks(tmp_path):
    tensors = {k: v.cuda() for k, v in random_tensors(3).items()}
    big = torch.randn(3 * (1 << 18) + 5, device="cuda")  # several chunks of the size used below, and a remainder
    tensors["big"] = big * 2  # produced by a kernel on the default stream just before the write
    write_safetensors(tmp_path / "d.safetensors", tensors, chunk_bytes=1 << 20)
    loaded = load_file(str(tmp_path / "d.safetensors"))
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t.cpu()), name
    save_tensors(tmp_path / "e.safetensors", {"big": big})
    assert torch.equal(load_tensors(tmp_path / "e.safetensors")["big"], big.cpu())
    with TensorReader(tmp_path / "e.safetensors") as reader:  # back onto the device through one pinned chunk
        out = torch.empty_like(big)
        reader.read_into("big", out, chunk_bytes=1 << 20)
        assert torch.equal(out, big)


def test_jsonl_lines_are_strict_json_with_non_finite_numbers_as_null(tmp_path):
    """A Parquet float column's missing value reached `select`'s records as a bare NaN, which jq, JavaScript and
    serde_json refuse."""
    items = [{"x": float("nan"), "nested": [1.5, {"y": float("inf")}], "t": (float("-inf"), 2)}, {"plain": 1.0}]
    save_jsonl(tmp_path / "a.jsonl", items)

    def strict(constant):
        raise ValueError(f"not strict JSON: {constant}")

    lines = [json.loads(line, parse_constant=strict) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert lines == [{"x": None, "nested": [1.5, {"y": None}], "t": [None, 2]}, {"plain": 1.0}]
