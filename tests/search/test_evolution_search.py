"""Loss graphs searched from scratch (the ``evolution`` and ``random`` methods) on the search's own
controller, screening, journal, resume, reports and export."""

import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml
from search_testing import REPO_ROOT, journal_snapshot, tiny_search_overrides

from paploss.engine import load_config
from paploss.losses.graph import CE_EXPRESSION, GIOU_EXPRESSION, L1_EXPRESSION
from paploss.search.controller import SearchController, SearchError
from paploss.search.journal import SearchJournal
from paploss.search.proposers import (
    EvolutionProposer,
    RandomSearchProposer,
    ScoredCandidate,
    proposer_class,
)
from paploss.search.reports import export_config, format_status, write_plots
from paploss.search.settings import SettingsError
from paploss.search.settings_loading import load_settings
from paploss.search.spaces import GraphLossSpace
from paploss.search.trials import TrialResult, TrialSpec
from paploss.search.trials.proxy_config import proxy_config_opts

GRAPH_CONFIG = str(REPO_ROOT / "configs" / "synthetic" / "graph_faster_rcnn.yaml")
CLS_KEY, BOX_KEY = "MODEL.PAPLOSS.GRAPH.CLS", "MODEL.PAPLOSS.GRAPH.BOX"
#: The sigmoid cross entropy written another way: gradient-equivalent to CE_EXPRESSION.
REWRITTEN_CE = "neg(add(mul(log(x),y),mul(log(sub(1,x)),sub(1,y))))"
#: Proposed first: a loss, its equivalent rewrite (a duplicate), a classification graph whose
#: gradient never reaches the scores (invalid), a second loss.
INITIAL = [
    {"cls": CE_EXPRESSION, "box": GIOU_EXPRESSION},
    {"cls": REWRITTEN_CE, "box": GIOU_EXPRESSION},
    {"cls": "div(x,x)", "box": GIOU_EXPRESSION},
    {"cls": CE_EXPRESSION, "box": L1_EXPRESSION},
]


def graph_search_overrides(folder: Path, method: str = "evolution", **extra: Any) -> List[str]:
    """A tiny graph search: 3 rounds of 3 trainings, up to 8 proposals a round, a cheap
    rejection protocol (2 images, 30 steps)."""
    overrides = tiny_search_overrides(folder, rounds=3, candidates=3, **extra)
    return overrides + [
        f"model.config={GRAPH_CONFIG}",
        f"search.method={method}",
        "search.score_mean=false",
        "search.max_proposals=8",
        "evolution.population_size=3",
        "evolution.tournament_size=2",
        f"evolution.initial={INITIAL!r}".replace("'", '"'),
        "screening.rejection.enabled=true",
        "screening.rejection.steps=30",
    ]


CALLS: List[str] = []
STOP_AT: List[str] = []


class Interrupt(BaseException):
    """Stands for a killed controller."""


def expression_reward(spec: TrialSpec) -> TrialResult:
    """A trial without training: a reward made of the candidate's expressions (a stable hash)."""
    if spec.trial_id in STOP_AT:
        STOP_AT.remove(spec.trial_id)
        raise Interrupt(f"killed while {spec.trial_id} trains")
    CALLS.append(spec.trial_id)
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    reward = fake_reward(spec.overrides)
    return TrialResult(spec.trial_id, "done", reward, {"AP": reward}, spec_digest=spec.digest())


def fake_reward(overrides: Dict[str, Any]) -> float:
    text = f"{overrides[CLS_KEY]}|{overrides[BOX_KEY]}"
    return (zlib.crc32(text.encode()) % 1000) / 10.0


