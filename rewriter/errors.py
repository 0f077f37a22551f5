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


def exit_status(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, message) of an error the tool reports as one line: its own
    (`RewriterError`), the cost model's about its input (`rewriter.cost.user_errors`: exit
    2), and the impossible layer geometry (channels not a multiple of the groups, say) that
    the cost model's OpSpec refuses and onnx's checker lets through (a bad model, exit 2).
    None for anything else: a bug. The CLI and optimize-many's rows both report by it."""
    from rewriter.cost import user_errors

    if isinstance(exc, RewriterError):
        return exc.exit_code, str(exc)
    if isinstance(exc, user_errors()):
        return 2, str(exc)
    if isinstance(exc, ValueError) and str(exc).startswith("OpSpec"):
        return 2, f"the model's layers are inconsistent: {exc}"
    return None
