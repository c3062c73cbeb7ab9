"""The ``blocklab generate`` command: continue a prompt with a trained run.

Decoding uses the KV cache (``blocklab.generate.stream_tokens``), and text is
printed as tokens arrive. A token can end in the middle of a UTF-8 character
(byte tokens always can, byte-level BPE tokens sometimes), so ``TextStream``
holds back a trailing replacement character until the next token completes it.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Iterator, Sequence

import torch

from blocklab.errors import UsageError
from blocklab.evaluate import length_limit
from blocklab.generate import stream_tokens

logger = logging.getLogger(__name__)

#: Tokens a trailing U+FFFD may wait for before it is printed as it is. Four
#: covers the longest UTF-8 sequence for byte tokens.
_MAX_HELD_TOKENS = 4


class TextStream:
    """Turn a growing list of token ids into text pieces that are safe to print.

    Each ``push`` decodes all ids so far and returns the text after what was
    already returned. A trailing U+FFFD (an incomplete character) is held back
    for up to four tokens; ``finish`` returns whatever remains.
    """

    def __init__(self, decode, prompt_ids: Sequence[int] = ()) -> None:
        self._decode = decode
        self._ids = list(prompt_ids)
        self._emitted = len(decode(self._ids))
        self._held = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if text.endswith("\ufffd") and self._held < _MAX_HELD_TOKENS:
            self._held += 1
            return ""
        self._held = 0
        return self._take(text)

    def finish(self) -> str:
        return self._take(self._decode(self._ids))

    def _take(self, text: str) -> str:
        piece = text[self._emitted:]
        self._emitted = max(self._emitted, len(text))
        return piece


def fit_prompt(model_config, prompt_ids: Sequence[int], max_new_tokens: int) -> int:
    """Check that a prompt fits the model and return how many new tokens can follow it.

    With learned positions the prompt may fill the whole table (``max_seq_len``
    tokens): its last position still predicts one new token. Each further token
    is fed back at the next position, so ``max_seq_len - len(prompt) + 1`` new
    tokens fit. A larger ``max_new_tokens`` is lowered to that with a warning.

    Raises:
        UsageError: when the prompt is longer than the position table.
    """
    limit, reason = length_limit(model_config)
    if limit is None:
        return max_new_tokens
    if len(prompt_ids) > limit:
        raise UsageError(
            f"the prompt has {len(prompt_ids)} tokens but {reason}; use a prompt of at most {limit} tokens"
        )
    fits = limit - len(prompt_ids) + 1
    if max_new_tokens > fits:
        logger.warning("%s, so at most %d new tokens follow this %d-token prompt; generating %d",
                       reason, fits, len(prompt_ids), fits)
        return fits
    return max_new_tokens


def generate_text(
    model: torch.nn.Module,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Iterator[str]:
    """Yield the continuation of ``prompt`` as printable text pieces.

    An empty prompt starts from the end-of-text token, the separator the
    model saw between training documents. Generation stops at end-of-text or
    after ``max_new_tokens`` tokens; for learned positions it also stops at
    the end of the position table (see ``fit_prompt``).

    Raises:
        UsageError: for invalid sampling settings or a prompt longer than the
            learned position table.
    """
    prompt_ids = tokenizer.encode(prompt) or [tokenizer.eos_id]
    max_new_tokens = fit_prompt(model.config, prompt_ids, max_new_tokens)
    generator = torch.Generator(device=device).manual_seed(seed)
    input_ids = torch.tensor([prompt_ids], device=device)
    stream = TextStream(tokenizer.decode)
    try:
        tokens = stream_tokens(
            model, input_ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
            top_p=top_p, eos_id=tokenizer.eos_id, generator=generator,
        )
        for token in tokens:
            token_id = int(token[0])
            if token_id == tokenizer.eos_id:
                break
            piece = stream.push(token_id)
            if piece:
                yield piece
    except ValueError as error:
        raise UsageError(str(error)) from None
    tail = stream.finish()
    if tail:
        yield tail


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="run directory written by `blocklab train`")
    parser.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate (default %(default)s); with learned positions "
                             "at most max_seq_len - prompt tokens + 1 follow, and a larger value is "
                             "lowered to that with a warning")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature; 0 (default) is greedy decoding")
    parser.add_argument("--top-k", type=int, help="sample only from the K most likely tokens")
    parser.add_argument("--top-p", type=float, help="sample only from the smallest set of tokens with probability P")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (default %(default)s)")
    parser.add_argument("--step", type=int, help="checkpoint step to load (default: the latest)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")


def run_command(args: argparse.Namespace) -> int:
    from blocklab.distributed import resolve_device
    from blocklab.train import load_run

    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens: invalid value {args.max_new_tokens}; expected an integer >= 0")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UsageError(f"--temperature: invalid value {args.temperature}; expected a finite number >= 0 (0 is greedy)")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k: invalid value {args.top_k}; expected an integer >= 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:  # also rejects nan
        raise UsageError(f"--top-p: invalid value {args.top_p}; expected a number in (0, 1]")
    if not 0 <= args.seed < 2**63:
        raise UsageError(f"--seed: invalid value {args.seed}; expected an integer from 0 to 2**63 - 1")
    device = resolve_device(args.device)
    loaded = load_run(args.run_dir, step=args.step, device=device)
    if (args.top_k is not None or args.top_p is not None) and args.temperature == 0:
        logger.warning("--top-k and --top-p apply only when sampling; pass --temperature above 0")
    # Check the prompt length before anything is printed, so an error is not
    # appended to the echoed prompt.
    prompt_ids = loaded.tokenizer.encode(args.prompt) or [loaded.tokenizer.eos_id]
    max_new_tokens = fit_prompt(loaded.model_config, prompt_ids, args.max_new_tokens)
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    try:
        for piece in generate_text(
            loaded.model, loaded.tokenizer, args.prompt, max_new_tokens=max_new_tokens,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, device=device,
        ):
            out.write(piece)
            out.flush()
    finally:
        # Ends the streamed line, also when Ctrl-C stops the stream, so the
        # "interrupted" message starts a line of its own.
        out.write("\n")
        out.flush()
    return 0
