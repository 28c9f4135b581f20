"""Search space: θ layout, identity, config overrides and their inverse, fixed groups, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from paploss.heads import PAP_HEADS
from paploss.losses import FUNCTION_NAMES, published_grad_scale, published_knots
from paploss.search.spaces import SearchSpace, heads_from_config

IDENTITY_KNOTS = [[0.2, 0.2], [0.4, 0.4], [0.6, 0.6], [0.8, 0.8]]


def _cfg(architecture, proposal="RPN", roi="StandardROIHeads", loss="pap"):
    return {
        "MODEL": {
            "META_ARCHITECTURE": architecture,
            "PROPOSAL_GENERATOR": {"NAME": proposal},
            "ROI_HEADS": {"NAME": roi},
            "PAPLOSS": {"LOSS": loss, "QUALITY": "giou"},
        }
    }


def test_dimensions_and_names():
    retina = SearchSpace(["RETINANET"])
    assert retina.dim == 41 and len(retina.names) == 41
    assert retina.names[:3] == (
        "RETINANET.H2.theta1x",
        "RETINANET.H2.theta1y",
        "RETINANET.H2.theta2x",
    )
    assert retina.names[7] == "RETINANET.H2.theta4y"
    assert retina.names[8] == "RETINANET.I2.theta1x"
    assert retina.names[-1] == "RETINANET.lambda"
    assert list(retina.groups) == [f"RETINANET.{n}" for n in FUNCTION_NAMES] + ["RETINANET.lambda"]
    assert retina.groups["RETINANET.H1"] == slice(32, 40)

    rcnn = SearchSpace(["ROI_HEADS", "RPN"])  # reordered to HEADS order
    assert rcnn.heads == ("RPN", "ROI_HEADS") and rcnn.dim == 82
    assert rcnn.names[40] == "RPN.lambda" and rcnn.names[41] == "ROI_HEADS.H2.theta1x"
    assert len(set(rcnn.names)) == 82
    assert SearchSpace(PAP_HEADS).dim == 123


def test_identity_theta_gives_identity_functions():
    space = SearchSpace(["RPN", "ROI_HEADS"])
    theta = space.identity_theta()
    assert theta.shape == (82,)
    assert theta[:8] == pytest.approx([0.2, 0.2, 0.25, 0.25, 1 / 3, 1 / 3, 0.5, 0.5])
    overrides = space.to_overrides(theta)
    assert len(overrides) == 12
    for head in ("RPN", "ROI_HEADS"):
        for name in FUNCTION_NAMES:
            knots = overrides[f"MODEL.PAPLOSS.{head}.FUNCTIONS.{name}"]
            np.testing.assert_allclose(knots, IDENTITY_KNOTS, atol=1e-12)
        assert overrides[f"MODEL.PAPLOSS.{head}.GRAD_SCALE"] == pytest.approx(1.0)
    np.testing.assert_allclose(space.from_overrides(overrides), theta, atol=1e-12)


def test_overrides_are_plain_python_and_json_able():
    space = SearchSpace(["RETINANET"])
    overrides = space.to_overrides(space.identity_theta())
    assert list(overrides)[0] == "MODEL.PAPLOSS.RETINANET.FUNCTIONS.H2"
    assert list(overrides)[-1] == "MODEL.PAPLOSS.RETINANET.GRAD_SCALE"
    for value in overrides.values():
        assert type(value) in (list, float)
        if isinstance(value, list):
            assert all(type(c) is float for pair in value for c in pair)
    assert json.loads(json.dumps(overrides)) == overrides


def test_random_theta_round_trips_through_overrides():
    space = SearchSpace(["RPN", "ROI_HEADS"])
    theta = np.random.default_rng(0).uniform(0.02, 0.98, space.dim)
    back = space.from_overrides(json.loads(json.dumps(space.to_overrides(theta))))
    np.testing.assert_allclose(back, theta, atol=1e-9)
    # Edge values map to valid (spaced) knots and come back.
    edges = np.zeros(space.dim)
    edges[::3] = 1.0
    overrides = space.to_overrides(edges)
    again = space.to_overrides(space.from_overrides(overrides))
    for key, value in overrides.items():
        np.testing.assert_allclose(again[key], value, atol=1e-12)


def test_published_parameters_round_trip():
    space = SearchSpace(["RETINANET"])
    overrides = {
        f"MODEL.PAPLOSS.RETINANET.FUNCTIONS.{name}": knots
        for name, knots in published_knots("retinanet").items()
    }
    overrides["MODEL.PAPLOSS.RETINANET.GRAD_SCALE"] = published_grad_scale("retinanet")
    theta = space.from_overrides(overrides)
    assert theta[-1] == pytest.approx((np.log10(4.1231) + 1) / 2)
    again = space.to_overrides(theta)
    for key, value in overrides.items():
        np.testing.assert_allclose(again[key], value, atol=1e-12)


def test_opts_list_for_merge_from_list():
    space = SearchSpace(["RETINANET"])
    theta = np.random.default_rng(1).random(space.dim)
    opts = space.to_opts_list(theta)
    assert len(opts) == 12
    opts_dict = dict(zip(opts[::2], opts[1::2]))
    assert opts_dict == space.to_overrides(theta)
    as_strings = space.to_opts_list(theta, as_strings=True)
    assert all(isinstance(v, str) for v in as_strings)
    parsed = dict(zip(as_strings[::2], as_strings[1::2]))
    assert float(parsed["MODEL.PAPLOSS.RETINANET.GRAD_SCALE"]) == opts[-1]  # exact
    np.testing.assert_array_equal(space.from_overrides(parsed), space.from_overrides(opts_dict))


def test_fixed_groups_are_left_out_of_theta():
    h1 = [[0.1, 0.3], [0.3, 0.5], [0.5, 0.7], [0.7, 0.9]]
    space = SearchSpace(["RETINANET"], fixed={"RETINANET.H1": h1, "RETINANET.lambda": 2.0})
    assert space.dim == 32
    assert "RETINANET.H1" not in space.groups and "RETINANET.lambda" not in space.groups
    assert not any(name.startswith("RETINANET.H1") for name in space.names)
    assert space.fixed == {"RETINANET.H1": h1, "RETINANET.lambda": 2.0}
    overrides = space.to_overrides(space.identity_theta())
    assert overrides["MODEL.PAPLOSS.RETINANET.FUNCTIONS.H1"] == h1
    assert overrides["MODEL.PAPLOSS.RETINANET.GRAD_SCALE"] == 2.0
    np.testing.assert_allclose(space.from_overrides(overrides), space.identity_theta(), atol=1e-12)
    overrides["MODEL.PAPLOSS.RETINANET.GRAD_SCALE"] = 3.0
    with pytest.raises(ValueError, match="fixed to 2.0"):
        space.from_overrides(overrides)
    # The description rebuilds the same space.
    rebuilt = SearchSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert rebuilt == space and rebuilt.names == space.names


def test_from_config():
    assert SearchSpace.from_config(_cfg("PAPRetinaNet")).heads == ("RETINANET",)
    both = SearchSpace.from_config(_cfg("GeneralizedRCNN", "PAPRPN", "PAPROIHeads"))
    assert both.heads == ("RPN", "ROI_HEADS") and both.dim == 82
    assert heads_from_config(_cfg("GeneralizedRCNN", "PAPRPN")) == ("RPN",)
    assert heads_from_config(_cfg("GeneralizedRCNN", roi="PAPROIHeads")) == ("ROI_HEADS",)
    with pytest.raises(ValueError, match="no PAP-loss head"):
        SearchSpace.from_config(_cfg("GeneralizedRCNN"))
    with pytest.raises(ValueError, match="no PAP-loss head"):
        SearchSpace.from_config(_cfg("RetinaNet"))
    with pytest.raises(ValueError, match="LOSS is 'alrp'"):
        SearchSpace.from_config(_cfg("PAPRetinaNet", loss="alrp"))
    with pytest.raises(ValueError, match="no key MODEL.META_ARCHITECTURE"):
        SearchSpace.from_config({"MODEL": {}})


def test_from_detectron2_cfgnode():
    config = pytest.importorskip("detectron2.config")
    cfg = config.get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "PAPRPN"
    cfg.MODEL.ROI_HEADS.NAME = "PAPROIHeads"
    assert SearchSpace.from_config(cfg).dim == 82


@pytest.mark.parametrize(
    "heads, fixed, message",
    [
        (["FCOS"], None, "unknown head"),
        (["RPN", "RPN"], None, "must not repeat"),
        ([], None, "at least one head"),
        (["RETINANET"], {"RPN.H1": IDENTITY_KNOTS}, "unknown group 'RPN.H1'"),
        (["RETINANET"], {"RETINANET.H3": IDENTITY_KNOTS}, "unknown group"),
        (["RETINANET"], {"RETINANET.H1": [[0.5, 0.5]]}, "four finite"),
        (["RETINANET"], {"RETINANET.H1": [[0.5, 0.5], [0.4, 0.6], [0.6, 0.7], [0.8, 1]]}, "knots"),
        (["RETINANET"], {"RETINANET.lambda": 20.0}, r"\[0.1, 10\]"),
        (
            ["RETINANET"],
            {f"RETINANET.{n}": IDENTITY_KNOTS for n in FUNCTION_NAMES} | {"RETINANET.lambda": 1.0},
            "nothing left",
        ),
    ],
)
def test_construction_errors(heads, fixed, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace(heads, fixed=fixed)


def test_theta_errors():
    space = SearchSpace(["RETINANET"])
    with pytest.raises(ValueError, match=r"shape \[41\]"):
        space.to_overrides(np.full(82, 0.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]; got RETINANET.H2.theta2x=1.5"):
        theta = space.identity_theta()
        theta[2] = 1.5
        space.to_overrides(theta)
    with pytest.raises(ValueError, match="finite"):
        space.to_opts_list(np.full(41, np.nan))
    overrides = space.to_overrides(space.identity_theta())
    del overrides["MODEL.PAPLOSS.RETINANET.FUNCTIONS.I3"]
    with pytest.raises(ValueError, match="no value for MODEL.PAPLOSS.RETINANET.FUNCTIONS.I3"):
        space.from_overrides(overrides)
    unsorted = [[0.9, 0.1], [0.2, 0.2], [0.3, 0.3], [0.4, 0.4]]
    overrides["MODEL.PAPLOSS.RETINANET.FUNCTIONS.I3"] = unsorted
    with pytest.raises(ValueError, match="FUNCTIONS.I3: knots must be"):
        space.from_overrides(overrides)


def test_the_space_imports_without_detectron2() -> None:
    """The heads' names come from paploss.heads: the space does not load Detectron2's models."""
    code = (
        "import sys, paploss.search.spaces\n"
        "print(sorted(m for m in sys.modules if m.startswith(('detectron2', 'paploss.modeling'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
