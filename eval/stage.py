"""The eval stage: a run folder (or zero-shot CLIP) + its cache -> a report dict."""
from __future__ import annotations

from pathlib import Path

from vtr.cache import read_cache
from vtr.cache.records import CacheTensors
from vtr.eval import rescorers
from vtr.eval.evaluate import DSL_MEMORY_MIB, evaluate
from vtr.eval.report import LEFT_OUT_NOTE
from vtr.train.heads import MeanP
from vtr.train.layers import use_model_logit_scale
from vtr.train.runs import load_run

RESCORES = rescorers.names()  # every registered method, "none" (raw scores) first


def default_split(data: CacheTensors) -> str:
    """The split to evaluate when none is named: test, or val for a cache with no test captions (DiDeMo
    distributed without test_data.json evaluates on val)."""
    return "test" if (data.text_split == "test").any() or not (data.text_split == "val").any() else "val"


def _evaluate(head, data: CacheTensors, cache_path, split, rescore, device, dsl_memory_mib) -> dict:
    if rescore not in RESCORES:
        raise ValueError(f"rescore must be one of {RESCORES}, not {rescore!r}")
    split = split or default_split(data)
    # A query bank (QB-Norm's): the training split's captions (T2V) and videos (V2T), never test queries.
    bank = data.select("train") if rescorers.get(rescore).uses_bank else None
    # Ranks are counted tile by tile (never the whole score matrix); the bar shows on large splits in a terminal.
    report = evaluate(head, data, split=split, rescore=rescore, bank=bank, cache_path=str(cache_path),
                      device=device, progress=True, dsl_memory_mib=dsl_memory_mib)
    left = left_out(data, split, cache_path)
    report["left_out"] = left
    if left["captions"] or left["videos"]:
        report["notes"].append(LEFT_OUT_NOTE.format(split=split, **left))
    if left["captions_of_videos_in_other_splits"]:
        report["notes"].append(f"left out: {left['captions_of_videos_in_other_splits']} {split} captions whose "
                               f"video is in another split")
    return report


def left_out(data: CacheTensors, split: str, cache_path) -> dict:
    """What of ``split`` the evaluation cannot use, counted so the report says so: its videos that failed
    to decode and their captions (a caption is only ranked against a video that has frames), and captions
    whose video sits in another split."""
    in_split = data.video_split == split
    captions = data.text_split == split
    failed_video = captions & ~data.video_ok[data.text_video]
    elsewhere = captions & data.video_ok[data.text_video] & (data.video_split[data.text_video] != split)
    return {"videos": int((in_split & ~data.video_ok).sum()), "captions": int(failed_video.sum()),
            "split_videos": int(in_split.sum()), "split_captions": int(captions.sum()),
            "why": "their videos failed to decode",
            "see": f"vtr info {cache_path} lists the reasons; vtr extract --retry-failed tries them again",
            "captions_of_videos_in_other_splits": int(elsewhere.sum())}


def evaluate_zero_shot(cache_path, *, split=None, rescore="none", device="cpu", data=None,
                       dsl_memory_mib=DSL_MEMORY_MIB) -> dict:
    """Zero-shot CLIP (meanP over the frozen frame embeddings): nothing trained."""
    data = data if data is not None else read_cache(cache_path)
    head = use_model_logit_scale(MeanP(data.dim), data.attrs)  # the backbone's own logit scale, if recorded
    return _evaluate(head, data, cache_path, split, rescore, device, dsl_memory_mib)


def evaluate_run(run_dir, *, cache_path=None, split=None, rescore="none", device="cpu", data=None,
                 dsl_memory_mib=DSL_MEMORY_MIB) -> dict:
    """A trained head from ``run_dir`` (its best checkpoint) on its cache, or on ``cache_path``."""
    head, _cfg, info = load_run(Path(run_dir))
    cache_path = cache_path or info.get("cache_path")
    if not cache_path:
        raise ValueError(f"{run_dir}: the run does not say which cache it was trained on; pass --cache")
    data = data if data is not None else read_cache(cache_path)
    use_model_logit_scale(head, data.attrs, trained=True)
    report = _evaluate(head, data, cache_path, split, rescore, device, dsl_memory_mib)
    report["run"] = str(run_dir)
    return report
