"""Reconstruction: cut the decoder layer by layer and re-fit what was cut, in closed form, where OverFill decodes.

The decoder only ever computes the tokens after the prompt, attending to the full model's KV for the prompt
(docs/architecture.md, "The two-stage step"). Calibration therefore runs in that setting: each sample is a prompt
(positions the full model computes) followed by the tokens the decoder computes, and only the latter enter a fit.

Both models advance together, one layer at a time, over every calibration batch:

    full stream h  [B, T, D]   the full model's residual stream (all positions: its K/V is the prompt KV)
    decoder stream h' [B, T, D']  the decoder's, as the decoder computes it after the layers already fitted

For layer l:
    1) the full layer runs on h; its MLP channels are ranked by the energy they add to the layer's output,
       E[a_j^2] * ||W_down[:, j]||^2 over decoded tokens, and the top I' are kept (in their original order);
    2) `none`: the decoder's layer is the plain slice. `bias` (FLAP): what the cut inputs of down_proj (and, when the
       residual width is cut, of every reader of the residual stream) contributed on average becomes a bias.
       `lstsq`: every linear layer of the decoder's layer is re-fitted by ridge regression on the decoder's own
       inputs, the stream it really sees after the earlier layers' errors:
         q/k/v    -> the full model's q/k/v projections (so the decoder's own KV stays close to the full model's)
         o_proj   -> h_mid - h'          (the full model's residual after attention, minus the decoder's input)
         gate/up  -> the full model's gate/up pre-activations of the kept channels
         down     -> h_next - h'_mid     (the full model's residual after the layer, minus the decoder's mid stream)
       The writers' targets are residuals, so each layer also pulls the decoder's stream back towards the full
       model's, correcting what earlier layers left;
    3) the decoder stream advances through the fitted layer. Prompt positions take the full model's K/V.

Ridge: lambda * mean(diag(X^T X)) is added to X^T X, so `ridge` is scale-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from overfill.calibration import CalibrationSample
from overfill.pruning import KeptChannels, prune_model

RECONSTRUCT_METHODS = ("none", "bias", "lstsq")
READERS = ("q_proj", "k_proj", "v_proj")
MLP_READERS = ("gate_proj", "up_proj")


@dataclass(frozen=True)
class CalibrationBatch:
    input_ids: torch.Tensor  # [B, T] right padded
    valid: torch.Tensor      # [B, T] bool: real tokens
    decoded: torch.Tensor    # [B, T] bool: the tokens the decoder computes (the rest is prompt)


def calibration_batches(samples: list[CalibrationSample], batch_size: int, device) -> list[CalibrationBatch]:
    """Samples of similar length batched together (padding costs compute and, masked out, adds nothing)."""
    ordered = sorted(samples, key=lambda s: len(s.token_ids))
    batches = []
    for start in range(0, len(ordered), batch_size):
        group = ordered[start:start + batch_size]
        width = max(len(s.token_ids) for s in group)
        input_ids = torch.zeros(len(group), width, dtype=torch.long)
        valid = torch.zeros(len(group), width, dtype=torch.bool)
        decoded = torch.zeros(len(group), width, dtype=torch.bool)
        for row, sample in enumerate(group):
            input_ids[row, :len(sample.token_ids)] = torch.tensor(sample.token_ids)
            valid[row, :len(sample.token_ids)] = True
            decoded[row, sample.num_prompt_tokens:len(sample.token_ids)] = True
        batches.append(CalibrationBatch(input_ids.to(device), valid.to(device), decoded.to(device)))
    return batches


@dataclass
class ReconstructionReport:
    method: str
    ridge: float
    num_tokens: int                  # calibration tokens the full model read
    num_decoded_tokens: int          # of which the decoder computed (what every fit uses)
    layer_error: list[float]         # per layer: ||h'_next - h_next[kept]||^2 / ||h_next[kept] - mean||^2 on decoded tokens

    def to_dict(self) -> dict:
        return {"method": self.method, "ridge": self.ridge, "num_tokens": self.num_tokens,
                "num_decoded_tokens": self.num_decoded_tokens,
                "layer_error": [round(e, 4) for e in self.layer_error]}


class _RidgeFit:
    """Accumulates X^T X and X^T Y over batches (float64) and solves (X^T X + ridge) W^T = X^T Y."""

    def __init__(self, num_inputs: int, num_outputs: int, device):
        self.xtx = torch.zeros(num_inputs, num_inputs, dtype=torch.float64, device=device)
        self.xty = torch.zeros(num_inputs, num_outputs, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x: [N, num_inputs], y: [N, num_outputs]."""
        x, y = x.float(), y.float()
        self.xtx += (x.T @ x).double()
        self.xty += (x.T @ y).double()

    def solve(self, ridge: float) -> torch.Tensor:
        """W: [num_outputs, num_inputs], as a Linear's weight."""
        scale = ridge * self.xtx.diagonal().mean().clamp(min=1e-12)
        eye = torch.eye(self.xtx.shape[0], dtype=self.xtx.dtype, device=self.xtx.device)
        return torch.linalg.solve(self.xtx + scale * eye, self.xty).T


