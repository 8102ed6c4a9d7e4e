"""nasaudit.infra.outdir: a run writes only into a directory it made or marked, never deletes others'."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from nasaudit.infra.errors import InputError
from nasaudit.infra.io import atomic_write_text
from nasaudit.infra.outdir import (
    MARKER,
    check_output_dir,
    check_output_file,
    claim_output_dir,
    protected_dirs,
    read_marker,
    remove_torn_temp_files,
)

CHECKOUT = Path(__file__).resolve().parent.parent


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes): what "untouched" is checked against."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_new_directory_is_created_and_marked(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "run"
    assert claim_output_dir(target, "search") == target.resolve()
    marker = json.loads((target / MARKER).read_text())
    assert marker["kind"] == "search" and set(marker) == {"kind", "nasaudit", "created"}
    assert sorted(p.name for p in target.iterdir()) == [MARKER]
    # Claiming it again for the same kind is a rerun: nothing changes.
    before = _tree(target)
    claim_output_dir(target, "search")
    assert _tree(target) == before


def test_an_empty_directory_is_claimed(tmp_path: Path) -> None:
    claim_output_dir(tmp_path, "probe")
    assert read_marker(tmp_path)["kind"] == "probe"


def test_a_users_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("six months of work")
    (tmp_path / "report_files").mkdir()
    (tmp_path / "report_files" / "fig.png").write_bytes(b"\x89PNG mine")
    before = _tree(tmp_path)
    for kind in ("audit", "search", "models", "probe", "attack", "demo", "report"):
        with pytest.raises(InputError, match="is not empty .*thesis.tex.*not made by a nasaudit"):
            claim_output_dir(tmp_path, kind, source="--out")
    assert _tree(tmp_path) == before and not (tmp_path / MARKER).exists()


def test_a_directory_of_another_kind_is_refused(tmp_path: Path) -> None:
    claim_output_dir(tmp_path / "s", "search")
    with pytest.raises(InputError, match="belongs to a nasaudit search run, not a audit run"):
        claim_output_dir(tmp_path / "s", "audit")
    # A demo is an audit: `audit`, `demo` and `report` share its directory.
    claim_output_dir(tmp_path / "d", "demo")
    assert check_output_dir(tmp_path / "d", "audit") == (tmp_path / "d").resolve()
    assert check_output_dir(tmp_path / "d", "report") == (tmp_path / "d").resolve()


def test_a_planted_or_corrupt_marker_is_not_ownership(tmp_path: Path) -> None:
    (tmp_path / MARKER).write_text("{not json")
    (tmp_path / "x").write_text("mine")
    with pytest.raises(InputError, match="not a nasaudit marker"):
        claim_output_dir(tmp_path, "audit")
    assert (tmp_path / MARKER).read_text() == "{not json"


@pytest.mark.parametrize("where", ["/", "home", "checkout", "parent of checkout"])
def test_root_home_and_checkout_are_refused(where: str) -> None:
    target = {"/": Path("/"), "home": Path.home(), "checkout": CHECKOUT,
              "parent of checkout": CHECKOUT.parent}[where]
    assert (CHECKOUT / "pyproject.toml").is_file() and CHECKOUT.resolve() in protected_dirs()
    with pytest.raises(InputError, match="refusing to write a run into"):
        claim_output_dir(target, "audit")
    # Inside the checkout (runs/...) is fine to check: only the root itself is protected.
    assert check_output_dir(CHECKOUT / "runs" / "never-created-xyz", "audit")


def test_a_file_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file")
    with pytest.raises(InputError, match="exists and is a file"):
        claim_output_dir(tmp_path / "f", "search")
    assert (tmp_path / "f").read_text() == "a file"


def test_an_unmarked_directory_laid_out_like_ours_is_still_refused(tmp_path: Path) -> None:
    """Only the marker makes a directory ours: names nasaudit would write prove nothing."""
    audit = tmp_path / "audit"
    (audit / "checkpoints").mkdir(parents=True)
    (audit / "results.sqlite").write_bytes(b"")
    (audit / "report.md").write_text("someone's report")
    models = tmp_path / "models"
    (models / "image" / "digits").mkdir(parents=True)
    search = tmp_path / "search"
    search.mkdir()
    (search / "config.json").write_text("{}")
    for path, kind in ((audit, "audit"), (models, "models"), (search, "search")):
        with pytest.raises(InputError, match="not empty"):
            check_output_dir(path, kind)
        assert not (path / MARKER).exists()


def test_torn_temp_files_are_removed_at_the_next_start_and_nothing_else(tmp_path: Path) -> None:
    run = claim_output_dir(tmp_path / "run", "audit")
    (run / "checkpoints").mkdir()
    torn = [run / ".model.pth.ab12cd34.tmp", run / "checkpoints" / ".x.json.zz_9yy00.tmp"]
    for path in torn:
        path.write_bytes(b"half a checkpoint")
    young = run / ".fresh.json.qqqqqqqq.tmp"  # a writer of a concurrent command, still running
    young.write_bytes(b"being written")
    keep = [run / "notes.tmp", run / ".hidden.tmp", run / "model.pth", run / ".a.b.tmp.bak"]
    for path in keep:
        path.write_bytes(b"not ours to delete")
    outside = tmp_path / ".stray.json.abcdefgh.tmp"  # matches the pattern, outside the run
    outside.write_bytes(b"not in the run")
    link = run / ".link.json.abcdefgh.tmp"
    link.symlink_to(outside)
    old = time.time() - 3600
    for path in (*torn, *keep, outside):
        os.utime(path, (old, old))
    os.utime(link, (old, old), follow_symlinks=False)
    claim_output_dir(run, "audit")  # the next start
    assert not any(p.exists() for p in torn)
    assert young.exists() and outside.exists() and link.is_symlink()
    assert all(p.read_bytes() == b"not ours to delete" for p in keep)
    # Without our marker nothing is removed at all.
    (tmp_path / "plain").mkdir()
    stray = tmp_path / "plain" / ".x.json.abcdefgh.tmp"
    stray.write_bytes(b"x")
    os.utime(stray, (old, old))
    assert remove_torn_temp_files(tmp_path / "plain") == [] and stray.exists()


def test_a_real_kill_leaves_a_temp_file_that_the_next_claim_removes(tmp_path: Path) -> None:
    """SIGKILL a writer inside atomic_write: the target is untouched, the torn .tmp is cleaned."""
    import signal
    import subprocess
    import sys

    run = claim_output_dir(tmp_path / "run", "search")
    target = run / "genotype.json"
    atomic_write_text(target, "previous\n")
    code = (
        "import sys, time\n"
        "from nasaudit.infra.io import atomic_write\n"
        "def slow(handle):\n"
        "    handle.write(b'torn'); handle.flush(); print('writing', flush=True); time.sleep(60)\n"
        f"atomic_write({str(target)!r}, slow)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline() == b"writing\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (tmp,) = [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert target.read_text() == "previous\n" and tmp.read_bytes() == b"torn"
    old = time.time() - 3600
    os.utime(tmp, (old, old))
    claim_output_dir(run, "search")
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "genotype.json"]


def test_check_output_file_refuses_the_input(tmp_path: Path) -> None:
    src = tmp_path / "g.json"
    src.write_text("{}")
    with pytest.raises(InputError, match="is the input file.*--force"):
        check_output_file(src, inputs=(src,))
    with pytest.raises(InputError, match="is the input file"):
        check_output_file(tmp_path / "." / "g.json", inputs=(str(src),))  # another spelling
    assert check_output_file(src, inputs=(src,), force=True) == src
    assert check_output_file(tmp_path / "new.json", inputs=(src,)) == tmp_path / "new.json"
    with pytest.raises(InputError, match="is a directory"):
        check_output_file(tmp_path, inputs=())
