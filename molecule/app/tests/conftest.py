import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_harness"))

from testlib import batched_results, batched_run  # noqa: E402,F401 - the batch's fixtures
