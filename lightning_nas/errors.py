"""Errors that a user fixes, not a bug: the ``lightning-nas`` CLI prints their one-line message and exits 2.

Raise these for bad or missing input (a file another recipe writes, an arch or table of another space, a
setting out of range). Their message is one line: the thing, what is wrong, and the command or setting that
fixes it. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "MissingFileError", "PrerequisiteError", "UserError", "find_user_error"]


class UserError(Exception):
    """Input the user can fix; its message is the whole report."""


class PrerequisiteError(UserError, ValueError):
    """A file or setting that an earlier step makes is of the wrong kind, space, device or settings."""


class ConfigError(UserError, ValueError):
    """A setting out of its range (a fraction above 1, a negative size)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file that an earlier step (or the user) must make does not exist."""


def find_user_error(err: BaseException | None) -> UserError | None:
    """The first :class:`UserError` in ``err``'s chain of causes and contexts (jsonargparse wraps ours)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
