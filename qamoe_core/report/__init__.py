"""Stage 6, reports: tables, figures and comparisons."""
