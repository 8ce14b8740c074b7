"""``python -m broker``: run the supervisor, which starts every other process."""

from broker.supervisor import main

raise SystemExit(main())
