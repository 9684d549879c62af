"""A stand-in service for the launcher's tests: says who it is, then waits for SIGTERM and exits
with code 3 (an uncaught crash would exit 1)."""

import json
import os
import signal
import sys
import time


def main() -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(3))
    said = {
        "argv": sys.argv[1:],
        "name": __name__,
        "pgid": os.getpgid(0),
        "pid": os.getpid(),
        "given": os.environ.get("LAUNCHED_GIVEN"),
        "not_given": os.environ.get("LAUNCHED_NOT_GIVEN"),
        "sklearn_before_main": "sklearn" in sys.modules,
    }
    print(json.dumps(said))  # no flush: the launcher makes stdout line-buffered
    while True:
        time.sleep(0.05)


if __name__ == "__main__":
    main()
