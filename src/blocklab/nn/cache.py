"""Key/value cache for incremental decoding.

The cache stores, per layer, keys and values (B, K, S, D) in preallocated
buffers that grow by doubling, plus what every layer shares: the real-token
mask of the keys and their positions (B, S). Score biases and the next
positions are computed from those, so a left-padded batch decodes exactly as
each sequence would alone.

Shapes: B batch, K key/value heads, S cached length, T new tokens, D head width.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys and values plus the shared key mask and positions.

    Args:
        num_layers: number of attention layers that will write to the cache.
    """

    def __init__(self, *, num_layers: int) -> None:
        self.num_layers = num_layers
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        # (B, capacity) buffers that grow by doubling, like the keys; the first
        # `length` columns are real.
        self._mask_buffer: torch.Tensor | None = None
        self._position_buffer: torch.Tensor | None = None
        self.length = 0

    def __len__(self) -> int:
        return self.length

    @property
    def key_mask(self) -> torch.Tensor | None:
        """(B, S) bool, True for real tokens; None while empty."""
        return None if self._mask_buffer is None else self._mask_buffer.narrow(1, 0, self.length)

    @property
    def key_positions(self) -> torch.Tensor | None:
        """(B, S) long positions of the cached tokens; None while empty."""
        return None if self._position_buffer is None else self._position_buffer.narrow(1, 0, self.length)

    @property
    def next_positions(self) -> torch.Tensor | None:
        """Position of the next real token of each sequence (B,), or None when empty."""
        if self._mask_buffer is None:
            return None
        return self.key_mask.long().sum(-1)

    def append_tokens(self, mask: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Record T new tokens and return the full key mask and positions (B, S + T).

        Call once per model forward, before the layers write their keys.
        """
        mask = mask.bool()
        new = mask.shape[1]
        if self._mask_buffer is not None and mask.shape[0] != self._mask_buffer.shape[0]:
            raise ValueError(
                f"KVCache: batch size {mask.shape[0]} does not match the cached batch "
                f"size {self._mask_buffer.shape[0]}; continue with the same batch"
            )
        start, end = self.length, self.length + new
        if self._mask_buffer is None or self._mask_buffer.shape[1] < end:
            capacity = max(end, 2 * (0 if self._mask_buffer is None else self._mask_buffer.shape[1]), 16)
            grown_mask = mask.new_zeros((mask.shape[0], capacity))
            grown_positions = positions.new_zeros((mask.shape[0], capacity), dtype=torch.long)
            if start > 0:
                grown_mask[:, :start] = self._mask_buffer[:, :start]
                grown_positions[:, :start] = self._position_buffer[:, :start]
            self._mask_buffer, self._position_buffer = grown_mask, grown_positions
        self._mask_buffer.narrow(1, start, new).copy_(mask)
        self._position_buffer.narrow(1, start, new).copy_(positions)
        self.length = end
        return self.key_mask, self.key_positions

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys and values (B, K, T, D) of ``layer``; return all (B, K, S, D).

        ``append_tokens`` must have been called for these T tokens first.
        """
        new = key.shape[2]
        end = self.length
        start = end - new
        buffer_k = self.keys[layer]
        if buffer_k is None or buffer_k.shape[2] < end:
            capacity = max(end, 2 * (0 if buffer_k is None else buffer_k.shape[2]), 16)
            shape = (key.shape[0], key.shape[1], capacity, key.shape[3])
            grown_k = key.new_empty(shape)
            grown_v = value.new_empty(shape[:3] + (value.shape[3],))
            if buffer_k is not None and start > 0:
                grown_k[:, :, :start] = buffer_k[:, :, :start]
                grown_v[:, :, :start] = self.values[layer][:, :, :start]
            self.keys[layer], self.values[layer] = grown_k, grown_v
        keys, values = self.keys[layer], self.values[layer]
        # narrow is one operator, where indexing with slices goes through several.
        keys.narrow(2, start, new).copy_(key)
        values.narrow(2, start, new).copy_(value)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)
