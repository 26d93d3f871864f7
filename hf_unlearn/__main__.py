"""`python -m hf_unlearn COMMAND ...`: the `hf-unlearn` command."""

from .cli import main

raise SystemExit(main())
