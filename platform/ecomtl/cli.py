"""``ecomtl`` command line. Thin: each command parses its arguments and calls the same
functions as the ``jobs/`` scripts.

    ecomtl train jobs/configs/demo.yaml [key=value ...] [--resume RUN] [--baseline JSON]
    ecomtl evaluate BUNDLE [--data-root DIR] [--split SPLIT]
    ecomtl export CHECKPOINT_DIR OUT
    ecomtl baseline jobs/configs/demo.yaml [--out JSON]   # TF-IDF + logistic regression per head
    ecomtl serve BUNDLE [--port 8000] [--layout shared|naive]   # HTTP API on Ray Serve
    ecomtl tune jobs/configs/demo_sweep.yaml [key=value ...] [--name NAME] [--single-task] [--gate REF]
    ecomtl train CONFIG --init-from BUNDLE [--gate REF [--tolerance 0.01]]   # retrain from a bundle
    ecomtl gate CANDIDATE --against REFERENCE [--tolerance 0.01] [--tolerance match=0.03]   # exit 1: refused
    ecomtl adapt BUNDLE NEW_TASK_CONFIG --shots 8,32,128,512 [--seeds 3] [--out DIR]   # a new task from K rows
    ecomtl distill TEACHER_BUNDLE STUDENT_CONFIG [key=value ...] [--resume RUN]   # a student from a teacher
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from ecomtl.config.load import ConfigError, load_config


def cmd_train(args) -> int:
    from ecomtl.evaluation import aggregate, score_weights
    from ecomtl.report import gates_table, metrics_table
    from ecomtl.train.run import train_experiment

    cfg = load_config(args.config, list(args.overrides) + _init_from(args))
    baseline = _read_baseline(args.baseline)
    cfg, gating = _gating(cfg, args)
    out = train_experiment(cfg, run_name=args.resume)
    print(f"\nvalidation metrics of the exported bundle (checkpoint at step {out.selection.get('step')}):")
    print(metrics_table(out.metrics, baseline))
    print(f"\naggregate {aggregate(out.metrics, score_weights(cfg)):.4f} | "
          f"wall {out.wall_s / 60:.1f} min | run {out.run_dir}")
    if out.gates:
        print("\nmean gate weight per expert in training (soft sharing):")
        print(gates_table(out.gates))
    if out.plot:
        print(f"training curves: {out.plot}")
    print(f"bundle: {out.bundle}")
    return _gate_run(gating, out.bundle, out.metrics, cfg.resolved_data_root())


def _init_from(args) -> list[str]:
    return [f"training.init_from={args.init_from}"] if getattr(args, "init_from", None) else []


def _gating(cfg, args, export_in_run: bool = True):
    """``--gate REF``: both sides checked before any work; the run's bundle is exported
    inside the run folder, and promotion copies it to ``output.bundle_dir`` if it passes."""
    from ecomtl.lifecycle.gate import check_side, parse_tolerances
    from ecomtl.lifecycle.init_from import check_init_from

    check_init_from(cfg)
    if not args.gate:
        if args.tolerance:
            raise ConfigError("--tolerance: only with --gate")
        return cfg, None
    gating = {"reference": str(check_side(args.gate, "--gate")), "tolerances": parse_tolerances(args.tolerance),
              "promote_to": cfg.output.bundle_dir}
    if not export_in_run:  # a sweep writes <sweep>/best_bundle and never output.bundle_dir
        return cfg, gating
    return cfg.model_copy(update={"output": cfg.output.model_copy(update={"bundle_dir": None})}), gating


def _gate_run(gating, bundle, metrics, root) -> int:
    from ecomtl.lifecycle.gate import gate_and_promote

    if gating is None:
        return 0
    result = gate_and_promote(bundle, metrics, gating["reference"], gating["tolerances"], gating["promote_to"], root)
    return 0 if result.passed else 1


def cmd_gate(args) -> int:
    from ecomtl.lifecycle.gate import gate, parse_tolerances

    result = gate(args.candidate, args.against, parse_tolerances(args.tolerance), data_root=args.data_root,
                  split=args.split, max_rows=args.max_rows)
    print(result.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_json(), f, indent=2, default=float)
    return 0 if result.passed else 1


def cmd_adapt(args) -> int:
    from ecomtl.lifecycle.adapt import adapt_bundle

    out = adapt_bundle(args.bundle, args.new_task_config, args.shots, seeds=args.seeds, out=args.out,
                       overrides=args.overrides, from_pretrained=args.from_pretrained)
    print(f"\n{out.task} on the {out.backbone} backbone, validation score per K "
          f"(mean and std over seeds; wall {out.wall_s:.0f} s):")
    print(out.table())
    if args.curve_out:
        with open(args.curve_out, "w") as f:
            json.dump({"task": out.task, "backbone": out.backbone, "bundle": args.bundle, "runs": out.curve,
                       "summary": out.summary()}, f, indent=2, default=float)
    if out.bundle:
        print(f"bundle: {out.bundle}")
    return 0


def _shots(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give K or a comma-separated list (8,32,128)") from None


def _add_gate_flags(parser) -> None:
    parser.add_argument("--gate", metavar="REF", help="a bundle or metrics JSON the result must not lose to (per "
                        "head, beyond --tolerance); refused: not promoted to output.bundle_dir, exit 1")
    parser.add_argument("--tolerance", action="append", metavar="[TASK=]X",
                        help="allowed loss per head in score units (default 0); TASK=X for one head; repeatable")


def _read_baseline(path: Optional[str]) -> Optional[dict]:
    """Read before training, so that a wrong path fails in a second, not after the run."""
    if not path:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--baseline {path}: {err}") from err


def cmd_distill(args) -> int:
    from ecomtl.distill.run import distill_experiment
    from ecomtl.evaluation import aggregate, score_weights
    from ecomtl.report import metrics_table

    cfg = load_config(args.student_config, args.overrides)
    out = distill_experiment(args.teacher, cfg, run_name=args.resume)
    print(f"\nvalidation metrics of the distilled student (checkpoint at step {out.train.selection.get('step')}); "
          f"baseline = the teacher {out.teacher}:")
    print(metrics_table(out.train.metrics, out.teacher_metrics))
    weights = score_weights(cfg)
    print(f"\naggregate {aggregate(out.train.metrics, weights):.4f} (teacher "
          f"{aggregate({t: m for t, m in out.teacher_metrics.items() if t in cfg.tasks}, weights):.4f}) | "
          f"wall {out.train.wall_s / 60:.1f} min | run {out.train.run_dir}")
    print(f"bundle: {out.train.bundle}")
    return 0


def cmd_evaluate(args) -> int:
    from ecomtl.evaluation import evaluate_bundle

    result = evaluate_bundle(args.bundle, data_root=args.data_root, split=args.split,
                             batch_size=args.batch_size, max_rows=args.max_rows, precision=args.precision)
    print(json.dumps(result, indent=2, default=float))
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from ecomtl.model.bundle import copy_bundle
    from ecomtl.train.loop import BUNDLE_DIR

    print(copy_bundle(Path(args.checkpoint) / BUNDLE_DIR, args.out))
    return 0


def cmd_baseline(args) -> int:
    from ecomtl.baseline import tfidf_baseline
    from ecomtl.report import metrics_table

    cfg = load_config(args.config, args.overrides)
    metrics = tfidf_baseline(cfg)
    print(metrics_table(metrics))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(metrics, f, indent=2)
    return 0


def cmd_serve(args) -> int:
    from pydantic import ValidationError

    from ecomtl.model.bundle import BundleError
    from ecomtl.serve.app import serve_bundle

    try:
        serve_bundle({"bundle": args.bundle, "layout": args.layout}, host=args.host, port=args.port, cpus=args.cpus)
    except (BundleError, ValidationError, ValueError) as err:
        print(f"ecomtl serve: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_plugins(args) -> int:
    import json

    from ecomtl.plugins import describe_all, render

    described = describe_all()
    print(json.dumps(described, indent=2, default=str) if args.json else render(described))
    return 0


def cmd_tune(args) -> int:
    from ecomtl.tune.space import load_sweep_config
    from ecomtl.tune.sweep import run_sweep

    extra = ["tune.single_task=true"] if args.single_task else []
    cfg, section = load_sweep_config(args.config, list(args.overrides) + extra)
    cfg, gating = _gating(cfg, args, export_in_run=False)
    out = run_sweep(cfg, section, name=args.name)
    print(f"\nsweep wall {out.wall_s / 60:.1f} min | trials {out.files['table']}")
    print(f"best bundle: {out.files['bundle']}")
    metrics = json.loads((out.files["bundle"] / "metrics.json").read_text()).get("validation")
    return _gate_run(gating, out.files["bundle"], metrics, cfg.resolved_data_root())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ecomtl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="multi-task training on Ray Train + DeepSpeed; exports a bundle")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.steps=100")
    t.add_argument("--resume", metavar="RUN", help="resume the run of this name from its latest checkpoint")
    t.add_argument("--baseline", metavar="JSON", help="metrics from `ecomtl baseline --out`: adds baseline and "
                                                      "delta columns to the final table")
    t.add_argument("--init-from", metavar="BUNDLE", help="start from this bundle's weights and label spaces "
                   "(training.init_from); new tasks' heads start fresh")
    _add_gate_flags(t)
    t.set_defaults(fn=cmd_train)

    d = sub.add_parser("distill", help="train a student on a teacher bundle's outputs mixed with the labels "
                                       "(Ray Train + DeepSpeed, like train); exports the student's bundle")
    d.add_argument("teacher", help="the teacher bundle (its tasks and label spaces must match the student's)")
    d.add_argument("student_config", help="experiment YAML of the student (its distill: section: T, alpha, ...)")
    d.add_argument("overrides", nargs="*", help="dotted overrides, e.g. distill.alpha=0.7 model.num_layers=3")
    d.add_argument("--resume", metavar="RUN", help="resume the run of this name from its latest checkpoint")
    d.set_defaults(fn=cmd_distill)

    e = sub.add_parser("evaluate", help="score a bundle on a data root/split; prints JSON")
    e.add_argument("bundle")
    e.add_argument("--data-root", help="root the bundle's path templates resolve against "
                                       "(default: $ECOMTL_DATA_ROOT or ../shared/datasets)")
    e.add_argument("--split", default="validation")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--max-rows", type=int, help="score a fixed random subset of each source")
    e.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"], default="fp32",
                   help="the backbone's precision, as `serve` would run it (model/precision.py)")
    e.set_defaults(fn=cmd_evaluate)

    x = sub.add_parser("export", help="copy the bundle out of a training checkpoint (atomically)")
    x.add_argument("checkpoint")
    x.add_argument("out")
    x.set_defaults(fn=cmd_export)

    b = sub.add_parser("baseline", help="TF-IDF + logistic regression per head, same splits")
    b.add_argument("config")
    b.add_argument("overrides", nargs="*")
    b.add_argument("--out", help="also write the metrics as JSON here")
    b.set_defaults(fn=cmd_baseline)

    s = sub.add_parser("serve", help="serve a bundle over HTTP on Ray Serve (default args; "
                                     "serve_configs/*.yaml for autoscaling and limits)")
    s.add_argument("bundle")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--layout", choices=["shared", "naive"], default="shared")
    s.add_argument("--cpus", type=float, help="CPUs the replicas may take together (default: what Ray has)")
    s.set_defaults(fn=cmd_serve)
    u = sub.add_parser("tune", help="Ray Tune + Optuna sweep of task weights, lr, ...; ASHA; best bundle")
    u.add_argument("config", help="experiment YAML with a 'tune:' section (may name a 'base:' YAML)")
    u.add_argument("overrides", nargs="*", help="dotted overrides, e.g. tune.num_samples=4")
    u.add_argument("--name", help="sweep name (default: the config's name); an existing one is resumed")
    u.add_argument("--single-task", action="store_true",
                   help="also train each head alone at the compute it got in the best trial")
    _add_gate_flags(u)
    u.set_defaults(fn=cmd_tune)
    gt = sub.add_parser("gate", help="compare two bundles (or a bundle and a metrics JSON) head by head on the "
                                     "same split; exit 1 when a head loses beyond the tolerance")
    gt.add_argument("candidate", help="bundle directory or metrics JSON")
    gt.add_argument("--against", required=True, metavar="REFERENCE", help="bundle directory or metrics JSON "
                    "(`ecomtl baseline --out`, `ecomtl evaluate`, a bundle's metrics.json)")
    gt.add_argument("--tolerance", action="append", metavar="[TASK=]X",
                    help="allowed loss per head in score units (default 0); TASK=X for one head; repeatable")
    gt.add_argument("--data-root", help="data both bundles are scored on (default: the candidate's)")
    gt.add_argument("--split", default="validation")
    gt.add_argument("--max-rows", type=int, help="score a fixed random subset of each source")
    gt.add_argument("--json", metavar="OUT", help="also write the verdict as JSON")
    gt.set_defaults(fn=cmd_gate)
    a = sub.add_parser("adapt", help="add a task to a bundle from K labelled rows: a new head over the frozen "
                                     "backbone, old heads untouched")
    a.add_argument("bundle")
    a.add_argument("new_task_config", help="YAML: tasks (one), optional new sources, adapt options")
    a.add_argument("overrides", nargs="*", help="dotted overrides of that YAML, e.g. adapt.steps=100")
    a.add_argument("--shots", type=_shots, required=True, metavar="K[,K...]", help="labelled rows; several: a curve")
    a.add_argument("--seeds", type=int, default=1, help="K-shot samples (and head inits) per K")
    a.add_argument("--out", help="write the bundle with the new task here (largest K, first seed)")
    a.add_argument("--from-pretrained", action="store_true", help="the same head on the pretrained backbone "
                   "(no multi-task training): the comparison; writes no bundle")
    a.add_argument("--curve-out", metavar="JSON", help="also write every run's metrics and the per-K summary")
    a.set_defaults(fn=cmd_adapt)
    g = sub.add_parser("plugins", help="every registry (backbones, adapters, sharing, heads, weightings, "
                                       "samplers) with each plug-in's options")
    g.add_argument("--json", action="store_true")
    g.set_defaults(fn=cmd_plugins)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as err:
        print(f"ecomtl: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
