#!/usr/bin/env bash
# GPU check of the ingest path (issue 15): card and versions, model-stage persons/s at bf16/fp16/fp32 over batch
# sizes, torch.compile, where a batch's time goes, JPEG decoding on CPU and GPU, ingest end to end on generated
# JPEGs and a short video vs model only, FAISS build and search on GPU vs CPU at 1M vectors. Markdown on stdout,
# progress on stderr, exit 0. Installs nothing, needs no network (random ViT-B/16-shaped weights, generated data).
#
#   bash bench/gpu_check.sh              # full, on a CUDA machine: about 5-7 minutes on one H100
#   bash bench/gpu_check.sh --smoke      # every step, tiny, on any machine: under 2 minutes (CI runs this)
#   bash bench/gpu_check.sh --no-compile # skip the torch.compile rows (the slowest step)
#
# On the lent GPU machine (Python 3.12, CUDA torch, torchvision, transformers, typer, rich, pillow; no sqlalchemy,
# faiss or av), carry cp312 wheels of what is missing and install them without an index first; this script
# itself installs nothing. Steps whose packages are missing say so and are skipped. See docs/benchmarks.md:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site && bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
