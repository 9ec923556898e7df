import sys

from masklm.cli import main

sys.exit(main())
