"""`python -m worker`: run RQ workers on the provisioning queue."""

import sys

from worker.main import main

sys.exit(main())
