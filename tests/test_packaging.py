"""The wheel carries the data directories: build it, install it into a fresh venv, use it."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv with the nasaudit wheel installed (its heavy dependencies are borrowed from
    the running environment through a .pth file, so the test needs no network)."""
    work = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(work / "dist"),
          str(REPO)])
    wheel = next((work / "dist").glob("nasaudit-*.whl"))
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    venv_python = venv / "bin" / "python"
    purelib = _run([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                   ).stdout.strip()
    # Only the dependency directories: the editable nasaudit of this environment is on a .pth
    # line inside them, which is not processed for directories added this way.
    deps = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    Path(purelib, "_nasaudit_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    _run([str(venv_python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)])
    return venv


def test_wheel_contains_data_and_analyzes_darts(wheel_venv: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _run([str(wheel_venv / "bin" / "python"), "-c",
                  "import nasaudit, nasaudit.infra.resources as r; print(nasaudit.__file__); "
                  "print(r.data_dir('genotypes')); print(r.data_dir('search_spaces'))"],
                 cwd=tmp_path, env=env).stdout.split()
    assert str(wheel_venv) in where[0], "the wheel's nasaudit must be the one imported"
    assert where[1].endswith("nasaudit/_data/genotypes")
    assert where[2].endswith("nasaudit/_data/search_spaces")

    out = _run([str(wheel_venv / "bin" / "nasaudit"), "analyze", "darts", "--json"],
               cwd=tmp_path, env=env).stdout
    report = json.loads(out)
    # DARTS V2 normal cell: the longest input->output path has 3 edges (c_{k-1} -> node 2 ->
    # node 5 -> output, through dil_conv_3x3), and it has 2 skip connects; the reduce cell has 3.
    assert report["cells"]["normal"]["skip_connects"] == 2
    assert report["cells"]["reduce"]["skip_connects"] == 3
    assert report["cells"]["normal"]["depth"] == 3
