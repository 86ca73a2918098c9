#!/usr/bin/env bash
# Create .venv and install cachepilot into it (editable, with test extras).
#
# torch is installed first and on purpose: a plain `pip install torch` can pull a multi-GB CUDA build.
# - If torch + torchvision are already in .venv (e.g. you installed the build for your GPU), they are kept.
# - Otherwise the pinned pair (CACHEPILOT_TORCH, default "torch==2.14.1 torchvision==0.29.1": the pair whose
#   torchvision imports, which lpips needs) is installed ONLY if pip resolves it from local files.
#   If it would come from the network the script stops and says how to install torch yourself.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${CACHEPILOT_TORCH:-torch==2.14.1 torchvision==0.29.1}"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"

if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    report="$(mktemp)"
    # shellcheck disable=SC2086
    $PIP install --quiet --dry-run --ignore-installed --report "$report" $TORCH_SPEC
    remote="$(.venv/bin/python - "$report" <<'PY'
import json, sys
items = json.load(open(sys.argv[1]))["install"]
big = {"torch", "torchvision"}  # the multi-GB wheels; small dependencies may come from the index
print(" ".join(i["metadata"]["name"] for i in items
               if i["metadata"]["name"].lower() in big and not i["download_info"]["url"].startswith("file:")))
PY
)"
    rm -f "$report"
    if [ -n "$remote" ]; then
        echo "install.sh: '$TORCH_SPEC' is not in a local wheel store here; it would download: $remote" >&2
        echo "install.sh: install torch + torchvision for your hardware into .venv first, then rerun, e.g." >&2
        echo "    .venv/bin/pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu    # CPU" >&2
        echo "    .venv/bin/pip install torch torchvision --index-url https://download.pytorch.org/whl/cu124  # CUDA 12.4" >&2
        exit 1
    fi
    # shellcheck disable=SC2086
    $PIP install --quiet $TORCH_SPEC
fi
$PIP install --quiet -e ".[dev]"
.venv/bin/python -c "import torch, cachepilot; print(f'cachepilot {cachepilot.__version__} installed with torch {torch.__version__} (CUDA available: {torch.cuda.is_available()})')"
