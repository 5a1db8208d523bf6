"""Print evaluation runs side by side (optionally with the paper's row): a thin script over `g3 eval compare`.

    python eval/compare.py runs/im2gps3k-g3 runs/im2gps3k-retrieval_top1 --paper im2gps3k
"""

import sys

from g3.cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "eval", "compare", *sys.argv[1:]]
    main()
