"""Running a stage script: logging set-up, and a clean exit on expected errors."""

import logging
import sys
from collections.abc import Callable

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Errors whose message already names the problem and the fix, so a traceback would only bury it.
EXPECTED_ERRORS = (FileNotFoundError, KeyError, ValueError)


def run_stage(main: Callable[[], None], logger: logging.Logger) -> None:
    """Run a stage's ``main`` with INFO logging.

    On an expected error, log its message as one line and exit with status 1.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        main()
    except EXPECTED_ERRORS as error:
        logger.error("%s", error)
        sys.exit(1)
