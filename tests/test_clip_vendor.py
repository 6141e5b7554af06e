import json
import os
import pickle
import subprocess
import sys
import warnings
import zipfile

import pytest
import torch

import clip_vendor
from clip_vendor.archive import read_archive_state_dict
from clip_vendor.model import eot_index
from fixtures.reference_clip import load_reference_module, random_reference_clip, reference_tokenize, save_checkpoints
from tests.helpers import PROJECT, assert_same_tensors

RTIME_DIR = PROJECT.parent / "shared" / "rtime"

# Two shapes of OpenAI's layout: patch 32 and patch 16, different widths, depths and embed dims.
SHAPES = {
    "patch32": dict(
        embed_dim=64,
        image_resolution=64,
        vision_layers=2,
        vision_width=128,
        vision_patch_size=32,
        text_width=64,
        text_layers=2,
    ),
    "patch16": dict(
        embed_dim=32,
        image_resolution=48,
        vision_layers=3,
        vision_width=64,
        vision_patch_size=16,
        text_width=128,
        text_layers=1,
    ),
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def checkpoints(request, tmp_path_factory):
    reference = random_reference_clip(seed=len(request.param), **SHAPES[request.param])
    state_path, archive_path = save_checkpoints(reference, tmp_path_factory.mktemp(request.param))
    return reference, state_path, archive_path


def sample_captions():
    return [
        "a man is riding a bike down the hill",
        "The red line rotates clockwise, then shrinks!",
        "",
        "caf&amp;eacute; 2 dogs' toys 123",
    ]


@pytest.mark.parametrize("file_kind", ["state_dict", "archive"])
def test_encoders_match_openai_reference_fp32(checkpoints, file_kind):
    reference, state_path, archive_path = checkpoints
    model, _ = clip_vendor.load(state_path if file_kind == "state_dict" else archive_path)
    resolution = model.config.image_resolution
    images = torch.randn(5, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    tokens = clip_vendor.tokenize(sample_captions())
    with torch.no_grad():
        image_diff = (model.encode_image(images) - reference.encode_image(images)).abs().max().item()
        text_diff = (model.encode_text(tokens) - reference.encode_text(tokens)).abs().max().item()
    assert image_diff <= 1e-5
    assert text_diff <= 1e-5


def test_inferred_config_matches_built_shapes(checkpoints):
    reference, state_path, _ = checkpoints
    model, preprocess = clip_vendor.load(state_path)
    assert model.config.image_resolution == reference.visual.input_resolution
    assert model.config.vision_layers == len(reference.visual.transformer.resblocks)
    assert model.config.text_layers == len(reference.transformer.resblocks)
    assert model.config.embed_dim == reference.text_projection.shape[1]
    assert preprocess.size == reference.visual.input_resolution


def test_token_features_pool_to_encode_text_and_mask_ends_at_eot(checkpoints):
    _, state_path, _ = checkpoints
    model, _ = clip_vendor.load(state_path)
    tokens = clip_vendor.tokenize(sample_captions())
    with torch.no_grad():
        token_feats, token_mask = model.encode_text_tokens(tokens)
        pooled = model.encode_text(tokens)
    rows = torch.arange(len(tokens))
    assert torch.equal(token_feats[rows, eot_index(tokens)], pooled)
    assert token_feats.shape == (len(tokens), tokens.shape[1], model.config.embed_dim)
    assert torch.equal(token_mask, tokens != 0)  # ids are non-zero exactly up to and including EOT


def test_text_tokens_are_causal(checkpoints):
    _, state_path, _ = checkpoints
    model, _ = clip_vendor.load(state_path)
    tokens = clip_vendor.tokenize(["a dog runs left", "a dog runs right"])
    with torch.no_grad():
        token_feats, _ = model.encode_text_tokens(tokens)
    shared_prefix = 4  # SOT, a, dog, runs
    assert torch.equal(tokens[0, :shared_prefix], tokens[1, :shared_prefix])
    torch.testing.assert_close(token_feats[0, :shared_prefix], token_feats[1, :shared_prefix])
    assert not torch.allclose(token_feats[0, shared_prefix], token_feats[1, shared_prefix])


def test_half_precision_keeps_layernorm_fp32_and_stays_close(checkpoints):
    _, state_path, _ = checkpoints
    model32, _ = clip_vendor.load(state_path)
    model16, _ = clip_vendor.load(state_path, dtype=torch.bfloat16)
    assert model16.visual.conv1.weight.dtype == torch.bfloat16
    assert model16.ln_final.weight.dtype == torch.float32
    images = torch.randn(4, 3, model32.config.image_resolution, model32.config.image_resolution)
    with torch.no_grad():
        feats32 = model32.encode_image(images)
        feats16 = model16.encode_image(images).float()
    assert torch.nn.functional.cosine_similarity(feats32, feats16).min() > 0.99


def rtime_texts():
    texts = []
    for split in ("valid", "test"):
        path = RTIME_DIR / f"{split}.json"
        if not path.exists():
            pytest.skip(f"{path} not present")
        for record in json.loads(path.read_text()).values():
            for field in ("forward_captions", "reverse_captions", "forward_rewrites", "reverse_rewrites"):
                texts.extend(record[field])
    return texts


def test_tokenizer_matches_openai_on_every_rtime_caption_and_rewrite():
    texts = rtime_texts()
    assert len(texts) == 30000  # 1500 records x (1 + 1 + 9 + 9)
    reference = load_reference_module("simple_tokenizer").SimpleTokenizer()
    assert torch.equal(clip_vendor.tokenize(texts), reference_tokenize(reference, texts))


EDGE_CASES = [
    "Tom &amp;amp; Jerry &lt;3 &quot;cartoon&quot;",  # double-escaped HTML
    "a cat 🐱 dances 💃🏽 with 👨‍👩‍👧 family",  # emoji, skin tone, ZWJ sequence
    "一只猫在桌子上跳舞",
    "Собака бежит по пляжу",
    "القطة ترقص",
    "नमस्ते दुनिया",
    "mojibake: cafÃ© naÃ¯ve",  # ftfy repairs this
    "  Tabs\tand\n\nnewlines   EVERYWHERE  ",
    "it's I'LL we'd THEY'RE you've I'm don't",
    "<|startoftext|> literal special tokens <|endoftext|>",
    "numbers 1234567 and 3.14159 and ½ ² ⅷ",
    " ".join(["word"] * 200),  # over-long: truncated, EOT kept last
    "supercalifragilisticexpialidocious" * 20,
    "",
]


def test_tokenizer_matches_openai_on_edge_cases():
    reference = load_reference_module("simple_tokenizer").SimpleTokenizer()
    ours = clip_vendor.tokenize(EDGE_CASES)
    assert torch.equal(ours, reference_tokenize(reference, EDGE_CASES))
    long_row = ours[EDGE_CASES.index(" ".join(["word"] * 200))]
    assert long_row[-1] == 49407 and (long_row != 0).all()


def test_tokenize_without_truncation_rejects_long_text():
    with pytest.raises(ValueError, match="over the context length 77"):
        clip_vendor.tokenize(" ".join(["word"] * 200), truncate=False)


def test_missing_vocabulary_names_the_setup_command(tmp_path):
    from clip_vendor.tokenizer import BpeTokenizer

    with pytest.raises(FileNotFoundError, match="setup_env.sh"):
        BpeTokenizer(tmp_path / "absent.txt.gz")


def test_truncated_checkpoint_is_a_clear_error(checkpoints, tmp_path):
    _, state_path, archive_path = checkpoints
    for source in (state_path, archive_path):
        truncated = tmp_path / f"truncated_{source.name}"
        truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        with pytest.raises(ValueError, match=f"cannot read CLIP checkpoint {truncated}"):
            clip_vendor.load(truncated)


def test_non_clip_checkpoint_names_the_missing_key(tmp_path):
    path = tmp_path / "resnet_like.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match="missing key 'visual.conv1.weight'"):
        clip_vendor.load(path)


def test_incomplete_clip_checkpoint_names_the_missing_key(checkpoints, tmp_path):
    _, state_path, _ = checkpoints
    state = torch.load(state_path, weights_only=True)
    del state["visual.transformer.resblocks.0.mlp.c_fc.bias"]
    path = tmp_path / "incomplete.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing key 'visual.transformer.resblocks.0.mlp.c_fc.bias'"):
        clip_vendor.load(path)


def test_archive_and_state_dict_load_identical_weights(checkpoints):
    _, state_path, archive_path = checkpoints
    from_state = clip_vendor.read_state_dict(state_path)
    from_archive = clip_vendor.read_state_dict(archive_path)
    assert from_state.keys() == from_archive.keys()
    assert_same_tensors(from_state, from_archive)
    with zipfile.ZipFile(archive_path) as archive:  # it really is a TorchScript archive
        assert any(name.endswith("constants.pkl") for name in archive.namelist())


def jit_state_dict(path):
    """The reference reader: torch.jit.load, which runs the archive's code (only on files made here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu").state_dict()


def test_archives_read_as_data_give_jit_loads_weights_bit_for_bit(checkpoints, tmp_path):
    _, _, archive_path = checkpoints
    half_path = tmp_path / "fp16_archive.pt"  # OpenAI's releases store fp16 weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.load(str(archive_path)).half(), half_path)
    for path in (archive_path, half_path):
        ours, reference = read_archive_state_dict(path), jit_state_dict(path)
        assert ours.keys() == reference.keys()
        for key, value in reference.items():
            assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
    assert read_archive_state_dict(half_path)["visual.conv1.weight"].dtype == torch.float16


class SetStateRunsCode(torch.nn.Module):
    """A module whose TorchScript __setstate__ prints a marker: torch.jit.load runs it."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        print("MALICIOUS CODE RAN")
        self.weight = state[0]
        self.training = state[1]

    def forward(self, x):
        return x + self.weight


class RunsShellOnUnpickle:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def jit_load_in_subprocess(path):
    """torch.jit.load in its own process (it runs the archive's code: only on files made here)."""
    code = f"import torch\ntorch.jit.load({str(path)!r})"
    return subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True)


