import sys

from hadmc_deploy.cli import main

sys.exit(main())
