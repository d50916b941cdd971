"""The experiment registry, in the style of timm's model registry.

An experiment is a name mapped to an :class:`ExperimentSpec`: how to build the model for a
given cohort view (:class:`ModelContext`), which data it sees (:class:`DataView`), how it is
trained (:class:`Recipe`) and which metrics apply. Baselines and ablations register
themselves with :func:`register_experiment`; ``mstnet list``, ``mstnet run NAME`` and
``mstnet ablate NAME`` are lookups.

Example::

    @register_experiment("my-unet", group="reference", tasks=("segmentation",),
                         description="A 3D U-Net (MONAI BasicUNet).")
    def build(context: ModelContext) -> nn.Module:
        return SegmentationPerTimepoint(BasicUNet(spatial_dims=3, in_channels=1, out_channels=1))
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mstnet.errors import UnknownNameError, UsageError, choices
from mstnet.information import INFORMATION_KEYS, information_key
from mstnet.models.losses import DEFAULT_CLS_LOSS_WEIGHT, DEFAULT_SEG_LOSS_WEIGHT

GROUPS = ("paper-table", "reference", "ablation", "extra")
TASKS = ("segmentation", "classification")
INFORMATION_SUBSETS: tuple[str, ...] = (*INFORMATION_KEYS, "everything")
"""Keys of ``oracle.json``: the information an experiment's inputs carry (:mod:`mstnet.information`:
``scans2+clinical``, ``scans1``, ``clinical``, ``scans1+clinical+reads``, ...), plus ``everything``."""

DEFAULT_CLINICAL_SOURCES: tuple[str, ...] = ("history", "screening")
"""The clinical sources an experiment sees unless it declares others: the record without the
radiologist's reads (:data:`mstnet.data.cohort.CLINICAL_SOURCES`)."""


@dataclass(frozen=True)
class DataView:
    """What an experiment sees of each patient.

    Attributes:
        timepoints: the latest ``timepoints`` scans per patient (1 = latest scan only).
        use_clinical: feed the clinical record to the model.
        clinical_sources: which clinical columns it sees, by their source in the cohort's
            clinical schema (:attr:`mstnet.data.cohort.ClinicalSchema.sources`): ``history``
            (demographics and history), ``screening`` (screening results) and ``read`` (the
            radiologist's read of the nodule and the CT: nodule type, spiculation, emphysema,
            upper lobe, nodule count). Default: history and screening, no reads. The harness
            fits the clinical encoder on these columns only
            (:meth:`mstnet.data.cohort.ClinicalSchema.restricted_to`); tabular references choose
            their columns by the same rule.
    """

    timepoints: int = 2
    use_clinical: bool = True
    clinical_sources: tuple[str, ...] = DEFAULT_CLINICAL_SOURCES

    def __post_init__(self) -> None:
        from mstnet.data.cohort import CLINICAL_SOURCES

        object.__setattr__(self, "clinical_sources", tuple(self.clinical_sources))
        unknown = [s for s in self.clinical_sources if s not in CLINICAL_SOURCES]
        if unknown or len(set(self.clinical_sources)) != len(self.clinical_sources):
            raise ValueError(f"clinical_sources {self.clinical_sources!r}: each must be one of {CLINICAL_SOURCES}, "
                             "listed once")

    @property
    def sees_reads(self) -> bool:
        """Whether it sees the radiologist's reads (clinical columns of source ``read``)."""
        return self.use_clinical and "read" in self.clinical_sources

    def information(self, images: bool = True) -> str:
        """Its information key (:func:`mstnet.information.information_key`): the latest
        ``timepoints`` scans when it sees ``images``, the clinical record, and the reads."""
        return information_key(self.timepoints if images else 0, self.use_clinical, self.sees_reads)


LARGE_NODULE_MM = 20.0
"""Equivalent-sphere diameter above which a training patient counts as having a large nodule
(``Recipe.large_nodule_weight``): the 3D rows miss nodules over 20 mm (docs/training.md)."""


