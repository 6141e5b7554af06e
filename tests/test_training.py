import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import clip_vendor
import evaluate
import train_head
from corpus.feature_cache import CacheError, write_meta
from heads import training
from heads.checkpoints import CheckpointError, save_checkpoint
from heads.loaded_split import HostSplit, SplitTensors, load_split_tensors
from infra.cli import StageError
from infra.file_io import FolderLocked, OutOfSpace, file_sha256
from tests.helpers import (
    PROJECT,
    assert_same_tensors,
    copied,
    order_only_cache,
    planted,
    refusal,
    start_script,
    train_args,
    two_ranks,
    usage_error,
    wait_until,
)


@pytest.fixture(scope="module")
def order_cache(small_clip, tmp_path_factory):
    """256 train / 24 valid videos of 4 frames where only frame order tells captions apart."""
    cache = tmp_path_factory.mktemp("order") / "cache"
    return order_only_cache(small_clip, cache, n_train=256, n_valid=24, n_frames=4)


@pytest.fixture(scope="module")
def small_cache(small_clip, tmp_path_factory):
    return order_only_cache(small_clip, tmp_path_factory.mktemp("small") / "cache", n_train=64, n_valid=16, n_frames=4)


def best_record(out):
    return torch.load(out / "best.pt", weights_only=True)["history"][-1]


def test_order_aware_heads_beat_meanp_on_hard_where_only_order_matters(small_clip, order_cache, tmp_path):
    settings = {
        "meanP": [],
        "seqTransf": ["--epochs", "8", "--batch-size", "32", "--lr", "3e-3"],
        "tightTransf": ["--epochs", "8", "--batch-size", "8", "--lr", "3e-3"],
        "seqLSTM": ["--epochs", "8", "--batch-size", "32", "--lr", "3e-3"],
    }
    hard_r1, tied = {}, {}
    for head, extra in settings.items():
        out = tmp_path / head
        train_head.main(train_args(order_cache, small_clip, out, head, "--reverse-negatives", *extra))
        record = best_record(out)
        hard_r1[head] = record["selection"]
        tied[head] = record["valid"]["t2v"]["n_tied"] / record["valid"]["t2v"]["n_queries"]
    # meanP cannot separate V from flip(V): every query ties its target with the reversal, so the
    # tie-aware R@1 is at most one half
    assert tied["meanP"] == 1.0 and hard_r1["meanP"] <= 50.0
    assert tied["seqTransf"] == 0.0 and tied["tightTransf"] == 0.0 and tied["seqLSTM"] == 0.0
    assert hard_r1["seqTransf"] >= 80.0, hard_r1
    assert hard_r1["tightTransf"] >= 75.0, hard_r1
    assert hard_r1["seqLSTM"] >= 75.0, hard_r1  # added through the head seam alone: one class, one HEADS entry


def test_checkpoint_and_log_contents(small_clip, small_cache, tmp_path):
    out = tmp_path / "run"
    train_head.main(train_args(small_cache, small_clip, out, "seqTransf", "--epochs", "3", "--batch-size", "16"))
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["config"]["seed"] == 0 and best["config"]["head"] == "seqTransf"
    assert best["config"]["cache_meta_sha256"] == file_sha256(small_cache / "cache_meta.json")
    assert "transformerClip.resblocks.0.attn.in_proj_weight" in best["head"]
    assert best["config"]["frames"] == 4 and best["config"]["lr"] == 1e-4
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2, 3]
    assert best["epoch"] == max(log, key=lambda record: record["selection"])["epoch"]


def head_tensors(path):
    return torch.load(path, weights_only=True)["head"]


def test_same_seed_same_weights_on_cpu(small_clip, small_cache, tmp_path):
    for name in ("a", "b"):
        train_head.main(
            train_args(small_cache, small_clip, tmp_path / name, "tightTransf", "--epochs", "2", "--batch-size", "16")
        )
    first, second = head_tensors(tmp_path / "a" / "last.pt"), head_tensors(tmp_path / "b" / "last.pt")
    assert_same_tensors(first, second)


