"""What every model is: :class:`ModelOutput`, :class:`ModelOptions` and :class:`MultimodalModel`.

:func:`check_output` checks what a model's forward returned (the trainer runs it on the first
batch, so a plug-in that breaks the contract fails with one line naming what was expected).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from qamoe_core.base.errors import ConfigError, InputError
from qamoe_core.base.names import MODALITIES, TASKS
from qamoe_core.config import ModelConfig, _Config, _spec
from qamoe_core.models.heads import task_loss
from qamoe_core.models.layers import Encoder, FeatureStats
from qamoe_core.models.text_front import TextFront

CONTRACT_HINT = "The model contract is in the docstring of qamoe_core/models/__init__.py."
# The auxiliary losses of ModelOutput that MultimodalModel.finish weighs into the total, in
# the order it adds them.
AUX_LOSSES: tuple[str, ...] = ("loss_unc", "loss_balance")

# A model's option field: option(default, lo, hi, choices=...), validated like ModelConfig's.
option = _spec


class ModelOutput(NamedTuple):
    """What every model returns (st-moe-pytorch style: output plus all auxiliary losses).

    prediction: (B,) sentiment score (regression) or logit (binary).
    log_var: (B,) log s², the head's predicted variance of ``prediction`` (aleatoric, in the
        label's units squared; for binary, of the logit).
    quality: {modality: (B,) r_m in (0, 1]} as used by the model (ones with the gate off);
        None for models without quality.
    modality_log_var: {modality: (B,) log s_m}, s_m = mean over dims of σ²_m; None without
        quality.
    routing: (B, E) expert weights after top-k and renormalisation (0 off the top-k); None
        for models without experts.
    loss: scalar total loss, None when the batch has no 'label'.
    loss_task: scalar task loss (L1 + α·NLL, or BCE + α·moderated BCE), None without labels.
    loss_unc: scalar self-supervised uncertainty loss Σ_m, None without a clean batch or
        without a quality head.
    loss_balance: scalar load-balancing loss (1.0 when balanced), None without a router.
    """

    prediction: Tensor
    log_var: Tensor
    quality: dict[str, Tensor] | None = None
    modality_log_var: dict[str, Tensor] | None = None
    routing: Tensor | None = None
    loss: Tensor | None = None
    loss_task: Tensor | None = None
    loss_unc: Tensor | None = None
    loss_balance: Tensor | None = None


@dataclass(frozen=True)
class ModelOptions(_Config):
    """A model's own hyper-parameters: subclass it as a frozen dataclass whose fields are
    ``option(default, lo, hi)`` (or ``option(default, choices=(...))``), each with a comment
    naming the source of its default. Set in a config file's ``model.options`` object."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], section: str = "model") -> Any:
        """``section``: the model's name, for the messages."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"The options of the model '{section}' must be a JSON object.")
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            valid = ", ".join(cls.field_names()) or "none (this model has no options)"
            raise ConfigError(
                f"Unknown key(s) in 'model.options' for the model '{section}': "
                f"{', '.join(unknown)}.",
                hint=f"Valid keys: {valid}.",
            )
        return cls(**dict(data))


class MultimodalModel(nn.Module):
    """Shared plumbing: the task, the modalities, feature statistics, one Encoder per
    modality (unless ``shared_encoders`` is False), and :meth:`finish` (the losses)."""

    name: ClassVar[str] = "base"
    Options: ClassVar[type[ModelOptions]] = ModelOptions
    # Modalities the model cannot run without, and the fewest it can run on.
    needs: ClassVar[tuple[str, ...]] = ()
    min_modalities: ClassVar[int] = 1
    # False: no shared Encoder is built; the inputs' TRAIN statistics sit in ``self.stats``.
    shared_encoders: ClassVar[bool] = True
    # The evaluation controls the model offers (names.CONTROLS); evaluation runs a control
    # only for a model that declares it, and passes its keywords to no other. A model with
    # "quality_shuffle" takes forward(batch, shuffle_quality=True, generator=g) and returns
    # its quality scores r permuted across the batch by ``g``.
    controls: ClassVar[tuple[str, ...]] = ()
    # True: forward(batch, encodings=self.encode_with_coverage(batch)) skips the encoders and
    # reads ``batch`` only for its label, so evaluation encodes a point once for the normal
    # pass and every control.
    reuses_encodings: ClassVar[bool] = False
    # True: the model has per-modality quality heads whose residuals evaluation may record
    # (``EvalConfig.residuals``): ``clean_targets(clean)`` -> {m: (B, out)} and
    # ``quality_residuals(encodings, targets)`` -> {m: ((B,) residual, (B,) σ̄²)}.
    diagnoses_quality: ClassVar[bool] = False
    # The auxiliary losses the model returns (AUX_LOSSES), each with the name of the Options
    # field that weighs it: ``finish`` adds weight·term to the task loss. A model with losses
    # of its own adds them to ``finish``'s total itself, weighed by its own options.
    loss_weights: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self,
        cfg: ModelConfig,
        dims: Mapping[str, int],
        task: str,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.cfg, self.task = cfg, task
        if options is None:
            options = self.Options.from_dict(cfg.options, self.name)
        self.options: Any = options
        self.dims = {m: int(dims[m]) for m in MODALITIES if m in dims}
        self.modalities = tuple(self.dims)
        check_modalities(type(self), self.modalities)
        # The file's own dims (the text features'), kept for checks against data files.
        self.file_dims = dict(self.dims)
        self.text_front: TextFront | None = None
        if cfg.text_encoder == "pretrained" and "text" in self.dims:
            self.text_front = TextFront(cfg)
            self.dims["text"] = self.text_front.out_dim  # the encoder's states replace them
            # Runs before every forward (also under DDP): text from ids, for any model.
            self.register_forward_pre_hook(_text_hook, with_kwargs=True)
        if self.shared_encoders:
            self.encoders = nn.ModuleDict(
                {m: Encoder(d, cfg, cfg.text_segments if m == "text" else cfg.segments)
                 for m, d in self.dims.items()}
            )  # fmt: skip
        else:
            self.stats = nn.ModuleDict({m: FeatureStats(d) for m, d in self.dims.items()})

    def set_feature_stats(self, mean: Mapping[str, Tensor], std: Mapping[str, Tensor]) -> None:
        """Store the TRAIN per-dimension mean/std (D_m,) used to standardise inputs."""
        for m in self.modalities:
            holder = self._stats_of(m)
            s = torch.as_tensor(std[m], dtype=torch.float32)
            if s.numel() != holder.in_std.numel():
                continue  # text states of another width than the stored features: unscaled
            holder.in_mean.copy_(torch.as_tensor(mean[m], dtype=torch.float32))
            holder.in_std.copy_(torch.where(s > 1e-6, s, torch.ones_like(s)))  # constant dims

    def standardise(self, modality: str, x: Tensor) -> Tensor:
        """(B, T, D) -> the same standardised with the TRAIN statistics (padding included:
        mask it afterwards)."""
        holder = self._stats_of(modality)
        return (x - holder.in_mean) / holder.in_std

    def _stats_of(self, modality: str) -> Encoder | FeatureStats:
        holder = self.encoders[modality] if self.shared_encoders else self.stats[modality]
        assert isinstance(holder, Encoder | FeatureStats)
        return holder

    def encoder(self, modality: str) -> Encoder:
        enc = self.encoders[modality]
        assert isinstance(enc, Encoder)
        return enc

    def encode(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{m: (B, d)} pooled encodings."""
        return self.encode_with_coverage(batch)[0]

    def encode_with_coverage(
        self, batch: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
        """Pooled encodings {m: (B, d)} and coverages {m: (B,) or None} (Encoder.encode).
        Without shared encoders: empty (evaluation calls this on every model to reuse the
        encodings across passes; a model with its own encoders has none to share)."""
        h: dict[str, Tensor] = {}
        coverage: dict[str, Tensor | None] = {}
        if not self.shared_encoders:
            return h, coverage
        batch = self.text_inputs(batch)
        for m in self.modalities:
            h[m], coverage[m] = self.encoder(m).encode(batch[m], batch[f"{m}_len"])
        return h, coverage

    # --- the text-encoder capability: declared here, read by training and evaluation ------
    # (``self.text_front`` is the encoder itself: None when the text is the file's features)

    @property
    def reads_text_ids(self) -> bool:
        """Whether a fine-tuned pretrained encoder makes the text from ``text_ids``
        (``model.text_encoder = "pretrained"``): the data must hold those ids, and the width
        of its stored text features does not matter."""
        return self.text_front is not None

    @property
    def text_special_ids(self) -> tuple[int, int, int] | None:
        """(unk, cls, sep) of the fine-tuned encoder's tokenizer; None without one."""
        return None if self.text_front is None else self.text_front.special_ids

    def spectrum_options(self) -> dict[str, Any]:
        """Keyword arguments for spectrum.apply_draws / apply_spec / corrupt_batch that this
        model's inputs need: with a fine-tuned encoder, its tokenizer's special ids and noise
        for the embeddings; {} otherwise, so the features are corrupted exactly as ever."""
        return {} if self.text_front is None else self.text_front.spectrum_options()

    def parameter_groups(self) -> list[tuple[float | None, list[nn.Parameter]]]:
        """The parameters by peak learning rate, in ``parameters()`` order within each group:
        ``(None, the rest)`` at the training's ``lr``, then, with a fine-tuned encoder,
        ``(text_lr, its parameters)``. The optimizer trains those that require a gradient."""
        if self.text_front is None:
            return [(None, list(self.parameters()))]
        text = {id(p) for p in self.text_front.parameters()}
        params = list(self.parameters())
        return [
            (None, [p for p in params if id(p) not in text]),
            (self.cfg.text_lr, [p for p in params if id(p) in text]),
        ]

    def text_inputs(self, batch: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """``batch`` with its text from the pretrained encoder (unchanged without one)."""
        return batch if self.text_front is None else self.text_front.inputs(batch)

    def concat(self, parts: Mapping[str, Tensor]) -> Tensor:
        """{m: (B, d)} -> (B, M·d), modalities in the model's canonical order."""
        return torch.cat([parts[m] for m in self.modalities], dim=-1)

    def finish(self, out: ModelOutput, batch: Mapping[str, Tensor]) -> ModelOutput:
        """Add the task loss and the total when labelled: the task loss plus each auxiliary
        loss the model returned, weighed as its ``loss_weights`` declare."""
        if "label" not in batch:
            return out
        label = batch["label"].to(out.prediction.dtype)
        lt = task_loss(out.prediction, out.log_var, label, self.task, self.cfg.nll_weight)
        total = lt
        for term in AUX_LOSSES:
            value = getattr(out, term)
            if value is not None:
                total = total + self.loss_weight(term) * value
        return out._replace(loss=total, loss_task=lt)

    def loss_weight(self, term: str) -> float:
        """The weight of the auxiliary loss ``term`` (an AUX_LOSSES name): the option that
        ``loss_weights`` names; InputError when the model returns a term it gives no weight."""
        option_name = self.loss_weights.get(term)
        if option_name is None:
            raise InputError(
                f"The model '{self.name}' returned {term} but declares no weight for it "
                "(loss_weights: {term: an option's name}).",
                hint=CONTRACT_HINT,
            )
        return float(getattr(self.options, option_name))


def _text_hook(
    model: MultimodalModel, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """forward(batch, ...): the batch gets its text from the ids. Not the clean batch: only
    a model that uses it knows whether it needs its text (QA-MoE's clean target calls
    ``text_inputs`` itself), and ``encodings=`` given means the encoders are skipped."""
    if kwargs.get("encodings") is not None:
        return args, kwargs
    if args:
        return (model.text_inputs(args[0]), *args[1:]), kwargs
    if "batch" in kwargs:
        kwargs["batch"] = model.text_inputs(kwargs["batch"])
    return args, kwargs


def check_modalities(cls: type, modalities: tuple[str, ...]) -> None:
    """InputError when a model cannot run on these modalities (names what it needs)."""
    name = getattr(cls, "name", cls.__name__)
    lacking = [m for m in getattr(cls, "needs", ()) if m not in modalities]
    fewest = int(getattr(cls, "min_modalities", 1))
    if not modalities:
        raise InputError("The model needs at least one modality (dims is empty).")
    if lacking or len(modalities) < fewest:
        needs = ", ".join(getattr(cls, "needs", ()))
        need = f"the modalities {needs}" if lacking else f"at least {fewest} modalities"
        raise InputError(
            f"The model '{name}' needs {need}; the data has {', '.join(modalities)}.",
            hint="Use a feature file with those modalities, or another --model.",
        )


def check_output(out: Any, batch_size: int, labelled: bool, name: str = "model") -> None:
    """InputError naming what was expected when a forward's result breaks the contract."""

    def fail(what: str) -> InputError:
        return InputError(f"The model '{name}' {what}.", hint=CONTRACT_HINT)

    if not isinstance(out, ModelOutput):
        raise fail(f"returned a {type(out).__name__}; expected a qamoe_core.models.ModelOutput")
    for field in ("prediction", "log_var"):
        value = getattr(out, field)
        if not isinstance(value, Tensor) or tuple(value.shape) != (batch_size,):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise fail(f"returned {field} {got}; expected a tensor of shape ({batch_size},)")
    if labelled and (not isinstance(out.loss, Tensor) or out.loss.dim() != 0):
        got = "None" if out.loss is None else f"shape {tuple(getattr(out.loss, 'shape', ()))}"
        raise fail(
            f"returned loss {got} for a labelled batch; expected a scalar tensor "
            "(MultimodalModel.finish adds it)"
        )
