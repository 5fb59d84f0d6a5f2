"""`python -m subscriber`: run the platform event subscriber (see subscriber/main.py)."""

import sys

from subscriber.main import main

sys.exit(main())
