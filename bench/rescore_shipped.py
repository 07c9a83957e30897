"""The shipped models evaluated again with the `cpu` study's settings, every number set beside a
baseline: a change to sampling or evaluation that should leave the study's scores alone must print
no difference. The baseline is an evaluation by another version of mnistgen on the same weights
(``--write``, run under that version), or else the shipped metrics.json, which was measured on the
study's float32 weights before they were stored in float16 (so it differs in the last digits).

    PYTHONPATH=OLD_CHECKOUT/src python bench/rescore_shipped.py --write /tmp/before.json
    python bench/rescore_shipped.py --baseline /tmp/before.json [--models ddpm,cfg]

Writes bench/results/rescore-<date>-<host>.json (with a baseline).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import mnistgen
from mnistgen import kinds
from mnistgen.api import run_path  # in every version: the baseline may come from an older one
from mnistgen.study import SETTINGS
from results_io import stamp, write_results


def rescore(name: str, out: Path) -> dict:
    settings = SETTINGS["cpu"]
    kind = kinds.get(name)
    sweep = kind.sweep_weights or None
    samplers = getattr(kind, "study_samplers", ()) or None  # the steps sweep, where this version has one
    steps = dict(steps_sweep=settings.steps_sweep, samplers=samplers) if samplers else {}
    metrics = mnistgen.evaluate(f"pretrained:{name}", out=out / name, n=settings.n_samples, iwae_k=settings.iwae_k,
                                guidance_sweep=sweep, sweep_samples=settings.sweep_samples if sweep or samplers else None,
                                device="cpu", progress=False, **steps)
    return metrics.to_json()


def _point_name(point: dict) -> str:
    """A sweep point's key: its weight (guidance sweep) or its sampler, grid, power and steps (steps sweep)."""
    if "grid" not in point:
        return f"w={point.get('guidance')}"
    return f"{point['sampler']}:{point['grid']}:{point.get('grid_power')}:{point['steps']}"


def numbers(record: dict, prefix: str = "") -> dict[str, float]:
    """Every number in a metrics record, by a dotted key (sweep points by their weight, or sampler and steps)."""
    found = {}
    for key, value in record.items():
        if isinstance(value, bool) or key in ("evaluation_seconds", "sample_seconds", "seconds_per_100_samples"):
            continue
        if isinstance(value, (int, float)):
            found[prefix + key] = value
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for point in value:
                found.update(numbers(point, f"{prefix}{key}[{_point_name(point)}]."))
        elif isinstance(value, list):
            found.update({f"{prefix}{key}[{i}]": v for i, v in enumerate(value)})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ddpm,cfg")
    parser.add_argument("--write", type=Path, default=None, help="write this version's metrics here and stop")
    parser.add_argument("--baseline", type=Path, default=None, help="a file --write made (default: metrics.json)")
    args = parser.parse_args()
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    found, rows = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            found[name] = rescore(name, Path(tmp))
    if args.write is not None:
        args.write.write_text(json.dumps(found, indent=1))
        print(f"wrote {args.write}")
        return
    for name, record in found.items():
        before = baseline[name] if baseline else json.loads((run_path(f"pretrained:{name}") / "metrics.json").read_text())
        shipped, again = numbers(before), numbers(record)
        differ = {k: (shipped.get(k), again.get(k)) for k in sorted(set(shipped) | set(again))
                  if shipped.get(k) != again.get(k)}
        rows[name] = {"compared": len(set(shipped) & set(again)), "different": differ}
        print(f"{name}: {len(set(shipped) & set(again))} numbers compared, {len(differ)} differ", flush=True)
        for key, (a, b) in differ.items():
            print(f"    {key}: before {a}, now {b}", flush=True)
    results = {**stamp(), "baseline": str(args.baseline or "the shipped metrics.json"), "models": rows}
    print(f"wrote {write_results(results, 'rescore-')}")


if __name__ == "__main__":
    main()
