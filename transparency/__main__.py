"""``python -m transparency``: see README.md."""

from __future__ import annotations

import sys

from transparency.runner import main

sys.exit(main())
