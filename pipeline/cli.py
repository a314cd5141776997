"""The `vtr` command group. Each command lives in its own module (`cli_<name>.py`) and is registered here.

Stages talk through files: `extract` writes a cache, `fit` reads it and writes a run folder, `eval`
and `table` read both, `index` makes a search index that `search` and `serve` read. Everything lands
under ./cache by default.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from vtr.cli_common import CACHE_DIR, io_line, log
from vtr.core import __version__

class _Main(click.Group):
    """`vtr`: a failure of the disk or the file system that no command caught (a report or a run folder
    that cannot be written) ends in one line naming the path and the cause, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (OSError, RuntimeError) as e:
            import errno

            if isinstance(e, OSError) and e.errno == errno.EPIPE:  # output piped to `head`: click's own case
                raise
            line = io_line(e)
            if line is None:
                raise
            raise click.ClickException(line) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vtr")
def main():
    """Video-text retrieval with CAMoE and Dual Softmax Loss on frozen, cached CLIP features.

    \b
    vtr extract --dataset synthetic --clip random:tiny   # decode, encode, cache (incremental)
    vtr fit --cache cache/synthetic.h5                   # train a head on the cached features
    vtr eval                                             # evaluate the latest run
    vtr demo                                             # all three on built-in synthetic data
    """


# ----------------------------------------------------------------------------- demo


@main.command()
@click.option("--out", type=click.Path(path_type=Path), help="Also write the table as DIR/demo.json.")
@click.option("--workdir", default=CACHE_DIR / "demo", show_default=True, type=click.Path(path_type=Path),
              help="Where the clips, the cache and the run go (reused: a rerun redoes nothing).")
@click.option("--n-videos", default=300, show_default=True, help="Synthetic clips to make.")
@click.option("--epochs", default=30, show_default=True, help="Training epochs.")
@click.option("--seed", default=0, show_default=True, help="Seed of the clips and of training.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out, workdir, n_videos, epochs, seed, device, quiet):
    """Synthetic extract -> fit -> eval end to end, offline, with a random CLIP; prints one table."""
    from vtr.demo import run_demo

    _, text = run_demo(workdir, out=out, n_videos=n_videos, epochs=epochs, seed=seed, device=device,
                       progress=not quiet, log=log)
    click.echo(text)
    if out:
        click.echo(f"\nwrote {Path(out) / 'demo.json'}")


# The commands in their own modules (`vtr --help` lists them alphabetically).
from vtr.cli_eval import eval_  # noqa: E402
from vtr.cli_extract import combine, extract  # noqa: E402
from vtr.cli_fit import fit  # noqa: E402
from vtr.cli_info import info  # noqa: E402
from vtr.cli_parse import parse_cmd  # noqa: E402
from vtr.cli_search import register as _register_search  # noqa: E402
from vtr.cli_table import table  # noqa: E402

for _command in (extract, fit, eval_, table, info, combine, parse_cmd):
    main.add_command(_command)
_register_search(main)


if __name__ == "__main__":
    sys.exit(main())
