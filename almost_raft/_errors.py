"""Exception groups: let a single exception out as itself.

anyio's task groups wrap every exception in an ``ExceptionGroup``, even a lone
one raised by the body of ``async with``.  A context manager that owns a task
group (``TcpTransport``, ``leading``) would then change what its user's own
code raises: ``except KeyError`` around it would no longer catch the
``KeyError`` raised inside.  These helpers take the one exception out of a
group that holds only one, which is what users of a context manager expect;
a group of two or more exceptions stays a group.
"""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # pragma: no cover - anyio depends on the backport there
    from exceptiongroup import BaseExceptionGroup


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """Every exception inside *exc*, nested groups flattened; ``[exc]`` when it is not a group."""
    if isinstance(exc, BaseExceptionGroup):
        found: list[BaseException] = []
        for inner in exc.exceptions:
            found += leaf_exceptions(inner)
        return found
    return [exc]


def raise_single(exc: BaseException) -> None:
    """Raise the one exception inside the group *exc* as itself; return if *exc* holds more, or is no group.

    Call it in an ``except`` block and re-raise after it (``raise``) for the
    other cases.  The exception keeps its own traceback, cause and context:
    the group it was wrapped in does not become its context.
    """
    if not isinstance(exc, BaseExceptionGroup):
        return
    leaves = leaf_exceptions(exc)
    if len(leaves) != 1:
        return
    (single,) = leaves
    context, suppress = single.__context__, single.__suppress_context__
    try:
        raise single
    finally:
        # ``raise`` inside an ``except`` block made the group its context.
        single.__context__ = context
        single.__suppress_context__ = suppress
        del single, leaves
