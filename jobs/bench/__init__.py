"""`raycut bench train|ingest|translate|quality` (commands.py). Two of its modules
import neither Ray nor MLflow and run on a bare GPU box with torch: device.py (the
training step and translation per fast path, the device checks, the benchmark
record) and translate_speed.py (translation's stages without Ray). The timing
primitives they use are in cut_core.timing."""
