"""What an audit shows while it runs: one line with the plan up front, then one overall bar on a
terminal, or one plain line per finished unit in a log.

* `progress_mode(enabled)`: the one place that decides between bars (stdout and stderr are both
  terminals), plain lines (either one is a file, a pipe or a CI log, where redrawn bars turn
  into pages of carriage returns) and nothing (``--no-progress``).
* `AuditProgress`: the display `drive` feeds; one overall bar over units, whose description
  names the running unit. It shows units done and the time elapsed, never a rate or an ETA:
  the units of one audit range from a parameter count to a retraining attack, so a rate taken
  over the ones done so far says nothing about the ones left.
* `plan_line`: the sentence printed before anything runs.
* `log`: one warning line on stderr that does not tear a bar (the audit's only such helper).

The plan line and the unit lines go to stdout, with the command's summary, so a log made with
``| tee`` or ``> file`` keeps them; the bar goes to stderr, the terminal's, as tqdm's do.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import IO, Any

from nasaudit.infra.errors import first_line, printable

MODES = ("bars", "lines", "off")

# units done / total, the time since the run started and what is running; no rate, no ETA.
BAR_FORMAT = "audit {n_fmt}/{total_fmt} units |{bar:20}| {elapsed} elapsed{desc}"
# How often the bar is redrawn while one unit runs: tqdm redraws only on an update, and an
# elapsed time that stands still for a whole training unit would look like a hang.
REFRESH_SECONDS = 1.0


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress_mode(enabled: bool, out: IO[str] | None = None, err: IO[str] | None = None) -> str:
    """"bars" when progress is on and stdout and stderr are both terminals, "lines" when progress
    is on and either one is not (a file, a pipe, a CI log), "off" when progress is off.

    Both streams count: bars drawn on stderr while stdout goes to ``| tee`` would leave the
    log with only the summary, and bars on a redirected stderr fill the file with redraws.
    """
    if not enabled:
        return "off"
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    return "bars" if _is_terminal(out) and _is_terminal(err) else "lines"


def unit_label(unit) -> str:
    """What a unit is called in progress output: "train darts_v2 s0", "pgd resnet18 s0",
    "gradvar at init darts_v2 s0"."""
    at_init = " at init" if unit.stage == "probe_init" else ""
    return printable(f"{unit.name}{at_init} {unit.model} s{unit.seed}")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:23] + "~"


def unit_labels(units) -> dict[str, str]:
    """unit key -> `unit_label`, made unique within `units`: units that share a label (sweep
    points, knockoff replicas) get the parameters that tell them apart, e.g.
    "knockoff darts_v2 s0 [replica=resnet18]"."""
    groups: dict[str, list] = {}
    for unit in units:
        groups.setdefault(unit_label(unit), []).append(unit)
    labels = {}
    for label, group in groups.items():
        for unit in group:
            labels[unit.key] = label
        if len(group) == 1:
            continue
        names = sorted({k for u in group for k in u.params})
        differ = [k for k in names if len({_short(u.params.get(k)) for u in group}) > 1]
        for unit in group:
            tell = ", ".join(f"{k}={_short(unit.params.get(k))}" for k in differ) or unit.key[:8]
            labels[unit.key] = f"{label} [{printable(tell)}]"
    return labels


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def plan_line(plan, done: int, engine: str, workers: int | None = None) -> str:
    """The sentence printed before an audit runs: its size, what is already done, over what,
    where. E.g. "audit demo: 42 units (12 already done) over 3 models x 1 seed on the local
    engine"."""
    labels = {m.label for m in plan.models.values()}
    seeds = {m.seed for m in plan.models.values()} or set(plan.config.seeds)
    searches = {u.model for u in plan.units if u.stage == "search"}
    over = [_plural(len(searches), "search")] if searches else []
    if labels:
        over.append(f"{_plural(len(labels), 'model')} x {_plural(len(seeds), 'seed')}")
    where = f"the {engine} engine" + (f" ({_plural(workers, 'worker')})" if workers else "")
    return (f"audit {printable(plan.config.name)}: {_plural(len(plan.units), 'unit')} ({done} already done)"
            f" over {' and '.join(over) or 'nothing'} on {where}")


