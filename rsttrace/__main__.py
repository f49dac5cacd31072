from rsttrace.cli import main

raise SystemExit(main())