def attention_mask(batch: CalibrationBatch, sliding_window: int | None) -> torch.Tensor:
    """Boolean [B, 1, T, T] (True = attend): causal, real keys only, within the sliding window if any."""
    width = batch.input_ids.shape[1]
    positions = torch.arange(width, device=batch.input_ids.device)
    mask = positions[None, :] <= positions[:, None]  # [T(query), T(key)]
    if sliding_window is not None:
        mask = mask & (positions[None, :] > positions[:, None] - sliding_window)
    return mask[None, None] & batch.valid[:, None, None, :]


def attend(attn, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
           prompt_kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
    """The attention of an HF attention module before o_proj, on its normed input x [B, T, D].

    `prompt_kv` (k, v, decoded): keys and values [B, Hkv, T, hd] to use wherever `decoded` [B, T] is False, i.e. the
    full model's KV at prompt positions. Returns (output [B, T, Hq*hd], k, v) with k, v post-RoPE [B, Hkv, T, hd]."""
    batch, width, _ = x.shape
    shape = (batch, width, -1, attn.head_dim)
    q, k, v = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape), attn.v_proj(x).view(shape)
    if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm per head before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, hd]
    q, k = apply_rotary_pos_emb(q, k, *rope)
    if prompt_kv is not None:
        full_k, full_v, decoded = prompt_kv
        at_prompt = ~decoded[:, None, :, None]  # [B, 1, T, 1]
        k, v = torch.where(at_prompt, full_k, k), torch.where(at_prompt, full_v, v)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling,
                                         enable_gqa=q.shape[1] != k.shape[1])  # [B, Hq, T, hd]
    return out.transpose(1, 2).reshape(batch, width, -1), k, v


def mlp_energy(activations: torch.Tensor, down_weight: torch.Tensor) -> torch.Tensor:
    """Per MLP channel, the energy it adds to the layer's output: sum over tokens of a_j^2 times ||W_down[:, j]||^2.
    activations: [N, I]; down_weight: [D, I] -> [I]."""
    return activations.float().pow(2).sum(0) * down_weight.float().pow(2).sum(0)


