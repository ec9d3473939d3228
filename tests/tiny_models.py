"""Tiny random models of every architecture hf_incr supports, built from configs (no downloads)."""

from __future__ import annotations

import torch
import transformers as T

LABELS = ["alpha", "beta", "gamma"]

_COMMON = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)

TINY_CONFIGS = {
    "bert": lambda: T.BertConfig(**_COMMON),
    "roberta": lambda: T.RobertaConfig(**_COMMON, pad_token_id=1),
    "xlm-roberta": lambda: T.XLMRobertaConfig(**_COMMON, pad_token_id=1),
    "distilbert": lambda: T.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37),
    "deberta-v2": lambda: T.DebertaV2Config(**_COMMON),
    "electra": lambda: T.ElectraConfig(**_COMMON, embedding_size=16),
    "albert": lambda: T.AlbertConfig(**_COMMON, embedding_size=16),
    "mpnet": lambda: T.MPNetConfig(**_COMMON, pad_token_id=1),
    "modernbert": lambda: T.ModernBertConfig(
        **_COMMON, pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3
    ),
    "bart": lambda: T.BartConfig(
        vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    ),
    "gpt2": lambda: T.GPT2Config(
        vocab_size=99, n_embd=32, n_layer=2, n_head=4, pad_token_id=0, bos_token_id=1, eos_token_id=2
    ),
    "llama": lambda: T.LlamaConfig(**_COMMON, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "mistral": lambda: T.MistralConfig(
        **_COMMON, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2
    ),
    "qwen2": lambda: T.Qwen2Config(**_COMMON, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2),
}

ARCHITECTURES = sorted(TINY_CONFIGS)


def tiny_model(arch: str = "bert", labels=LABELS, problem_type: str | None = None, seed: int = 0):
    """A randomly initialised ``*ForSequenceClassification`` with the given labels, in eval mode."""
    config = TINY_CONFIGS[arch]()
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.problem_type = problem_type
    torch.manual_seed(seed)
    model = T.AutoModelForSequenceClassification.from_config(config)
    return model.eval()


def tiny_batch(arch: str = "bert", batch_size: int = 4, length: int = 7, seed: int = 0):
    """Random token ids (no padding) with an attention mask; ids avoid the special tokens 0-3."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, 99, (batch_size, length), generator=generator)
    if arch == "bart":
        input_ids[:, -1] = 2  # BART's head reads the hidden state of the last <eos>
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def gaussian_classes(rows_per_label=12, labels=6, dim=5, seed=0):
    """Rows of ``labels`` Gaussian classes (float64 features, integer labels), for the heads' numerics."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(labels, dim, generator=generator, dtype=torch.float64) * 2
    y = torch.arange(labels).repeat_interleave(rows_per_label)
    x = centers[y] + torch.randn(len(y), dim, generator=generator, dtype=torch.float64)
    return x, y


def relative_error(a, b) -> float:
    return float((a - b).norm() / b.norm())
