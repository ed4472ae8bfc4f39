"""One-vs-rest linear SVMs for every class at once, by matrix-matrix products.

The problem is LinearSVC's (squared hinge loss, L2 penalty, bias learnt as a
weight on a constant-1 feature, so it is penalised too, as liblinear does
with `intercept_scaling=1`). For every class k, independently:

    minimise  f_k(w, b) = 0.5 * (|w|^2 + b^2)
                          + C * sum_i max(0, 1 - y_ik * (w . x_i + b))^2

with y_ik = +1 where clip i is of class k and -1 otherwise.

Method: Newton's method on the generalised Hessian, as liblinear's primal
solver, but with all classes in one pass over the features:
  - margins, gradients and Hessian-vector products of every class are
    products of the [N, D] features with a [D, K] block (one BLAS call
    serves all K classes, where liblinear runs K matrix-vector loops);
  - each Newton direction is found by preconditioned conjugate gradients;
    the preconditioner is one Cholesky factor shared by all classes, of
    `I + 2C X~' X~` (X~ = [X, 1]): every class's exact Hessian at w = 0, where
    every clip is in every class's active set, so the first Newton step is
    exact, and a close one after. The Gram matrix X~' X~ does not depend on
    C, so a sweep over C computes it once (`gram`);
  - the step length comes from a backtracking line search on each class's
    exact objective, which costs no product with the features (the margins
    move along the direction's own margins, kept from the CG iterations).

Written with numpy over BLAS: on the 2-core development machine its float32
products ran on par with XLA's CPU ones, and the set of classes still
iterating shrinks as classes converge, which under `jax.jit` would compile
again for every new shape (bench/README.md).

Every solve starts from w = 0: warm starts from a neighbouring C's solution
were measured to take as many Newton iterations and lose the exact first
step.

A class has converged when |grad f_k(w)| <= tol * |grad f_k(0)|, the
relative criterion of liblinear's primal solver, checked once more on
margins computed afresh from w (the iterations move them by each
direction's own margins, which accumulates float32 rounding).

Memory: the standardised features (float32 [N, D], the caller's), the
[D + 1, D + 1] Gram matrix and its factor, and a few [N, K] arrays; nothing
is copied per class.
"""

import dataclasses

import numpy as np
from scipy import linalg
import threadpoolctl

# Sufficient decrease of the line search (Armijo) and its step shrink factor.
_ARMIJO = 1e-4
_BACKTRACK = 0.5
_MAX_BACKTRACKS = 30


@dataclasses.dataclass(frozen=True)
class SolverSettings:
  """Stopping rules.

  Attributes:
    tol: a class has converged when its gradient norm is at most `tol` times
      its gradient norm at zero (liblinear's default is 1e-4; ours is stricter).
    max_iter: Newton iterations at most; a class still unconverged then is
      reported as such (`OneVsRestFit.converged`).
    cg_tol: each Newton direction solves the Newton system to a residual of
      `cg_tol` times the gradient norm (liblinear's inexact Newton uses 0.1).
    max_cg_iter: conjugate-gradient iterations per Newton iteration at most.
  """

  tol: float = 1e-5
  max_iter: int = 1000
  cg_tol: float = 0.1
  max_cg_iter: int = 500


@dataclasses.dataclass
class OneVsRestFit:
  """The solution of every class's problem.

  Attributes:
    coef: float64 [K, D].
    intercept: float64 [K].
    iterations: int64 [K], Newton iterations each class took.
    relative_gradient_norm: float64 [K], final |grad| / |grad at zero|.
    converged: bool [K].
    objective: float64 [K], each class's f_k at the solution.
  """

  coef: np.ndarray
  intercept: np.ndarray
  iterations: np.ndarray
  relative_gradient_norm: np.ndarray
  converged: np.ndarray
  objective: np.ndarray