def test_evolution_through_the_controller_screens_learns_and_resumes_exactly(
    tmp_path: Path,
) -> None:
    settings = load_settings(None, graph_search_overrides(tmp_path))
    reference = tmp_path / "reference"
    CALLS.clear()
    summary = SearchController(settings, reference, trial_fn=expression_reward).run()
    assert summary.rounds_closed == 3 and summary.final_mean is None
    trained = list(CALLS)
    journal_path = reference / "journal.sqlite"
    with SearchJournal.open(str(journal_path), read_only=True) as journal:
        trials, rounds = journal.trials(), journal.rounds()
        best = journal.best_trial()
        status = format_status(journal, show_trials=True)
        exported = export_config(journal, tmp_path / "best.yaml")
        plots = write_plots(journal, tmp_path / "plots")
        assert journal.settings["space"]["kind"] == "graph"

    # Every candidate is a graph candidate: no θ, its expressions in the overrides.
    assert all(t.theta == [] and t.overrides["MODEL.PAPLOSS.LOSS"] == "graph" for t in trials)
    first = {t.index: t for t in trials if t.round == 0}
    assert [first[i].overrides[CLS_KEY] for i in range(4)] == [e["cls"] for e in INITIAL]
    # Screened before training: the rewrite is a duplicate of the first candidate (its reward,
    # not trained), the graph without a gradient is rejected as invalid.
    assert first[1].status == "duplicate" and first[1].reward == first[0].reward
    assert first[1].metrics["screening"]["duplicate_of"] == [0, 0]
    assert first[2].status == "rejected" and first[2].metrics["screening"]["invalid"]
    names = {f"round{t.round:03d}_trial{t.index:02d}" for t in trials if t.status == "done"}
    assert sorted(trained) == sorted(names)  # only accepted candidates ran a trial
    for t in trials:
        assert (t.folder is None) == (t.status in ("rejected", "duplicate"))
        if t.status == "done":
            assert t.reward == fake_reward(t.overrides)
    # A round proposes until `candidates` candidates are to be trained, at most max_proposals.
    for r in range(3):
        round_trials = [t for t in trials if t.round == r]
        done = sum(t.status == "done" for t in round_trials)
        assert done == 3 or len(round_trials) == 8
        assert len(round_trials) <= 8
    # The population learns from trained candidates only; once full, parents are mutated.
    end = rounds[-1].policy_state_end
    population = end["search"]["state"]["population"]
    done_losses = {
        (t.overrides[CLS_KEY], t.overrides[BOX_KEY]): t.reward for t in trials if t.status == "done"
    }
    assert population and all(
        done_losses[(m["candidate"]["cls"], m["candidate"]["box"])] == m["reward"]
        for m in population
    )
    origins = [c["origin"] for c in rounds[-1].policy_state_start["pending"]]
    assert set(origins) & {"insert", "delete", "replace"}
    assert rounds[-1].update_stats["best_reward"] == best.reward

    # Reports: the best losses in the status, an exported config of the two expressions.
    assert "loss graphs of ROI_HEADS" in status and f"cls {best.overrides[CLS_KEY]}" in status
    assert "invalid: no cls gradient reaches the predictions" in status
    cfg = load_config(exported.path)
    assert cfg.MODEL.PAPLOSS.LOSS == "graph"
    assert (cfg.MODEL.PAPLOSS.GRAPH.CLS, cfg.MODEL.PAPLOSS.GRAPH.BOX) == (
        best.overrides[CLS_KEY],
        best.overrides[BOX_KEY],
    )
    assert [Path(p).name for p in plots] == ["rewards.png"]
    with SearchJournal.open(str(journal_path), read_only=True) as journal:
        with pytest.raises(ValueError, match="no mean to export"):
            export_config(journal, tmp_path / "mean.yaml", which="mean")
    # The exported config trains with tools/train_net.py (a few iterations).
    dumped = train_exported(exported.path, settings, tmp_path / "train")
    assert dumped["MODEL"]["PAPLOSS"]["LOSS"] == "graph"
    assert dumped["MODEL"]["PAPLOSS"]["GRAPH"]["CLS"] == best.overrides[CLS_KEY]
    assert dumped["MODEL"]["PAPLOSS"]["GRAPH"]["BOX"] == best.overrides[BOX_KEY]

    # The same search stopped while a trial of round 1 trains, then resumed by a new controller:
    # the same proposals, decisions, rewards and evolution states.
    stop = sorted(n for n in names if n.startswith("round001"))[-1]
    killed = tmp_path / "killed"
    STOP_AT[:] = [stop]
    with pytest.raises(Interrupt):
        SearchController(settings, killed, trial_fn=expression_reward).run()
    SearchController(settings, killed, resume=True, trial_fn=expression_reward).run()
    assert journal_snapshot(killed / "journal.sqlite") == journal_snapshot(journal_path)


