"""Errors meddistill reports to users as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations


class MeddistillError(Exception):
    """Base class for every error that is the user's input, not a bug."""


class DataError(MeddistillError):
    """A dataset file is missing, corrupt, truncated or does not match its MD5."""


class ConfigError(MeddistillError):
    """A configuration value is invalid (unknown key, bad type, impossible ipc...)."""


class ArtifactError(MeddistillError):
    """A run folder, expert buffer or synthetic set is missing or unreadable."""


class RunStopped(MeddistillError):
    """A run stopped before its last iteration; its checkpoint lets it resume."""
