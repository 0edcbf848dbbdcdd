#!/usr/bin/env python3
"""
``bench/inmemory.py``'s loads in ONE process, with marks for callgrind: each
``os.getppid()`` call below ends a part when callgrind runs with
``--dump-before=os_getppid``, so part 2 holds exactly PERSIST persist
messages and part 4 exactly CHURN churn connections (warm-up and start-up are
parts 1 and 3). One valgrind start instead of four (``inmemory.py``'s
subtraction of two runs per scenario); the figures agree with it to ~1 %.

    valgrind --tool=callgrind --dump-before=os_getppid --callgrind-out-file=cg.out \\
        python bench/inmemory_marks.py 400 200
    # Ir per persist message: the "summary:" of cg.out.2 / 400; per churn connection: cg.out.4 / 200
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inmemory  # noqa: E402


def main(persist: int, churn: int) -> None:
    protocol = inmemory.connect()
    for _ in range(30):
        inmemory.message(protocol)
    os.getppid()  # part 1: start-up and warm-up
    for _ in range(persist):
        inmemory.message(protocol)
    os.getppid()  # part 2: the persist messages
    inmemory.main("churn", 30)
    os.getppid()  # part 3: churn warm-up
    inmemory.main("churn", churn - 20)  # main() runs 20 more
    os.getppid()  # part 4: the churn connections


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400, int(sys.argv[2]) if len(sys.argv) > 2 else 200)
