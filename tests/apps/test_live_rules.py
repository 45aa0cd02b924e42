"""Live ruleset and rates table swaps on the embedded broker: one switch point each, nothing
lost or doubled."""

from __future__ import annotations

import time

import pytest
import yaml
from typer.testing import CliRunner

from tests.apps.helpers import collect
from tests.conftest import worker_env
from tests.reference import reference_rates
from vigil.apps.cli import app
from vigil.apps.clients import publish
from vigil.apps.process import WorkerProcess
from vigil.streams.features.library import FEATURE_SPEC
from vigil.streams.sources import GeneratorConfig, TransactionGenerator

pytestmark = pytest.mark.integration
runner = CliRunner()
LOG10 = FEATURE_SPEC.index("amount_log10")
# every currency the generator pays in, at other rates than the built-in table's
TREASURY = {
    "name": "treasury",
    "version": "7",
    "base": "EUR",
    "rates": {c: r * 1.5 for c, r in reference_rates().items() if c != "EUR"},
}
RATES_USED = {
    "reference:2026-12": reference_rates(),
    "treasury:7": {"EUR": 1.0, **TREASURY["rates"]},
}

V2 = {
    "ruleset": "seed",
    "version": "3",
    "rules": [
        {
            "name": "any_wire",
            "typology": "test",
            "when": "channel == 'wire'",
            "score": 0.6,
            "reason": "wire of {amount:.2f}",
        }
    ],
}
SHADOW = {
    "ruleset": "candidate",
    "version": "9",
    "mode": "shadow",
    "rules": [
        {
            "name": "mid_amount",
            "typology": "test",
            "when": "amount > 100",
            "score": 0.95,
            "reason": "over 100",
        }
    ],
}


def test_ruleset_swaps_mid_stream_at_one_point(settings, bootstrap, tmp_path, monkeypatch):
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", bootstrap)
    monkeypatch.setenv("VIGIL_NAMESPACE", settings.namespace)
    gen = TransactionGenerator(GeneratorConfig(seed=21, accounts=100)).take(6000)
    topic = settings.topics.transactions
    with WorkerProcess("risk", worker_env(settings), tmp_path / "worker.log") as worker:
        publish(bootstrap, topic, [(g.key, g.value) for g in gen[:3000]], rate=3000)
        # the worker scores under seed:2 (the rules topic is empty when it starts)...
        started = collect(
            bootstrap,
            settings.topics.scores,
            lambda got: len(got) >= 1000,
            alive=lambda: worker.running,
        )
        assert {s["ruleset_version"] for s in started} == {"seed:2"}
        # an invalid document is refused by the CLI, and by the worker if sent anyway
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**V2, "rules": [{**V2["rules"][0], "when": "chanel == 1"}]}))
        refused = runner.invoke(app, ["rules", "publish", str(bad)])
        assert refused.exit_code == 1 and "did you mean 'channel'" in refused.output
        publish(bootstrap, settings.topics.rules, [("seed", bad.read_bytes())])
        # records that used to stop the followers for good (and again after each restart)
        bombs = [("seed", b"[" * 5000 + b"]" * 5000), ("seed", b"[" * 100_000)]
        publish(bootstrap, settings.topics.rules, bombs)
        manifest = [("vigil-release", b"x"), ("vigil-part", b"manifest")]
        publish(bootstrap, settings.topics.models, [("risk", b"[" * 100_000, manifest)])
        for doc, name in ((V2, "v2.yaml"), (SHADOW, "shadow.yaml")):
            path = tmp_path / name
            path.write_text(yaml.safe_dump(doc))
            result = runner.invoke(app, ["rules", "publish", str(path)])
            assert result.exit_code == 0, result.output
        # a rates table in another base is refused by the CLI and by the worker; a good one
        # converts from the next micro-batch on
        in_usd = tmp_path / "usd.yaml"
        in_usd.write_text(yaml.safe_dump({**TREASURY, "base": "USD", "rates": {"EUR": 1.16}}))
        refused = runner.invoke(app, ["rates", "publish", str(in_usd)])
        assert refused.exit_code == 1 and "the reporting currency is EUR" in refused.output
        publish(bootstrap, settings.topics.rates, [("treasury", in_usd.read_bytes())])
        good = tmp_path / "treasury.yaml"
        good.write_text(yaml.safe_dump(TREASURY))
        result = runner.invoke(app, ["rates", "publish", str(good)])
        assert result.exit_code == 0, result.output
        publish(bootstrap, topic, [(g.key, g.value) for g in gen[3000:]], rate=3000)
        scores = collect(
            bootstrap,
            settings.topics.scores,
            lambda got: len(got) >= len(gen),
            alive=lambda: worker.running,
        )
        time.sleep(0.5)
    assert sorted(s["tx_id"] for s in scores) == sorted(g.tx["tx_id"] for g in gen)  # once each
    v1 = [s for s in scores if s["ruleset_version"] == "seed:2"]
    v2 = [s for s in scores if s["ruleset_version"] == "seed:3"]
    assert v1 and v2 and len(v1) + len(v2) == len(scores)
    assert max(s["processed_ms"] for s in v1) <= min(s["processed_ms"] for s in v2)
    channel = {g.tx["tx_id"]: g.tx["channel"] for g in gen}
    for s in v2:  # the new rules decide: exactly the wires fire
        want = ["any_wire"] if channel[s["tx_id"]] == "wire" else []
        assert [h["rule"] for h in s["rule_hits"]] == want
    shadowed = [s for s in scores if "shadow" in s]
    assert shadowed, "the shadow ruleset was never applied"
    for s in shadowed:
        assert s["shadow"]["ruleset_version"] == "candidate:9"
        assert s["decision"] != "block"  # shadow alerts never become real decisions
    assert any(s["shadow"]["decision"] == "block" for s in shadowed)
    # one switch point for the rates too, and the amounts the features saw follow it
    by_table = {t: [s for s in scores if s["rates_version"] == t] for t in RATES_USED}
    assert all(by_table.values()) and sum(map(len, by_table.values())) == len(scores)
    assert max(s["processed_ms"] for s in by_table["reference:2026-12"]) <= min(
        s["processed_ms"] for s in by_table["treasury:7"]
    )
    tx = {g.tx["tx_id"]: g.tx for g in gen}
    for name, rates in RATES_USED.items():
        for s in by_table[name]:
            want = tx[s["tx_id"]]["amount"] * rates[tx[s["tx_id"]]["currency"]]
            assert 10 ** s["features"][LOG10] == pytest.approx(want, rel=1e-9)
    alerts = collect(bootstrap, settings.topics.alerts, lambda got: False, timeout_s=2)
    assert not any(h["rule"] == "mid_amount" for a in alerts for h in a["rule_hits"])
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "refused, current rules stay" in log and "did you mean 'channel'" in log
    assert log.count("nested over 16 levels") == 2
    assert "unreadable manifest: maximum recursion depth" in log
    assert "stopped" not in log and "RecursionError" not in log
    assert "rates table at" in log and "in USD, but the reporting currency is EUR" in log
