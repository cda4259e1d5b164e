"""Write ``configs/methods/<method>.yaml`` for every registered method, from its registration.

    python tools/method_yamls.py            # rewrite the files
    python tools/method_yamls.py --check    # exit 1 if a file differs from its registration

``tests/test_config.py`` fails when a committed file is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meddistill.build import method_yaml
from meddistill.distill import list_methods

FOLDER = Path(__file__).resolve().parents[1] / "configs" / "methods"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report stale or missing files")
    args = ap.parse_args(argv)
    stale = []
    for name in list_methods():
        path = FOLDER / f"{name}.yaml"
        text = method_yaml(name)
        if not path.is_file() or path.read_text() != text:
            stale.append(path.name)
            if not args.check:
                path.write_text(text)
    extra = sorted(p.name for p in FOLDER.glob("*.yaml") if p.stem not in list_methods())
    for name in stale:
        print(("stale: " if args.check else "wrote: ") + name)
    for name in extra:
        print(f"not a registered method: {name}")
    return 1 if (args.check and stale) or extra else 0


if __name__ == "__main__":
    sys.exit(main())
