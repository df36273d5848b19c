import sys

from lungnod_ext.cli import main

sys.exit(main())
