#!/usr/bin/env bash
# The 10M training run (DESIGN.md section 7): checks first, then the one training command, in the same
# Python process as the checks (verify_10m_config.py --then-train).
#
#     bash train_10m_scale.sh                 # arguments are passed on to src.train, e.g. --resume
#     PYTHON=/path/to/python bash train_10m_scale.sh
#
# Stops with an [ERROR] line and a non-zero exit, before any training, when the config is off
# its parameter target, nvidia-smi fails, or PyTorch sees no CUDA device. Otherwise exits with
# the training command's own exit status.
set -u
cd "$(dirname "$0")" || exit 1
PYTHON="${PYTHON:-python}"

echo "== 1/2 nvidia-smi"
if command -v nvidia-smi >/dev/null 2>&1; then
    if ! nvidia-smi; then
        echo "[ERROR] nvidia-smi is installed but failed: the NVIDIA driver is not working. Not training." >&2
        exit 1
    fi
else
    echo "nvidia-smi not found; relying on the PyTorch check below"
fi

# one Python process for the checks (parameter count, PyTorch's CUDA) and then the training: a second
# process would import torch a second time, seconds of a cold start
echo "== 2/2 config and CUDA check, then the training: $PYTHON verify_10m_config.py --require-cuda --then-train ..."
"$PYTHON" verify_10m_config.py --require-cuda --then-train --config configs/scale_10m.yaml --output-dir runs/scale_10m \
    --seed 42 --device cuda --fp16 --gpu-only "$@"
status=$?
if [ "$status" -ne 0 ]; then
    echo "[ERROR] exited with status $status: a failed check (parameter count off target, invalid config, or PyTorch sees no CUDA: install a CUDA build of PyTorch) says so above and trained nothing; otherwise it is the training's status" >&2
fi
exit "$status"
