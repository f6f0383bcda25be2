"""``python -m service``: the same command line as ``lumbar``."""

from service.cli import main

raise SystemExit(main())
