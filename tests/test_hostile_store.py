"""Hostile inputs read back from an audit's own store and folders: paths and pictures named by
result rows, damaged or foreign rows, an empty or future store, a user's files in report_files/,
read-only storage and planted symlinks. Each case: exit code 2 and one stderr line naming the file
and the problem (or a report that skips the bad part), nothing written outside, nothing lost."""

from __future__ import annotations

import sqlite3
import time
import zlib
from pathlib import Path

import pytest

from nasaudit.audit.store import Store
from tests.cli_helpers import cli, one_line


def _png(width: int, height: int) -> bytes:
    """A valid PNG of width x height grey pixels (tiny sizes only) or just a header claiming it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    header = chunk(b"IHDR", width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0]))
    body = b""
    if width * height <= 64 * 64:
        body = chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + b"\x80" * width for _ in range(height))))
    return b"\x89PNG\r\n\x1a\n" + header + body + chunk(b"IEND", b"")


def _audit(out: Path, *, plot: str | None = None, extra: dict | None = None) -> Path:
    """A small audit store (2 models, clean accuracy and a parameter-space contour record)."""
    with Store(out) as store:
        store.set_meta("config", {"name": "hostile", "raw": {"probes": {"contour_param": {}}}})
        for label, group in (("darts_v2", "nas"), ("resnet18", "manual")):
            for stage, name, result in (
                ("clean", "clean_accuracy", {"kind": "clean_accuracy", "test_acc": 0.9, "n_test": 100}),
                ("probe", "contour_param", {"kind": "probe_contour", "mean_increase": 1.0,
                                            "files": {"plot": plot} if plot else {}}),
            ):
                store.record_unit(unit_key=f"{label}-{name}", model=label, model_group=group, stage=stage,
                                  name=name, params={}, seed=0, result=result, started=time.time(), device="cpu")
    (out / ".nasaudit-run.json").write_text('{"kind": "audit"}')
    return out


def _thumbnail_drawn(out: Path) -> bool:
    return (out / "report_files" / "figures" / "contour_thumbnails.png").is_file()


def test_a_picture_path_outside_the_run_is_never_read(tmp_path, capsys):
    outside = tmp_path / "elsewhere" / "secret.png"
    outside.parent.mkdir()
    outside.write_bytes(_png(8, 8))
    out = _audit(tmp_path / "run", plot=str(outside))
    assert cli(capsys, "report", out, "--single-file")[0] == 0
    assert not _thumbnail_drawn(out)
    # A relative path that climbs out of the run is refused the same way.
    out2 = _audit(tmp_path / "run2", plot="../elsewhere/secret.png")
    assert cli(capsys, "report", out2)[0] == 0 and not _thumbnail_drawn(out2)
    # The same picture inside the run's probes/ folder is drawn: the check is not blanket.
    inside = tmp_path / "run3" / "probes" / "p.png"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(_png(8, 8))
    out3 = _audit(tmp_path / "run3", plot=str(inside))
    assert cli(capsys, "report", out3)[0] == 0 and _thumbnail_drawn(out3)


@pytest.mark.parametrize("content", [_png(100_000, 100_000), b"print('not a png')\n", b""])
def test_a_huge_or_fake_picture_inside_the_run_is_skipped(tmp_path, capsys, content):
    out = tmp_path / "run"
    (out / "probes").mkdir(parents=True)
    (out / "probes" / "c.png").write_bytes(content)
    _audit(out, plot=str(out / "probes" / "c.png"))
    code, _, err = cli(capsys, "report", out, "--single-file")
    assert code == 0 and "Traceback" not in err and not _thumbnail_drawn(out)


def _set(db: Path, sql: str, *args) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(sql, args)
    conn.close()


def test_a_corrupt_config_row_stops_report_and_audit_with_one_line(tmp_path, capsys):
    out = _audit(tmp_path / "run")
    _set(out / "results.sqlite", "UPDATE meta SET value = '{not json' WHERE key = 'config'")
    code, _, err = cli(capsys, "report", out)
    assert code == 2
    one_line(err, "results.sqlite", "corrupt row (table meta, key 'config')")
    assert not (out / "report.md").exists()


def test_a_deeply_nested_result_row_is_named_and_skipped(tmp_path, capsys):
    out = _audit(tmp_path / "run")
    _set(out / "results.sqlite", "UPDATE units SET result = ? WHERE unit_key = 'resnet18-contour_param'",
         "[" * 100_000 + "]" * 100_000)
    code, _, err = cli(capsys, "report", out)
    assert code == 0 and "Traceback" not in err
    md = (out / "report.md").read_text()
    assert "resnet18-contour_param" in md and "nested too deeply" in md


def test_an_empty_store_is_refused_and_the_previous_report_kept(tmp_path, capsys):
    out = _audit(tmp_path / "run")
    assert cli(capsys, "report", out)[0] == 0
    before = (out / "report.md").read_text()
    (out / "results.sqlite").write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        (out / f"results.sqlite{suffix}").unlink(missing_ok=True)
    code, _, err = cli(capsys, "report", out)
    assert code == 2
    one_line(err, "results.sqlite", "no audit results in it")
    assert (out / "results.sqlite").stat().st_size == 0  # report never writes to the store
    assert (out / "report.md").read_text() == before


def test_a_store_from_a_newer_nasaudit_is_refused(tmp_path, capsys):
    out = _audit(tmp_path / "run")
    _set(out / "results.sqlite", "UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    code, _, err = cli(capsys, "report", out)
    assert code == 2
    one_line(err, "results.sqlite", "newer nasaudit", "schema 999")


def test_report_keeps_files_a_user_put_in_report_files(tmp_path, capsys):
    out = _audit(tmp_path / "run")
    assert cli(capsys, "report", out)[0] == 0
    mine = out / "report_files" / "notes.txt"
    mine.write_text("my notes\n")
    code, _, err = cli(capsys, "report", out)
    assert code == 2
    one_line(err, "report_files", "notes.txt", "move them out first")
    assert mine.read_text() == "my notes\n"
    mine.unlink()
    assert cli(capsys, "report", out)[0] == 0  # only its own files: replaced as before
    assert (out / "report_files" / ".nasaudit-files.json").is_file()


def test_read_only_results_say_so_and_report_goes_elsewhere(tmp_path, capsys, monkeypatch):
    import nasaudit.audit.report.write as write

    out = _audit(tmp_path / "run")
    real_access = write.os.access
    # Root ignores permission bits, so the read-only mount is simulated where write_report asks.
    monkeypatch.setattr(write.os, "access", lambda p, mode: Path(p) != out and real_access(p, mode))
    code, _, err = cli(capsys, "report", out)
    assert code == 2
    one_line(err, str(out), "read-only", "--out")
    assert "move it away" not in err and not (out / "report.md").exists()
    code, printed, _ = cli(capsys, "report", out, "--out", tmp_path / "elsewhere")
    assert code == 0 and (tmp_path / "elsewhere" / "report.md").is_file()
    assert "elsewhere" in printed


@pytest.mark.parametrize("lock", [".report.lock", ".audit.lock"])
def test_a_symlinked_lock_file_creates_nothing_outside(tmp_path, capsys, lock):
    out = _audit(tmp_path / "run")
    target = tmp_path / "outside" / "created-by-nasaudit"
    target.parent.mkdir()
    (out / lock).symlink_to(target)
    if lock == ".report.lock":
        code, _, err = cli(capsys, "report", out)
    else:
        from nasaudit.audit.runner import _exclusive
        from nasaudit.infra.errors import InputError

        with pytest.raises(InputError, match="symbolic link"), _exclusive(out):
            pass
        code, err = 2, "nasaudit: error: .audit.lock: is a symbolic link\n"
    assert code == 2 and "symbolic link" in err
    assert not target.exists()


def test_no_command_prints_the_usage_on_stderr(capsys):
    code, out, err = cli(capsys)
    assert code == 2 and out == "" and err.startswith("usage: nasaudit")
