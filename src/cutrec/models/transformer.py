"""The transformer layers SASRec and BERT4Rec share: self-attention (causal or bidirectional), the block (pre- or
post-norm, optionally with gated residuals), and the encoder body (item and position embeddings, blocks, final norm)
that turns item ids into hidden states.

Batches are right-padded (real items first, then the padding id). Position ids count back from the most recent real
item (the last real item, or BERT4Rec's trailing mask token, always has position max_len - 1), the convention of
left-padded SASRec. Causal attention never attends to right padding, so it needs no mask and
`scaled_dot_product_attention(is_causal=True)` can use flash attention; bidirectional attention passes a key-padding
mask instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cutrec.errors import CutrecError
from cutrec.models.sharded import ShardedItemEmbedding

DROPOUT_PLACES = ("embedding", "attention", "feed_forward", "residual")


def dropout_layer(rate: float) -> nn.Module:
    """Dropout at `rate`, or nothing at 0 (no kernel, no random draws)."""
    return nn.Dropout(rate) if rate else nn.Identity()


class SelfAttention(nn.Module):
    """Multi-head self-attention through torch's fused scaled_dot_product_attention; causal or bidirectional;
    `dropout` on the attention probabilities."""

    def __init__(self, dim: int, num_heads: int, dropout: float, *, causal: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, is_item: torch.Tensor) -> torch.Tensor:
        """x [B, L, D], is_item [B, L] bool (False at padding) -> [B, L, D]."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)  # [B, L, 3, H, D/H]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, L, D/H]
        # causal: right padding comes after every real item, so no query attends to it; otherwise mask padded keys
        key_mask = None if self.causal else is_item[:, None, None, :]  # [B, 1, 1, L]
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, L, D/H]
        return self.out(attended.transpose(1, 2).reshape(batch, length, dim))  # [B, L, D]