def _column_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[K] dot products of matching columns of two [M, K] arrays."""
  return np.einsum("mk,mk->k", a, b)


class _Problem:
  """The features, targets and C of one solve; products with X live here.

  Weights are [D + 1, K] float64 blocks, the last row the bias.
  """

  def __init__(self, features: np.ndarray, targets: np.ndarray, svm_c: float):
    self.x = features
    self.y = targets
    self.c = svm_c

  def margins(self, w: np.ndarray) -> np.ndarray:
    """float32 [N, K] = X w + b for a [D + 1, K] block."""
    z = self.x @ w[:-1].astype(np.float32)
    z += w[-1].astype(np.float32)
    return z

  def transposed(self, r: np.ndarray) -> np.ndarray:
    """float64 [D + 1, K] = [X' r; 1' r] for an [N, K] block."""
    top = (self.x.T @ r.astype(np.float32, copy=False)).astype(np.float64)
    return np.vstack([top, r.sum(axis=0, keepdims=True)])

  def slack(self, z: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
    """float64 [N, k] = max(0, 1 - y z) of the given classes (default all), z float64.

    Positive exactly where a clip is in the class's active set.
    """
    y = self.y if cols is None else self.y[:, cols]
    slack = y * z
    np.subtract(1.0, slack, out=slack)
    return np.maximum(slack, 0.0, out=slack)

  def objective(self, w: np.ndarray, slack: np.ndarray) -> np.ndarray:
    """float64 [K], each class's f_k, from its weights and slacks."""
    return 0.5 * _column_dot(w, w) + self.c * _column_dot(slack, slack)

  def gradient(self, w: np.ndarray, slack: np.ndarray) -> np.ndarray:
    """float64 [D + 1, K], each class's gradient of f_k."""
    return w - 2.0 * self.c * self.transposed(self.y * slack)


def gram(features: np.ndarray) -> np.ndarray:
  """float64 [D + 1, D + 1] = X~' X~ for float32 [N, D] features, X~ = [X, 1]."""
  n, d = features.shape
  product = np.empty((d + 1, d + 1))
  product[:d, :d] = features.T @ features
  product[:d, d] = product[d, :d] = features.sum(axis=0, dtype=np.float64)
  product[d, d] = n
  return product


def _preconditioner(gram_matrix: np.ndarray, svm_c: float) -> np.ndarray:
  """float32 [D + 1, D + 1] inverse of I + 2C X~' X~, every class's Hessian at w = 0.

  Kept as an explicit inverse so that applying it is one matrix product
  rather than two triangular solves per CG iteration. The factorisation runs
  on one BLAS thread: OpenBLAS's threaded Cholesky was measured 7 to 20
  times slower than its serial one at this size on a busy 2-core machine.
  """
  matrix = 2.0 * svm_c * gram_matrix
  matrix[np.diag_indices_from(matrix)] += 1.0
  with threadpoolctl.threadpool_limits(1, user_api="blas"):
    factor = linalg.cho_factor(matrix, lower=True, check_finite=False)
    inverse = linalg.cho_solve(factor, np.eye(len(matrix)), check_finite=False)
  return inverse.astype(np.float32)


def _apply(preconditioner: np.ndarray, residual: np.ndarray) -> np.ndarray:
  """float64 [D + 1, k]: the preconditioner times a residual block, in float32."""
  return (preconditioner @ residual.astype(np.float32)).astype(np.float64)


def _newton_direction(
    problem: _Problem,
    gradient: np.ndarray,
    active: np.ndarray,
    preconditioner: np.ndarray,
    settings: SolverSettings,
) -> tuple[np.ndarray, np.ndarray]:
  """Solves H_k s_k = -g_k for every column by preconditioned CG.

  H_k = I + 2C X~' diag(active_k) X~, the generalised Hessian of class k.

  Returns:
    (s float64 [D + 1, K], X~ s float32 [N, K]).
  """
  step = np.zeros_like(gradient)
  step_margins = np.zeros(active.shape, np.float32)
  residual = -gradient
  target = settings.cg_tol * np.linalg.norm(gradient, axis=0)
  preconditioned = _apply(preconditioner, residual)
  direction = preconditioned.copy()
  rho = _column_dot(residual, preconditioned)
  live = np.linalg.norm(residual, axis=0) > target
  for _ in range(settings.max_cg_iter):
    if not live.any():
      break
    cols = np.flatnonzero(live)
    p = direction[:, cols]
    xp = problem.margins(p)
    hp = p + 2.0 * problem.c * problem.transposed(active[:, cols] * xp)
    alpha = rho[cols] / _column_dot(p, hp)
    step[:, cols] += alpha * p
    step_margins[:, cols] += alpha.astype(np.float32) * xp
    residual[:, cols] -= alpha * hp
    still = np.linalg.norm(residual[:, cols], axis=0) > target[cols]
    live[cols] = still
    cols = cols[still]
    if not len(cols):
      break
    z = _apply(preconditioner, residual[:, cols])
    rho_new = _column_dot(residual[:, cols], z)
    direction[:, cols] = z + (rho_new / rho[cols]) * direction[:, cols]
    rho[cols] = rho_new
  return step, step_margins