@torch.no_grad()
def prune_and_reconstruct(full: torch.nn.Module, kept_hidden: list[int], intermediate_size: int,
                          samples: list[CalibrationSample], method: str = "lstsq", ridge: float = 1e-2,
                          batch_size: int = 8, progress: bool = True) -> tuple[torch.nn.Module, KeptChannels,
                                                                                ReconstructionReport]:
    """Cut `full` to the residual channels `kept_hidden` and `intermediate_size` MLP channels per layer (chosen here,
    layer by layer), reconstructing as `method` says. Returns (decoder, kept channels, report). `full` is unchanged."""
    if method not in RECONSTRUCT_METHODS:
        raise ValueError(f"reconstruct must be one of {', '.join(RECONSTRUCT_METHODS)}, got {method!r}")
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    config = full.config
    if len(kept_hidden) == config.hidden_size and intermediate_size == config.intermediate_size:
        method = "none"  # nothing is cut: the slice is the full model itself (the identity invariant)
    if method == "bias" and not hasattr(config, "mlp_bias"):
        raise ValueError(f"--reconstruct bias stores compensation as MLP and attention biases, which "
                         f"{config.model_type} checkpoints cannot hold; use lstsq (or none)")
    device = next(full.parameters()).device
    batches = calibration_batches(samples, batch_size, device)
    masks = [attention_mask(b, getattr(config, "sliding_window", None)) for b in batches]
    hidden = torch.tensor(kept_hidden, device=device)
    cut_hidden = torch.tensor(sorted(set(range(config.hidden_size)) - set(kept_hidden)), dtype=torch.long,
                              device=device)

    # The decoder starts as a slice with placeholder MLP channels; each layer's are chosen below.
    placeholder = [list(range(intermediate_size))] * config.num_hidden_layers
    decoder = prune_model(full, KeptChannels(hidden=kept_hidden, mlp=placeholder))
    if method == "bias":
        decoder = _with_biases(decoder)
    kept_mlp: list[list[int]] = []

    full_stream = [full.model.embed_tokens(b.input_ids) for b in batches]  # each [B, T, D]
    decoder_stream = [h[..., hidden] for h in full_stream]                    # each [B, T, D']
    ropes = [full.model.rotary_emb(h, _positions(b)) for h, b in zip(full_stream, batches)]
    layer_error = []
    layers = zip(full.model.layers, decoder.model.layers)
    for full_layer, decoder_layer in tqdm(layers, total=config.num_hidden_layers, desc=f"reconstruct ({method})",
                                          unit="layer", disable=not progress):
        # 1) The full layer on every batch; what the fits need, at decoded positions only.
        targets = [_full_layer(full_layer, h, rope, mask, b.decoded)
                   for h, rope, mask, b in zip(full_stream, ropes, masks, batches)]
        energy = sum(mlp_energy(t.mlp_activations, full_layer.mlp.down_proj.weight) for t in targets)
        channels = energy.topk(intermediate_size).indices.sort().values
        kept_mlp.append(channels.tolist())
        _slice_mlp(full_layer.mlp, decoder_layer.mlp, hidden, channels)

        # 2) Reconstruct the decoder's layer.
        if method == "lstsq":
            decoder_stream = _fit_layer(decoder_layer, decoder_stream, targets, ropes, masks, batches, hidden,
                                        channels, ridge)
        else:
            if method == "bias":
                _compensate_with_biases(full_layer, decoder_layer, targets, channels, cut_hidden)
            decoder_stream = [_decoder_layer(decoder_layer, h, rope, mask, b.decoded, t)
                              for h, rope, mask, b, t in zip(decoder_stream, ropes, masks, batches, targets)]
        layer_error.append(_relative_error(decoder_stream, targets, batches, hidden))
        full_stream = [t.output for t in targets]

    report = ReconstructionReport(
        method=method, ridge=ridge, num_tokens=int(sum(b.valid.sum() for b in batches)),
        num_decoded_tokens=int(sum(b.decoded.sum() for b in batches)), layer_error=layer_error)
    return decoder.eval(), KeptChannels(hidden=kept_hidden, mlp=kept_mlp), report


@dataclass
class _FullLayerOutputs:
    """What one full layer computed on one batch. Targets are at decoded positions only, flattened to [N, ...]."""

    output: torch.Tensor           # [B, T, D]   the layer's output (the next layer's input)
    k: torch.Tensor                # [B, Hkv, T, hd] post-RoPE: the prompt KV the decoder attends to
    v: torch.Tensor                # [B, Hkv, T, hd]
    projections: dict[str, torch.Tensor]  # q/k/v/gate/up projection outputs, [N, out]
    mid: torch.Tensor              # [N, D]  residual after attention
    mlp_activations: torch.Tensor  # [N, I]  act(gate) * up, the input of down_proj
    mean_normed: tuple[torch.Tensor, torch.Tensor]  # [D] mean input of the attention and MLP readers


def _positions(batch: CalibrationBatch) -> torch.Tensor:
    return torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device)[None].expand_as(batch.input_ids)


