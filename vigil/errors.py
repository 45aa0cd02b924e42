"""The root of Vigil's exceptions.

Every error Vigil raises on purpose — a bad argument or setting, input data it cannot use,
something that is not there, a refused release, a broker that cannot be reached — is a
:class:`VigilError`, with one subclass per package concept (``RuleError``,
``ReleaseError``, ``BrokerError``, ...). The CLI prints these as one line; anything else is
a bug and is shown with its traceback.

The generic kinds also derive from the builtin a Python caller would expect (a
:class:`UsageError` is a ``ValueError``), so ``except ValueError`` keeps working.

>>> issubclass(UsageError, VigilError) and issubclass(UsageError, ValueError)
True
"""

__all__ = ["DataError", "NotFoundError", "UsageError", "VigilError"]


class VigilError(Exception):
    """An expected failure, with a message that says what and where."""


class UsageError(VigilError, ValueError):
    """An argument or setting outside what Vigil accepts."""


class DataError(VigilError, ValueError):
    """Input data Vigil cannot use: a malformed file, too few labels, an unknown record."""


class NotFoundError(VigilError, LookupError):
    """A model, topic or file that should be there and is not."""
