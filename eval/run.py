"""Evaluate a G3 configuration on IM2GPS3k / YFCC4k: a thin script over `g3 eval run` (see eval/README.md).

    python eval/run.py --dataset im2gps3k --metadata data/im2gps3k/im2gps3k_places365.csv \
        --images data/im2gps3k/images --config configs/eval/g3.yaml --out runs/im2gps3k-g3
"""

import sys

from g3.cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "eval", "run", *sys.argv[1:]]
    main()