@dataclass(frozen=True)
class Recipe:
    """How an experiment is trained; every field can be overridden from the CLI or Optuna.

    The default is the public release's recipe: Adam, learning rate 1e-4, cosine decay to
    0.1x. ``optimizer`` is one of :data:`OPTIMIZERS` (``"adamw"``; ``"sgd"``: Nesterov momentum
    0.99 as in nnU-Net; :func:`mstnet.experiments.optimisation.stage_optimizer`). ``stages`` is
    ``("joint",)`` for one stage on all losses (weighted by ``seg_loss_weight`` and
    ``cls_loss_weight``), or ``("segmentation", "classification")`` for the paper's two-stage
    recipe (the second stage freezes what the first trained). ``amp`` turns on autocast on CUDA
    (bf16 where supported); ``channels_last`` stores every convolution weight channels-last
    (:func:`mstnet.experiments.training.to_channels_last`), which speeds up 3D convolutions
    on CPU and GPU without changing values.

    Beyond the release (named fields, off by default so the ``paper`` preset reproduces it):
    ``lr_schedule="warmup_cosine"`` steps the schedule per optimizer step, with a linear
    warm-up over ``warmup_fraction`` of each stage's steps, then cosine decay;
    ``output_bias_init`` sets the biases of the segmentation and classification output
    layers so the untrained model predicts the training data's foreground and malignancy
    priors (:mod:`mstnet.experiments.initialisation`); ``frozen_stage_cache`` computes the
    frozen segmentation network's outputs once per fold for each training patient and each of
    the first ``frozen_stage_augmentations`` in-plane flips and rotations, and trains the
    classification stage on them (:mod:`mstnet.experiments.frozen_stage`), in batches of
    ``frozen_stage_batch_size`` patients (0: ``batch_size``); ``test_time_mirroring`` averages
    the trained model's foreground and malignancy probabilities over the 8 flips of the input's
    depth, height and width axes on the inner-validation threshold, the test fold and ``mstnet
    predict`` (:mod:`mstnet.experiments.test_time`; the epoch is still chosen unmirrored);
    ``scale_augmentation`` is the probability that a training patient's crop is zoomed by a
    factor drawn from 0.7 to 1.4, every time point alike (nnU-Net's scaling;
    :attr:`mstnet.data.transforms.AugmentConfig.zoom_prob`). ``augment=False`` trains on the
    plain crops (no augmentation at all). ``cpu_bf16`` runs the training steps on a CPU under bf16
    autocast where the CPU runs bf16 natively, and in float32 where it would be emulated
    (:func:`mstnet.experiments.training.cpu_bf16_steps`; validation, the test fold and
    ``mstnet predict`` stay float32). ``large_nodule_weight`` (1: off) is the sampling weight of
    training patients with a nodule larger than :data:`LARGE_NODULE_MM`
    in the training loader, drawn with replacement, as many patients per epoch as without it, each
    draw augmented on its own and each DDP rank its share
    (:func:`mstnet.experiments.fold_data.large_nodule_weights`, :class:`~mstnet.experiments.fold_data.WeightedDraws`);
    since every stage that reads the loader would see the shifted malignancy mix, a fold refuses it
    where a stage that trains a classifier reads that loader (the joint stage of a model that
    classifies, a classification stage without the frozen cache, which a DDP run does not use).

    Budget: a run preset sets ``batch_size`` for every experiment, and by default its
    ``epochs`` and ``early_stopping_patience`` too
    (:class:`mstnet.experiments.presets.RunPreset`); a recipe with ``budget_from_preset=False``
    keeps its own length (``epochs`` or ``stage_epochs``, and patience): a budget chosen for
    that architecture within the preset's time limit. ``--epochs`` sets the epochs of every
    stage of every experiment either way. ``segmentation_epochs`` (0: off) replaces the length of
    a ``segmentation`` stage only, whatever the recipe's own lengths, so one setting lengthens
    that stage in every two-stage experiment of a table (``mstnet reproduce --set
    segmentation_epochs=24``) and leaves joint and classification stages as they are.
    """

    epochs: int = 30
    batch_size: int = 4
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    final_lr_fraction: float = 0.1
    early_stopping_patience: int = 10
    gradient_accumulation: int = 1
    stages: tuple[str, ...] = ("joint",)
    stage_epochs: tuple[int, ...] | None = None
    segmentation_epochs: int = 0
    seg_loss_weight: float = DEFAULT_SEG_LOSS_WEIGHT
    cls_loss_weight: float = DEFAULT_CLS_LOSS_WEIGHT
    augment: bool = True
    amp: bool = True
    channels_last: bool = True
    seed: int = 0
    lr_schedule: str = "epoch_cosine"
    warmup_fraction: float = 0.0
    output_bias_init: bool = False
    frozen_stage_cache: bool = False
    frozen_stage_augmentations: int = 8
    frozen_stage_batch_size: int = 0
    budget_from_preset: bool = True
    optimizer: str = "adam"
    test_time_mirroring: bool = False
    scale_augmentation: float = 0.0
    cpu_bf16: bool = False
    large_nodule_weight: float = 1.0


