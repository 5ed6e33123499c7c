"""`qamoe extract …`: bring features into qamoe's HDF5 format, one module per source."""

from __future__ import annotations

import typer

from qamoe_cli.extract import media, mmsa, mosi, mosilite, synthetic

app = typer.Typer(
    help=(
        "Import features into qamoe's HDF5 format: the built-in synthetic dataset, MMSA "
        "feature pickles (MOSI, MOSEI, SIMS), MOSI-lite CSVs, or raw media."
    ),
    no_args_is_help=True,
)

# One line per subcommand; each module defines `command`, whose docstring is its help text.
app.command("synthetic")(synthetic.command)
app.command("mmsa", help=mmsa.command.__doc__)(mmsa.command)
app.command("mosi-lite", help=mosilite.command.__doc__)(mosilite.command)
app.command("mosi", help=mosi.command.__doc__)(mosi.command)
app.command("media", help=media.command.__doc__)(media.command)
