"""The default search space of every built-in model, and where each range comes from.

Every model gets the learning rate, the weight decay, a dropout and its one or two most
sensitive options of its own. Ranges follow MMSA's tuning grids (thuiar/MMSA,
``src/MMSA/config/config_tune.json``, the "debugParams" of each model) where MMSA tunes the
model, turned into continuous ranges over the grid's span; elsewhere they are centred on the
authors' published setting, and the note says so. docs/models.md lists the same table.
"""

from __future__ import annotations

from typing import Any

from qamoe_core.base.errors import UsageError

MMSA = "MMSA config_tune.json"
LNLN_CFG = "Haoyu-ha/LNLN configs/train_mosi.yaml"

# (range, source). learning_rate: MMSA's grid 5e-4..5e-3 (tfn, lmf, ef_lstm, lf_dnn, mult),
# widened down to 1e-4 (MISA's grid starts there; ALMT and LNLN train at 1e-4).
LR = (
    {"low": 1e-4, "high": 5e-3, "log": True},
    f"{MMSA} learning_rate 5e-4..5e-3; 1e-4 as MISA, LNLN",
)
# weight_decay: MMSA's grids 0..0.01 (Adam's coupled decay); ours is AdamW's decoupled decay,
# default 0.01: a log range from 1e-5 (in effect none) to 0.1.
WD = ({"low": 1e-5, "high": 0.1, "log": True}, f"{MMSA} weight_decay 0..0.01, widened for AdamW")
# dropout: MMSA's grids span 0.0..0.5 (ef_lstm 0.2..0.5, misa 0/0.2/0.5, mult 0.1..0.5).
DROPOUT = ({"low": 0.0, "high": 0.5}, f"{MMSA} dropout grids 0.0..0.5")


def _common(
    dropout_path: str | None = "model.dropout", dropout: tuple[dict[str, Any], str] = DROPOUT
) -> dict[str, tuple[dict, str]]:
    out = {"train.lr": LR, "train.weight_decay": WD}
    if dropout_path is not None:
        out[dropout_path] = dropout
    return out


def _fusion_width() -> tuple[dict[str, Any], str]:
    # Our shared encoders' width (the baselines' only size knob); MMSA's ef_lstm/lf_dnn grids
    # span hidden sizes 16..256. Powers of two divisible by the default 4 heads.
    return {"choices": [64, 128, 256]}, f"ours; {MMSA} ef_lstm hidden_dims 16..256"


SPACES: dict[str, dict[str, tuple[dict[str, Any], str]]] = {
    "qamoe": {
        **_common(),
        # λ_unc around our default 0.1; 1.0 was a candidate of benchmarks/mosi_lite_tune.py.
        "model.options.unc_weight": (
            {"low": 0.01, "high": 1.0, "log": True},
            "ours, around the default 0.1",
        ),
        # The paper routes each sample to 3 of 8 experts; 1..4 around it.
        "model.top_k": ({"low": 1, "high": 4}, "the paper's top-3 of 8 experts, 1..4"),
    },
    "late-fusion": {**_common(), "model.d_model": _fusion_width()},
    "early-fusion": {**_common(), "model.d_model": _fusion_width()},
    "dense-moe": {**_common(), "model.d_model": _fusion_width()},
    "tfn": {
        **_common(
            "model.options.post_fusion_dropout",
            ({"low": 0.2, "high": 0.5}, f"{MMSA} tfn dropouts 0.2..0.5"),
        ),
        "model.options.text_out": ({"choices": [32, 64, 128, 256]}, f"{MMSA} tfn text_out"),
        "model.options.post_fusion_dim": (
            {"choices": [16, 32, 64, 128]},
            f"{MMSA} tfn post_fusion_dim",
        ),
    },
    "lmf": {
        **_common(
            "model.options.text_dropout",
            ({"low": 0.2, "high": 0.5}, f"{MMSA} lmf dropouts 0.2..0.5"),
        ),
        "model.options.rank": ({"low": 3, "high": 6}, f"{MMSA} lmf rank 3..6"),
        "model.options.text_hidden": (
            {"choices": [64, 128, 256]},
            f"{MMSA} lmf hidden_dims (text) 64..256",
        ),
    },
    "mult": {
        **_common(
            "model.options.output_dropout",
            ({"low": 0.1, "high": 0.5}, f"{MMSA} mult output_dropout 0.1..0.5"),
        ),
        "model.options.attn_dropout_text": (
            {"low": 0.1, "high": 0.5},
            f"{MMSA} mult attn_dropout 0.1..0.5",
        ),
        "model.options.layers": ({"choices": [2, 4, 6]}, f"{MMSA} mult nlevels"),
    },
    "misa": {
        **_common(),
        "model.options.diff_weight": ({"low": 0.1, "high": 0.5}, f"{MMSA} misa diff_weight"),
        # MMSA's grid is 0.5..1.0; widened down to its MOSI setting 0.3 (our default).
        "model.options.sim_weight": (
            {"low": 0.3, "high": 1.0},
            f"{MMSA} misa sim_weight 0.5..1.0, down to 0.3",
        ),
    },
    "self-mm": {
        **_common(),
        "model.options.post_fusion_dim": (
            {"choices": [64, 128]},
            f"{MMSA} self_mm post_fusion_dim",
        ),
        "model.options.post_text_dim": ({"choices": [32, 64]}, f"{MMSA} self_mm post_text_dim"),
    },
    # No published grid for ALMT or LNLN: ranges centred on the authors' MOSI settings.
    "almt": {
        **_common(),
        "model.options.tokens": (
            {"choices": [4, 8, 16]},
            f"ours, around {LNLN_CFG} token_length 8",
        ),
        "model.options.ahl_levels": (
            {"low": 1, "high": 3},
            f"ours, up to {LNLN_CFG} hyper_modality_learning depth 3",
        ),
    },
    "lnln": {
        **_common(),
        "model.options.completeness_weight": (
            {"low": 0.3, "high": 1.0},
            f"ours, around {LNLN_CFG} alpha 0.9",
        ),
        "model.options.adversarial_weight": (
            {"low": 0.3, "high": 1.0},
            f"ours, around {LNLN_CFG} beta 0.8",
        ),
    },
}


def has_default(model: str) -> bool:
    return model in SPACES


def default_space(model: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The default space of a built-in model as a space document (the TOML file's content),
    and the source of each entry by path."""
    if model not in SPACES:
        raise UsageError(
            f"The model '{model}' has no default search space.",
            hint="Give one with --space FILE.toml (docs/tuning.md); built-in models with a "
            f"default: {', '.join(SPACES)}.",
        )
    doc: dict[str, Any] = {}
    for path, (entry, _) in SPACES[model].items():
        node = doc
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = dict(entry)
    return doc, {path: source for path, (_, source) in SPACES[model].items()}


def markdown_table() -> str:
    """The default spaces as a Markdown table (docs/models.md holds a copy)."""
    lines = ["| `--model` | field | range | source |", "|---|---|---|---|"]
    for model, entries in SPACES.items():
        for path, (entry, source) in entries.items():
            if "choices" in entry:
                what = "one of " + ", ".join(str(c) for c in entry["choices"])
            else:
                what = f"{entry['low']:g}..{entry['high']:g}" + (
                    " (log)" if entry.get("log") else ""
                )
            lines.append(f"| `{model}` | `{path}` | {what} | {source} |")
    return "\n".join(lines) + "\n"