def test_random_search_proposes_random_graphs_only() -> None:
    settings = load_settings(
        None,
        [
            f"model.config={GRAPH_CONFIG}",
            "search.method=random",
            "search.score_mean=false",
            "search.candidates=4",
            "evolution.population_size=2",
            "evolution.tournament_size=1",
        ],
    )
    assert proposer_class("random") is RandomSearchProposer
    space = RandomSearchProposer.build_space(settings, load_config(GRAPH_CONFIG))
    assert space == GraphLossSpace(["cls", "box"])
    proposer = RandomSearchProposer.from_settings(settings, space)
    for round_index in range(3):
        candidates = proposer.propose() + proposer.propose_more(2)
        assert len(candidates) == 6 and all(c.theta == () for c in candidates)
        scored = [
            ScoredCandidate((), "sample", fake_reward(dict(c.overrides)), "done", index=i)
            for i, c in enumerate(candidates)
        ]
        stats = proposer.observe(scored)
        assert stats["learned"] == 6 and stats["population"] == 2
    assert proposer.round == 3
    population = proposer.state_dict()["search"]["state"]["population"]
    origins = {member["candidate"]["origin"] for member in population}
    assert origins == {"random"}


def test_rejected_duplicate_and_diverged_candidates_do_not_join_the_population() -> None:
    settings = load_settings(
        None,
        [
            f"model.config={GRAPH_CONFIG}",
            "search.method=evolution",
            "search.score_mean=false",
            "search.candidates=4",
        ],
    )
    proposer = EvolutionProposer.from_settings(settings, None)
    candidates = proposer.propose()
    statuses = ["done", "rejected", "duplicate", "diverged"]
    scored = [
        ScoredCandidate((), "sample", 10.0 + i, status, index=i)
        for i, status in enumerate(statuses)
    ]
    before = proposer.state_dict()
    stats = proposer.observe(scored)
    assert stats["learned"] == 1 and stats["population"] == 1 and stats["best_reward"] == 10.0
    member = proposer.state_dict()["search"]["state"]["population"][0]["candidate"]
    assert (member["cls"], member["box"]) == (
        candidates[0].overrides[CLS_KEY],
        candidates[0].overrides[BOX_KEY],
    )
    # A stored state of the round continues exactly; one of other settings is refused.
    again = EvolutionProposer.from_settings(settings, None)
    again.load_state_dict(before)
    again.observe(scored)
    assert again.state_dict() == proposer.state_dict()
    other = load_settings(
        None,
        [
            f"model.config={GRAPH_CONFIG}",
            "search.method=evolution",
            "search.score_mean=false",
            "evolution.population_size=5",
        ],
    )
    with pytest.raises(ValueError, match="other settings"):
        EvolutionProposer.from_settings(other, None).load_state_dict(before)


@pytest.mark.parametrize(
    "override, message",
    [
        ("evolution.populaton_size=4", r"unknown evolution setting\(s\) \['populaton_size'\]"),
        ("evolution.seed=3", "evolution.seed: the evolution is seeded by search.seed"),
        ("evolution.tournament_size=50", "evolution.tournament_size must be an integer in"),
        ("search.max_proposals=2", "search.max_proposals must be 0 or at least"),
    ],
)
def test_bad_evolution_settings_name_the_key(override: str, message: str) -> None:
    base = [f"model.config={GRAPH_CONFIG}", "search.method=evolution", "search.candidates=4"]
    with pytest.raises(SettingsError, match=message):
        load_settings(None, base + [override])


