"""Training with the missing rate η and the noise level λ drawn independently (issue 32; the
paper's η ~ U(0, 1), λ ~ U(0, 1)), beside the tied knob η = λ = ℓ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qamoe_core.spectrum.engine import (
    apply_draws,
    corrupt_batch,
    draw_torch,
    sample_level_pairs,
    sample_levels,
)
from tests.spectrum.test_engine import STD, make_batch, valid_mask

MODS = ("text", "audio", "vision")


def test_pairs_are_byte_identical_for_a_seed_and_differ_across_seeds() -> None:
    def draw(seed: int) -> tuple[dict, dict]:
        return sample_level_pairs(512, MODS, generator=torch.Generator().manual_seed(seed))

    (a_eta, a_lam), (b_eta, b_lam), (c_eta, _) = draw(7), draw(7), draw(8)
    for m in MODS:
        assert a_eta[m].shape == a_lam[m].shape == (512,)
        assert a_eta[m].dtype == torch.float32
        assert torch.equal(a_eta[m], b_eta[m]) and torch.equal(a_lam[m], b_lam[m])
        assert not torch.equal(a_eta[m], c_eta[m])


def test_pairs_are_independent_uniforms_with_a_shared_clean_share() -> None:
    n = 20_000
    eta, lam = sample_level_pairs(n, MODS, clean_fraction=0.5,
                                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    clean = eta["text"] == 0
    assert abs(float(clean.float().mean()) - 0.5) < 0.02
    for m in MODS:
        assert torch.equal(eta[m] == 0, clean) and torch.equal(lam[m] == 0, clean)
        e, lv = eta[m][~clean].numpy(), lam[m][~clean].numpy()
        assert e.min() >= 0 and e.max() < 1 and lv.min() >= 0 and lv.max() < 1
        assert abs(float(np.corrcoef(e, lv)[0, 1])) < 0.04  # tied levels give exactly 1
        assert abs(e.mean() - 0.5) < 0.02 and abs(lv.mean() - 0.5) < 0.02
    assert abs(float(np.corrcoef(eta["text"][~clean], eta["audio"][~clean])[0, 1])) < 0.04


def test_pairs_respect_low_and_high() -> None:
    eta, lam = sample_level_pairs(1000, ("audio",), clean_fraction=0.0, low=0.2, high=0.4,
                                  generator=torch.Generator().manual_seed(1))  # fmt: skip
    for lv in (eta["audio"], lam["audio"]):
        assert float(lv.min()) >= 0.2 and float(lv.max()) <= 0.4


def test_noise_levels_apart_from_the_missing_rate() -> None:
    batch = {k: torch.from_numpy(v) for k, v in make_batch(64).items()}
    draws = draw_torch(batch, ("audio",), axis="mixed", generator=torch.Generator().manual_seed(0))
    std = {m: torch.from_numpy(s) for m, s in STD.items()}
    valid = torch.from_numpy(valid_mask(make_batch(64), "audio"))
    x = batch["audio"]
    # η = 0, λ = 0.5: nothing dropped, every valid step moved
    only_noise = apply_draws(batch, draws, {"audio": 0.0}, axis="mixed", train_std=std,
                             noise_levels={"audio": 0.5})  # fmt: skip
    assert bool(only_noise["audio_keep"][valid].all())
    moved = (only_noise["audio"] != x).any(-1)
    assert bool(moved[valid].float().mean() > 0.99)
    # η = 0.5, λ = 0: about half dropped, the kept steps exactly as they were
    only_missing = apply_draws(batch, draws, {"audio": 0.5}, axis="mixed", train_std=std,
                               noise_levels={"audio": 0.0})  # fmt: skip
    keep = only_missing["audio_keep"]
    assert 0.4 < float(keep[valid].float().mean()) < 0.6
    assert torch.equal(only_missing["audio"][keep], x[keep])
    # noise_levels equal to the levels is the tied knob, bit for bit
    tied = apply_draws(batch, draws, {"audio": 0.3}, axis="mixed", train_std=std)
    same = apply_draws(batch, draws, {"audio": 0.3}, axis="mixed", train_std=std,
                       noise_levels={"audio": 0.3})  # fmt: skip
    assert torch.equal(tied["audio"], same["audio"])


def test_independent_corruption_is_byte_identical_for_a_seed() -> None:
    batch = {k: torch.from_numpy(v) for k, v in make_batch(32).items()}
    std = {m: torch.from_numpy(s) for m, s in STD.items()}

    def corrupt(seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        eta, lam = sample_level_pairs(32, MODS, generator=g)
        return corrupt_batch(batch, eta, train_std=std, generator=g, noise_levels=lam)

    a, b, c = corrupt(3), corrupt(3), corrupt(4)
    for m in MODS:
        assert torch.equal(a[m], b[m]) and torch.equal(a[f"{m}_keep"], b[f"{m}_keep"])
    assert any(not torch.equal(a[m], c[m]) for m in MODS)


def test_tied_sampler_is_unchanged() -> None:
    # sample_levels still draws the clean mask then one U(0, 1) per modality, nothing else.
    g = torch.Generator().manual_seed(5)
    got = sample_levels(16, MODS, generator=g)
    g = torch.Generator().manual_seed(5)
    clean = torch.rand(16, generator=g) < 0.5
    for m in MODS:
        assert torch.equal(got[m], torch.rand(16, generator=g).masked_fill(clean, 0.0))


@pytest.mark.parametrize("bad", [{"low": 0.6, "high": 0.2}, {"clean_fraction": 1.5}])
def test_pairs_check_their_arguments(bad: dict) -> None:
    from qamoe_core.base.errors import InputError

    with pytest.raises(InputError):
        sample_level_pairs(4, MODS, **bad)
