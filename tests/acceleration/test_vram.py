"""Layer streaming (`enable_vram_management`): the upstream persistent-budget rule on the 14B preset (meta device),
bit-identical outputs with real per-forward copies (storage and compute both CPU), prefetch order and double
buffering, training with PEFT LoRA and gradient checkpointing, and the pipeline integration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsynth.acceleration.vram import LayerStreamer, enable_layer_streaming, plan_vram, vram_report
from diffsynth.configs import WanDiTConfig
from diffsynth.models.wan_dit import WanModel

CFG = WanDiTConfig(model_type="i2v", in_dim=36, dim=32, ffn_dim=48, num_heads=2, num_layers=4, text_dim=16,
                   image_dim=16)


def upstream_persistent(model, budget):
    """Independent re-implementation of the upstream rule: leaves (named_modules without children) in order, the
    running parameter total includes every leaf; persistent while the total stays <= budget."""
    names, total = [], 0
    for name, module in model.named_modules():
        if name == "" or next(module.children(), None) is not None:
            continue
        total += sum(p.numel() for p in module.parameters())
        if budget is None or total <= budget:
            names.append(name)
    return names


def make_dit(seed=0, cfg=CFG):
    torch.manual_seed(seed)
    dit = WanModel(cfg).eval().requires_grad_(False)
    with torch.no_grad():   # no zero/one inits: every weight matters
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return dit


def dit_inputs(seed=1, cfg=CFG):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(x=r(1, 16, 2, 4, 4), timestep=torch.tensor([500.0]), context=r(1, 5, cfg.text_dim),
                clip_feature=r(1, 3, cfg.image_dim), y=r(1, 20, 2, 4, 4), add_condition=r(1, cfg.dim, 2, 2, 2))


def budget_for(dit, full_blocks, extra):
    """Parameters of everything before the blocks, `full_blocks` blocks and `extra` more."""
    pre = sum(p.numel() for n in ("patch_embedding", "text_embedding", "time_embedding", "time_projection")
              for p in getattr(dit, n).parameters())
    block = sum(p.numel() for n, p in dit.blocks[0].named_parameters() if n != "modulation")
    return pre + full_blocks * block + extra


# ---------------------------------------------------------------------------------------------- the plan
@pytest.fixture(scope="module")
def dit14b():
    with torch.device("meta"):
        return WanModel(WanDiTConfig.from_preset("wan2.1-i2v-14b"))


def test_14b_plan_follows_the_upstream_rule(dit14b):
    cfg = dit14b.config
    assert (cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.in_dim, cfg.text_dim, cfg.image_dim) == \
        (5120, 13824, 40, 36, 4096, 1280)
    plan = plan_vram(dit14b, 6e9)
    assert plan.persistent_leaves == upstream_persistent(dit14b, 6e9)
    # about the first 14 blocks: blocks 0..13 whole, block 14 partly (its self-attention), 15.. streamed
    resident_blocks = {leaf.group for leaf in plan.leaves if not leaf.streamed and leaf.group.startswith("blocks.")}
    assert resident_blocks == {f"blocks.{i}" for i in range(15)}
    block14 = [leaf for leaf in plan.leaves if leaf.group == "blocks.14" and leaf.numel]
    assert any(leaf.streamed for leaf in block14) and not all(leaf.streamed for leaf in block14)
    assert plan.streamed_groups == [f"blocks.{i}" for i in range(14, 40)] + ["head", "img_emb"]
    # once overflowed, every later leaf streams
    first = next(i for i, leaf in enumerate(plan.leaves) if leaf.streamed)
    assert all(leaf.streamed for leaf in plan.leaves[first:])
    report = plan.report()
    total = sum(p.numel() for p in dit14b.parameters())
    assert report["resident_params"] + report["streamed_params"] == total
    assert report["resident_params"] - report["bare_params"] <= 6e9 < report["resident_params"] - report[
        "bare_params"] + 26_214_400 + 5120    # within one Linear of the budget
    assert report["bare_params"] == 40 * 6 * 5120 + 2 * 5120      # modulation: resident, not counted


def test_14b_plan_extremes(dit14b):
    none, zero = plan_vram(dit14b, None), plan_vram(dit14b, 0)
    assert none.streamed_leaves == [] and none.streamed_groups == []
    assert zero.persistent_leaves == upstream_persistent(dit14b, 0)
    assert all(leaf.streamed for leaf in zero.leaves if leaf.numel)
    assert len(zero.streamed_groups) == 4 + 40 + 2
    assert vram_report(dit14b, 0)["resident_params"] == vram_report(dit14b, 0)["bare_params"]


@pytest.mark.parametrize("budget", [0, 1, 5000, 12345, None])
def test_tiny_plan_matches_the_independent_rule(budget):
    dit = make_dit()
    assert plan_vram(dit, budget).persistent_leaves == upstream_persistent(dit, budget)


# ----------------------------------------------------------------------------------------- streaming (CPU)
def leaf_weight_spy(dit, streamer):
    """Record, for every streamed leaf, whether its forward saw its storage Parameter (no copy) or another tensor."""
    seen = []
    for leaf in streamer.plan.leaves:
        if leaf.streamed and leaf.numel:
            module = dit.get_submodule(leaf.name)
            stored = dict(module.named_parameters(recurse=False))  # outside forward: the storage Parameters
            module.register_forward_pre_hook(
                lambda m, a, n=leaf.name, s=stored: seen.append(
                    (n, all(m._parameters[k] is not p and m._parameters[k].data_ptr() != p.data_ptr()
                            for k, p in s.items()))))
    return seen


@pytest.mark.parametrize("budget_blocks", [(1, 700), (0, 0), (2, 0)])
def test_streaming_is_bit_identical_and_copies_each_streamed_group_once_per_forward(budget_blocks):
    dit = make_dit()
    inputs = dit_inputs()
    with torch.no_grad():
        expected = dit(**inputs)
    budget = budget_for(dit, *budget_blocks)
    streamer = enable_layer_streaming(dit, budget, compute_device="cpu", storage_device="cpu")
    groups = streamer.plan.streamed_groups
    assert groups and streamer.plan.persistent_leaves == upstream_persistent(dit, budget)
    seen = leaf_weight_spy(dit, streamer)
    with torch.no_grad():
        assert torch.equal(dit(**inputs), expected)
        dit(**inputs)                    # the call order is learned over the first two calls
        for _ in range(3):
            streamer.reset_stats()
            out = dit(**inputs)
            assert torch.equal(out, expected)
            assert streamer.stats["copies"] == len(groups)
            assert streamer.stats["tensor_copies"] == len(groups)          # one flat buffer per group (one dtype)
            assert streamer.stats["wasted"] == 0
    assert seen and all(copied for _, copied in seen)                     # every streamed leaf ran on a copy
    # between forwards every streamed Parameter is back, in its storage buffer
    for leaf in streamer.plan.leaves:
        if leaf.streamed and leaf.numel:
            assert all(isinstance(p, torch.nn.Parameter) for p in dit.get_submodule(leaf.name).parameters())


def test_partly_resident_block_streams_only_its_overflow():
    dit = make_dit()
    block = sum(p.numel() for n, p in dit.blocks[0].named_parameters() if n != "modulation")
    streamer = LayerStreamer(dit, budget_for(dit, 1, block // 2), compute_device="cpu", storage_device="cpu")
    b1 = [leaf for leaf in streamer.plan.leaves if leaf.group == "blocks.1" and leaf.numel]
    assert any(leaf.streamed for leaf in b1) and not all(leaf.streamed for leaf in b1)
    assert streamer._groups["blocks.1"].nbytes == sum(leaf.nbytes for leaf in b1 if leaf.streamed)


def test_budget_none_streams_nothing_and_zero_streams_everything():
    dit = make_dit()
    inputs = dit_inputs()
    with torch.no_grad():
        expected = dit(**inputs)
    none = enable_layer_streaming(dit, None, compute_device="cpu", storage_device="cpu")
    with torch.no_grad():
        assert torch.equal(dit(**inputs), expected)
    assert none.stats["copies"] == 0 and none.plan.streamed_groups == []
    zero = enable_layer_streaming(dit, 0, compute_device="cpu", storage_device="cpu")
    assert getattr(dit, "_vram_streamer") is zero and not none._hooks          # the old streamer is removed
    with torch.no_grad():
        dit(**inputs)
        dit(**inputs)                           # the call order is learned over the first two calls
        zero.reset_stats()
        assert torch.equal(dit(**inputs), expected)
    assert zero.stats["copies"] == len(zero.plan.streamed_groups) == 4 + CFG.num_layers + 2
    report = vram_report(dit)
    assert report["resident_params"] == report["bare_params"]
    assert report["stats"]["copies"] == zero.stats["copies"]


def test_prefetch_copies_the_next_block_while_the_current_one_runs():
    dit = make_dit()
    inputs = dit_inputs()
    streamer = enable_layer_streaming(dit, 0, compute_device="cpu", storage_device="cpu")
    with torch.no_grad():
        dit(**inputs)                          # learns the call order (and the wrap-around to the next call)
        dit(**inputs)
        streamer.trace, streamer.stats = [], dict.fromkeys(streamer.stats, 0)
        dit(**inputs)
    trace = streamer.trace
    for i in range(CFG.num_layers - 1):
        k = trace.index(("fetch", f"blocks.{i}", True))
        assert trace[k + 1] == ("prefetch", f"blocks.{i + 1}")
    # steady state: every group arrives prefetched, nothing wasted, at most two groups' copies held at once
    assert streamer.stats["prefetch_hits"] == streamer.stats["copies"] == len(streamer.plan.streamed_groups)
    assert streamer.stats["wasted"] == 0
    assert streamer.stats["max_live"] == 2


def test_skipped_blocks_cost_a_wasted_prefetch_not_a_wrong_result():
    """TeaCache skips the blocks: the head runs right after the embeddings; the guess is dropped."""
    dit = make_dit()
    inputs = dit_inputs()
    with torch.no_grad():
        e, _ = dit.embed_timestep(inputs["timestep"])
        tokens, grid = dit.patchify(inputs["x"], inputs["y"])
        expected = dit.unpatchify_head(tokens, e, grid)
    streamer = enable_layer_streaming(dit, 0, compute_device="cpu", storage_device="cpu")
    with torch.no_grad():
        dit(**inputs)
        e, _ = dit.embed_timestep(inputs["timestep"])
        tokens, grid = dit.patchify(inputs["x"], inputs["y"])
        assert torch.equal(dit.unpatchify_head(tokens, e, grid), expected)
    assert streamer.stats["wasted"] >= 1 and streamer.stats["max_live"] <= 2


def test_replaced_streamed_weight_is_an_error_not_a_stale_copy():
    dit = make_dit()
    enable_layer_streaming(dit, 0, compute_device="cpu", storage_device="cpu")
    dit.blocks[1].ffn[0].weight.data = dit.blocks[1].ffn[0].weight.data.clone()
    with torch.no_grad(), pytest.raises(RuntimeError, match="moved or replaced"):
        dit(**dit_inputs())


def test_in_place_weight_changes_reach_the_streamed_copy():
    dit = make_dit()
    inputs = dit_inputs()
    enable_layer_streaming(dit, 0, compute_device="cpu", storage_device="cpu")
    with torch.no_grad():
        before = dit(**inputs)
        dit.blocks[2].ffn[2].weight.mul_(2)      # e.g. a LoRA merge into the storage Parameter
        assert not torch.equal(dit(**inputs), before)


# ----------------------------------------------------------------------------------------------- training
def lora_dit():
    from diffsynth.training.module import add_lora  # noqa: PLC0415

    dit = make_dit(seed=3)
    add_lora(dit, rank=2, alpha=2.0, target_modules=["q", "k", "v", "o", "ffn.0", "ffn.2"],
             init_lora_weights="gaussian")
    return dit.train()


def loss_and_grads(dit, inputs, checkpointing):
    dit.zero_grad(set_to_none=True)
    loss = dit(**inputs, use_gradient_checkpointing=checkpointing).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in dit.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [True, False])
def test_lora_training_with_streamed_base_weights_matches(checkpointing):
    inputs = dit_inputs()
    dit = lora_dit()
    loss_ref, grads_ref = loss_and_grads(dit, inputs, checkpointing)
    streamer = enable_layer_streaming(dit, budget_for(dit, 1, 0), compute_device="cpu", storage_device="cpu")
    streamed = streamer.plan.streamed_leaves
    assert streamed and all(".lora_" not in n for n in streamed)           # LoRA stays resident
    assert any(n.endswith("q.base_layer") for n in streamed)               # frozen base weights stream
    for i in range(3):                              # the call order is learned in the first iteration
        streamer.reset_stats()
        loss, grads = loss_and_grads(dit, inputs, checkpointing)
        assert torch.equal(loss, loss_ref)
        assert grads.keys() == grads_ref.keys() and grads
        assert all(torch.equal(grads[n], grads_ref[n]) for n in grads)
        groups = len(streamer.plan.streamed_groups)
        recomputed = sum(g.startswith("blocks.") for g in streamer.plan.streamed_groups) if checkpointing else 0
        if i:
            # with checkpointing the look-ahead into the next call (made by the head) is dropped when the backward
            # starts recomputing blocks: one wasted copy per iteration
            assert streamer.stats["wasted"] == int(checkpointing)
            assert streamer.stats["copies"] == groups + recomputed + int(checkpointing)
            assert streamer.stats["prefetch_hits"] == groups + recomputed - (2 if checkpointing else 0)
        assert streamer.stats["max_live"] <= 2


def test_full_fine_tuning_streams_trainable_weights_with_gradients():
    inputs = dit_inputs()
    dit = make_dit(seed=4).train().requires_grad_(True)
    loss_ref, grads_ref = loss_and_grads(dit, inputs, True)
    streamer = enable_layer_streaming(dit, 0, compute_device="cpu", storage_device="cpu")
    loss, grads = loss_and_grads(dit, inputs, True)
    assert torch.equal(loss, loss_ref) and grads.keys() == grads_ref.keys()
    assert all(torch.equal(grads[n], grads_ref[n]) for n in grads)
    assert streamer.stats["copies"] > 0


# ----------------------------------------------------------------------------------------------- pipeline
H, W, F = 32, 32, 5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from diffsynth.tiny import build_tiny_models  # noqa: PLC0415

    return build_tiny_models(str(tmp_path_factory.mktemp("tok")), seed=5)


def pipeline_call(models, enable=None, cls=None):
    from PIL import Image  # noqa: PLC0415

    from diffsynth.pipelines import WanUniAnimateVideoPipeline  # noqa: PLC0415

    pipe = (cls or WanUniAnimateVideoPipeline).from_models(**vars(models), device="cpu", torch_dtype=torch.float32)
    if enable is not None:
        enable(pipe)
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    pose = torch.from_numpy(rng.integers(0, 255, (3, F, H, W))).float()
    ref_pose = torch.from_numpy(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    frames = pipe(prompt="a person is dancing", input_image=image, dwpose_data=pose, random_ref_dwpose=ref_pose,
                  height=H, width=W, num_frames=F, cfg_scale=1.5, num_inference_steps=2, seed=0, tiled=False,
                  progress_bar_cmd=lambda x: x)
    return pipe, np.stack([np.asarray(f) for f in frames])


def test_pipeline_vram_management_is_bit_identical_and_streams_dit_t5_clip(models):
    _, expected = pipeline_call(models)
    budget = sum(p.numel() for p in models.dit.parameters()) // 2
    seen, handles = [], []

    def enable(pipe):
        pipe.enable_vram_management(num_persistent_param_in_dit=budget)
        for name in ("text_encoder", "image_encoder", "vae", "dit", "pose_guider"):
            handles.extend(module.register_forward_pre_hook(   # the DiT runs step by step: hook every module
                lambda *_, n=name, p=pipe: seen.append((n, tuple(p.models_on_device()))))
                for module in getattr(pipe, name).modules())

    try:
        pipe, frames = pipeline_call(models, enable)
        assert np.array_equal(frames, expected)
        dit, t5, clip = (getattr(models, n)._vram_streamer for n in ("dit", "text_encoder", "image_encoder"))
        assert 0 < len(dit.plan.streamed_groups) < len(dit.plan.groups)
        assert dit.plan.persistent_leaves == upstream_persistent(models.dit, budget)
        # The context embeddings run once per generation and branch (2), every other streamed group once per
        # forward: 2 steps x 1 forward (batched CFG); a prefetch guessed wrong costs at most one copy per step.
        per_generation = [g for g in dit.plan.streamed_groups if g in ("text_embedding", "img_emb")]
        per_forward = len(dit.plan.streamed_groups) - len(per_generation)
        needed = 2 * len(per_generation) + 2 * per_forward
        assert per_forward > 0 and needed <= dit.stats["copies"] <= needed + 2
        assert dit.stats["copies"] - dit.stats["wasted"] <= needed + 1
        assert t5.stats["copies"] >= 2 * len(t5.plan.streamed_groups) > 0      # two prompts
        assert clip.stats["copies"] > 0 and "visual.patch_embedding" in clip.plan.persistent_leaves
        placement = {}
        for name, on_device in seen:
            placement.setdefault(name, set()).add(on_device)
        assert placement["dit"] == {("dit",)} and placement["text_encoder"] == {("text_encoder",)}
        assert pipe.models_on_device() == []
    finally:
        for handle in handles:
            handle.remove()
        for name in ("dit", "text_encoder", "image_encoder"):
            streamer = getattr(getattr(models, name), "_vram_streamer", None)
            if streamer is not None:
                streamer.remove()


def test_long_video_pipeline_streams_bit_identically(models):
    from diffsynth.pipelines import WanUniAnimateLongVideoPipeline  # noqa: PLC0415

    _, expected = pipeline_call(models, cls=WanUniAnimateLongVideoPipeline)
    try:
        pipe, frames = pipeline_call(models, lambda p: p.enable_vram_management(0), WanUniAnimateLongVideoPipeline)
        assert np.array_equal(frames, expected)
        groups = len(models.dit._vram_streamer.plan.groups)   # 2 of them (the context embeddings) once per branch
        assert models.dit._vram_streamer.stats["copies"] >= 2 * (groups - 2) + 2 * 2
        assert pipe.models_on_device() == []
    finally:
        for name in ("dit", "text_encoder", "image_encoder"):
            streamer = getattr(getattr(models, name), "_vram_streamer", None)
            if streamer is not None:
                streamer.remove()


def test_moving_a_managed_model_keeps_streamed_weights_in_storage():
    """A trainer's `.to()` moves the resident weights; the streamed ones stay in their (CPU) buffers, so the model
    never lands on the device whole, and the forward is unchanged."""
    inputs = dit_inputs()
    dit = lora_dit()
    with torch.no_grad():
        expected = dit(**inputs)
    streamer = enable_layer_streaming(dit, budget_for(dit, 1, 0), compute_device="cpu", storage_device="cpu",
                                      onload=False)
    streamed = dict(dit.named_parameters())
    names = [n for n in streamed if n.startswith(tuple(l + "." for l in streamer.plan.streamed_leaves))]
    ptrs = {n: streamed[n].data_ptr() for n in names}
    dit.to(torch.float64)                                   # a conversion every parameter would otherwise follow
    assert names and all(streamed[n].data_ptr() == ptrs[n] and streamed[n].dtype == torch.float32 for n in names)
    assert dit.patch_embedding.weight.dtype == torch.float64   # resident weights followed the call
    dit.to(torch.float32)
    with torch.no_grad():
        assert torch.equal(dit(**inputs), expected)
    streamer.remove()
    dit.to(torch.float64)                                   # unmanaged again: everything follows
    assert all(p.dtype == torch.float64 for p in dit.parameters())