def test_a_malicious_archive_is_refused_and_nothing_in_it_runs(tmp_path, capfd):
    setstate_path = tmp_path / "setstate.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(SetStateRunsCode()), setstate_path)
    assert "MALICIOUS CODE RAN" in jit_load_in_subprocess(setstate_path).stdout  # the attack is real
    with pytest.raises(ValueError, match=f"{setstate_path}: .*SetStateRunsCode carries a custom __setstate__"):
        clip_vendor.load(setstate_path)
    printed = capfd.readouterr()  # what TorchScript's print would write goes to file descriptor 1
    assert "MALICIOUS CODE RAN" not in printed.out + printed.err

    # an archive whose data.pkl calls os.system when unpickled
    marker = tmp_path / "marker"
    shell_path = tmp_path / "shell.pt"
    with zipfile.ZipFile(setstate_path) as source, zipfile.ZipFile(shell_path, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(RunsShellOnUnpickle(marker), protocol=2)
            target.writestr(item, data)
    with pytest.raises(ValueError, match="it names the global posix.system, which is not tensor data; refused"):
        clip_vendor.load(shell_path)
    assert not marker.exists()


def rewritten(archive_path, destination, replace=None, extra=()):
    """A copy of a TorchScript archive with entries replaced ({name suffix: bytes}) and `extra`
    entries ((ZipInfo or name, bytes)) added."""
    with zipfile.ZipFile(archive_path) as source, zipfile.ZipFile(destination, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            for suffix, new in (replace or {}).items():
                if item.filename.endswith(suffix):
                    data = new
            target.writestr(item, data)
        for info, data in extra:
            target.writestr(info, data)
    return destination


def deep_expression_code(archive_path):
    with zipfile.ZipFile(archive_path) as archive:
        code = next(name for name in archive.namelist() if "/code/" in name and name.endswith(".py"))
    return {code.split("/", 1)[1]: b"x = " + b"(" * 50_000 + b"1" + b")" * 50_000 + b"\n"}


def zip_bomb_entry():
    info = zipfile.ZipInfo("archive/extra/padding.bin")
    info.compress_type = zipfile.ZIP_DEFLATED
    return info, bytes(100 * 2**20)  # 100 MiB of zeros, about 100 kB compressed


@pytest.mark.parametrize(
    "craft, message",
    [
        (lambda path: {"replace": {"/data.pkl": b"ctorch\nFloatStorage\n)R."}}, "it calls torch.FloatStorage"),
        (
            lambda path: {
                "replace": {"/data.pkl": b"ctorch._utils\n_rebuild_tensor_v2\n(X\x03\x00\x00\x00abcK\x00))tR."}
            },
            "_rebuild_tensor_v2 is called on a str, not tensor data",
        ),
        (lambda path: {"replace": deep_expression_code(path)}, "refused to read the TorchScript archive: "),
        (lambda path: {"extra": [zip_bomb_entry()]}, "would inflate to 104,857,600 bytes (a zip bomb?)"),
        (lambda path: {"extra": [("archive/data.pkl", b"\x80\x02}q\x00.")]}, "holds the entry archive/data.pkl twice"),
    ],
    ids=["reduce-on-a-storage", "rebuild-a-string", "deep-expression", "zip-bomb", "duplicate-entry"],
)
def test_a_crafted_archive_is_one_refusal_naming_the_file(checkpoints, tmp_path, craft, message):
    """Round four: the reader let TypeError, AttributeError and MemoryError escape from crafted
    archives (a 3 MB zip bomb reached 6.5 GB before it failed), and read duplicated entries unlike
    torch.jit.load, silently. Each is now one ValueError naming the file, from the zip's directory
    where it can be (nothing is inflated)."""
    _, _, archive_path = checkpoints
    crafted = rewritten(archive_path, tmp_path / "crafted.pt", **craft(archive_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile's own "Duplicate name" warning
        with pytest.raises(ValueError) as refused:
            clip_vendor.load(crafted)
    assert str(crafted) in str(refused.value) and message in str(refused.value), str(refused.value)


def test_a_weight_of_another_shape_is_refused_naming_the_file(checkpoints, tmp_path):
    _, state_path, _ = checkpoints
    state = torch.load(state_path, weights_only=True)
    state["visual.transformer.resblocks.0.mlp.c_fc.bias"] = torch.zeros(3)
    path = tmp_path / "reshaped.pt"
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=rf"{path} is not in OpenAI's CLIP layout: size mismatch for visual\.transformer"
    ):
        clip_vendor.load(path)
