"""Time blocklab's greedy decoding with the KV cache against transformers' generate.

Usage: python benchmarks/bench_decoding.py [blocklab bench options, e.g. --json PATH]
"""

import sys

from blocklab.bench import main

if __name__ == "__main__":
    sys.exit(main(["--only", "generate", *sys.argv[1:]]))
