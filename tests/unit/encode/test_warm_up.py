"""A worker loads highdicom's standard tables when it starts, not in its first job."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
from highdicom import _standard_utils as standard
from node.encode import common
tables = [standard.get_sop_class_iod_map, standard.get_iod_module_map,
          standard.get_module_attribute_map]
before = [table.cache_info().currsize for table in tables]
common.warm_up()  # what the worker's warm-up calls (node.jobs.workers)
print(before, [table.cache_info().currsize for table in tables])
"""


def test_the_worker_warm_up_loads_the_standard_tables_highdicom_reads_on_first_use() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.split() == ["[0,", "0,", "0]", "[1,", "1,", "1]"], result.stdout
