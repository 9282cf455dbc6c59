import sys

from dreampose.cli import main

sys.exit(main())
