"""The one registry of models: built-ins, classes registered in-process, and plug-ins.

A model is named in three ways, tried in this order by :func:`get`:

* ``package.module:ClassName``: imported on demand (a plug-in that is not installed as a
  package, e.g. ``--model examples.plugin.tiny_model:TinyModel``);
* a registered name: every class decorated with :func:`register`. The built-in modules of
  ``qamoe_core/models/`` are imported (and so registered) the first time a name is looked up,
  found by listing the package, so a new model module needs no edit here;
* the name of an entry point in the group ``qamoe.models`` of an installed distribution
  (``[project.entry-points."qamoe.models"] my-model = "my_pkg.model:MyModel"``), loaded only
  when that name is asked for. A built-in name wins over an entry point of the same name.

:func:`get` serves names the USER gives (``--model``, ``build_model``). A name read from a
file (a run's ``model_name`` / ``model_class``) goes through :func:`recorded_spec` first:
nothing named inside a file decides what is imported. It resolves to a built-in, an installed
entry point, or a ``module:Class`` the user allowed (``--plugin``, ``plugins=[...]``), and is
refused otherwise (docs/security.md, "Code named in files").

A name is resolved to its class ONCE per command, into a :class:`ModelChoice` (the name as
given, for the records, and the class) that the pipeline passes on: :func:`resolve` for a
name the user gives, :func:`for_run` for the one a run recorded. Building, filling in the
options and recording the class path all read that choice, never the name again.

Model modules import this one; it imports none of them statically (the built-ins are
imported by name inside :func:`_load_builtins`), so the import graph stays acyclic.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from qamoe_core.base.errors import CheckpointError, InputError, UsageError, check_choice
from qamoe_core.base.names import CONTROLS, DEFAULT_MODEL
from qamoe_core.config import ModelConfig
from qamoe_core.models.base import (
    AUX_LOSSES,
    CONTRACT_HINT,
    ModelOptions,
    MultimodalModel,
    check_modalities,
)

ENTRY_POINT_GROUP = "qamoe.models"
_REGISTRY: dict[str, type[MultimodalModel]] = {}
_loaded = False
M = TypeVar("M", bound=type[MultimodalModel])


def register(cls: M) -> M:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or ":" in name or name == "base":
        raise ValueError(f"{cls.__qualname__} needs a class attribute 'name' (no ':')")
    other = _REGISTRY.get(name)
    if other is not None and class_path(other) != class_path(cls):
        raise ValueError(f"model name {name!r} is taken by {class_path(other)}")
    _REGISTRY[name] = cls
    return cls


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        # Every module: only @register adds a model, so importing a helper module is harmless.
        if not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")


def _is_baseline(cls: type[MultimodalModel]) -> bool:
    """One of our fusion baselines: a model registered by ``models/fusion.py``."""
    return cls.__module__ == f"{__package__}.fusion"


def builtin_names() -> tuple[str, ...]:
    """Registered names: the default model (QA-MoE) first, then our fusion baselines as
    :func:`baselines` lists them, then the rest by name (modules load in file-name order,
    which says nothing about the models)."""
    _load_builtins()
    order = list(_REGISTRY)  # registration order

    def key(name: str) -> tuple[bool, bool, int | str]:
        ours = _is_baseline(_REGISTRY[name])
        return (name != DEFAULT_MODEL, not ours, order.index(name) if ours else name)

    return tuple(sorted(_REGISTRY, key=key))


def baselines() -> tuple[str, ...]:
    """Our fusion baselines (models/fusion.py: late fusion, early fusion, dense MoE), in the
    order that module registers them: what the demo may compare QA-MoE with."""
    return tuple(n for n in builtin_names() if _is_baseline(_REGISTRY[n]))


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> tuple[str, ...]:
    """Every name ``--model`` accepts, built-ins first, then installed plug-ins' (unloaded)."""
    builtins = builtin_names()
    return builtins + tuple(sorted(n for n in _entry_points() if n not in builtins))