def _full_layer(layer, h: torch.Tensor, rope, mask: torch.Tensor, decoded: torch.Tensor) -> _FullLayerOutputs:
    attn, mlp = layer.self_attn, layer.mlp
    x = layer.input_layernorm(h)
    out, k, v = attend(attn, x, rope, mask)
    mid = h + attn.o_proj(out)
    x2 = layer.post_attention_layernorm(mid)
    gate, up = mlp.gate_proj(x2), mlp.up_proj(x2)
    activations = mlp.act_fn(gate) * up
    output = mid + mlp.down_proj(activations)
    x_decoded = x[decoded]  # [N, D]
    projections = {name: getattr(attn, name)(x_decoded) for name in READERS}
    projections.update(gate_proj=gate[decoded], up_proj=up[decoded])
    return _FullLayerOutputs(output=output, k=k, v=v, projections=projections, mid=mid[decoded],
                             mlp_activations=activations[decoded],
                             mean_normed=(x_decoded.mean(0), x2[decoded].mean(0)))


def _slice_mlp(full_mlp, decoder_mlp, hidden: torch.Tensor, channels: torch.Tensor) -> None:
    """The decoder's MLP as the full one's slice (pruning.py's table) for these MLP channels."""
    for name in MLP_READERS:
        getattr(decoder_mlp, name).weight.copy_(getattr(full_mlp, name).weight[channels][:, hidden])
    decoder_mlp.down_proj.weight.copy_(full_mlp.down_proj.weight[hidden][:, channels])
    for name in (*MLP_READERS, "down_proj"):
        bias = getattr(full_mlp, name).bias
        if bias is not None:
            getattr(decoder_mlp, name).bias.copy_(bias[hidden] if name == "down_proj" else bias[channels])


def _decoder_layer(layer, h: torch.Tensor, rope, mask: torch.Tensor, decoded: torch.Tensor,
                   full: _FullLayerOutputs) -> torch.Tensor:
    """The decoder's layer as it runs at inference: decoded positions attend to the full model's prompt KV."""
    out, _, _ = attend(layer.self_attn, layer.input_layernorm(h), rope, mask, (full.k, full.v, decoded))
    mid = h + layer.self_attn.o_proj(out)
    return mid + layer.mlp(layer.post_attention_layernorm(mid))


def _fit_layer(layer, stream, targets, ropes, masks, batches, hidden, channels, ridge) -> list[torch.Tensor]:
    """Re-fit every linear of the decoder's layer, in the order the layer computes them; returns the next stream."""
    attn, mlp = layer.self_attn, layer.mlp

    # a) q/k/v on the decoder's normed input (one fit: they read the same inputs).
    normed = [layer.input_layernorm(h) for h in stream]
    _fit_linears([getattr(attn, name) for name in READERS],
                 [(x[b.decoded], [t.projections[name] for name in READERS]) for x, b, t in
                  zip(normed, batches, targets)], ridge)
    # b) o_proj: towards the full model's residual after attention.
    outs = [attend(attn, x, rope, mask, (t.k, t.v, b.decoded))[0]
            for x, rope, mask, b, t in zip(normed, ropes, masks, batches, targets)]
    _fit_linear(attn.o_proj, [(o[b.decoded], t.mid[:, hidden] - h[b.decoded]) for o, h, b, t in
                              zip(outs, stream, batches, targets)], ridge)
    mids = [h + attn.o_proj(o) for h, o in zip(stream, outs)]
    # c) gate/up of the kept channels on the decoder's normed mid stream.
    normed = [layer.post_attention_layernorm(m) for m in mids]
    _fit_linears([getattr(mlp, name) for name in MLP_READERS],
                 [(x[b.decoded], [t.projections[name][:, channels] for name in MLP_READERS]) for x, b, t in
                  zip(normed, batches, targets)], ridge)
    # d) down_proj: towards the full model's residual after the layer.
    activations = [mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x) for x in normed]
    _fit_linear(mlp.down_proj, [(a[b.decoded], t.output[b.decoded][:, hidden] - m[b.decoded]) for a, m, b, t in
                                zip(activations, mids, batches, targets)], ridge)
    return [m + mlp.down_proj(a) for m, a in zip(mids, activations)]