def test_resume_after_kill_equals_uninterrupted_run(small_clip, small_cache, tmp_path):
    extra = ["--epochs", "12", "--batch-size", "16", "--lr", "3e-3"]  # tightTransf: dropout must replay too
    killed = tmp_path / "killed"
    command = [
        sys.executable,
        str(PROJECT / "train_head.py"),
        *train_args(small_cache, small_clip, killed, "tightTransf", *extra),
    ]
    process = subprocess.Popen(
        command,
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
    )
    while process.poll() is None:
        log = killed / "log.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len((killed / "log.jsonl").read_text().splitlines())
    assert 2 <= finished < 12, f"killed after {finished} epochs"
    train_head.main(train_args(small_cache, small_clip, killed, "tightTransf", *extra))
    straight = tmp_path / "straight"
    train_head.main(train_args(small_cache, small_clip, straight, "tightTransf", *extra))
    for name in ("last.pt", "best.pt"):
        assert_same_tensors(head_tensors(killed / name), head_tensors(straight / name))

    def strip(path):
        return [
            {k: v for k, v in json.loads(line).items() if k not in ("seconds", "startup_seconds")}
            for line in path.read_text().splitlines()
        ]

    assert strip(killed / "log.jsonl") == strip(straight / "log.jsonl")


def test_resume_into_a_run_of_a_different_cache_is_refused(small_clip, small_cache, tmp_path):
    out = tmp_path / "run"
    train_head.main(train_args(small_cache, small_clip, out, "seqTransf", "--epochs", "1", "--batch-size", "16"))
    changed = tmp_path / "changed_cache"
    shutil.copytree(small_cache, changed)
    meta = json.loads((changed / "cache_meta.json").read_text())
    meta["contract"]["sampling"]["fps"] = 2.0
    write_meta(changed, meta)
    with pytest.raises(StageError, match="was trained with other settings \\(cache: it has"):
        train_head.main(train_args(changed, small_clip, out, "seqTransf", "--epochs", "1", "--batch-size", "16"))


def test_wrong_checkpoint_is_refused(small_cache, small_clip, tmp_path):
    other = tmp_path / "other.pt"
    torch.save(clip_vendor.read_state_dict(small_clip) | {"logit_scale": torch.tensor(1.0)}, other)
    args = train_args(small_cache, small_clip, tmp_path / "run", "seqTransf", batch_size=16)
    args[args.index("--clip") + 1] = str(other)
    with pytest.raises(
        StageError, match="--clip: --clip is not the backbone .* was extracted with: it differs in weights"
    ):
        train_head.main(args)


def test_batches_hold_one_caption_per_video_item():
    pairs = [{"video_row": v, "caption_row": 10 * v + c, "reversed": int(c >= 3)} for v in range(20) for c in range(5)]
    items = training.train_items(pairs, reverse_negatives=True)
    for video_rows, flags, caption_rows in training.epoch_batches(
        items, 8, 2, seed=0, epoch=1, my_videos=sorted(items)
    ):
        keys = list(zip(video_rows.tolist(), flags.tolist(), strict=True))
        assert len(keys) == len(set(keys)) == 16  # each video and its reversal, once each
        for (video, flag), caption in zip(keys, caption_rows.tolist(), strict=True):
            assert caption // 10 == video and int(caption % 10 >= 3) == flag
    forward_only = training.train_items(pairs, reverse_negatives=False)
    assert all(set(captions) == {0} for captions in forward_only.values())


def test_reverse_negatives_are_refused_where_the_train_split_has_no_reversal(small_clip, tmp_path, capsys):
    """Issue 29: on a dataset without reversals the flag was accepted, the log said "(+ their
    reversals)" and the report "reverse negatives: yes". Now the flag is refused there, naming it;
    `if-any` (what run_all.sh passes) trains without them and records that it had none."""
    cache = order_only_cache(small_clip, tmp_path / "cache", n_train=16, n_valid=8, n_test=8, non_reversible_every=1)
    args = train_args(cache, small_clip, tmp_path / "run", "meanP", "--epochs", "1", batch_size=8)
    message = str(refusal(train_head.main, [*args, "--reverse-negatives"]))
    assert message.startswith(f"--reverse-negatives: {cache / 'train'} has no reversed video to use as a negative")
    assert not (tmp_path / "run").exists()  # refused on its inputs: no empty run folder left behind
    capsys.readouterr()
    train_head.main([*args, "--reverse-negatives", "if-any", "--learn-temp"])
    assert "their reversals" not in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["reverse_negatives"] is False


