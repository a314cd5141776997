"""Loading and using frozen CLIP: real loading paths, exact short-context text encoding, truncation, precision."""
from __future__ import annotations

import clip
import numpy as np
import pytest
import torch

import vtr.extract.clip_encoder as clip_encoder
from vtr.core.device import resolve_device
from vtr.extract.clip_encoder import RANDOM_ARCHS, ClipWeightsMissing, build_random, resolve_precision
from vtr.extract.clip_loader import load_clip
from vtr.core.safe_load import LoadError

CAPTIONS = ["a man is slicing a tomato in the kitchen",
            "a red circle moves to the left on the grass",
            "two people are dancing on a stage while a crowd watches them under bright lights at night"]


@pytest.fixture(scope="module")
def tiny_bf16():
    return load_clip("random:tiny", device="cpu", precision="bf16")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_text_at_real_length_equals_full_context(tiny_clip):
    """CLIP's text attention is causal: cutting the 77-token context to the batch's length is exact."""
    full = tiny_clip.model.encode_text(clip.tokenize(CAPTIONS)).numpy()
    ours = tiny_clip.encode_texts(CAPTIONS).astype(np.float32)
    np.testing.assert_allclose(ours, full, atol=2e-3, rtol=1e-2)  # float16 storage


def test_max_tokens_truncates_like_clip4clip(tiny_clip):
    """8 tokens = start, the first 6 BPE tokens of the caption, end."""
    tok = clip.tokenize(CAPTIONS[2])[0]
    manual = torch.cat([tok[:7], tok.max().view(1)]).unsqueeze(0)
    want = tiny_clip.model.encode_text(manual).numpy()
    got = tiny_clip.encode_texts([CAPTIONS[2], "a cat"], max_tokens=8).astype(np.float32)
    np.testing.assert_allclose(got[0], want[0], atol=2e-3, rtol=1e-2)
    short = tiny_clip.model.encode_text(clip.tokenize(["a cat"])).numpy()[0]
    np.testing.assert_allclose(got[1], short, atol=2e-3, rtol=1e-2)  # short captions are untouched


def test_frames_are_normalised_with_clip_statistics(tiny_clip):
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    want = tiny_clip.model.encode_image((x - mean) / std).numpy()
    np.testing.assert_allclose(tiny_clip.encode_frames(frames).astype(np.float32), want, atol=2e-3, rtol=1e-2)


def test_random_models_are_seeded_and_labelled():
    a, b, c = load_clip("random:tiny"), load_clip("random:tiny"), load_clip("random:tiny:1")
    assert a.sha256 == b.sha256 != c.sha256
    assert a.is_random and "not meaningful" in a.describe()
    assert (a.resolution, a.dim) == (64, 256)
    with pytest.raises(ValueError, match="unknown shape"):
        load_clip("random:huge")


def test_missing_openai_weights_say_where_to_put_them(tmp_path):
    # offline (the tests' conftest sets VTR_OFFLINE=1): downloading is tested in test_weights_download.py
    with pytest.raises(ClipWeightsMissing, match=r"downloads are off \(VTR_OFFLINE=1\).*ViT-B-32\.pt.*random:tiny"):
        load_clip("ViT-B/32", download_root=tmp_path)
    (tmp_path / "ViT-B-32.pt").write_bytes(b"not the weights")
    with pytest.raises(ClipWeightsMissing, match="SHA256"):
        load_clip("ViT-B/32", download_root=tmp_path)
    with pytest.raises(ClipWeightsMissing, match="neither an OpenAI model name"):
        load_clip(str(tmp_path / "nothing.pt"))


