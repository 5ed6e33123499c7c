"""Paths among a dataset's `extract` arguments are relative to the study file's folder, as
its `path` is: which arguments are paths (checked against the extract commands themselves),
how they are rewritten, and that a study run from another folder makes its data there
without changing any cell's key."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import typer

from qamoe_cli import extract
from qamoe_core.study import cells, plan, runner, spec


def _path_typed(hint: Any) -> bool:
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
    return base is Path or Path in typing.get_args(base)


def _bool_typed(hint: Any) -> bool:
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
    return base is bool or bool in typing.get_args(base)


def test_the_path_table_matches_the_extract_commands() -> None:
    group = typer.main.get_command(extract.app)
    assert set(group.commands) == set(spec.EXTRACT_COMMANDS) == set(spec.EXTRACT_PATHS)
    for name, command in group.commands.items():
        hints = typing.get_type_hints(command.callback, include_extras=True)
        positional, options, flags = 0, set(), set()
        for param in command.params:
            if param.name == "out":
                continue
            if param.param_type_name == "argument":
                positional += _path_typed(hints[param.name])
            elif _path_typed(hints[param.name]):
                options.update(param.opts)
            elif _bool_typed(hints[param.name]):
                flags.update([*param.opts, *param.secondary_opts])
        n_paths, path_options, own_flags = spec.EXTRACT_PATHS[name]
        assert (n_paths, set(path_options)) == (positional, options), name
        assert set(own_flags) | set(spec.EXTRACT_FLAGS) >= flags, name


BASE = Path("/studies/here")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["mosi-lite", "../data/mosi-lite", "--seed", "1"],
            ["mosi-lite", "/studies/here/../data/mosi-lite", "--seed", "1"],
        ),
        (  # option values, with and without '=', and an absolute path unchanged
            ["mosi", "--labels", "lab", "--data-dir=d", "--cache-dir", "/abs", "--fold", "2"],
            [
                "mosi",
                "--labels",
                "/studies/here/lab",
                "--data-dir=/studies/here/d",
                "--cache-dir",
                "/abs",
                "--fold",
                "2",
            ],
        ),
        (  # a flag takes no value: the token after it is the positional manifest
            ["media", "--resume", "clips.csv", "--vision", "haar", "--text-model", "m"],
            [
                "media",
                "--resume",
                "/studies/here/clips.csv",
                "--vision",
                "haar",
                "--text-model",
                "/studies/here/m",
            ],
        ),
        (  # values that only look like names are left alone
            ["synthetic", "--preset", "tiny", "--offset", "mosi-lite"],
            ["synthetic", "--preset", "tiny", "--offset", "mosi-lite"],
        ),
        (
            ["mosi", "--vision", "--labels", "x"],
            ["mosi", "--vision", "--labels", "/studies/here/x"],
        ),
        (["mmsa", "--", "-odd.pkl"], ["mmsa", "--", "/studies/here/-odd.pkl"]),
    ],
)
def test_extract_paths_are_rewritten_against_the_study_folder(
    args: list[str], expected: list[str]
) -> None:
    assert spec.extract_paths(args, BASE) == tuple(expected)


def test_home_is_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    assert spec.extract_paths(["mmsa", "~/x.pkl"], BASE)[1] == "/home/someone/x.pkl"


STUDY = """
seeds = [0]
[datasets.d]
extract = "mosi-lite ../data/ml"
[arms.a]
model = "early-fusion"
[protocols.p]
axes = ["missing"]
levels = [0.0, 0.5]
"""


def test_a_study_run_from_elsewhere_extracts_from_its_own_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "studies").mkdir()
    source = tmp_path / "studies" / "s.toml"
    source.write_text(STUDY, encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    study = spec.load_study(Path("../studies/s.toml"))
    (ds,) = study.datasets
    assert ds.extract == ("mosi-lite", "../data/ml")  # the study's content: as written
    seen: list[list[str]] = []

    def fake_child(args: list[str], log: Path, cwd: Path | None = None) -> int:
        seen.append(args)
        Path(args[args.index("--out") + 1]).write_bytes(b"")
        return 0

    monkeypatch.setattr(cells, "run_child", fake_child)
    runner._extract(ds, Path("out/data/d.h5"), Path("out"), lambda *a: None)
    (args,) = seen
    assert Path(args[2]).resolve() == (tmp_path / "data" / "ml").resolve()
    assert args[:2] == ["extract", "mosi-lite"]


def test_where_the_study_file_lies_changes_no_cell_key(tmp_path: Path) -> None:
    for where in ("a", "b/c"):
        (tmp_path / where).mkdir(parents=True)
        (tmp_path / where / "s.toml").write_text(STUDY, encoding="utf-8")
    one, two = (spec.load_study(tmp_path / w / "s.toml") for w in ("a", "b/c"))
    assert one.datasets[0].extract_run != two.datasets[0].extract_run
    assert one.to_doc() == two.to_doc()
    info = spec.DataInfo(Path("x.h5"), "0" * 64, ("text", "audio", "vision"), "binary",
                         ("train", "valid", "test"))  # fmt: skip
    keys = [[c.key for c in plan.make_plan(s, {"d": info}).cells] for s in (one, two)]
    assert keys[0] == keys[1] and keys[0]
    other = dataclasses.replace(info, sha256="1" * 64)
    assert plan.make_plan(one, {"d": other}).cells[0].key != keys[0][0]
