"""``cstore eval``: prequential learning quality of the whole system on a drifting stream, vs River and VW."""
from __future__ import annotations

import click

from cstore.cli import CliContext, json_option, echo_json
from cstore_dev.evaluation.datasets import DATASETS  # names only: River is imported when a stream is built
from cstore_dev.evaluation.system import DEFAULT_BLOCK


@click.command(name="eval")
@click.option("--dataset", type=click.Choice(list(DATASETS)), required=True, help="Stream to evaluate on.")
@click.option("--events", type=click.IntRange(200),
              help="Stream length [phishing 1,250, fraud 40,000, agrawal-/hyperplane-abrupt/gradual 20,000, "
                   "the others 10,000].")
@click.option("--workers", type=click.IntRange(1, 16), default=1, show_default=True, help="Worker count K.")
@click.option("--processes", is_flag=True, help="Run the K workers as `cstore worker` processes (default: threads).")
@click.option("--block", type=click.IntRange(1, 5000), default=DEFAULT_BLOCK, show_default=True,
              help="Events scored before their labels are sent and learned (the bounded micro-batch delay: the "
                   "events a model scores while its latest labels are on their way).")
@click.option("--alpha", type=float, default=0.3, show_default=True, help="FTRL alpha (cstore and River).")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the synthetic streams.")
@click.option("--update", type=click.Choice(["per_event", "summed"]), default="per_event", show_default=True,
              help="How the workers learn a micro-batch (the learner's default: per event).")
@json_option
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), help="Write a PNG of windowed AUC here.")
@click.pass_obj
def eval_cmd(obj: CliContext, dataset: str, events: int | None, workers: int, processes: bool, block: int,
             alpha: float, seed: int, update: str, as_json: bool, plot_file: str | None) -> None:
    """Score a stream test-then-train through client, feedback and workers; compare with River, Vowpal Wabbit and a
    frozen model.

    Needs the evaluation extra (cstore-dev's): pip install -e './dev[eval]'. Creates a temporary learner model in the
    configured keyspace and drops it at the end.
    """
    from cstore_dev.evaluation import evaluate, summary_line
    from cstore_dev.evaluation.deps import require_river
    require_river()  # fail before touching the cluster when the extra is missing
    report = evaluate(obj.config, dataset, events=events, seed=seed, workers=workers, processes=processes,
                      block=block, learner={"alpha": alpha, "update": update})
    if plot_file:
        from cstore_dev.evaluation.plot import plot
        report["plot"] = str(plot(report, plot_file))
    if as_json:
        echo_json(report)
    else:
        click.echo(summary_line(report))


