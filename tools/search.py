#!/usr/bin/env python
"""Run a PAP-loss search and report on it (the same as the ``paploss-search`` command).

Examples::

    python tools/search.py run --config configs/search/default.yaml
    python tools/search.py run --resume --output output/search/default
    python tools/search.py status --output output/search/default --trials
    python tools/search.py export --output output/search/default
    python tools/search.py plot --output output/search/default
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from paploss.search.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
