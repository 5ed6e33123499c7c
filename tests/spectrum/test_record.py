"""The corruption record on its own (spectrum/record.py): written, checked and read without a
file; tests/spectrum/test_files.py and tests/evaluation/test_sweep.py cover it inside files."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qamoe_core.base.errors import ConfigError, DataFormatError, InputError
from qamoe_core.spectrum.engine import CorruptionSpec, Patterns
from qamoe_core.spectrum.record import (
    EXTRA_KEYS,
    check_text_noise,
    make,
    read_chain,
    recorded_point,
    spec_of,
)

MODS = ("text", "audio", "vision")
WHERE = "'x.h5'"


def record(spec: CorruptionSpec, splits: tuple[str, ...] = ("test",), k: int = 0) -> dict[str, Any]:
    return make(spec, spec.resolve(MODS), splits, "0" * 64, k)


def test_a_record_is_the_spec_and_the_extras_and_reads_back() -> None:
    spec = CorruptionSpec(level=0.3, axis="noise", modalities=("audio",), seed=5, noise_rho=0.5)
    rec = record(spec, ("valid", "test"), k=1)
    assert set(rec) == set(spec.to_dict()) | set(EXTRA_KEYS)
    assert rec["splits"] == ["valid", "test"] and rec["chain_index"] == 1
    assert rec["missing_rate"] == 0.0 and rec["noise_std"] == pytest.approx(0.3)
    assert spec_of(rec) == spec
    assert read_chain(json.dumps([rec]), WHERE) == [rec]
    assert read_chain(None, WHERE) == []


def test_old_records_read_as_the_default_patterns() -> None:
    old = {"level": 0.2, "axis": "mixed", "modalities": None, "drop": [], "noise_scale": 1.0,
           "seed": 0, "missing_rate": 0.2, "noise_std": 0.2, "splits": ["test"]}  # fmt: skip
    assert spec_of(old).patterns == Patterns()
    with pytest.raises(ConfigError, match="Unknown corruption field"):
        spec_of({"level": 0.1, "pattern": "burst"})
    # The spec itself takes its own fields only: a record goes through spec_of.
    with pytest.raises(ConfigError, match="Unknown corruption field"):
        CorruptionSpec.from_dict(old)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("{not json", "not a JSON list of records"),
        ('{"level": 0.1}', "not a JSON list of records"),
        ('[{"level": "0.1"}]', r"record 0 has a non-numeric 'level'"),
        ('[{"level": 0.1}, {"seed": true}]', r"record 1 has a non-numeric 'seed'"),
        ('[{"splits": "test"}]', r"'splits' = 'test', not a list of names"),
    ],
)
def test_a_malformed_chain_is_one_error_naming_the_file(raw: str, match: str) -> None:
    with pytest.raises(DataFormatError, match=match) as info:
        read_chain(raw, WHERE)
    assert str(info.value.message).startswith(WHERE)


def test_the_point_a_split_stands_for() -> None:
    def point(*chain: dict[str, Any], scale: float = 1.0) -> tuple[Any, ...]:
        return tuple(recorded_point(chain, WHERE, "test", MODS, scale))

    assert point() == ("clean", 0.0, MODS, 0, "")
    assert point(record(CorruptionSpec(level=0.9), ("train",))) == ("clean", 0.0, MODS, 0, "")
    burst = CorruptionSpec(level=0.4, axis="missing", seed=3, missing_pattern="burst")
    assert point(record(burst)) == ("missing", 0.4, MODS, 3, "burst")
    assert point(record(CorruptionSpec(drop=("text", "vision")))) == (
        "drop", 1.0, ("text", "vision"), 0, "",
    )  # fmt: skip
    # Pure noise at another scale is a point of this spectrum: 0.25 x 2 on scale 1 is 0.5.
    loud = CorruptionSpec(level=0.25, axis="noise", noise_scale=2.0, modalities=("audio",))
    assert point(record(loud)) == ("noise", 0.5, ("audio",), 0, "white")
    assert point(record(loud), scale=2.0)[:2] == ("noise", 0.25)


@pytest.mark.parametrize(
    ("chain", "match"),
    [
        ([CorruptionSpec(level=0.2, drop=("text",))], "AND had text dropped"),
        ([CorruptionSpec(level=0.2), CorruptionSpec(level=0.2, seed=1)], "corrupted 2 times"),
        ([CorruptionSpec(level=0.2, axis="mixed", noise_scale=2.0)], "off the spectrum's scale"),
        ([CorruptionSpec(level=0.6, axis="noise", noise_scale=2.0)], "off the spectrum's scale"),
    ],
)
def test_what_no_results_row_can_describe_is_refused(
    chain: list[CorruptionSpec], match: str
) -> None:
    recs = [record(spec, k=k) for k, spec in enumerate(chain)]
    with pytest.raises(InputError, match=match):
        recorded_point(recs, WHERE, "test", MODS, 1.0)


def test_a_record_that_describes_no_point_is_a_data_error() -> None:
    rec = {**record(CorruptionSpec(level=0.2)), "axis": "sideways"}
    with pytest.raises(DataFormatError, match="'axis' is 'sideways'"):
        recorded_point([rec], WHERE, "test", MODS, 1.0)
    rec = {**record(CorruptionSpec(level=0.2, axis="noise")), "missing_pattern": "burst"}
    with pytest.raises(DataFormatError, match="does not describe a point"):
        recorded_point([rec], WHERE, "test", MODS, 1.0)


def test_noise_on_the_text_features_is_refused_for_an_ids_model() -> None:
    noisy = record(CorruptionSpec(level=0.3, axis="noise"))
    with pytest.raises(InputError, match="holds noise on its text features"):
        check_text_noise([noisy], WHERE, "test")
    check_text_noise([noisy], WHERE, "train")  # another split's record does not count
    check_text_noise([record(CorruptionSpec(level=0.3, axis="missing"))], WHERE, "test")
    check_text_noise([record(CorruptionSpec(level=0.3, modalities=("audio",)))], WHERE, "test")
