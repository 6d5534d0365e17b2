"""User-facing errors.

Every failure a user can cause (bad file, bad field, bad CLI value, missing data) raises :class:`UserError`.
The CLI turns it into one clear message on stderr and exit code 2, with no traceback unless ``--debug``.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """An error caused by user input: a file, a field of a file, or a command-line value.

    Args:
        message: What is wrong and, where possible, how to fix it.
        path: The file concerned, if any; it is named first in the message.
        field: The field (dotted key, JSON path, CLI option) concerned, if any.
    """

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.path:
            where.append(self.path)
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message
