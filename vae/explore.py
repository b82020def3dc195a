"""``python -m vae.explore RUN``: write (and serve) a run's explorer page (:mod:`vae.viz.explore`)."""

import sys

from vae.viz.explore import main

if __name__ == "__main__":
    sys.exit(main())
