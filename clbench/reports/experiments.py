"""Registered experiments: one TOML file each, naming the runs a report needs and how to render it.

The shipped files live at the repository's top-level ``registry/`` and are installed as the package
data of ``clbench.experiments``; a user passes their own file by path. A file holds::

    name = "fig4"                      # defaults to the file's stem
    title = "..."                      # optional
    kind = "fig4"                      # fig2 | fig4 | forgetting | tiny-buffer | methods | class-order |
                                       #   stability-gap | rivals
    benchmark = "seq-fmnist"
    methods = ["derpp"]
    masks = ["none", "-inf", "-5"]     # mask values as text
    buffers = [200]
    seeds = 10                         # seeds 0..9, or a list [0, 3, 7]
    class_orders = [0, 1, 2]           # optional: 0 the benchmark's order, K > 0 a permutation from K
    mask_on = "stream"                 # optional: stream | buffer | both
    mask_keep = "task"                 # optional: task | batch | seen (which classes a masked row keeps)

    [per_method.gdumb]                 # optional: a method's own masks, mask_on and/or mask_keep
    mask_on = "buffer"                 #   (GDumb's cross-entropy sees only its memory's rows)
    [per_method.icarl]
    masks = ["none"]                   #   (iCaRL has no softmax cross-entropy: no mask acts)

    [overrides]                        # optional RunConfig fields shared by all runs
    epochs = 1
    synthetic = { train_per_class = 40 }   # only with benchmark = "synthetic"

    [render]                           # optional, per kind (see RENDER_OPTIONS)
    baseline = "none"

Every method's masks must be able to act where they are placed (``Method.mask_acts_on``): a file
asking for a mask that cannot act is refused, naming the method and what to write instead.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from clbench.data.specs import SyntheticOptions
from clbench.runs.checks import InvalidValue, check_label, check_whole
from clbench.runs.config import RunConfig, check_field, check_synthetic, mask_rows
from clbench.runs.mask import MASK_KEEP_CHOICES, MASK_ON_CHOICES, format_mask_value, parse_mask_value
from clbench.runs.results import CLASS_IL_CONVENTIONS
from clbench.sweep.plan import MAX_SWEEP_RUNS

KINDS = ("fig2", "fig4", "forgetting", "tiny-buffer", "methods", "class-order", "stability-gap", "rivals")
TOP_LEVEL_KEYS = (
    "name",
    "title",
    "kind",
    "benchmark",
    "methods",
    "masks",
    "buffers",
    "seeds",
    "class_orders",
    "mask_on",
    "mask_keep",
    "per_method",
    "overrides",
    "render",
    "description",
    "slurm",
    "eval_every",
    "eval_samples",
)
# Top-level keys that are RunConfig fields shared by every run (as in [overrides]).
RUN_KEYS = ("eval_every", "eval_samples")
# The [slurm] section: the --slurm-* options of the command line, without the prefix.
SLURM_KEYS = ("partition", "time", "account", "qos", "sbatch", "folder")
PER_METHOD_KEYS = ("masks", "mask_on", "mask_keep")
REQUIRED_KEYS = ("kind", "benchmark", "methods", "masks", "buffers", "seeds")
OVERRIDE_KEYS = (
    "backbone",
    "width",
    "epochs",
    "batch_size",
    "minibatch_size",
    "lr",
    "alpha",
    "beta",
    "class_order_seed",
    "synthetic",
    "der_logits",
    "head",
    "options",
    "validation",
    "eval_every",
    "eval_samples",
)
# kind -> render option -> default (None: derived from the runs of the experiment)
# Options every kind takes: the class-IL convention (argmax over all classes or over the classes
# seen so far; see clbench.results) and whether runs of an older engine (stale) fill in for missing ones.
# The split is what the metrics are measured on: the test sets, or the validation split of runs with one.
COMMON_RENDER_OPTIONS: dict[str, Any] = {"class_il": "all", "include_stale": False, "split": "test"}
RENDER_OPTIONS: dict[str, dict[str, Any]] = {
    "fig2": {"method": None, "buffer": None, "baseline": "none", "masked": "-inf", **COMMON_RENDER_OPTIONS},
    "fig4": {"baseline": "none", "std_band": True, **COMMON_RENDER_OPTIONS},
    "forgetting": {"forgetting": "chaudhry", **COMMON_RENDER_OPTIONS},
    "tiny-buffer": {"forgetting": "chaudhry", **COMMON_RENDER_OPTIONS},
    "methods": {"baseline": "none", "forgetting": "chaudhry", **COMMON_RENDER_OPTIONS},
    "class-order": {"baseline": "none", "masked": "-inf", **COMMON_RENDER_OPTIONS},
    "stability-gap": {"baseline": "none", "masked": "-inf", **COMMON_RENDER_OPTIONS},
    # masked: the variants ("METHOD:MASK") compared with every other variant of the experiment
    # (None: every variant whose mask is not none)
    "rivals": {"masked": None, "forgetting": "chaudhry", **COMMON_RENDER_OPTIONS},
}


@dataclass(frozen=True)
class ExperimentSpec:
    """A registered experiment: the sweep it needs and what to render from it."""

    name: str
    kind: str
    benchmark: str
    methods: tuple[str, ...]
    masks: tuple[str, ...]  # normalized labels: "none", "-inf", "-5.0"
    buffers: tuple[int, ...]
    seeds: tuple[int, ...]
    mask_on: str = "stream"
    mask_keep: str = "task"  # the keep-set of masked rows (clbench.runs.mask.MASK_KEEP_CHOICES)
    overrides: dict[str, Any] = field(default_factory=dict)
    render: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    description: str = ""
    source: str = ""  # the file it was read from
    # method -> its own "masks" (normalized labels) and/or "mask_on", instead of the top-level ones
    per_method: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The class orders every run is trained in (0: the benchmark's; K > 0: the permutation drawn from K).
    class_orders: tuple[int, ...] = (0,)
    slurm: dict[str, Any] = field(default_factory=dict)  # the [slurm] section (--executor slurm's options)
    # A method of your own: its name (what ``methods``, ``per_method`` and the store hold, and the
    # renderers filter by) -> how the file names it ("PATH.py:CLASS"), which training needs.
    method_refs: dict[str, str] = field(default_factory=dict)
    # The fingerprint of the dataset files its runs train on when they are not the published ones
    # (``DataSource.data_print``; part of the runs' identities): None for the published files.
    data: str | None = None

    def masks_for(self, method: str) -> tuple[str, ...]:
        return tuple(self.per_method.get(method, {}).get("masks", self.masks))

    def mask_on_for(self, method: str) -> str:
        return self.per_method.get(method, {}).get("mask_on", self.mask_on)

    def mask_keep_for(self, method: str) -> str:
        return self.per_method.get(method, {}).get("mask_keep", self.mask_keep)

    @property
    def all_masks(self) -> tuple[str, ...]:
        """Every mask some method of the experiment is run with, in file order."""
        return tuple(dict.fromkeys(m for method in self.methods for m in self.masks_for(method)))

    def configs(self, seeds: int | None = None) -> list[RunConfig]:
        """The runs this experiment needs (``seeds``: use seeds 0..N-1 instead of the file's):
        per method, its buffers x masks x seeds."""
        from clbench.sweep.plan import sweep_configs  # noqa: PLC0415 - keeps this module light

        seed_list = tuple(range(seeds)) if seeds is not None else self.seeds
        # Only an experiment over class orders names them: the others' runs stay as they were.
        orders = {} if self.class_orders == (0,) else {"class_orders": self.class_orders}
        if not self.per_method:
            return sweep_configs(
                methods=tuple(self.method_refs.get(m, m) for m in self.methods),
                masks=self.masks,
                buffers=self.buffers,
                seeds=seed_list,
                benchmark=self.benchmark,
                mask_on=self.mask_on,
                mask_keep=self.mask_keep,
                **orders,
                **self.overrides,
            )
        return [
            cfg
            for method in self.methods
            for cfg in sweep_configs(
                methods=(self.method_refs.get(method, method),),
                masks=self.masks_for(method),
                buffers=self.buffers,
                seeds=seed_list,
                benchmark=self.benchmark,
                mask_on=self.mask_on_for(method),
                mask_keep=self.mask_keep_for(method),
                **orders,
                **self.overrides,
            )
        ]

    def with_render(self, **options: Any) -> ExperimentSpec:
        """The same experiment rendered with ``options`` (e.g. ``class_il="seen"``) changed."""
        bad = sorted(set(options) - set(RENDER_OPTIONS[self.kind]))
        if bad:
            raise ValueError(f"unknown render option {bad[0]!r} for kind {self.kind}")
        return _replace(self, render={**self.render, **options})

    def with_data(self, data: str | None) -> ExperimentSpec:
        """The same experiment on the data with fingerprint ``data`` (None: the published files)."""
        return _replace(self, data=data)

    def with_seeds(self, n: int) -> ExperimentSpec:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SWEEP_RUNS:
            raise ValueError(f"invalid number of seeds {n}: give N from 1 to {MAX_SWEEP_RUNS}")
        return _replace(self, seeds=tuple(range(n)))


def _replace(spec: ExperimentSpec, **changes) -> ExperimentSpec:
    from dataclasses import replace  # noqa: PLC0415

    return replace(spec, **changes)


def _shipped_dir():
    """The folder of the shipped TOML files: the installed package data, else the source tree's."""
    try:
        return resources.files("clbench.experiments")
    except (ModuleNotFoundError, TypeError):
        return Path(__file__).resolve().parents[2] / "registry"


def list_experiments() -> dict[str, str]:
    """Name -> title of every shipped experiment, sorted by name."""
    out = {}
    for entry in sorted(_shipped_dir().iterdir(), key=lambda p: p.name.removesuffix(".toml")):
        if entry.name.endswith(".toml"):
            try:
                spec = parse_experiment(tomllib.loads(entry.read_text(encoding="utf-8")), entry.name[:-5], entry.name)
                out[spec.name] = spec.title
            except ValueError:
                out[entry.name[:-5]] = "(invalid file)"
    return out


def load_experiment(name_or_path: str | Path) -> ExperimentSpec:
    """A shipped experiment by name (``fig4``) or a TOML file by path. One-line ``ValueError``s."""
    text_name = str(name_or_path)
    path = Path(name_or_path)
    looks_like_path = text_name.endswith(".toml") or "/" in text_name or os.sep in text_name
    if looks_like_path:
        if not path.is_file():
            raise ValueError(f"no experiment file {text_name}")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read the experiment file {text_name}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"the experiment file {text_name} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
            ) from None
        return parse_toml(text, path.stem, str(path))
    entry = _shipped_dir() / f"{text_name}.toml"
    if not entry.is_file():
        names = ", ".join(list_experiments())
        raise ValueError(f"unknown experiment {text_name!r}: valid experiments are {names} (or a path to a .toml file)")
    return parse_toml(entry.read_text(encoding="utf-8"), text_name, f"{text_name}.toml")


