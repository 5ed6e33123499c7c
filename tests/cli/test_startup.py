"""Start-up stays light: `qamoe --version` and every `--help` run without torch or matplotlib.

Each check runs in a fresh interpreter, because this test process has long imported torch.
"""

from __future__ import annotations

import subprocess
import sys

# torch alone took ~1.5 s to import and matplotlib ~0.45 s on the dev box; pandas and h5py are
# smaller but no help text needs them either.
HEAVY = ("torch", "matplotlib", "pandas", "h5py")

HELP_ARGS = [
    ["--version"],
    ["--help"],
    ["train", "--help"],
    ["corrupt", "--help"],
    ["eval", "--help"],
    ["report", "--help"],
    ["demo", "--help"],
    ["audit", "--help"],
    ["extract", "--help"],
    ["extract", "synthetic", "--help"],
    ["extract", "mmsa", "--help"],
    ["extract", "mosi-lite", "--help"],
    ["extract", "mosi", "--help"],
    ["extract", "media", "--help"],
]


def _heavy_loaded_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return the heavy top-level packages it loaded."""
    probe = (
        f"{code}\n"
        "import sys\n"
        f"print(','.join(sorted({{n.split('.')[0] for n in sys.modules}} & set({HEAVY!r}))))\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    last = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    return [n for n in last.split(",") if n]


def test_importing_the_cli_loads_no_heavy_package() -> None:
    assert _heavy_loaded_after("import qamoe_cli.main") == []


def test_version_and_every_help_load_no_heavy_package() -> None:
    code = (
        "import contextlib, io\n"
        "from qamoe_cli.main import main\n"
        f"for args in {HELP_ARGS!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as buf:\n"
        "        rc = main(args)\n"
        "    assert rc == 0, (args, rc)\n"
        "    assert buf.getvalue().strip(), args\n"  # something was printed
    )
    assert _heavy_loaded_after(code) == []


def test_a_real_command_still_imports_its_heavy_modules() -> None:
    # the control: the probe does see torch once a command body runs (corrupt imports it, then
    # fails on the missing input), so the empty lists above are not a blind probe
    code = (
        "import contextlib, io\n"
        "from qamoe_cli.main import main\n"
        "with contextlib.redirect_stderr(io.StringIO()) as err:\n"
        "    rc = main(['corrupt', 'no-such.h5', '--level', '0.5', '--out', 'never.h5'])\n"
        "assert rc == 1 and 'no-such.h5' in err.getvalue(), (rc, err.getvalue())\n"
    )
    assert "torch" in _heavy_loaded_after(code)


def test_h5store_does_not_import_torch() -> None:
    # torch-side names live in qamoe_core.data.torchdata only (no h5store <-> torchdata cycle)
    assert _heavy_loaded_after("import qamoe_core.data.store") == ["h5py"]
    from qamoe_core.data import store as h5store

    assert not hasattr(h5store, "to_torch") and not hasattr(h5store, "H5Dataset")


def test_cli_copy_of_core_constant_matches_core() -> None:
    # a copy kept in the CLI so help texts and defaults need not import the heavy modules
    from qamoe_cli.extract import mosilite as cli_mosilite
    from qamoe_core.data.importers import mosilite

    assert cli_mosilite.DEFAULT_VALID_FRACTION == mosilite.DEFAULT_VALID_FRACTION


def test_the_library_face_is_lazy() -> None:
    # `import qamoe_core` stays light; its public functions pull torch only when first used
    assert _heavy_loaded_after("import qamoe_core; qamoe_core.__version__") == []
    assert "torch" in _heavy_loaded_after("import qamoe_core; qamoe_core.predict")


def test_report_without_samples_loads_no_torch() -> None:
    # `qamoe study` makes a report after every study: loading torch for nothing (through the
    # per-sample module and the evaluation plan) cost ~2 s quiet, ~6 s under load. The command
    # body runs its imports, then fails on the missing file; the control above shows that the
    # probe sees torch where a command imports it.
    code = (
        "import contextlib, io\n"
        "from qamoe_cli.main import main\n"
        "with contextlib.redirect_stderr(io.StringIO()) as err:\n"
        "    rc = main(['report', 'no-such.csv', '--out', 'never-made'])\n"
        "assert rc == 1 and 'no-such.csv' in err.getvalue(), (rc, err.getvalue())\n"
    )
    loaded = _heavy_loaded_after(code)
    assert "matplotlib" in loaded and "torch" not in loaded