def log(message: str) -> None:
    """One line on stderr ("nasaudit audit: MESSAGE") that does not tear a progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(f"nasaudit audit: {message}", file=sys.stderr)


class AuditProgress:
    """The progress display of one audit run, fed by the driver (`drive`) for every engine.

    `mode` is one of MODES (`progress_mode` decides it); `total` counts every unit of the plan
    and `done` the ones already finished before this run, so the count ends at total when
    every unit ran. Use `announce` before anything runs, `start(unit)` when a unit begins,
    `finish(unit, outcome)` when its outcome is recorded, and `close` at the end.
    """

    def __init__(self, total: int, done: int = 0, *, mode: str = "lines",
                 out: IO[str] | None = None, bar_file: IO[str] | None = None,
                 labels: dict[str, str] | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.total, self.count, self.mode = total, done, mode
        self.out = sys.stdout if out is None else out
        self.bar_file = sys.stderr if bar_file is None else bar_file
        self.labels = labels or {}  # unit key -> label (`unit_labels`); else `unit_label`
        self.running: dict[str, str] = {}  # unit key -> label, in the order they started
        self.bar = None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    @property
    def bars(self) -> bool:
        """Whether bars are drawn (so a running unit may show its own transient bar below)."""
        return self.mode == "bars"

    def announce(self, text: str) -> None:
        """One line before the run (the plan); nothing when progress is off."""
        if self.mode != "off":
            print(text, file=self.out, flush=True)

    def open(self) -> None:
        """Draw the overall bar (bars mode); idempotent."""
        if self.mode != "bars" or self.bar is not None:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=self.count, file=self.bar_file, position=0,
                        bar_format=BAR_FORMAT, dynamic_ncols=True, leave=True)
        self._refresher = threading.Thread(target=self._refresh, name="nasaudit-progress", daemon=True)
        self._refresher.start()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            bar = self.bar
            if bar is not None:
                bar.refresh()

    def _describe(self, refresh: bool = True) -> None:
        if self.bar is None:
            return
        labels = list(self.running.values())
        text = ""
        if labels:
            more = f" (+{len(labels) - 1} more)" if len(labels) > 1 else ""
            text = f" - {labels[0]}{more}"
        self.bar.set_description_str(text, refresh=refresh)

    def _label(self, unit) -> str:
        return self.labels.get(unit.key) or unit_label(unit)

    def start(self, unit) -> None:
        """A unit began (or, on engines that cannot tell, was handed to the engine)."""
        if unit.key not in self.running:
            self.running[unit.key] = self._label(unit)
        self.open()
        self._describe()

    def finish(self, unit, outcome) -> None:
        """A unit's outcome was recorded: count it; in lines mode print one line for it, and in
        every mode say when it failed (a failure is not progress: --no-progress keeps it)."""
        label = self.running.pop(unit.key, None) or self._label(unit)
        self.count += 1
        failed = outcome.status != "done"
        if self.mode == "off":
            if failed:
                log(f"{label} failed: {printable(first_line(outcome.error, limit=10_000))}")
            return
        width = len(str(self.total))
        head = f"[{self.count:>{width}}/{self.total}]"
        if failed:
            line = f"{head} FAILED {label}: {printable(first_line(outcome.error, limit=10_000))}"
        else:
            seconds = max(0.0, float(outcome.finished) - float(outcome.started))
            line = f"{head} done {label} ({seconds:.1f} s)"
        if self.mode == "lines":
            print(line, file=self.out, flush=True)
            return
        self.open()
        if failed:
            from tqdm.auto import tqdm

            tqdm.write(line, file=self.out)  # above the bar, which is redrawn below it
        self._describe(refresh=False)
        self.bar.update(1)  # draws the new count and description at once

    def close(self) -> None:
        """Stop redrawing and leave the bar at its final count."""
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join()
            self._refresher = None
        if self.bar is not None:
            self.bar.set_description_str("", refresh=False)
            self.bar.close()
            self.bar = None

    def __enter__(self) -> AuditProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditProgress(mode={self.mode!r}, {self.count}/{self.total})"


__all__ = ["AuditProgress", "BAR_FORMAT", "MODES", "log", "plan_line", "progress_mode", "unit_label",
           "unit_labels"]
