"""End-to-end: the bundled all-MiniLM-L6-v2 fine-tuned on real Rotten Tomatoes snippets."""

import json

import pytest

from adv_large_batch import cli


@pytest.mark.slow
def test_real_minilm_scala_finetune_beats_majority_class(tmp_path):
    out = tmp_path / "metrics.json"
    code = cli.main(
        [
            "finetune",
            "--task",
            "rotten_tomatoes",
            "--train-limit",
            "768",
            "--eval-limit",
            "256",
            "--batch-size",
            "32",
            "--micro-batch-size",
            "16",
            "--epochs",
            "2",
            "--method",
            "scala",
            "--adv-start-epoch",
            "2",
            "--optimizer",  # the main job's recipe (scripts/main_job.sh), half its data
            "lamb",
            "--lr",
            "2e-3",
            "--lr-scaling",
            "sqrt",
            "--base-batch-size",
            "32",
            "--verbose",
            "0",
            "--logdir",
            str(tmp_path / "tb"),
            "--metrics-out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    accuracy = result["validation"]["accuracy"]
    majority = result["majority_class_accuracy"]
    print(
        f"validation accuracy {accuracy:.3f}, majority class {majority:.3f}, "
        f"untrained head {result['validation_untrained_head']['accuracy']:.3f}"
    )
    assert accuracy > majority + 0.05
    history = result["history"]
    assert history["adv_on"] == [0.0, 1.0]
    assert history["regulariser"][1] > 0 and history["perturbation_linf"][1] == pytest.approx(1e-5)
    assert result["config"]["adversarial"]["method"] == "scala"
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events, "TensorBoard wrote no event file"
