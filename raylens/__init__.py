"""raylens: images and videos to searchable vectors (OpenCLIP + faces) on a Ray cluster."""

import os

# Run under `uv run` (as `make up` and `make test` do), Ray would package the working directory
# for every driver, the 6 GB .venv included, and start every worker process through `uv run`:
# about 16 s more per cluster start here, and a copy of the .venv per Ray session in /tmp/ray.
# raylens is installed on every node instead (see cluster.yaml), so that hook only costs.
# Set RAY_ENABLE_UV_RUN_RUNTIME_ENV=1 to have Ray's behaviour back. Takes effect when raylens is
# imported before ray, as in the raylens command.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
