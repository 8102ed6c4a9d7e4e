"""The README's and docs/'s tour, executed: every command block marked `<!-- tour ... -->` runs,
at tiny sizes, in order (README first, then docs/*.md), in a scratch directory laid out like a
checkout.

The marker comment is the documented way to shrink a block for the test without making the
README less readable. Its clauses, separated by `;`:

* `set --flag=value`  replace the value of `--flag` (or a `key=value` of `--param`) in every
  command of the block, e.g. `set --epochs=1`;
* `add --flag=value`  append `--flag value` to every command of the block that lacks the flag
  (e.g. `add --train-subset=256`, a flag the README's command leaves at its default);
* `skip TEXT`  do not run command lines containing TEXT (say why in the README's prose: a
  download, a GPU, a cluster);
* `expect`  the next fenced block without a language is output the block's last command must
  print (each of its lines, ignoring runs of spaces).

Commands run with bash, `set -e`, from a scratch directory holding copies of the checkout's
experiments/, genotypes/, search_spaces/ and tests/fixtures/ and a `../shared` link, so that paths in the README
resolve as they do for a user in a checkout.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MARKER = re.compile(r"^<!-- tour(?::\s*(.*?))?\s*-->$")


@dataclass
class TourBlock:
    line: int  # 1-based line of the marker in its file
    commands: list[str]
    sets: dict[str, str] = field(default_factory=dict)
    adds: dict[str, str] = field(default_factory=dict)
    skips: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)


def parse_tour(text: str) -> list[TourBlock]:
    """Every marked block of the README, in order, with its clauses."""
    lines = text.splitlines()
    blocks: list[TourBlock] = []
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i].strip())
        if not m:
            i += 1
            continue
        block = TourBlock(i + 1, [])
        want_output = False
        for clause in filter(None, (c.strip() for c in (m.group(1) or "").split(";"))):
            verb, _, arg = clause.partition(" ")
            if verb == "set":
                key, _, value = arg.strip().partition("=")
                block.sets[key] = value
            elif verb == "add":
                key, _, value = arg.strip().partition("=")
                block.adds[key] = value
            elif verb == "skip":
                block.skips.append(arg.strip())
            elif verb == "expect":
                want_output = True
            else:
                raise ValueError(f"README.md:{i + 1}: unknown tour clause {clause!r}")
        i += 1
        while not lines[i].startswith("```"):
            i += 1
        i += 1
        body = []
        while not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        block.commands = _join_continuations(body)
        if want_output:
            while not lines[i].startswith("```"):
                i += 1
            i += 1
            while not lines[i].startswith("```"):
                block.expected.append(lines[i])
                i += 1
        blocks.append(block)
    return blocks


def _join_continuations(body: list[str]) -> list[str]:
    commands, current = [], ""
    for raw in body:
        line = raw.strip()
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        current += line
        words = shlex.split(current, comments=True)  # a trailing comment explains, it does not run
        if words:
            commands.append(shlex.join(words))
        current = ""
    return commands


def shrink(command: str, sets: dict[str, str], adds: dict[str, str] | None = None) -> str:
    """`command` with the block's `set` and `add` clauses applied."""
    words = shlex.split(command)
    out = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in sets and i + 1 < len(words):
            out += [word, sets[word]]
            i += 2
            continue
        if "=" in word and word.split("=", 1)[0] in sets:  # --param key=value
            out.append(f"{word.split('=', 1)[0]}={sets[word.split('=', 1)[0]]}")
            i += 1
            continue
        out.append(word)
        i += 1
    for flag, value in (adds or {}).items():
        if flag not in out:
            out += [flag, value] if value else [flag]  # `add --no-progress=`: a bare flag
    return shlex.join(out)


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_the_tour_parser_reads_its_own_clauses() -> None:
    text = "\n".join([
        "<!-- tour: set --epochs=1; set eps=1/255; add --max-steps=2; skip --download; expect -->",
        "```bash",
        "nasaudit train --model darts --epochs 20 \\",
        "    --C 16   # a comment",
        "nasaudit train --download",
        "nasaudit attack pgd --param eps=8/255",
        "```",
        "",
        "```",
        "darts  (sha256 1234)",
        "```",
    ])
    (block,) = parse_tour(text)
    assert block.commands == ["nasaudit train --model darts --epochs 20 --C 16",
                              "nasaudit train --download", "nasaudit attack pgd --param eps=8/255"]
    assert shrink(block.commands[0], block.sets) == "nasaudit train --model darts --epochs 1 --C 16"
    assert shrink(block.commands[0], block.sets, block.adds) == \
        "nasaudit train --model darts --epochs 1 --C 16 --max-steps 2"
    assert shrink(block.commands[2], block.sets) == "nasaudit attack pgd --param eps=1/255"
    assert block.skips == ["--download"] and block.expected == ["darts  (sha256 1234)"]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tour")
    work = root / "checkout"
    work.mkdir()
    # Copies, not links: a config's relative out_dir must land in the scratch tree, not the checkout.
    for name in ("experiments", "genotypes", "search_spaces", "tests/fixtures"):
        shutil.copytree(REPO / name, work / name, symlinks=False)
    shared = REPO.parent / "shared"
    assert shared.is_dir(), "../shared (the CIFAR-10 subset) must be beside the checkout"
    (root / "shared").symlink_to(shared)
    return work


# The README first, then the docs pages in reading order (a block may use what an earlier one
# made: the attacks train the checkpoint they attack after the search page's training).
_ORDER = ["SEARCH.md", "ATTACKS.md", "AUDIT.md"]
PAGES = [README, *sorted((REPO / "docs").glob("*.md"),
                         key=lambda p: (_ORDER.index(p.name) if p.name in _ORDER else len(_ORDER), p.name))]
BLOCKS = [(page.relative_to(REPO).as_posix(), block) for page in PAGES for block in parse_tour(page.read_text())]


def test_the_readme_and_docs_have_a_tour() -> None:
    pages = {page for page, _ in BLOCKS}
    assert {"README.md", "docs/SEARCH.md", "docs/ATTACKS.md", "docs/AUDIT.md"} <= pages
    assert len(BLOCKS) >= 8, "the tour blocks are marked `<!-- tour -->` and tested here"


@pytest.mark.slow
@pytest.mark.parametrize(("page", "block"), BLOCKS, ids=[f"{p}:{b.line}" for p, b in BLOCKS])
def test_tour_block_runs(page: str, block: TourBlock, scratch: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    output = ""
    for command in block.commands:
        if any(skip in command for skip in block.skips):
            continue
        run = shrink(command, block.sets, block.adds) if command.startswith("nasaudit") else command
        proc = subprocess.run(["bash", "-c", f"set -euo pipefail; {run}"], cwd=scratch, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (f"{page}:{block.line}: `{run}` exited {proc.returncode}\n"
                                      f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        assert "Traceback" not in proc.stderr, f"{page}:{block.line}: `{run}`\n{proc.stderr[-2000:]}"
        output = proc.stdout
    if block.expected:  # the README shows the output exactly as the command prints it today
        shown = [_squash(line) for line in block.expected]
        printed = [_squash(line) for line in output.splitlines() if line.strip()]
        assert shown == printed, f"{page}:{block.line}: the sample output differs from:\n{output}"
