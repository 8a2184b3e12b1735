"""lightning_prune."""
