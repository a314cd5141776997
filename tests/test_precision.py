"""int8 for the image tower (vtr.extract.precision): close to fp32, captions untouched, and ``auto`` keeps
it only when a check on the first real frames passes; the run and the cache say what was used."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vtr.extract.clip_encoder as clip_encoder
from vtr.cache import synced_info
from vtr.extract import precision as P
from vtr.extract.clip_encoder import RANDOM_ARCHS, build_random, resolve_precision
from vtr.extract.clip_loader import load_clip
from vtr.extract.stage import run_extract
from vtr.extract.synthetic import read_synthetic

QUIET = dict(progress=False, log=lambda msg: None)
needs_int8 = pytest.mark.skipif(not P.int8_available(clip_encoder.cpu_flags()),
                                reason="int8 needs an x86 CPU with AVX2 and torch's fbgemm engine")
CAPTIONS = ["a red circle moves left", "two blue squares", "a green triangle spins slowly on a white floor"]


def _cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def _on_an_avx2_cpu(monkeypatch) -> None:
    """auto as it resolves on a CPU with AVX2 and no bfloat16 (this machine, most cloud VMs)."""
    monkeypatch.setattr(clip_encoder, "cpu_has_native_bf16", lambda: False)


@pytest.mark.parametrize("batch_first", [False, True])
def test_linear_self_attention_is_multihead_attention(batch_first):
    """The rewrite is the same function in fp32: without a mask, with CLIP's causal float mask, and with
    a boolean mask (whose meaning is the opposite in scaled_dot_product_attention)."""
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=batch_first).eval()
    ours = P.LinearSelfAttention(mha).eval()
    x = torch.randn(3, 7, 64) if batch_first else torch.randn(7, 3, 64)
    causal = torch.full((7, 7), float("-inf")).triu_(1)
    with torch.no_grad():
        for mask in (None, causal, causal.isinf()):
            want = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
            assert torch.allclose(ours(x, x, x, need_weights=False, attn_mask=mask)[0], want, atol=1e-5)
    with pytest.raises(NotImplementedError):
        ours(x, x.clone(), x)


@needs_int8
def test_int8_images_close_to_fp32_captions_exact(tiny_clip):
    """int8 quantizes every linear layer of the image tower, attention included; its images stay close
    to fp32's, bit-identical from one call to the next, and the text tower is exactly fp32's."""
    enc = load_clip("random:tiny", device="cpu", precision="int8")
    blocks = enc.model.visual.transformer.resblocks
    assert all(isinstance(b.attn, P.LinearSelfAttention) for b in blocks)
    quantized = torch.ao.nn.quantized.dynamic.Linear
    assert all(isinstance(m, quantized) for b in blocks for m in (b.attn.in_proj, b.attn.out_proj, b.mlp.c_fc))
    assert enc.sha256 == tiny_clip.sha256 and "in int8" in enc.describe()
    frames = _frames(16, 1)
    int8, fp32 = enc.encode_frames(frames), tiny_clip.encode_frames(frames)
    assert not np.array_equal(int8, fp32), "int8 changed nothing"
    assert _cosine(int8, fp32).min() >= P.INT8_MIN_COSINE
    np.testing.assert_array_equal(enc.encode_frames(frames), int8)
    np.testing.assert_array_equal(enc.encode_texts(CAPTIONS), tiny_clip.encode_texts(CAPTIONS))


@needs_int8
def test_auto_takes_int8_after_the_check_on_the_first_frames(monkeypatch, tiny_clip):
    """Before any frame auto is undecided; the first frames decide, once, and what was measured is kept.
    Its embeddings are then exactly an int8 encoder's."""
    _on_an_avx2_cpu(monkeypatch)
    enc = load_clip("random:tiny", device="cpu")
    assert enc.precision == "auto" and "checked on the first frames" in enc.describe()
    frames = _frames(40, 2)
    got = enc.encode_frames(frames)
    assert enc.precision == "int8"
    assert enc.gate["frames"] == P.GATE_FRAMES and enc.gate["min_cosine"] >= P.INT8_MIN_COSINE
    assert "min cosine" in enc.describe()
    np.testing.assert_array_equal(got, load_clip("random:tiny", device="cpu", precision="int8").encode_frames(frames))
    enc.encode_frames(_frames(4, 3))
    assert enc.gate["frames"] == P.GATE_FRAMES  # not checked again


def _with_an_outlier_channel(model: torch.nn.Module, scale: float = 1e3) -> None:
    """Give the first image block's MLP input one huge channel, compensated in the next layer: the same
    function in fp32, but the outlier a trained model can have, which one int8 scale per batch cannot
    hold together with the other channels."""
    block = model.visual.transformer.resblocks[0]
    with torch.no_grad():
        block.ln_2.weight[0] *= scale
        block.ln_2.bias[0] *= scale
        block.mlp.c_fc.weight[:, 0] /= scale


