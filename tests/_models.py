"""Tiny Hugging Face models built from configs (never downloaded) for the tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as T
from safetensors.torch import load_file

from ligo_fast.init import grown_layer_types

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "case.json").exists())

VOCAB = 61

_LLAMA = dict(vocab_size=VOCAB, max_position_embeddings=32)
_BERT = dict(vocab_size=VOCAB, max_position_embeddings=40, num_labels=3)


def configs(name: str, *, tie: bool = False, kv: tuple[int, int] = (2, 4)):
    """(small, large) configs for HF class ``name``: widths and layer counts grow, odd sizes."""
    if name.startswith(("Gemma3", "Qwen3")):
        return qk_norm_configs(name, d=(32, 48), heads=(4, 4), kv=kv, layers=(2, 3), ffn=(40, 72), tie=tie,
                               head_dim=(12, 16))  # fmt: skip
    if name in ("LlamaForCausalLM", "LlamaModel", "MistralForCausalLM", "Qwen2ForCausalLM"):
        C = (
            T.MistralConfig
            if name.startswith("Mistral")
            else T.Qwen2Config
            if name.startswith("Qwen2")
            else T.LlamaConfig
        )
        return (
            C(
                hidden_size=32,
                intermediate_size=40,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=kv[0],
                tie_word_embeddings=tie,
                **_LLAMA,
            ),
            C(
                hidden_size=48,
                intermediate_size=72,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=kv[1],
                tie_word_embeddings=tie,
                **_LLAMA,
            ),
        )
    if name.startswith("GPT2"):
        kw = dict(vocab_size=VOCAB, n_positions=16, bos_token_id=0, eos_token_id=0, tie_word_embeddings=tie)
        return T.GPT2Config(n_embd=32, n_layer=2, n_head=4, **kw), T.GPT2Config(n_embd=48, n_layer=3, n_head=4, **kw)
    if name.startswith("ViT"):
        kw = dict(image_size=8, patch_size=4, num_labels=3, num_attention_heads=4)
        return (
            T.ViTConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=40, **kw),
            T.ViTConfig(hidden_size=48, num_hidden_layers=3, intermediate_size=72, **kw),
        )
    C = T.BertConfig if name.startswith("Bert") else T.RobertaConfig
    return (
        C(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=40,
            tie_word_embeddings=tie,
            **_BERT,
        ),
        C(
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=72,
            tie_word_embeddings=tie,
            **_BERT,
        ),
    )


def qk_norm_configs(name: str, *, d, heads, kv, layers, ffn, tie=False, head_dim=(12, 12)):
    """(small, large) configs of a Gemma 3 or Qwen3 class (q/k norms), each argument a (small, large) pair except
    ``d``: a pair of hidden sizes, or the small one (the large one then grows with the head count). ``head_dim`` is
    explicit (not ``hidden / heads`` in the tests). Gemma's layers alternate sliding-window (of 4 tokens, fewer than
    the test inputs have) and full attention; the large model's kinds follow the layers they are grown from."""
    dims = d if isinstance(d, tuple) else (d, d * heads[1] // heads[0])
    kw = dict(vocab_size=VOCAB, max_position_embeddings=32, tie_word_embeddings=tie)
    if name.startswith("Gemma3"):
        small_types = ["sliding_attention", "full_attention"] * layers[0]
        small_types = small_types[: layers[0]]
        kw |= dict(sliding_window=4, query_pre_attn_scalar=12)
        types = (small_types, grown_layer_types(small_types, layers[1]))
        C = T.Gemma3TextConfig
    else:
        types = (None, None)
        C = T.Qwen3Config
    return tuple(
        C(
            hidden_size=dims[i], intermediate_size=ffn[i], num_hidden_layers=layers[i], num_attention_heads=heads[i],
            num_key_value_heads=kv[i], head_dim=head_dim[i], **({"layer_types": types[i]} if types[i] else {}), **kw,
        )
        for i in (0, 1)
    )  # fmt: skip


CLI_LARGE = {"hidden_size": 24, "intermediate_size": 32, "num_hidden_layers": 3}
"""The command-line tests' large config: the fields that change from :func:`cli_small_config`."""
CLI_TEXT = "Growing models from smaller ones saves compute. " * 30
"""The command-line tests' training text."""


def write_cli_inputs(d: Path, text: str) -> None:
    """The command-line tests' inputs in ``d``: the small model of :func:`cli_small_config` (seed 0) in ``small/``,
    :data:`CLI_LARGE` as ``large.json`` and :data:`CLI_TEXT` at ``d / text`` (its folder made)."""
    torch.manual_seed(0)
    T.LlamaForCausalLM(cli_small_config()).save_pretrained(d / "small")
    (d / "large.json").write_text(json.dumps(CLI_LARGE))
    (d / text).parent.mkdir(parents=True, exist_ok=True)
    (d / text).write_text(CLI_TEXT)


def cli_small_config() -> T.LlamaConfig:
    """The command-line tests' small model: a byte-level (260 tokens) Llama of width 16, 2 layers, GQA 2/1."""
    return T.LlamaConfig(
        vocab_size=260,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )


def build(name: str, config, seed: int = 0) -> torch.nn.Module:
    """A model of class ``name`` whose every parameter is perturbed off HF's init (biases start at zero there)."""
    model = getattr(T, name)(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def inputs(name: str, batch: int = 2, seq: int = 7) -> dict:
    g = torch.Generator().manual_seed(1)
    if name.startswith("ViT"):
        return {"pixel_values": torch.randn(batch, 3, 8, 8, generator=g)}
    return {"input_ids": torch.randint(0, VOCAB, (batch, seq), generator=g)}


def main_output(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def load_case(case: str):
    """(case dict, small model, large config) of an official fixture."""
    d = FIXTURES / case
    spec = json.loads((d / "case.json").read_text())
    cls = T.BertForMaskedLM if spec["kind"] == "bert" else T.RobertaForMaskedLM
    cfg = T.BertConfig if spec["kind"] == "bert" else T.RobertaConfig
    small = cls(cfg(**spec["small_config"])).eval()
    missing, unexpected = small.load_state_dict(load_file(str(d / "small.safetensors")), strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return spec, small, cfg(**spec["large_config"])


def case_options(spec: dict) -> dict:
    o = spec["options"]
    return dict(depth_init=o["depth_init"], width_init=o["width_init"], tie=o["tie"], residual=o["residual"])


def fixture(case: str, what: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / case / f"{what}.safetensors"))
