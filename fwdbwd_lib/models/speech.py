"""Speech models on padded feature sequences with a mask.

Every model is called as ``model(features=(batch, time, num_features), mask=(batch, time))``
(the batches of ``fwdbwd_lib.data.speech``) and returns

- ``(batch, time, num_classes)`` logits when ``frame_level=True`` (TIMIT phones), or
- ``(batch, num_classes)`` logits when ``frame_level=False`` (digits, words): the frame
  representations are averaged over the valid frames of each utterance before the classifier.

Padded frames never change the outputs of valid frames, so an utterance gets the same logits
in any batch. Each layer here has forward-mode AD formulas in torch 2.11 on the CPU. Where the
obvious PyTorch module lacks them, a comment at the spot names the formulation used instead.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from fwdbwd_lib.registry import register_model

RNN_CELLS = ("gru", "lstm")
RNN_IMPLEMENTATIONS = ("native", "plain")


def masked_mean(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average ``(batch, time, channels)`` over the valid frames of ``mask (batch, time)``."""
    weights = mask.to(frames.dtype).unsqueeze(-1)  # (batch, time, 1)
    return (frames * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _check_inputs(features: torch.Tensor, mask: torch.Tensor | None, num_features: int):
    if features.dim() != 3 or features.shape[-1] != num_features:
        raise ValueError(
            f"expected features of shape (batch, time, {num_features}), got "
            f"{tuple(features.shape)}; the model's num_features must match the dataset's"
        )
    if mask is None:
        return torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    return mask.bool()


class ClassifierHead(nn.Module):
    """Per-frame logits, or logits of the masked mean over frames."""

    def __init__(self, channels: int, num_classes: int, frame_level: bool):
        super().__init__()
        self.frame_level = frame_level
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.frame_level:
            return self.linear(frames)  # (batch, time, classes)
        return self.linear(masked_mean(frames, mask))  # (batch, classes)


# ---------------------------------------------------------------------------------------------
# Temporal convolutional network
# ---------------------------------------------------------------------------------------------

class SpeechCNN(nn.Module):
    """A 1-D convolutional network over time with the feature vector as input channels.

    Layer i is a ``kernel_size`` convolution with dilation ``2**i`` (so the receptive field
    grows exponentially, as in TDNNs and WaveNet), then LayerNorm over channels, ReLU and
    dropout. LayerNorm normalises each frame on its own, so padding does not leak into the
    statistics as it would with BatchNorm. Padded frames are set to zero after every layer,
    which is what each utterance would see alone (the convolution's own zero padding).
    """

    def __init__(
        self,
        num_classes: int,
        num_features: int,
        frame_level: bool = False,
        channels: int = 128,
        num_layers: int = 4,
        kernel_size: int = 5,
        dropout: float = 0.1,
    ):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"model.kernel_size must be odd (centred frames), got {kernel_size}")
        self.num_features = num_features
        self.convolutions = nn.ModuleList()
        self.norms = nn.ModuleList()
        for layer in range(num_layers):
            dilation = 2**layer
            self.convolutions.append(nn.Conv1d(
                num_features if layer == 0 else channels, channels, kernel_size,
                dilation=dilation, padding=dilation * (kernel_size - 1) // 2,
            ))
            self.norms.append(nn.LayerNorm(channels))
        self.dropout = nn.Dropout(dropout)
        self.head = ClassifierHead(channels, num_classes, frame_level)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _check_inputs(features, mask, self.num_features)
        keep = mask.unsqueeze(1).to(features.dtype)  # (batch, 1, time)
        x = features.transpose(1, 2) * keep  # (batch, features, time)
        for convolution, norm in zip(self.convolutions, self.norms):
            x = convolution(x)  # (batch, channels, time)
            x = norm(x.transpose(1, 2)).transpose(1, 2)
            x = self.dropout(F.relu(x)) * keep
        return self.head(x.transpose(1, 2), mask)


# ---------------------------------------------------------------------------------------------
# Recurrent network
# ---------------------------------------------------------------------------------------------

