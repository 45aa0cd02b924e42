"""The publisher's pacer, on a fake clock (no real sleeping, no timing assertions)."""

import pytest

from vigil.apps import clients


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(clients.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(clients.time, "sleep", fake.sleep)
    return fake


def test_it_sleeps_once_per_granule_and_keeps_the_rate(clock):
    pacer = clients.Pacer(5000, granularity_s=0.001)
    ahead = []
    for _ in range(1000):  # iterations that take no time at all
        pacer.wait()
        ahead.append(1 / 5000 * pacer._n - (clock.now - 100.0))
    # about every 5th record, when 1 ms ahead (float rounding makes some the 6th)
    assert 1000 // 6 <= len(clock.sleeps) <= 200
    # the rate over the run: on schedule but for the records since the last sleep
    assert 0.2 - 0.001 <= clock.now - 100.0 <= 0.2
    assert max(ahead) < 0.001 + 1e-12  # never more than one granule ahead of it


def test_a_slow_loop_never_sleeps_and_no_rate_never_sleeps(clock):
    pacer = clients.Pacer(5000)
    for _ in range(100):
        clock.now += 0.001  # each iteration takes longer than the schedule allows
        pacer.wait()
    unpaced = clients.Pacer(0)
    for _ in range(100):
        unpaced.wait()
    assert clock.sleeps == []
