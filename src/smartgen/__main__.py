from smartgen.cli import main

raise SystemExit(main())
