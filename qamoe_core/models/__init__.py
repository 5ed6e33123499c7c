"""The model zoo: QA-MoE, the fusion baselines, published models and users' plug-ins.

Modules: ``base`` (ModelOutput, ModelOptions, MultimodalModel, check_output), ``layers``
(masks, pooling, the shared Encoder), ``heads`` (TwoBranchHead, task_loss, QualityHead),
``moe`` (router and experts), ``registry`` (names -> classes, plug-ins), and one module per
model (``qamoe``, ``fusion``, ``tfn``, ...). docs/models.md lists every model with its paper.

The contract of a model (built-in or plug-in)
---------------------------------------------
A model is a subclass of :class:`MultimodalModel`::

    from dataclasses import dataclass
    from qamoe_core.models import (ModelOptions, ModelOutput, MultimodalModel, option,
                                   register)
    from qamoe_core.models.heads import TwoBranchHead

    @register                       # built-ins; a plug-in is found by path or entry point
    class MyModel(MultimodalModel):
        name = "my-model"           # what --model accepts (and config.json records)
        needs = ()                  # modalities it cannot run without, e.g. ("text",)
        min_modalities = 1          # the fewest it can run on
        shared_encoders = True      # False: build your own; inputs via self.standardise
        controls = ()               # evaluation controls offered, e.g. ("quality_shuffle",)
        reuses_encodings = False    # True: forward(batch, encodings=...) skips the encoders

        @dataclass(frozen=True)
        class Options(ModelOptions):
            # Each option: a default, its range, and a comment saying where it comes from.
            hidden: int = option(64, 1, 4096)  # the paper's Table 5

        def __init__(self, cfg, dims, task, options=None):
            super().__init__(cfg, dims, task, options)   # sets cfg, task, options, dims,
            d = cfg.d_model                               # modalities, encoders / stats
            self.head = TwoBranchHead(cfg, len(self.modalities) * d)

        def forward(self, batch, clean=None, **kw):
            h = self.encode(batch)                        # {m: (B, d_model)}
            pred, log_var = self.head(self.concat(h))     # (B,), (B,)
            return self.finish(ModelOutput(pred, log_var), batch)   # adds the task loss

* ``__init__(cfg: ModelConfig, dims: {modality: D_m}, task: "regression" | "binary",
  options: Options | None)``: build for exactly the modalities in ``dims`` (1, 2 or 3 of
  text, audio, vision, in that order: ``self.modalities``). Options come from the config
  file's ``"model": {"options": {...}}`` and are saved, defaults filled in, in the run's
  config.json; unknown keys are a ConfigError naming them.
* ``forward(batch, clean=None, **kw) -> ModelOutput``. ``batch`` is the batch contract of
  docs/architecture.md: ``<m>`` (B, T, D_m) zero-padded, ``<m>_len`` (B,), ``label`` (B,)
  when labelled. Sequences may have length 1; padding is masked with ``layers.valid_mask``
  and, with ``cfg.mask_zero_steps``, all-zero steps too (``layers.usable_steps``). ``clean``
  is the uncorrupted batch (training only; ignore it unless you use it). Accept and ignore
  other keywords.
* Evaluation controls are declared, never guessed from ``forward``'s signature:
  ``controls`` names those the model offers (``base/names.CONTROLS``: ``"quality_shuffle"``:
  ``forward(batch, shuffle_quality=True, generator=g)`` returns the prediction with the
  quality scores ``r`` permuted across the batch by ``g``; ``"constant_r"`` and
  ``"oracle_r"``: ``forward(batch, quality_override={m: (B,)})`` uses the given ``r``), and
  the sweep runs and passes a control only to a model that declares it. ``reuses_encodings = True``
  says that ``forward(batch, encodings=self.encode_with_coverage(batch))`` skips the encoders
  (the sweep then encodes a point once for every pass). QA-MoE declares both.
* Return ``prediction`` (B,) (a score, or a logit for binary tasks), ``log_var`` (B,), and,
  for a labelled batch, a scalar ``loss`` (``self.finish`` computes the task loss). The
  trainer checks the first batch's output (:func:`check_output`) and stops with one line
  naming what was expected.
* Losses: ``finish`` adds the task loss (with the shared α, ``nll_weight``) and each auxiliary
  loss the model returns (``loss_unc``, ``loss_balance``) times the option its
  ``loss_weights`` names (QA-MoE: ``{"loss_unc": "unc_weight", "loss_balance":
  "balance_weight"}``); a returned term without a weight is an error. A loss of your own:
  add it to ``finish``'s total yourself, weighed by one of your options (as MISA does).
* Features: ``set_feature_stats`` stores the TRAIN mean/std; the shared encoders apply them,
  otherwise ``self.standardise(m, x)`` does.
* Text encoder: with ``model.text_encoder = "pretrained"`` every model, a plug-in too, gets a
  fine-tuned encoder (``self.text_front``) that turns ``text_ids`` into ``batch["text"]``
  before ``forward`` runs (call ``self.text_inputs(clean)`` for the clean batch). Training and
  evaluation read it through the declared capability, never by probing: ``reads_text_ids``,
  ``spectrum_options()`` (what the spectrum needs for ids) and ``parameter_groups()`` (the
  parameters by peak learning rate: the encoder's at ``text_lr``). Override
  ``parameter_groups`` to give parts of your own model a learning rate of their own.

A plug-in is used with ``--model package.module:ClassName`` or through an entry point in the
group ``qamoe.models`` (see examples/plugin/). Its checkpoint records ``module:ClassName``
(``model_class`` in config.json). Loading the run imports that class only when it is
installed as an entry point or the user allows it (``--plugin``, ``plugins=[...]``;
``registry.recorded_spec``, docs/security.md); otherwise, or where the plug-in is missing,
it is a one-line CheckpointError naming it.
"""

from qamoe_core.models.base import (
    ModelOptions,
    ModelOutput,
    MultimodalModel,
    check_modalities,
    check_output,
    option,
)
from qamoe_core.models.registry import (
    ENTRY_POINT_GROUP,
    ModelChoice,
    build_model,
    class_path,
    complete_config,
    for_run,
    get,
    names,
    register,
    resolve,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ModelChoice",
    "ModelOptions",
    "ModelOutput",
    "MultimodalModel",
    "build_model",
    "check_modalities",
    "check_output",
    "class_path",
    "complete_config",
    "for_run",
    "get",
    "names",
    "option",
    "register",
    "resolve",
]