def class_path(cls: type) -> str:
    """``module:QualName``, the form a checkpoint records and :func:`get` accepts."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _plugin_error(spec: str, exc: BaseException) -> InputError:
    detail = " ".join(str(exc).split())[:200]
    return InputError(
        f"The model plug-in '{spec}' could not be imported ({type(exc).__name__}: {detail}).",
        hint="Install the package that provides it, or add its folder to PYTHONPATH.",
    )


def _checked(obj: Any, spec: str) -> type[MultimodalModel]:
    if not (isinstance(obj, type) and issubclass(obj, MultimodalModel)):
        raise InputError(
            f"The model plug-in '{spec}' is a {type(obj).__name__}, not a subclass of "
            "qamoe_core.models.MultimodalModel.",
            hint=CONTRACT_HINT,
        )
    if not (isinstance(obj.Options, type) and issubclass(obj.Options, ModelOptions)):
        raise InputError(
            f"The model plug-in '{spec}' has an Options attribute that is not a "
            "ModelOptions dataclass.",
            hint=CONTRACT_HINT,
        )
    _check_declarations(obj, spec)
    return obj


def _check_declarations(cls: type[MultimodalModel], spec: str) -> None:
    """InputError naming a declaration of the contract that cannot be honoured: a control
    evaluation does not offer, a loss weight that is not one of the model's options."""
    unknown = [c for c in cls.controls if c not in CONTROLS]
    if isinstance(cls.controls, str) or unknown:
        raise InputError(
            f"The model plug-in '{spec}' declares the controls {cls.controls!r:.80}; the "
            f"evaluation controls are {', '.join(CONTROLS)} (a tuple of names).",
            hint=CONTRACT_HINT,
        )
    weights = dict(cls.loss_weights)
    options = cls.Options.field_names()
    if any(t not in AUX_LOSSES or o not in options for t, o in weights.items()):
        raise InputError(
            f"The model plug-in '{spec}' declares the loss_weights {weights!r:.120}; each maps "
            f"one of {', '.join(AUX_LOSSES)} to the name of a field of its Options.",
            hint=CONTRACT_HINT,
        )


def _from_path(spec: str) -> type[MultimodalModel]:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise InputError(
            f"The model plug-in '{spec}' must be written package.module:ClassName.",
            hint="For example --model examples.plugin.tiny_model:TinyModel.",
        )
    try:
        obj: Any = importlib.import_module(module)
    except Exception as exc:  # a plug-in's own import failure, whatever it is
        raise _plugin_error(spec, exc) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(
                f"The model plug-in module '{module}' has no attribute '{attr}'.",
                hint="Check the class name after the ':' (it is case-sensitive).",
            )
        obj = getattr(obj, part)
    return _checked(obj, spec)


def get(name: str, param: str = "model") -> type[MultimodalModel]:
    """The model class for a name, ``module:Class`` or entry point; InputError otherwise
    (naming the valid names and the nearest one; ``param``: the parameter's name there)."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"The '{param}' parameter must be a model name. Got {name!r} instead.")
    if ":" in name:
        return _from_path(name)
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    ep = _entry_points().get(name)
    if ep is not None:
        try:
            obj = ep.load()
        except Exception as exc:
            raise _plugin_error(f"{name} = {ep.value}", exc) from None
        return _checked(obj, f"{name} = {ep.value}")
    try:
        check_choice(name, names(), param)
    except UsageError as exc:  # a usage error (exit 2), with the nearest name in its hint
        raise UsageError(
            exc.message, hint=f"{exc.hint} A plug-in is given as package.module:ClassName."
        ) from None
    raise AssertionError("unreachable: check_choice accepted an unknown name")


@dataclass(frozen=True)
class ModelChoice:
    """A model name resolved to its class, once: what the pipeline passes on.

    ``name``: as the user (or the run) gave it, recorded as config.json's ``model_name``;
    ``cls``: its class, whose ``module:Class`` path is recorded as ``model_class``."""

    name: str
    cls: type[MultimodalModel]

    @property
    def class_path(self) -> str:
        return class_path(self.cls)

    def options(self, cfg: ModelConfig) -> ModelOptions:
        """The model's Options from ``cfg.options`` (ConfigError naming an unknown key)."""
        return self.cls.Options.from_dict(cfg.options, self.name)

    def complete(self, cfg: ModelConfig) -> ModelConfig:
        """``cfg`` with the model's options filled in with their defaults (what a run
        records); checks the options on the way."""
        return cfg.override(options=self.options(cfg).to_dict())

    def build(self, cfg: ModelConfig, dims: Mapping[str, int], task: str) -> MultimodalModel:
        """The model for the feature dims {modality: D_m} and the task (regression |
        binary); its options from ``cfg.options``."""
        check_modalities(self.cls, tuple(m for m in dims))
        return self.cls(cfg, dims, task, self.options(cfg))


def resolve(model: str | ModelChoice = DEFAULT_MODEL, param: str = "model") -> ModelChoice:
    """The choice for a name the user gives (see :func:`get`; ``param`` names the parameter
    in errors); a choice already made is returned as it is."""
    if isinstance(model, ModelChoice):
        return model
    return ModelChoice(model, get(model, param))


def complete_config(model: str | ModelChoice, cfg: ModelConfig) -> ModelConfig:
    """:meth:`ModelChoice.complete` for a name (checks the name and the options)."""
    return resolve(model).complete(cfg)


