"""Stage 2, the reliability spectrum: the corruption engine and corrupted files."""
