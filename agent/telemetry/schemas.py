"""Write the contract's JSON Schemas to `docs/schemas/` (the one I/O around `contract`).

    python -m agent.telemetry.schemas            # rewrite docs/schemas/*.json
    python -m agent.telemetry.schemas --check    # exit 1 if they differ from the models

`tests/unit/test_contract.py` runs the check, so the committed schemas always match
the models the agent and the fleet side use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.telemetry.contract import schema_files

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def stale(directory: Path) -> list[str]:
    """Names of the schema files that are missing, different or no longer made."""
    wanted = schema_files()
    problems = [
        name
        for name, text in wanted.items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]
    extra = [p.name for p in directory.glob("*.json") if p.name not in wanted]
    return sorted(problems + extra)


def write(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    wanted = schema_files()
    for path in directory.glob("*.json"):
        if path.name not in wanted:
            path.unlink()
    for name, text in wanted.items():
        (directory / name).write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        names = stale(args.directory)
        if names:
            print(f"stale schemas in {args.directory}: {', '.join(names)}; "
                  "run python -m agent.telemetry.schemas", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    write(args.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
