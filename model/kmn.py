"""The KMN network (STM's architecture with the kernelized memory read), split at the deployment graph seams.

Module names (``memory_encoder``, ``query_encoder``, ``memory_kv``, ``query_kv``, ``decoder``) map one-to-one
onto STM's ``Encoder_M``, ``Encoder_Q``, ``KV_M_r4``, ``KV_Q_r4`` and ``Decoder`` (see
:mod:`kmnrt.model.checkpoint`). The four stage methods are exactly what the four exported graphs compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kmnrt.model.config import ModelConfig, ReadConfig
from kmnrt.model.decoder import Decoder, soft_aggregate
from kmnrt.model.encoders import KeyValue, MemoryEncoder, QueryEncoder, object_masks
from kmnrt.model.memory_read import MemoryRead
from kmnrt.model.resnet import init_weights


@dataclass
class QueryFeatures:
    """One frame's query-side features: key [1, Ck, h, w], value [1, Cv, h, w], skips r3 [1, C3, 2h, 2w] and
    r2 [1, C2, 4h, 4w]."""

    key: Tensor
    value: Tensor
    r3: Tensor
    r2: Tensor


class KMN(nn.Module):
    def __init__(self, config: ModelConfig, read: ReadConfig = ReadConfig()):
        super().__init__()
        self.config = config
        self.memory_encoder = MemoryEncoder(config)
        self.query_encoder = QueryEncoder(config)
        self.memory_kv = KeyValue(config.r4_channels, config.key_dim, config.value_dim)
        self.query_kv = KeyValue(config.r4_channels, config.key_dim, config.value_dim)
        self.decoder = Decoder(2 * config.value_dim, config.r3_channels, config.r2_channels, config.decoder_dim)
        self.read = MemoryRead(read)
        init_weights(self)

    @property
    def read_config(self) -> ReadConfig:
        return self.read.config

    def encode_query(self, frame: Tensor) -> QueryFeatures:
        """frame [1, 3, H, W], RGB in [0, 1], H and W multiples of 16."""
        r4, r3, r2 = self.query_encoder(frame)
        key, value = self.query_kv(r4)
        return QueryFeatures(key, value, r3, r2)

    def encode_memory(self, frame: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
        """frame [1, 3, H, W]; probs [N+1, H, W] soft probabilities, background first
        -> key [N, Ck, h, w], value [N, Cv, h, w]."""
        own, others = object_masks(probs)
        return self.memory_kv(self.memory_encoder(frame, own, others))

    def read_memory(self, memory_key: Tensor, memory_value: Tensor, query_key: Tensor,
                    memory_valid: Tensor | None = None) -> Tensor:
        """memory_key [T, N, Ck, h, w], memory_value [T, N, Cv, h, w], query_key [1, Ck, h, w],
        memory_valid [T, N] or None -> read [N, Cv, h, w]."""
        return self.read(memory_key, memory_value, query_key, memory_valid)

    def decode_logits(self, read: Tensor, query: QueryFeatures) -> Tensor:
        """read [N, Cv, h, w] -> two-class logits per object [N, 2, H, W] (what training's loss sees)."""
        memory_out = torch.cat([read, query.value.expand(read.shape[0], -1, -1, -1)], dim=1)
        return self.decoder(memory_out, query.r3, query.r2)

    def decode(self, read: Tensor, query: QueryFeatures) -> Tensor:
        """read [N, Cv, h, w] -> soft-aggregated probabilities [N+1, H, W], background first."""
        logits = self.decode_logits(read, query)
        return soft_aggregate(logits[:, 1] - logits[:, 0])    # = logit of softmax(logits)[:, 1]

    def segment(self, frame: Tensor, memory_key: Tensor, memory_value: Tensor,
                memory_valid: Tensor | None = None) -> Tensor:
        """One full query step: frame [1, 3, H, W] and a memory bank -> probabilities [N+1, H, W]."""
        query = self.encode_query(frame)
        return self.decode(self.read_memory(memory_key, memory_value, query.key, memory_valid), query)


def build_model(config: ModelConfig, read: ReadConfig = ReadConfig(), seed: int | None = 0) -> KMN:
    """A KMN in eval mode with deterministic random weights (``seed``) until a checkpoint is loaded."""
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = KMN(config, read)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()
