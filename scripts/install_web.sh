#!/usr/bin/env bash
# transformers.js for the browser page (web/index.html) and its test (tests/test_web.py), from npm, into web/.
# --ignore-scripts: onnxruntime-node's install script would download binaries; the page needs none of them
# (the WebAssembly runtime ships inside onnxruntime-web).
set -euo pipefail
cd "$(dirname "$0")/../web"
if [ ! -f node_modules/@huggingface/transformers/dist/transformers.min.js ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "install_web: npm is missing (apt-get install npm); tests/test_web.py is skipped without it" >&2
        exit 0
    fi
    npm install --ignore-scripts --no-audit --no-fund --no-save --loglevel=error @huggingface/transformers@4.3.1
fi
ln -sfn node_modules/@huggingface/transformers/dist lib
ln -sfn node_modules/onnxruntime-web/dist ort
