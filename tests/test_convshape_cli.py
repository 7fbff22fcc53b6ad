"""`mlp-cli convshape`: one-layer and network modes, formats, exit codes, and no heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlp_cli.cli import main

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def run(*args):
    return CliRunner().invoke(main, ["convshape", *map(str, args)])


def assert_usage_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught error
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# ----------------------------------------------------------------------------- one layer
def test_the_practicals_question_floor_versus_its_ceil():
    result = run("--input", "28x28x1", "--kernel", "5", "--stride", "2")
    assert result.exit_code == 0, result.output
    assert "output 12x12x1" in result.stdout
    assert "The practical's formula (ceil) gives 13x13, not 12x12" in result.stdout
    assert "ceil((2*0 + 28 - 5)/2 + 1) = ceil(12.5) = 13" in result.stdout
    assert "floor((28 + 2*0 - 1*(5-1) - 1)/2) + 1 = floor(23/2) + 1 = 12" in result.stdout
    assert "28*28*1*12*12*1 = 112,896" in result.stdout  # the fully connected equivalent
    # "The seed" is the project's word for the practical it grew from: nobody else knows it (issue 27).
    for fmt in ("table", "json", "csv"):
        assert "seed" not in run("--input", "28x28x1", "--kernel", "5", "--stride", "2", "--format", fmt).stdout.lower()
    assert "seed" not in run("--help").stdout.lower()


def test_one_layer_json_keys_and_numbers():
    result = run("--input", "32x32x3", "--kernel", "5", "--padding", "2", "--filters", "32", "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert {"output_height", "output_width", "output_channels", "weights", "biases", "params", "fc_weights"} <= set(r)
    assert (r["output_height"], r["output_width"], r["output_channels"]) == (32, 32, 32)
    assert (r["weights"], r["biases"], r["params"]) == (5 * 5 * 3 * 32, 32, 2_432)
    assert r["fc_weights"] == 32 * 32 * 3 * 32 * 32 * 32 and r["fc_biases"] == 32 * 32 * 32
    assert r["macs"] == 32 * 32 * 32 * 5 * 5 * 3
    assert r["practical_ceil_height"] == r["practical_ceil_width"] == 32
    assert r["practical_formula"]["height"].endswith("= ceil(32) = 32")
    assert r["arch"] == {"type": "Conv2d", "in_channels": 3, "out_channels": 32, "kernel_size": 5, "stride": 1,
                         "padding": 2, "dilation": 1, "bias": True}


def test_pooling_keeps_channels_and_has_no_weights():
    r = json.loads(run("--input", "7x7x64", "--kernel", "2", "--pool", "--ceil-mode", "--json").stdout)
    assert (r["output_height"], r["output_width"], r["output_channels"]) == (4, 4, 64)
    assert r["weights"] == r["biases"] == r["params"] == 0
    assert r["arch"] == {"type": "MaxPool2d", "kernel_size": 2, "stride": 2, "padding": 0, "dilation": 1,
                         "ceil_mode": True}
    r = json.loads(run("--input", "7x7x64", "--kernel", "2", "--pool", "avg", "--json").stdout)
    assert r["layer"] == "AvgPool2d" and (r["output_height"], r["output_channels"]) == (3, 64)
    # ceil_mode's drop of a window that would start in the right padding, where the practical's formula keeps it.
    result = run("--input", "5x5x1", "--kernel", "2", "--stride", "2", "--padding", "1", "--pool", "--ceil-mode")
    assert "output 3x3x1" in result.stdout and "The practical's formula (ceil) gives 4x4" in result.stdout
    assert "PyTorch drops it: 3" in result.stdout


def test_ceil_mode_on_a_conv_layer_is_a_usage_error():
    """Issue 11: no nn.Conv2d gives the ceil size, so convshape does not headline it."""
    for extra in ([], ["--json"]):
        result = run("--input", "7x7x64", "--kernel", "2", "--stride", "2", "--ceil-mode", *extra)
        assert result.exit_code == 2 and result.stdout == ""
        assert "--ceil-mode is an option of pooling layers: nn.Conv2d has no ceil_mode" in result.stderr
        assert "--pool max" in result.stderr


def test_non_square_layer_and_csv():
    result = run("--input", "9x12x3", "--kernel", "3x5", "--stride", "2", "--padding", "1", "--dilation", "2",
                 "--filters", "8", "--format", "csv")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.strip().splitlines()
    r = dict(zip(header.split(","), row.split(",")))
    # H: floor((9 + 2 - 2*2 - 1)/2) + 1 = 4; W: floor((12 + 2 - 2*4 - 1)/2) + 1 = 3
    assert (r["output_height"], r["output_width"], r["output_channels"]) == ("4", "3", "8")
    assert r["weights"] == str(3 * 5 * 3 * 8)


@pytest.mark.parametrize("args, fragments", [
    (["--input", "28x", "--kernel", "3"], ["--input '28x'", "HxWxC"]),
    (["--input", "axbxc", "--kernel", "3"], ["--input 'axbxc'"]),
    (["--input", "0x28x1", "--kernel", "3"], ["--input '0x28x1'"]),
    (["--input", "28x28x1", "--kernel", "0"], ["--kernel '0'"]),
    (["--input", "28x28x1"], ["--kernel K is required"]),
    (["--input", "28x28x1", "--kernel", "30"], ["Conv2d: kernel 30 is larger than the padded input 28x28"]),
    (["--input", "5x5x1", "--kernel", "3", "--pool", "--padding", "2"], ["padding 2 is more than half of kernel 3"]),
    (["--input", "5x5x1", "--kernel", "6", "--pool"], ["MaxPool2d: kernel 6 is larger than the padded input 5x5"]),
    ([], ["pass --input HxWxC --kernel K for one layer, or --config FILE"]),
    (["--input", "28x28x1", "--kernel", "5", "--json", "--format", "csv"], ["contradict"]),
    (["--input", "28x28x1", "--kernel", "5", "train.epochs=3"], ["go with --config"]),
    (["--config", CONFIGS / "mnist_lenet5.yaml", "--kernel", "3"], ["--kernel belongs to one-layer mode"]),
])
def test_bad_usage_exits_2_with_one_message(args, fragments):
    assert_usage_error(run(*args), "error: ", *fragments)


def test_input_without_channels_means_one():
    r = json.loads(run("--input", "28x28", "--kernel", "5", "--json").stdout)
    assert r["input_channels"] == 1 and r["output_height"] == 24


# ----------------------------------------------------------------------------- network
def test_network_json():
    result = run("--config", CONFIGS / "cifar10_cnn.yaml", "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["total_params"] == 1_191_170
    assert [l["params"] for l in r["layers"] if l["params"]] == [2_432, 51_264, 102_464, 1_025_000, 10_010]
    first, flat = r["layers"][0], r["layers"][9]
    assert (first["name"], first["type"], first["output_shape"]) == ("0", "Conv2d", [32, 32, 32])
    assert (flat["type"], flat["output_shape"]) == ("Flatten", [1024])
    assert r["input_shape"] == [3, 32, 32] and r["batch_size"] == 128
    assert r["param_bytes"] == 4 * 1_191_170 and r["total_macs"] == 23_152_400


def test_network_table_and_csv():
    result = run("--config", CONFIGS / "mnist_lenet5.yaml")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Total params: 61,706" in out
    assert "Conv2d: 3" in out and "[16, 10, 10]" in out and "240,000" in out
    assert "Activations, one batch of 128" in out
    result = run("--config", CONFIGS / "mnist_lenet5.yaml", "--format", "csv", "--batch-size", "7")
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "name,type,output_shape,params,macs,receptive_field,jump"
    assert lines[6] == "5,MaxPool2d,16x5x5,0,0,16x16,4x4"
    r = json.loads(run("--config", CONFIGS / "mnist_lenet5.yaml", "--json", "--batch-size", "7").stdout)
    assert r["batch_size"] == 7


def test_network_overrides_show_the_ceil_mode_question():
    r = json.loads(run("--config", CONFIGS / "cifar10_cnn_improved.yaml", "--json").stdout)
    assert r["layers"][12]["output_shape"] == [1024] and r["total_params"] == 1_191_490
    r = json.loads(run("--config", CONFIGS / "cifar10_cnn_improved.yaml", "--json",
                       "model.layers.11.ceil_mode=false").stdout)
    assert r["layers"][12]["output_shape"] == [576]


BASE = """\
data: {{dataset: {dataset}}}
model:
  layers:
{layers}
train: {{epochs: 1, batch_size: 8}}
optim: {{lr: 0.1}}
"""


def write_config(tmp_path, layers: str, dataset="mnist") -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.format(dataset=dataset, layers=layers))
    return path


@pytest.mark.parametrize("layers, dataset, message", [
    ("    - {type: conv2d, out_channels: 4, kernel_size: 5}\n"
     "    - {type: maxpool2d, kernel_size: 2}\n"
     "    - {type: conv2d, out_channels: 4, kernel_size: 5}\n"
     "    - {type: maxpool2d, kernel_size: 2}\n"
     "    - {type: conv2d, out_channels: 4, kernel_size: 5}\n",
     "mnist", "layer 4 (Conv2d): kernel 5 is larger than the padded input 4x4 (a 4x4 input from layer 3 (MaxPool2d))"),
    ("    - {type: conv2d, out_channels: 4, kernel_size: 3}\n"
     "    - {type: linear, out_features: 10}\n",
     "mnist", "layer 1 (Linear): receives a [C, H, W] input [4, 26, 26] from layer 0 (Conv2d); add {type: flatten}"),
    ("    - {type: flatten}\n"
     "    - {type: linear, out_features: 10, in_features: 1000}\n",
     "cifar10", "layer 1 (Linear): expects in_features=1000 but receives 3072 features from layer 0 (Flatten)"),
    ("    - {type: conv2d, out_channels: 4, kernel_size: 3, in_channels: 3}\n",
     "mnist", "layer 0 (Conv2d): expects in_channels=3 but receives 1 channels from the input [1, 28, 28]"),
    ("    - {type: conv2d, out_channels: 4, kernel_size: 3}\n",
     "circles", "layer 0 (Conv2d): needs a [C, H, W] input but receives 2 flat features from the input [2]"),
])
def test_configs_whose_shapes_do_not_fit_exit_2(tmp_path, layers, dataset, message):
    result = run("--config", write_config(tmp_path, layers, dataset))
    assert_usage_error(result, message)
    assert result.stdout == ""


def test_invalid_config_exits_2(tmp_path):
    path = write_config(tmp_path, "    - {type: conv2d, out_channel: 4, kernel_size: 3}\n")
    assert_usage_error(run("--config", path), "invalid config", "out_channel")
    assert_usage_error(run("--config", tmp_path / "missing.yaml"), "config file not found")


# ----------------------------------------------------------------------------- speed: no heavy imports
def test_convshape_imports_neither_numpy_nor_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from mlp_cli.cli import main\n"
        "runner = CliRunner()\n"
        f"a = runner.invoke(main, ['convshape', '--config', {str(CONFIGS / 'cifar10_cnn_improved.yaml')!r}, '--json'])\n"
        "b = runner.invoke(main, ['convshape', '--input', '28x28x1', '--kernel', '5', '--stride', '2'])\n"
        "c = runner.invoke(main, ['convshape', '--input', '28x28x1', '--kernel', '50'])\n"
        "assert (a.exit_code, b.exit_code, c.exit_code) == (0, 0, 2), (a.output, b.output, c.output)\n"
        "heavy = sorted(m for m in ('numpy', 'torch', 'torchvision', 'matplotlib') if m in sys.modules)\n"
        "print(','.join(heavy) or 'none')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none"


def test_compact_json_is_plain_json():
    from mlp_cli import config, convshape, shapes

    cfg = config.load(CONFIGS / "cifar10_cnn_improved.yaml")
    shape = shapes.dataset_input_shape(cfg.data)
    report = convshape.network_report(shape, shapes.resolve(shape, [l.model_dump() for l in cfg.model.layers]), 4)
    assert json.loads(convshape.to_json(report)) == report
    one = convshape.layer_report(9, 12, 3, (3, 5), (2, 1), (1, 2), (2, 1), filters=4)
    assert json.loads(convshape.to_json(one)) == one