def test_a_batch_larger_than_the_train_split_is_refused_with_one_that_fits(small_clip, tmp_path):
    """Issue 29: `--batch-size 128: the train split has only 12 videos`, no suggestion, and an empty
    run folder left behind."""
    cache = order_only_cache(small_clip, tmp_path / "cache", n_train=12, n_valid=8, n_test=8)
    message = str(refusal(train_head.main, train_args(cache, small_clip, tmp_path / "run", "meanP", batch_size=128)))
    assert message == (
        f"--batch-size 128: {cache / 'train'} has only 12 videos, so no step of 128 fits; "
        "give --batch-size 12 or less (e.g. --batch-size 3: 4 steps per epoch)"
    )
    assert not (tmp_path / "run").exists()


def test_batches_do_not_depend_on_the_number_of_ranks():
    # some videos have no reversal (RTime train records with "reverse": false): rank shares differ in size
    pairs = [
        {"video_row": v, "caption_row": 10 * v + c, "reversed": int(c >= 3)}
        for v in range(30)
        for c in range(5)
        if not (v % 4 == 0 and c >= 3)
    ]
    items = training.train_items(pairs, reverse_negatives=True)
    alone = list(training.epoch_batches(items, 8, 3, seed=1, epoch=2, my_videos=sorted(items)))
    for world_size in (2, 3):
        shares = [
            list(training.epoch_batches(items, 8, 3, seed=1, epoch=2, my_videos=sorted(items)[rank::world_size]))
            for rank in range(world_size)
        ]
        for step, whole in enumerate(alone):
            gathered = [np.concatenate([share[step][column] for share in shares]) for column in range(3)]
            as_items = sorted(zip(*(column.tolist() for column in gathered), strict=True))
            assert as_items == sorted(zip(*(column.tolist() for column in whole), strict=True))
        sizes = {len(share[step][0]) for share in shares for step in range(3)}
        assert len(sizes) > 1  # the shares really are uneven: the gather must cope


@pytest.fixture(scope="module")
def partly_reversible_cache(small_clip, tmp_path_factory):
    """The order task, with every 5th train video lacking reverse captions ("reverse": false)."""
    return order_only_cache(
        small_clip, tmp_path_factory.mktemp("partly") / "cache", n_train=256, n_frames=4, non_reversible_every=5
    )


def test_two_ranks_with_reversals_equal_one_process(small_clip, partly_reversible_cache, tmp_path):
    """Two ranks (loopback, gloo, the environment torchrun sets) hold different numbers of
    reversals; they must still compute the one-process loss over the same global batches and end
    with the same head (float tolerance: only summation orders differ)."""
    extra = ["--reverse-negatives", "--epochs", "4", "--batch-size", "32", "--lr", "3e-3"]
    args = train_args(partly_reversible_cache, small_clip, tmp_path / "ddp", "seqTransf", *extra)
    for code, output in two_ranks("train_head.py", lambda node: args, port=29533):
        assert code == 0, output
    train_head.main(train_args(partly_reversible_cache, small_clip, tmp_path / "alone", "seqTransf", *extra))
    ddp, alone = (
        [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        for name in ("ddp", "alone")
    )
    assert len(ddp) == len(alone) == 4
    loss_gap = max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(ddp, alone, strict=True))
    assert loss_gap < 1e-5, [(a["train_loss"], b["train_loss"]) for a, b in zip(ddp, alone, strict=True)]
    assert [a["selection"] for a in ddp] == pytest.approx([b["selection"] for b in alone], abs=2.1)
    heads = [torch.load(tmp_path / name / "last.pt", weights_only=True)["head"] for name in ("ddp", "alone")]
    # Adam magnifies the summation-order noise of near-zero gradients: weights agree to 1% of their scale
    scale_gap = max(((heads[0][k] - heads[1][k]).abs().max() / heads[1][k].abs().max()).item() for k in heads[1])
    assert scale_gap < 0.01, scale_gap


