"""Search policy: an independent truncated normal per θ dimension, trained with clipped PPO.

Every θ dimension lives in [0, 1]. The policy samples each dimension independently from a normal
distribution with mean μ_d and a shared standard deviation σ, truncated to [0, 1]. The mean is
parameterised in logit space, ``μ = sigmoid(z)``, so that any Adam step keeps it strictly inside
(0, 1); σ is not learned but follows a schedule over the rounds of the search.

Implementation: numpy + scipy only (no torch). Samples are drawn by inverse-CDF,
``scipy.stats.truncnorm.ppf`` applied to uniforms from the policy's own ``numpy.random.Generator``
(PCG64), so a sample is a deterministic function of the generator state. Log-densities and the
gradient of the PPO objective with respect to ``z`` are written out analytically (the truncated
normal has a closed-form derivative in its location), and Adam is a few lines of numpy. This keeps
every piece of state a plain float or int that survives a JSON round trip exactly, so a search
resumed from :meth:`TruncatedNormalPolicy.state_dict` continues bit-identically.

**Clipping scheme: per-dimension ratios, each clipped on its own.** Because the policy factorises
over dimensions, ``log π(θ) = Σ_d log π_d(θ_d)`` and each μ_d only affects its own factor. The
surrogate used here is

    J(z) = 1/n Σ_i Σ_d min(ρ_id A_i, clip(ρ_id, 1 - ε, 1 + ε) A_i),
    ρ_id = π_d(θ_id) / π_d,old(θ_id),

i.e. every dimension is its own PPO problem that shares the candidates' advantages. The joint
alternatives were rejected on purpose:

* clipping the *joint* ratio ``Π_d ρ_id`` to [1 - ε, 1 + ε] is far too tight in 41-82 dimensions:
  tiny moves of every coordinate multiply to a ratio outside the band, so the gradient of almost
  every sample is switched off after the first step;
* clipping each ``ρ_id`` and then multiplying allows the joint ratio to reach ``(1 + ε)^d``
  (``1.1^82 ≈ 2500``), which is no trust region at all.

Per-dimension clipping gives each coordinate a trust region of roughly ``ε σ`` per round in θ
units, whatever the dimension of the space.

**σ schedule.** ``σ_r`` for round ``r`` follows :class:`~paploss.search.settings.SigmaSchedule`; the default decays
geometrically from 0.2 to 0.02 over 40 rounds (``σ_r = 0.2 · 0.1^(r / 39)``) and stays at 0.02
afterwards. A geometric decay shrinks the exploration radius by the same factor every round, which
matches the per-round trust region of about ``ε σ_r``. Linear, cosine and constant schedules are
available.

**PPO step.** Advantages are ``A_i = r_i - b`` with ``b`` the mean reward of the round, or the
reward of the policy mean itself when the caller scores it and passes it as ``baseline``; they are
then divided by their root mean square (the scale of the reward does not matter and a round whose
rewards are all equal does not move μ). The round mean is the default: with a curved reward in many
dimensions nearly every sample scores below μ itself, so a μ baseline makes almost all advantages
negative and the update much noisier (on the 41-dimensional quadratic test reward it ends about
twice as far from the optimum after 40 rounds). Each round runs ``num_steps = 100`` Adam steps
(betas 0.9/0.999) on the full batch; the step size is ``lr · σ_r / σ_0`` (the trust region shrinks
with σ, so does the step), with a linear warm-up over the first 10 steps and a cosine decay to zero
over the rest. The Adam moments persist across rounds and are part of the state.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import numpy as np
from scipy import special, stats

from paploss.search.settings import PPOConfig, SigmaSchedule

__all__ = ["UpdateStats", "TruncatedNormalPolicy"]

_STATE_FORMAT = "paploss.search.TruncatedNormalPolicy"
_STATE_VERSION = 1
# Bound on |logit(μ)|: keeps μ within about [4.5e-5, 1 - 4.5e-5].
_MAX_ABS_LOGIT = 10.0


@dataclass(frozen=True)
class UpdateStats:
    """What one PPO update did; every field is a plain float or int.

    Attributes:
        round: index of the round whose candidates were used.
        num_samples: number of candidates.
        sigma: σ the candidates were sampled with.
        baseline: reward subtracted to form the advantages.
        advantage_scale: root mean square of ``reward - baseline`` (advantages were divided by it
            when ``normalize_advantages``); 0 means μ did not move.
        mean_shift_l2: ``‖μ_new - μ_old‖₂`` in θ units.
        mean_shift_max: ``max_d |μ_new - μ_old|`` in θ units.
        clip_fraction: fraction of (candidate, dimension) ratios outside [1 - ε, 1 + ε] after the
            update.
        approx_kl: mean over candidates of ``Σ_d (log π_old - log π_new)``.
        objective_before: per-dimension mean of the surrogate objective before the update.
        objective_after: the same after the update.
    """

    round: int
    num_samples: int
    sigma: float
    baseline: float
    advantage_scale: float
    mean_shift_l2: float
    mean_shift_max: float
    clip_fraction: float
    approx_kl: float
    objective_before: float
    objective_after: float

    def to_dict(self) -> Dict[str, Any]:
        """Return the statistics as a JSON-able dict."""
        return dataclasses.asdict(self)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


class TruncatedNormalPolicy:
    """Independent truncated normal on [0, 1] per dimension with a PPO-trained mean.

    Example::

        policy = TruncatedNormalPolicy(space.identity_theta(), seed=0)
        for _ in range(num_rounds):
            thetas = policy.sample(8)
            rewards = [score(t) for t in thetas]
            policy.update(thetas, rewards)

    Args:
        initial_mean: ``[D]`` initial μ in [0, 1]; values are clamped to
            ``[sigmoid(-10), sigmoid(10)]`` so that ``logit(μ)`` is finite.
        sigma_schedule: σ per round.
        ppo: hyper-parameters of the update.
        seed: seed of the policy's random generator (PCG64).
    """

    def __init__(
        self,
        initial_mean: np.ndarray,
        *,
        sigma_schedule: SigmaSchedule = SigmaSchedule(),
        ppo: PPOConfig = PPOConfig(),
        seed: int = 0,
    ) -> None:
        mean = np.asarray(initial_mean, dtype=np.float64)
        if mean.ndim != 1 or mean.size == 0:
            raise ValueError(f"initial_mean must have shape [D] with D >= 1, got {mean.shape}")
        if not np.all(np.isfinite(mean)) or np.any(mean < 0) or np.any(mean > 1):
            raise ValueError("initial_mean must be finite and lie in [0, 1]")
        if int(seed) != seed:
            raise ValueError(f"seed must be an int, got {seed!r}")
        self._sigma_schedule = sigma_schedule
        self._ppo = ppo
        self._seed = int(seed)
        self._logit_mean = np.clip(_logit(mean), -_MAX_ABS_LOGIT, _MAX_ABS_LOGIT)
        self._round = 0
        self._adam_step = 0
        self._exp_avg = np.zeros_like(self._logit_mean)
        self._exp_avg_sq = np.zeros_like(self._logit_mean)
        self._rng = np.random.default_rng(self._seed)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Number of θ dimensions."""
        return int(self._logit_mean.size)

    @property
    def mean(self) -> np.ndarray:
        """``[D]`` current mean μ in (0, 1) (a copy)."""
        return special.expit(self._logit_mean)

    @property
    def sigma(self) -> float:
        """σ used by :meth:`sample` in the current round."""
        return self._sigma_schedule(self._round)

    @property
    def round(self) -> int:
        """Index of the current round: the number of updates done so far."""
        return self._round

    @property
    def sigma_schedule(self) -> SigmaSchedule:
        return self._sigma_schedule

    @property
    def ppo(self) -> PPOConfig:
        return self._ppo

    @property
    def rng(self) -> np.random.Generator:
        """The policy's own random generator (its state is part of :meth:`state_dict`)."""
        return self._rng

    # ------------------------------------------------------------------ sampling / density
    def sample(self, n: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """Draw ``n`` candidates from the current distribution.

        Args:
            n: number of candidates (>= 0).
            rng: generator to draw from; the policy's own generator when ``None`` (the usual case:
                its state is saved with the policy, so a resumed search draws the same candidates).

        Returns:
            ``[n, D]`` float64 array with values in [0, 1].
        """
        if int(n) != n or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        generator = self._rng if rng is None else rng
        uniforms = generator.random((int(n), self.dim))
        mu, sigma = self.mean, self.sigma
        lower, upper = -mu / sigma, (1.0 - mu) / sigma
        samples = stats.truncnorm.ppf(uniforms, lower, upper, loc=mu, scale=sigma)
        return np.clip(np.asarray(samples, dtype=np.float64).reshape(int(n), self.dim), 0.0, 1.0)

    def log_prob(self, thetas: np.ndarray, per_dimension: bool = False) -> np.ndarray:
        """Log-density of candidates under the current distribution.

        Args:
            thetas: ``[N, D]`` candidates in [0, 1].
            per_dimension: return ``[N, D]`` per-dimension terms instead of their ``[N]`` sums.
        """
        thetas = self._check_thetas(thetas)
        terms = _truncnorm_logpdf(thetas, self.mean, self.sigma)
        return terms if per_dimension else terms.sum(axis=1)

    # ------------------------------------------------------------------ PPO
    def update(
        self,
        thetas: np.ndarray,
        rewards: np.ndarray,
        baseline: Optional[float] = None,
    ) -> UpdateStats:
        """One PPO update from the scored candidates of the current round; advances the round.

        The candidates must have been sampled in the current round (same μ and σ): they define the
        old policy of the ratios. Trials that crashed should be left out; trials that diverged
        should be passed with their penalty reward.

        Args:
            thetas: ``[N, D]`` candidates of this round (N >= 1).
            rewards: ``[N]`` finite rewards.
            baseline: reward subtracted to form the advantages; the mean of ``rewards`` when
                ``None`` (pass the reward of μ itself when it was scored).

        Returns:
            Statistics of the update.
        """
        thetas = self._check_thetas(thetas)
        rewards = np.asarray(rewards, dtype=np.float64)
        if rewards.shape != (thetas.shape[0],):
            raise ValueError(
                f"rewards must have shape [{thetas.shape[0]}] to match thetas, got {rewards.shape}"
            )
        if thetas.shape[0] == 0:
            raise ValueError("update needs at least one candidate")
        if not np.all(np.isfinite(rewards)):
            raise ValueError("rewards must be finite (give diverged trials a finite penalty)")
        if baseline is None:
            baseline = float(rewards.mean())
        elif not math.isfinite(baseline):
            raise ValueError(f"baseline must be finite, got {baseline}")

        advantages = rewards - baseline
        scale = float(np.sqrt(np.mean(advantages**2)))
        if self._ppo.normalize_advantages:
            advantages = advantages / scale if scale > 0 else np.zeros_like(advantages)

        sigma = self.sigma
        mean_old = self.mean
        logp_old = _truncnorm_logpdf(thetas, mean_old, sigma)
        objective_before = self._surrogate(thetas, advantages, logp_old, self._logit_mean, sigma)[0]

        base_lr = self._ppo.lr * sigma / self._sigma_schedule.initial
        beta1, beta2 = self._ppo.betas
        if scale > 0:
            for step in range(self._ppo.num_steps):
                _, grad = self._surrogate(thetas, advantages, logp_old, self._logit_mean, sigma)
                # Gradient ascent on the surrogate == Adam descent on its negative.
                grad = -grad
                self._adam_step += 1
                self._exp_avg = beta1 * self._exp_avg + (1 - beta1) * grad
                self._exp_avg_sq = beta2 * self._exp_avg_sq + (1 - beta2) * grad * grad
                m_hat = self._exp_avg / (1 - beta1**self._adam_step)
                v_hat = self._exp_avg_sq / (1 - beta2**self._adam_step)
                step_size = self._ppo.step_size(step, base_lr)
                self._logit_mean = self._logit_mean - step_size * m_hat / (
                    np.sqrt(v_hat) + self._ppo.adam_eps
                )
                np.clip(self._logit_mean, -_MAX_ABS_LOGIT, _MAX_ABS_LOGIT, out=self._logit_mean)

        objective_after = self._surrogate(thetas, advantages, logp_old, self._logit_mean, sigma)[0]
        logp_new = _truncnorm_logpdf(thetas, self.mean, sigma)
        log_ratio = logp_new - logp_old
        eps = self._ppo.clip_epsilon
        ratio = np.exp(log_ratio)
        result = UpdateStats(
            round=self._round,
            num_samples=int(thetas.shape[0]),
            sigma=float(sigma),
            baseline=float(baseline),
            advantage_scale=scale,
            mean_shift_l2=float(np.linalg.norm(self.mean - mean_old)),
            mean_shift_max=float(np.max(np.abs(self.mean - mean_old))),
            clip_fraction=float(np.mean((ratio < 1 - eps) | (ratio > 1 + eps))),
            approx_kl=float(np.mean(np.sum(-log_ratio, axis=1))),
            objective_before=float(objective_before),
            objective_after=float(objective_after),
        )
        self._round += 1
        return result

    def _surrogate(
        self,
        thetas: np.ndarray,
        advantages: np.ndarray,
        logp_old: np.ndarray,
        logit_mean: np.ndarray,
        sigma: float,
    ) -> tuple:
        """Per-dimension clipped surrogate and its gradient with respect to ``logit_mean``.

        Returns:
            ``(objective, grad)``: the objective averaged over candidates and dimensions, and the
            ``[D]`` gradient of ``1/N Σ_i Σ_d min(ρ A, clip(ρ) A)``.
        """
        eps = self._ppo.clip_epsilon
        mu = special.expit(logit_mean)
        logp = _truncnorm_logpdf(thetas, mu, sigma)
        ratio = np.exp(logp - logp_old)  # [N, D]
        adv = advantages[:, None]
        unclipped = ratio * adv
        clipped = np.clip(ratio, 1 - eps, 1 + eps) * adv
        objective = float(np.mean(np.minimum(unclipped, clipped)))
        # The unclipped branch carries the gradient unless the ratio has left the band in the
        # direction the advantage pushes it.
        active = ~(((ratio > 1 + eps) & (adv > 0)) | ((ratio < 1 - eps) & (adv < 0)))
        dlogp_dmu = _truncnorm_dlogpdf_dloc(thetas, mu, sigma)
        dmu_dlogit = mu * (1 - mu)
        grad = np.mean(np.where(active, unclipped * dlogp_dmu, 0.0), axis=0) * dmu_dlogit
        return objective, grad

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Return the full state as JSON-able data (floats survive a JSON round trip exactly)."""
        return {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "dim": self.dim,
            "config": self._config_dict(),
            "round": self._round,
            "logit_mean": [float(v) for v in self._logit_mean],
            "adam": {
                "step": self._adam_step,
                "exp_avg": [float(v) for v in self._exp_avg],
                "exp_avg_sq": [float(v) for v in self._exp_avg_sq],
            },
            "rng": _jsonable(self._rng.bit_generator.state),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`.

        Raises:
            ValueError: if the state is malformed, has another dimension, or was produced with other
                hyper-parameters (σ schedule, PPO settings or seed).
        """
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError("not a TruncatedNormalPolicy state")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"unsupported policy state version {state.get('version')!r} "
                f"(supported: {_STATE_VERSION})"
            )
        if state.get("dim") != self.dim:
            raise ValueError(f"policy state has dim {state.get('dim')}, this policy has {self.dim}")
        if state.get("config") != self._config_dict():
            raise ValueError(
                "policy state was produced with other hyper-parameters: "
                f"{state.get('config')} != {self._config_dict()}"
            )
        logit_mean = np.asarray(state["logit_mean"], dtype=np.float64)
        exp_avg = np.asarray(state["adam"]["exp_avg"], dtype=np.float64)
        exp_avg_sq = np.asarray(state["adam"]["exp_avg_sq"], dtype=np.float64)
        arrays = {"logit_mean": logit_mean, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        for name, value in arrays.items():
            if value.shape != (self.dim,) or not np.all(np.isfinite(value)):
                raise ValueError(f"policy state {name} must be {self.dim} finite values")
        rng_state = dict(state["rng"])
        bit_generator_cls = getattr(np.random, str(rng_state.get("bit_generator")), None)
        if bit_generator_cls is None:
            raise ValueError(f"unknown bit generator {rng_state.get('bit_generator')!r}")
        bit_generator = bit_generator_cls()
        bit_generator.state = rng_state

        self._round = int(state["round"])
        self._adam_step = int(state["adam"]["step"])
        self._logit_mean = logit_mean
        self._exp_avg = exp_avg
        self._exp_avg_sq = exp_avg_sq
        self._rng = np.random.Generator(bit_generator)

    def _config_dict(self) -> Dict[str, Any]:
        ppo = dataclasses.asdict(self._ppo)
        ppo["betas"] = list(ppo["betas"])
        return {
            "sigma_schedule": dataclasses.asdict(self._sigma_schedule),
            "ppo": ppo,
            "seed": self._seed,
        }

    def _check_thetas(self, thetas: np.ndarray) -> np.ndarray:
        thetas = np.asarray(thetas, dtype=np.float64)
        if thetas.ndim != 2 or thetas.shape[1] != self.dim:
            raise ValueError(f"thetas must have shape [N, {self.dim}], got {thetas.shape}")
        if not np.all(np.isfinite(thetas)) or np.any(thetas < 0) or np.any(thetas > 1):
            raise ValueError("thetas must be finite and lie in [0, 1]")
        return thetas


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _truncnorm_logpdf(x: np.ndarray, mu: np.ndarray, sigma: float) -> np.ndarray:
    """``log p(x)`` of N(mu, sigma²) truncated to [0, 1], elementwise (broadcast over rows).

    ``mu`` is strictly inside (0, 1), so the truncation interval always contains the mode and the
    normaliser ``Φ((1-μ)/σ) - Φ(-μ/σ)`` is at least about 1/2: no tail cancellation.
    """
    z = (x - mu) / sigma
    normaliser = special.ndtr((1.0 - mu) / sigma) - special.ndtr(-mu / sigma)
    return -0.5 * z * z - _LOG_SQRT_2PI - math.log(sigma) - np.log(normaliser)


def _truncnorm_dlogpdf_dloc(x: np.ndarray, mu: np.ndarray, sigma: float) -> np.ndarray:
    """``∂ log p(x) / ∂ mu`` for :func:`_truncnorm_logpdf`."""
    lower, upper = -mu / sigma, (1.0 - mu) / sigma
    normaliser = special.ndtr(upper) - special.ndtr(lower)
    pdf_lower = np.exp(-0.5 * lower * lower) / math.sqrt(2 * math.pi)
    pdf_upper = np.exp(-0.5 * upper * upper) / math.sqrt(2 * math.pi)
    return (x - mu) / sigma**2 - (pdf_lower - pdf_upper) / (sigma * normaliser)


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars inside nested dicts/lists to Python ints/floats."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
