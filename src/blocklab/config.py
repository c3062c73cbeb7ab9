"""Model configuration: typed, validated, serialisable, with named presets.

Every field is checked at construction. A bad value raises ``ValueError`` whose
message names the field, the value and what is allowed, so that a model never
fails later in its first forward for a reason its config already showed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

POSITIONS = ("none", "sinusoidal", "learned", "relative", "t5", "alibi", "rope")
NORMS = ("layernorm", "rmsnorm", "batchnorm", "scalenorm")
RESIDUALS = ("post", "pre", "sandwich")
PLAIN_ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")
GATED_ACTIVATIONS = ("swiglu", "geglu", "geglu_tanh", "reglu")
FFNS = PLAIN_ACTIVATIONS + GATED_ACTIVATIONS
ROPE_SCALINGS = ("linear", "ntk", "dynamic", "yarn", "llama3")
RMSNORM_CAST_ORDERS = ("cast_then_scale", "scale_then_cast")


def _fail(owner: str, name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{owner}.{name}: invalid value {value!r}; expected {allowed}")


def _check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(owner, name, value, "one of " + ", ".join(choices))


def _check_int(owner: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(owner, name, value, f"an integer >= {minimum}")


def _check_float(
    owner: str, name: str, value: Any, low: float, high: float | None = None,
    low_inclusive: bool = False,
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f">= {low}" if low_inclusive else f"> {low}"
        if high is not None:
            bound += f" and <= {high}"
        _fail(owner, name, value, f"a finite number {bound}")


def _check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(owner, name, value, "true or false")


def _from_mapping(cls: type, data: Any, owner: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{owner}: expected a mapping of fields, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"{owner}: unknown field {unknown[0]!r}; known fields are "
            + ", ".join(sorted(known))
        )
    return cls(**data)


@dataclass
class RopeScaling:
    """A RoPE context-extension scaling.

    Attributes:
        type: ``linear`` (position interpolation, Chen et al. 2023), ``ntk``
            (NTK-aware base change), ``dynamic`` (NTK base chosen from the
            current length, as `transformers`' "dynamic"), ``yarn`` (Peng et al.
            2023, as `transformers` defines it) or ``llama3``.
        factor: the context-extension factor; 1.0 leaves RoPE unchanged.
        original_max_position_embeddings: the length the model was trained at.
            ``dynamic``, ``yarn`` and ``llama3`` use it.
        beta_fast, beta_slow: YaRN's ramp bounds in rotations (defaults 32, 1).
        attention_factor: YaRN's cos/sin multiplier; None derives it from
            ``factor``, ``mscale`` and ``mscale_all_dim`` as `transformers` does.
        mscale, mscale_all_dim: YaRN's optional mscale terms.
        truncate: YaRN rounds its correction range to whole dimensions.
        low_freq_factor, high_freq_factor: Llama-3's wavelength bands.
    """

    type: str = "linear"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0

    def __post_init__(self) -> None:
        owner = "RopeScaling"
        _check_choice(owner, "type", self.type, ROPE_SCALINGS)
        _check_float(owner, "factor", self.factor, 1.0, low_inclusive=True)
        needs_original = self.type in ("dynamic", "yarn", "llama3")
        if self.original_max_position_embeddings is None and needs_original:
            raise ValueError(
                f"{owner}.original_max_position_embeddings: missing for type "
                f"{self.type!r}; set it to the context length the model was trained at"
            )
        if self.original_max_position_embeddings is not None:
            _check_int(
                owner, "original_max_position_embeddings",
                self.original_max_position_embeddings, 1,
            )
        _check_float(owner, "beta_fast", self.beta_fast, 0.0)
        _check_float(owner, "beta_slow", self.beta_slow, 0.0)
        if self.attention_factor is not None:
            _check_float(owner, "attention_factor", self.attention_factor, 0.0)
        for name in ("mscale", "mscale_all_dim"):
            value = getattr(self, name)
            if value is not None:
                _check_float(owner, name, value, 0.0, low_inclusive=True)
        _check_bool(owner, "truncate", self.truncate)
        _check_float(owner, "low_freq_factor", self.low_freq_factor, 0.0)
        _check_float(owner, "high_freq_factor", self.high_freq_factor, 0.0)
        if self.type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"{owner}.high_freq_factor: invalid value {self.high_freq_factor!r}; "
                f"expected a value greater than low_freq_factor ({self.low_freq_factor!r})"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RopeScaling:
        return _from_mapping(cls, data, "RopeScaling")


@dataclass
class RopeConfig:
    """Rotary position embedding settings.

    Attributes:
        theta: the base of the frequencies, 10000 in Su et al. 2021.
        interleaved: rotate adjacent pairs (x0, x1), (x2, x3) as in GPT-J and
            Meta's original LLaMA, instead of split halves (x_i, x_{i+D/2}) as in
            GPT-NeoX and `transformers`' LLaMA.
        partial_fraction: the fraction of each head's dimensions that rotate;
            the rest pass through (GPT-NeoX uses 0.25).
        scaling: an optional context-extension scaling.
    """

    theta: float = 10000.0
    interleaved: bool = False
    partial_fraction: float = 1.0
    scaling: RopeScaling | None = None

    def __post_init__(self) -> None:
        owner = "RopeConfig"
        if isinstance(self.scaling, dict):
            self.scaling = RopeScaling.from_dict(self.scaling)
        _check_float(owner, "theta", self.theta, 1.0)
        _check_bool(owner, "interleaved", self.interleaved)
        _check_float(owner, "partial_fraction", self.partial_fraction, 0.0, 1.0)
        if self.scaling is not None and not isinstance(self.scaling, RopeScaling):
            _fail(owner, "scaling", self.scaling, "a RopeScaling, a mapping or None")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RopeConfig:
        return _from_mapping(cls, data, "RopeConfig")


@dataclass
class ModelConfig:
    """The full description of a blocklab Transformer.

    Attributes:
        vocab_size: number of token ids (V).
        d_model: model width (C).
        n_layers: number of blocks.
        n_heads: query heads (H).
        n_kv_heads: key/value heads (K); None means K = H (multi-head), 1 is
            multi-query, anything between is grouped-query.
        head_dim: per-head width (D); None means d_model // n_heads.
        max_seq_len: the trained context length. Learned positions have a
            table of this size; other encodings run past it.
        position: none, sinusoidal, learned, relative, t5, alibi or rope.
        norm: layernorm, rmsnorm, batchnorm or scalenorm.
        residual: post (x = Norm(x + f(x)), Vaswani et al.), pre
            (x = x + f(Norm(x))) or sandwich (x = x + Norm(f(Norm(x)))).
        ffn: relu, gelu, gelu_tanh, silu, or gated swiglu, geglu, geglu_tanh,
            reglu (Shazeer 2020).
        causal: causal language model (True) or bidirectional encoder.
        d_ff: FFN hidden width (F); None gives 4C for plain FFNs and
            2/3 * 4C rounded up to ``ffn_multiple_of`` for gated ones.
        ffn_multiple_of: rounding for the default gated width.
        norm_eps: epsilon of every norm.
        norm_bias: LayerNorm and RMSNorm carry an additive bias b; None means
            yes for LayerNorm and no for RMSNorm.
        rmsnorm_unit_offset: RMSNorm scales by (1 + g), as Gemma does.
        rmsnorm_cast: ``cast_then_scale`` (LLaMA, T5) or ``scale_then_cast``
            (Gemma) for RMSNorm in reduced precision.
        qkv_bias: biases on the query, key and value projections.
        out_bias: bias on the attention output projection.
        ffn_bias: biases on the FFN projections.
        attn_scale: score scale; None means 1 / sqrt(D). T5 uses 1.0.
        sliding_window: a causal query attends to at most this many keys,
            itself and the ones just before it (Mistral). None attends to every
            earlier key.
        embed_norm: a norm right after the embeddings (BERT, BLOOM).
        final_norm: a norm after the last block; None means True unless
            the residual is post-norm, whose blocks already end in a norm.
        scale_embeddings: multiply token embeddings by sqrt(d_model) (Gemma;
            the sinusoidal encoding of Vaswani et al. does the same).
        tie_embeddings: the output head shares the token embedding matrix.
        lm_head: build an output head; an encoder used only for its hidden
            states can drop it.
        type_vocab_size: number of token-type (segment) embeddings, as in
            BERT. 0 means the model has none.
        pooler: a tanh pooler over the first token, as in BERT.
        dropout: dropout on embeddings and on each sublayer's output.
        attn_dropout: dropout on attention probabilities.
        rope: rotary settings, used when position is ``rope``.
        relative_max_distance: offsets i - j of the learned relative bias are
            clipped to +-this value.
        t5_num_buckets, t5_max_distance: the T5 bucketed bias.
        init_std: standard deviation of the normal weight initialisation.
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    max_seq_len: int = 256
    position: str = "rope"
    norm: str = "rmsnorm"
    residual: str = "pre"
    ffn: str = "swiglu"
    causal: bool = True
    d_ff: int | None = None
    ffn_multiple_of: int = 8
    norm_eps: float = 1e-5
    norm_bias: bool | None = None
    rmsnorm_unit_offset: bool = False
    rmsnorm_cast: str = "cast_then_scale"
    qkv_bias: bool = False
    out_bias: bool = False
    ffn_bias: bool = False
    attn_scale: float | None = None
    sliding_window: int | None = None
    embed_norm: bool = False
    final_norm: bool | None = None
    scale_embeddings: bool = False
    tie_embeddings: bool = False
    lm_head: bool = True
    type_vocab_size: int = 0
    pooler: bool = False
    dropout: float = 0.0
    attn_dropout: float = 0.0
    rope: RopeConfig = field(default_factory=RopeConfig)
    relative_max_distance: int = 128
    t5_num_buckets: int = 32
    t5_max_distance: int = 128
    init_std: float = 0.02

    def __post_init__(self) -> None:
        owner = "ModelConfig"
        if isinstance(self.rope, dict):
            self.rope = RopeConfig.from_dict(self.rope)
        if not isinstance(self.rope, RopeConfig):
            _fail(owner, "rope", self.rope, "a RopeConfig or a mapping")

        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            _check_int(owner, name, getattr(self, name), 1)
        for name in ("n_kv_heads", "head_dim", "d_ff"):
            if getattr(self, name) is not None:
                _check_int(owner, name, getattr(self, name), 1)
        _check_int(owner, "ffn_multiple_of", self.ffn_multiple_of, 1)
        _check_int(owner, "type_vocab_size", self.type_vocab_size, 0)
        _check_int(owner, "relative_max_distance", self.relative_max_distance, 1)
        _check_int(owner, "t5_num_buckets", self.t5_num_buckets, 2)
        _check_int(owner, "t5_max_distance", self.t5_max_distance, 1)

        _check_choice(owner, "position", self.position, POSITIONS)
        _check_choice(owner, "norm", self.norm, NORMS)
        _check_choice(owner, "residual", self.residual, RESIDUALS)
        _check_choice(owner, "ffn", self.ffn, FFNS)
        _check_choice(owner, "rmsnorm_cast", self.rmsnorm_cast, RMSNORM_CAST_ORDERS)

        for name in (
            "causal", "rmsnorm_unit_offset", "qkv_bias", "out_bias",
            "ffn_bias", "embed_norm", "scale_embeddings", "tie_embeddings",
            "lm_head", "pooler",
        ):
            _check_bool(owner, name, getattr(self, name))
        for name in ("final_norm", "norm_bias"):
            if getattr(self, name) is not None:
                _check_bool(owner, name, getattr(self, name))

        _check_float(owner, "norm_eps", self.norm_eps, 0.0)
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and 0.0 <= value < 1.0):
                _fail(owner, name, value, "a probability in [0, 1)")
        _check_float(owner, "init_std", self.init_std, 0.0)
        if self.attn_scale is not None:
            _check_float(owner, "attn_scale", self.attn_scale, 0.0)
        if self.sliding_window is not None:
            _check_int(owner, "sliding_window", self.sliding_window, 1)
            if not self.causal:
                _fail(owner, "sliding_window", self.sliding_window, "None when causal=False")

        self._check_shapes()

    def _check_shapes(self) -> None:
        owner = "ModelConfig"
        if self.head_dim is None and self.d_model % self.n_heads != 0:
            raise ValueError(
                f"{owner}.n_heads: invalid value {self.n_heads}; d_model "
                f"({self.d_model}) must be divisible by n_heads, or set head_dim"
            )
        kv = self.kv_heads
        if kv > self.n_heads or self.n_heads % kv != 0:
            raise ValueError(
                f"{owner}.n_kv_heads: invalid value {self.n_kv_heads}; n_heads "
                f"({self.n_heads}) must be a multiple of n_kv_heads"
            )
        if self.position == "rope":
            rotary = self.rotary_dim
            if rotary < 2 or rotary % 2 != 0:
                raise ValueError(
                    f"{owner}.head_dim: invalid value {self.dim_per_head}; RoPE needs an "
                    f"even rotary dimension of at least 2, and head_dim * "
                    f"rope.partial_fraction gives {rotary}"
                )
        if self.position == "t5":
            # Mirrors blocklab.nn.bias.t5_bucket_problem; config.py imports nothing from nn/.
            side = self.t5_num_buckets // 2 if not self.causal else self.t5_num_buckets
            exact = side // 2
            if exact < 1:
                minimum = 2 if self.causal else 4
                raise ValueError(
                    f"{owner}.t5_num_buckets: invalid value {self.t5_num_buckets}; "
                    f"expected at least {minimum} with causal={self.causal}"
                )
            if self.t5_max_distance <= exact:
                raise ValueError(
                    f"{owner}.t5_max_distance: invalid value {self.t5_max_distance}; expected "
                    f"more than {exact}, the exact buckets per direction that "
                    f"t5_num_buckets={self.t5_num_buckets} gives"
                )
        if self.pooler and self.causal:
            raise ValueError(
                f"{owner}.pooler: invalid value True with causal=True; the pooler "
                "reads the first token, which a causal model computes without context"
            )
        if self.norm == "batchnorm" and self.rmsnorm_unit_offset:
            raise ValueError(
                f"{owner}.rmsnorm_unit_offset: invalid value True with norm="
                "'batchnorm'; the unit offset applies to rmsnorm only"
            )

    # Derived sizes ---------------------------------------------------------

    @property
    def kv_heads(self) -> int:
        """Key/value heads K (equal to n_heads when n_kv_heads is None)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def dim_per_head(self) -> int:
        """Head width D."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        """Number of dimensions of each head that RoPE rotates."""
        return int(self.dim_per_head * self.rope.partial_fraction)

    @property
    def gated(self) -> bool:
        return self.ffn in GATED_ACTIVATIONS

    @property
    def ffn_dim(self) -> int:
        """FFN hidden width F, resolved from d_ff or the equal-parameter default."""
        if self.d_ff is not None:
            return self.d_ff
        return default_ffn_dim(self.d_model, self.gated, self.ffn_multiple_of)

    @property
    def use_norm_bias(self) -> bool:
        return self.norm == "layernorm" if self.norm_bias is None else self.norm_bias

    @property
    def use_final_norm(self) -> bool:
        return self.residual != "post" if self.final_norm is None else self.final_norm

    # Serialisation ---------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_mapping(cls, data, "ModelConfig")

    def replace(self, **changes: Any) -> ModelConfig:
        """Return a validated copy with ``changes`` applied."""
        data = self.to_dict()
        unknown = sorted(set(changes) - set(data))
        if unknown:
            raise ValueError(
                f"ModelConfig: unknown field {unknown[0]!r}; known fields are "
                + ", ".join(sorted(data))
            )
        data.update(changes)
        return ModelConfig.from_dict(data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """Build a named architecture's configuration, with fields overridden.

        Args:
            name: one of ``PRESETS``.
            **overrides: any ModelConfig field.

        Raises:
            ValueError: for an unknown preset or field, or an invalid value.
        """
        if name not in PRESETS:
            raise ValueError(
                f"ModelConfig.preset: unknown preset {name!r}; expected one of "
                + ", ".join(PRESETS)
            )
        data = dict(PRESETS[name])
        data.update(overrides)
        return cls().replace(**data)


def default_ffn_dim(d_model: int, gated: bool, multiple_of: int = 8) -> int:
    """Return the default FFN width: 4C, or 2/3 * 4C rounded up for gated FFNs.

    A gated FFN has three C x F matrices instead of two, so 2/3 of the plain
    width gives about the same parameter count (Shazeer 2020).
    """
    if not gated:
        return 4 * d_model
    width = (2 * 4 * d_model + 2) // 3  # ceil(8C / 3)
    return multiple_of * ((width + multiple_of - 1) // multiple_of)


_SMALL = dict(vocab_size=256, d_model=128, n_layers=4, n_heads=4, max_seq_len=256)

PRESETS: dict[str, dict[str, Any]] = {
    # Vaswani et al. 2017: post-norm, sinusoidal positions, ReLU FFN, biases.
    "vaswani": dict(
        _SMALL, position="sinusoidal", norm="layernorm", residual="post", ffn="relu",
        norm_bias=True, qkv_bias=True, out_bias=True, ffn_bias=True,
        scale_embeddings=True, tie_embeddings=True, norm_eps=1e-6,
    ),
    # GPT-2: learned positions, pre-norm LayerNorm, tanh GELU, tied head.
    "gpt2": dict(
        _SMALL, position="learned", norm="layernorm", residual="pre", ffn="gelu_tanh",
        norm_bias=True, qkv_bias=True, out_bias=True, ffn_bias=True,
        tie_embeddings=True,
    ),
    # BERT: bidirectional, post-norm, exact GELU, embedding norm, segments, pooler.
    "bert": dict(
        _SMALL, position="learned", norm="layernorm", residual="post", ffn="gelu",
        causal=False, norm_bias=True, qkv_bias=True, out_bias=True, ffn_bias=True,
        embed_norm=True, norm_eps=1e-12, type_vocab_size=2, pooler=True,
        tie_embeddings=True,
    ),
    # LLaMA: RoPE, pre-norm RMSNorm, SwiGLU, no biases, untied head.
    "llama": dict(
        _SMALL, position="rope", norm="rmsnorm", residual="pre", ffn="swiglu",
        norm_eps=1e-5,
    ),
    # Qwen2: LLaMA with biases on q, k, v, grouped-query attention, theta 1e6.
    "qwen2": dict(
        _SMALL, position="rope", norm="rmsnorm", residual="pre", ffn="swiglu",
        qkv_bias=True, n_kv_heads=2, norm_eps=1e-6,
        rope=dict(theta=1_000_000.0),
    ),
    # BLOOM: ALiBi, embedding LayerNorm, pre-norm, tanh GELU, biases, tied head.
    "bloom": dict(
        _SMALL, position="alibi", norm="layernorm", residual="pre", ffn="gelu_tanh",
        norm_bias=True, qkv_bias=True, out_bias=True, ffn_bias=True,
        embed_norm=True, tie_embeddings=True,
    ),
    # T5 encoder: bucketed bias, RMS-style norm, unscaled scores, ReLU FFN.
    "t5": dict(
        _SMALL, position="t5", norm="rmsnorm", residual="pre", ffn="relu",
        causal=False, attn_scale=1.0, norm_eps=1e-6, init_std=0.05,
    ),
    # Gemma: unit-offset RMSNorm, tanh-GELU gated FFN, scaled embeddings.
    "gemma": dict(
        _SMALL, position="rope", norm="rmsnorm", residual="pre", ffn="geglu_tanh",
        rmsnorm_unit_offset=True, rmsnorm_cast="scale_then_cast",
        scale_embeddings=True, tie_embeddings=True, norm_eps=1e-6, n_kv_heads=1,
    ),
}
