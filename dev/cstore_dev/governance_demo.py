"""Governance, end to end: a guarded ``@champion`` alias survives a poisoned feedback source.

``python -m cstore_dev.governance_demo`` (or the last part of ``make demo``): two worker processes learn
a fraud-like stream; a reviewed ``@champion`` alias follows the head under a guard; then a broken
feedback source starts sending flipped labels. The head learns them and gets worse on the trusted
(explicit) labels; the workers' guard pins ``@champion`` to the reviewed snapshot, the scorer of
``model@champion`` follows, and the head keeps learning. A promotion is refused while the guard fails;
once the source is fixed and the head has recovered, a reviewed promotion moves ``@champion`` on. The
audit trail says who did what and why.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from cstore.errors import GuardFailing
from cstore.feedback import FeedbackWriter
from cstore.ops import fleet_status
from cstore.scoring import Client
from cstore.training import create_learner
from cstore_dev.fleet_demo import start_workers, stop_workers
from cstore_dev.fraudsim import FraudStream

GUARD = {"max_regression": 0.02, "min_labels": 300, "window": 2000}


def run(store, *, echo: Callable[[str], None] = print, timeout_s: float = 60.0) -> dict:
    name = f"fraud_gov_{int(time.time())}"
    create_learner(store, name, n_features=2**14, partitions=4)
    gen = FraudStream(seed=7)
    _, procs = start_workers(store, name, 2, "governance-worker")
    sent = 0
    out: dict = {"model": name}

    def send(n: int, *, poisoned: bool) -> None:
        nonlocal sent
        with FeedbackWriter(store, name, linger_ms=20) as w:
            for i, tx in enumerate(gen.sample(n)):
                broken = poisoned and i % 4 != 0  # three in four from the broken source, label flipped
                w.send(tx["entity_id"], 1.0 - tx["label"] if broken else tx["label"],
                       kind="implicit" if broken else "explicit", features=tx["features"])
        sent += n

    def wait_learned() -> None:
        deadline = time.monotonic() + timeout_s
        while fleet_status(store, name)["learned_events"] < sent and time.monotonic() < deadline:
            time.sleep(0.2)

    def guard_line(t: float, champ) -> str:
        m = store.governance.metrics(store.model_info(name))[0]
        ll = "-" if m["head_log_loss"] is None else f"{m['head_log_loss']:.3f} vs {m['base_log_loss']:.3f}"
        return (f"{t:5.1f}s  @champion -> {store.alias(name, 'champion').target:>5}  scorer holds v{champ.version}"
                f"  head v{store.head_version(name)}  trusted-label log loss head vs baseline {ll}"
                f"{'  FAILING' if m['failing'] else ''}")

    client = Client(config=store.config)
    try:
        echo(f"model {name}: two workers learn 8,000 trusted labels")
        send(8000, poisoned=False)
        wait_learned()
        champion = store.set_alias(name, "champion", "head", reason="reviewed: first week of learning",
                                   guard=GUARD, actor="risk-review")
        champ = client.model(f"{name}@champion")
        echo(f"@champion follows the head under a guard {GUARD}; baseline snapshot v{champion.baseline}")
        echo("a feedback source breaks: three in four labels now arrive flipped (kind 'implicit')")
        start = time.monotonic()
        poisoned = 0
        while store.alias(name, "champion").pinned is None and time.monotonic() - start < timeout_s:
            send(1000, poisoned=True)
            poisoned += 1000
            wait_learned()
            echo("  " + guard_line(time.monotonic() - start, champ))
        tripped = store.alias(name, "champion")
        out["tripped_after_s"] = round(time.monotonic() - start, 1)
        out["poisoned_labels_before_trip"] = poisoned
        time.sleep(0.2)  # the scorer sees the move at its next poll (20 ms)
        echo(f"guard tripped {out['tripped_after_s']} s after the source broke ({poisoned:,} labels, "
             f"{poisoned * 3 // 4:,} of them flipped): "
             f"@champion pinned to v{tripped.pinned}; the scorer of {name}@champion holds v{champ.version}, "
             f"the head is at v{store.head_version(name)} and keeps learning")
        guard = next(e for e in store.audit(name) if e["action"] == "guard")
        echo(f"audit: {guard['actor']}: {guard['reason']}")
        try:
            store.promote(name, "champion", reason="promote anyway?")
        except GuardFailing as exc:
            echo(f"promotion refused: {str(exc).split(';')[0]}")
        echo("the source is fixed: trusted labels only, until the head is no worse than the baseline")
        start = time.monotonic()
        while store.governance.metrics(store.model_info(name))[0]["failing"] and \
                time.monotonic() - start < timeout_s:
            send(1000, poisoned=False)
            wait_learned()
            time.sleep(0.5)  # the workers report their windows every 2 s
            echo("  " + guard_line(time.monotonic() - start, champ))
        promoted = store.promote(name, "champion", reason="source fixed; metrics reviewed", actor="risk-review")
        champ.wait_for_version(store.head_version(name), timeout=5)
        out["recovered_after_s"] = round(time.monotonic() - start, 1)
        echo(f"reviewed promotion: @champion follows the head again (new baseline v{promoted.baseline}); "
             f"the scorer holds v{champ.version}")
        echo("audit trail (newest first):")
        for e in store.audit(name, limit=6):
            echo(f"  {e['at'][11:19]}  {e['action']:<8} {e['from'] or '-':>16} -> {e['to'] or '-':<16} "
                 f"{e['actor']}: {e['reason'] or ''}")
    finally:
        stop_workers(procs)
        client.close()
    return out


def main() -> None:
    from cstore.store import Store
    from cstore.config import load_config
    store = Store.from_config(load_config())
    try:
        run(store)
    finally:
        store.close()


if __name__ == "__main__":
    main()
