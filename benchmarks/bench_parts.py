"""Time blocklab's norm, RoPE, FFN and layers against torch.nn and transformers.

Usage: python benchmarks/bench_parts.py [blocklab bench options, e.g. --json PATH]
"""

import sys

from blocklab.bench import main

if __name__ == "__main__":
    sys.exit(main(["--only", "rmsnorm,rope,feedforward,decoder_layer,encoder_layer", *sys.argv[1:]]))
