"""``python -m vae.visualize RUN``: redraw a run's figures from its checkpoint (:mod:`vae.viz.figures`)."""

import sys

from vae.viz.figures import main

if __name__ == "__main__":
    sys.exit(main())
