"""The error hierarchy of mshare-lab.

Two families, kept apart the way tuxmake keeps them: a ``UserError`` is something the
person running the lab can fix (bad input, a missing limit, a patch that does not apply);
an ``InfraError`` is the lab's machinery failing (libvirt, QEMU, a timeout). Every error
carries its cause (``raise X(...) from exc``) and renders as one line for the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class LabError(Exception):
    """Base of every error mshare-lab raises on purpose."""

    #: process exit code the CLI uses for this family
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


# --- user errors: fixable by whoever runs the lab -------------------------------------

class UserError(LabError):
    """Bad input or a host setting the user must change."""

    exit_code = 2


@dataclass(frozen=True)
class Location:
    """Where in an input file something is wrong (1-based line, as editors count)."""

    path: Path | str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = str(self.path) if self.path else "<input>"
        return f"{where}:{self.line}" if self.line else where


class ConfigError(UserError):
    """An input file (matrix, fragment, option) is malformed; says where and what to do."""

    def __init__(self, message: str, *, location: Location | None = None, hint: str | None = None):
        self.location = location
        prefix = f"{location}: " if location else ""
        super().__init__(prefix + message, hint=hint)


class LimitError(UserError):
    """A host limit (RLIMIT_NPROC, huge pages, guest RAM...) stops the scenario."""


class KernelBuildError(UserError):
    """The kernel inputs are wrong: a patch does not apply, a config option was dropped."""


class PatchError(KernelBuildError):
    pass


class ConfigDroppedError(KernelBuildError):
    pass


class NotFoundError(UserError):
    """A named kernel, image, guest or result does not exist."""


# --- infrastructure errors: the lab's machinery failed --------------------------------

class InfraError(LabError):
    """libvirt, QEMU, the network or a tool failed: never counted as a kernel result."""


class ProvisionError(InfraError):
    pass


class BootError(InfraError):
    pass


class LabTimeoutError(InfraError):
    """A step did not finish in time (named so it does not shadow the builtin)."""


class ToolError(InfraError):
    """An external command (make, debootstrap, ansible...) failed."""

    def __init__(self, message: str, *, log: Path | None = None, hint: str | None = None):
        self.log = log
        if log:
            message = f"{message}; log: {log}"
        super().__init__(message, hint=hint)