def parse_toml(text: str, default_name: str, source: str) -> ExperimentSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source} is not valid TOML: {exc}") from None
    return parse_experiment(data, default_name, source)


def _list_of(data: dict, key: str, source: str, kind: type) -> list:
    value = data[key]
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{source}: {key} must be a non-empty list")
    out = []
    for v in value:
        if kind is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{source}: {key} must hold whole numbers, got {v!r}")
        elif kind is str and not isinstance(v, str):
            raise ValueError(f'{source}: {key} must hold strings (e.g. "none", "-inf", "-5"), got {v!r}')
        out.append(v)
    return out


def _table(data: dict, key: str, source: str, where: str = "") -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(
            f"{source}: {where}{key} must be a table ([{where}{key}] followed by key = value lines, "
            f"or {key} = {{ ... }}), got {value!r}"
        )
    return dict(value)


def _checked(source: str, name: str, check, value):
    """``check(value)`` (one of clbench.config's checks, the same the command line goes through),
    its error naming the key of the file."""
    try:
        return check(value)
    except InvalidValue as exc:
        raise ValueError(f"{source}: {exc.message_for(name)}") from None


def _check_name(name, source: str) -> str:
    _checked(source, "name", check_label, name)
    if name in (".", "..") or any(sep in name for sep in ("/", "\\")):
        # The name is the report's folder under reports/: it must stay one folder there.
        raise ValueError(f"{source}: invalid name {name!r}: give a name without '/' or '\\' that is not '.' or '..'")
    return name