def test_ranks_given_different_settings_all_stop_naming_the_flag(small_clip, small_cache, tmp_path):
    """Round four: --frames 12 on one node and --frames 4 on the other (or another --lr) exited 0 and
    recorded node 0's settings."""
    lrs = ("1e-3", "3e-3")
    args = [train_args(small_cache, small_clip, tmp_path / "run", "seqTransf", "--lr", lr, batch_size=16) for lr in lrs]
    for code, output in two_ranks("train_head.py", lambda node: args[node], port=29545):
        assert code == 1, output
        assert "the ranks do not run the same job: --lr differs (0.001 on rank 0 (" in output
        assert "0.003 on rank 1 (" in output
    assert not (tmp_path / "run" / "config.json").exists()


def test_tighttransf_reads_token_features_when_asked(small_cache, small_clip, tmp_path):
    train_head.main(
        train_args(
            small_cache,
            small_clip,
            tmp_path / "tokens",
            "tightTransf",
            "--text-input",
            "tokens",
            "--epochs",
            "2",
            "--batch-size",
            "16",
        )
    )
    checkpoint = torch.load(tmp_path / "tokens" / "best.pt", weights_only=True)
    assert checkpoint["config"]["text_input"] == "tokens"
    positions = checkpoint["head"]["cross.embeddings.position_embeddings.weight"]
    assert len(positions) == 4 + 77  # frames + the text's context length
    out = tmp_path / "tokens_valid.json"
    evaluate.main(
        [
            "--cache",
            str(small_cache),
            "--split",
            "valid",
            "--ckpt",
            str(tmp_path / "tokens" / "best.pt"),
            "--out",
            str(out),
            "--allow-overlap",  # the split the epoch was selected on: scored again to compare
        ]
    )
    result = json.loads(out.read_text())
    assert result["provenance"]["text_input"] == "tokens"
    assert result["hard"]["t2v"]["expected"]["R@1"] == pytest.approx(checkpoint["history"][-1]["selection"])


def test_missing_valid_split_is_named(small_cache, small_clip, tmp_path):
    cache = tmp_path / "no_valid"
    shutil.copytree(small_cache, cache)
    shutil.rmtree(cache / "valid")
    with pytest.raises(CacheError, match="valid"):
        train_head.main(train_args(cache, small_clip, tmp_path / "run", "seqTransf"))


def test_early_stopping_after_patience_epochs_without_improvement(small_cache, small_clip, tmp_path):
    out = tmp_path / "stalled"
    train_head.main(
        train_args(
            small_cache,
            small_clip,
            out,
            "seqTransf",
            "--epochs",
            "10",
            "--batch-size",
            "16",
            "--lr",
            "0",
            "--patience",
            "2",
        )
    )  # nothing can improve after epoch 1
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2, 3]
    assert torch.load(out / "last.pt", weights_only=True)["state"]["stopped"]


def test_init_from_starts_from_another_heads_weights_and_refuses_other_kinds(
    small_clip, small_cache, order_cache, tmp_path
):
    source = tmp_path / "source"  # trained on one dataset ...
    train_head.main(train_args(order_cache, small_clip, source, "seqTransf", "--epochs", "1", "--batch-size", "32"))
    started = tmp_path / "started"  # ... continued on another; with lr 0 the weights stay where they started
    train_head.main(
        train_args(
            small_cache,
            small_clip,
            started,
            "seqTransf",
            "--init-from",
            str(source / "best.pt"),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--lr",
            "0",
        )
    )
    source_weights, started_weights = head_tensors(source / "best.pt"), head_tensors(started / "last.pt")
    assert_same_tensors(source_weights, started_weights)
    assert torch.load(started / "last.pt", weights_only=True)["config"]["init_from"] == str(source / "best.pt")
    with pytest.raises(CheckpointError, match="holds a seqTransf head; this run trains tightTransf"):
        train_head.main(
            train_args(
                small_cache,
                small_clip,
                tmp_path / "tight",
                "tightTransf",
                "--init-from",
                str(source / "best.pt"),
                batch_size=16,
            )
        )
    narrow = tmp_path / "narrow.bin"  # a CLIP4Clip-style state dict of another width
    torch.save({key: torch.zeros(value.shape[:-1] + (32,)) for key, value in source_weights.items()}, narrow)
    with pytest.raises(CheckpointError, match=r"has shape \(.*32\), this head needs \(.*64\)"):
        train_head.main(
            train_args(
                small_cache, small_clip, tmp_path / "narrow", "seqTransf", "--init-from", str(narrow), batch_size=16
            )
        )


