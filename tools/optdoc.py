"""
Rewrite the options table in README.md from the ServerOptions docstrings.

    python tools/optdoc.py            # update README.md
    python tools/optdoc.py --check    # exit 1 if README.md is out of date (the tests do this)

The table sits between the README's "BEGIN options table" / "END options
table" markers; the rendering is txsmtpsrv._optdoc's.
"""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from txsmtpsrv._optdoc import main  # noqa: E402
from txsmtpsrv._options import ServerOptions, ServerOptionsArgs  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if not [a for a in args if a != "--check"]:
        args.append(os.path.join(REPO, "README.md"))
    sys.exit(main(args, ServerOptions, ServerOptionsArgs))
