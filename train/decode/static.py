"""The static-cache decode engine: the eager loop's tokens, without its host work.

The eager reference (train/models/generation.py) runs transformers' forward every step: a
DynamicCache that concatenates K and V in every layer, a 2-D attention mask that grows by a
column and is re-checked on the host, and some 2,000 small kernels launched one by one. On a GPU
that loop is host-bound (about 90 ms a step for a 3B decoder whose weights stream from HBM in
about 2 ms). This engine keeps the same per-step decisions and moves the rest onto the device:

- K and V live in static buffers sized to a bucketed (batch, length) shape; each step writes
  its token's K/V at one slot and attends over the whole buffer through a boolean-built additive
  mask (keys past the slot, and left-padding keys, are masked);
- the decoder step (embedding -> the model's own decoder layers -> norm -> head) has static shapes,
  so on CUDA it is captured once per shape in a CUDA graph and replayed;
- the token filter is an additive bias held on the device, log-probs are gather - logsumexp,
  sampling stays on the device (the reference's keyed Gumbel-max, or multinomial);
- the host asks whether every row has finished only every `check_every` steps;
- at those checks, finished rows are compacted away: when the live rows fit a smaller batch
  bucket, their K/V are gathered into that bucket's buffers, so a long tail does not hold the batch.

The decoder layers are transformers' own modules, called one by one with a small cache object
(`_StaticKV`) in place of transformers' Cache: that is all the step needs, and it keeps the
step free of transformers' mask building and cache bookkeeping, which sync with the host.
The step needs every weight whole on every rank, so sharded parameters (ZeRO-3, FSDP) are
refused here: `train.decode.make_decoder` picks the eager reference for them.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import nullcontext
from copy import deepcopy
from dataclasses import dataclass

import torch
from train.models.generation import Generated, keyed_sample, left_padded_positions, sampling_warp


def next_bucket(n: int, step: int) -> int:
    return -(-n // step) * step


def batch_bucket(n: int) -> int:
    """Batch sizes come in powers of two: few shapes, so few captured graphs."""
    return 1 << max(n - 1, 0).bit_length()


@functools.cache
def cache_keyword(layer_type: type) -> str:
    """The name a decoder layer's forward takes its cache under (transformers renamed it): read once per
    layer class, not at every decode step."""
    return "cache" if "cache" in inspect.signature(layer_type.forward).parameters else "past_key_values"


def base_model(model):
    """The GlmAsr student under a peft wrapper (its LoRA layers stay in place and run)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def has_sharded_parameters(model) -> bool:
    """ZeRO-3 partitions (`ds_id`, empty local data) and FSDP2 DTensor shards."""
    for p in model.parameters():
        if hasattr(p, "ds_id") or type(p).__name__ == "DTensor" or type(p.data).__name__ == "DTensor":
            return True
    return False


