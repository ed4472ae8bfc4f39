"""The batched Newton solver (mmv_core.evaluation.svm_solver) against liblinear's optimum.

Each problem is solved by liblinear (scikit-learn's LinearSVC, primal, to a
tolerance of 1e-8) one class at a time, and by the batched solver at its
default tolerance; objectives, coefficients and predictions must agree.
"""

import numpy as np
import pytest
from sklearn import svm

from mmv_core.evaluation import linear_eval
from mmv_core.evaluation import svm_solver


def objective(coef, intercept, features, labels, classes, svm_c):
  """float64 [K]: 0.5 |w|^2 + 0.5 b^2 + C sum max(0, 1 - y (w.x + b))^2, by numpy."""
  y = np.where(labels[:, None] == classes[None, :], 1.0, -1.0)
  margins = features.astype(np.float64) @ coef.T + intercept
  slack = np.maximum(0.0, 1.0 - y * margins)
  return 0.5 * ((coef**2).sum(axis=1) + intercept**2) + svm_c * (slack**2).sum(axis=0)


def relative_gradient_norm(coef, intercept, features, labels, classes, svm_c):
  """float64 [K]: |grad f_k(w)| / |grad f_k(0)|, by numpy in float64."""
  y = np.where(labels[:, None] == classes[None, :], 1.0, -1.0)
  x = np.hstack([features.astype(np.float64), np.ones((len(features), 1))])
  w = np.vstack([coef.T, intercept[None]])
  gradient = w - 2 * svm_c * x.T @ (y * np.maximum(0.0, 1.0 - y * (x @ w)))
  at_zero = -2 * svm_c * x.T @ y
  return np.linalg.norm(gradient, axis=0) / np.linalg.norm(at_zero, axis=0)


def liblinear_one_vs_rest(features, labels, classes, svm_c):
  model = svm.LinearSVC(C=svm_c, dual=False, tol=1e-8, max_iter=100_000)
  model.fit(features.astype(np.float64), labels)
  assert list(model.classes_) == list(classes)
  return model.coef_, model.intercept_


def make_problem(kind: str, seed: int = 0):
  """(standardised float32 features [N, D], labels [N], C) of one kind of problem."""
  rng = np.random.default_rng(seed)
  num_classes, n, d, signal, svm_c = 6, 600, 24, 1.0, 0.01
  weights = None
  if kind == "imbalanced":
    weights = np.array([40, 20, 10, 5, 2, 1], float)
  elif kind == "nearly_separable":
    signal = 6.0
  elif kind == "overlapping":
    signal = 0.1
  elif kind == "d_greater_than_n":
    n, d = 60, 200
  elif kind == "large_c":
    svm_c = 1.0
  labels = rng.choice(num_classes, size=n, p=None if weights is None else weights / weights.sum())
  means = signal * rng.standard_normal((num_classes, d))
  # Correlated features, as network embeddings are: a shared low-rank part.
  shared = rng.standard_normal((n, 3)) @ rng.standard_normal((3, d))
  features = means[labels] + shared + rng.standard_normal((n, d))
  features = (features - features.mean(axis=0)) / features.std(axis=0)
  return features.astype(np.float32), labels, svm_c