@dataclass(frozen=True)
class ModelContext:
    """What a model builder knows about the data it will see.

    Attributes:
        image_size: (D, H, W) of each preprocessed volume.
        num_timepoints: T, the number of scans per patient fed to the model.
        clinical_cardinalities: codes per categorical clinical column (code 0 = unknown).
        num_numeric: number of numeric clinical features.
        use_clinical: whether clinical inputs are fed.
        preset: the size preset name ("tiny", "cpu", "paper").
        params: model settings overridden from the CLI (``--set``) or an Optuna trial; a
            builder refuses keys it does not know (:func:`resolve_settings`).
        settings: filled by the builder with every setting it resolved (defaults and
            overrides), the model configuration written to ``config.json``.
    """

    image_size: tuple[int, int, int]
    num_timepoints: int
    clinical_cardinalities: tuple[int, ...]
    num_numeric: int
    use_clinical: bool
    preset: str = "cpu"
    params: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ExperimentSpec:
    """A registered experiment.

    Attributes:
        name: registry key, e.g. ``"mstnet"``, ``"unetr"``, ``"ablation/no-stdm"``.
        description: one line for ``mstnet list``.
        build: ``ModelContext -> nn.Module`` for deep models (returning
            :class:`mstnet.models.output.ModelOutput`), or ``ModelContext -> estimator`` for
            tabular ones (``kind="tabular"``: ``fit(features, labels)`` and
            ``predict_proba(features) -> [N]``).
        tasks: subset of ``("segmentation", "classification")``.
        group: "paper-table", "reference", "ablation" or "extra".
        table_row: the Table-1 row this experiment fills, if any.
        information: the oracle subset matching its inputs (a key of ``oracle.json``, one of
            :data:`INFORMATION_SUBSETS`); default (None): derived from ``data_view``
            (:meth:`DataView.information`: its time points, clinical record and reads). Set it
            where the data view does not tell, e.g. ``"clinical"`` for a model that sees no images.
        data_view: time points and modalities it sees.
        recipe: its default training recipe per preset name (``"default"`` applies to all).
        footnote: deviations from the source method, shown under the table.
        kind: "torch" (trained by the harness) or "tabular" (fitted on patient features).
        search_space: ``optuna.Trial -> dict`` of overrides, for ``mstnet tune``.
    """

    name: str
    description: str
    build: Callable[[ModelContext], Any]
    tasks: tuple[str, ...]
    group: str = "extra"
    table_row: str | None = None
    information: str | None = None
    data_view: DataView = DataView()
    recipe: dict[str, Recipe] = field(default_factory=lambda: {"default": Recipe()})
    footnote: str = ""
    kind: Literal["torch", "tabular"] = "torch"
    search_space: Callable[[Any], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"experiment {self.name!r}: group {self.group!r} is not one of {GROUPS}")
        unknown = set(self.tasks) - set(TASKS)
        if not self.tasks or unknown:
            raise ValueError(f"experiment {self.name!r}: tasks {self.tasks!r} must be a non-empty subset of {TASKS}")
        if self.information is None:
            object.__setattr__(self, "information", self.data_view.information())
        if self.information not in INFORMATION_SUBSETS:
            raise ValueError(f"experiment {self.name!r}: information {self.information!r} is not one of {INFORMATION_SUBSETS}")

    def recipe_for(self, preset: str) -> Recipe:
        return self.recipe.get(preset, self.recipe.get("default", Recipe()))

    def metadata(self) -> dict[str, Any]:
        """The JSON-able part written to ``experiment.json``."""
        return {
            "name": self.name,
            "description": self.description,
            "tasks": list(self.tasks),
            "group": self.group,
            "table_row": self.table_row,
            "information": self.information,
            "footnote": self.footnote,
            "kind": self.kind,
            "data_view": {"timepoints": self.data_view.timepoints, "use_clinical": self.data_view.use_clinical,
                          "clinical_sources": list(self.data_view.clinical_sources)},
        }


