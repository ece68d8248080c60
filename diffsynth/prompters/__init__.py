"""Prompt processing for the Wan text encoder."""
from diffsynth.prompters.wan_prompter import WanPrompter, clean_prompt, resolve_tokenizer_path

__all__ = ["WanPrompter", "clean_prompt", "resolve_tokenizer_path"]
