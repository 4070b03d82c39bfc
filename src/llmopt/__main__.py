"""`python -m llmopt ...`: the same command line as the `llmopt` script."""

from llmopt.cli import main

raise SystemExit(main())
