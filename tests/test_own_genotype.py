"""experiments/own_genotype.toml and docs/OWN_GENOTYPE.md, as a user runs them: the genotype file
is read (parsed, never run), the config plans the user's cell beside a manual baseline, and every
command the page shows works."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from nasaudit.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_every_command_on_the_page_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    page = (REPO / "docs" / "OWN_GENOTYPE.md").read_text()
    commands = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", page, flags=re.S)
                for line in block.splitlines() if line.strip()]
    assert commands and all(c.startswith("nasaudit ") for c in commands)
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] == "audit" and "--dry-run" not in argv:
            continue  # the real audit trains on the CIFAR subset: the dry run below plans the same units
        assert main(argv) == 0, command
    out = capsys.readouterr().out
    assert "normal" in out and "reduce" in out  # analyze printed both cells of MY_CELL
    assert "mine" in out and "resnet18" in out  # the dry run plans the user's cell and the baseline
    assert "train" in out


def test_the_config_builds_the_users_cell_next_to_its_baseline():
    from nasaudit.audit.config import load_config

    config = load_config(REPO / "experiments" / "own_genotype.toml")
    groups = {m.label: m.group for m in config.models}
    assert groups == {"mine": "nas", "resnet18": "manual"}
    assert config.models[0].spec.endswith("own_genotype.py:MY_CELL")
