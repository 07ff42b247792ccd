"""The soak's short form: every fault at least once; every occurrence accounted for, nothing
left running, no descriptor leaked, no process left behind."""

import pytest

from benchmarks.soak import FAULTS, run_soak

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_a_short_soak_with_every_fault_accounts_for_every_occurrence():
    report = await run_soak(seconds=14, workers=2, fault_every=2.0, seed=3)
    assert set(report.faults) == set(FAULTS) and min(report.faults.values()) >= 1, report.faults
    assert report.dues > 0 and report.sums_match, report
    assert report.lost > 0 and report.failed + report.timed_out > 0  # the faults did bite
    assert report.workers_replaced >= 3 and report.dispatchers_replaced >= 1
    assert not report.orphans
    start = {usage.role: usage.fds for usage in report.usage_start}
    end = {usage.role: usage.fds for usage in report.usage_end}
    assert end["main"] == start["main"], (start, end)  # no descriptor leaked by the restarts
