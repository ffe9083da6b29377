import sys

from hil.lab.cli import main

sys.exit(main())
