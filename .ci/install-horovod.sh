#!/usr/bin/env bash
# Build Horovod 0.28.1 (TensorFlow + Gloo, no MPI/NCCL: CPU tests) into the project's venv, so the
# Horovod tests of tests/test_distribute.py run. Idempotent: does nothing when it already imports.
# Needs cmake, g++ and make (installed below when missing); takes 7-9 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if "$PY" -c "import horovod.tensorflow" >/dev/null 2>&1; then
    echo "horovod: already installed ($("$PY" -c 'import horovod; print(horovod.__version__)'))"
    exit 0
fi
if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null || ! command -v make >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ make
fi
# Horovod's setup imports its runtime requirements; with --no-build-isolation they must be present.
.venv/bin/pip install --quiet "cloudpickle==3.1.3" "psutil==7.2.2" "PyYAML==6.0.4" packaging
echo "horovod: building 0.28.1 against $("$PY" -c 'import tensorflow as tf; print("tensorflow", tf.__version__)')"
HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    .venv/bin/pip install --quiet --no-build-isolation --no-cache-dir horovod==0.28.1
"$PY" -c "import horovod.tensorflow as hvd; print('horovod', hvd.__version__ if hasattr(hvd, '__version__') else '', 'ok')"
.venv/bin/horovodrun --check-build
.venv/bin/pip check