def _overrides(data: dict, source: str) -> dict:
    overrides = _table(data, "overrides", source)
    bad = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if bad:
        raise ValueError(f"{source}: unknown override {bad[0]!r}: valid overrides are {', '.join(OVERRIDE_KEYS)}")
    for key, value in overrides.items():
        if key == "options":  # the method's own options: resolution checks them against its defaults
            if not isinstance(value, dict):
                raise ValueError(f"{source}: overrides.options must be a table of the method's options, got {value!r}")
        elif key != "synthetic":
            _checked(source, f"overrides.{key}", lambda v, key=key: check_field(key, v), value)
    if "synthetic" in overrides:
        syn = _table(overrides, "synthetic", source, "overrides.")
        if isinstance(syn.get("input_shape"), list):
            syn["input_shape"] = tuple(syn["input_shape"])
        valid = [f.name for f in fields(SyntheticOptions)]
        unknown = sorted(set(syn) - set(valid))
        if unknown:
            raise ValueError(
                f"{source}: unknown key overrides.synthetic.{unknown[0]}: valid keys are {', '.join(valid)}"
            )
        try:
            options = SyntheticOptions(**syn)
        except TypeError as exc:
            raise ValueError(f"{source}: overrides.synthetic: {exc}") from None
        try:
            overrides["synthetic"] = check_synthetic(options)
        except InvalidValue as exc:  # exc.field: synthetic.<option>
            raise ValueError(f"{source}: {exc.message_for('overrides.' + exc.field)}") from None
    return overrides


