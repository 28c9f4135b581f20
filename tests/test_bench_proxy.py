"""``experiments/bench_proxy.py``'s candidates: the search's start point, then samples of the
search method's first round (no training here)."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "experiments") not in sys.path:
    sys.path.insert(0, str(ROOT / "experiments"))

import bench_proxy  # noqa: E402

from paploss.search.settings_loading import load_settings  # noqa: E402

DEFAULT_SEARCH = str(ROOT / "configs" / "search" / "default.yaml")
PUBLISHED = str(ROOT / "configs" / "synthetic" / "pap_retinanet_published.yaml")


def test_candidates_of_a_cmaes_search_are_its_start_and_samples_near_it():
    settings = load_settings(DEFAULT_SEARCH, [])
    space, candidates = bench_proxy.build_candidates(settings, 12, None, identity=False)
    assert [c.name for c in candidates] == ["published"] + [
        f"cmaes sample {i}" for i in range(1, 12)
    ]
    start = np.asarray(candidates[0].theta)
    np.testing.assert_allclose(start, space.initial_theta("published"))
    thetas = np.asarray([c.theta for c in candidates[1:]])
    assert len({tuple(t) for t in thetas}) == 11  # eleven different draws
    # sigma 0.03 in 41 dimensions: every draw moves, none farther than a few sigma per axis
    distance = np.abs(thetas - start).max(axis=1)
    assert np.all(distance > 0) and np.all(distance < 0.2)
    assert np.all((thetas >= 0) & (thetas <= 1))


def test_identity_and_published_join_a_search_that_starts_elsewhere():
    settings = load_settings(DEFAULT_SEARCH, ["search.init=identity", "search.method=ppo"])
    _, candidates = bench_proxy.build_candidates(settings, 4, PUBLISHED, identity=True)
    assert [c.name for c in candidates] == ["identity", "published", "ppo sample 1", "ppo sample 2"]
    _, from_published = bench_proxy.build_candidates(
        load_settings(DEFAULT_SEARCH, []), 3, PUBLISHED, identity=True
    )
    assert [c.name for c in from_published] == ["published", "identity", "cmaes sample 1"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--candidates", "1"], "--candidates must be >= 2"),
        (["--seeds", "1"], "--seeds 1 measures nothing without --reference-seeds"),
    ],
)
def test_bad_arguments_name_the_option(argv, message):
    with pytest.raises(SystemExit, match=message):
        bench_proxy.main(argv)
