"""Core contracts: atomic writes, weights-only loading, records, devices, the CLI's error path."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import pytest
import torch

from nasaudit.cli import main
from nasaudit.infra.device import generator, resolve_device, seeded
from nasaudit.infra.errors import InputError
from nasaudit.infra.io import (
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    read_json,
    safe_torch_load,
)
from nasaudit.infra.records import Record


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"epoch": 1})

    def torn_writer(handle):
        handle.write(b'{"epoch": 2')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, torn_writer)
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"], "no temp file may be left"


def test_safe_torch_load_round_trips_tensors(tmp_path):
    state = {"w": torch.arange(6.0).view(2, 3), "epoch": 3, "name": "darts"}
    atomic_torch_save(state, tmp_path / "ckpt.pth")
    loaded = safe_torch_load(tmp_path / "ckpt.pth")
    assert torch.equal(loaded["w"], state["w"]) and loaded["epoch"] == 3


class _Exploit:
    def __reduce__(self):
        return (print, ("code ran",))


def test_safe_torch_load_refuses_code_in_pickles(tmp_path, capsys):
    bad = tmp_path / "evil.pth"
    torch.save({"x": _Exploit()}, bad, pickle_module=pickle)
    with pytest.raises(InputError) as info:
        safe_torch_load(bad)
    assert "evil.pth" in str(info.value) and "\n" not in str(info.value)
    assert "code ran" not in capsys.readouterr().out


def test_safe_torch_load_reports_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        safe_torch_load(tmp_path / "missing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(InputError, match="garbage.pth"):
        safe_torch_load(tmp_path / "garbage.pth")


def test_read_json_errors_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(InputError, match=r"bad\.json: invalid JSON"):
        read_json(tmp_path / "bad.json")


@dataclasses.dataclass
class _ToyRecord(Record):
    kind = "toy"
    asr: float
    success: list
    extra: dict = dataclasses.field(default_factory=dict)


def test_record_serialises_tensors_and_round_trips():
    record = _ToyRecord(asr=torch.tensor(0.25), success=torch.tensor([True, False]),
                        extra={"eps": (8 / 255, 16 / 255)})
    data = json.loads(record.to_json())
    assert data == {"kind": "toy", "asr": 0.25, "success": [True, False],
                    "extra": {"eps": [8 / 255, 16 / 255]}}
    assert _ToyRecord.from_dict(data).success == [True, False]


def test_resolve_device_and_seeding_are_explicit():
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("warp-drive")
    before = torch.random.get_rng_state()
    with seeded(7):
        a = torch.rand(3)
    with seeded(7):
        b = torch.rand(3)
    assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), before), "seeded() must not leak global state"
    assert torch.equal(torch.rand(2, generator=generator(3)), torch.rand(2, generator=generator(3)))


def test_cli_without_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: nasaudit")  # a usage error, on stderr


def test_atomic_write_gives_new_files_the_umask_mode_and_keeps_existing_modes(tmp_path):
    fresh = atomic_write_json(tmp_path / "fresh.json", {})
    old_mask = os.umask(0o022)
    os.umask(old_mask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~old_mask
    shared = tmp_path / "shared.json"
    shared.write_text("{}")
    shared.chmod(0o664)
    atomic_write_json(shared, {"a": 1})
    assert shared.stat().st_mode & 0o777 == 0o664


def test_atomic_write_refuses_a_directory_target(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        atomic_write_json(tmp_path / "out", {})
    assert list((tmp_path / "out").iterdir()) == []


def test_unsafe_checkpoint_message_never_suggests_unsafe_loading(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"x": _Exploit()}, bad, pickle_module=pickle)
    with pytest.raises(InputError) as info:
        safe_torch_load(bad)
    assert "refused" in str(info.value) and "weights_only" not in str(info.value)
