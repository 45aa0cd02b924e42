"""Event sources: the seeded synthetic generator and JSONL replay."""

from vigil.streams.sources.replay import read_jsonl, read_labels
from vigil.streams.sources.synthetic import (
    MALFORMED_KINDS,
    Generated,
    GeneratorConfig,
    TransactionGenerator,
)

__all__ = [
    "MALFORMED_KINDS",
    "Generated",
    "GeneratorConfig",
    "TransactionGenerator",
    "read_jsonl",
    "read_labels",
]
