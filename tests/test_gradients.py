"""Forward gradients checked against backpropagation."""

import math

import pytest
import torch
from torch import nn

from fwdbwd_lib.gradients import (
    Backprop, ForwardADUnsupportedError, ForwardGradient, build_gradient_method,
    directional_derivative, tangent_seed,
)
from fwdbwd_lib.losses import cross_entropy
from fwdbwd_lib.models.vision import ConvNet, build_mlp, build_resnet18


def _backprop_gradient(model, inputs, targets):
    model.zero_grad(set_to_none=True)
    Backprop()(model, cross_entropy, inputs, targets)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _random_tangents(model, generator):
    return {n: torch.randn(p.shape, generator=generator, dtype=p.dtype)
            for n, p in model.named_parameters() if p.requires_grad}


MODELS = {
    "mlp": lambda: build_mlp(hidden_sizes=(32, 16), image_size=8),
    "mlp_dropout": lambda: build_mlp(hidden_sizes=(32, 16), image_size=8, dropout=0.5),
    "convnet": lambda: ConvNet(image_size=8, width=4, hidden_size=16),
    "convnet_batchnorm": lambda: ConvNet(image_size=8, width=4, hidden_size=16, batch_norm=True),
    "resnet18": lambda: build_resnet18(image_size=8),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_jvp_matches_backprop_dot_tangent(name):
    """∇L·v from forward-mode AD equals the backprop gradient dotted with v (train mode)."""
    torch.manual_seed(0)
    model = MODELS[name]().double().train()
    inputs = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    targets = torch.randint(0, 10, (6,))
    tangents = _random_tangents(model, torch.Generator().manual_seed(1))
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    torch.manual_seed(5)  # the same dropout masks in both passes
    gradient = _backprop_gradient(model, inputs, targets)
    expected = sum((gradient[n] * tangents[n]).sum() for n in tangents)

    for n, b in model.named_buffers():
        b.copy_(buffers[n])
    torch.manual_seed(5)
    loss, derivative, _ = directional_derivative(model, cross_entropy, inputs, targets, tangents)

    assert torch.isfinite(loss)
    relative_error = abs(derivative - expected) / abs(expected)
    assert relative_error < 1e-4, f"jvp {derivative.item()} vs grad·v {expected.item()}"


def test_jvp_matches_backprop_float32():
    """In float32 the two agree to a looser tolerance set by rounding (1e-3 relative)."""
    model = ConvNet(image_size=8, width=4, hidden_size=16, batch_norm=True).train()
    inputs = torch.randn(6, 3, 8, 8)
    targets = torch.randint(0, 10, (6,))
    tangents = _random_tangents(model, torch.Generator().manual_seed(1))
    gradient = _backprop_gradient(model, inputs, targets)
    expected = sum((gradient[n] * tangents[n]).sum() for n in tangents)
    _, derivative, _ = directional_derivative(model, cross_entropy, inputs, targets, tangents)
    assert abs(derivative - expected) / abs(expected) < 1e-3


def test_jvp_matches_backprop_in_eval_mode():
    model = ConvNet(image_size=8, width=4, hidden_size=16, batch_norm=True).double().eval()
    inputs = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    targets = torch.randint(0, 10, (6,))
    tangents = _random_tangents(model, torch.Generator().manual_seed(2))
    gradient = _backprop_gradient(model, inputs, targets)
    expected = sum((gradient[n] * tangents[n]).sum() for n in tangents)
    _, derivative, _ = directional_derivative(model, cross_entropy, inputs, targets, tangents)
    assert abs(derivative - expected) / abs(expected) < 1e-8


class LinearRegression(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.linear = nn.Linear(features, 3)

    def forward(self, inputs):
        return self.linear(inputs)


def _estimates(model, inputs, targets, num_tangents, tangent, repeats, seed=0):
    method = ForwardGradient(num_tangents=num_tangents, tangent=tangent, seed=seed)
    estimates = []
    for step in range(repeats):
        model.zero_grad(set_to_none=True)
        method(model, cross_entropy, inputs, targets, step=step)
        estimates.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    return torch.stack(estimates)  # (repeats, d)


@pytest.fixture(scope="module")
def small_problem():
    torch.manual_seed(0)
    model = LinearRegression(7).double()  # d = 7·3 + 3 = 24 parameters
    inputs = torch.randn(16, 7, dtype=torch.float64)
    targets = torch.randint(0, 3, (16,))
    true_gradient = torch.cat([g.flatten() for g in _backprop_gradient(model, inputs, targets).values()])
    return model, inputs, targets, true_gradient


@pytest.mark.parametrize("tangent, second_moment_offset", [("gaussian", 2), ("rademacher", 0)])
def test_estimator_mean_converges(small_problem, tangent, second_moment_offset):
    """The mean of N estimates is within a bound derived from E‖g‖² of the true gradient.

    For Gaussian v, E‖g − ∇L‖² = (d + 1)‖∇L‖²; for Rademacher v it is at most (d − 1)‖∇L‖².
    The mean of N independent estimates then has E‖ḡ − ∇L‖² ≤ (d + 1)‖∇L‖² / N; the test allows
    four times that, which a biased estimator (say g scaled by 1.2) exceeds.
    """
    model, inputs, targets, true_gradient = small_problem
    d = true_gradient.numel()
    repeats = 4000
    estimates = _estimates(model, inputs, targets, 1, tangent, repeats)
    squared_norm = true_gradient.square().sum()

    error = (estimates.mean(0) - true_gradient).square().sum()
    bound = 4 * (d + 1) * squared_norm / repeats
    assert error < bound, f"‖mean − ∇L‖² = {error:.3e}, bound {bound:.3e}"
    assert bound < 0.2 * squared_norm  # the bound rules out a 20 % bias (0.04‖∇L‖² < error)

    # E‖g‖² = (d + 2)‖∇L‖² for Gaussian v, and d‖∇L‖² for Rademacher v (each v_i² = 1).
    second_moment = estimates.square().sum(1).mean()
    expected = (d + second_moment_offset) * squared_norm
    assert abs(second_moment / expected - 1) < 0.1


def test_estimator_mse_falls_as_one_over_k(small_problem):
    """With K Gaussian tangents E‖ḡ_K − ∇L‖² = (d + 1)‖∇L‖² / K."""
    model, inputs, targets, true_gradient = small_problem
    d = true_gradient.numel()
    squared_norm = true_gradient.square().sum()
    errors = {}
    for k in (1, 4, 16):
        estimates = _estimates(model, inputs, targets, k, "gaussian", repeats=300, seed=k)
        errors[k] = (estimates - true_gradient).square().sum(1).mean()
        expected = (d + 1) * squared_norm / k
        assert abs(errors[k] / expected - 1) < 0.25, f"K={k}: {errors[k]:.3e} vs {expected:.3e}"
    assert 10 < errors[1] / errors[16] < 25


def test_batchnorm_buffers_match_backprop_after_one_step():
    """Running statistics update once per step, whatever K is, and equal backprop's."""
    torch.manual_seed(0)
    reference = ConvNet(image_size=8, width=4, hidden_size=16, batch_norm=True).train()
    inputs = torch.randn(8, 3, 8, 8)
    targets = torch.randint(0, 10, (8,))
    states = {}
    for name, method in [("backprop", Backprop()), ("fg1", ForwardGradient(1)),
                         ("fg4", ForwardGradient(4))]:
        model = ConvNet(image_size=8, width=4, hidden_size=16, batch_norm=True).train()
        model.load_state_dict(reference.state_dict())
        method(model, cross_entropy, inputs, targets)
        states[name] = {n: b.clone() for n, b in model.named_buffers()}
    for name in ("fg1", "fg4"):
        for buffer_name, value in states["backprop"].items():
            assert torch.allclose(states[name][buffer_name], value, atol=1e-6), (name, buffer_name)
    assert states["fg4"]["features.0.1.num_batches_tracked"] == 1


def test_dropout_masks_shared_across_tangents():
    """With dropout, every tangent of a step uses the primal's mask: K copies of one tangent
    give exactly K times one estimate of the same loss."""
    torch.manual_seed(0)
    model = build_mlp(hidden_sizes=(32,), image_size=4, dropout=0.5).double().train()
    inputs = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    targets = torch.randint(0, 10, (5,))

    class SameTangent(ForwardGradient):
        def tangents(self, parameters, step, index):
            return super().tangents(parameters, step, 0)

    torch.manual_seed(3)
    model.zero_grad(set_to_none=True)
    SameTangent(num_tangents=3)(model, cross_entropy, inputs, targets)
    repeated = [p.grad.clone() for p in model.parameters()]
    torch.manual_seed(3)
    model.zero_grad(set_to_none=True)
    ForwardGradient(num_tangents=1)(model, cross_entropy, inputs, targets)
    for a, b in zip(repeated, model.parameters()):
        assert torch.allclose(a, b.grad, rtol=1e-10, atol=1e-12)


def test_frozen_parameters_left_alone():
    model = ConvNet(image_size=8, width=4, hidden_size=16)
    for parameter in model.features.parameters():
        parameter.requires_grad_(False)
    before = [p.clone() for p in model.features.parameters()]
    ForwardGradient()(model, cross_entropy, torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    for parameter, old in zip(model.features.parameters(), before):
        assert parameter.grad is None
        assert torch.equal(parameter, old)
    assert all(p.grad is not None for p in model.classifier.parameters())


def test_tied_parameters_get_one_estimate():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(6, 6, bias=False)
            self.decoder = nn.Linear(6, 6, bias=False)
            self.decoder.weight = self.encoder.weight

        def forward(self, inputs):
            return self.decoder(torch.tanh(self.encoder(inputs)))

    model = Tied().double()
    inputs = torch.randn(4, 6, dtype=torch.float64)
    targets = torch.randint(0, 6, (4,))
    assert len(list(model.parameters())) == 1
    tangents = {"encoder.weight": torch.randn(6, 6, dtype=torch.float64)}
    gradient = _backprop_gradient(model, inputs, targets)["encoder.weight"]
    _, derivative, _ = directional_derivative(model, cross_entropy, inputs, targets, tangents)
    assert abs(derivative - (gradient * tangents["encoder.weight"]).sum()) < 1e-10


def test_tangents_regenerate_from_seed():
    model = build_mlp(hidden_sizes=(8,), image_size=4)
    parameters = dict(model.named_parameters())
    method = ForwardGradient(tangent="rademacher", seed=7)
    first = method.tangents(parameters, step=3, index=1)
    again = ForwardGradient(tangent="rademacher", seed=7).tangents(parameters, step=3, index=1)
    other = method.tangents(parameters, step=3, index=2)
    for name in parameters:
        assert torch.equal(first[name], again[name])
        assert set(first[name].unique().tolist()) <= {-1.0, 1.0}
    assert not all(torch.equal(first[n], other[n]) for n in parameters)
    assert tangent_seed(7, 3, 1) != tangent_seed(7, 1, 3)


def test_forward_gradient_accumulates_like_backward():
    model = build_mlp(hidden_sizes=(8,), image_size=4)
    inputs, targets = torch.randn(3, 3, 4, 4), torch.randint(0, 10, (3,))
    ForwardGradient(seed=1)(model, cross_entropy, inputs, targets, step=0)
    once = [p.grad.clone() for p in model.parameters()]
    ForwardGradient(seed=1)(model, cross_entropy, inputs, targets, step=0)
    for a, p in zip(once, model.parameters()):
        assert torch.allclose(p.grad, 2 * a)


def test_unsupported_operator_names_op_and_workaround():
    class LSTMClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 8, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, inputs):
            return self.head(self.lstm(inputs)[0][:, -1])

    with pytest.raises(ForwardADUnsupportedError) as error:
        ForwardGradient()(LSTMClassifier(), cross_entropy, torch.randn(2, 5, 4),
                          torch.tensor([0, 1]))
    assert "mkldnn_rnn_layer" in str(error.value)
    assert "torch.backends.mkldnn.flags(enabled=False)" in str(error.value)


def test_attention_routed_to_math_kernel():
    """SDPA has no forward AD in its default CPU kernel; the method routes around it."""
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True,
                                       dropout=0.0).double().eval()
    head = nn.Linear(8, 2).double()
    model = nn.Sequential(layer, nn.Flatten(0, 0), nn.Identity())

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = model, head

        def forward(self, inputs):
            return self.head(self.body(inputs).mean(1))

    classifier = Classifier().eval()
    inputs = torch.randn(3, 5, 8, dtype=torch.float64)
    targets = torch.tensor([0, 1, 0])
    tangents = _random_tangents(classifier, torch.Generator().manual_seed(0))
    gradient = _backprop_gradient(classifier, inputs, targets)
    expected = sum((gradient[n] * tangents[n]).sum() for n in tangents)
    _, derivative, _ = directional_derivative(classifier, cross_entropy, inputs, targets, tangents)
    assert abs(derivative - expected) / abs(expected) < 1e-8


def test_unknown_method_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown gradient method 'sideways'"):
        build_gradient_method("sideways")
    with pytest.raises(ValueError, match="num_tangents"):
        ForwardGradient(num_tangents=0)
    with pytest.raises(ValueError, match="tangent distribution 'uniform'"):
        ForwardGradient(tangent="uniform")
    assert math.isclose(build_gradient_method("forward_gradient", num_tangents=3).num_tangents, 3)


def test_calls_without_step_draw_new_tangents():
    model = build_mlp(hidden_sizes=(8,), image_size=4)
    inputs, targets = torch.randn(3, 3, 4, 4), torch.randint(0, 10, (3,))
    method = ForwardGradient(seed=1)
    method(model, cross_entropy, inputs, targets)
    first = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    method(model, cross_entropy, inputs, targets)
    assert not all(torch.allclose(a, p.grad) for a, p in zip(first, model.parameters()))
