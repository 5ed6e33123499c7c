"""Stage 4, training: the loop, one step, the data it reads, DDP and tracking."""
