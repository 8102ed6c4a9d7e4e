"""Fuzz of the audit-config loader: random tables, keys and types never give a traceback.

Hypothesis builds configs three ways: random documents, a valid config with random values put
at random places (the deep paths a plain random document rarely reaches), and raw bytes. Each is
written as a real TOML file and read by `load_config`, then checked by `validate_config`
(what `nasaudit audit` does before any work). The only exception allowed is InputError, whose
message is one line naming the file.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasaudit.audit import config as audit_config
from nasaudit.audit.config import AuditConfig, load_config
from nasaudit.audit.plan import validate_config
from nasaudit.infra.errors import InputError

VALID = {
    "name": "fuzz",
    "out_dir": "out",
    "seeds": [0, 1],
    "dataset": {"name": "digits", "download": False},
    "train": {"epochs": 1, "batch_size": 32},
    "model_defaults": {"nas": {"C": 4, "layers": 2}, "manual": {"width": 4}},
    "models": [{"name": "tiny_cnn"}, {"name": "d", "spec": "darts_v2", "kwargs": {"C": 4}},
               {"name": "found", "spec": "search:s", "train": {"epochs": 1}}],
    "searches": [{"name": "s", "epochs": 1, "C": 4, "layers": 2}],
    "attacks": {"pgd": {"n_inputs": 4}, "knockoff": [{"each_model": "replica", "budgets": [10]}]},
    "probes": {"gradvar": {"at_init": True, "n_samples": 4}},
}

# Keys the loader knows (so random documents hit real branches), near-misses and junk.
KNOWN = sorted(
    audit_config.TOP_KEYS | audit_config.DATASET_KEYS | audit_config.MODEL_KEYS
    | audit_config.MODEL_DEFAULT_GROUPS | audit_config.AUDIT_KEYS | set(audit_config.ATTACK_NAMES)
    | set(audit_config.PROBE_NAMES)
    | {"epochs", "lr", "C", "layers", "width", "n_step", "gamma", "n_inputs", "budgets", "replica",
       "engine", "address", "resources", "weighting", "data-dir", "manul", "seed", "hooks"}
)
KEYS = st.one_of(st.sampled_from(KNOWN), st.text(min_size=1, max_size=8))
SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(["digits", "cifar10", "resnet18", "darts_v2", "tiny_cnn", "search:s", "search:",
                     "../../x", "/", "~", "~nobody/x", "x.json", "g.py:NAME", "no", "true", "", ".."]),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=10,
)


# ------------------------------------------------------------------ a tiny TOML writer


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{_toml_string(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, but non-ASCII stays literal (JSON would
    write surrogate pairs, which TOML refuses) and DEL is escaped (TOML refuses it raw)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def to_toml(doc: dict) -> str:
    """`doc` as TOML, one `key = value` line per top-level key (inline tables and arrays)."""
    return "".join(f"{_toml_string(str(k))} = {_toml_value(v)}\n" for k, v in doc.items())


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------------- the property


def _check(tmp_path: Path, text: str | bytes) -> None:
    cfg = tmp_path / "fuzz.toml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    try:
        config = load_config(cfg)
        assert isinstance(config, AuditConfig)
        validate_config(config)
    except InputError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(str(cfg)), message
    assert not (tmp_path / "out").exists()  # loading and checking never write


def _mutate(doc: dict, path: list, value) -> dict:
    """A copy of `doc` with `value` put at `path` (indices into dicts and lists, wrapped)."""
    doc = copy.deepcopy(doc)
    node = doc
    for step in path[:-1]:
        if isinstance(node, dict) and node:
            node = node[sorted(node)[step % len(node)]]
        elif isinstance(node, list) and node:
            node = node[step % len(node)]
        else:
            break
    if isinstance(node, dict):
        keys = sorted(node)
        key = keys[path[-1] % len(keys)] if keys and path[-1] % 3 else f"k{path[-1]}"
        node[key] = value
    elif isinstance(node, list) and node:
        node[path[-1] % len(node)] = value
    return doc


FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def test_the_writer_round_trips_through_tomllib() -> None:
    assert tomllib.loads(to_toml(VALID)) == VALID
    assert _same(tomllib.loads(to_toml({"x": [float("nan"), {"a b": "\x1b\n"}]})),
                 {"x": [float("nan"), {"a b": "\x1b\n"}]})


def test_the_valid_base_config_loads_and_validates(tmp_path: Path) -> None:
    (tmp_path / "fuzz.toml").write_text(to_toml(VALID))
    config = load_config(tmp_path / "fuzz.toml")
    validate_config(config)
    assert [m.label for m in config.models] == ["tiny_cnn", "d", "found"]


@FUZZ
@given(doc=st.dictionaries(KEYS, VALUES, max_size=6))
def test_random_documents_never_crash(tmp_path_factory: pytest.TempPathFactory, doc: dict) -> None:
    text = to_toml(doc)
    assert _same(tomllib.loads(text), {str(k): v for k, v in doc.items()})
    _check(tmp_path_factory.mktemp("fuzz"), text)


@FUZZ
@given(path=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=4), value=VALUES)
def test_a_valid_config_with_a_random_value_anywhere_never_crashes(
    tmp_path_factory: pytest.TempPathFactory, path: list, value
) -> None:
    _check(tmp_path_factory.mktemp("fuzz"), to_toml(_mutate(VALID, path, value)))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.binary(max_size=200))
def test_random_bytes_never_crash(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    _check(tmp_path_factory.mktemp("fuzz"), data)
