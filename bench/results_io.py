"""Where the bench scripts put their results: bench/results/<prefix><date>-<host>.json."""

from __future__ import annotations

import datetime
import json
import socket
from pathlib import Path

RESULTS = Path(__file__).with_name("results")


def stamp() -> dict:
    """The date and host every result file starts with."""
    return {"date": datetime.date.today().isoformat(), "host": socket.gethostname()}


def result_path(results: dict, prefix: str = "", suffix: str = ".json") -> Path:
    RESULTS.mkdir(exist_ok=True)
    return RESULTS / f"{prefix}{results['date']}-{results['host']}{suffix}"


def write_results(results: dict, prefix: str = "") -> Path:
    out = result_path(results, prefix)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return out
