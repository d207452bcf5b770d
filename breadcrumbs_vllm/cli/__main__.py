"""``python -m breadcrumbs_vllm.cli`` is the ``breadcrumbs`` command."""

import sys

from breadcrumbs_vllm.cli import main

sys.exit(main())
