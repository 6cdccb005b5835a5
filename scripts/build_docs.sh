#!/usr/bin/env bash
# Builds the API reference (docs/api, Sphinx autodoc over the public modules) with warnings as errors:
# a broken reference, malformed docstring markup or a public name without a docstring fails it.
# Output: docs/api/_build/html (git-ignored). CI runs it (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "sphinx>=7"
python -m sphinx -W --keep-going -q -b html docs/api docs/api/_build/html
echo "build_docs: docs/api/_build/html/index.html"
