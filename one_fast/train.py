"""``python -m one_fast.train``: parse the flags into a config, then train one run folder.

See ``python -m one_fast.train --help`` for every flag and ``docs/`` for the recipes. The
training itself is :func:`one_fast.runs.trainer.run` (re-exported here with the names earlier
versions had in this module).
"""

from __future__ import annotations

import sys

from .cli.train_flags import parse_flags
from .engine.step import NonFiniteLossError
from .runs.resume import config_for
from .runs.runtime import Runtime, resolve_runtime
from .runs.trainer import RunStopped, run

__all__ = ["RunStopped", "Runtime", "config_for", "main", "resolve_runtime", "run"]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: every expected failure is one ``error: ...`` line.

    Returns:
        0 on success, 1 on an error, 130 after Ctrl-C (bad flags exit with argparse's 2).
    """
    given = parse_flags(argv)
    try:
        config, notes = config_for(given)
        run(config, notes)
    except RunStopped as err:
        interrupted = str(err).startswith("interrupted")
        print(err if interrupted else f"error: {err}", file=sys.stderr)
        return 130 if interrupted else 1
    except KeyboardInterrupt:  # before training started: nothing was written
        print("interrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    except (NonFiniteLossError, ValueError, OSError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
