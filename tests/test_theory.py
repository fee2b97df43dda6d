import math

import pytest
import torch

from fwdbwd_lib import theory


@pytest.mark.parametrize(
    ("tangent", "d", "k", "variance", "cosine_sq"),
    [
        ("gaussian", 10, 1, 11.0, 0.1),
        ("gaussian", 10, 4, 11 / 4, 4 / 13),
        ("rademacher", 10, 1, 9.0, 0.1),
        ("rademacher", 1, 8, 0.0, 1.0),
    ],
)
def test_predicted_statistics_values(tangent, d, k, variance, cosine_sq):
    predicted = theory.predicted_statistics(d, k, tangent)

    assert predicted["relative_variance"] == pytest.approx(variance)
    assert predicted["relative_second_moment"] == pytest.approx(1 + variance)
    assert predicted["cosine_sq"] == pytest.approx(cosine_sq)


def test_predicted_cosine_unknown_for_rademacher_k():
    assert math.isnan(theory.predicted_statistics(16, 4, "rademacher")["cosine_sq"])


def test_directional_derivatives_match_backprop():
    problem = theory.make_problem(d=32, seed=3)
    gradient = theory.backprop_gradient(problem.loss, problem.weights)
    tangents = theory.sample_tangents(5, 32, "gaussian", torch.Generator().manual_seed(0))

    derivatives = theory.directional_derivatives(problem.loss, problem.weights, tangents)

    assert derivatives.shape == (5,)
    torch.testing.assert_close(derivatives, tangents @ gradient)


@pytest.mark.parametrize("tangent", theory.TANGENT_DISTRIBUTIONS)
def test_sample_tangents_identity_covariance(tangent):
    tangents = theory.sample_tangents(20_000, 4, tangent, torch.Generator().manual_seed(0))
    covariance = tangents.T @ tangents / len(tangents)

    torch.testing.assert_close(covariance, torch.eye(4, dtype=torch.float64), atol=0.05, rtol=0)


def test_rademacher_tangents_are_signs():
    tangents = theory.sample_tangents(100, 8, "rademacher", torch.Generator().manual_seed(0))

    assert set(tangents.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize(
    ("tangent", "d", "k"), [("gaussian", 64, 1), ("gaussian", 64, 8), ("rademacher", 64, 1)]
)
def test_measurement_matches_prediction(tangent, d, k):
    result = theory.measure_estimator(d, k, num_samples=2000, tangent=tangent, seed=1)

    # Five standard errors: a false failure is very unlikely, a wrong formula is off by far more.
    variance_error = abs(result["relative_variance"] - result["predicted_relative_variance"])
    cosine_error = abs(result["cosine_sq"] - result["predicted_cosine_sq"])
    assert variance_error < 5 * result["relative_variance_se"]
    assert cosine_error < 5 * result["cosine_sq_se"]
    assert result["relative_bias"] < 5 * math.sqrt(result["predicted_relative_variance"] / 2000)


def test_single_tangent_cosine_nonnegative():
    samples = theory.sample_estimates(32, 1, num_samples=500, tangent="gaussian")

    assert (samples["cosine"] >= -1e-12).all()


def test_measurement_is_seeded():
    first = theory.measure_estimator(16, 2, num_samples=50, seed=5)
    second = theory.measure_estimator(16, 2, num_samples=50, seed=5)

    assert first == second


def test_theory_table_rows():
    table = theory.theory_table([4, 8], [1, 2], num_samples=20)

    assert len(table) == 2 * 2 * 2
    assert set(table["tangent"]) == set(theory.TANGENT_DISTRIBUTIONS)
    assert theory.comparison_table(table, num_tangents=2).shape == (4, 4)


def test_invalid_arguments_rejected():
    with pytest.raises(ValueError, match="tangent"):
        theory.measure_estimator(4, 1, 10, tangent="uniform")
    with pytest.raises(ValueError, match="num_tangents"):
        theory.measure_estimator(4, 0, 10)
    with pytest.raises(ValueError, match="d must"):
        theory.predicted_statistics(0, 1)


def test_figures_have_titles_and_slider():
    table = theory.theory_table([4, 8], [1, 2], num_samples=20)

    variance = theory.variance_figure(table)
    cosine = theory.cosine_figure(table)

    assert variance.layout.title.text
    assert cosine.layout.title.text
    assert variance.layout.xaxis.title.text == "parameter count d"
    assert [step.label for step in variance.layout.sliders[0].steps] == ["1", "2"]
    assert sum(bool(trace.visible) for trace in variance.data) == 4