def _line_search(
    problem: _Problem,
    w: np.ndarray,
    z: np.ndarray,
    step: np.ndarray,
    step_margins: np.ndarray,
    gradient: np.ndarray,
    objective: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
  """Step lengths satisfying Armijo's condition, per class.

  The objective along a direction needs only the margins, so each trial is
  O(N K), never a product with the features.

  Returns:
    (float64 [K] step lengths, bool [K] whether one was found: a class
    whose direction no longer decreases its objective, at the limit of
    float32 products, has none).
  """
  slope = _column_dot(gradient, step)
  ww, ws, ss = _column_dot(w, w), _column_dot(w, step), _column_dot(step, step)
  eta = np.ones(w.shape[1])
  pending = np.ones(w.shape[1], dtype=bool)
  for _ in range(_MAX_BACKTRACKS):
    cols = np.flatnonzero(pending)
    if not len(cols):
      break
    e = eta[cols]
    slack = problem.slack(z[:, cols] + e * step_margins[:, cols], cols)
    trial = 0.5 * (ww[cols] + 2 * e * ws[cols] + e * e * ss[cols]) + problem.c * _column_dot(
        slack, slack
    )
    ok = trial <= objective[cols] + _ARMIJO * e * slope[cols]
    pending[cols[ok]] = False
    eta[cols[~ok]] *= _BACKTRACK
  return eta, ~pending


def solve(
    features: np.ndarray,
    labels: np.ndarray,
    classes: np.ndarray,
    svm_c: float,
    *,
    gram_matrix: np.ndarray | None = None,
    settings: SolverSettings = SolverSettings(),
) -> OneVsRestFit:
  """Fits one-vs-rest squared-hinge SVMs for `classes`, all at once, from zero.

  Args:
    features: float32 [N, D], standardised (used as given; not copied).
    labels: int [N].
    classes: int [K], the positive label of each problem.
    svm_c: C > 0.
    gram_matrix: `gram(features)`, if already computed (it does not depend on C).
    settings: stopping rules.
  """
  features = np.asarray(features, np.float32)
  targets = np.where(labels[:, None] == np.asarray(classes)[None, :], np.float32(1), np.float32(-1))
  problem = _Problem(features, targets, svm_c)
  num_classes = len(classes)
  preconditioner = _preconditioner(gram(features) if gram_matrix is None else gram_matrix, svm_c)
  w = np.zeros((features.shape[1] + 1, num_classes))
  z = np.zeros(targets.shape)
  slack = problem.slack(z)
  objective = problem.objective(w, slack)
  gradient = problem.gradient(w, slack)
  initial_norm = np.linalg.norm(gradient, axis=0)
  relative = (initial_norm > 0).astype(np.float64)
  iterations = np.zeros(num_classes, np.int64)
  stalled = np.zeros(num_classes, dtype=bool)
  verified = False
  while True:
    cols = np.flatnonzero((relative > settings.tol) & ~stalled & (iterations < settings.max_iter))
    if not len(cols):
      if verified:
        break
      # The margins moved by float32 direction margins, step after step:
      # convergence counts only on margins computed afresh from w.
      z = problem.margins(w).astype(np.float64)
      slack = problem.slack(z)
      objective = problem.objective(w, slack)
      gradient = problem.gradient(w, slack)
      relative = np.linalg.norm(gradient, axis=0) / np.where(initial_norm > 0, initial_norm, 1.0)
      verified = True
      continue
    verified = False
    sub = _Problem(features, targets[:, cols], svm_c)
    active = slack[:, cols] > 0
    step, step_margins = _newton_direction(sub, gradient[:, cols], active, preconditioner, settings)
    eta, moved = _line_search(
        sub, w[:, cols], z[:, cols], step, step_margins, gradient[:, cols], objective[cols]
    )
    if not moved.all():
      stalled[cols[~moved]] = True
      cols, eta, step, step_margins = (
          cols[moved],
          eta[moved],
          step[:, moved],
          step_margins[:, moved],
      )
      sub = _Problem(features, targets[:, cols], svm_c)
    w[:, cols] += eta * step
    z[:, cols] += eta * step_margins
    slack[:, cols] = sub.slack(z[:, cols])
    objective[cols] = sub.objective(w[:, cols], slack[:, cols])
    gradient[:, cols] = sub.gradient(w[:, cols], slack[:, cols])
    relative[cols] = np.linalg.norm(gradient[:, cols], axis=0) / initial_norm[cols]
    iterations[cols] += 1
  return OneVsRestFit(
      coef=w[:-1].T.copy(),
      intercept=w[-1].copy(),
      iterations=iterations,
      relative_gradient_norm=relative,
      converged=relative <= settings.tol,
      objective=objective,
  )
