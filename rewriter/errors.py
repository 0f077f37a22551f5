"""Errors a user can act on.

Every error the CLI reports as one line derives from `RewriterError`; anything else that
escapes is a bug. `exit_code` follows the CLI's contract: 2 bad input, 1 failed
verification, 3 no candidate within budget.
"""

from __future__ import annotations


class RewriterError(Exception):
    """An error with a message meant for the user, and the CLI exit code it maps to."""

    exit_code = 2


class BadInputError(RewriterError):
    """The model, a path, an option or a shape given by the user cannot be used."""

    exit_code = 2


class UnsupportedError(BadInputError):
    """The model uses something this tool does not handle (an op, a dtype, a dynamic dim)."""


class VerificationError(RewriterError):
    """A rewritten model does not match the original within tolerance, or cannot be checked."""

    exit_code = 1


class BudgetError(RewriterError):
    """No candidate meets the user's budget."""

    exit_code = 3


class MissingExtraError(UnsupportedError):
    """A feature needs an optional extra that is not installed (PyTorch for `[train]`)."""
