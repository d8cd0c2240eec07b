import sys

from pyresa.cli.main import main

sys.exit(main())
