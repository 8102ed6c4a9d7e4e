"""Make the README's pictures: the demo report's forest plot and darts_v2's cell drawing.

    python docs/make_figures.py [--demo-dir DIR]

Runs `nasaudit demo` into DIR (default: a temporary folder; an existing demo folder is reused,
its finished units skipped) and copies its headline forest plot to docs/img/forest.png, then
draws darts_v2's cells into docs/img/darts_v2.png.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default=None, help="where the demo runs (default: a temporary folder)")
    args = parser.parse_args()
    img = DOCS / "img"
    img.mkdir(exist_ok=True)
    demo = Path(args.demo_dir) if args.demo_dir else Path(tempfile.mkdtemp()) / "demo"
    nasaudit = [sys.executable, "-m", "nasaudit"]
    subprocess.run([*nasaudit, "demo", "--out", str(demo), "--no-progress"], check=True)
    shutil.copyfile(demo / "report_files" / "figures" / "headline_forest.png", img / "forest.png")
    subprocess.run([*nasaudit, "analyze", "darts_v2", "--draw", str(img / "darts_v2.png"), "--force"], check=True)
    print(f"wrote {img / 'forest.png'} and {img / 'darts_v2.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
