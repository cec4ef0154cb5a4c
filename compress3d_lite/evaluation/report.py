"""What every evaluator's report shares: strict-JSON cleaning, the atomic write, target checks,
and the worst rows to look at."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.io import atomic_write_bytes


def clean(x):
    """Round floats for the JSON file; inf / nan become null (strict JSON)."""
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return round(float(x), 5) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def check_targets(values: dict, targets: dict) -> dict:
    """{name: {"target": ">= 0.9", "value", "pass"}} for ``targets`` {name: (">=" or "<=", bound)}."""
    out = {}
    for name, (op, bound) in targets.items():
        v = values.get(name)
        ok = v is not None and (v >= bound if op == ">=" else v <= bound)
        out[name] = {"target": f"{op} {bound}", "value": v, "pass": bool(ok)}
    return out


def target_line(name: str, t: dict) -> str:
    value = t["value"] if not isinstance(t["value"], float) else f"{t['value']:.4f}"
    return f"target {name:<13} {t['target']:<8} {value}  {'PASS' if t['pass'] else 'FAIL'}"


def worst(values, k: int = 3, higher_is_better: bool = True) -> list:
    """Indices of the ``k`` worst of ``values`` (one number per held-out object), worst first. A
    missing value (None or nan: no mesh at all, say) counts as worse than any number."""
    def badness(i):
        v = values[i]
        missing = v is None or not np.isfinite(v)
        return (not missing, 0.0 if missing else (v if higher_is_better else -v))
    return sorted(range(len(values)), key=badness)[:k]


def write_report(report: dict, path) -> Path:
    """The report as strict JSON, written atomically."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(report, indent=1, allow_nan=False) + "\n").encode())
    return path
