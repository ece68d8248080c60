"""Wan prompt encoding: clean the text, tokenise with the umT5 tokenizer, run the text encoder, zero the padding.

The tokenizer is the `google/umt5-xxl` SentencePiece tokenizer that the Wan2.1 releases ship beside the T5 weights
(e.g. `Wan2.1-I2V-14B-720P/google/umt5-xxl/`). It is loaded with `transformers.AutoTokenizer` from that local folder;
nothing is downloaded.
"""
from __future__ import annotations

import html
import os
import re
from typing import List, Optional, Sequence, Tuple, Union

import torch

UMT5_TOKENIZER_SUBDIR = os.path.join("google", "umt5-xxl")
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "spiece.model")


def clean_prompt(text: str) -> str:
    """Wan2.1 "whitespace" cleaning: ftfy.fix_text, html.unescape twice, strip, collapse whitespace runs."""
    import ftfy  # noqa: PLC0415  (import here: ftfy is only needed for text prompts)

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def resolve_tokenizer_path(path: Union[str, os.PathLike]) -> str:
    """Find the umT5 tokenizer folder from `path`.

    `path` may be the tokenizer folder itself, a folder containing `google/umt5-xxl` (the Wan2.1 model folder), or a
    file inside such a folder (e.g. the `models_t5_umt5-xxl-enc-bf16.pth` path).
    """
    path = os.fspath(path)
    base = os.path.dirname(path) if os.path.isfile(path) else path
    for candidate in (os.path.join(base, UMT5_TOKENIZER_SUBDIR), base):
        if os.path.isdir(candidate) and any(os.path.isfile(os.path.join(candidate, f)) for f in _TOKENIZER_FILES):
            return candidate
    raise FileNotFoundError(
        f"no umT5 tokenizer found at {path!r} (looked for one of {', '.join(_TOKENIZER_FILES)} in "
        f"{os.path.join(base, UMT5_TOKENIZER_SUBDIR)!r} and {base!r}). The tokenizer ships with the Wan2.1 release: "
        f"pass the Wan2.1-I2V-14B-720P model folder, or its `google/umt5-xxl` subfolder directly."
    )


class WanPrompter:
    """Turns prompts into the `[B, text_len, dim]` context the Wan DiT expects.

    Args:
        tokenizer_path: the `google/umt5-xxl` tokenizer folder or a folder containing it (see
            `resolve_tokenizer_path`). May be None and given later with `load_tokenizer`.
        text_len: prompts are padded (and truncated) to this many tokens; 512 for every Wan2.1 model.
    """

    def __init__(self, tokenizer_path: Optional[Union[str, os.PathLike]] = None, text_len: int = 512):
        self.text_len = text_len
        self.tokenizer = None
        if tokenizer_path is not None:
            self.load_tokenizer(tokenizer_path)

    def load_tokenizer(self, tokenizer_path: Union[str, os.PathLike]) -> None:
        from transformers import AutoTokenizer  # noqa: PLC0415

        self.tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer_path(tokenizer_path))

    def tokenize(self, prompt: Union[str, Sequence[str]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Clean and tokenise; returns ids [B, text_len] and attention mask [B, text_len] (int64).

        `</s>` is appended to every prompt and counts as a real token; the rest is `<pad>` (id 0) with mask 0.
        """
        if self.tokenizer is None:
            raise RuntimeError("WanPrompter has no tokenizer: pass tokenizer_path or call load_tokenizer(path)")
        prompts: List[str] = [prompt] if isinstance(prompt, str) else list(prompt)
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            max_length=self.text_len,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return tokens["input_ids"], tokens["attention_mask"]

    def encode_prompt(self, text_encoder: torch.nn.Module, prompt: Union[str, Sequence[str]],
                      device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        """Encode prompts: [B, text_len, dim] with every position at or after a prompt's own length set to 0.

        The encoder runs on all `text_len` positions (padding masked as keys); the padded rows are then zeroed, so
        the DiT sees zeros after the real tokens, as upstream. Gradient mode is left to the caller.
        """
        ids, mask = self.tokenize(prompt)
        ids, mask = ids.to(device), mask.to(device)
        seq_lens = mask.gt(0).sum(dim=1)                                   # [B], includes </s>
        prompt_emb = text_encoder(ids, mask)
        # Zero per row. (DiffSynth loops `prompt_emb[:, v:] = 0` over the lengths, which with batch > 1 zeroes every
        # row from every prompt's length, i.e. from the shortest one; we zero each row from its own length.)
        keep = torch.arange(prompt_emb.size(1), device=prompt_emb.device)[None, :] < seq_lens[:, None]
        return prompt_emb.masked_fill(~keep[..., None], 0)


__all__ = ["WanPrompter", "clean_prompt", "resolve_tokenizer_path", "UMT5_TOKENIZER_SUBDIR"]