def parse_experiment(data: dict, default_name: str, source: str) -> ExperimentSpec:
    """Validate a parsed TOML document into an :class:`ExperimentSpec` (one-line ``ValueError``).

    Every value a run takes goes through ``clbench.config``'s checks, the same the command line's
    options go through, so a file and the command line accept exactly the same runs."""
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown key {unknown[0]!r}: valid keys are {', '.join(TOP_LEVEL_KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{source}: missing key {missing[0]!r} (required: {', '.join(REQUIRED_KEYS)})")
    kind = data["kind"]
    if kind not in KINDS:
        raise ValueError(f"{source}: unknown kind {kind!r}: valid kinds are {', '.join(KINDS)}")
    if not isinstance(data["benchmark"], str):
        raise ValueError(f'{source}: benchmark must be a name, e.g. "seq-fmnist"')
    for key in ("title", "description"):
        if not isinstance(data.get(key, ""), str):
            raise ValueError(f"{source}: {key} must be a string")
    methods = _list_of(data, "methods", source, str)
    masks = []
    for m in _list_of(data, "masks", source, str):
        try:
            masks.append(format_mask_value(parse_mask_value(m)))
        except ValueError as exc:
            raise ValueError(f"{source}: masks: {exc}") from None
    buffers = [
        _checked(source, "buffers value", lambda v: check_field("buffer_size", v), b)
        for b in _list_of(data, "buffers", source, int)
    ]
    seeds_value = data["seeds"]
    if isinstance(seeds_value, int) and not isinstance(seeds_value, bool):
        if seeds_value < 1:
            raise ValueError(f"{source}: seeds must be a count >= 1 or a list of seeds, got {seeds_value}")
        _checked(source, "seeds", lambda v: check_whole("seeds", v, 1, MAX_SWEEP_RUNS), seeds_value)
        seeds = list(range(seeds_value))
    else:
        seeds = _list_of(data, "seeds", source, int)
        if any(s < 0 for s in seeds):
            raise ValueError(f"{source}: seeds are >= 0")
        for s in seeds:
            _checked(source, "seeds value", lambda v: check_field("seed", v), s)
    class_orders = _class_orders(data, source)
    mask_on = data.get("mask_on", "stream")
    if mask_on not in MASK_ON_CHOICES:
        raise ValueError(f"{source}: invalid mask_on {mask_on!r}: valid are {', '.join(MASK_ON_CHOICES)}")
    mask_keep = data.get("mask_keep", "task")
    if mask_keep not in MASK_KEEP_CHOICES:
        raise ValueError(f"{source}: invalid mask_keep {mask_keep!r}: valid are {', '.join(MASK_KEEP_CHOICES)}")
    per_method = _per_method(data, methods, source)
    _check_masks_can_act(methods, masks, mask_on, per_method, source)
    _check_keeps_can_act(methods, masks, mask_keep, per_method, source)
    names = _method_names(methods, source)  # a method of your own is stored and rendered by its name
    method_refs = {names[m]: m for m in methods if names[m] != m}
    methods = [names[m] for m in methods]
    per_method = {names[m]: own for m, own in per_method.items()}
    overrides = _overrides(data, source)
    for key in RUN_KEYS:  # evaluation during training: top level, or in [overrides]
        if key in data:
            if key in overrides:
                raise ValueError(f"{source}: give {key} once: at the top level or in [overrides]")
            overrides[key] = _checked(source, key, lambda v, key=key: check_field(key, v), data[key])
    if class_orders != [0] and "class_order_seed" in overrides:
        raise ValueError(f"{source}: give the class order once: class_orders or overrides.class_order_seed")
    render = _table(data, "render", source)
    options = RENDER_OPTIONS[kind]
    bad = sorted(set(render) - set(options))
    if bad:
        raise ValueError(f"{source}: unknown render option {bad[0]!r} for kind {kind}: valid are {', '.join(options)}")
    render = {**options, **render}
    for key in ("baseline", "masked"):
        if render.get(key) is not None and kind != "rivals":  # rivals: "masked" names variants (below)
            try:
                render[key] = format_mask_value(parse_mask_value(str(render[key])))
            except ValueError as exc:
                raise ValueError(f"{source}: render.{key}: {exc}") from None
    for key in ("class_il", "forgetting"):  # a list or table here is not one of the names
        if key in render and not isinstance(render[key], str):
            raise ValueError(f"{source}: render.{key} must be one name in quotes, got {render[key]!r}")
    if render["class_il"] not in CLASS_IL_CONVENTIONS:
        raise ValueError(
            f"{source}: render.class_il {render['class_il']!r}: valid are {', '.join(CLASS_IL_CONVENTIONS)}"
        )
    if render["split"] not in ("test", "validation"):
        raise ValueError(f"{source}: render.split {render['split']!r}: valid are test, validation")
    if not isinstance(render["include_stale"], bool):
        raise ValueError(f"{source}: render.include_stale must be true or false")
    if "forgetting" in render:
        from clbench.metrics import FORGETTING_DEFINITIONS  # noqa: PLC0415

        if render["forgetting"] not in FORGETTING_DEFINITIONS:
            raise ValueError(
                f"{source}: render.forgetting {render['forgetting']!r}: valid are {', '.join(FORGETTING_DEFINITIONS)}"
            )
    if kind == "stability-gap" and not overrides.get("eval_every"):
        raise ValueError(f"{source}: a stability-gap experiment evaluates during training: give eval_every = N")
    if kind in ("class-order", "stability-gap"):
        for key in ("baseline", "masked"):
            if render[key] not in masks:
                raise ValueError(f"{source}: render.{key} {render[key]!r} is not among the masks {', '.join(masks)}")
    if kind == "rivals":
        render["masked"] = _masked_variants(render["masked"], methods, masks, per_method, names, source)
    if kind == "fig2":
        render["method"] = names.get(render["method"], render["method"]) or methods[0]
        if isinstance(render["buffer"], bool) or not isinstance(render["buffer"], (int, type(None))):
            raise ValueError(f"{source}: render.buffer must be a whole number, got {render['buffer']!r}")
        render["buffer"] = int(render["buffer"] if render["buffer"] is not None else buffers[0])
        for key in ("baseline", "masked"):
            if render[key] not in masks:
                raise ValueError(f"{source}: render.{key} {render[key]!r} is not among the masks {', '.join(masks)}")
        if render["method"] not in methods:
            raise ValueError(f"{source}: render.method {render['method']!r} is not among the methods")
        if render["buffer"] not in buffers:
            raise ValueError(f"{source}: render.buffer {render['buffer']} is not among the buffers")
    if kind == "fig4" and not any(m not in ("none",) for m in masks):
        raise ValueError(f"{source}: fig4 needs at least one mask value other than none")
    if kind == "fig4" and not isinstance(render.get("std_band", True), bool):
        raise ValueError(f"{source}: render.std_band must be true or false")
    name = _check_name(data.get("name", default_name), source)
    n_runs = len(methods) * len(masks) * len(buffers) * len(seeds) * len(class_orders)
    if n_runs > MAX_SWEEP_RUNS:
        raise ValueError(f"{source}: the experiment asks for {n_runs} runs: one sweep plans at most {MAX_SWEEP_RUNS}")
    return ExperimentSpec(
        name=name,
        kind=kind,
        benchmark=data["benchmark"],
        methods=tuple(methods),
        masks=tuple(dict.fromkeys(masks)),
        buffers=tuple(int(b) for b in buffers),
        seeds=tuple(seeds),
        mask_on=mask_on,
        mask_keep=mask_keep,
        overrides=overrides,
        render=render,
        title=str(data.get("title", "")),
        description=str(data.get("description", "")),
        source=source,
        per_method=per_method,
        method_refs=method_refs,
        class_orders=tuple(class_orders),
        slurm=_slurm_section(data, source),
    )


def _masked_variants(value, methods: list[str], masks: list[str], per_method: dict, names: dict, source: str):
    """A rivals experiment's ``render.masked``: the variants ("METHOD:MASK", e.g. "er:-inf") compared
    with every other variant, normalized ("derpp:-2" -> "derpp:-2.0"); by default every variant whose
    mask is not none. Each must be one of the experiment's variants with a mask."""
    own = {m: tuple(per_method.get(m, {}).get("masks", masks)) for m in methods}
    valid = [f"{m}:{mask}" for m in methods for mask in own[m] if mask != "none"]
    if value is None:
        if not valid:
            raise ValueError(f"{source}: a rivals experiment needs a method with a mask other than none")
        return tuple(valid)
    entries = [value] if isinstance(value, str) else value
    choices = ", ".join(valid) or "none (give a method a mask other than none)"
    if not isinstance(entries, list) or not entries or not all(isinstance(v, str) for v in entries):
        raise ValueError(f'{source}: render.masked must be a list of "METHOD:MASK" strings: valid are {choices}')
    out = []
    for entry in entries:
        method, _, mask = entry.rpartition(":")
        try:
            label = f"{names.get(method, method)}:{format_mask_value(parse_mask_value(mask))}"
        except ValueError:
            label = entry
        if label not in valid:
            raise ValueError(
                f"{source}: render.masked {entry!r} is not a masked variant of the experiment: valid are {choices}"
            )
        out.append(label)
    return tuple(dict.fromkeys(out))


def _class_orders(data: dict, source: str) -> list[int]:
    """The file's ``class_orders`` (a list of K >= 0; default [0], the benchmark's order)."""
    if "class_orders" not in data:
        return [0]
    orders = _list_of(data, "class_orders", source, int)
    for k in orders:
        _checked(source, "class_orders value", lambda v: check_whole("class_orders", v, 0), k)
    return list(dict.fromkeys(orders))


def _slurm_section(data: dict, source: str) -> dict[str, Any]:
    """The ``[slurm]`` section: names and texts (``sbatch``: a list of them); their values are
    checked with the command line's, when the executor is built."""
    section = _table(data, "slurm", source)
    for key, value in section.items():
        if key not in SLURM_KEYS:
            raise ValueError(f"{source}: unknown key slurm.{key}: valid keys are {', '.join(SLURM_KEYS)}")
        texts = value if key == "sbatch" and isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in texts):
            raise ValueError(f"{source}: slurm.{key} must be {'a list of strings' if key == 'sbatch' else 'a string'}")
    return section


def _normalized_masks(values: list, source: str, where: str) -> list[str]:
    out = []
    for m in values:
        try:
            out.append(format_mask_value(parse_mask_value(m)))
        except ValueError as exc:
            raise ValueError(f"{source}: {where}: {exc}") from None
    return list(dict.fromkeys(out))


def _per_method(data: dict, methods: list[str], source: str) -> dict[str, dict[str, Any]]:
    table = data.get("per_method", {})
    if not isinstance(table, dict):
        raise ValueError(f"{source}: per_method must be a table of methods, e.g. [per_method.gdumb]")
    out: dict[str, dict[str, Any]] = {}
    for method, entry in table.items():
        if method not in methods:
            raise ValueError(f"{source}: per_method.{method}: {method!r} is not among the methods {', '.join(methods)}")
        if not isinstance(entry, dict) or not entry:
            raise ValueError(f"{source}: per_method.{method} must be a table with masks, mask_on and/or mask_keep")
        bad = sorted(set(entry) - set(PER_METHOD_KEYS))
        if bad:
            raise ValueError(
                f"{source}: unknown key {bad[0]!r} in per_method.{method}: valid keys are {', '.join(PER_METHOD_KEYS)}"
            )
        own: dict[str, Any] = {}
        if "masks" in entry:
            own["masks"] = tuple(
                _normalized_masks(
                    _list_of(entry, "masks", f"{source}: per_method.{method}", str),
                    source,
                    f"per_method.{method}.masks",
                )
            )
        if "mask_on" in entry:
            if entry["mask_on"] not in MASK_ON_CHOICES:
                raise ValueError(
                    f"{source}: per_method.{method}: invalid mask_on {entry['mask_on']!r}: valid are "
                    f"{', '.join(MASK_ON_CHOICES)}"
                )
            own["mask_on"] = entry["mask_on"]
        if "mask_keep" in entry:
            if entry["mask_keep"] not in MASK_KEEP_CHOICES:
                raise ValueError(
                    f"{source}: per_method.{method}: invalid mask_keep {entry['mask_keep']!r}: valid are "
                    f"{', '.join(MASK_KEEP_CHOICES)}"
                )
            own["mask_keep"] = entry["mask_keep"]
        out[method] = own
    return out


def _method_names(methods: list[str], source: str) -> dict[str, str]:
    """Each entry of ``methods`` -> the name its runs are stored under ("/p/m.py:M" -> M's ``name``);
    two entries of one name are refused (their runs could not be told apart)."""
    from clbench.methods import find_method  # noqa: PLC0415

    names: dict[str, str] = {}
    for method in methods:
        name = find_method(method).name
        other = next((m for m, n in names.items() if n == name), None)
        if other is not None and other != method:
            raise ValueError(f"{source}: methods: {other!r} and {method!r} are both named {name!r}: give one of them")
        names[method] = name
    return names


def _check_masks_can_act(methods: list[str], masks: list[str], mask_on: str, per_method: dict, source: str) -> None:
    """Refuse a mask placed where a method's cross-entropy cannot see it (the run would be its
    baseline under another name), naming what to write instead."""
    from clbench.methods import find_method  # noqa: PLC0415

    for method in methods:
        try:
            acts_on = find_method(method).card.mask_acts_on
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        own = per_method.get(method, {})
        on = own.get("mask_on", mask_on)
        masked = [m for m in own.get("masks", masks) if m != "none"]
        if masked and not mask_rows(on) <= set(acts_on):
            fix = (
                'masks = ["none"] (it has no softmax cross-entropy)'
                if not acts_on
                else f'mask_on = "{"buffer" if "buffer" in acts_on else "stream"}"'
            )
            raise ValueError(
                f"{source}: the masks {', '.join(masked)} on the {on} cannot act in {method}, whose "
                f"cross-entropy sees {' or '.join(acts_on) or 'no'} rows: give [per_method.{method}] {fix}"
            )


def _check_keeps_can_act(methods: list[str], masks: list[str], keep: str, per_method: dict, source: str) -> None:
    """Refuse a keep-set a method's cross-entropy cannot use (``Method.mask_keeps``)."""
    from clbench.methods import find_method  # noqa: PLC0415

    for method in methods:
        own = per_method.get(method, {})
        wanted = own.get("mask_keep", keep)
        keeps = find_method(method).card.mask_keeps
        if wanted not in keeps and any(m != "none" for m in own.get("masks", masks)):
            raise ValueError(
                f"{source}: mask_keep {wanted!r} cannot act in {method}: give [per_method.{method}] "
                f"mask_keep one of {', '.join(keeps)}"
            )


def mask_sort_key(label: str) -> tuple[int, float]:
    """none first, then -inf, then the finite values in order."""
    value = parse_mask_value(label)
    return (0, 0.0) if value is None else (1, value)
