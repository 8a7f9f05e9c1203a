"""``python -m ugmm_prob``: the ``ugmm-prob`` command."""

from .cli import main

raise SystemExit(main())
