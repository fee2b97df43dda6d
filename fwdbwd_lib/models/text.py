"""Text classifiers: a RoBERTa-style transformer and a light 1-D CNN baseline.

Both take a padded batch as keyword arguments, ``model(input_ids=..., attention_mask=...)``, with
``attention_mask`` 1 on tokens and 0 on padding, and return class scores (the transformer returns
a Hugging Face ``SequenceClassifierOutput`` whose ``logits`` the gradient methods read).

Forward gradients need attention kernels with forward-mode AD. The eager implementation has
it, and ``sdpa`` has it on the math backend. ``fwdbwd_lib.gradients.forward_ad_compatible_kernels``
selects that backend for every forward-gradient pass, while backprop may use the fused kernels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fwdbwd_lib.registry import register_model

# Architecture presets for build_roberta(size=...). "base" is the roberta-base architecture
# (Liu et al. 2019, arXiv 1907.11692): 12 layers, hidden 768, 12 heads, feed-forward 3072.
ROBERTA_SIZES = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256),
    "small": dict(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512),
    "medium": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
}
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")


@register_model("roberta")
def build_roberta(
    num_classes: int = 2,
    vocab_size: int = 8000,
    max_length: int = 256,
    pad_token_id: int = 1,
    size: str = "small",
    hidden_size: int | None = None,
    num_layers: int | None = None,
    num_heads: int | None = None,
    intermediate_size: int | None = None,
    dropout: float = 0.1,
    attn_implementation: str = "sdpa",
    pretrained: str | None = None,
    tokenizer: str | None = None,
) -> nn.Module:
    """Build ``transformers.RobertaForSequenceClassification``.

    Without ``pretrained`` the weights are freshly initialised from a ``RobertaConfig`` of the
    preset ``size`` (see ``ROBERTA_SIZES``); ``hidden_size``, ``num_layers``, ``num_heads`` and
    ``intermediate_size`` override single preset values. Position embeddings cover
    ``max_length`` tokens plus RoBERTa's offset of ``pad_token_id + 1``.

    With ``pretrained`` (a checkpoint folder written by ``save_pretrained`` or a hub name such as
    ``roberta-base``) the encoder is loaded from it, with a new classification head of
    ``num_classes`` outputs. The architecture arguments are then ignored. The tokenizer's
    vocabulary must fit the checkpoint's embedding table, and ``max_length`` its position table.
    ``tokenizer`` (passed by the imdb loader) names the data's tokenizer. A checkpoint needs the
    tokenizer it was pretrained with, so ``bpe`` is rejected with one.

    NOTE: the tests load local ``save_pretrained`` folders only; a hub download of
    ``roberta-base`` has not been exercised.
    """
    from transformers import RobertaConfig, RobertaForSequenceClassification

    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"invalid model.attn_implementation {attn_implementation!r}: expected one of "
            f"{', '.join(ATTENTION_IMPLEMENTATIONS)} (both have forward-mode AD on the math kernel)"
        )
    if pretrained:
        if tokenizer == "bpe":
            raise ValueError(
                f"model.pretrained={pretrained!r} needs the tokenizer the checkpoint was "
                "pretrained with, but dataset.tokenizer=bpe trains a new vocabulary whose ids "
                "mean nothing to it; set dataset.tokenizer to the checkpoint's tokenizer "
                "(roberta-base for roberta-base checkpoints, or the checkpoint folder)"
            )
        model = _load_pretrained_roberta(pretrained, num_classes, dropout, attn_implementation)
        if model.config.vocab_size < vocab_size:
            raise ValueError(
                f"checkpoint {pretrained!r} has {model.config.vocab_size} token embeddings but the "
                f"tokenizer has {vocab_size}; use the checkpoint's own tokenizer "
                "(dataset.tokenizer=roberta-base for roberta-base checkpoints)"
            )
        positions = model.config.max_position_embeddings - pad_token_id - 1
        if max_length > positions:
            raise ValueError(
                f"dataset.max_length={max_length} exceeds the {positions} token positions of "
                f"checkpoint {pretrained!r}; set dataset.max_length={positions} or less"
            )
        return model
    if size not in ROBERTA_SIZES:
        raise ValueError(
            f"unknown model.size {size!r}: expected one of {', '.join(ROBERTA_SIZES)}"
        )
    preset = dict(ROBERTA_SIZES[size])
    for key, value in (("hidden_size", hidden_size), ("num_layers", num_layers),
                       ("num_heads", num_heads), ("intermediate_size", intermediate_size)):
        if value is not None:
            preset[key] = value
    if preset["hidden_size"] % preset["num_heads"]:
        raise ValueError(
            f"model.hidden_size {preset['hidden_size']} is not divisible by model.num_heads "
            f"{preset['num_heads']}"
        )
    config = RobertaConfig(
        vocab_size=vocab_size,
        hidden_size=preset["hidden_size"],
        num_hidden_layers=preset["num_layers"],
        num_attention_heads=preset["num_heads"],
        intermediate_size=preset["intermediate_size"],
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=max_length + pad_token_id + 1,
        type_vocab_size=1,
        pad_token_id=pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=num_classes,
    )
    config._attn_implementation = attn_implementation
    return RobertaForSequenceClassification(config)


def _load_pretrained_roberta(name: str, num_classes: int, dropout: float,
                             attn_implementation: str) -> nn.Module:
    from transformers import RobertaForSequenceClassification

    try:
        return RobertaForSequenceClassification.from_pretrained(
            name,
            num_labels=num_classes,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            attn_implementation=attn_implementation,
            # A checkpoint's own classification head may have another number of classes.
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError) as error:
        path = Path(name).expanduser()
        if looks_like_path(name) and not path.exists():
            raise ValueError(
                f"model.pretrained={name!r}: folder {path} not found; give a folder written by "
                "save_pretrained, a hub name such as roberta-base, or null to train from scratch"
            ) from None
        where = "folder" if path.exists() else "hub name"
        raise ValueError(
            f"model.pretrained={name!r} could not be loaded as a RoBERTa checkpoint ({where}): "
            f"{str(error).splitlines()[0]}; give a folder written by save_pretrained, or a hub "
            "name on a machine that can download it, or set model.pretrained=null to train "
            "from scratch"
        ) from None


def looks_like_path(name: str) -> bool:
    """Return True for names that are file paths rather than hub names (``./x``, ``/x``, ``~/x``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


class TextCNN(nn.Module):
    """Token embeddings, one 1-D convolution over time, masked max-pooling and a linear head."""

    def __init__(self, num_classes: int = 2, vocab_size: int = 8000, pad_token_id: int = 1,
                 embedding_dim: int = 64, channels: int = 128, kernel_size: int = 5,
                 dropout: float = 0.1):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"model.kernel_size must be odd, got {kernel_size}")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_token_id)
        self.conv = nn.Conv1d(embedding_dim, channels, kernel_size, padding=kernel_size // 2)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.unsqueeze(1).bool()                      # (B, 1, T)
        embedded = self.embedding(input_ids).transpose(1, 2)           # (B, E, T)
        features = torch.relu(self.conv(embedded * mask))              # (B, C, T)
        # Padding positions get the smallest finite value, so they never win the max.
        features = features.masked_fill(~mask, torch.finfo(features.dtype).min)
        pooled = features.amax(dim=2)
        return self.head(self.dropout(pooled))


@register_model("text_cnn")
def build_text_cnn(num_classes: int = 2, vocab_size: int = 8000, pad_token_id: int = 1,
                   max_length: int | None = None, tokenizer: str | None = None,
                   **kwargs) -> nn.Module:
    """Build :class:`TextCNN`; ``max_length`` and ``tokenizer`` are accepted for a uniform
    signature and unused."""
    return TextCNN(num_classes, vocab_size, pad_token_id, **kwargs)


def forward_ad_status(inputs: dict[str, torch.Tensor], targets: torch.Tensor,
                      vocab_size: int, max_length: int, pad_token_id: int = 1,
                      device: str | torch.device = "cpu", seed: int = 0,
                      tokenizer: str | None = None) -> list[dict]:
    """Compare the jvp with backprop's gradient·tangent for the text models on one batch.

    ``roberta`` (small preset, with sdpa and with eager attention) and ``text_cnn`` run in
    train mode (dropout 0.1, the same RNG seed before both passes) and in eval mode, in float32
    on ``device``. Returns one dict per check: ``model``, ``mode``, ``status`` (``"ok"`` or the
    error of an operator without forward-mode AD), ``jvp``, ``grad_dot_tangent`` and
    ``relative_error``. ``tokenizer`` is unused; it is accepted so that a loader's
    ``model_kwargs`` can be passed as they are.
    """
    from fwdbwd_lib.gradients import compare_with_backprop
    from fwdbwd_lib.losses import cross_entropy

    device = torch.device(device)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    targets = targets.to(device)
    sizes = dict(vocab_size=vocab_size, max_length=max_length, pad_token_id=pad_token_id)
    builders = {
        "roberta (sdpa)": lambda: build_roberta(**sizes, attn_implementation="sdpa"),
        "roberta (eager)": lambda: build_roberta(**sizes, attn_implementation="eager"),
        "text_cnn": lambda: build_text_cnn(**sizes),
    }
    results = []
    for name, builder in builders.items():
        torch.manual_seed(seed)
        model = builder().to(device)
        generator = torch.Generator().manual_seed(seed)
        tangents = {n: torch.randn(p.shape, generator=generator).to(device)
                    for n, p in model.named_parameters()}
        for mode in ("train", "eval"):
            model.train(mode == "train")
            row = compare_with_backprop(model, cross_entropy, inputs, targets, tangents, seed + 1)
            results.append({"model": name, "mode": mode, **row})
    return results
