"""``ecomtl adapt BUNDLE NEW_TASK_CONFIG --shots K``: add one task to a trained bundle
from K labelled rows, without touching anything the bundle already has.

    ecomtl adapt /work/artifacts/demo-bundle jobs/adapt_configs/class_name.yaml --shots 32 --out /tmp/with-class
    ecomtl adapt BUNDLE NEW_TASK_CONFIG --shots 8,32,128,512 --seeds 3 [--from-pretrained]   # a learning curve

The new task's config (``NEW_TASK_CONFIG``, schema ``AdaptFile``) names the task
(``tasks:``, exactly one), any new source it reads (``sources:``; a bundle's source is
named as it is) and the ``adapt:`` options. The merged config — the bundle's, plus the
task, with ``training.init_from`` set to the bundle — is validated like any experiment.

How: one Ray Train worker builds the merged model, loads every tensor the bundle has
(``lifecycle/init_from.py``: by name, strict), freezes all of them, encodes the K train
rows and the validation rows once with the frozen backbone (``model.encode``, eval
mode), then trains only the new head on those encodings (``model.apply_heads``: the
same forward path as training and serving). The written bundle therefore holds the old
tensors bit for bit: the old heads' predictions are identical.

K-shot rows: a seeded sample of K usable train rows, stratified for classification (the
classes in a random order, one row of each per round until K: K < #classes gives K
distinct classes). The label *space* is fit on the whole train column (a shop knows its
class names; only K rows' labels are used for training), so validation is scored on
every row. With several K and ``--seeds N`` one run scores the whole learning curve
(validation encoded once), each (K, seed) a fresh head from seed ``adapt.seed + i``;
the bundle, when ``--out`` is given, is the largest K's first seed.

``--from-pretrained``: the same head trained the same way on the bundle config's
pretrained backbone (``model.pretrained``) instead of the bundle's: what multi-task
training is worth for a new task. No bundle is written then (its old heads would be
untrained).

Not supported (refused, naming the field): soft sharing (a new task would need a new
trained gate), heads that need row groups (ranking). A new LoRA route for the task is
not trained: the head reads the frozen backbone.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ecomtl.config.load import ConfigError, apply_overrides, format_validation_error, read_yaml
from ecomtl.config.schema import ExperimentConfig, SourceConfig, TaskConfig
from ecomtl.tasks.base import IGNORE

CURVE_FILE, BUNDLE_DIR = "curve.json", "bundle"


class AdaptOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(300, ge=1, description="optimizer steps of the new head (per K and seed)")
    batch_size: int = Field(64, ge=1, description="rows per step (all K when K is smaller)")
    lr: float = Field(5e-3, gt=0, le=1, description="AdamW learning rate of the new head")
    weight_decay: float = Field(0.01, ge=0)
    seed: int = Field(0, description="K-shot sample and head init of the first seed; seed i uses seed + i")
    eval_max_rows: Optional[int] = Field(None, gt=0, description="validation rows scored (None = all)")
    encode_batch_size: int = Field(64, ge=1, description="rows per frozen-backbone forward when encoding")


class AdaptFile(BaseModel):
    """NEW_TASK_CONFIG: the task to add, any new source, and how to fit it."""

    model_config = ConfigDict(extra="forbid")
    sources: dict[str, SourceConfig] = Field(default_factory=dict, description="new sources only")
    tasks: dict[str, TaskConfig]
    adapt: AdaptOptions = Field(default_factory=AdaptOptions)


@dataclass
class AdaptOutcome:
    task: str
    curve: list[dict]  # one row per (shots, seed): shots, seed, rows, the task's metrics
    bundle: Optional[Path]
    backbone: str  # "bundle" or "pretrained"
    wall_s: float

    def summary(self) -> list[dict]:
        """Per K: mean and standard deviation (over seeds) of the score."""
        out = []
        for k in sorted({r["shots"] for r in self.curve}):
            scores = np.array([r["score"] for r in self.curve if r["shots"] == k])
            out.append({"shots": k, "seeds": len(scores), "mean": float(scores.mean()),
                        "std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
                        "rows": int(np.mean([r["rows"] for r in self.curve if r["shots"] == k]))})
        return out

    def table(self) -> str:
        from ecomtl.report import table

        return table([[s["shots"], s["rows"], s["seeds"], f"{s['mean']:.4f}", f"{s['std']:.4f}"]
                      for s in self.summary()], ["K", "rows used", "seeds", f"{self.task} score mean", "std"])


# -- the driver ---------------------------------------------------------------------------
def load_adapt_file(path: str, overrides: list[str] = ()) -> AdaptFile:
    from pydantic import ValidationError

    try:
        spec = AdaptFile.model_validate(apply_overrides(read_yaml(path), overrides))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err).replace("experiment config", f"adapt config {path}")) from None
    if len(spec.tasks) != 1:
        raise ConfigError(f"{path}: tasks: adapt adds exactly one task, got {len(spec.tasks)}")
    return spec


def merged_config(bundle_cfg: ExperimentConfig, bundle: Path, spec: AdaptFile) -> ExperimentConfig:
    """The bundle's config plus the new task (and source), ``training.init_from`` set."""
    from ecomtl.config.load import config_from_dict
    from ecomtl.tasks import TASK_HEADS

    (task, tc), = spec.tasks.items()
    if task in bundle_cfg.tasks:
        raise ConfigError(f"tasks.{task}: the bundle already has a task {task!r}; give the new one another name")
    for name, src in spec.sources.items():
        if name in bundle_cfg.sources and bundle_cfg.sources[name] != src:
            raise ConfigError(f"sources.{name}: the bundle has a different source of that name; "
                              f"name the bundle's as it is (no definition) or give the new one another name")
    if bundle_cfg.model.sharing.kind != "hard":
        raise ConfigError(f"model.sharing.kind: adapt trains a head over a frozen backbone with hard sharing; "
                          f"the bundle uses {bundle_cfg.model.sharing.kind!r} (a new task needs a trained gate)")
    head = TASK_HEADS.get(tc.head)
    if head.needs_groups:
        raise ConfigError(f"tasks.{task}.head: {tc.head} heads compare rows of a group; adapt does not sample groups")
    data = bundle_cfg.model_dump(mode="json")
    data["sources"] |= {k: v.model_dump(mode="json") for k, v in spec.sources.items()}
    data["tasks"][task] = tc.model_dump(mode="json")
    data["training"] |= {"init_from": str(bundle), "l2sp": 0.0}
    return config_from_dict(data)


