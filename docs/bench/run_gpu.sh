#!/usr/bin/env bash
# The GPU figures in docs/benchmarks.md, in one run on a bare GPU machine that has
# torch, torchvision and Pillow but no Ray (cut_core and the translate stages import
# without it). Writes logs and JSON records to ${OUT:-gpu_out}. About 6 minutes on an
# H200 with 16 host cores.
set -u
out=${OUT:-gpu_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  lscpu | grep -E "^Model name|^CPU\(s\)"
  lscpu | grep -o -E "avx512_bf16|amx_bf16|amx_int8|avx512_vnni|avx512f " | sort -u | tr '\n' ' '; echo
  $py -c "import torch; print('torch', torch.__version__, 'cpu capability', torch.backends.cpu.get_cpu_capability())"
} 2>&1 | tee "$out/machine.log"
# 1. cut_core on the GPU: checks, then the training step at 256 and 512 crops (fp32 vs
#    bf16, layouts) and G alone at 2048x1024.
timeout 240 $py -m jobs.bench.device --device cuda --check --crops 256 512 --iters 10 --warmup 3 \
  --variants auto fp32-eager channels_last bf16 bf16-channels_last --translate 1024x2048 \
  --out "$out/train_gpu.json" 2>&1 | tee "$out/train_gpu.log"
# 2. translation's work at 2048x1024: one actor doing every stage, and the staged
#    stages with 14 decode and 14 encode threads feeding G (is G the bottleneck?).
timeout 180 $py -m jobs.bench.translate_speed --device cuda --sizes 1024x2048 --frames 48 \
  --precisions fp32 bf16 --staged 14 --out "$out/translate_gpu.json" 2>&1 | tee "$out/translate_gpu.log"
# 3. the host CPU (native bf16 where it has AVX-512 bf16 or AMX): what `auto` picks and
#    the training step per variant; then the same probe under an emulated AVX2-only CPU.
timeout 150 $py -m jobs.bench.device --device cpu --crops 256 --iters 3 --warmup 1 \
  --out "$out/train_host_cpu.json" 2>&1 | tee "$out/train_host_cpu.log"
ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 timeout 60 $py -c "
from cut_core.hardware import fast_paths; p = fast_paths('cpu'); print('emulated AVX2:', p.precision, p.channels_last, p.reason)
" 2>&1 | tee "$out/host_cpu_as_avx2.log"
