"""Multi-head, grouped-query and multi-query attention.

Query head h reads key/value head h // (H / K): K = H is multi-head attention,
K = 1 multi-query (Shazeer 2019), anything between grouped-query (Ainslie et
al. 2023).

Masks are combined as booleans and turned into one additive mask with
``torch.where``, never by adding two large negative numbers, so nothing
overflows in half precision. A query row with no visible key (a padding
position, say) is computed as if it saw every key and then set to zero, so
its output is zero and its gradients are finite.

Shapes: B batch, T query length, S key length, H query heads, K key/value
heads, D head width, C model width.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from blocklab.nn import kernels
from blocklab.nn.cache import KVCache
from blocklab.nn.rotary import apply_rotary


def _split_rotate_forward(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int, interleaved: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, length, width = qkv.shape
    head_dim = width // (heads + 2 * kv_heads)
    view = qkv.view(batch, length, heads + 2 * kv_heads, head_dim).transpose(1, 2)  # (B, H + 2K, T, D)
    q = kernels.rope(view[:, :heads], cos, sin, interleaved, inverse=False)
    k = kernels.rope(view[:, heads:heads + kv_heads], cos, sin, interleaved, inverse=False)
    v = view[:, heads + kv_heads:].contiguous()
    return q, k, v


class _SplitRotateFunction(torch.autograd.Function):
    """Split the fused projection into rotated queries and keys and plain values, with the kernels.

    Forward: qkv (B, T, (H + 2K) D) gives q (B, H, T, D) and k (B, K, T, D),
    each rotated into a new contiguous tensor, and v (B, K, T, D), a contiguous
    copy. Backward: the gradients land straight in one (B, T, (H + 2K) D)
    tensor, q and k rotated back, where autograd would concatenate and copy
    the three pieces. Only cos and sin are saved.
    """

    @staticmethod
    def forward(
        ctx, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
        interleaved: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, length, width = qkv.shape
        ctx.save_for_backward(cos, sin)
        ctx.layout = (batch, length, heads, kv_heads, width // (heads + 2 * kv_heads), interleaved)
        return _split_rotate_forward(qkv, cos, sin, heads, kv_heads, interleaved)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q: torch.Tensor | None, grad_k: torch.Tensor | None, grad_v: torch.Tensor | None):
        cos, sin = ctx.saved_tensors
        batch, length, heads, kv_heads, head_dim, interleaved = ctx.layout
        grad = cos.new_empty((batch, length, heads + 2 * kv_heads, head_dim))
        view = grad.transpose(1, 2)  # (B, H + 2K, T, D)
        for grad_part, first, last, rotated in (
            (grad_q, 0, heads, True),
            (grad_k, heads, heads + kv_heads, True),
            (grad_v, heads + kv_heads, heads + 2 * kv_heads, False),
        ):
            if grad_part is None:
                view[:, first:last].zero_()
            elif rotated and kernels.usable(grad_part):
                kernels.rope(grad_part, cos, sin, interleaved, inverse=True, out=view[:, first:last])
            elif rotated:
                view[:, first:last] = apply_rotary(grad_part, cos, -sin, interleaved)
            else:
                view[:, first:last] = grad_part
        return grad.view(batch, length, -1), None, None, None, None, None


def split_rotate(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int, interleaved: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Return rotated q, k and contiguous v from a fused projection with the kernels, or None.

    None means the kernels cannot take these tensors and the caller splits and
    rotates with PyTorch operators.
    """
    if cos.requires_grad or sin.requires_grad or not kernels.usable(qkv, cos, sin):
        return None
    if torch.is_grad_enabled() and qkv.requires_grad:
        return _SplitRotateFunction.apply(qkv, cos, sin, heads, kv_heads, interleaved)
    return _split_rotate_forward(qkv, cos, sin, heads, kv_heads, interleaved)


