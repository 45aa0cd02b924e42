"""The refresh job trains with the rates table the workers convert with: the newest one
on the rates topic that they would install, else VIGIL_RATES_PATH, else the built-in one
(real broker)."""

import json

import pytest

from vigil.apps.broker import ensure_one
from vigil.apps.clients import publish
from vigil.apps.trainer import rates_in_force

pytestmark = pytest.mark.integration


def table(version: str, base: str = "EUR", **rates: float) -> tuple[str, bytes]:
    doc = {"name": "treasury", "version": version, "base": base, "rates": rates}
    return "treasury", json.dumps(doc).encode()


def test_the_newest_table_the_workers_would_install(settings, bootstrap, tmp_path):
    assert rates_in_force(settings, bootstrap) is None  # no topic, no file: the built-in one
    path = tmp_path / "rates.yaml"
    path.write_text('name: file\nversion: "1"\nbase: EUR\nrates: {USD: 0.9}\n')
    settings = settings.model_copy(update={"rates_path": path})
    assert rates_in_force(settings, bootstrap).label == "file:1"
    ensure_one(bootstrap, settings.topics, settings.topics.rates)
    records = [
        table("1", USD=0.8),
        table("2", USD=0.7),
        table("3", base="USD", EUR=1.2),  # another base: refused by the workers
        ("treasury", b"{not a table"),
        table("4", USD=-1.0),  # invalid
    ]
    assert not publish(bootstrap, settings.topics.rates, records).failed
    got = rates_in_force(settings, bootstrap)
    assert got.label == "treasury:2" and got.rates["USD"] == 0.7
