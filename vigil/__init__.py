"""Vigil: real-time risk and inspection on Kafka streams.

The code lives in three packages, installed under this one so that the distribution claims
no generic top-level names: ``vigil.streams`` (stream logic without Kafka), ``vigil.models``
(machine learning) and ``vigil.apps`` (the processes a user starts). Their folders are the
repository's ``streams/``, ``models/`` and ``apps/``.
"""

from vigil.errors import DataError, NotFoundError, UsageError, VigilError

__all__ = ["DataError", "NotFoundError", "UsageError", "VigilError", "__version__"]
__version__ = "0.1.0"
