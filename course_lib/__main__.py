"""``python -m course_lib``: the course's command line (``course_lib.cli.main``)."""
import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
