"""reports/quantized_base.md states what its record (reports/quantized_base.json) holds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_quantized_base_report_is_its_record() -> None:
    spec = importlib.util.spec_from_file_location("quantized_base", ROOT / "benchmarks" / "quantized_base.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    record = json.loads((ROOT / "reports" / "quantized_base.json").read_text())
    report = (ROOT / "reports" / "quantized_base.md").read_text()
    assert bench.table(record) in report  # the table is the script's, unedited
    for name in ("int8", "nf4"):
        again = record["settings"][name]["memory_remeasured"]
        row = f"| {name} | {record['settings'][name]['base_mib']:.0f} | {again['base_mib']:.0f} | {again['commit']} |"
        assert row in report, row
