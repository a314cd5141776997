"""open_clip backbones: what vtr does for OpenAI's CLIP holds, or is switched off, per model.

Both models are built in-process with random weights (no download): vtr's own small architectures
"vtr-tiny-clip" (open_clip's CLIP: causal text tower pooling at EOT, QuickGELU, OpenAI's preprocessing) and
"vtr-tiny-siglip" (SigLIP's text tower: bidirectional attention, last-token pooling, a logit bias; GELU;
SigLIP's preprocessing, squashed frames, mean = std = 0.5). SigLIP's published architectures need a
tokenizer from the Hugging Face hub, which these tests cannot fetch; the SigLIP-style one uses open_clip's
built-in BPE tokenizer instead (docs/backbones.md). open_clip is the optional extra vtr[open_clip], which
the test extra installs: without it these tests fail rather than skip.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vtr.cache import CacheError, read_cache
from vtr.cli import main
from vtr.core.safe_load import LoadError
from vtr.extract.clip_loader import load_clip
from vtr.extract.decode import ffmpeg_binary, sample_frames
from vtr.extract.open_clip_encoder import OWN_PREPROCESS, _create, _import_open_clip, parse_spec
from vtr.extract.stage import run_extract
from vtr.extract.synthetic import read_synthetic
from vtr.train.heads import MeanP
from vtr.train.layers import use_model_logit_scale

CLIP_STYLE, SIGLIP_STYLE = "random:open_clip:vtr-tiny-clip", "random:open_clip:vtr-tiny-siglip"
CAPTIONS = ["a red square moves left on a blue background", "a dog",
            ("someone is slicing a tomato in a kitchen with a very sharp knife while music plays and people talk "
             "about the weather outside")]
QUIET = dict(progress=False, log=lambda msg: None)


@pytest.fixture(scope="module")
def clip_style():
    return load_clip(CLIP_STYLE, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def siglip_style():
    return load_clip(SIGLIP_STYLE, device="cpu", precision="fp32")


def stock(arch: str, quick_gelu: bool = False):
    """open_clip's own model of ``arch`` with the seed-0 weights the encoders hold, unfused, in fp32, frozen
    as the encoders are (torch's attention takes another, equally exact, kernel for trainable weights)."""
    return _create(_import_open_clip(), arch, quick_gelu, OWN_PREPROCESS.get(arch, {}), 0).eval().requires_grad_(False)


def test_specs_and_clear_errors():
    assert parse_spec("open_clip:ViT-B-32:laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k", 0)
    assert parse_spec("open_clip:ViT-B-32:/w/a:b.safetensors") == ("ViT-B-32", "/w/a:b.safetensors", 0)
    assert parse_spec("random:open_clip:vtr-tiny-clip:7") == ("vtr-tiny-clip", None, 7)
    for bad, says in [("open_clip:ViT-B-32", "expected open_clip:ARCH:PRETRAINED"),
                      ("random:open_clip:vtr-tiny-clip:x", "expected random:open_clip:ARCH"),
                      ("open_clip:No-Such-Arch:x", "not an open_clip architecture"),
                      ("open_clip:ViT-B-32:no_such_tag", "laion2b_s34b_b79k")]:  # the known tags are listed
        with pytest.raises(ValueError, match=says):
            load_clip(bad, device="cpu")


def test_random_models_are_seeded_labelled_and_distinct(clip_style, siglip_style):
    again = load_clip(CLIP_STYLE, device="cpu", precision="fp32")
    assert again.sha256 == clip_style.sha256 and again.is_random
    assert load_clip(CLIP_STYLE + ":1", device="cpu").sha256 != clip_style.sha256
    assert "random weights" in siglip_style.describe() and "vtr-tiny-siglip" in siglip_style.describe()
    assert (clip_style.dim, siglip_style.dim) == (256, 192)


def test_causal_eot_tower_is_encoded_at_the_real_length_exactly(clip_style):
    assert clip_style.text_at_real_length
    tokens = clip_style.tokenize(CAPTIONS)
    full = clip_style.model.encode_text(tokens).numpy()  # open_clip's own forward over all 77 positions
    got = clip_style.encode_tokens(tokens)
    assert int(clip_style.token_lengths(tokens).max()) < tokens.shape[1]  # there was padding to drop
    np.testing.assert_allclose(got.astype(np.float32), full, atol=2e-3, rtol=1e-2)  # float16 storage


def test_siglip_style_tower_is_encoded_at_its_context_length(siglip_style):
    """Attention over the padding and last-token pooling: a shorter input is another embedding, so the
    encoder must (and does) run the full context length."""
    assert not siglip_style.text_at_real_length
    tokens = siglip_style.tokenize(CAPTIONS, 32)
    assert tokens.shape == (3, 64)
    full = siglip_style.model.encode_text(tokens).numpy()
    np.testing.assert_allclose(siglip_style.encode_tokens(tokens).astype(np.float32), full, atol=2e-3, rtol=1e-2)
    length = int(siglip_style.token_lengths(tokens).max())
    at_real_length = siglip_style.model.encode_text(tokens[:, :length]).numpy()
    assert np.abs(at_real_length - full).max() > 0.1, "real-length encoding would have been exact here"


@pytest.mark.parametrize("spec", [CLIP_STYLE, SIGLIP_STYLE])
def test_captions_are_cut_to_max_tokens_with_the_end_token(spec, clip_style, siglip_style):
    enc = clip_style if spec == CLIP_STYLE else siglip_style
    tokens = enc.tokenize(CAPTIONS, 8)
    assert enc.token_lengths(tokens).tolist() == [8, 4, 8]  # "a dog": start, 2 words, end
    eot = enc.tokenizer.eot_token_id
    assert tokens[0, 7] == eot and tokens[2, 7] == eot and (tokens[:, 8:] == enc.pad_id).all()
    np.testing.assert_array_equal(tokens[:, :8], enc.tokenizer(CAPTIONS, context_length=8))


def test_quick_gelu_is_fused_only_where_the_activation_is_quick_gelu(clip_style, siglip_style):
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ref = stock("vtr-tiny-clip", quick_gelu=True)
    acts = {type(b.mlp.gelu).__name__ for b in clip_style.model.visual.transformer.resblocks}
    assert acts == {"SiLU"} and clip_style.quick_gelu
    with torch.no_grad():
        assert torch.allclose(clip_style.encode_image(x), ref.encode_image(x), rtol=1e-4, atol=1e-5)
        tokens = clip_style.tokenize(CAPTIONS)
        assert torch.equal(clip_style.model.encode_text(tokens), ref.encode_text(tokens))  # text untouched
    assert {type(b.mlp.gelu).__name__ for b in clip_style.model.transformer.resblocks} == {"QuickGELU"}

    ref = stock("vtr-tiny-siglip")
    assert {type(b.mlp.gelu).__name__ for b in siglip_style.model.visual.transformer.resblocks} == {"GELU"}
    x = x[:, :, :48, :48]
    with torch.no_grad():
        assert torch.equal(siglip_style.encode_image(x), ref.encode_image(x))  # nothing rewritten


@pytest.mark.parametrize("spec", [CLIP_STYLE, SIGLIP_STYLE])
def test_fp16_encodes_close_to_fp32(spec, clip_style, siglip_style):
    """fp16 (auto on a GPU) casts open_clip's model whole: its LayerNorm computes in the input's dtype. Run
    on the CPU, which has float16 kernels too."""
    from vtr.extract.open_clip_encoder import load_open_clip

    ref = clip_style if spec == CLIP_STYLE else siglip_style
    half = load_open_clip(spec, torch.device("cpu"), "fp16")
    assert half.dtype == torch.float16 and half.precision == "fp16"
    r = ref.resolution
    frames = np.random.default_rng(0).integers(0, 256, (4, r, r, 3), dtype=np.uint8)
    tokens = ref.tokenize(CAPTIONS)
    for a, b in ((half.encode_frames(frames), ref.encode_frames(frames)),
                 (half.encode_tokens(tokens), ref.encode_tokens(tokens))):
        a, b = a.astype(np.float32), b.astype(np.float32)
        assert ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min() > 0.999


def test_frames_are_normalised_with_the_models_own_statistics(siglip_style):
    assert (siglip_style.image_mean, siglip_style.image_std) == ((0.5,) * 3, (0.5,) * 3)
    assert (siglip_style.resize_mode, siglip_style.resolution) == ("squash", 48)
    frames = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        want = stock("vtr-tiny-siglip").encode_image((x - 0.5) / 0.5).numpy()
    np.testing.assert_allclose(siglip_style.encode_frames(frames).astype(np.float32), want, atol=2e-3, rtol=1e-2)


def test_ffmpeg_squashes_or_crops_as_the_model_says(tmp_path):
    """A 2:1 clip with a green stripe on its left eighth: squashing keeps it, the centre crop drops it."""
    video = tmp_path / "wide.mp4"
    subprocess.run([ffmpeg_binary(), "-v", "error", "-f", "lavfi", "-i", "color=red:s=256x128:d=2", "-f", "lavfi",
                    "-i", "color=0x00ff00:s=32x128:d=2", "-filter_complex", "overlay=0:0", "-t", "2",
                    "-pix_fmt", "yuv420p", str(video)], check=True)
    squashed = sample_frames(video, 32, resize="squash").frames[0].astype(int)
    cropped = sample_frames(video, 32).frames[0].astype(int)
    assert squashed.shape == cropped.shape == (32, 32, 3)
    assert squashed[16, 0, 1] > 200 and squashed[16, 0, 0] < 60  # green at the left edge
    assert cropped[16, 0, 0] > 200 and cropped[16, 0, 1] < 60  # red: the stripe was cropped away
    with pytest.raises(ValueError, match="resize 'longest'"):
        sample_frames(video, 32, resize="longest")


def test_logit_scale_reaches_the_heads():
    head = use_model_logit_scale(MeanP(8), {"clip_logit_scale": 10.0})
    assert float(head.scale) == pytest.approx(10.0)
    big = use_model_logit_scale(MeanP(8), {"clip_logit_scale": 117.0})  # above CLIP's clamp, as SigLIP's is
    assert float(big.scale) == pytest.approx(117.0)
    assert float(use_model_logit_scale(MeanP(8), {"clip_model": "ViT-B/32"}).scale) == 100.0  # CLIP's, exactly
    trained = MeanP(8, logit_scale=50.0)
    assert float(use_model_logit_scale(trained, {"clip_logit_scale": 117.0}, trained=True).scale) == pytest.approx(50.0)


@pytest.mark.parametrize("spec", [CLIP_STYLE, SIGLIP_STYLE])
def test_extract_fit_eval_end_to_end(spec, tmp_path, monkeypatch, synthetic_root):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(synthetic_root, tmp_path / "cache" / "synthetic")
    invoke = CliRunner().invoke
    r = invoke(main, ["extract", "--dataset", "synthetic", "--n-videos", "24", "--clip", spec, "--precision", "fp32",
                      "--quiet"])
    assert r.exit_code == 0, r.output
    enc = load_clip(spec, device="cpu", precision="fp32")
    data = read_cache(tmp_path / "cache" / "synthetic.h5")
    a = data.attrs
    assert data.frames.shape == (24, 12, enc.dim)
    assert (a["clip_model"], a["clip_sha256"], a["clip_backbone"]) == (spec, enc.sha256, "open_clip")
    assert a["clip_arch"] == enc.arch and a["clip_pretrained"] == "random, seed 0"
    assert a["clip_logit_scale"] == pytest.approx(enc.logit_scale) and a["clip_logit_bias"] == enc.logit_bias
    assert ("squashed" in a["preprocessing"]) == (spec == SIGLIP_STYLE)
    # The cached frames are the model's frames: ffmpeg resized them as the model's config says.
    video = read_synthetic(tmp_path / "cache" / "synthetic").videos[0]
    frames = sample_frames(video.path, enc.resolution, resize=enc.resize_mode, interpolation=enc.interpolation)
    np.testing.assert_allclose(data.frames[0, :len(frames.frames)].astype(np.float32),
                               enc.encode_frames(frames.frames).astype(np.float32), atol=2e-3, rtol=1e-2)
    np.testing.assert_allclose(data.text_emb[:3].astype(np.float32),
                               enc.encode_texts(data.captions[:3], int(a["max_words"])).astype(np.float32), atol=2e-3)

    r = invoke(main, ["fit", "--cache", "cache/synthetic.h5", "--epochs", "1", "--batch-size", "8", "--quiet"])
    assert r.exit_code == 0, r.output
    from vtr.train.runs import load_run
    head, _, _ = load_run(tmp_path / "cache" / "runs" / "synthetic-seqTransf-dsl")
    assert float(head.scale) == pytest.approx(enc.logit_scale)  # trained at the backbone's scale
    r = invoke(main, ["eval", "--dsl", "--json", "run.json"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run.json").read_text())["t2v"]["R@1"] >= 0
    seen = []
    monkeypatch.setattr("vtr.eval.stage._evaluate", lambda head, *args: seen.append(float(head.scale)) or {})
    from vtr.eval.stage import evaluate_zero_shot
    evaluate_zero_shot(tmp_path / "cache" / "synthetic.h5", data=data)
    assert seen == [pytest.approx(enc.logit_scale)]


def test_caches_of_two_backbones_never_mix(tmp_path, synthetic_root, clip_style, siglip_style, tiny_clip):
    ds = read_synthetic(synthetic_root)
    out = tmp_path / "c.h5"
    run_extract(ds, clip_style, out, max_frames=2, **QUIET)
    for other in (siglip_style, load_clip(CLIP_STYLE + ":1", device="cpu", precision="fp32"), tiny_clip):
        with pytest.raises(CacheError, match="other settings"):
            run_extract(ds, other, out, max_frames=2, **QUIET)
    assert run_extract(ds, clip_style, out, max_frames=2, **QUIET).videos_decoded == 0  # the same one resumes


def test_a_local_weights_file_loads_and_code_in_it_never_runs(tmp_path, clip_style):
    from safetensors.torch import save_file

    ref = stock("vtr-tiny-clip", quick_gelu=True)
    ref.logit_scale.data.fill_(4.0)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    enc = load_clip(f"open_clip:vtr-tiny-clip:{path}", device="cpu", precision="fp32")
    assert not enc.is_random and enc.pretrained == "file w.safetensors"
    assert enc.logit_scale == pytest.approx(float(np.exp(4.0)), rel=1e-6)
    np.testing.assert_array_equal(enc.encode_texts(CAPTIONS), clip_style.encode_texts(CAPTIONS))

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"visual.proj": Payload()}, evil)
    with pytest.raises(LoadError, match="evil.pt: refused"):
        load_clip(f"open_clip:vtr-tiny-clip:{evil}", device="cpu")
    assert not marker.exists()
    wrong = tmp_path / "wrong.pt"
    torch.save({"nothing": torch.zeros(1)}, wrong)
    with pytest.raises(LoadError, match="wrong.pt: not weights of open_clip vtr-tiny-clip"):
        load_clip(f"open_clip:vtr-tiny-clip:{wrong}", device="cpu")
