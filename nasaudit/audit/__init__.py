"""The audit: retrain genotypes next to manual baselines, run the attacks and probes, store every
result in SQLite, and write the report.

* `config`: the TOML schema (`load_config`, `AuditConfig`);
* `store`: the results database, one transactional row per unit (`Store`);
* `plan`: the unit graph, built up front (`build_plan`, `describe_plan` for --dry-run);
* `units`: doing one unit (`execute_unit`), the same code on every engine;
* `engines`: executing a plan, `local` (this process) or `ray` (a Ray cluster);
* `runner`: the entry point, resume, the run's history (`run_audit`);
* `report`: markdown/HTML/PNG/CSV from the database alone (`write_report`);
* `demo`: the `nasaudit demo` pipeline on the embedded digits data (`run_demo`).

From Python::

    from nasaudit.audit import load_config, run_audit
    summary = run_audit(load_config("experiments/smoke_cifar10.toml"), device="cpu")
    print(summary.report)
"""

from nasaudit.audit.config import AuditConfig, config_from_dict, load_config
from nasaudit.audit.report import write_report
from nasaudit.audit.runner import AuditSummary, run_audit
from nasaudit.audit.store import Store

__all__ = [
    "AuditConfig",
    "AuditSummary",
    "Store",
    "config_from_dict",
    "load_config",
    "run_audit",
    "write_report",
]
