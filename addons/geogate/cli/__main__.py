import sys

from geogate.cli.main import main

sys.exit(main())
