"""`python -m raylens.cli.doctor --ray-probe SPEC`: the child that joins Ray for the ray check."""

import sys

from raylens.cli.doctor.ray_cluster import probe_main

sys.exit(probe_main(sys.argv[1:]))