def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x (batch, time, ...)`` within its length, leaving padding in place.

    Applied twice it is the identity. It lets a unidirectional RNN read each utterance backwards
    from its last valid frame, which is what a packed bidirectional RNN does.
    """
    time = x.shape[1]
    steps = torch.arange(time, device=x.device).unsqueeze(0)  # (1, time)
    lengths = lengths.unsqueeze(1)  # (batch, 1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (batch, time)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def _plain_gru(module: nn.GRU, x: torch.Tensor) -> torch.Tensor:
    """Run a one-layer ``nn.GRU``'s weights with elementwise ops, one time step at a time."""
    hidden = module.hidden_size
    inputs = F.linear(x, module.weight_ih_l0, module.bias_ih_l0)  # (batch, time, 3·hidden)
    h = x.new_zeros(x.shape[0], hidden)
    outputs = []
    for t in range(x.shape[1]):
        recurrent = F.linear(h, module.weight_hh_l0, module.bias_hh_l0)  # (batch, 3·hidden)
        input_r, input_z, input_n = inputs[:, t].chunk(3, dim=-1)
        hidden_r, hidden_z, hidden_n = recurrent.chunk(3, dim=-1)
        reset = torch.sigmoid(input_r + hidden_r)
        update = torch.sigmoid(input_z + hidden_z)
        candidate = torch.tanh(input_n + reset * hidden_n)
        h = (1 - update) * candidate + update * h
        outputs.append(h)
    return torch.stack(outputs, dim=1)  # (batch, time, hidden)


def _plain_lstm(module: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """Run a one-layer ``nn.LSTM``'s weights with elementwise ops, one time step at a time."""
    hidden = module.hidden_size
    inputs = F.linear(x, module.weight_ih_l0, module.bias_ih_l0)  # (batch, time, 4·hidden)
    h = x.new_zeros(x.shape[0], hidden)
    c = x.new_zeros(x.shape[0], hidden)
    outputs = []
    for t in range(x.shape[1]):
        gates = inputs[:, t] + F.linear(h, module.weight_hh_l0, module.bias_hh_l0)
        input_gate, forget_gate, cell_gate, output_gate = gates.chunk(4, dim=-1)
        c = torch.sigmoid(forget_gate) * c + torch.sigmoid(input_gate) * torch.tanh(cell_gate)
        h = torch.sigmoid(output_gate) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, dim=1)  # (batch, time, hidden)


@contextlib.contextmanager
def _onednn_disabled():
    """Disable oneDNN inside the block, leaving its other flags alone.

    ``torch.backends.mkldnn.flags(enabled=False)`` would also set TF32 flags and warn on every
    CPU without Intel GPU support.
    """
    previous = torch.backends.mkldnn.set_flags(_enabled=False, _fp32_precision=None)
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(_enabled=previous[0], _fp32_precision=None)


