"""The one error a config raises, whatever part of it is wrong."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file or key and the fix."""