def test_a_model_or_setting_the_method_cannot_search_is_named_before_anything_is_written(
    tmp_path: Path,
) -> None:
    pap_model = load_settings(
        None,
        tiny_search_overrides(tmp_path) + ["search.method=evolution", "search.score_mean=false"],
    )
    with pytest.raises(SearchError, match="MODEL.PAPLOSS.LOSS is 'pap'"):
        SearchController(pap_model, tmp_path / "a", trial_fn=expression_reward).run()
    with_mean = load_settings(None, graph_search_overrides(tmp_path) + ["search.score_mean=true"])
    with pytest.raises(SearchError, match="search.score_mean: the evolution method has no mean"):
        SearchController(with_mean, tmp_path / "b", trial_fn=expression_reward).run()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "name", ["evolution_faster_rcnn.yaml", "evolution_faster_rcnn_cluster.yaml"]
)
def test_shipped_evolution_search_configs_are_valid(name: str) -> None:
    settings = load_settings(str(REPO_ROOT / "configs" / "search" / name))
    assert settings.search.method == "evolution" and not settings.search.score_mean
    assert settings.search.max_proposals >= settings.search.candidates
    evolution = settings.evolution_settings()
    assert evolution.seed == settings.search.seed
    assert evolution.tournament_size <= evolution.population_size
    # The model is one the method searches, and the proxy's overrides are keys of its config.
    cfg = load_config(settings.model.config, proxy_config_opts(settings.proxy, 0, "unused"))
    assert EvolutionProposer.build_space(settings, cfg) == GraphLossSpace(evolution.branches)
    screening = settings.screening
    assert screening.rejection.enabled and screening.equivalence.enabled
    assert screening.early_stop.enabled
    if "cluster" in name:
        launcher = settings.launcher
        assert launcher.kind == "slurm" and launcher.gpus_per_node == settings.proxy.num_gpus
        assert settings.proxy.ims_per_batch % settings.proxy.num_gpus == 0
        assert cfg.MODEL.DEVICE == "cuda" and cfg.INPUT.MIN_SIZE_TRAIN == (512,)
        assert evolution.population_size > 4 * 4
    else:
        assert settings.launcher.kind == "local" and settings.proxy.num_threads == 1
        assert settings.proxy.iterations <= 200 and cfg.MODEL.DEVICE == "cpu"


# ------------------------------------------------------------------------------ real trainings


@pytest.mark.slow
def test_graph_search_trains_its_candidates_as_local_jobs(tmp_path: Path) -> None:
    overrides = graph_search_overrides(tmp_path, launcher="local") + [
        "search.rounds=2",
        "search.candidates=2",
        "search.max_proposals=6",
        "launcher.parallel=2",
    ]
    settings = load_settings(None, overrides)
    output = tmp_path / "search"
    summary = SearchController(settings, output).run()
    assert summary.rounds_closed == 2
    with SearchJournal.open(str(output / "journal.sqlite"), read_only=True) as journal:
        trials = journal.trials()
        best = journal.best_trial()
    trained = [t for t in trials if t.folder is not None]
    assert trained and all(t.status in ("done", "diverged") for t in trained)
    assert all(t.reward is not None and t.metrics.get("total_s", 0) > 0 for t in trained)
    assert all((output / t.folder / "result.json").is_file() for t in trained)
    assert not any((output / "trials" / f"round000_trial0{i}").exists() for i in (1, 2))

    assert best is not None and best.status == "done"


def train_exported(config: str, settings: Any, train_dir: Path) -> Dict[str, Any]:
    """Train an exported config with ``tools/train_net.py`` for 3 iterations on the tiny
    validation set of ``settings``; returns the config the training dumped."""
    val_entry = settings.proxy.opts["MODEL.PAPLOSS.DATASETS"][0]
    result = subprocess.run(
        [
            sys.executable, "tools/train_net.py", "--config-file", config,
            "SOLVER.MAX_ITER", "3",
            "SOLVER.IMS_PER_BATCH", "2",
            "DATASETS.TEST", f"('{val_entry[0]}',)",
            "MODEL.PAPLOSS.DATASETS", repr([val_entry]),
            "OUTPUT_DIR", str(train_dir),
        ],  # fmt: skip
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting training from iteration 0" in result.stderr + result.stdout
    assert (train_dir / "model_final.pth").is_file()
    return yaml.safe_load((train_dir / "config.yaml").read_text())