def visibility_mask(
    key_mask: torch.Tensor | None, query_length: int, key_length: int, causal: bool,
    device: torch.device, sliding_window: int | None = None,
) -> torch.Tensor | None:
    """Return which keys each query may see, (B or 1, 1, T, S) bool, or None for all.

    With a cache the causal mask is aligned to the end: query i of T sees keys
    up to S - T + i. A causal ``sliding_window`` W also hides keys j with
    S - T + i - j >= W, counted in cache columns as transformers' Mistral does.
    """
    visible = None
    if causal:
        query_index = torch.arange(query_length, device=device)[:, None] + (key_length - query_length)
        key_index = torch.arange(key_length, device=device)[None, :]
        visible = key_index <= query_index  # (T, S)
        if sliding_window is not None:
            visible = visible & (key_index > query_index - sliding_window)
        visible = visible[None, None]  # (1, 1, T, S)
    if key_mask is not None:
        padding = key_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        visible = padding if visible is None else visible & padding
    return visible


class Attention(nn.Module):
    """Scaled dot-product attention with optional rotary embedding and score bias.

    The query, key and value projections are one fused matrix (C -> (H + 2K) D),
    laid out as [queries; keys; values].

    Args:
        dim: C.
        num_heads: H.
        num_kv_heads: K (defaults to H); H must be a multiple of K.
        head_dim: D (defaults to C / H).
        qkv_bias: biases on the query, key and value projections.
        out_bias: bias on the output projection.
        dropout: dropout on attention probabilities (training only).
        scale: score scale (defaults to 1 / sqrt(D)).
        rotary_interleaved: RoPE pair layout used when ``rope`` is passed.
        sliding_window: in causal attention, each query attends to at most this
            many keys, itself and the ones just before it. None attends to every earlier key.

    Raises:
        ValueError: when H is not a multiple of K or C / H is fractional.
    """

    def __init__(
        self, *, dim: int, num_heads: int, num_kv_heads: int | None = None,
        head_dim: int | None = None, qkv_bias: bool = False, out_bias: bool = False,
        dropout: float = 0.0, scale: float | None = None, rotary_interleaved: bool = False,
        sliding_window: int | None = None,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(
                f"Attention.num_kv_heads: invalid value {num_kv_heads}; num_heads ({num_heads}) "
                "must be a multiple of it"
            )
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(
                    f"Attention.num_heads: invalid value {num_heads}; dim ({dim}) must be divisible "
                    "by it, or pass head_dim"
                )
            head_dim = dim // num_heads
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.dropout = dropout
        self.rotary_interleaved = rotary_interleaved
        self.sliding_window = sliding_window
        self.qkv = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * head_dim, bias=qkv_bias)
        self.out = nn.Linear(num_heads * head_dim, dim, bias=out_bias)

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = True,
        key_mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """Attend from the T positions of ``x`` to themselves and any cached keys.

        Args:
            x: (B, T, C).
            causal: mask keys after each query.
            key_mask: (B, S) with 1 for real keys, cached ones included; None for all.
            bias: additive score bias (B or 1, H, T, S), float32.
            rope: (cos, sin), each (B, T, R/2), to rotate queries and keys.
            cache: a KVCache to read and extend.
            layer: this layer's index in the cache.

        Returns:
            (B, T, C).
        """
        batch, length, _ = x.shape
        heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv(x)  # (B, T, (H + 2K) D)
        fused = None if rope is None else split_rotate(qkv, *rope, heads, kv_heads, self.rotary_interleaved)
        if fused is not None:
            q, k, v = fused  # (B, H, T, D), (B, K, T, D), (B, K, T, D)
        else:
            qk, v = qkv.split(((heads + kv_heads) * head_dim, kv_heads * head_dim), dim=-1)
            qk = qk.view(batch, length, heads + kv_heads, head_dim).transpose(1, 2)  # (B, H + K, T, D)
            v = v.view(batch, length, kv_heads, head_dim).transpose(1, 2)  # (B, K, T, D)
            if rope is not None:
                # Queries and keys share the angles, so one call rotates both.
                cos, sin = rope
                qk = apply_rotary(qk, cos, sin, self.rotary_interleaved)
            q, k = qk.split((heads, kv_heads), dim=1)  # (B, H, T, D), (B, K, T, D)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, K, S, D)

        out = self._attend(q, k, v, causal=causal, key_mask=key_mask, bias=bias)  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(batch, length, heads * head_dim)  # (B, T, H D)
        return self.out(out)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
        key_mask: torch.Tensor | None, bias: torch.Tensor | None,
    ) -> torch.Tensor:
        length, key_length = q.shape[2], k.shape[2]
        dropout = self.dropout if self.training else 0.0
        gqa = self.num_kv_heads != self.num_heads
        if key_mask is not None and bool(key_mask.all()):
            key_mask = None
        # The window only hides keys once there are more keys than it spans.
        window = self.sliding_window if causal else None
        if window is not None and key_length <= window:
            window = None
        if causal and length == 1 and window is None:
            causal = False  # a single query aligned to the end sees every key

        # Fast path: nothing but plain causal or full attention.
        one_query = length == 1 and dropout == 0.0
        if bias is None and key_mask is None and window is None and (not causal or length == key_length):
            if one_query:
                return self._attend_one_query(q, k, v, None)
            return F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, is_causal=causal and length > 1, scale=self.scale,
                enable_gqa=gqa,
            )

        visible = visibility_mask(key_mask, length, key_length, causal, q.device, window)
        empty_rows = None
        if visible is not None:
            has_key = visible.any(-1, keepdim=True)  # (B or 1, 1, T, 1)
            if not bool(has_key.all()):
                empty_rows = ~has_key
                visible = visible | empty_rows

        reduced = q.dtype in (torch.float16, torch.bfloat16)
        if bias is not None and reduced:
            out = self._attend_float32(q, k, v, visible, bias, dropout)
        else:
            mask_dtype = q.dtype
            base = torch.zeros((), dtype=mask_dtype, device=q.device) if bias is None else bias.to(mask_dtype)
            if visible is None:
                mask = base
            else:
                mask = torch.where(visible, base, torch.finfo(mask_dtype).min)
            if one_query:
                out = self._attend_one_query(q, k, v, mask)
            else:
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale, enable_gqa=gqa,
                )
        if empty_rows is not None:
            out = out.masked_fill(empty_rows, 0.0)
        return out

    def _attend_one_query(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attend from one query per sequence, as each decoding step does.

        PyTorch's fused CPU attention kernel costs far more than these few
        small products for a single query. The query heads that share a
        key/value head form the rows of one product, so keys and values are
        never repeated. ``mask`` is additive, broadcastable to (B, H, 1, S).
        """
        batch, heads, _, head_dim = q.shape
        kv_heads, key_length = k.shape[1], k.shape[2]
        scale = self.scale if self.scale is not None else head_dim**-0.5
        grouped = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)  # (B, K, H/K, D)
        scores = torch.matmul(grouped, k.transpose(-1, -2)).view(batch, heads, 1, key_length)
        scores = scores * scale if mask is None else scores * scale + mask  # (B, H, 1, S)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
        out = torch.matmul(probs.view(batch, kv_heads, -1, key_length), v)  # (B, K, H/K, D)
        return out.view(batch, heads, 1, head_dim)

    def _attend_float32(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor | None,
        bias: torch.Tensor, dropout: float,
    ) -> torch.Tensor:
        # Half-precision scores plus a large position bias (ALiBi at long range)
        # round badly, so scores, bias and softmax run in float32 here.
        groups = self.num_heads // self.num_kv_heads
        k32 = k.float().repeat_interleave(groups, dim=1)  # (B, H, S, D)
        v32 = v.float().repeat_interleave(groups, dim=1)
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        scores = (q.float() @ k32.transpose(-1, -2)) * scale + bias  # (B, H, T, S)
        if visible is not None:
            scores = scores.masked_fill(~visible, torch.finfo(torch.float32).min)
        probs = F.dropout(scores.softmax(-1), p=dropout, training=dropout > 0)
        return (probs @ v32).to(q.dtype)
