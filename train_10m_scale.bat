@echo off
rem The 10M training run (DESIGN.md section 7): checks first, then the one training command, in the same
rem Python process as the checks (verify_10m_config.py --then-train).
rem
rem     train_10m_scale.bat                    arguments are passed on to src.train, e.g. --resume
rem     set PYTHON=C:\path\to\python.exe ^& train_10m_scale.bat
rem
rem Stops with an [ERROR] line and a non-zero exit, before any training, when the config is off
rem its parameter target, nvidia-smi fails, or PyTorch sees no CUDA device. Otherwise exits with
rem the training command's own exit status.
setlocal
cd /d "%~dp0"
if not defined PYTHON set "PYTHON=python"

echo == 1/2 nvidia-smi
rem the PATH search of cmd itself (%%~$PATH:X), not where.exe, which some cmd versions lack
set "NVSMI="
for %%X in (nvidia-smi.exe) do set "NVSMI=%%~$PATH:X"
if not defined NVSMI (
    echo nvidia-smi not found; relying on the PyTorch check below
) else (
    nvidia-smi
    if errorlevel 1 (
        echo [ERROR] nvidia-smi is installed but failed: the NVIDIA driver is not working. Not training.
        exit /b 1
    )
)

rem one Python process for the checks (parameter count, PyTorch's CUDA) and then the training: a second
rem process would import torch a second time, seconds of a cold start
echo == 2/2 config and CUDA check, then the training: %PYTHON% verify_10m_config.py --require-cuda --then-train ...
"%PYTHON%" verify_10m_config.py --require-cuda --then-train --config configs/scale_10m.yaml --output-dir runs/scale_10m --seed 42 --device cuda --fp16 --gpu-only %*
set "STATUS=%ERRORLEVEL%"
if not "%STATUS%"=="0" echo [ERROR] exited with status %STATUS%: a failed check ^(parameter count off target, invalid config, or PyTorch sees no CUDA: install a CUDA build of PyTorch^) says so above and trained nothing; otherwise it is the training's status
exit /b %STATUS%
