"""`nasaudit demo` end to end (the --quick budgets; CI also runs the full demo separately)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nasaudit.audit.demo import DEMO_CONFIG, demo_config, restrict_to_installed
from nasaudit.cli import main


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--quick", "--no-progress", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "searched genotype (hash" in printed and "report:" in printed
    md = (out / "report.md").read_text()
    titles = re.findall(r"^## (.+)$", md, flags=re.M)
    bodies = re.split(r"^## .+$", md, flags=re.M)[1:]
    from nasaudit.audit.report.sections import SECTIONS

    assert len(titles) == len(SECTIONS) - 2 + 1 and all(b.strip() for b in bodies)
    assert titles[0] == "Summary" and titles[-1] == "Not measured in this audit"
    # Every attack and probe section has data; only the mitigation table and the sweep trade-off
    # are (rightly) folded away: the demo marks no mitigated variant and declares no sweep.
    folded = re.findall(r"^\*\*(.+?)\*\*:", bodies[-1], flags=re.M)
    assert folded == ["Mitigation comparison (Table 4)", "Trade-off: accuracy, robustness and search cost (sweeps)"]
    assert not any("_No data" in b for b in bodies)
    assert "| searched | nas |" in md and "| resnet18 | manual |" in md
    # Two NAS models against one manual model cannot carry a verdict; the summary says so and why.
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "No verdict is possible with 2 NAS against 1 manual models" in summary
    assert "smallest p-value a permutation test over so few models can give is 0.667" in summary
    headline = md.split("## Headline: NAS minus manual", 1)[1].split("\n## ", 1)[0]
    assert "| agrees |" not in headline and "| disagrees |" not in headline
    assert (out / "report.html").is_file() and (out / "results.sqlite").is_file()
    # Running the demo again into the same directory reuses every finished unit.
    assert main(["demo", "--out", str(out), "--quick", "--no-progress", "--device", "cpu"]) == 0
    assert "(0 run now, 0 failed)" in capsys.readouterr().out


def test_demo_config_covers_every_attack_and_probe() -> None:
    from nasaudit import attacks, probes
    from nasaudit.audit.config import config_from_dict
    from nasaudit.audit.plan import validate_config

    config = config_from_dict({**demo_config(), "out_dir": "x"})
    validate_config(config)  # every attack's demo settings are valid Params
    assert {t.name for t in config.attacks} == set(attacks.NAMES)
    # An attack without demo settings would run the study's full budgets inside the demo.
    assert all(spec.demo for spec in attacks.all_specs().values())
    assert {t.name for t in config.probes} == set(probes.NAMES)
    assert [m.spec for m in config.models] == ["search:digits", "darts_v2", "resnet18"]
    assert demo_config(quick=True)["train"]["epochs"] < DEMO_CONFIG["train"]["epochs"]
    kept, notes = restrict_to_installed(demo_config())
    assert kept == demo_config() and notes == []
