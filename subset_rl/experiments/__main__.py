"""``python -m subset_rl.experiments``: see :mod:`subset_rl.experiments.runner`."""

from .runner import main

if __name__ == "__main__":
    raise SystemExit(main())
