"""One extraction job: the CLI builds it from its options (each reader's own among them), it pickles as plain
data for Ray, and each dataset reader declares the options the command line offers for it."""
from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vtr.cache.records import Dataset
from vtr.cli import main
from vtr.cli_extract import extract, job_from_options, reader_options
from vtr.extract import datasets
from vtr.extract.dataset_builder import ReaderOption
from vtr.extract.job import ClipChoice, DatasetSource, ExtractJob
from vtr.extract.settings import ExtractSettings

# The options `vtr extract` handles itself; the rest describe the job.
RUN_ONLY = ("quiet", "shard_spec", "ray_address", "n_shards", "max_retries")


def parsed_job(*args) -> ExtractJob:
    """The job `vtr extract ARGS` would run (parsed by the command itself, nothing read or run)."""
    ctx = extract.make_context("extract", list(args))
    return job_from_options({k: v for k, v in ctx.params.items() if k not in RUN_ONLY})


def test_readers_declare_the_options_they_take():
    for name, reader in datasets.READERS.items():
        params = inspect.signature(reader.read).parameters
        for opt in reader.options:
            assert opt.name in params, f"{name} declares {opt.name}, which its reader does not take"
            assert params[opt.name].default == opt.default, f"{name}.{opt.name}: the declared default differs"
            assert opt.choices == () or opt.default in opt.choices
    declared = datasets.declared_options()
    assert declared["split_variant"][1] == ["msrvtt"] and declared["use_lists"][1] == ["didemo"]
    assert declared["default_split"][1] == ["byo"] and declared["n_videos"][1] == ["synthetic"]


def test_every_reader_option_is_a_flag_of_extract_and_info():
    for command in ("extract", "info"):
        text = CliRunner().invoke(main, [command, "--help"], terminal_width=200).output
        for name, (opt, owners) in datasets.declared_options().items():
            assert opt.flag in text and f"{', '.join(owners)} only: {opt.help}" in " ".join(text.split())


def test_a_new_dataset_needs_no_cli_edit(monkeypatch, tmp_path):
    """A reader registered with its own option: the flag appears, and its value reaches the reader."""
    seen = {}

    def read_toy(root, annotations=None, *, fraction: int = 3, videos=None, check_videos=True):
        seen.update(root=root, fraction=fraction)
        return Dataset(name="toy", videos=[], captions=[], max_frames=12, eval_split="test")

    toy = datasets.Reader(read_toy, (ReaderOption("fraction", "how much to keep.", default=3, type=int),))
    monkeypatch.setitem(datasets.READERS, "toy", toy)

    @click.command()
    @click.option("--dataset", "dataset_name")
    @click.option("--root")
    @reader_options
    def cmd(dataset_name, root, **options):
        DatasetSource(dataset_name, root, options=options).load()

    r = CliRunner().invoke(cmd, ["--help"])
    assert "--fraction INTEGER" in r.output and "toy only: how much to keep. Default: 3." in r.output
    r = CliRunner().invoke(cmd, ["--dataset", "toy", "--root", str(tmp_path), "--fraction", "5"])
    assert r.exit_code == 0, r.output
    assert seen == {"root": tmp_path, "fraction": 5}
    r = CliRunner().invoke(cmd, ["--dataset", "toy", "--root", str(tmp_path)])
    assert r.exit_code == 0 and seen["fraction"] == 3  # unset: the reader's default
    r = CliRunner().invoke(cmd, ["--dataset", "toy", "--root", str(tmp_path), "--split-variant", "7k"])
    assert r.exit_code != 0 and "--dataset toy does not take --split-variant" in str(r.exception)


def test_every_extract_option_reaches_the_job(tmp_path):
    job = parsed_job("--dataset", "msrvtt", "--root", "data/msrvtt", "--split-variant", "full", "--out", "c.h5",
                     "--clip", "random:tiny", "--clip-cache", "w", "--offline", "--device", "cpu", "--precision", "fp32",
                     "--fps", "2", "--max-frames", "7", "--max-words", "20", "--workers", "3", "--batch-frames", "8",
                     "--text-batch", "9", "--flush-every", "5", "--retry-failed", "--keep-removed")
    assert job.dataset == DatasetSource("msrvtt", "data/msrvtt", options={
        "split_variant": "full", "use_lists": None, "default_split": None, "n_videos": None, "seed": None})
    assert job.clip == ClipChoice("random:tiny", weights_dir="w", device="cpu", precision="fp32", offline=True)
    assert job.settings == ExtractSettings(fps=2.0, max_frames=7, max_words=20, workers=3, batch_frames=8,
                                           text_batch=9, flush_every=5, retry_failed=True, keep_removed=True)
    assert job.out == "c.h5" and job.shard is None
    plain = parsed_job("--dataset", "msvd")
    assert plain.settings == ExtractSettings() and plain.clip == ClipChoice() and plain.out is None


def test_a_job_is_plain_data_and_travels_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt.pt").write_bytes(b"")
    job = ExtractJob(DatasetSource("byo", "videos", annotations="ann.csv", options={"default_split": "train"}),
                     ClipChoice("ckpt.pt", weights_dir="weights"), ExtractSettings(max_frames=4), out="c.h5")
    assert pickle.loads(pickle.dumps(job)) == job
    far = job.portable()
    assert far.dataset.root == str(tmp_path / "videos") and far.dataset.annotations == str(tmp_path / "ann.csv")
    assert far.out == str(tmp_path / "c.h5") and far.clip.model == str(tmp_path / "ckpt.pt")
    assert far.clip.weights_dir == str(tmp_path / "weights") and far.settings == job.settings
    assert ExtractJob(DatasetSource("synthetic")).portable().dataset.root == str(tmp_path / "cache" / "synthetic")
    assert ClipChoice("ViT-B/32").portable().model == "ViT-B/32"  # a name, not a file here
    (tmp_path / "oc.safetensors").write_bytes(b"")
    assert ClipChoice("open_clip:ViT-B-32:oc.safetensors").portable().model == \
        f"open_clip:ViT-B-32:{tmp_path / 'oc.safetensors'}"
    assert ClipChoice("open_clip:ViT-B-32:laion2b_s34b_b79k").portable().model == "open_clip:ViT-B-32:laion2b_s34b_b79k"
    assert job.for_shard(2, 4).writes() == Path("c.shards") / "shard-002-of-004.h5"
    with pytest.raises(ValueError, match="no output cache"):
        ExtractJob(DatasetSource("byo")).writes()


def test_config_file_mirrors_the_options(tmp_path):
    config = tmp_path / "msvd.toml"
    config.write_text('dataset = "msvd"\nroot = "data/msvd"\nmax-frames = 8\nmax_words = 16\nkeep-removed = true\n'
                      'clip = "random:tiny"\n')
    job = parsed_job("--config", str(config), "--max-frames", "10")
    assert job.dataset.name == "msvd" and job.dataset.root == "data/msvd" and job.clip.model == "random:tiny"
    assert (job.settings.max_frames, job.settings.max_words, job.settings.keep_removed) == (10, 16, True)

    config.write_text('dataset = "msvd"\nmax-frame = 8\n')
    r = CliRunner().invoke(main, ["extract", "--config", str(config)])
    assert r.exit_code == 2 and f"{config}: unknown option max-frame" in r.output
    config.write_text('dataset = "msvd\n')
    r = CliRunner().invoke(main, ["extract", "--config", str(config)])
    assert r.exit_code == 2 and f"{config}: not valid TOML" in r.output
