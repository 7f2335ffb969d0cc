"""``python -m bench.harness [--quick | --full | --smoke] ...``, run from the repository root."""

from .cli import main

raise SystemExit(main())
