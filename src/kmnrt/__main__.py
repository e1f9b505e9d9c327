from kmnrt.cli import main

raise SystemExit(main())