@pytest.mark.parametrize(
    "head, extra", [("seqTransf", []), ("tightTransf", ["--text-input", "tokens"]), ("mlpScore", [])]
)
def test_frames_read_from_the_host_train_and_score_exactly_as_on_the_device(
    small_clip, small_cache, tmp_path, head, extra
):
    heads, scores = {}, {}
    for where in ("device", "host"):
        run = tmp_path / where
        train_head.main(
            train_args(small_cache, small_clip, run, head, "--epochs", "1", "--batch-size", "16", "--reverse-negatives")
            + [*extra, "--data-on", where]
        )
        heads[where] = torch.load(run / "last.pt", weights_only=True)["head"]
        out = tmp_path / f"{where}_result.json"
        evaluate.main(
            ["--cache", str(small_cache), "--ckpt", str(run / "best.pt"), "--out", str(out), "--data-on", where]
        )
        scores[where] = np.load(out.with_suffix("") / "hard_scores.npy")
    assert_same_tensors(heads["device"], heads["host"])
    assert np.array_equal(scores["device"], scores["host"])


def test_auto_leaves_a_split_on_the_host_when_it_would_take_over_half_the_free_memory(small_cache, monkeypatch):
    from heads import loaded_split

    padded = 64 * 4 * 64 * 2  # train: 64 videos x 4 frames x 64 wide, fp16
    monkeypatch.setattr(loaded_split, "free_memory", lambda device: 2 * padded)
    assert isinstance(loaded_split.load_split_tensors(small_cache, "train", 4, "cpu", where="auto"), SplitTensors)
    monkeypatch.setattr(loaded_split, "free_memory", lambda device: 2 * padded - 1)
    assert isinstance(loaded_split.load_split_tensors(small_cache, "train", 4, "cpu", where="auto"), HostSplit)


def test_training_stops_on_a_non_finite_loss_naming_epoch_and_step_and_saves_nothing(small_clip, tmp_path):
    cache = order_only_cache(small_clip, tmp_path / "cache", n_train=64, n_valid=8, n_test=4, n_frames=4)
    feats = np.load(cache / "train" / "video_feats.npy")
    feats[12] = np.inf  # one frame of one train video
    planted(cache, "train", "video_feats.npy", feats)
    with pytest.raises(StageError, match=r"loss is not finite at epoch 1, step [1-4] of 4"):
        train_head.main(train_args(cache, small_clip, tmp_path / "run", "seqTransf", "--epochs", "2", batch_size=16))
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "last.pt").exists()


