import sys

from featureguard.cli import main

sys.exit(main())
