"""Exceptions meant for people.

Every error a user can cause (bad config, bad data, unknown plugin name, missing
package) is a subclass of :class:`LmforgeError`. The CLI prints its message and
exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class LmforgeError(Exception):
    """Base class of user-facing errors; the message is the whole story."""


class ConfigError(LmforgeError):
    """A config key, value or combination is invalid. The message names the key path."""


class PluginError(LmforgeError):
    """A plugin failed to load or register, or a name is unknown."""


class PluginConflictError(PluginError):
    """Two plugin distributions registered the same name."""


class DataError(LmforgeError):
    """A data file or record is unusable. The message names file, line and problem."""


class CapabilityError(LmforgeError):
    """A family cannot support a requested feature; the message gives the family's reason."""


class MissingDependencyError(LmforgeError):
    """An optional package a feature needs is not installed."""


def did_you_mean(name: str, candidates) -> str:
    """Return ' (did you mean 'x'?)' for the closest candidate, or ''."""
    import difflib

    match = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def user_errors(fn):
    """Turn :class:`LmforgeError` into one ``error: ...`` line on stderr and exit status 2 (for CLI commands)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LmforgeError as exc:
            import sys

            import click

            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper
