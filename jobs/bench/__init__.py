"""`raycut bench train|ingest|translate` (commands.py). The timing primitives and the
torch-only device benchmark are in cut_core.benchmark."""
