"""Reading JSON files a user gave us, with one clear error naming the file and the position."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from odinw_bench.errors import UserError


def read_json_file(path: str | Path, *, what: str = "file") -> Any:
    """Parse a JSON file.

    Args:
        path: The file.
        what: What the file is, for messages (``"predictions file"``, ``"run record"``).

    Raises:
        UserError: Naming the file: missing, unreadable, not UTF-8, or malformed JSON (line, column, character).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark written by some tools
    except FileNotFoundError:
        raise UserError(f"{what} not found", path=path) from None
    except UnicodeDecodeError as err:
        raise UserError(f"not UTF-8 text (byte {err.start})", path=path) from None
    except OSError as err:
        raise UserError(f"cannot read the {what}: {err.strerror or err}", path=path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"malformed JSON at line {err.lineno}, column {err.colno} (char {err.pos}): {err.msg}",
                        path=path) from None
