"""The lines that describe a search's settings at the start of its log."""

from typing import List

from paploss.search.settings import ScreeningSettings, SearchSettings, rejection_score_name

__all__ = ["settings_summary", "screening_summary"]


def settings_summary(settings: SearchSettings) -> List[str]:
    """A few human-readable lines describing the search (for logs)."""
    loop, proxy = settings.search, settings.proxy
    per_round = loop.candidates + (1 if loop.score_mean else 0)
    model = settings.model
    rounds = f"rounds: {loop.rounds} x {per_round} trials ({loop.candidates} samples" + (
        " + the policy mean)" if loop.score_mean else ")"
    )
    if loop.max_proposals:
        rounds += f", up to {loop.max_proposals} proposals per round to find them"
    partial = loop.partial_iterations(proxy.iterations)
    if partial is not None:
        rounds += (
            f"; successive halving: every trial trains {partial} of {proxy.iterations} "
            f"iterations, the better half of the samples and the policy mean continue"
        )
    return [
        f"model: {model.config}"
        + (f" (imports {', '.join(model.imports)})" if model.imports else ""),
        f"method: {loop.method}",
        rounds,
        f"proxy: {proxy.iterations} iterations x {proxy.ims_per_batch} images on "
        f"{proxy.train_dataset}, reward = {proxy.reward_task} AP on {proxy.val_dataset}",
        f"screening: {screening_summary(settings.screening)}",
        f"launcher: {settings.launcher.kind}"
        + (
            f" ({settings.launcher.parallel} at a time)"
            if settings.launcher.kind == "local"
            else ""
        ),
    ]


def screening_summary(screening: ScreeningSettings) -> str:
    """One line saying which screening techniques are on, e.g. for :func:`settings_summary`."""
    parts = []
    rejection, equivalence, early_stop = (
        screening.rejection,
        screening.equivalence,
        screening.early_stop,
    )
    if rejection.enabled:
        parts.append(
            f"rejection below an {rejection_score_name(rejection.score)} of "
            f"{rejection.min_ap_gain:g} after {rejection.steps} "
            f"steps on {rejection.num_images} images (reward {rejection.rejected_reward:g})"
        )
    if equivalence.enabled:
        parts.append(f"duplicates by gradients to {equivalence.significant_digits} digits")
    if early_stop.enabled:
        stop = "early stop on NaN/inf"
        if early_stop.window:
            stop += f" or a loss constant over {early_stop.window} iterations"
        parts.append(stop)
    return "; ".join(parts) if parts else "off"
