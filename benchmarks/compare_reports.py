"""Two folders of evaluation reports (``evaluate ... --json``) compared number by number, timings
and paths left out: how a change that must not move any result is checked.

    git worktree add /tmp/base <commit>
    (cd /tmp/base && PYTHONPATH=/tmp/base python -m compress3d_lite.cli evaluate generate \\
        --split val --json /tmp/a/generate.json)
    python -m compress3d_lite.cli evaluate generate --split val --json /tmp/b/generate.json
    python benchmarks/compare_reports.py /tmp/a /tmp/b        # generate.json: IDENTICAL (...)

Exit code 0 when every report of the first folder has an identical twin in the second.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LEFT_OUT = ("second", "timing", "time", "path", "json", "per_image", "machine", "command", "date", "version")


def clean(x):
    """The report without its timings (keys naming seconds or timings) and with paths blanked."""
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items() if not any(word in k.lower() for word in LEFT_OUT)}
    if isinstance(x, list):
        return [clean(v) for v in x]
    if isinstance(x, str) and "/" in x and Path(x).is_absolute():
        return "<path>"
    return x


def differences(a, b, where: str = "") -> list:
    """'where: a != b' for every leaf where two reports differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in differences(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {str(a)[:80]} != {str(b)[:80]}"]


def main(argv=None) -> int:
    first, second = (Path(a) for a in (argv or sys.argv[1:]))
    same = True
    for report in sorted(first.glob("*.json")):
        a = clean(json.loads(report.read_text()))
        b = clean(json.loads((second / report.name).read_text()))
        found = differences(a, b)
        print(f"{report.name}: {'IDENTICAL' if not found else f'{len(found)} differences'} "
              f"({len(json.dumps(a))} characters compared)")
        for line in found[:10]:
            print("   ", line)
        same = same and not found
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
