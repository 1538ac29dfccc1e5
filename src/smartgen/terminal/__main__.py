"""`python -m smartgen.terminal generate | jobs | show | save`."""

from smartgen.terminal.cli import main

raise SystemExit(main())
