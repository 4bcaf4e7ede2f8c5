"""``ecomtl gate CANDIDATE --against REFERENCE [--tolerance ...]``: may this bundle
replace that one? Head by head, on the same split.

Either side is a bundle directory (scored here with ``evaluate_bundle``, both on the same
data root and split) or a metrics JSON: ``ecomtl baseline --out`` (``{task: {...,
"score"}}``), ``ecomtl evaluate`` output (``{"tasks": ...}``) or a bundle's
``metrics.json`` (``{"validation": ...}``). Each head is compared on its ``score`` (the
task's selection metric, ``tasks.<t>.metric``):

- ``pass``: candidate ≥ reference − tolerance;
- ``REFUSE``: it loses more than the tolerance, or the two were scored on different
  metrics, or the candidate lacks a head the reference has (``missing``);
- ``new``: a head only the candidate has (nothing to compare; it does not refuse).

The tolerance is absolute, in score units: ``--tolerance 0.01`` for every head,
``--tolerance match=0.03`` for one (repeatable). The command exits 1 when any head is
refused, 0 when the candidate passes, 2 on a usage error.

Promotion (``ecomtl train --gate REF``, ``ecomtl tune --gate REF``): the run's own bundle
(``<run>/bundle``, ``<sweep>/best_bundle``) is always written and kept; promotion is
the atomic copy of it to ``output.bundle_dir`` (the path serving reads), done only when
the gate passes. The verdict is written next to the candidate (``<bundle>.gate.json``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ecomtl.config.load import ConfigError

PASS, REFUSE, NEW, MISSING = "pass", "REFUSE", "new", "missing"


@dataclass
class Scores:
    """One side of the comparison: each head's score and, where known, its metric."""

    label: str
    tasks: dict[str, dict]  # task → {"score": float, "metric": str | None}


@dataclass
class GateRow:
    task: str
    metric: Optional[str]
    reference: Optional[float]
    candidate: Optional[float]
    delta: Optional[float]
    tolerance: float
    verdict: str
    why: str = ""


@dataclass
class GateResult:
    candidate: str
    reference: str
    rows: list[GateRow] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and not self.refused

    @property
    def refused(self) -> list[GateRow]:
        return [r for r in self.rows if r.verdict in (REFUSE, MISSING)]

    def table(self) -> str:
        from ecomtl.report import table

        def num(v, sign=False):
            return "" if v is None else (f"{v:+.4f}" if sign else f"{v:.4f}")

        rows = [[r.task, r.metric or "", num(r.reference), num(r.candidate), num(r.delta, True), f"{r.tolerance:g}",
                 r.verdict + (f" ({r.why})" if r.why else "")] for r in self.rows]
        head = table(rows, ["head", "metric", "reference", "candidate", "delta", "tolerance", "verdict"])
        if not self.rows:
            verdict = "gate: REFUSED — no head in common"
        elif self.passed:
            verdict = f"gate: PASS — {sum(r.verdict == PASS for r in self.rows)} head(s) within tolerance"
        else:
            verdict = "gate: REFUSED — " + ", ".join(f"{r.task} ({r.why or r.verdict})" for r in self.refused)
        return f"candidate {self.candidate}\nreference {self.reference}\n{head}\n{verdict}"

    def to_json(self) -> dict:
        return {"candidate": self.candidate, "reference": self.reference, "passed": self.passed,
                "rows": [asdict(r) for r in self.rows]}


def parse_tolerances(values: Optional[list[str]]) -> tuple[float, dict[str, float]]:
    """``["0.01", "match=0.03"]`` → (0.01, {"match": 0.03}); the default is 0."""
    default, per_task = 0.0, {}
    for item in values or []:
        name, _, raw = item.rpartition("=")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"--tolerance {item!r}: give a number (0.01) or TASK=number (match=0.03)") from None
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"--tolerance {item!r}: must be a finite number >= 0")
        if name:
            per_task[name] = value
        else:
            default = value
    return default, per_task


def compare(candidate: Scores, reference: Scores, tolerance: float = 0.0,
            per_task: Optional[dict[str, float]] = None) -> GateResult:
    per_task = per_task or {}
    unknown = set(per_task) - set(candidate.tasks) - set(reference.tasks)
    if unknown:
        raise ConfigError(f"--tolerance: no head named {', '.join(sorted(unknown))} on either side")
    out = GateResult(candidate.label, reference.label)
    for task in list(reference.tasks) + [t for t in candidate.tasks if t not in reference.tasks]:
        tol = per_task.get(task, tolerance)
        ref, cand = reference.tasks.get(task), candidate.tasks.get(task)
        metric = (cand or ref).get("metric") or (ref or {}).get("metric")
        if ref is None:
            out.rows.append(GateRow(task, metric, None, cand["score"], None, tol, NEW, "not in the reference"))
            continue
        if cand is None:
            out.rows.append(GateRow(task, metric, ref["score"], None, None, tol, MISSING, "the candidate lacks it"))
            continue
        delta = cand["score"] - ref["score"]
        row = GateRow(task, metric, ref["score"], cand["score"], delta, tol, PASS)
        if ref.get("metric") and cand.get("metric") and ref["metric"] != cand["metric"]:
            row.verdict, row.why = REFUSE, f"scored on {cand['metric']}, the reference on {ref['metric']}"
        elif delta < -tol - 1e-12:
            row.verdict, row.why = REFUSE, f"loses {-delta:.4f} > {tol:g}"
        out.rows.append(row)
    return out


