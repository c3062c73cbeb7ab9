"""Time a blocklab LLaMA training step against transformers and report MFU.

Usage: python benchmarks/bench_training.py [blocklab bench options, e.g. --json PATH]
"""

import sys

from blocklab.bench import main

if __name__ == "__main__":
    sys.exit(main(["--only", "train_step", *sys.argv[1:]]))