@pytest.mark.parametrize(
    "kind",
    ["balanced", "imbalanced", "nearly_separable", "overlapping", "d_greater_than_n", "large_c"],
)
def test_same_optimum_as_liblinear(kind):
  features, labels, svm_c = make_problem(kind)
  classes = np.unique(labels)
  ref_coef, ref_intercept = liblinear_one_vs_rest(features, labels, classes, svm_c)

  fit = svm_solver.solve(features, labels, classes, svm_c)

  assert fit.converged.all() and (fit.relative_gradient_norm <= 1e-5).all()
  # The reported convergence is the solution's (to float32 rounding, a tenth
  # of the tolerance), not the solver's running estimate.
  true_relative = relative_gradient_norm(fit.coef, fit.intercept, features, labels, classes, svm_c)
  np.testing.assert_allclose(true_relative, fit.relative_gradient_norm, rtol=0.02, atol=1e-6)
  assert (true_relative <= 1e-5).all()
  ref_objective = objective(ref_coef, ref_intercept, features, labels, classes, svm_c)
  ours = objective(fit.coef, fit.intercept, features, labels, classes, svm_c)
  np.testing.assert_allclose(fit.objective, ours, rtol=1e-6)
  np.testing.assert_allclose(ours, ref_objective, rtol=1e-6)
  scale = np.abs(ref_coef).max()
  np.testing.assert_allclose(fit.coef, ref_coef, atol=2e-3 * scale)
  np.testing.assert_allclose(fit.intercept, ref_intercept, atol=2e-3 * scale)
  rng = np.random.default_rng(1)
  probe = np.concatenate([features, rng.standard_normal(features.shape).astype(np.float32)])
  np.testing.assert_array_equal(
      (probe @ fit.coef.T + fit.intercept).argmax(axis=1),
      (probe @ ref_coef.T + ref_intercept).argmax(axis=1),
  )


def test_iteration_limit_leaves_classes_unconverged():
  features, labels, _ = make_problem("large_c")
  fit = svm_solver.solve(
      features, labels, np.unique(labels), 10.0, settings=svm_solver.SolverSettings(max_iter=1)
  )
  assert (fit.iterations <= 1).all()
  assert not fit.converged.all()
  assert (fit.relative_gradient_norm[~fit.converged] > 1e-5).all()


def test_classifier_matches_linearsvc_and_gives_absent_classes_no_score():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 4, 500)  # Class 4 of 5 has no training clips.
  # Raw (unstandardised) features with offsets and scales of their own.
  features = (
      (rng.standard_normal((500, 10)) + labels[:, None] * 0.4) * rng.uniform(0.1, 5, 10)
      + rng.uniform(-3, 3, 10)
  ).astype(np.float32)
  liblinear = linear_eval.SvmSettings(
      solver=linear_eval.SOLVER_LIBLINEAR, dual=False, tol=1e-8, max_iter=100_000
  )
  reference = linear_eval.fit_classifier(features, labels, 5, 0.01, liblinear)
  ours = linear_eval.fit_classifier(features, labels, 5, 0.01)

  assert ours.intercept[4] == -np.inf and reference.intercept[4] == -np.inf
  np.testing.assert_allclose(ours.mean, reference.mean, rtol=1e-6)
  np.testing.assert_allclose(ours.scale, reference.scale, rtol=1e-6)
  np.testing.assert_allclose(ours.coef, reference.coef, atol=1e-3 * np.abs(reference.coef).max())
  np.testing.assert_array_equal(
      ours.decision_function(features).argmax(axis=1),
      reference.decision_function(features).argmax(axis=1),
  )
  convergence = ours.convergence()
  assert convergence["iterations"][4] is None and convergence["iterations"][0] >= 1
  assert all(g <= 1e-5 for g in convergence["relative_gradient_norm"][:4])


def test_sweep_fits_each_c_as_a_separate_fit_would():
  features, labels, _ = make_problem("overlapping", seed=4)
  rows = np.arange(0, len(labels), 2)
  swept = linear_eval.fit_classifiers(features, labels[rows], 6, (0.1, 0.001, 0.01), rows=rows)
  assert [c.svm_c for c in swept] == [0.1, 0.001, 0.01]
  for classifier in swept:
    alone = linear_eval.fit_classifier(features[rows], labels[rows], 6, classifier.svm_c)
    np.testing.assert_array_equal(
        classifier.decision_function(features).argmax(axis=1),
        alone.decision_function(features).argmax(axis=1),
    )
    np.testing.assert_allclose(classifier.coef, alone.coef, atol=1e-3 * np.abs(alone.coef).max())


def test_unconverged_fit_is_refused_naming_c_and_the_flag():
  features, labels, _ = make_problem("large_c")
  settings = linear_eval.SvmSettings(max_iter=1)
  with pytest.raises(linear_eval.NotConvergedError, match=r"C=10: .*--svm_max_iter"):
    linear_eval.fit_classifier(features, labels, 6, 10.0, settings)
