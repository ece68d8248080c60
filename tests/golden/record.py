"""Record the golden digests (tests/golden/golden.json). Run only on purpose: when a change is meant to alter
outputs, say which cases changed and why in the commit message.

    .venv/bin/python tests/golden/record.py [CASE ...]     # all cases, or only the named ones
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from golden import cases  # noqa: E402

GOLDEN = Path(__file__).with_name("golden.json")


def main(names) -> None:
    os.environ.setdefault("DIFFSYNTH_ATTENTION", "sdpa")
    record = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {"cases": {}}
    if record.get("environment", cases.environment()) != cases.environment() and names:
        sys.exit("golden.json was recorded in another environment: re-record every case (no names)")
    record["environment"] = cases.environment()
    for name in names or list(cases.CASES):
        record["cases"][name] = cases.run_case(name)
        print(name, record["cases"][name]["frames"][:16], record["cases"][name]["latents"][:16], flush=True)
    tmp = GOLDEN.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.replace(GOLDEN)


if __name__ == "__main__":
    main(sys.argv[1:])
