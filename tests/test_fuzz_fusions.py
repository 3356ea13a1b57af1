"""A few cases of every check of the differential fuzzer (``tests/fuzz_fusions.py``), so it keeps running; the
fuzzer itself is run for minutes by hand (``python tests/fuzz_fusions.py --seconds 600``)."""

from __future__ import annotations

import pytest
from fuzz_fusions import CHECKS, main


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_fuzz_check_passes_its_first_cases(name: str) -> None:
    for seed in range(1, 13):
        CHECKS[name](seed)


def test_fuzz_driver_reports_and_replays(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cases", "2", "--seed", "40"]) == 0
    summary = "10 cases (errors 2, imports 2, instances 2, layouts 2, queries 2), 0 failed, seeds 41..42"
    assert summary in capsys.readouterr().out
