"""Typed result records: every attack and probe returns one, and the audit stores it as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, TypeVar

T = TypeVar("T", bound="Record")


def _plain(value: Any) -> Any:
    """Convert tensors, numpy values, tuples and nested records to JSON-ready Python values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # torch.Tensor and numpy arrays / scalars
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


@dataclasses.dataclass
class Record:
    """Base for result records. Subclasses are dataclasses with a `kind` class attribute."""

    kind = "record"

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values, plus "kind"."""
        return {"kind": self.kind, **_plain(self)}

    def to_json(self, indent: int | None = 2) -> str:
        """The record as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """Rebuild a record from `to_dict()` output (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
