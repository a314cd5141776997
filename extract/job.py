"""One extraction job: which dataset, which CLIP, which settings, which cache. Built alike by `vtr extract`,
the demo and Ray, and run by one path (`ExtractJob.run`).

A job is plain data (strings, numbers, tuples, a dict of a reader's options), so it pickles small and a
Ray worker on another machine can run it by itself: it reads the dataset and loads CLIP there. Paths
must then be ones the worker can see (a shared filesystem): `ExtractJob.portable` makes them absolute.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from vtr.cache.records import Dataset
from vtr.extract.settings import ExtractSettings

if TYPE_CHECKING:
    from vtr.extract.stage import ExtractStats


def _absolute(path) -> str | None:
    return None if path is None else str(Path(path).resolve())


@dataclass(frozen=True)
class DatasetSource:
    """Which dataset to read and how: its reader's name, folder, and options (`vtr.extract.datasets`).

    ``options`` holds the reader's own options (``split_variant`` for msrvtt, ``n_videos`` for synthetic,
    ...), each declared by its reader; None or absent: the reader's default.
    """

    name: str
    root: str | None = None  # None: the reader's default folder (synthetic: cache/synthetic)
    annotations: str | None = None  # a folder (byo: or a file); None: found under root
    videos: str | None = None  # relative to root; None: the dataset's usual folder
    options: Mapping[str, Any] = field(default_factory=dict)

    def load(self, *, progress: bool = False, **extra) -> Dataset:
        """Read the dataset (``extra``: e.g. ``check_videos=False``); raises ValueError for unknown options."""
        from vtr.extract.datasets import load_dataset

        return load_dataset(self.name, self.root, annotations=self.annotations, videos=self.videos,
                            progress=progress, **self.options, **extra)

    def portable(self) -> DatasetSource:
        """The same source with absolute paths (the default folder made explicit)."""
        from vtr.extract.datasets import DEFAULT_ROOTS

        root = self.root if self.root is not None else DEFAULT_ROOTS.get(self.name)
        return replace(self, root=_absolute(root), annotations=_absolute(self.annotations))


@dataclass(frozen=True)
class ClipChoice:
    """Which CLIP model and how to load it (`vtr.extract.clip_loader.load_clip`)."""

    model: str = "ViT-B/32"  # an OpenAI name, a checkpoint path, or random:tiny
    weights_dir: str | None = None  # where OpenAI's weight files are (--clip-cache)
    device: str = "auto"
    # "auto" is resolved where the job runs, for that machine's hardware (fp16 on a GPU, bf16 on a CPU with
    # bfloat16 instructions); an explicit one is used everywhere.
    precision: str = "auto"
    offline: bool | None = None  # never download weights; None: the VTR_OFFLINE environment variable decides

    def load(self, *, progress: bool = False, log: Callable[[str], None] = print):
        from vtr.extract.clip_loader import load_clip

        return load_clip(self.model, device=self.device, download_root=self.weights_dir, precision=self.precision,
                         offline=self.offline, progress=progress, log=log)

    def portable(self) -> ClipChoice:
        """Checkpoint files (also the weights file of ``open_clip:ARCH:FILE``) and the weights folder as
        absolute paths; model names and pretrained tags stay as they are."""
        model = self.model
        if Path(model).expanduser().is_file():
            model = _absolute(model)
        elif model.startswith("open_clip:"):
            from vtr.extract.open_clip_encoder import parse_spec

            arch, pretrained, _ = parse_spec(model)  # ValueError on a malformed spec, as loading it would raise
            if Path(pretrained).expanduser().is_file():
                model = f"open_clip:{arch}:{_absolute(Path(pretrained).expanduser())}"
        return replace(self, model=model, weights_dir=_absolute(self.weights_dir))


@dataclass(frozen=True)
class ExtractJob:
    """Read ``dataset``, load ``clip``, bring the cache ``out`` up to date with ``settings``.

    With ``shard=(i, n)`` only shard i of n is extracted, into its shard cache beside ``out``
    (`vtr.extract.shards`). ``out`` may be left None until the dataset is read (the CLI names the cache
    after the dataset); `run` needs it.
    """

    dataset: DatasetSource
    clip: ClipChoice = field(default_factory=ClipChoice)
    settings: ExtractSettings = field(default_factory=ExtractSettings)
    out: str | None = None
    shard: tuple[int, int] | None = None

    def load_dataset(self, *, progress: bool = False) -> Dataset:
        return self.dataset.load(progress=progress)

    def writes(self) -> Path:
        """The file this job writes: ``out``, or its shard's cache."""
        from vtr.extract.shards import shard_path

        if self.out is None:
            raise ValueError("the extraction job has no output cache (out)")
        return shard_path(self.out, *self.shard) if self.shard else Path(self.out)

    def run(self, *, dataset: Dataset | None = None, encoder=None, progress: bool = False,
            log: Callable[[str], None] = print) -> ExtractStats:
        """Read the dataset and load CLIP (unless given, already loaded), then extract; returns ExtractStats."""
        from vtr.extract.shards import extract_shard
        from vtr.extract.stage import run_extract

        path = self.writes()
        dataset = dataset if dataset is not None else self.load_dataset(progress=progress)
        encoder = encoder if encoder is not None else self.clip.load(progress=progress, log=log)
        if self.shard:
            return extract_shard(dataset, encoder, self.out, *self.shard, self.settings, progress=progress, log=log)
        return run_extract(dataset, encoder, path, self.settings, progress=progress, log=log)

    def for_shard(self, i: int, n: int) -> ExtractJob:
        return replace(self, shard=(i, n))

    def portable(self) -> ExtractJob:
        """The job with every path absolute, for a worker on another machine (or in another folder)."""
        return replace(self, dataset=self.dataset.portable(), clip=self.clip.portable(), out=_absolute(self.out))
