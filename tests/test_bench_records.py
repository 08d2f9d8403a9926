"""Every record committed to the repository (results, records of repeats, stress ramps, under docs/ and
bench/baseline/) still decodes into the typed records of bench/result.py, and loses nothing on the way: each key
the file holds comes back, with its value, when the decoded record is written again. msgspec ignores a key no
field is named after, so a field renamed away from the JSON's key would otherwise pass unnoticed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from bench.result import IdleRecord, Repeats, Result, StressRecord, load_any
from tests.server_process import ROOT

COMMITTED = sorted([*ROOT.glob("docs/**/*.json"), *ROOT.glob("bench/baseline/*.json")])


def _kept(original: Any, written: Any, where: str = "$") -> list[str]:
    """Where ``written`` lost or changed something ``original`` held (new keys in ``written`` are fine)."""
    if isinstance(original, dict):
        if not isinstance(written, dict):
            return [f"{where}: an object became {written!r:.40}"]
        lost = [f"{where}.{k}: missing" for k in original if k not in written]
        return lost + [m for k, v in original.items() if k in written for m in _kept(v, written[k], f"{where}.{k}")]
    if isinstance(original, list):
        if not isinstance(written, list) or len(written) != len(original):
            return [f"{where}: a list of {len(original)} became {written!r:.40}"]
        return [m for i, (a, b) in enumerate(zip(original, written, strict=True)) for m in _kept(a, b, f"{where}[{i}]")]
    return [] if original == written else [f"{where}: {original!r} became {written!r}"]


def test_the_repository_holds_records_of_every_kind() -> None:
    kinds = {type(load_any(path)) for path in COMMITTED}
    assert kinds == {Result, Repeats, StressRecord, IdleRecord}
    assert sum(isinstance(load_any(path), StressRecord) for path in COMMITTED) >= 10


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_committed_record_decodes_and_loses_nothing(path: Path, tmp_path: Path) -> None:
    record = load_any(path)
    written = msgspec.json.encode(record)
    original, decoded = msgspec.json.decode(path.read_bytes()), msgspec.json.decode(written)
    if isinstance(original, list):  # the early unversioned list of ramps: written again as a stress record
        decoded = decoded["ramps"]
    assert _kept(original, decoded) == []
    again = tmp_path / path.name
    again.write_bytes(written)
    assert msgspec.json.encode(load_any(again)) == written, "what is written decodes back to the same record"
