import sys

from edge.service.cli import main

sys.exit(main())
