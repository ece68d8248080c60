"""`python -m diffsynth.app`: start the web UI (see `server.main`)."""
from .server import main

raise SystemExit(main())