def test_a_non_finite_head_is_never_saved(tmp_path):
    with pytest.raises(CheckpointError, match="not saving .*best.pt: head weight w holds NaN or Inf"):
        save_checkpoint(tmp_path / "best.pt", {"head": {"w": torch.tensor([1.0, float("nan")])}})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--batch-size", "1"),
        ("--epochs", "0"),
        ("--frames", "0"),
        ("--frames", "3"),
        ("--lr", "nan"),
        ("--logit-scale", "0"),
        ("--logit-scale", "nan"),
        ("--logit-scale", "101"),
    ],
)
def test_train_refuses_nonsense_before_any_work_naming_the_flag(tmp_path, capsys, flag, value):
    args = ["--cache", str(tmp_path / "none"), "--head", "seqTransf", "--out", str(tmp_path / "run"), flag, value]
    with pytest.raises(SystemExit) as stop:
        train_head.main(args)
    assert stop.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_training_out_of_disk_is_a_clear_error_and_a_rerun_ends_identical(small_clip, tmp_path, monkeypatch):
    cache = order_only_cache(small_clip, tmp_path / "cache", n_train=32, n_valid=8, n_test=4, n_frames=4)
    args = train_args(cache, small_clip, tmp_path / "run", "seqTransf", "--epochs", "3", batch_size=16)
    real_write_bytes, writes = Path.write_bytes, []

    def full_after_three(self, data):  # config.json, best.pt and last.pt fit; the epoch's log.jsonl does not
        if tmp_path / "run" in self.parents:  # the run's files (not the cache's check stamps)
            writes.append(self.name)
        if len(writes) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_after_three)
    with pytest.raises(OutOfSpace, match=r"no space left on the device writing .*run/log.jsonl"):
        train_head.main(args)
    monkeypatch.undo()
    assert not list((tmp_path / "run").glob(".*.tmp*"))
    train_head.main(args)
    train_head.main(train_args(cache, small_clip, tmp_path / "lone", "seqTransf", "--epochs", "3", batch_size=16))
    resumed, lone = (torch.load(tmp_path / name / "last.pt", weights_only=True)["head"] for name in ("run", "lone"))
    assert_same_tensors(resumed, lone)


@pytest.fixture(scope="module")
def training_case(small_clip, tmp_path_factory):
    """A cache, the training arguments, and the last.pt weights of an uninterrupted run."""
    root = tmp_path_factory.mktemp("training")
    cache = order_only_cache(small_clip, root / "cache", n_train=64, n_valid=8, n_test=4, n_frames=4)
    extra = ("--epochs", "6", "--lr", "3e-3")
    train_head.main(train_args(cache, small_clip, root / "lone", "tightTransf", *extra, batch_size=16))
    return cache, extra, torch.load(root / "lone" / "last.pt", weights_only=True)["head"]


def finished_epochs(run):
    log = run / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.parametrize("signal_name,after_epochs", [("SIGINT", 1), ("SIGKILL", 3)])
def test_training_interrupted_resumes_to_identical_weights(
    small_clip, training_case, tmp_path, signal_name, after_epochs
):
    cache, extra, lone = training_case
    run = tmp_path / "run"
    process = start_script("train_head.py", train_args(cache, small_clip, run, "tightTransf", *extra, batch_size=16))
    wait_until(lambda: finished_epochs(run) >= after_epochs, process)
    process.send_signal(getattr(signal, signal_name))
    _, errors = process.communicate()
    if signal_name == "SIGINT":
        assert process.returncode == 130 and "interrupted; the epochs finished so far are kept in last.pt" in errors
    assert after_epochs <= finished_epochs(run) < 6
    train_head.main(train_args(cache, small_clip, run, "tightTransf", *extra, batch_size=16))
    resumed = torch.load(run / "last.pt", weights_only=True)["head"]
    assert_same_tensors(resumed, lone)


@pytest.mark.parametrize("after_epochs", [0, 3])
def test_a_second_training_on_the_same_folder_stops_at_once_and_the_first_ends_identical(
    small_clip, training_case, tmp_path, after_epochs
):
    cache, extra, lone = training_case
    run = tmp_path / "run"
    first = start_script("train_head.py", train_args(cache, small_clip, run, "tightTransf", *extra, batch_size=16))
    wait_until(lambda: (run / "config.json").exists() and finished_epochs(run) >= after_epochs, first)
    first.send_signal(signal.SIGSTOP)  # held at this moment, so the second run meets it there
    try:
        with pytest.raises(FolderLocked, match=rf"{run} is in use by another run \(pid {first.pid}\)"):
            train_head.main(train_args(cache, small_clip, run, "tightTransf", *extra, batch_size=16))
    finally:
        first.send_signal(signal.SIGCONT)
    _, errors = first.communicate()
    assert first.returncode == 0, errors
    finished = torch.load(run / "last.pt", weights_only=True)["head"]
    assert_same_tensors(finished, lone)


