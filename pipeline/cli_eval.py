"""`vtr eval`: the retrieval report of a run, or of zero-shot CLIP, on a cache."""
from __future__ import annotations

from pathlib import Path

import click

from vtr.cli_common import RUNS_DIR, fail, log


class _EvalCommand(click.Command):
    """`vtr eval` with one flag per registered rescoring method (``--dsl``, ``--qbnorm``, ...) after --split.

    The flags are added when the command runs or shows its help, not when the CLI starts: the registry
    imports torch, which every other command's start need not wait for.
    """

    def get_params(self, ctx):
        from vtr.eval import rescorers

        have = {p.name for p in self.params}
        new = [click.Option([f"--{m.name}", f"rescore_{m.name}"], is_flag=True, help=m.flag_help)
               for m in rescorers.flagged() if f"rescore_{m.name}" not in have]
        if new:
            at = max(i for i, p in enumerate(self.params) if p.name == "split" or p.name.startswith("rescore_")) + 1
            self.params[at:at] = new
        return super().get_params(ctx)


def _one_of(flags: list[str]) -> str:
    return flags[0] if len(flags) == 1 else ", ".join(flags[:-1]) + " and " + flags[-1]


@click.command(name="eval", cls=_EvalCommand)
@click.option("--run", "run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Run folder to evaluate. Default: the latest under cache/runs.")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path, exists=True),
              help="Cache to evaluate on. Default: the run's own.")
@click.option("--zero-shot", is_flag=True, help="Evaluate zero-shot CLIP (meanP over frozen frames) on --cache; no run.")
@click.option("--split", help="Split to evaluate. Default: test, or val when the cache has no test captions.")
@click.option("--dsl-memory", "dsl_memory_mib", type=click.FloatRange(min=0), default=1024, show_default=True,
              metavar="MIB", help="With --dsl: MiB of scores kept from DSL's first pass so the second need not "
              "recompute them (the whole matrix if it fits: 10k x 10k takes 381 MiB). 0: recompute all, least memory.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the report as JSON here.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
def eval_(run_dir, cache_path, zero_shot, split, dsl_memory_mib, json_path, device, **flags):
    """Text-to-video and video-to-text R@1/5/10, MdR, MnR (tie-safe ranks, multi-caption protocol)."""
    from vtr.eval import rescorers
    from vtr.eval.report import format_table, write_json
    from vtr.eval.stage import evaluate_run, evaluate_zero_shot
    from vtr.core.safe_load import LoadError
    from vtr.train.runs import latest_run

    chosen = [m.name for m in rescorers.flagged() if flags.get(f"rescore_{m.name}")]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one of {_one_of([f'--{m.name}' for m in rescorers.flagged()])}")
    rescore = chosen[0] if chosen else rescorers.DEFAULT
    try:
        if zero_shot:
            if not cache_path:
                raise click.UsageError("--zero-shot needs --cache")
            report = evaluate_zero_shot(cache_path, split=split, rescore=rescore, device=device,
                                        dsl_memory_mib=dsl_memory_mib)
        else:
            run_dir = run_dir or latest_run(RUNS_DIR)
            log(f"evaluating {run_dir}")
            report = evaluate_run(run_dir, cache_path=cache_path, split=split, rescore=rescore, device=device,
                                  dsl_memory_mib=dsl_memory_mib)
    except (LoadError, ValueError, RuntimeError, FileNotFoundError) as e:
        fail(e)
    click.echo(format_table([report]))
    if json_path:
        try:
            write_json(json_path, report)
        except OSError as e:
            fail(e, json_path)