class SpeechRNN(nn.Module):
    """A stacked (bi)directional GRU or LSTM over padded sequences.

    Each layer and direction is a one-layer ``nn.GRU``/``nn.LSTM``. The backward direction reads
    every utterance from its last valid frame (``reverse_padded``), so the outputs equal those of
    a packed bidirectional RNN, without packing: packed sequences have no forward-mode AD.

    ``implementation="native"`` calls the PyTorch module. ``"plain"`` runs the same weights with
    matrix products and elementwise ops in a Python loop over time. It is slower, but every op
    has a forward-mode AD formula on every device, and the parameters and outputs are the same.
    """

    def __init__(
        self,
        num_classes: int,
        num_features: int,
        frame_level: bool = False,
        cell: str = "gru",
        hidden_size: int = 128,
        num_layers: int = 2,
        bidirectional: bool = True,
        dropout: float = 0.1,
        implementation: str = "native",
    ):
        super().__init__()
        if cell not in RNN_CELLS:
            raise ValueError(f"unknown model.cell {cell!r}: expected one of {', '.join(RNN_CELLS)}")
        if implementation not in RNN_IMPLEMENTATIONS:
            raise ValueError(f"unknown model.implementation {implementation!r}: expected one of "
                             f"{', '.join(RNN_IMPLEMENTATIONS)}")
        self.num_features = num_features
        self.cell = cell
        self.implementation = implementation
        self.directions = 2 if bidirectional else 1
        rnn_class = nn.GRU if cell == "gru" else nn.LSTM
        self.layers = nn.ModuleList()
        for layer in range(num_layers):
            width = num_features if layer == 0 else hidden_size * self.directions
            self.layers.append(nn.ModuleList(
                rnn_class(width, hidden_size, batch_first=True) for _ in range(self.directions)
            ))
        self.dropout = nn.Dropout(dropout)
        self.head = ClassifierHead(hidden_size * self.directions, num_classes, frame_level)

    def _run(self, rnn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.implementation == "plain":
            return _plain_gru(rnn, x) if self.cell == "gru" else _plain_lstm(rnn, x)
        if self.cell == "lstm" and x.device.type == "cpu":
            # NOTE: float32 nn.LSTM on the CPU runs through oneDNN (mkldnn_rnn_layer), which has
            # no forward-mode AD in torch 2.11. The non-oneDNN kernel computes the same values.
            context = _onednn_disabled()
        else:
            context = contextlib.nullcontext()
        with context:
            return rnn(x)[0]

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _check_inputs(features, mask, self.num_features)
        lengths = mask.sum(1)  # (batch,)
        keep = mask.unsqueeze(-1).to(features.dtype)  # (batch, time, 1)
        x = features
        for layer in self.layers:
            outputs = [self._run(layer[0], x)]
            if self.directions == 2:
                backward = self._run(layer[1], reverse_padded(x, lengths))
                outputs.append(reverse_padded(backward, lengths))
            x = self.dropout(torch.cat(outputs, dim=-1)) * keep  # (batch, time, directions·hidden)
        return self.head(x, mask)


# ---------------------------------------------------------------------------------------------
# Transformer encoder
# ---------------------------------------------------------------------------------------------

def sinusoidal_positions(length: int, channels: int, device=None, dtype=None) -> torch.Tensor:
    """Return the sine/cosine position encoding of Vaswani et al. (2017), ``(length, channels)``."""
    position = torch.arange(length, device=device, dtype=torch.float64).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, channels, 2, device=device, dtype=torch.float64)
                          * (-math.log(10000.0) / channels))
    encoding = torch.zeros(length, channels, device=device, dtype=torch.float64)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency[: channels // 2])
    return encoding.to(dtype or torch.get_default_dtype())


class SelfAttention(nn.Module):
    """Multi-head self-attention written with matrix products, masking padded keys.

    NOTE: written out instead of F.scaled_dot_product_attention or nn.MultiheadAttention: the
    default CPU SDPA kernel and the multi-head attention fast path have no forward-mode AD in
    torch 2.11, and attention dropout inside SDPA draws different random numbers per kernel.
    Written out, both gradient methods run the same ops and see the same dropout masks.
    """

    def __init__(self, channels: int, num_heads: int, dropout: float):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"model.d_model={channels} must be divisible by "
                             f"model.num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(channels, 3 * channels)
        self.output = nn.Linear(channels, channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, time, channels = x.shape
        head_size = channels // self.num_heads
        qkv = self.qkv(x).view(batch, time, 3, self.num_heads, head_size)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, time, head_size)
        scores = query @ key.transpose(-2, -1) / math.sqrt(head_size)  # (batch, heads, time, time)
        # A large finite negative, not -inf, so that no tangent becomes NaN.
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        weights = self.dropout(scores.softmax(dim=-1))
        attended = weights @ value  # (batch, heads, time, head_size)
        return self.output(attended.transpose(1, 2).reshape(batch, time, channels))


class EncoderBlock(nn.Module):
    """Pre-LayerNorm transformer block: attention and a ReLU feed-forward, each residual."""

    def __init__(self, channels: int, num_heads: int, ffn_size: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(channels)
        self.attention = SelfAttention(channels, num_heads, dropout)
        self.ffn_norm = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(
            nn.Linear(channels, ffn_size), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(ffn_size, channels),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), mask))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class SpeechTransformer(nn.Module):
    """A small transformer encoder: linear frame embedding, sinusoidal positions, pre-LN blocks."""

    def __init__(
        self,
        num_classes: int,
        num_features: int,
        frame_level: bool = False,
        d_model: int = 128,
        num_heads: int = 4,
        num_layers: int = 4,
        ffn_size: int = 256,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.num_features = num_features
        self.d_model = d_model
        self.embedding = nn.Linear(num_features, d_model)
        self.blocks = nn.ModuleList(
            EncoderBlock(d_model, num_heads, ffn_size, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.head = ClassifierHead(d_model, num_classes, frame_level)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _check_inputs(features, mask, self.num_features)
        positions = sinusoidal_positions(features.shape[1], self.d_model, features.device,
                                         features.dtype)
        x = self.dropout(self.embedding(features) + positions)  # (batch, time, d_model)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x), mask)


@register_model("speech_cnn")
def build_speech_cnn(num_classes: int, num_features: int, frame_level: bool = False,
                     **kwargs) -> nn.Module:
    return SpeechCNN(num_classes, num_features, frame_level, **kwargs)


@register_model("speech_rnn")
def build_speech_rnn(num_classes: int, num_features: int, frame_level: bool = False,
                     **kwargs) -> nn.Module:
    return SpeechRNN(num_classes, num_features, frame_level, **kwargs)


@register_model("speech_transformer")
def build_speech_transformer(num_classes: int, num_features: int, frame_level: bool = False,
                             **kwargs) -> nn.Module:
    return SpeechTransformer(num_classes, num_features, frame_level, **kwargs)


# ---------------------------------------------------------------------------------------------
# Forward-mode AD status
# ---------------------------------------------------------------------------------------------

# Small versions of each model and formulation, for checking forward-mode AD quickly.
FORWARD_AD_CHECKS = {
    "speech_cnn": (build_speech_cnn, {"channels": 8, "num_layers": 2, "kernel_size": 3}),
    "speech_rnn (GRU, native)": (build_speech_rnn, {"cell": "gru", "hidden_size": 6}),
    "speech_rnn (GRU, plain)": (build_speech_rnn,
                                {"cell": "gru", "hidden_size": 6, "implementation": "plain"}),
    "speech_rnn (LSTM, native)": (build_speech_rnn, {"cell": "lstm", "hidden_size": 6}),
    "speech_rnn (LSTM, plain)": (build_speech_rnn,
                                 {"cell": "lstm", "hidden_size": 6, "implementation": "plain"}),
    "speech_transformer": (build_speech_transformer,
                           {"d_model": 8, "num_heads": 2, "num_layers": 2, "ffn_size": 16}),
}


def forward_ad_status(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      seed: int = 0) -> list[dict]:
    """Compare the jvp with backprop's gradient·tangent for every model in ``FORWARD_AD_CHECKS``.

    Each model runs in train mode with dropout 0.3 on a random padded batch (3 utterances of
    9, 5 and 7 frames), once with utterance outputs and once with frame outputs, with the same
    RNG seed before both passes. Returns one dict per check: ``model``, ``outputs``, ``status``
    (``"ok"``, or the error of an operator without forward-mode AD), ``jvp``, ``grad_dot_tangent``
    and ``relative_error``.
    """
    from fwdbwd_lib.gradients import compare_with_backprop
    from fwdbwd_lib.losses import frame_cross_entropy

    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(3, 9, 5, generator=generator, dtype=dtype).to(device)
    mask = (torch.arange(9).unsqueeze(0) < torch.tensor([[9], [5], [7]])).to(device)
    inputs = {"features": features, "mask": mask}
    results = []
    for name, (builder, kwargs) in FORWARD_AD_CHECKS.items():
        for frame_level in (False, True):
            torch.manual_seed(seed)
            model = builder(num_classes=4, num_features=5, frame_level=frame_level, dropout=0.3,
                            **kwargs).to(device=device, dtype=dtype).train()
            if frame_level:
                targets = torch.randint(0, 4, (3, 9), generator=generator)
                targets[~mask.cpu()] = -100
            else:
                targets = torch.randint(0, 4, (3,), generator=generator)
            targets = targets.to(device)
            tangents = {n: torch.randn(p.shape, generator=generator, dtype=dtype).to(device)
                        for n, p in model.named_parameters()}
            row = compare_with_backprop(model, frame_cross_entropy, inputs, targets, tangents,
                                        seed + 1)
            results.append({"model": name,
                            "outputs": "frames" if frame_level else "utterance", **row})
    return results