LR_SCHEDULES = ("epoch_cosine", "warmup_cosine")
OPTIMIZERS = ("adam", "adamw", "sgd")
"""``Recipe.optimizer`` values (see :func:`mstnet.experiments.optimisation.stage_optimizer`)."""
"""``Recipe.lr_schedule`` values (see :func:`mstnet.experiments.optimisation.stage_scheduler`)."""

RECIPE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Recipe))
"""Keys of ``--set`` that change the training recipe; every other key is a model setting."""

_POSITIVE_RECIPE_FIELDS = ("epochs", "batch_size", "learning_rate", "early_stopping_patience", "gradient_accumulation")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (tuple, list)):
        return "a list such as [1, 2]"
    return type(value).__name__


def checked_value(owner: str, key: str, value: Any, default: Any) -> Any:
    """``value`` for setting ``key`` of ``owner``, converted to the type of ``default``.

    Integers are accepted where a number is expected, lists where a tuple is; a value of
    another type is a :class:`UsageError` naming the key, the value and the expected type.
    A setting whose default is ``None`` takes any value.
    """
    if default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (tuple, list))
        value = tuple(value) if ok else value
    elif isinstance(default, Mapping):
        ok = isinstance(value, Mapping)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UsageError(f"{owner}: --set {key}={value!r} is not {_kind(default)} (default {default!r})")
    return value


