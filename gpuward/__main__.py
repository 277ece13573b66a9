import sys

from gpuward.cli import main

sys.exit(main())
