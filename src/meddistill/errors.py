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


class PrivacyError(MeddistillError):
    """Something tried to read data a differentially private run may not touch (the real train
    images, outside the DP mechanism that accounts for them)."""


class RunStopped(MeddistillError):
    """A run stopped before its last iteration; its checkpoint lets it resume."""


class WriteError(ArtifactError):
    """A file could not be written for lack of room or permission (a full disk or quota, a
    read-only file system, a folder the process may not write to). An atomic write replaced
    nothing; an append left at most a torn line, which readers skip."""

    def __init__(self, path: object, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(
            f"cannot write {path}: {reason}; free space or choose a writable folder, then run the same command "
            "again (finished work is kept)"
        )

    def __reduce__(self) -> tuple:  # raised in a worker process, re-raised in the parent
        return type(self), (self.path, self.reason)
