"""``python -m kmnrt.benchmarks.worker TASK.json RESULT.json``: one benchmark task in a fresh process.

The result (or ``{"error": message}`` for a user error) is written atomically to RESULT.json; an unexpected
exception prints its traceback and exits non-zero, which ``kmnrt bench`` reports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kmnrt.benchmarks.suite import Task, execute_task
from kmnrt.data.atomic import atomic_output
from kmnrt.errors import KmnrtError


def main(argv: list[str]) -> int:
    task_file, result_file = Path(argv[0]), Path(argv[1])
    task = Task(**json.loads(task_file.read_text()))
    try:
        result = execute_task(task)
        status = 0
    except KmnrtError as exc:
        result, status = {"error": str(exc)}, exc.exit_code
    with atomic_output(result_file) as tmp:
        tmp.write_text(json.dumps(result))
    return status


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; `kmnrt bench` says "interrupted"
        raise SystemExit(130) from None
