"""python -m securemail -> cli.main()."""

from securemail.cli import main

raise SystemExit(main())
