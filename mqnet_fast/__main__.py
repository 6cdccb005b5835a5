import sys

from mqnet_fast.cli import main

sys.exit(main())
