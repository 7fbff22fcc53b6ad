"""`mlp-cli explain` (issue 24): the practical's derivation for a config's network, each backward
equation checked against central differences by the reference engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlp_cli import explain as ex
from mlp_cli.cli import main
from mlp_cli.nn import reference as ref

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

# Every layer type, odd geometry: conv stride 2 + dilation 2 + padding, a rectangular conv, padded
# max pooling with ceil_mode, padded avg pooling whose last window ceil_mode keeps, both batch norms,
# dropout, every activation, label smoothing.
ODD = """\
seed: 0
data: {dataset: cifar10}
model:
  layers:
    - {type: conv2d, out_channels: 4, kernel_size: 3, stride: 2, dilation: 2, padding: 1}
    - {type: batchnorm2d}
    - {type: sigmoid}
    - {type: maxpool2d, kernel_size: 3, stride: 2, padding: 1, ceil_mode: true}
    - {type: conv2d, out_channels: 3, kernel_size: [2, 3], stride: [1, 2], padding: [1, 0], bias: false}
    - {type: avgpool2d, kernel_size: 2, stride: 1, padding: 1, ceil_mode: true}
    - {type: relu}
    - {type: flatten}
    - {type: linear, out_features: 12}
    - {type: batchnorm1d}
    - {type: tanh}
    - {type: dropout, p: 0.3}
    - {type: linear, out_features: 10}
