"""WanPrompter: text cleaning, umT5-style tokenisation to 512, per-row zeroing, tokenizer folder discovery.

A tiny SentencePiece model with the T5 special ids (pad 0, </s> 1, <unk> 2, no BOS) is trained in the test and
saved as a transformers T5 tokenizer folder laid out like the Wan release (`<model dir>/google/umt5-xxl/`).
"""
from __future__ import annotations

import os

import pytest
import torch

from diffsynth.configs import UMT5Config
from diffsynth.models.wan_text_encoder import WanTextEncoder
from diffsynth.prompters import WanPrompter, clean_prompt, resolve_tokenizer_path
from tiny import randomize_

SENTENCES = [
    "a man is dancing on the stage in a red coat",
    "the woman walks slowly in the green park",
    "a girl waves her hand, smiling at the camera",
    "cafe, music & lights; the boy jumps high",
] * 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A fake Wan2.1 model folder with a tiny umT5-compatible tokenizer in `google/umt5-xxl`."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    root = tmp_path_factory.mktemp("wan")
    spm_dir = root / "spm"
    spm_dir.mkdir()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES), model_prefix=str(spm_dir / "spiece"), vocab_size=64,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2,
    )
    tokenizer = T5Tokenizer.from_pretrained(str(spm_dir), extra_ids=0)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    tokenizer.save_pretrained(str(root / "google" / "umt5-xxl"))
    (root / "models_t5_umt5-xxl-enc-bf16.pth").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def prompter(model_dir):
    return WanPrompter(model_dir)


def test_clean_prompt():
    assert clean_prompt("  a \n\t man\u3000 dancing  ") == "a man dancing"
    assert clean_prompt("fish &amp;amp; chips &lt;3") == "fish & chips <3"  # html.unescape twice
    assert clean_prompt("cafÃ© dÃ©cor") == "café décor"  # mojibake repaired by ftfy
    assert clean_prompt("&nbsp;padded&nbsp;") == "padded"  # entities become whitespace, then stripped


def test_tokenize_pads_to_512_with_eos_and_mask(prompter):
    ids, mask = prompter.tokenize(["a man is dancing", "the woman walks slowly in the green park"])
    assert ids.shape == mask.shape == (2, 512)
    for row_ids, row_mask in zip(ids, mask):
        n = int(row_mask.sum())
        assert torch.equal(row_mask[:n], torch.ones(n, dtype=row_mask.dtype)) and row_mask[n:].eq(0).all()
        assert row_ids[n - 1] == 1 and (row_ids[: n - 1] != 1).all()  # </s> appended once, counted in the mask
        assert row_ids[n:].eq(0).all()  # <pad> = 0
    assert mask[0].sum() < mask[1].sum()


def test_tokenize_cleans_and_truncates(prompter):
    clean_ids, _ = prompter.tokenize("a man & a girl")
    dirty_ids, _ = prompter.tokenize("  a   man &amp;amp;\n a girl ")
    assert torch.equal(clean_ids, dirty_ids)
    long_ids, long_mask = prompter.tokenize(" ".join(SENTENCES * 3))
    assert long_mask.all() and long_ids[0, -1] == 1  # truncated to 512, still ends with </s>


def test_encode_prompt_zeroes_each_row_from_its_own_length(prompter):
    torch.manual_seed(0)
    vocab = len(prompter.tokenizer)
    config = UMT5Config(vocab_size=vocab, dim=32, dim_attn=32, dim_ffn=48, num_heads=2, num_layers=2)
    encoder = randomize_(WanTextEncoder(config), seed=3, std=0.2).eval()
    prompts = ["a man", "the woman walks slowly in the green park, smiling"]
    with torch.no_grad():
        emb = prompter.encode_prompt(encoder, prompts, device="cpu")
        singles = [prompter.encode_prompt(encoder, p, device="cpu") for p in prompts]
    _, mask = prompter.tokenize(prompts)
    lens = mask.sum(1).tolist()
    assert emb.shape == (2, 512, 32) and lens[0] < lens[1]
    for row, n in enumerate(lens):
        assert emb[row, n:].eq(0).all()
        assert emb[row, :n].abs().sum(-1).gt(0).all()  # real tokens (incl. </s>) are kept
        # Same as encoding the prompt alone (upstream's loop would zero row 1 from row 0's shorter length).
        assert torch.allclose(emb[row], singles[row][0], atol=1e-6)


def test_tokenizer_folder_resolution(model_dir):
    tokenizer_dir = str(model_dir / "google" / "umt5-xxl")
    assert resolve_tokenizer_path(model_dir) == tokenizer_dir
    assert resolve_tokenizer_path(tokenizer_dir) == tokenizer_dir
    assert resolve_tokenizer_path(model_dir / "models_t5_umt5-xxl-enc-bf16.pth") == tokenizer_dir
    ids_a, _ = WanPrompter(tokenizer_dir).tokenize("a man")
    ids_b, _ = WanPrompter(model_dir, text_len=16).tokenize("a man")
    assert torch.equal(ids_a[:, :16], ids_b)


def test_missing_tokenizer_folder_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Wan2\.1-I2V-14B-720P.*google/umt5-xxl"):
        WanPrompter(tmp_path / "nowhere")
    os.makedirs(tmp_path / "google" / "umt5-xxl")  # folder present but empty
    with pytest.raises(FileNotFoundError, match="umt5-xxl"):
        WanPrompter(tmp_path)
    with pytest.raises(RuntimeError, match="no tokenizer"):
        WanPrompter().tokenize("a man")
