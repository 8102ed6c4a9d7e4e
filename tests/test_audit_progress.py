"""The audit's progress display: the plan up front, one overall bar on a terminal, one plain line
per finished unit in a log, nothing with --no-progress."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from engine_helpers import TOTAL, make_config

from nasaudit.audit.progress import AuditProgress, plan_line, progress_mode, unit_label, unit_labels

BAR_MARKS = ("it/s", "s/it", "|█", "\r")


class FakeTTY(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _unit(name: str, model: str = "resnet18", seed: int = 0, stage: str = "attack"):
    return SimpleNamespace(key=f"{stage}-{name}-{model}-{seed}", name=name, model=model, seed=seed,
                           stage=stage, params={})


def _outcome(status: str = "done", error: str | None = None, seconds: float = 2.5):
    return SimpleNamespace(status=status, error=error, started=100.0, finished=100.0 + seconds)


def test_the_mode_is_decided_by_both_streams_and_the_flag():
    tty, log = FakeTTY(), io.StringIO()
    assert progress_mode(True, tty, tty) == "bars"
    assert progress_mode(True, log, tty) == "lines"  # | tee: the log gets lines, not redraws
    assert progress_mode(True, tty, log) == "lines"  # 2> file
    assert progress_mode(False, tty, tty) == "off"
    closed = io.StringIO()
    closed.close()
    assert progress_mode(True, closed, tty) == "lines"


def test_a_logged_audit_prints_the_plan_and_one_plain_line_per_unit(tmp_path: Path, capsys):
    from nasaudit.audit.runner import run_audit

    config = make_config(tmp_path)
    summary = run_audit(config, device="cpu", progress=True, report=False)
    assert summary.ran == TOTAL and summary.failed == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "audit tiny_ray: 10 units (0 already done) over 2 models x 1 seed on the local engine"
    done = [line for line in lines if re.fullmatch(r"\[\s*\d+/10\] done \S+ \S+ s0 \(\d+\.\d s\)", line)]
    assert len(done) == TOTAL, out
    assert [int(line[1:3]) for line in done] == list(range(1, TOTAL + 1))
    assert any(line.startswith("[ 2/10] done train tiny_cnn s0 (") for line in done), out
    for mark in BAR_MARKS:
        assert mark not in out and mark not in err, mark

    # A rerun has nothing to do: it says so up front and prints no unit line.
    run_audit(config, device="cpu", progress=True, report=False)
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "audit tiny_ray: 10 units (10 already done) over 2 models x 1 seed on the local engine"]
    # --no-progress: nothing at all while running.
    run_audit(config, device="cpu", progress=False, report=False)
    assert capsys.readouterr() == ("", "")


def test_on_a_terminal_one_overall_bar_names_the_running_unit():
    tty = FakeTTY()
    display = AuditProgress(5, 1, mode=progress_mode(True, tty, tty), out=tty, bar_file=tty)
    assert display.bars
    display.announce("audit x: 5 units (1 already done) over 1 model x 1 seed on the local engine")
    train, pgd = _unit("train", stage="train"), _unit("pgd")
    display.start(train)
    bar = display.bar
    assert bar.total == 5 and bar.n == 1
    assert "train resnet18 s0" in bar.desc
    display.start(pgd)  # two at once (the processes engine): the first, and how many more
    assert "train resnet18 s0 (+1 more)" in bar.desc
    display.finish(train, _outcome())
    assert display.bar is bar and bar.n == 2  # one bar throughout, never one per stage
    assert "pgd resnet18 s0" in bar.desc and "train" not in bar.desc
    display.finish(pgd, _outcome("failed", "RuntimeError: boom\nsecond line"))
    assert bar.n == 3
    display.close()
    text = tty.getvalue()
    assert "[3/5] FAILED pgd resnet18 s0: RuntimeError: boom" in text and "second line" not in text
    assert "done train" not in text  # on a terminal the bar counts; only failures get a line
    drawn = [row for row in re.split(r"[\r\n]", text) if row.startswith("audit 3/5 units")]
    assert drawn, text
    # No rate and no ETA: units differ too much for either to mean anything.
    assert all("it/s" not in row and "s/it" not in row and "<" not in row for row in drawn)


def test_plain_lines_number_units_and_quote_one_line_of_a_failure():
    out = io.StringIO()
    display = AuditProgress(42, 4, mode="lines", out=out)
    display.start(_unit("train", "darts_v2", stage="train"))
    display.finish(_unit("train", "darts_v2", stage="train"), _outcome(seconds=12.34))
    display.finish(_unit("pgd"), _outcome("failed", "ValueError: bad \x1b[31mred\nTraceback..."))
    display.close()
    assert out.getvalue().splitlines() == [
        "[ 5/42] done train darts_v2 s0 (12.3 s)",
        "[ 6/42] FAILED pgd resnet18 s0: ValueError: bad \\x1b[31mred",
    ]


def test_off_is_silent_but_still_names_a_failure_on_stderr(capsys):
    display = AuditProgress(3, 0, mode="off")
    display.announce("audit x: 3 units")
    display.start(_unit("pgd"))
    display.finish(_unit("pgd"), _outcome())
    display.finish(_unit("nes"), _outcome("failed", "boom"))
    display.close()
    out, err = capsys.readouterr()
    assert out == "" and err == "nasaudit audit: nes resnet18 s0 failed: boom\n"


def test_plan_line_counts_searches_models_seeds_and_workers(tmp_path: Path):
    from nasaudit.audit.plan import build_plan

    plan = build_plan(make_config(tmp_path))
    assert plan_line(plan, 3, "processes", 2) == (
        "audit tiny_ray: 10 units (3 already done) over 2 models x 1 seed on the processes engine (2 workers)")
    assert unit_label(plan.units[1]) == "train tiny_cnn s0"


def test_units_that_share_a_name_are_told_apart_by_their_parameters():
    units = [_unit("gradvar", stage="probe_init"), _unit("gradvar", stage="probe"),
             *(SimpleNamespace(key=f"k{r}", name="knockoff", model="darts_v2", seed=0, stage="attack",
                               params={"budgets": [50, 100], "replica": r}) for r in ("a", "b"))]
    assert list(unit_labels(units).values()) == [
        "gradvar at init resnet18 s0", "gradvar resnet18 s0",
        "knockoff darts_v2 s0 [replica=a]", "knockoff darts_v2 s0 [replica=b]"]
    display = AuditProgress(4, mode="lines", out=io.StringIO(), labels=unit_labels(units))
    display.finish(units[3], _outcome())
    assert display.out.getvalue() == "[1/4] done knockoff darts_v2 s0 [replica=b] (2.5 s)\n"


def test_the_local_engine_gives_inner_bars_only_to_units_whose_bars_are_transient(tmp_path, monkeypatch):
    """Training draws a leave=False bar, erased when it ends; an attack's bar stays, so attacks run
    without one (else each would leave a bar stacked under the audit's)."""
    from nasaudit.audit.engines import local
    from nasaudit.audit.plan import build_plan
    from nasaudit.audit.units import UnitJob

    plan = build_plan(make_config(tmp_path))
    seen = {}
    monkeypatch.setattr(local, "execute_unit", lambda job, ctx: seen.setdefault(job.unit.stage, job.progress))
    started: list[str] = []
    for progress in (True, False):
        seen.clear()
        started.clear()
        executor = local.LocalExecutor(plan, progress=progress)
        executor.on_start = lambda job: started.append(job.unit.key)
        for unit in plan.units:
            executor.submit(UnitJob(plan.config, unit, None, "cpu", False, "run"))
        for _ in plan.units:
            executor.wait()
        assert started == [u.key for u in plan.units]
        assert seen == {"analyze": False, "train": progress, "clean": False, "attack": False}


@pytest.mark.parametrize("mode", ["bars", "lines", "off"])
def test_close_is_safe_before_any_unit(mode):
    stream = FakeTTY()
    AuditProgress(2, 0, mode=mode, out=stream, bar_file=stream).close()
    assert stream.getvalue() == ""
