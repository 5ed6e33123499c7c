"""qamoe_cli: the Typer command-line shell over qamoe_core."""
