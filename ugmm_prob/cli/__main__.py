"""``python -m ugmm_prob.cli``: the ``ugmm-prob`` command (as ``python -m ugmm_prob``)."""

from . import main

raise SystemExit(main())
