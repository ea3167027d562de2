"""`python -m sipfilter` is the `sipfilter` command."""

from sipfilter.cli import main

raise SystemExit(main())
