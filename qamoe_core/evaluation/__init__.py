"""Stage 5, evaluation: sweeps over the spectrum, the tidy results and their statistics."""
