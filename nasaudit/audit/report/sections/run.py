"""The run: config, versions, units per stage, failures and searches."""

from __future__ import annotations

from collections import defaultdict

from nasaudit.audit.report.builder import Builder
from nasaudit.audit.report.data import hooks_text, normal_cell_metrics
from nasaudit.audit.report.document import Section, Table
from nasaudit.audit.report.metrics import MANUAL, NAS


def overview(report: Builder) -> Section:
    """The run: config, versions, finished and failed units per stage, and the searches."""
    d = report.data
    s = Section("Run")
    cfg = d.config
    versions = sorted({(r.nasaudit_version, r.torch_version) for r in d.rows})
    devices = sorted({r.device for r in d.rows})
    total_seconds = sum(r.seconds for r in d.rows)
    s.text(f"Config `{cfg.get('name', '?')}` from `{cfg.get('source', '?')}`. "
           f"{len(d.rows)} finished units ({total_seconds / 60:.1f} compute-minutes), "
           f"{len(d.failed)} failed, over {len(d.order)} models "
           f"({len(d.labels(NAS))} NAS, {len(d.labels(MANUAL))} manual).")
    if versions or devices:
        s.text("Produced by " + ", ".join(f"nasaudit {a} / torch {b}" for a, b in versions)
               + f" on {', '.join(devices)}.")
    s.text("Every number below is read from `results.sqlite`; the CSV files hold the tables.")
    stages = defaultdict(lambda: [0, 0.0])
    for r in d.rows:
        stages[r.stage][0] += 1
        stages[r.stage][1] += r.seconds
    report.table(s, Table("units", ["stage", "units", "seconds"],
                        [[k, v[0], v[1]] for k, v in stages.items()], "Finished units per stage"))
    if d.failed:
        report.table(s, Table("failed_units", ["model", "stage", "unit", "seed", "error"],
                            [[r.model, r.stage, r.name, r.seed, (r.error or "").splitlines()[-1][:160]]
                             for r in d.failed], "Failed units (rerun the audit to retry them)"))
    searches = [r for r in d.rows if r.stage == "search"]
    if searches:
        rows = []
        for r in searches:
            cells = normal_cell_metrics(r.result.get("genotype"))
            rows.append([r.result.get("name"), r.result.get("genotype_hash", "")[:12],
                         r.params.get("n_step", 1), r.params.get("gamma", 1.0), hooks_text(r.params),
                         cells.get("depth"), cells.get("width"), cells.get("skip_connects"),
                         r.seconds, r.result.get("genotype_path")])
        report.table(s, Table("searches", ["search", "genotype hash", "n_step", "gamma", "hooks", "normal depth",
                                         "normal width (c)", "normal skips", "seconds", "genotype file"],
                            rows, "Searches run by this audit (cells of the searched genotypes)"))
    return s