def kshot_rows(labels: list, k: int, seed: int, stratify: bool) -> np.ndarray:
    """K of the rows whose label is usable, seeded; stratified by class when asked."""
    def usable(y):
        return (np.asarray(y) != IGNORE).any() if isinstance(y, np.ndarray) else y != IGNORE and y is not None

    rows = np.array([i for i, y in enumerate(labels) if usable(y)])
    rng = np.random.default_rng(seed)
    if k >= len(rows):
        return rows
    if not stratify:
        return np.sort(rng.choice(rows, size=k, replace=False))
    by_class: dict = {}
    for i in rows:
        by_class.setdefault(int(labels[i]), []).append(i)
    order = [by_class[c] for c in rng.permutation(sorted(by_class))]
    queues = [list(rng.permutation(r)) for r in order]
    picked: list[int] = []
    while len(picked) < k:
        for q in queues:
            if q and len(picked) < k:
                picked.append(int(q.pop()))
    return np.sort(np.array(picked))


def adapt_bundle(bundle: str, spec_path: str, shots: list[int], seeds: int = 1, out: Optional[str] = None,
                 overrides: list[str] = (), from_pretrained: bool = False, log=print) -> AdaptOutcome:
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ecomtl.data.prepare import prepare_data
    from ecomtl.model.bundle import copy_bundle, load_bundle
    from ecomtl.model.build import load_tokenizer
    from ecomtl.ray_env import init_ray
    from ecomtl.tasks import TASK_HEADS
    from ecomtl.train.trainer import storage_path

    t0 = time.perf_counter()
    if from_pretrained and out:
        raise ConfigError("--out: --from-pretrained trains on the pretrained backbone, whose old heads are "
                          "untrained; it scores the curve only")
    if not shots or min(shots) < 1:
        raise ConfigError(f"--shots: give one or more K >= 1, got {shots}")
    spec = load_adapt_file(spec_path, overrides)
    path = Path(bundle).expanduser().resolve()
    old = load_bundle(path, with_backbone=False)  # spec, config, label spaces; checks the manifest
    cfg = merged_config(old.config, path, spec)
    (task, tc), = spec.tasks.items()
    source = tc.source
    root = cfg.resolved_data_root()
    tokenizer = load_tokenizer(cfg.model, str(path / "backbone"))
    sub = cfg.model_copy(update={"tasks": {task: tc}, "sources": {source: cfg.sources[source]}})
    data = prepare_data(sub, tokenizer, label_infos=None, max_lengths=old.max_lengths, root=root)
    head = TASK_HEADS.get(tc.head)
    stratify = head.level == "sequence" and head.label_dtype == torch.long
    labels = data.splits["train"][source].labels[task]
    plan = [{"shots": k, "seed": spec.adapt.seed + i,
             "rows": kshot_rows(labels, k, spec.adapt.seed + i, stratify).tolist()}
            for k in shots for i in range(seeds)]
    write = None if from_pretrained or not out else [max(shots), spec.adapt.seed]
    log(f"[ecomtl] adapt {path} + task {task} ({tc.head} on {source}): K = {', '.join(map(str, shots))}, "
        f"{seeds} seed(s), backbone {'pretrained ' + cfg.model.pretrained if from_pretrained else 'of the bundle'}; "
        f"{len(labels)} usable train rows to sample from, {len(data.splits['validation'][source])} validation rows")
    init_ray()
    run = f"adapt-{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = TorchTrainer(
        adapt_loop_per_worker,
        train_loop_config={"experiment": cfg.model_dump(mode="json"), "data": ray.put(data), "task": task,
                           "label_infos": old.label_infos | data.label_infos,
                           "max_lengths": old.max_lengths | data.max_lengths, "plan": plan, "write": write,
                           "from_pretrained": from_pretrained, "options": spec.adapt.model_dump(),
                           "bundle_metrics": old.metrics},
        # one worker: the trained part is one head over cached encodings
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False,
                                     resources_per_worker={"CPU": cfg.distributed.cpus_per_worker}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=run, storage_path=storage_path(cfg), checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    written = None
    with result.checkpoint.as_directory() as d:
        curve = json.loads(Path(d, CURVE_FILE).read_text())
        if write is not None:
            written = copy_bundle(Path(d, BUNDLE_DIR), out)
    return AdaptOutcome(task, curve, written, "pretrained" if from_pretrained else "bundle", time.perf_counter() - t0)


