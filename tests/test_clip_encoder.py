"""Loading and using frozen CLIP: real loading paths, exact short-context text encoding, truncation."""
from __future__ import annotations

import clip
import numpy as np
import pytest
import torch

from vtr.extract.clip_encoder import RANDOM_ARCHS, ClipWeightsMissing, build_random, load_clip

CAPTIONS = ["a man is slicing a tomato in the kitchen",
            "a red circle moves to the left on the grass",
            "two people are dancing on a stage while a crowd watches them under bright lights at night"]


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
    with pytest.raises(ClipWeightsMissing, match=r"ViT-B-32\.pt.*random:tiny"):
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
    with pytest.raises(RuntimeError, match="bad.pt"):
        load_clip(str(bad))
