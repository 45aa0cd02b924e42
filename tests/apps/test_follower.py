"""The model follower's start (apps/follower.py): the model on disk is loaded in its
thread before the topic is read, and nothing that loading does stops the follower."""

from __future__ import annotations

from collections import Counter

import pytest

from vigil.apps.broker import ensure_all
from vigil.apps.follower import ModelFollower

pytestmark = pytest.mark.integration


def _follower(settings, initial, installed):
    ensure_all(settings.kafka_bootstrap, settings.topics, settings.partitions)
    return ModelFollower(
        settings.kafka_bootstrap,
        settings.topics.models,
        "risk",
        settings.release_trusted(),
        check_spec=lambda _spec: None,
        install=lambda model, release: installed.append((model, release)),
        serving=lambda: "rules-only",
        counters=Counter(),
        initial=initial,
    )


def test_the_model_on_disk_is_installed_before_the_follower_reads_the_topic(settings):
    installed: list = []
    follower = _follower(settings, lambda: "disk-model", installed)
    follower.start()
    try:
        assert follower.loaded.wait(30) and follower.caught_up.wait(30)
        assert installed == [("disk-model", None)]  # no release: from disk, said as None
    finally:
        follower.stop()
        follower.join(10)


@pytest.mark.parametrize("initial", [lambda: None, lambda: 1 / 0])
def test_no_model_or_a_failed_load_leaves_what_serves_and_the_topic_followed(settings, initial):
    installed: list = []
    follower = _follower(settings, initial, installed)
    follower.start()
    try:
        assert follower.loaded.wait(30) and follower.caught_up.wait(30)
        assert installed == [] and follower.is_alive()
    finally:
        follower.stop()
        follower.join(10)
