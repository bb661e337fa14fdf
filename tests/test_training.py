"""Training helpers (plugins/_training.py) that keep the erase plugins' fits inside full-size SDXL's memory.

RealEra's LoRA stage on float32 copies of only the layers it trains, swapped into the pipeline's UNet
(``plugins/_realera_stages.py``: ``lora_student``): the same LoRA factors and losses as the previous
implementation, which trained on a whole float32 copy of the UNet (9.6 GiB on SDXL), and the pipeline left
as it was. ESD's use of the same swap is tested in tests/test_esd.py. Activation checkpointing of the frozen
UNet, and few-shot unlearning on a bf16 pipeline."""

from __future__ import annotations

import torch
from tiny import assert_same_state, full_state

from conceptedit.conditioning import conditioning
from conceptedit.edits import lora_tensors_from_peft
from conceptedit.plugins import _realera_stages as stages
from conceptedit.plugins._training import Trainable, trainable_copy
from conceptedit.plugins.uce import cross_attention_projections


def _data(pipe) -> stages.NoiseAlignmentData:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        seq, anchor = conditioning(pipe, ["a cat"]), conditioning(pipe, [""])
    d = seq.embeds.shape[-1]
    return stages.NoiseAlignmentData(
        [seq], [2], [anchor], [torch.randn(3, d, generator=gen)], [torch.randn(3, d, generator=gen)],
        torch.randn(2, pipe.unet.config.in_channels, 8, 8, generator=gen),
    )  # fmt: skip


def _run(pipe, student, student_context, trainable) -> tuple[list[float], dict[str, torch.Tensor]]:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    losses = stages.noise_alignment_lora(
        student, pipe.unet, scheduler, _data(pipe), trainable.parameters, 4, 5e-2, 1.0,
        torch.Generator().manual_seed(0), lambda *a: None, student_context=student_context,
    )  # fmt: skip
    return losses, lora_tensors_from_peft(trainable.model, "unet")


def test_lora_student_trains_what_a_whole_copy_trained(tiny_pipe):
    unet = tiny_pipe.unet
    before = full_state(tiny_pipe)
    names = cross_attention_projections(unet, True)  # to_k and to_v: the LoRA's
    gen = torch.Generator().manual_seed(2)
    # the closed-form delta on to_v only (with_to_k off): a layer with a delta but no LoRA is copied too
    deltas = {
        f"unet.{n}.weight": 0.1 * torch.randn(unet.get_submodule(n).weight.shape, generator=gen)
        for n in names
        if n.endswith("to_v")
    }

    whole = trainable_copy(unet)  # the previous implementation: a whole float32 copy, + Δ, + LoRA
    with torch.no_grad():
        for key, delta in deltas.items():
            whole.get_parameter(key.removeprefix("unet.")).add_(delta)
    old_losses, old = _run(tiny_pipe, whole, None, Trainable(whole, "unet", names, "lora", 4, None, 0))

    student, trainable = stages.lora_student(unet, deltas, names, 4, None, 0)
    assert sum(p.numel() for p in student.layers.parameters()) < 0.2 * sum(p.numel() for p in unet.parameters())
    new_losses, new = _run(tiny_pipe, unet, student, trainable)

    assert new_losses == old_losses and len(set(new_losses)) > 1
    assert new.keys() == old.keys() and len(new) == 2 * len(names)
    for key in old:
        assert torch.equal(new[key], old[key]), key
    assert any(v.abs().max() > 0 for k, v in new.items() if k.endswith("lora_B.weight"))  # it trained
    assert_same_state(before, full_state(tiny_pipe))
    assert all(p.grad is None for p in unet.parameters())


def test_activation_checkpointing_gives_the_same_gradients_and_restores_the_flags(tiny_pipe):
    """Few-shot unlearning backpropagates through the frozen UNet with its activations recomputed (several
    GiB a sample on full-size SDXL): the gradients are the same, and the UNet's own flags come back."""
    from conceptedit.plugins._training import activation_checkpointing

    unet = tiny_pipe.unet
    switches = [m for m in unet.modules() if hasattr(m, "gradient_checkpointing")]
    assert switches and not any(m.gradient_checkpointing for m in switches)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, unet.config.in_channels, 8, 8, generator=gen)
    with torch.no_grad():
        context = conditioning(tiny_pipe, ["a cat", "a dog"]).embeds
    context.requires_grad_(True)

    def gradient() -> torch.Tensor:
        unet(x, torch.tensor([10, 700]), encoder_hidden_states=context).sample.square().mean().backward()
        g, context.grad = context.grad.clone(), None
        return g

    plain = gradient()
    with activation_checkpointing(unet):
        assert all(m.gradient_checkpointing for m in switches)
        recomputed = gradient()
    assert torch.equal(plain, recomputed)
    assert not any(m.gradient_checkpointing for m in switches)
    assert not any("_gradient_checkpointing_func" in m.__dict__ for m in switches)


def test_fewshot_on_a_bf16_sdxl_pipeline(tiny_sdxl_pipe):
    """On a bf16 pipeline (full-size SDXL's dtype) the few-shot fit trains float32 copies of only its layers
    in both encoders: a float32 delta, not zero, and the pipeline left as it was."""
    from conceptedit.plugin import Request
    from conceptedit.registry import get_plugin

    pipe = tiny_sdxl_pipe.to(torch.bfloat16)
    before = full_state(pipe)
    edit = get_plugin("fewshot-unlearning")(dict(images_from_model=True, lr=1e-3, n_images=2, epochs=1)).fit(
        pipe, Request(targets=["cat"])
    )
    assert {k.split(".")[0] for k in edit.tensors} == {"text_encoder", "text_encoder_2"}
    assert all(v.dtype == torch.float32 for v in edit.tensors.values())
    assert any(v.abs().max() > 0 for v in edit.tensors.values())
    assert_same_state(before, full_state(pipe))
    for component in ("unet", "text_encoder", "text_encoder_2"):
        assert all(p.grad is None for p in getattr(pipe, component).parameters())
