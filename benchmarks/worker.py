"""Child-process entry: ``python -m benchmarks.worker MODULE RESULT_FILE`` with a JSON spec on stdin.

Runs ``benchmarks.<MODULE>.worker(spec)`` and writes its result (or the error) as
JSON to RESULT_FILE; stdout stays free for whatever the measured tools print.
SIGTERM and SIGHUP unwind like Ctrl-C so the module's own cleanup runs.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from pathlib import Path

from benchmarks.harness import interrupts_as_keyboard, peak_rss_kib


def main(argv: list[str]) -> int:
    module_name, result_file = argv
    spec = json.loads(sys.stdin.read())
    module = importlib.import_module(f"benchmarks.{module_name}")
    try:
        with interrupts_as_keyboard():
            result = module.worker(spec)
        result["rss_kib"] = peak_rss_kib()
        code = 0
    except KeyboardInterrupt:
        result, code = {"error": "interrupted"}, 130
    except Exception as e:
        traceback.print_exc()
        result, code = {"error": f"{type(e).__name__}: {e}"}, 1
    Path(result_file).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
