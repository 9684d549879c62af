"""ML Incident Sandbox."""

import os

# A stack is many processes on a few cores (and a test run is two of them). OpenMP's threads
# (scikit-learn's trees, FAISS, OpenBLAS) spin while they wait for each other, so two of them in
# one process beside another busy process run far slower than one: a 20,000-row fit took 9 s with
# two threads and 0.5 s with one. Results are the same either way. An operator may still set it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

__version__ = "0.1.0"
