import sys

from sobre.cli import main

sys.exit(main())