# -- the worker -----------------------------------------------------------------------------
def adapt_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train

    from ecomtl.evaluation import eval_rows, task_metrics, task_specs
    from ecomtl.lifecycle.init_from import load_init_weights
    from ecomtl.model.bundle import write_bundle_files
    from ecomtl.model.build import build_model, load_tokenizer

    cfg = ExperimentConfig.model_validate(config["experiment"])
    data = config["data"] if not isinstance(config["data"], ray.ObjectRef) else ray.get(config["data"])
    task, opts, infos = config["task"], config["options"], config["label_infos"]
    source = cfg.tasks[task].source
    torch.set_num_threads(cfg.distributed.cpus_per_worker)
    bundle = Path(cfg.training.init_from)
    tokenizer = load_tokenizer(cfg.model, str(bundle / "backbone"))
    torch.manual_seed(opts["seed"])
    model = build_model(cfg, infos, tokenizer)
    if not config["from_pretrained"]:
        report = load_init_weights(model, bundle, [t for t in cfg.tasks if t != task])
        assert all(k.startswith(f"heads.{task}.") or f".{task}." in k for k in report["fresh"]), report["fresh"]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    pad_id = tokenizer.pad_token_id
    train, val = data.splits["train"][source], data.splits["validation"][source]
    token_level = model.heads[task].level == "token"
    width = config["max_lengths"][source]
    needed = sorted({r for entry in config["plan"] for r in entry["rows"]})
    cached = _encode(model, train, np.array(needed), task, pad_id, opts["encode_batch_size"], token_level, width)
    position = {r: i for i, r in enumerate(needed)}
    val_rows = eval_rows(val, opts["eval_max_rows"], seed=opts["seed"])
    val_cached = _encode(model, val, val_rows, task, pad_id, opts["encode_batch_size"], token_level, width)
    specs = task_specs(cfg, infos)
    curve, kept = [], None
    for entry in config["plan"]:
        torch.manual_seed(entry["seed"])
        model.heads[task] = _fresh_head(cfg, task, infos[task], model.backbone.hidden_size)
        idx = torch.tensor([position[r] for r in entry["rows"]], dtype=torch.long)
        _train_head(model, task, _take(cached, idx), opts, entry["seed"])
        metrics = task_metrics({task: _predict(model, task, val_cached, opts["encode_batch_size"])}, specs)[task]
        curve.append({"shots": entry["shots"], "seed": entry["seed"], "rows": len(entry["rows"])} | metrics)
        if config["write"] == [entry["shots"], entry["seed"]]:
            kept = (copy.deepcopy(model.heads[task].state_dict()), metrics)
    tmp = Path(tempfile.mkdtemp(prefix="ecomtl-adapt-"))
    try:
        (tmp / CURVE_FILE).write_text(json.dumps(curve, indent=2, default=float))
        if kept is not None:
            model.heads[task].load_state_dict(kept[0])
            metrics = copy.deepcopy(config["bundle_metrics"])
            metrics.setdefault("validation", {})[task] = kept[1]
            metrics["adapt"] = {"task": task, "shots": config["write"][0], "seed": config["write"][1],
                                "from": str(bundle), "curve": curve}
            (tmp / BUNDLE_DIR).mkdir()
            write_bundle_files(tmp / BUNDLE_DIR, model, tokenizer, cfg, infos, config["max_lengths"], metrics)
        ray.train.report({f"{task}/score@{r['shots']}/{r['seed']}": r["score"] for r in curve},
                         checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fresh_head(cfg: ExperimentConfig, task: str, info: dict, hidden: int):
    from ecomtl.tasks import TASK_HEADS

    tc = cfg.tasks[task]
    return TASK_HEADS.get(tc.head)(hidden, info, cfg.model.dropout, tc.options)


@torch.no_grad()
def _encode(model, split, rows: np.ndarray, task: str, pad_id: int, batch_size: int, token_level: bool,
            width: int) -> dict:
    """The frozen backbone's encodings of ``rows`` (pooled; token states padded to
    ``width`` for token heads) and their labels, in the order of ``rows``."""
    from ecomtl.data.collate import collate

    dtypes = {task: model.heads[task].label_dtype}
    route = model.routes[task]
    parts: dict[str, list] = {"pooled": [], "hidden": [], "mask": [], "labels": []}
    for start in range(0, len(rows), batch_size):
        batch = collate(split, rows[start:start + batch_size], pad_id, dtypes)
        enc = model.encode(batch, route)
        parts["pooled"].append(enc.pooled.float())
        labels = batch["labels"][task]
        if token_level:
            pad = width - enc.mask.shape[1]
            parts["hidden"].append(torch.nn.functional.pad(enc.hidden.float(), (0, 0, 0, pad)))
            parts["mask"].append(torch.nn.functional.pad(enc.mask, (0, pad)))
            labels = torch.nn.functional.pad(labels, (0, pad), value=IGNORE)
        else:
            parts["mask"].append(enc.mask[:, :1])
        parts["labels"].append(labels)
    return {k: torch.cat(v) if v else None for k, v in parts.items()}


def _take(cached: dict, idx) -> dict:
    return {k: None if v is None else v[idx] for k, v in cached.items()}


def _apply(model, task: str, part: dict) -> tuple[torch.Tensor, dict]:
    from ecomtl.model.multitask import Encoded

    enc = Encoded(part["pooled"], part["hidden"], part["mask"])
    batch = {"attention_mask": part["mask"], "labels": {task: part["labels"]}}
    return model.apply_heads(enc, batch, [task])[task], batch


def _train_head(model, task: str, cached: dict, opts: dict, seed: int) -> None:
    head = model.heads[task]
    for p in head.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(head.parameters(), lr=opts["lr"], weight_decay=opts["weight_decay"])
    n = len(cached["pooled"])
    bs = min(opts["batch_size"], n)
    gen = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(n, generator=gen), 0
    head.train()
    for _ in range(opts["steps"]):
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=gen), 0
        part = _take(cached, order[pos:pos + bs])
        pos += bs
        out, batch = _apply(model, task, part)
        loss = head.loss(out, part["labels"], batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)


@torch.no_grad()
def _predict(model, task: str, cached: dict, batch_size: int) -> list:
    head, pairs = model.heads[task], []
    for start in range(0, len(cached["pooled"]), batch_size):
        part = _take(cached, slice(start, start + batch_size))
        out, batch = _apply(model, task, part)
        pairs.extend(head.gold_and_pred(out.float(), part["labels"], batch))
    return pairs
