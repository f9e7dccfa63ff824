"""`edge-agent model ...` arguments are checked at the edge: each bad one is one clear line and exit 2, before
any model is loaded or any image evaluated, and nothing is created on the way."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edge_agent.cli import app
from tests.test_detector import constant_model, v8_output


@pytest.fixture
def model(tmp_path):
    return str(constant_model(tmp_path / "m.onnx", v8_output(), names="{0: 'pothole', 1: 'crack'}"))


@pytest.mark.parametrize(("args", "option"), [
    (["bench", "--threads", "-1"], "'--threads'"),
    (["bench", "--threads", "100"], "'--threads'"),
    (["bench", "--runs", "0"], "'--runs'"),
    (["eval", "--data", "{tmp}", "--threads", "-1"], "'--threads'"),
    (["eval", "--data", "{tmp}", "--threshold", "1.5"], "'--threshold'"),
    (["eval", "--data", "{tmp}", "--threshold", "-0.1"], "'--threshold'"),
    (["eval", "--data", "{tmp}/missing"], "'--data'"),
    (["eval", "--data", "{tmp}", "--plot", "{tmp}/no/such/folder/pr.png"], "'--plot'"),
    (["eval", "--data", "{tmp}", "--plot", "{tmp}"], "'--plot'"),  # matplotlib would write {tmp}.png
    (["info", "--names", "pothole,,crack"], "'--names'"),
    (["quantize", "{model}", "{tmp}/out.onnx", "--calib", "{tmp}", "--runs", "0"], "'--runs'"),
    (["quantize", "{model}", "{tmp}/out.onnx", "--calib", "{tmp}", "--calib-images", "0"], "'--calib-images'"),
    (["quantize", "{model}", "{tmp}/out.onnx", "--calib", "{tmp}", "--max-ap-drop", "2"], "'--max-ap-drop'"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_arguments_exit_2_naming_the_option(tmp_path, model, args, option):
    args = [a.format(tmp=tmp_path, model=model) for a in args]
    if args[0] != "quantize":
        args += ["--model", model]
    res = CliRunner().invoke(app, ["model", *args])
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)  # a usage error, not a traceback
    assert option in res.output
    assert not (tmp_path / "no").exists() and not (tmp_path / "out.onnx").exists()


def test_names_name_the_classes_of_a_model_that_names_none(tmp_path):
    anon = constant_model(tmp_path / "anon.onnx", v8_output())
    res = CliRunner().invoke(app, ["model", "info", "--model", str(anon), "--names", " pothole, crack", "--json"])
    assert res.exit_code == 0, res.output
    assert '"classes": ["pothole", "crack"]' in res.stdout
    wrong = CliRunner().invoke(app, ["model", "info", "--model", str(anon), "--names", "pothole"])
    assert wrong.exit_code == 2 and "but there are 1 class names" in wrong.output
    twice = CliRunner().invoke(app, ["model", "info", "--model", str(anon), "--names", "pothole,pothole"])
    assert twice.exit_code == 2 and "pothole given more than once" in twice.output  # one class's boxes would vanish


@pytest.mark.parametrize("imgsz", ["[0, -5]", "[100000, 100000]"])
def test_an_absurd_input_size_in_the_metadata_is_refused_in_one_line(tmp_path, imgsz):
    dynamic = constant_model(tmp_path / "dyn.onnx", v8_output(), names="{0: 'pothole', 1: 'crack'}",
                             input_shape=[1, 3, "h", "w"], meta={"imgsz": imgsz})
    res = CliRunner().invoke(app, ["model", "info", "--model", str(dynamic)])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert "model not usable" in res.output and "outside 32-4096 px" in res.output


def edge_agent(*args: str) -> subprocess.CompletedProcess:
    """The real entry point with stderr a pipe, as under systemd, cron or a script."""
    return subprocess.run([sys.executable, "-c", "from edge_agent.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


def test_errors_are_one_unwrapped_line_when_stderr_is_not_a_terminal(tmp_path):
    usage = edge_agent("model", "bench", "--threads", "-1")
    assert usage.returncode == 2
    errors = [line for line in usage.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and errors[0].startswith("Error: Invalid value for '--threads': ")
    assert "│" not in usage.stderr and "Traceback" not in usage.stderr
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 6, "model.onnx")
    missing = edge_agent("model", "info", "--model", str(deep))
    assert missing.returncode == 2
    assert f"model not usable: model file not found: {deep}" in missing.stderr.splitlines()


def test_model_info_describes_the_model_the_box_runs(tmp_path):
    """`model info` took no --config: on a box it described the bundled model, not the update it runs."""
    import hashlib
    import json
    import shutil

    from edge_agent.detect.model_update import ModelStore

    state = tmp_path / "state"
    store = ModelStore(state / "models")  # as a pushed update leaves it: <sha256>.onnx and current.onnx
    pushed = constant_model(tmp_path / "pushed.onnx", v8_output())
    sha = hashlib.sha256(pushed.read_bytes()).hexdigest()
    store.root.mkdir(parents=True)
    shutil.copy(pushed, store.root / f"{sha}.onnx")
    store.current_link.symlink_to(f"{sha}.onnx")
    config = tmp_path / "agent.toml"
    config.write_text(f'[device]\nstate_dir = "{state}"\n')
    got = CliRunner().invoke(app, ["model", "info", "--config", str(config), "--json"])
    assert got.exit_code == 0, got.output
    assert json.loads(got.output)["sha256"] == sha
    bundled = CliRunner().invoke(app, ["model", "info", "--json"], env={"EDGE_AGENT_CONFIG": ""})
    assert json.loads(bundled.output)["sha256"] != sha
