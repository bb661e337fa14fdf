from __future__ import annotations

import pytest
import torch
from torch import nn

from conceptedit.errors import ConceptEditError
from conceptedit.hooks import add_output_transform, capture, replace_output, run_until


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
        return (self.lin(x), "aux")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = TupleOut()
        self.b = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, aux = self.a(x)
        assert aux == "aux"
        return self.b(h)


def test_capture_and_replace_tuple_outputs_under_no_grad():
    torch.manual_seed(0)
    net, x = Net(), torch.randn(4, 3)
    with torch.no_grad():
        base = net(x)
        with capture(net, ["a", "b"]) as rec:
            net(x)
            net(x)
        assert len(rec.outputs["a"]) == 2 and torch.equal(rec.last("b"), base)
        with replace_output(net, "a", lambda h: h * 0):
            zeroed = net(x)
        assert torch.allclose(zeroed, net.b.bias.expand(4, 2))
        assert torch.equal(net(x), base)  # removed on exit


def test_several_hooks_remove_independently():
    torch.manual_seed(0)
    net, x = Net(), torch.randn(2, 3)
    base = net(x)
    first = add_output_transform(net, "a", lambda h: h + 1)
    second = add_output_transform(net, "a", lambda h: h * 2)
    both = net(x)
    first.remove()
    only_second = net(x)
    second.remove()
    first.remove()
    assert not torch.equal(both, only_second)
    assert torch.equal(net(x), base)


def test_run_until_skips_the_rest_and_unknown_names_are_clear():
    net, x = Net(), torch.randn(2, 3)
    calls = []
    net.b.register_forward_hook(lambda *a: calls.append(1))
    hidden = run_until(net, "a", lambda: net(x))
    assert hidden.shape == (2, 3) and calls == []
    with pytest.raises(ConceptEditError, match="not found .* nearby names"):
        capture(net, "a.linn").__enter__()


def test_hooks_on_a_real_text_encoder_layer(tiny_pipe):
    te, tok = tiny_pipe.text_encoder, tiny_pipe.tokenizer
    ids = tok(["a red cat"], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        base = te(ids)[0]
        with capture(te, "text_model.encoder.layers.1") as rec:
            te(ids)
        assert rec.last("text_model.encoder.layers.1").shape == base.shape
        with replace_output(te, "text_model.encoder.layers.1", lambda h: h * 0.5):
            changed = te(ids)[0]
    assert not torch.allclose(base, changed)
    assert torch.equal(te(ids)[0], base)