class _StaticKV:
    """What a transformers attention layer needs of a cache: `update(k, v, layer_idx, ...)` that stores
    this call's K/V and returns the K/V to attend over. Prefill writes slots [0, S) of its rows and
    attends over them; a decode step writes slot `slot_1` of every row and attends over the buffer."""

    def __init__(self, layers: int, batch: int, kv_heads: int, length: int, head_dim: int, dtype, device):
        shape = (batch, kv_heads, length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.slot_1 = torch.zeros(1, dtype=torch.long, device=device)
        self.prefill_rows: int | None = None  # set during prefill

    def update(self, key, value, layer_idx, *args, **kwargs):
        k_buf, v_buf = self.keys[layer_idx], self.values[layer_idx]
        if self.prefill_rows is not None:
            rows, width = self.prefill_rows, key.shape[2]
            k_buf[:rows, :, :width].copy_(key)
            v_buf[:rows, :, :width].copy_(value)
            return k_buf[:rows, :, :width], v_buf[:rows, :, :width]
        k_buf.index_copy_(2, self.slot_1, key.to(k_buf.dtype))
        v_buf.index_copy_(2, self.slot_1, value.to(v_buf.dtype))
        return k_buf, v_buf


@dataclass
class _Shape:
    """Everything one (batch bucket, length bucket) step reads and writes, at fixed addresses."""

    kv: _StaticKV
    valid_B_L: torch.Tensor  # keys a row may attend to (its prompt's real tokens, and every new slot)
    ids_B: torch.Tensor
    pos_B: torch.Tensor
    logits_B_V: torch.Tensor | None = None
    graph: object = None


class StaticCacheDecoder:
    """A `train.decode.Decoder`: static KV cache, CUDA graphs on CUDA, device-side choices, compaction.

    cuda_graphs: capture the step once per shape on CUDA (ignored elsewhere).
    compile: wrap the step in torch.compile (default mode; works on CPU too).
    check_every: steps between host checks for "every row finished" (and compaction).
    compact: move the live rows to a smaller batch bucket at a check when they fit one.
    length_bucket: cache lengths are multiples of this (prompt + max_new_tokens, rounded up).
    bf16_copy: a model that trains float32 masters under bf16 autocast decodes from a bf16 copy of its
    weights, refreshed at each call (see `_bfloat16_copy`).
    Buffers and graphs are kept between calls (per model, device, dtype and shape); `reset()` frees them.
    """

    name = "static"

    def __init__(self, cuda_graphs: bool = True, compile: bool = False, check_every: int = 8, compact: bool = True,
                 length_bucket: int = 64, bf16_copy: bool = True):
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        if length_bucket < 1:
            raise ValueError(f"length_bucket must be >= 1, got {length_bucket}")
        self.cuda_graphs, self.compile, self.check_every = cuda_graphs, compile, check_every
        self.compact, self.length_bucket, self.bf16_copy = compact, length_bucket, bf16_copy
        self._copy = self._copy_of = self._copy_pairs = None
        self._shapes: dict[tuple, _Shape] = {}
        self._owner = None
        self._compiled = None
        self.stats = {"captures": 0, "compactions": 0, "steps": 0, "host_checks": 0}

    def reset(self) -> None:
        """Free every buffer, graph and weight copy (the next call builds them again)."""
        self._forget_shapes()
        self._copy = self._copy_of = self._copy_pairs = None

    def _forget_shapes(self) -> None:
        self._shapes.clear()
        self._owner = self._compiled = None

    def _bfloat16_copy(self, model):
        """A bfloat16 copy of a model that trains float32 masters under autocast, its trained weights
        refreshed from the masters at every call. Decoding under autocast would cast every weight at every
        step (on a 3B decoder: ~24 GB of memory traffic a step); the copy costs one cast per call and the
        memory of one bf16 model. Only parameters are cast: buffers such as RoPE's inv_freq keep float32."""
        if self._copy_of is not model:
            self.reset()
            copy = deepcopy(base_model(model))
            copy.requires_grad_(False)
            for param in copy.parameters():
                if param.is_floating_point():
                    param.data = param.data.to(torch.bfloat16)
            copy.autocast_bf16 = False
            self._copy, self._copy_of = copy, model
            self._copy_pairs = [(dst, src) for dst, src in zip(copy.parameters(), base_model(model).parameters())
                                if src.requires_grad]
        if self._copy_pairs:
            torch._foreach_copy_([d for d, _ in self._copy_pairs], [s.detach() for _, s in self._copy_pairs])
        return self._copy

    # ---- the model's parts -------------------------------------------------------------------
    @staticmethod
    def _parts(model):
        base = base_model(model)
        lm = base.model.language_model
        return base, lm, base.lm_head

    @staticmethod
    def _autocast(model, device):
        """The bf16 autocast the training engine put on this model's forward (train.engine.autocast_forward),
        now around our own calls. Autocast's weight-cast cache must be off under CUDA graph capture."""
        if not (getattr(model, "autocast_bf16", False) or getattr(base_model(model), "autocast_bf16", False)):
            return nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)

    def _shape(self, model, batch: int, length: int, device, dtype) -> _Shape:
        if self._owner is not model:  # another model: its graphs read other weights
            self._forget_shapes()
            self._owner = model
        key = (batch, length, str(device), dtype)
        if key not in self._shapes:
            text = model.config.text_config
            head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            kv = _StaticKV(text.num_hidden_layers, batch, text.num_key_value_heads, length, head_dim, dtype, device)
            self._shapes[key] = _Shape(kv, torch.zeros(batch, length, dtype=torch.bool, device=device),
                                       torch.zeros(batch, dtype=torch.long, device=device),
                                       torch.zeros(batch, dtype=torch.long, device=device))
        return self._shapes[key]

    # ---- the forward passes ------------------------------------------------------------------
    @staticmethod
    def _layers(lm, hidden, bias, positions, kv):
        """The model's own decoder layers over `hidden`, with our cache; then the final norm."""
        cos_sin = lm.rotary_emb(hidden, positions)
        cache_kw = cache_keyword(type(lm.layers[0]))
        for layer in lm.layers[: lm.config.num_hidden_layers]:
            hidden = layer(hidden, attention_mask=bias, position_ids=positions, position_embeddings=cos_sin,
                           use_cache=True, **{cache_kw: kv})
        return lm.norm(hidden)

    @staticmethod
    def _additive(allowed, dtype):
        """Boolean "may attend" -> the additive mask transformers' attention functions take."""
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed,
                                                                                          torch.finfo(dtype).min)

    def _prefill(self, model, batch, shape: _Shape, compute_dtype) -> torch.Tensor:
        """Audio + prompt of the real rows into slots [0, S) of rows [0, B); the last column's logits."""
        base, lm, head = self._parts(model)
        ids_B_S, attn_B_S = batch["input_ids"], batch["attention_mask"].bool()
        rows, width = ids_B_S.shape
        embeds = base.get_input_embeddings()(ids_B_S)
        feats = batch["input_features"].to(base.model.audio_tower.conv1.weight.dtype)  # a bf16 copy's, too
        audio = base.model.get_audio_features(feats, batch["input_features_mask"]).pooler_output
        where = base.model.get_placeholder_mask(ids_B_S, inputs_embeds=embeds, audio_features=audio)
        embeds = embeds.masked_scatter(where, audio.to(embeds.dtype))
        i = torch.arange(width, device=ids_B_S.device)
        # Causal, real keys only; a padding query sees itself (a finite row, never read by a real one).
        allowed = (i[None, :] <= i[:, None])[None] & (attn_B_S[:, None, :] | torch.eye(width, dtype=torch.bool,
                                                                                        device=i.device)[None])
        shape.kv.prefill_rows = rows
        try:
            hidden = self._layers(lm, embeds, self._additive(allowed[:, None], compute_dtype),
                                  left_padded_positions(attn_B_S.long()), shape.kv)
        finally:
            shape.kv.prefill_rows = None
        return head(hidden[:, -1]).float()

    def _step(self, model, shape: _Shape, compute_dtype) -> torch.Tensor:
        """One token for every row of the shape: reads ids/pos/slot/valid, writes K/V at the slot."""
        _, lm, head = self._parts(model)
        length = shape.valid_B_L.shape[1]
        seen_L = torch.arange(length, device=shape.ids_B.device) <= shape.kv.slot_1
        allowed = (shape.valid_B_L & seen_L[None, :])[:, None, None, :]
        hidden = self._layers(lm, lm.embed_tokens(shape.ids_B[:, None]), self._additive(allowed, compute_dtype),
                              shape.pos_B[:, None], shape.kv)
        return head(hidden[:, -1]).float()

    def _run_step(self, model, shape: _Shape, compute_dtype, ctx_factory) -> torch.Tensor:
        device = shape.ids_B.device
        step = self._step
        if self.compile:
            if self._compiled is None:
                self._compiled = torch.compile(self._step, dynamic=False)
            step = self._compiled
        if not (self.cuda_graphs and device.type == "cuda"):
            with ctx_factory():
                return step(model, shape, compute_dtype)
        if shape.graph is None:
            self._capture(model, shape, compute_dtype, ctx_factory, step)
        shape.graph.replay()
        return shape.logits_B_V

    def _capture(self, model, shape: _Shape, compute_dtype, ctx_factory, step) -> None:
        """Record the step once for this shape (after warm-up on a side stream, as CUDA graphs need).
        The warm-up writes K/V at the current slot, which the real step then rewrites."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), ctx_factory():
            for _ in range(2):
                step(model, shape, compute_dtype)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Each graph its own memory pool: graphs of several shapes replay in any order (compaction), which
        # a shared pool does not allow. A step's temporaries are small (B x vocabulary logits at most).
        with torch.cuda.graph(graph), ctx_factory():
            shape.logits_B_V = step(model, shape, compute_dtype)
        shape.graph = graph
        self.stats["captures"] += 1

    # ---- the loop ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, model, batch: dict[str, torch.Tensor], allowed_V: torch.Tensor, eos_token_ids: list[int],
                 pad_token_id: int, max_new_tokens: int = 256, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, generator: torch.Generator | None = None, return_topk: int | None = None,
                 all_done=None, sample_keys_B: torch.Tensor | None = None) -> Generated:
        """The eager reference's contract (train.models.generation.generate), same tokens and log-probs."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if do_sample and temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        rows, width = batch["input_ids"].shape
        if sample_keys_B is not None and sample_keys_B.shape != (rows,):
            raise ValueError(f"sample_keys_B needs one key per row: shape {tuple(sample_keys_B.shape)} for {rows} rows")
        if has_sharded_parameters(model):
            raise ValueError("the static decode engine needs whole weights on every rank; this model's parameters "
                             "are sharded (ZeRO-3 or FSDP): decode with the eager engine (decode.engine=eager)")
        device = batch["input_ids"].device
        if (self.bf16_copy and isinstance(self._autocast(model, device), torch.autocast)
                and any(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())):
            model = self._bfloat16_copy(model)  # decoded in plain bf16, no autocast
        base, _, _ = self._parts(model)
        param_dtype = next(base.parameters()).dtype
        autocast = self._autocast(model, device)
        compute_dtype = torch.bfloat16 if isinstance(autocast, torch.autocast) else param_dtype

        def ctx():
            return self._autocast(model, device)

        length = next_bucket(width + max_new_tokens, self.length_bucket)
        bucket = batch_bucket(rows)
        shape = self._shape(model, bucket, length, device, compute_dtype)
        with ctx():
            logits_B_V = self._prefill(model, batch, shape, compute_dtype)
        attn_B_S = batch["attention_mask"].bool()
        shape.valid_B_L.fill_(False)
        shape.valid_B_L[:rows, :width] = attn_B_S
        shape.valid_B_L[:rows, width:] = True
        shape.pos_B.zero_()
        shape.pos_B[:rows] = left_padded_positions(attn_B_S.long())[:, -1] + 1
        shape.kv.slot_1.fill_(width)

        # Per-slot state, padded to the bucket: padding slots are finished and write to row `rows` (dropped).
        row_of = torch.full((bucket,), rows, dtype=torch.long, device=device)
        row_of[:rows] = torch.arange(rows, device=device)
        finished = torch.ones(bucket, dtype=torch.bool, device=device)
        finished[:rows] = False
        keys = None
        if sample_keys_B is not None:
            keys = torch.zeros(bucket, dtype=torch.long, device=device)
            keys[:rows] = sample_keys_B.to(device)
        logits = torch.zeros(bucket, logits_B_V.shape[-1], dtype=torch.float32, device=device)
        logits[:rows] = logits_B_V
        filter_V = torch.zeros(allowed_V.shape[-1], device=device).masked_fill(~allowed_V.to(device), float("-inf"))
        eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=device)
        warp = sampling_warp(temperature, top_p)
        # A generator draws for the whole batch: compacting would change which draw a row gets.
        compact = self.compact and not (do_sample and keys is None)

        tokens = torch.full((rows + 1, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
        logprobs = torch.zeros(rows + 1, max_new_tokens, dtype=torch.float32, device=device)
        masks = torch.zeros(rows + 1, max_new_tokens, dtype=torch.bool, device=device)
        topk = None
        if return_topk:
            k = min(return_topk, logits.shape[-1])
            topk = torch.zeros(rows + 1, max_new_tokens, k, dtype=torch.long, device=device)
        steps = 0
        for step in range(max_new_tokens):
            filtered = logits + filter_V
            if topk is not None:
                topk[row_of, step] = filtered.topk(topk.shape[-1], dim=-1).indices
            if do_sample:
                scores = warp(filtered)
                if keys is not None:
                    chosen = keyed_sample(scores, keys, step)
                else:  # the real rows only, in order (no compaction here), as the reference draws them
                    drawn = torch.multinomial(torch.softmax(scores[:rows], dim=-1), 1, generator=generator)
                    chosen = torch.cat([drawn.squeeze(-1), drawn.new_zeros(scores.shape[0] - rows)])
            else:
                chosen = filtered.argmax(-1)
            live = ~finished
            chosen = torch.where(live, chosen, torch.full_like(chosen, pad_token_id))
            logp = filtered.gather(-1, chosen[:, None]).squeeze(-1) - torch.logsumexp(filtered, dim=-1)
            tokens[row_of, step] = chosen
            logprobs[row_of, step] = torch.where(live, logp, 0.0)
            masks[row_of, step] = live
            finished = finished | torch.isin(chosen, eos)
            steps = step + 1
            if step == max_new_tokens - 1:
                break
            if steps % self.check_every == 0:
                self.stats["host_checks"] += 1
                live_count = int((~finished).sum())
                done = live_count == 0
                if all_done is not None:
                    done = all_done(done)
                if done:
                    break
                if compact and 0 < live_count and batch_bucket(live_count) < shape.ids_B.shape[0]:
                    shape, row_of, finished, keys, chosen = self._compacted(
                        model, shape, finished, row_of, keys, chosen, rows, length, device, compute_dtype)
            shape.ids_B.copy_(chosen)
            logits = self._run_step(model, shape, compute_dtype, ctx)
            shape.pos_B.add_(1)
            shape.kv.slot_1.add_(1)
            self.stats["steps"] += 1
        # The reference stops once every row has finished: keep as many columns as it would.
        kept = max(int(masks[:rows].sum(-1).max()) if rows else 1, 1) if all_done is None else steps
        return Generated(tokens[:rows, :kept], logprobs[:rows, :kept], masks[:rows, :kept],
                         topk[:rows, :kept] if topk is not None else None)

    def _compacted(self, model, shape: _Shape, finished, row_of, keys, chosen, rows, length, device, compute_dtype):
        """The live rows moved into the smallest bucket that holds them (K/V, mask, positions, slot)."""
        live = (~finished).nonzero().squeeze(-1)
        bucket = batch_bucket(live.numel())
        take = torch.cat([live, live[:1].expand(bucket - live.numel())])  # padding slots copy a live row...
        small = self._shape(model, bucket, length, device, compute_dtype)
        for src, dst in zip(shape.kv.keys + shape.kv.values, small.kv.keys + small.kv.values):
            torch.index_select(src, 0, take, out=dst)
        torch.index_select(shape.valid_B_L, 0, take, out=small.valid_B_L)
        torch.index_select(shape.pos_B, 0, take, out=small.pos_B)
        small.kv.slot_1.copy_(shape.kv.slot_1)
        padding = torch.arange(bucket, device=device) >= live.numel()
        new_row_of = row_of[take].masked_fill(padding, rows)  # ...but are finished and write to the dropped row
        new_finished = padding.clone()
        new_keys = keys[take] if keys is not None else None
        self.stats["compactions"] += 1
        return small, new_row_of, new_finished, new_keys, chosen[take]