def test_local_checkpoints_load(tmp_path):
    model = build_random("tiny", seed=3)
    ckpt = tmp_path / "custom.pt"
    torch.save({"config": RANDOM_ARCHS["tiny"], "state_dict": model.state_dict()}, ckpt)
    enc = load_clip(str(ckpt))
    assert not enc.is_random and enc.dim == 256
    x = np.zeros((1, 64, 64, 3), np.uint8)
    np.testing.assert_array_equal(enc.encode_frames(x), load_clip("random:tiny:3").encode_frames(x))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(LoadError, match="bad.pt is truncated or not a checkpoint"):
        load_clip(str(bad))


# A CLIP small enough to trace in a second, with head counts build_model infers (width // 64).
SMALL = dict(embed_dim=64, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
             context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=1)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")  # tracing, deprecated
def test_openai_formats_load_without_unpickling_code(tmp_path, monkeypatch):
    """What clip.load(jit=False) reads: a TorchScript archive (OpenAI's files: torch.jit.load, then its
    weights), a state dict (torch.load with weights_only=True), and a safetensors state dict. Each gives
    the model clip.model.build_model makes of the same weights; captions match it bit for bit. A
    TorchScript archive runs its own code when loaded, so one whose SHA256 is not OpenAI's is refused."""
    from safetensors.torch import save_file

    from vtr.extract import clip_encoder
    from vtr.extract.weights import sha256_file
    from vtr.core.safe_load import LoadError

    torch.manual_seed(0)
    model = clip.model.CLIP(**SMALL).eval()
    want = clip.model.build_model(model.state_dict()).float().eval()
    tokens = clip.tokenize(CAPTIONS)
    traced = torch.jit.trace(model, (torch.zeros(1, 3, 32, 32), tokens[:1]), check_trace=False)
    torch.jit.save(traced, tmp_path / "jit.pt")
    torch.save(model.state_dict(), tmp_path / "state.pt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "state.safetensors")
    with pytest.raises(LoadError, match="refused: a TorchScript archive runs its own code"):
        load_clip(str(tmp_path / "jit.pt"), device="cpu", precision="fp32")
    # the test's archive stands in for one of OpenAI's published files
    monkeypatch.setattr(clip_encoder, "TRUSTED_TORCHSCRIPT", {sha256_file(tmp_path / "jit.pt")})
    with torch.no_grad():
        expected = want.encode_text(tokens)
        for name in ("jit.pt", "state.pt", "state.safetensors"):
            enc = load_clip(str(tmp_path / name), device="cpu", precision="fp32")
            assert not enc.is_random and (enc.resolution, enc.dim) == (32, 64)
            assert torch.equal(enc.model.encode_text(tokens), expected), name


def test_image_mlps_fused_equal_clips_own_and_text_untouched(tiny_clip):
    """QuickGELU x * sigmoid(1.702 x) becomes SiLU with 1.702 folded into the weights on the image tower
    only: images equal stock CLIP's up to float rounding, captions bit for bit."""
    stock = build_random("tiny").eval()
    visual, text = tiny_clip.model.visual.transformer.resblocks, tiny_clip.model.transformer.resblocks
    assert all(isinstance(b.mlp.gelu, torch.nn.SiLU) for b in visual)
    assert all(isinstance(b.mlp.gelu, clip.model.QuickGELU) for b in text)
    x = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = tiny_clip.tokenize(CAPTIONS)
    with torch.no_grad():
        ours, want = tiny_clip.model.encode_image(x), stock.encode_image(x)
        assert torch.allclose(ours, want, rtol=1e-4, atol=1e-5)
        assert torch.equal(tiny_clip.model.encode_text(tokens), stock.encode_text(tokens))


# ----------------------------------------------------------------------------- precision


def test_bf16_images_are_close_to_fp32_and_texts_exact(tiny_clip, tiny_bf16):
    """bf16 autocast runs the image tower (its output changes, within cosine 0.999 of fp32); the text
    tower stays fp32, so captions are bit-identical to fp32's."""
    assert tiny_bf16.precision == "bf16" and "in bf16" in tiny_bf16.describe()
    assert tiny_bf16.dtype == torch.float32 and tiny_bf16.sha256 == tiny_clip.sha256  # same fp32 weights
    frames = np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    f32, bf16 = tiny_clip.encode_frames(frames), tiny_bf16.encode_frames(frames)
    assert bf16.dtype == np.float16 and bf16.shape == f32.shape
    assert not np.array_equal(bf16, f32), "bf16 changed nothing (autocast did not run)"
    assert _cosine(bf16, f32).min() > 0.999
    np.testing.assert_array_equal(tiny_bf16.encode_texts(CAPTIONS), tiny_clip.encode_texts(CAPTIONS))


def test_bf16_is_deterministic_and_close_whatever_the_batch(tiny_bf16):
    """The same batch gives the same bits (so the cache does not depend on the decode workers). A frame's
    batch neighbours may change it at bfloat16's rounding level (other shapes reach the matrix kernels)."""
    frames = np.random.default_rng(2).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(tiny_bf16.encode_frames(frames), tiny_bf16.encode_frames(frames))
    assert _cosine(tiny_bf16.encode_frames(frames[:1]), tiny_bf16.encode_frames(frames)[:1]).min() > 0.999


def test_fp32_is_the_plain_forward_bit_for_bit(tiny_clip):
    assert tiny_clip.precision == "fp32" and "in fp32" in tiny_clip.describe()
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(tiny_clip.encode_image(x), tiny_clip.model.encode_image(x))
        tokens = tiny_clip.tokenize(CAPTIONS)
        length = int(tokens.argmax(-1).max()) + 1
        want = tiny_clip.model.encode_text(tokens[:, :length]).half().numpy()
    np.testing.assert_array_equal(tiny_clip.encode_tokens(tokens), want)


def test_auto_is_fp32_on_a_cpu_without_bf16(monkeypatch):
    """Without bfloat16 and without int8 (no AVX2): fp32. With AVX2, see tests/test_precision.py."""
    monkeypatch.setattr(clip_encoder, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(clip_encoder, "int8_available", lambda flags: False)
    enc = load_clip("random:tiny", device="cpu")
    assert enc.precision == "fp32" and enc.dtype == torch.float32 and "in fp32" in enc.describe()
    monkeypatch.setattr(clip_encoder, "cpu_has_native_bf16", lambda: True)
    assert load_clip("random:tiny", device="cpu").precision == "bf16"


def test_bf16_detection_needs_the_cpu_flags_and_onednn(monkeypatch):
    """No bfloat16 flag in /proc/cpuinfo (or no such file): not native. The flag alone is not enough
    either: this torch must have oneDNN."""
    monkeypatch.setattr(clip_encoder, "cpu_flags", lambda: {"avx2", "avx512f", "avx512bw"})
    assert not clip_encoder.cpu_has_native_bf16()
    monkeypatch.setattr(clip_encoder, "cpu_flags", set)
    assert not clip_encoder.cpu_has_native_bf16()
    monkeypatch.setattr(clip_encoder, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not clip_encoder.cpu_has_native_bf16()


def test_auto_is_fp16_on_a_gpu_without_touching_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def no_cuda(*args, **kwargs):
        raise AssertionError("resolving the precision touched CUDA")

    for name in ("current_device", "synchronize", "get_device_capability", "init"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    monkeypatch.setattr(clip_encoder, "cpu_has_native_bf16", lambda: True)  # the GPU wins over the CPU's bf16
    dev = resolve_device("auto")
    assert dev.type == "cuda" and resolve_precision("auto", dev) == "fp16"
    assert resolve_precision("fp32", dev) == "fp32" and resolve_precision("bf16", dev) == "bf16"


def test_unknown_or_unusable_precision_is_a_clear_error():
    with pytest.raises(ValueError, match=r"--precision 'fp8': unknown; choose one of auto, fp32, bf16, fp16"):
        load_clip("random:tiny", device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="only a GPU"):
        load_clip("random:tiny", device="cpu", precision="fp16")