@needs_int8
def test_auto_stays_fp32_when_int8_fails_the_check(monkeypatch, tmp_path):
    """A model int8 cannot represent well: the check measures it below the threshold, auto stays fp32,
    and the embeddings are the fp32 encoder's bit for bit."""
    _on_an_avx2_cpu(monkeypatch)
    model = build_random("tiny")
    _with_an_outlier_channel(model)
    path = tmp_path / "outlier.pt"
    torch.save({"config": RANDOM_ARCHS["tiny"], "state_dict": model.state_dict()}, path)
    enc, fp32 = load_clip(str(path), device="cpu"), load_clip(str(path), device="cpu", precision="fp32")
    assert enc.precision == "auto"
    frames = _frames(30, 4)
    got = enc.encode_frames(frames)
    assert enc.precision == "fp32" and enc.gate["min_cosine"] < P.INT8_MIN_COSINE
    np.testing.assert_array_equal(got, fp32.encode_frames(frames))
    assert "min cosine" in enc.describe()


@needs_int8
def test_the_run_and_the_cache_record_the_precision_used(monkeypatch, tmp_path, synthetic_root):
    """run_extract with auto reports the precision chosen, and the cache's sync record keeps it with the
    check's figures; a run that encodes no frame records none."""
    _on_an_avx2_cpu(monkeypatch)
    ds = read_synthetic(synthetic_root)
    ds.videos = ds.videos[:3]
    ds.captions = [c for c in ds.captions if c.video_id in {v.id for v in ds.videos}]
    enc = load_clip("random:tiny", device="cpu")
    stats = run_extract(ds, enc, tmp_path / "c.h5", **QUIET)
    assert stats.precision == "int8" and stats.frames_encoded > 0
    synced = synced_info(tmp_path / "c.h5")
    assert synced["image_precision"] == "int8"
    assert synced["int8_check"]["min_cosine"] >= P.INT8_MIN_COSINE
    assert P.precision_record("fp32", None, 0) == {}


def test_int8_and_auto_are_checked_against_the_device_and_cpu(monkeypatch):
    """int8 needs a CPU with AVX2 (fbgemm); elsewhere it is refused in one line, and auto is fp32."""
    monkeypatch.setattr(clip_encoder, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(clip_encoder, "cpu_flags", lambda: {"sse4_2", "avx"})
    with pytest.raises(ValueError, match="--precision int8 runs on x86 CPUs with AVX2"):
        resolve_precision("int8", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(clip_encoder, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(ValueError, match="int8"):
        resolve_precision("int8", torch.device("cuda"))
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    expected = "auto" if P.int8_available({"avx2"}) else "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == expected
    monkeypatch.setattr(clip_encoder, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", torch.device("cpu")) == "bf16"


def test_the_check_samples_the_whole_batch():
    picked = P.gate_indices(100, 5).tolist()
    assert picked[0] == 0 and picked[-1] == 99 and len(picked) == 5 == len(set(picked))
    assert P.gate_indices(3, 5).tolist() == [0, 1, 2]


def test_fp16_casts_the_weights_as_openai_clip_does_on_a_gpu(tiny_clip):
    """fp16 (what auto picks on a GPU) keeps CLIP's LayerNorms and embeddings in float32, as clip.load does:
    CLIP's LayerNorm computes in float32, so casting the whole model (model.half()) failed at the first
    LayerNorm. Found by scripts/gpu_check.py on an H200; run here on the CPU, which has float16 kernels too."""
    model = clip_encoder._finish(build_random("tiny"), torch.device("cpu"), "fp16")
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if ".ln_" in n or n.startswith("ln_")} == {torch.float32}
    assert dtypes["visual.conv1.weight"] == dtypes["visual.proj"] == dtypes["text_projection"] == torch.float16
    assert dtypes["visual.class_embedding"] == dtypes["token_embedding.weight"] == torch.float32
    half = clip_encoder.ClipEncoder(model, "random:tiny", tiny_clip.sha256, True, torch.device("cpu"), "fp16")
    assert half.dtype == torch.float16
    frames = _frames(6, 3)
    assert _cosine(half.encode_frames(frames), tiny_clip.encode_frames(frames)).min() > 0.999
    tokens = tiny_clip.tokenize(CAPTIONS)
    assert _cosine(half.encode_tokens(tokens), tiny_clip.encode_tokens(tokens)).min() > 0.999