class SwiGLU(nn.Module):
    """[..., 2H] -> [..., H]: silu(gate) * value of the halves (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = x.chunk(2, dim=-1)
        return F.silu(gate) * value


def feed_forward(dim: int, width: int, activation: str, dropout: float) -> nn.Sequential:
    """[..., D] -> [..., D] through `width` hidden units: Linear, the activation, dropout at `dropout`, Linear.
    "swiglu" doubles the first layer (gate and value) and keeps `width` units after the gate."""
    activations = {"gelu": nn.GELU, "relu": nn.ReLU, "swiglu": SwiGLU}
    if activation not in activations:
        raise CutrecError(f"model.ffn_activation={activation!r} is unknown; choose gelu, relu or swiglu")
    up = 2 * width if activation == "swiglu" else width
    return nn.Sequential(nn.Linear(dim, up), activations[activation](), dropout_layer(dropout), nn.Linear(width, dim))


class TransformerBlock(nn.Module):
    """Two sublayers, attention then feed-forward, each added to its input: pre-norm, x + f(norm(x)), or post-norm,
    norm(x + f(x)) (Vaswani et al. 2017). `rates` maps each of "attention" (the attention probabilities),
    "feed_forward" (its hidden units) and "residual" (each sublayer's output before it is added) to its dropout
    rate. `residual_gate`: each sublayer's output is scaled, feature by feature, by sigmoid(W g + b) of the
    sublayer's own input g before it is added (the gated residual of LiGR layers, Gu et al. 2025, used by
    eSASRec)."""

    def __init__(self, dim: int, num_heads: int, rates: dict[str, float], *, causal: bool, ffn_activation: str,
                 ffn_width: int, post_norm: bool, residual_gate: bool) -> None:
        super().__init__()
        self.post_norm = post_norm
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, num_heads, rates["attention"], causal=causal)
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = feed_forward(dim, ffn_width, ffn_activation, rates["feed_forward"])
        self.dropout = dropout_layer(rates["residual"])
        self.attention_gate = nn.Linear(dim, dim) if residual_gate else None
        self.feed_forward_gate = nn.Linear(dim, dim) if residual_gate else None

    def forward(self, x: torch.Tensor, is_item: torch.Tensor) -> torch.Tensor:
        """x [B, L, D], is_item [B, L] -> [B, L, D]."""
        x = self._add(x, self.attention_norm, lambda inner: self.attention(inner, is_item), self.attention_gate)
        return self._add(x, self.feed_forward_norm, self.feed_forward, self.feed_forward_gate)

    def _add(self, x: torch.Tensor, norm: nn.LayerNorm, sublayer, gate: nn.Linear | None) -> torch.Tensor:
        """One sublayer and its residual connection, [B, L, D] -> [B, L, D]."""
        inner = x if self.post_norm else norm(x)
        out = self.dropout(sublayer(inner))
        if gate is not None:
            out = torch.sigmoid(gate(inner)) * out
        return norm(x + out) if self.post_norm else x + out


ITEM_INIT_ROWS = 1 << 16  # the initial item table is drawn in chunks of this many rows, each from its own generator


def fill_item_rows(rows: torch.Tensor, seed: int, start: int, std: float) -> None:
    """Fill `rows` [R, D] with rows start..start+R-1 of the initial item table: normal with std `std`, chunk c of
    ITEM_INIT_ROWS rows drawn from a generator seeded by (seed, c). Any range of rows is filled alone and equals that
    range of the whole table, so a catalog-parallel rank builds only its own rows (`models.sharded`); the memory
    beyond `rows` is one chunk."""
    stop, dim = start + rows.shape[0], rows.shape[1]
    for chunk in range(start // ITEM_INIT_ROWS, -(-stop // ITEM_INIT_ROWS)):
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0]))
        block = torch.randn(ITEM_INIT_ROWS, dim, generator=generator).mul_(std)  # [C, D]
        first = chunk * ITEM_INIT_ROWS
        low, high = max(start, first), min(stop, first + ITEM_INIT_ROWS)
        rows[low - start : high - start] = block[low - first : high - first]


class TransformerEncoder(nn.Module):
    """Item ids [B, L] (right-padded with `padding_id` = num_items) -> hidden states [B, L, D].

    The embedding table has num_items + num_special rows: the catalog, then the padding row (kept at zero), then
    any special tokens of the subclass (BERT4Rec's mask). Only the catalog rows form the output `item_table`, so a
    special token is never scored, recommended or drawn as a negative.
    """

    def __init__(
        self, num_items: int, *, num_special: int, causal: bool, max_len: int = 50, dim: int = 64, num_blocks: int = 2,
        num_heads: int = 1, dropout: float = 0.2, dropout_places: tuple[str, ...] = DROPOUT_PLACES,
        ffn_activation: str = "gelu", ffn_mult: float = 1.0, norm_placement: str = "pre", residual_gate: bool = False,
        embedding_scale: bool = False, init_std: float | None = None, materialize_items: bool = True,
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise CutrecError(f"num_items={num_items}: the catalog must hold at least one item")
        if max_len < 1:
            raise CutrecError(f"max_len={max_len}: use a sequence length of 1 or more")
        if dim % num_heads != 0:
            raise CutrecError(f"dim={dim} is not divisible by num_heads={num_heads}; pick heads that divide dim")
        unknown = sorted(set(dropout_places) - set(DROPOUT_PLACES))
        if unknown:
            raise CutrecError(f"model.dropout_places has {unknown[0]!r}; choose from {', '.join(DROPOUT_PLACES)}")
        rates = {place: dropout if place in dropout_places else 0.0 for place in DROPOUT_PLACES}
        if norm_placement not in ("pre", "post"):
            raise CutrecError(f"model.norm_placement={norm_placement!r} is unknown; choose pre or post")
        self.num_items = num_items
        self.max_len = max_len
        self.num_special = num_special
        counting = torch.get_default_device().type == "meta"  # built on the meta device to count: draw nothing
        self.item_seed = 0 if counting else int(torch.randint(0, 2**62, (), device="cpu"))  # `fill_item_rows`
        table = torch.empty(num_items + num_special, dim, device=None if materialize_items else "meta")
        self.item_embedding = nn.Embedding(num_items + num_special, dim, padding_idx=num_items, _weight=table)
        self.position_embedding = nn.Embedding(max_len, dim)
        self.embedding_dropout = dropout_layer(rates["embedding"])
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, rates, causal=causal, ffn_activation=ffn_activation,
                             ffn_width=max(1, round(ffn_mult * dim)), post_norm=norm_placement == "post",
                             residual_gate=residual_gate)
            for _ in range(num_blocks)
        )
        # post-norm blocks end normalised already
        self.final_norm = nn.LayerNorm(dim) if norm_placement == "pre" else nn.Identity()
        self.init_std = dim**-0.5 if init_std is None else init_std  # of the item and position embeddings
        self.input_scale = math.sqrt(dim) if embedding_scale else 1.0  # of the input item embeddings
        nn.init.normal_(self.position_embedding.weight, std=self.init_std)
        if not table.is_meta:  # (meta: counted, not built; or left for a catalog-parallel rank's own rows)
            with torch.no_grad():
                fill_item_rows(table, self.item_seed, 0, self.init_std)
                table[num_items].zero_()  # the padding row

    @property
    def padding_id(self) -> int:
        return self.num_items

    @property
    def item_table(self) -> torch.Tensor:
        """The output item table [N, D], tied to the input embeddings (padding and special rows excluded); in a
        catalog-parallel run, this rank's rows of it (models/sharded.py)."""
        if isinstance(self.item_embedding, ShardedItemEmbedding):
            return self.item_embedding.weight
        return self.item_embedding.weight[: self.num_items]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.ndim != 2 or inputs.shape[1] > self.max_len:
            raise CutrecError(f"inputs must be [B, L] with L <= max_len={self.max_len}, got {tuple(inputs.shape)}")
        is_item = inputs != self.padding_id  # [B, L]
        lengths = is_item.sum(1, keepdim=True)  # [B, 1]
        steps = torch.arange(inputs.shape[1], device=inputs.device).unsqueeze(0)  # [1, L]
        positions = (self.max_len - lengths + steps).clamp(0, self.max_len - 1)  # [B, L]; last item -> max_len - 1
        x = self.item_embedding(inputs)  # [B, L, D]
        if self.input_scale != 1.0:
            x = x * self.input_scale
        x = x + self.position_embedding(positions)
        keep = is_item.unsqueeze(-1).to(x.dtype)  # [B, L, 1]
        x = self.embedding_dropout(x) * keep
        for block in self.blocks:
            x = block(x, is_item) * keep
        return self.final_norm(x)  # [B, L, D]