def checked_settings(owner: str, defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` with ``overrides`` applied, each checked by :func:`checked_value`.

    Raises:
        UsageError: a key that ``defaults`` lacks (naming it and the valid keys), or a value
            of the wrong type.
    """
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise UsageError(f"{owner}: unknown setting {', '.join(map(repr, unknown))} for --set; its settings are "
                         f"{choices(sorted(defaults), limit=60)}; training-recipe fields are {choices(RECIPE_FIELDS, limit=60)}")
    return {**defaults, **{key: checked_value(owner, key, value, defaults[key]) for key, value in overrides.items()}}


def resolve_settings(owner: str, defaults: Mapping[str, Any], context: ModelContext) -> dict[str, Any]:
    """A builder's settings: ``defaults`` with ``context.params`` applied (checked), recorded in ``context.settings``."""
    settings = checked_settings(owner, defaults, context.params)
    context.settings.update(settings)
    return settings


def split_overrides(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` overrides as (training-recipe fields, model settings)."""
    recipe = {k: v for k, v in params.items() if k in RECIPE_FIELDS}
    return recipe, {k: v for k, v in params.items() if k not in RECIPE_FIELDS}


def epochs_per_stage(recipe: Recipe) -> tuple[int, ...]:
    """The epochs of each of ``recipe.stages``: ``stage_epochs``, else ``epochs`` for every stage; a
    ``segmentation`` stage takes ``segmentation_epochs`` instead when that is set (> 0).

    Raises:
        ValueError: ``stage_epochs`` does not give one length per stage.
    """
    epochs = recipe.stage_epochs or tuple(recipe.epochs for _ in recipe.stages)
    if len(epochs) != len(recipe.stages):
        raise ValueError(f"recipe has {len(recipe.stages)} stages but {len(epochs)} stage_epochs")
    return tuple(recipe.segmentation_epochs if name == "segmentation" and recipe.segmentation_epochs else n_epochs
                 for name, n_epochs in zip(recipe.stages, epochs))


def checked_recipe(owner: str, recipe: Recipe, overrides: Mapping[str, Any]) -> Recipe:
    """``recipe`` with ``overrides`` (recipe fields) applied, typed and range-checked.

    Raises:
        UsageError: a value of the wrong type, a non-positive epoch count, batch size,
            learning rate or patience, or an unknown training stage, schedule or optimizer.
    """
    defaults = dataclasses.asdict(recipe)
    if recipe.stage_epochs is None:
        defaults["stage_epochs"] = ()
    values = checked_settings(owner, defaults, {k: v for k, v in overrides.items() if k != "stage_epochs" or v is not None})
    if isinstance(values["stages"], str):
        values["stages"] = tuple(values["stages"].split(","))
    values["stage_epochs"] = tuple(values["stage_epochs"]) or None
    for key in _POSITIVE_RECIPE_FIELDS:
        if values[key] <= 0:
            raise UsageError(f"{owner}: {key} must be positive, got {values[key]!r}")
    for epochs in values["stage_epochs"] or ():
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise UsageError(f"{owner}: stage_epochs must be positive integers, got {values['stage_epochs']!r}")
    if values["stage_epochs"] is not None and len(values["stage_epochs"]) != len(values["stages"]):
        raise UsageError(f"{owner}: stage_epochs {list(values['stage_epochs'])} gives {len(values['stage_epochs'])} "
                         f"lengths for {len(values['stages'])} stages ({', '.join(values['stages'])})")
    if values["segmentation_epochs"] < 0:
        raise UsageError(f"{owner}: segmentation_epochs must be 0 (the recipe's own length) or positive, "
                         f"got {values['segmentation_epochs']!r}")
    if values["lr_schedule"] not in LR_SCHEDULES:
        raise UsageError(f"{owner}: lr_schedule {values['lr_schedule']!r}: choose one of {', '.join(LR_SCHEDULES)}")
    if values["optimizer"] not in OPTIMIZERS:
        raise UsageError(f"{owner}: optimizer {values['optimizer']!r}: choose one of {', '.join(OPTIMIZERS)}")
    if values["frozen_stage_batch_size"] < 0:
        raise UsageError(f"{owner}: frozen_stage_batch_size must be 0 (the batch size) or positive, "
                         f"got {values['frozen_stage_batch_size']!r}")
    if not 1 <= values["frozen_stage_augmentations"] <= 16:
        raise UsageError(f"{owner}: frozen_stage_augmentations must be 1..16, got {values['frozen_stage_augmentations']!r}")
    if not 0 <= values["warmup_fraction"] < 1:
        raise UsageError(f"{owner}: warmup_fraction must be in [0, 1), got {values['warmup_fraction']!r}")
    if not 0 <= values["scale_augmentation"] <= 1:
        raise UsageError(f"{owner}: scale_augmentation must be a probability in [0, 1], got {values['scale_augmentation']!r}")
    if values["large_nodule_weight"] < 1:
        raise UsageError(f"{owner}: large_nodule_weight must be at least 1 (1: off), got {values['large_nodule_weight']!r}")
    unknown_stages = [name for name in values["stages"] if name not in ("joint", "segmentation", "classification")]
    if unknown_stages or not values["stages"]:
        raise UsageError(f"{owner}: stages {values['stages']!r}: each must be joint, segmentation or classification")
    return Recipe(**values)


_REGISTRY: dict[str, ExperimentSpec] = {}
_PLUGIN_PACKAGES = ("mstnet.experiments.catalog", "baselines", "ablations")
_plugins_loaded = False
_plugins_loading = False


class PluginError(ImportError):
    """A plugin module failed to import: the registry cannot answer lookups."""


_plugin_error: PluginError | None = None
"""The first plugin failure, raised again by every later lookup (the registry is then unusable, never half-filled)."""


def register_experiment(name: str, **spec_fields: Any) -> Callable[[Callable], Callable]:
    """Decorator registering a model builder as experiment ``name`` (fields of :class:`ExperimentSpec`)."""

    def decorator(build: Callable) -> Callable:
        add_experiment(ExperimentSpec(name=name, build=build, **spec_fields))
        return build

    return decorator


def add_experiment(spec: ExperimentSpec) -> ExperimentSpec:
    if spec.name in _REGISTRY and _REGISTRY[spec.name].build is not spec.build:
        raise ValueError(f"experiment {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _failing_module(error: BaseException, package: str) -> str:
    """The plugin module where ``error`` arose: the innermost traceback frame in ``package``, or the file of
    a syntax error in it; ``package`` itself when no frame tells."""
    if isinstance(error, SyntaxError) and error.filename:
        return error.filename
    module = package
    traceback = error.__traceback__
    while traceback is not None:
        name = traceback.tb_frame.f_globals.get("__name__", "")
        if name == package or name.startswith(f"{package}."):
            module = name
        traceback = traceback.tb_next
    return module


def _load_plugins() -> None:
    """Import the packages whose modules register experiments, all of them or none.

    Idempotent once it succeeded. A plugin that fails makes this and every later call raise
    :class:`PluginError` naming the module and its error, so no lookup answers from a half-filled
    registry. A lookup from a plugin while plugins load is refused: its answer would depend on the
    order in which plugins register (import what it needs from its module instead).
    """
    global _plugins_loaded, _plugins_loading, _plugin_error
    if _plugin_error is not None:
        raise PluginError(str(_plugin_error)) from _plugin_error.__cause__
    if _plugins_loaded:
        return
    if _plugins_loading:
        raise RuntimeError("an experiment lookup ran while the registry loads its plugins (at import time of a "
                           "plugin module); the answer would depend on registration order, so import what the "
                           "module needs directly")
    _plugins_loading = True
    try:
        for package in _PLUGIN_PACKAGES:
            try:
                importlib.import_module(package)
            except Exception as error:
                _plugin_error = PluginError(f"the experiment registry could not load plugin module "
                                            f"{_failing_module(error, package)!r}: {type(error).__name__}: {error}")
                _plugin_error.__cause__ = error
                raise _plugin_error from error
    finally:
        _plugins_loading = False
    _plugins_loaded = True


def get_experiment(name: str) -> ExperimentSpec:
    _load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = fnmatch.filter(_REGISTRY, f"*{name}*")
        hint = f"; similar: {', '.join(sorted(close))}" if close else "; `mstnet list` shows all"
        raise UnknownNameError(f"no experiment named {name!r}{hint}") from None


def list_experiments(pattern: str = "*", group: str | None = None) -> list[ExperimentSpec]:
    """Registered experiments whose name matches ``pattern`` (fnmatch), sorted by group then name."""
    _load_plugins()
    if group is not None and group not in GROUPS:
        raise UnknownNameError(f"no group named {group!r}; choose one of {choices(GROUPS)}")
    specs = [s for s in _REGISTRY.values() if fnmatch.fnmatch(s.name, pattern) and (group is None or s.group == group)]
    return sorted(specs, key=lambda s: (GROUPS.index(s.group), s.name))
