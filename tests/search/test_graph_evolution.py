"""Random graphs, mutations, gradient fingerprints and the evolution (pure PyTorch)."""

import json
import random

import pytest

from paploss.losses.graph import (
    BOX,
    CE_EXPRESSION,
    CLS,
    GIOU_EXPRESSION,
    canonical,
    depth,
    input_names,
    parse,
    size,
)
from paploss.search.proposers.graph_evolution import (
    Evolution,
    EvolutionSettings,
    GraphCandidate,
    RandomSearch,
)
from paploss.search.proposers.graph_mutation import GraphSpace, mutate, random_graph
from paploss.search.screening.graph_fingerprint import GraphProbes, graph_fingerprint

# ---------------------------------------------------------------------------- graphs


def test_random_graphs_are_valid_and_seeded():
    space = GraphSpace.for_branch(BOX, init_depth=(2, 4), max_depth=5, max_nodes=20)
    first = [random_graph(random.Random(seed), space) for seed in range(200)]
    again = [random_graph(random.Random(seed), space) for seed in range(200)]
    assert first == again
    assert len({str(g) for g in first}) > 150
    for graph in first:
        assert space.is_valid(graph)
        assert 2 <= depth(graph) <= 4 and size(graph) <= 20
        assert set(input_names(graph)) <= set(BOX.search_inputs)
        assert set(input_names(graph)) & set(BOX.predictions)


@pytest.mark.parametrize("kind", ["insert", "delete", "replace"])
def test_mutations_keep_graphs_valid_and_change_them(kind):
    space = GraphSpace.for_branch(CLS, max_depth=6, max_nodes=16)
    rng = random.Random(0)
    graph = parse(CE_EXPRESSION)
    for _ in range(200):
        result = mutate(rng, graph, space, kinds=(kind,))
        if result is None:  # e.g. nothing left to delete
            graph = random_graph(rng, space)
            continue
        mutant, done = result
        assert done == kind and space.is_valid(mutant)
        assert canonical(mutant) != canonical(graph)
        if kind == "insert":
            assert size(mutant) > size(graph)
        elif kind == "delete":
            assert size(mutant) < size(graph)
        else:
            assert size(mutant) == size(graph)
        graph = mutant


def test_mutation_chain_stays_within_limits():
    space = GraphSpace.for_branch(BOX, max_depth=4, max_nodes=9)
    rng = random.Random(5)
    graph = parse(GIOU_EXPRESSION)  # 10 nodes: only deletions are valid at first
    for _ in range(300):
        result = mutate(rng, graph, space)
        if result is not None:
            graph = result[0]
            assert space.is_valid(graph)


def test_graph_space_errors_name_the_field():
    with pytest.raises(ValueError, match=r"\.unary: unknown operator"):
        GraphSpace.for_branch(CLS, unary=("log", "cube"))
    with pytest.raises(ValueError, match=r"\.binary: \['neg'\] do not take 2"):
        GraphSpace.for_branch(CLS, binary=("add", "neg"))
    with pytest.raises(ValueError, match=r"\.inputs must include one of \['x'\]"):
        GraphSpace.for_branch(CLS, inputs=("y",))
    with pytest.raises(ValueError, match=r"\.init_depth"):
        GraphSpace.for_branch(CLS, init_depth=(3, 9), max_depth=6)


# ---------------------------------------------------------------------------- fingerprints


@pytest.fixture(scope="module")
def probes():
    return GraphProbes(num_samples=16, num_classes=4, seed=0)


def _fingerprint(cls, box, probes):
    return graph_fingerprint(parse(cls), parse(box), probes)


def test_equivalent_losses_share_a_fingerprint(probes):
    base = _fingerprint(CE_EXPRESSION, GIOU_EXPRESSION, probes)
    # + constant, reordered operands, the GIoU written another way
    same = _fingerprint(
        f"add({CE_EXPRESSION},1)",
        "add(sub(1,div(i,u)),div(sub(e,u),e))",
        probes,
    )
    assert same.digest == base.digest and same.values == base.values
    assert base.invalid_reason() is None


def test_different_losses_get_different_fingerprints(probes):
    base = _fingerprint(CE_EXPRESSION, GIOU_EXPRESSION, probes)
    digests = {
        _fingerprint(cls, box, probes).digest
        for cls, box in [
            (f"neg({CE_EXPRESSION})", GIOU_EXPRESSION),  # same gradient norms, opposite sign
            (CE_EXPRESSION, f"neg({GIOU_EXPRESSION})"),
            ("mul(neg(y),log(x))", GIOU_EXPRESSION),
            (CE_EXPRESSION, "sub(1,div(i,u))"),
            (f"mul({CE_EXPRESSION},1.5)", GIOU_EXPRESSION),
        ]
    }
    assert base.digest not in digests and len(digests) == 5


def test_fingerprint_tells_invalid_candidates(probes):
    no_gradient = _fingerprint("div(x,x)", GIOU_EXPRESSION, probes)
    assert no_gradient.invalid_reason() == "no cls gradient reaches the predictions"
    assert no_gradient.invalid_reason(branches=("box",)) is None  # cls is not searched
    overflow = _fingerprint(
        "square(square(square(square(square(recip(sub(x,x)))))))", GIOU_EXPRESSION, probes
    )
    assert "cls loss is inf" in overflow.invalid_reason()
    assert _fingerprint(CE_EXPRESSION, "recip(sub(i,i))", probes).invalid_reason() == (
        "no box gradient reaches the predictions"
    )