def build_model(
    model: str | ModelChoice, cfg: ModelConfig, dims: Mapping[str, int], task: str
) -> MultimodalModel:
    """:meth:`ModelChoice.build` for a name (see :func:`get`): dims {modality: D_m} of the
    feature file; task regression | binary. Options come from ``cfg.options``."""
    return resolve(model).build(cfg, dims, task)


def is_class_path(spec: Any) -> bool:
    """Whether ``spec`` has the form ``package.module:Class`` (dotted identifiers); says
    nothing about whether it can be imported, and imports nothing."""
    if not isinstance(spec, str) or spec.count(":") != 1 or len(spec) > 300:
        return False
    module, attr = spec.split(":")
    return all(p.isidentifier() for p in (*module.split("."), *attr.split(".")))


def could_be_loaded(name: Any, recorded: Any = None) -> bool:
    """Whether a run's recorded model has a form some install could load: a built-in or
    installed name, a ``module:Class`` path, or any name next to a recorded ``module:Class``.
    Imports nothing: whether it MAY be imported is :func:`recorded_spec`'s question."""
    if not isinstance(name, str) or not name:
        return False
    if ":" in name:
        return is_class_path(name)
    plugin = is_class_path(recorded) and not str(recorded).startswith(f"{__package__}.")
    return plugin or name in names()


def check_plugins(plugins: Any, param: str = "plugins") -> tuple[str, ...]:
    """The user's allowed plug-in classes (``--plugin``), each ``package.module:Class``."""
    if isinstance(plugins, str | bytes) or not isinstance(plugins, Iterable):
        raise UsageError(
            f"The '{param}' parameter must be a list of package.module:ClassName. "
            f"Got {plugins!r:.80} instead."
        )
    specs = tuple(plugins)
    for spec in specs:
        if not is_class_path(spec):
            raise UsageError(
                f"The '{param}' parameter takes package.module:ClassName. Got {spec!r:.80} "
                "instead.",
                hint="For example --plugin examples.plugin.qamoe_example_plugin:MeanPoolModel.",
            )
    return specs


def _trusted_paths(plugins: tuple[str, ...]) -> set[str]:
    """Class paths qamoe may import: the user's, installed entry points', the built-ins'."""
    _load_builtins()
    installed = {ep.value.split("[")[0].strip() for ep in _entry_points().values()}
    return {*plugins, *installed, *(class_path(cls) for cls in _REGISTRY.values())}


def _not_allowed(run: Any, spec: str) -> CheckpointError:
    shown = repr(spec)[1:-1][:120]  # from a file: escaped, one line, bounded
    return CheckpointError(
        f"The run '{run}' names the model class '{shown}', which is not built in, not an "
        f"installed {ENTRY_POINT_GROUP} plug-in and not allowed: qamoe never imports code named "
        f"inside a file; if you trust that code, allow it with --plugin {shown}.",
        hint=f"In Python: load_run(path, plugins=['{shown}']). The module must be importable "
        "(installed, or its folder on PYTHONPATH).",
    )


def recorded_spec(name: Any, recorded: Any, run: Any, plugins: Iterable[str] = ()) -> str:
    """What to pass to :func:`get` for a run's recorded ``model_name`` and ``model_class``:
    a registered or entry-point name, or a ``module:Class`` that is built in, installed as an
    entry point or in ``plugins`` (the user's --plugin). CheckpointError for anything else,
    before anything is imported. A ``module:Class`` model_name that is not allowed is refused
    even when model_class would be (a run naming two classes is not loaded "normally")."""
    allowed = _trusted_paths(check_plugins(plugins))
    if isinstance(name, str) and ":" in name:
        if name in allowed:
            return name
        raise _not_allowed(run, name)
    if isinstance(name, str) and name and (name in builtin_names() or name in _entry_points()):
        return name
    if isinstance(recorded, str) and recorded in allowed:
        return recorded
    raise _not_allowed(run, str(recorded) if recorded else str(name))


def for_run(name: Any, recorded: Any, run: Any, plugins: Iterable[str] = ()) -> ModelChoice:
    """The choice for a run's recorded ``model_name`` and ``model_class``
    (:func:`recorded_spec` decides what may be imported, before anything is); CheckpointError
    when its class is not allowed or cannot be loaded here (e.g. a plug-in that is not
    installed), naming the class the run recorded."""
    spec = recorded_spec(name, recorded, run, plugins)
    try:
        return ModelChoice(spec, get(spec))
    except InputError as exc:
        raise CheckpointError(
            f"The run '{run}' was trained with the model '{spec}', which cannot be loaded "
            f"here: {exc.message}",
            hint="Install the plug-in that provides it (or add its folder to PYTHONPATH).",
        ) from None