def test_a_frame_count_the_cache_does_not_hold_is_refused(order, tmp_path):
    args = train_args(order / "cache", order / "clip.pt", tmp_path / "r", "seqTransf", "--frames", "8", batch_size=8)
    message = str(refusal(train_head.main, args))
    assert "--frames 8: the videos of" in message and "hold at most 4 frames" in message
    args = ["--cache", str(order / "cache"), "--head", "meanP", "--frames", "6", "--out", str(tmp_path / "x.json")]
    assert "--frames 6: the videos of" in str(refusal(evaluate.main, args))
    assert not (tmp_path / "x.json").exists()


def test_a_temperature_for_a_head_that_scores_logits_is_refused_before_any_work(order, tmp_path, capsys):
    args = train_args(order / "cache", order / "clip.pt", tmp_path / "r", "tightTransf", "--learn-temp", batch_size=8)
    assert "--learn-temp: tightTransf scores with its own output layer" in usage_error(train_head.main, args, capsys)
    assert not (tmp_path / "r").exists()


def test_rerunning_a_finished_meanp_training_is_a_no_op(order, tmp_path):
    args = train_args(order / "cache", order / "clip.pt", tmp_path / "run", "meanP", batch_size=8)
    train_head.main(args)
    first = (tmp_path / "run" / "best.pt").read_bytes()
    train_head.main(args)  # once: "max() arg is an empty sequence"
    assert (tmp_path / "run" / "best.pt").read_bytes() == first


def edited_in_place(path):
    """Reverse the rows of a cached .npy where it lies (same inode, same size), as an editor would."""
    array = np.load(path, mmap_mode="r+")
    array[:] = array[::-1].copy()
    array.flush()


def test_a_cache_file_edited_while_host_training_reads_it_stops_the_run_and_keeps_its_epochs(
    small_clip, small_cache, tmp_path, monkeypatch
):
    """Round four: train features edited while `--data-on host` training read them gave a different
    selected epoch and no error; a file cut short gave a bus error. The files' states are taken when
    their bytes are checked, and every batch read from them first checks that they still hold."""
    from heads import loaded_split

    cache = copied(small_cache, tmp_path / "cache")
    run = tmp_path / "run"
    real_padded_frames = loaded_split.padded_frames

    def edit_after_the_first_epoch(split_cache, rows, n_frames):
        if (run / "log.jsonl").exists() and split_cache.folder.name == "train":
            edited_in_place(cache / "train" / "video_feats.npy")
        return real_padded_frames(split_cache, rows, n_frames)

    monkeypatch.setattr(loaded_split, "padded_frames", edit_after_the_first_epoch)
    args = train_args(cache, small_clip, run, "seqTransf", "--epochs", "3", "--data-on", "host", batch_size=16)
    with pytest.raises(CacheError, match=r"train/video_feats.npy changed while this run was reading it \(.*\)"):
        train_head.main(args)
    assert finished_epochs(run) == 1 and (run / "last.pt").exists()  # the finished epoch is kept


@pytest.mark.parametrize("damage", ["cut", "replaced"])
def test_a_host_split_refuses_to_read_a_file_cut_or_replaced_under_it(small_cache, tmp_path, damage):
    cache = copied(small_cache, tmp_path / "cache")
    split = load_split_tensors(cache, "train", 4, "cpu", where="host")
    path = cache / "train" / "video_feats.npy"
    rows, flags = torch.tensor([0, 1]), torch.zeros(2, dtype=torch.bool)
    split.video_batch(rows, flags)  # reads while the files hold
    if damage == "cut":  # a read past the new end of a memory map is a bus error, not an exception
        os.truncate(path, path.stat().st_size // 2)
    else:
        path.write_bytes(path.read_bytes())  # the same bytes, another write: only the check can tell
    with pytest.raises(CacheError, match=r"video_feats.npy changed while this run was reading it"):
        split.video_batch(rows, flags)
    with pytest.raises(CacheError, match=r"changed while this run was reading it"):
        split.text_input(rows, "pooled")