train: {epochs: 1, batch_size: 8, label_smoothing: 0.1}
optim: {name: sgd, lr: 0.1}
"""


def run(*args):
    return CliRunner().invoke(main, ["explain", *map(str, args)])


@pytest.fixture
def odd_config(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text(ODD)
    return path


def as_json(*args) -> dict:
    result = run(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def convshape_shapes(path) -> list[list[int]]:
    result = CliRunner().invoke(main, ["convshape", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    return [layer["output_shape"] for layer in json.loads(result.stdout)["layers"]]


def assert_complete_and_passing(doc: dict, path) -> None:
    layers = doc["layers"]
    for layer in layers:
        assert set(layer) == {"name", "type", "input_shape", "output_shape", "params", "equations"}
        assert layer["equations"], layer["name"]
        assert any(eq["rel_error"] is not None for eq in layer["equations"]), f"layer {layer['name']} has no checked gradient"
        for eq in layer["equations"]:
            assert set(eq) == {"name", "latex", "text", "rel_error"}
            assert eq["rel_error"] is None or eq["rel_error"] <= 1e-6, (layer["name"], eq)
    assert layers[-1]["name"] == "loss"
    assert [layer["output_shape"] for layer in layers[:-1]] == convshape_shapes(path)


# ----------------------------------------------------------------------------- the practical's MLP
def test_mnist_mlp_text_reads_as_the_practicals_derivation():
    result = run("--config", CONFIGS / "mnist_mlp.yaml")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for word in ("784", "100", "10", "tanh", "h̃ = W_h x + b_h", "W_h: 100×784", "ŷ", "ỹ", "⊙", "ᵀ", "∂l/∂W_y",
                 "(1 − tanh²(h̃)) ⊙ ∂l/∂h", "∂l/∂ỹₙ = (ŷₙ − yₙ)/N"):
        assert word in text, word
    assert "FAIL" not in text


def test_mnist_mlp_markdown_has_latex_between_dollar_lines():
    result = run("--config", CONFIGS / "mnist_mlp.yaml", "--format", "markdown")
    assert result.exit_code == 0, result.output
    md = result.stdout
    lines = md.splitlines()
    assert lines.count("$$") >= 20 and lines.count("$$") % 2 == 0
    for word in (r"\partial", r"\hat{y}", r"\frac{\partial l}{\partial \tilde{y}_n}", r"\tilde{h} = W_h x + b_h",
                 "| rel. error | pass |"):
        assert word in md, word


def test_mnist_mlp_json_every_check_passes():
    doc = as_json("--config", CONFIGS / "mnist_mlp.yaml")
    assert [layer["type"] for layer in doc["layers"]] == ["Flatten", "Linear", "Tanh", "Linear", "SoftmaxCrossEntropy"]
    assert doc["layers"][1]["params"] == 78500
    assert_complete_and_passing(doc, CONFIGS / "mnist_mlp.yaml")


# ----------------------------------------------------------------------------- other nets
def test_every_layer_type_with_odd_geometry(odd_config):
    doc = as_json("--config", odd_config)
    assert_complete_and_passing(doc, odd_config)
    by_type = {}
    for layer in doc["layers"]:
        by_type.setdefault(layer["type"], layer)  # the first of each type
    assert set(by_type) >= {"Conv2d", "BatchNorm2d", "Sigmoid", "MaxPool2d", "AvgPool2d", "ReLU", "Flatten",
                            "Linear", "BatchNorm1d", "Tanh", "Dropout", "SoftmaxCrossEntropy"}
    names = lambda t: [eq["name"] for eq in by_type[t]["equations"]]  # noqa: E731
    assert "output H = W, the practical's formula" in names("Conv2d")  # ceil(15.5) = 16, PyTorch 15
    assert "gradient of x as a convolution" in names("Conv2d")
    assert "label smoothing" in names("SoftmaxCrossEntropy")
    texts = " ".join(eq["text"] for layer in doc["layers"] for eq in layer["equations"])
    for words in ("rot180", "argmax", "1/k² = 1/4", "0.9·onehot(c) + 0.01", "ceil(", "(1 − 0.3)"):
        assert words in texts, words


def test_cifar10_cnn_improved_every_check_passes():
    path = CONFIGS / "cifar10_cnn_improved.yaml"
    assert_complete_and_passing(as_json("--config", path, "--batch", "2"), path)


def test_a_larger_batch_passes_too():
    """Batch norm's and max pooling's checks stay well-conditioned as the batch grows (their
    inputs are spread over a range that does not grow with it)."""
    path = CONFIGS / "cifar10_cnn_improved.yaml"
    assert_complete_and_passing(as_json("--config", path, "--batch", "16", "--seed", "1"), path)


def test_overrides_reach_the_derivation():
    doc = as_json("--config", CONFIGS / "mnist_mlp.yaml", "model.layers.1.out_features=50", "train.label_smoothing=0.2")
    assert doc["layers"][1]["output_shape"] == [50]
    assert any(eq["name"] == "label smoothing" for eq in doc["layers"][-1]["equations"])


def test_the_seed_draws_the_checks_numbers_and_defaults_to_the_config_s():
    errors = lambda doc: [eq["rel_error"] for layer in doc["layers"] for eq in layer["equations"]  # noqa: E731
                          if eq["rel_error"] is not None]
    path = CONFIGS / "mnist_mlp.yaml"
    default, seed0 = as_json("--config", path), as_json("--config", path, "--seed", "0")
    seed7, config7 = as_json("--config", path, "--seed", "7"), as_json("--config", path, "seed=7")
    assert errors(default) == errors(seed0)  # the shipped config's seed is 0
    assert errors(seed7) == errors(config7) != errors(default)
    assert_complete_and_passing(seed7, path)


def test_a_batch_beyond_the_cap_is_one_line_exit_2():
    result = run("--config", CONFIGS / "mnist_mlp.yaml", "--batch", "65")
    assert result.exit_code == 2 and result.stdout == ""
    assert "--batch" in result.stderr and "64" in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- failures
def test_unknown_layer_type_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(ODD.replace("{type: sigmoid}", "{type: swish}"))
    result = run("--config", path)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "swish" in result.stderr


def test_a_wrong_backward_fails_its_check(monkeypatch):
    real = ref.tanh_backward
    monkeypatch.setattr(ref, "tanh_backward", lambda dout, cache: 1.01 * real(dout, cache))
    result = run("--config", CONFIGS / "mnist_mlp.yaml")
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout
    assert result.stderr.strip().count("\n") == 0
    assert "gradient of h̃ in layer 3 (Tanh)" in result.stderr


def test_a_wrong_conv_weight_gradient_fails(monkeypatch, tmp_path):
    real = ref.conv2d_backward

    def wrong(dout, cache):
        dx, dW, db = real(dout, cache)
        dW = dW.copy()
        dW.flat[0] += 0.5 * abs(dW).max()  # one entry off: the random direction sees it
        return dx, dW, db

    monkeypatch.setattr(ref, "conv2d_backward", wrong)
    failed = ex.failures(ex.explain([3, 8, 8], [{"type": "conv2d", "out_channels": 2, "kernel_size": 3},
                                               {"type": "flatten"}, {"type": "linear", "out_features": 3}]))
    assert [(where, eq["name"]) for where, eq in failed] == [("layer 1 (Conv2d)", "gradient of W⁽¹⁾")]


def test_explain_imports_no_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from mlp_cli.cli import main\n"
        f"r = CliRunner().invoke(main, ['explain', '--config', {str(CONFIGS / 'mnist_mlp.yaml')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(','.join(sorted(m for m in ('torch', 'torchvision') if m in sys.modules)) or 'none')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none"


def test_the_readme_shows_the_mnist_mlp_s_actual_markdown():
    result = run("--config", CONFIGS / "mnist_mlp.yaml", "--format", "markdown")
    assert result.exit_code == 0, result.output
    shown = result.stdout.replace("\n### ", "\n#### ").replace("### ", "#### ", 1)  # one level deeper in the README
    readme = (ROOT / "README.md").read_text()
    assert "## Explain: the derivation for your net\n" in readme
    assert shown in readme, "README's Explain section is out of date: paste the output of explain --format markdown"


def test_markdown_has_no_double_exponent(odd_config):
    """a^{(8)}_n^\\top is a LaTeX error (GitHub shows it red): numbered symbols are braced first."""
    import re

    for layer in as_json("--config", odd_config)["layers"]:
        for eq in layer["equations"]:
            assert not re.search(r"\^\{\(\d+\)\}(_[a-z])?\^", eq["latex"]), eq["latex"]
            assert eq["latex"].count("{") == eq["latex"].count("}"), eq["latex"]