def scores_from_metrics(label: str, metrics: dict, metric_names: Optional[dict] = None) -> Scores:
    """Any of the metrics JSON shapes above → ``Scores``."""
    body = metrics.get("validation", metrics.get("tasks", metrics))
    names = metric_names or {}
    tasks = {t: {"score": float(m["score"]), "metric": names.get(t)} for t, m in body.items()
             if isinstance(m, dict) and "score" in m}
    if not tasks:
        raise ConfigError(f"{label}: no per-task scores found (expected {{task: {{'score': ...}}}}, "
                          f"or a 'tasks' / 'validation' section holding them)")
    return Scores(label, tasks)


def bundle_metric_names(path: str | Path) -> dict[str, str]:
    import yaml

    from ecomtl.config.load import config_from_dict

    cfg = config_from_dict(yaml.safe_load((Path(path) / "config.yaml").read_text()))
    return {t: tc.metric for t, tc in cfg.tasks.items()}


def check_side(path: str, what: str) -> Path:
    """A bundle directory or a readable metrics JSON; checked before any work starts."""
    from ecomtl.model.bundle import BundleError, check_bundle

    p = Path(path).expanduser()
    if p.is_dir():
        try:
            return check_bundle(p).resolve()
        except BundleError as err:
            raise ConfigError(f"{what} {path}: {err}") from None
    try:
        scores_from_metrics(f"{what} {path}", json.loads(p.read_text()))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{what} {path}: not a bundle directory nor a readable metrics JSON ({err})") from None
    return p.resolve()


def read_scores(path: str | Path, data_root: Optional[str] = None, split: str = "validation",
                max_rows: Optional[int] = None) -> Scores:
    """A bundle scored on ``data_root``/``split`` (fresh, with ``evaluate_bundle``), or a
    metrics JSON as it is."""
    from ecomtl.evaluation import evaluate_bundle

    p = Path(path).expanduser()
    if p.is_dir():
        scored = evaluate_bundle(str(p), data_root=data_root, split=split, max_rows=max_rows)
        return scores_from_metrics(str(p), scored, bundle_metric_names(p))
    return scores_from_metrics(str(p), json.loads(p.read_text()))


def default_root(candidate: str | Path) -> Optional[str]:
    """The data both sides are scored on when none is given: the candidate bundle's."""
    p = Path(candidate).expanduser()
    if not p.is_dir():
        return None
    import yaml

    from ecomtl.config.schema import resolve_data_root

    return resolve_data_root(yaml.safe_load((p / "config.yaml").read_text()).get("data_root"))


def gate(candidate: str, reference: str, tolerances: tuple[float, dict] = (0.0, {}), data_root: Optional[str] = None,
         split: str = "validation", max_rows: Optional[int] = None) -> GateResult:
    root = data_root or default_root(candidate) or default_root(reference)
    cand = read_scores(check_side(candidate, "candidate"), root, split, max_rows)
    ref = read_scores(check_side(reference, "reference"), root, split, max_rows)
    return compare(cand, ref, *tolerances)


def gate_and_promote(bundle: Path, candidate_metrics: Optional[dict], reference: str, tolerances: tuple[float, dict],
                     promote_to: Optional[str], data_root: str, log=print) -> GateResult:
    """After ``train``/``tune``: gate the run's bundle (scored as ``candidate_metrics``
    where the run already scored it on the full validation split) and copy it to
    ``promote_to`` only when it passes; the verdict goes to ``<bundle>.gate.json``."""
    from ecomtl.model.bundle import copy_bundle

    bundle = Path(bundle)
    names = bundle_metric_names(bundle)
    cand = (scores_from_metrics(str(bundle), candidate_metrics, names) if candidate_metrics
            else read_scores(bundle, data_root))
    result = compare(cand, read_scores(reference, data_root), *tolerances)
    log(f"\n{result.table()}")
    verdict = result.to_json() | {"promoted_to": None}
    if result.passed and promote_to:
        verdict["promoted_to"] = str(copy_bundle(bundle, promote_to))
        log(f"promoted: {bundle} → {verdict['promoted_to']}")
    elif result.passed:
        log("passed; no output.bundle_dir set, so nothing to promote to")
    else:
        log(f"not promoted: the bundle stays at {bundle}"
            + (f"; {promote_to} is unchanged" if promote_to else ""))
    bundle.with_name(bundle.name + ".gate.json").write_text(json.dumps(verdict, indent=2, default=float))
    return result