# ---------------------------------------------------------------------------- evolution


def _toy_reward(candidate):
    """Deterministic reward that prefers larger graphs with a log (no detector needed)."""
    text = str(candidate.cls) + str(candidate.box)
    return size(candidate.cls) + size(candidate.box) + 5.0 * text.count("log")


def _run(search, rounds=12, per_round=6, reject=lambda c: False):
    proposed = []
    for _ in range(rounds):
        candidates = search.propose(per_round)
        rewards = [None if reject(c) else _toy_reward(c) for c in candidates]
        search.tell(candidates, rewards)
        proposed += [c.to_dict() for c in candidates]
    return proposed


SMALL = dict(population_size=8, tournament_size=3)


def test_evolution_is_deterministic_with_a_seed():
    first = _run(Evolution(EvolutionSettings(seed=3, **SMALL)))
    second = _run(Evolution(EvolutionSettings(seed=3, **SMALL)))
    other = _run(Evolution(EvolutionSettings(seed=4, **SMALL)))
    assert first == second
    assert first != other
    keys = [c["key"] for c in first]
    assert len(set(keys)) == len(keys)  # no structural duplicates proposed


def test_evolution_resumes_from_its_json_state():
    settings = EvolutionSettings(seed=1, **SMALL)
    straight = Evolution(settings)
    expected = _run(straight, rounds=10)

    first = Evolution(settings)
    proposed = _run(first, rounds=4)
    data = json.loads(json.dumps(first.state_dict()))
    resumed = Evolution.from_state_dict(data)
    proposed += _run(resumed, rounds=6)
    assert proposed == expected
    assert resumed.state_dict() == straight.state_dict()
    with pytest.raises(ValueError, match="method 'evolution', expected 'random'"):
        RandomSearch.from_state_dict(data)


def test_population_selection_and_mutation():
    search = Evolution(EvolutionSettings(seed=0, **SMALL))
    proposed = _run(search, rounds=10, reject=lambda c: c.index % 3 == 0)
    state = search.state
    assert state.proposed == state.told == 60 and state.discarded == 20
    assert len(state.population) == 8
    assert all(member.candidate.index % 3 != 0 for member in state.population)
    assert [c["origin"] for c in proposed[:8]] == ["random"] * 8
    mutants = [c for c in proposed if c["origin"] in ("insert", "delete", "replace")]
    assert len(mutants) > 30
    told = {c["index"] for c in proposed if c["index"] % 3 != 0}
    assert all(c["parent"] in told and c["branch"] in ("cls", "box") for c in mutants)
    best, reward = search.best
    assert reward == max(
        _toy_reward(GraphCandidate.from_dict(c)) for c in proposed if c["index"] % 3
    )
    assert best.index % 3 != 0


def test_worst_replacement_keeps_the_best():
    search = Evolution(EvolutionSettings(seed=0, replace="worst", **SMALL))
    _run(search, rounds=10)
    rewards = sorted(member.reward for member in search.state.population)
    assert rewards[-1] == search.best[1]


def test_evolution_climbs_where_random_search_does_not():
    settings = EvolutionSettings(seed=0, **SMALL)
    evolution, random_search = Evolution(settings), RandomSearch(settings)
    _run(evolution, rounds=20)
    proposed = _run(random_search, rounds=20)
    assert all(c["origin"] == "random" for c in proposed)
    assert evolution.best[1] > random_search.best[1]


def test_fixed_branches_and_initial_candidates():
    settings = EvolutionSettings(
        seed=0,
        branches=("cls",),
        fixed={"box": "sub(1,div(i,u))"},
        initial=({"cls": CE_EXPRESSION},),
        **SMALL,
    )
    search = Evolution(settings)
    candidates = _run(search, rounds=5)
    assert candidates[0]["origin"] == "initial" and candidates[0]["cls"] == CE_EXPRESSION
    assert all(c["box"] == "sub(1,div(i,u))" for c in candidates)
    overrides = GraphCandidate.from_dict(candidates[0]).overrides()
    assert overrides == {
        "MODEL.PAPLOSS.LOSS": "graph",
        "MODEL.PAPLOSS.GRAPH.CLS": CE_EXPRESSION,
        "MODEL.PAPLOSS.GRAPH.BOX": "sub(1,div(i,u))",
    }


@pytest.mark.parametrize(
    "data, match",
    [
        ({"population": 3}, r"unknown evolution setting\(s\) \['population'\]"),
        ({"tournament_size": 50}, r"evolution.tournament_size must be an integer in"),
        ({"replace": "random"}, r"evolution.replace must be one of"),
        ({"branches": ["mask"]}, r"evolution.branches must be a non-empty subset"),
        ({"fixed": {"box": "log(x)"}}, r"evolution.fixed.box: unknown input 'x'"),
        ({"initial": [{"cls": "mul(y,y)"}]}, r"evolution.initial\[0\].cls: .*predictions"),
        ({"spaces": {"cls": {"depth": 3}}}, r"evolution.spaces.cls: unknown field"),
    ],
)
def test_settings_errors_name_the_key(data, match):
    with pytest.raises(ValueError, match=match):
        EvolutionSettings.from_dict(data)


def test_settings_round_trip():
    settings = EvolutionSettings.from_dict(
        {"seed": 2, "branches": ["box"], "spaces": {"box": {"inputs": ["p", "i", "u", "d", "t"]}}}
    )
    assert EvolutionSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    assert settings.space("box").inputs == ("p", "i", "u", "d", "t")
