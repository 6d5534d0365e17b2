"""What a learning-rate / weight-decay search is, as data: the searchable names, the grid, and what a searched
run's id says about its search (:mod:`odinw_bench.runs.search` runs it)."""

from __future__ import annotations

from typing import Any

from odinw_bench.errors import UserError

#: What ``--search`` accepts, and the config key each name stands for.
SEARCHABLE = {"lr": "lr", "wd": "weight_decay"}
#: The grid, as data (recorded in a searched run's identity).
GRID = {"lr_factors": (1.0, 0.01, 0.1, 10.0, 100.0), "wd_factors": (1.0, 0.0), "refine_exponents": (-0.5, 0.5)}
DEFAULT_SEARCH_EPOCHS = 4


def parse_search(text: str | None) -> tuple[str, ...]:
    """``"lr,wd"`` -> ``("lr", "wd")``; empty or None -> ``()``.

    Raises:
        UserError: For a name that is not searchable.
    """
    names = tuple(dict.fromkeys(n.strip() for n in (text or "").split(",") if n.strip()))
    unknown = [n for n in names if n not in SEARCHABLE]
    if unknown:
        raise UserError(f"cannot search {', '.join(unknown)} (searchable: {', '.join(SEARCHABLE)})", field="--search")
    return names


def search_identity(req: Any) -> dict[str, Any]:
    """What a searched run's id says about its search (the values it finds are in its record, not its id)."""
    return {"params": list(req.search), "epochs": req.search_epochs, "grid": GRID}