def _fit_linear(linear: torch.nn.Linear, pairs: list[tuple[torch.Tensor, torch.Tensor]], ridge: float) -> None:
    """Ridge fit of `linear` (weight, and bias if it has one) on (input [N, in], target [N, out]) pairs."""
    _fit_linears([linear], [(x, [y]) for x, y in pairs], ridge)


def _fit_linears(linears: list[torch.nn.Linear], pairs: list[tuple[torch.Tensor, list[torch.Tensor]]],
                 ridge: float) -> None:
    """Ridge fits of linears that read the same input, sharing its X^T X and one solve: (input [N, in], one target
    [N, out_i] per linear) pairs. Each result is what fitting it alone gives (the columns of a solve are
    independent)."""
    with_bias = linears[0].bias is not None
    widths = [linear.out_features for linear in linears]
    fit = _RidgeFit(linears[0].in_features + with_bias, sum(widths), linears[0].weight.device)
    for x, ys in pairs:
        if with_bias:
            x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        fit.add(x, torch.cat(ys, dim=1))
    for linear, weight in zip(linears, fit.solve(ridge).split(widths)):
        linear.weight.copy_(weight[:, :linear.in_features])
        if with_bias:
            linear.bias.copy_(weight[:, -1])


def _with_biases(decoder: torch.nn.Module) -> torch.nn.Module:
    """The decoder with zero biases on every attention and MLP linear (Llama's attention_bias / mlp_bias), to hold
    FLAP's compensation; still a plain checkpoint of the same class."""
    config = decoder.config
    config.attention_bias = config.mlp_bias = True
    with torch.device("meta"):
        biased = type(decoder)(config)
    state = decoder.state_dict()
    for name, parameter in biased.named_parameters():
        if name not in state and name.endswith(".bias"):
            state[name] = torch.zeros(parameter.shape, dtype=decoder.dtype, device=decoder.device)
    biased.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        biased.lm_head.weight = biased.model.embed_tokens.weight
    biased.model.rotary_emb = decoder.model.rotary_emb
    biased.generation_config = decoder.generation_config
    return biased


def _compensate_with_biases(full_layer, decoder_layer, full: list[_FullLayerOutputs], channels: torch.Tensor,
                            cut_hidden: torch.Tensor) -> None:
    """FLAP: a cut input's mean contribution becomes a bias. down_proj's cut MLP channels always; the readers' cut
    residual channels when the residual width is cut."""
    count = sum(t.mid.shape[0] for t in full)
    mean_activation = sum(t.mlp_activations.sum(0) for t in full) / count  # [I]
    cut = torch.ones_like(mean_activation, dtype=torch.bool)
    cut[channels] = False
    hidden = torch.ones(full_layer.mlp.down_proj.weight.shape[0], dtype=torch.bool, device=cut.device)
    hidden[cut_hidden] = False
    down = full_layer.mlp.down_proj.weight[hidden][:, cut]  # [D', I - I']
    decoder_layer.mlp.down_proj.bias += down @ mean_activation[cut]
    if len(cut_hidden) == 0:
        return
    weights = [t.mid.shape[0] for t in full]
    mean_attn_in = sum(w * t.mean_normed[0] for w, t in zip(weights, full)) / count  # [D]
    mean_mlp_in = sum(w * t.mean_normed[1] for w, t in zip(weights, full)) / count
    for name in READERS:
        weight = getattr(full_layer.self_attn, name).weight[:, cut_hidden]
        getattr(decoder_layer.self_attn, name).bias += weight @ mean_attn_in[cut_hidden]
    for name in MLP_READERS:
        weight = getattr(full_layer.mlp, name).weight[channels][:, cut_hidden]
        getattr(decoder_layer.mlp, name).bias += weight @ mean_mlp_in[cut_hidden]


def _relative_error(stream, targets, batches, hidden) -> float:
    """How far the decoder's stream is from the full model's after this layer, on decoded tokens (kept channels)."""
    error = total = 0.0
    for h, t, b in zip(stream, targets, batches):
        reference = t.output[b.decoded][:, hidden].float()
        error += float((h[b.decoded].float() - reference).pow(2).sum())
        total += float((reference - reference.mean(0)).pow(2).sum())
    return error / max(total, 1e-12)
