"""The lists of attacks and of report metrics are built from the modules that define them, so
that adding an attack is its module plus its report section (docs/DESIGN.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import nasaudit

PACKAGE = Path(nasaudit.__file__).parent


def test_attack_names_are_the_attack_modules_without_importing_torch():
    code = ("import sys, nasaudit.attacks as a; "
            "print(','.join(a.NAMES)); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()
    from nasaudit.attacks import SUPPORT_MODULES

    files = sorted(p.stem for p in (PACKAGE / "attacks").glob("*.py")
                   if p.stem != "__init__" and p.stem not in SUPPORT_MODULES)
    assert out == [",".join(files), "False"]
    assert {"pgd", "pgd_sweep", "nes", "autoattack", "poison", "backdoor", "knockoff", "membership",
            "rmia", "model_reuse"} <= set(files)


def test_each_attack_module_declares_the_spec_of_its_own_name():
    from nasaudit.attacks import NAMES, attack_spec

    for name in NAMES:
        spec = attack_spec(name)
        assert spec.run.__module__ == f"nasaudit.attacks.{name}"
        assert spec.params_cls.__module__ == f"nasaudit.attacks.{name}"


# A quoted attack name outside its module and the report's sections, where it means the attack:
# Knockoff's replica rows are chosen by the report's reader. "pgd" is also the adversarial
# training method (training, the train command) and AutoAttack's own PGD stage.
_ALLOWED = {
    "knockoff": {"audit/report/data.py"},
    "pgd": {"training.py", "train_config.py", "cli/train.py", "attacks/autoattack.py", "attacks/backdoor.py",
            "attacks/__init__.py", "audit/config.py", "audit/report/metrics.py"},
}


def test_an_attack_is_named_only_by_its_module_and_its_report_sections():
    from nasaudit.attacks import NAMES

    sources = {p.relative_to(PACKAGE).as_posix(): p.read_text() for p in PACKAGE.rglob("*.py")}
    for name in NAMES:
        quoted = re.compile(rf"[\"']{name}[\"']")
        naming = {path for path, text in sources.items() if quoted.search(text)}
        others = {p for p in naming if p != f"attacks/{name}.py" and not p.startswith("audit/report/sections/")}
        assert others <= _ALLOWED.get(name, set()), (name, sorted(others))


def test_report_metrics_come_from_the_section_modules_in_order(monkeypatch):
    from nasaudit.audit.report import METRICS
    from nasaudit.audit.report.metrics import CLEAN_ACC, Metric
    from nasaudit.audit.report.sections import SECTIONS, _gather_metrics

    assert METRICS[0] is CLEAN_ACC and len({m.key for m in METRICS}) == len(METRICS)
    owners = {sys.modules[s.__module__] for s in SECTIONS}
    assert {m.key for m in METRICS} == {m.key for mod in owners for m in getattr(mod, "METRICS", ())}
    # Every headline metric of an attack reads a known attack's records; the study's attacks have one.
    from nasaudit.attacks import NAMES

    assert set(NAMES) - {"trace_leak"} == {m.name for m in METRICS if m.stage == "attack"}

    def fake(module_name: str, keys: tuple[str, ...]):
        module = types.ModuleType(module_name)
        module.METRICS = tuple(Metric(k, k, "attack", "x", lambda r: None) for k in keys)

        def section(builder):
            return None

        section.__module__ = module_name
        monkeypatch.setitem(sys.modules, module_name, module)
        return section

    first, second = fake("fake_a", ("a1", "a2")), fake("fake_b", ("b1",))
    assert [m.key for m in _gather_metrics((second, first, second))] == ["b1", "a1", "a2"]
    with pytest.raises(ValueError, match="declared twice: a1"):
        _gather_metrics((first, fake("fake_c", ("a1",))))
