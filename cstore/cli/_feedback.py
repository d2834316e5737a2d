"""``cstore feedback ingest FILE``: JSON lines or msgpack records, the Python API's field names.

Each record: ``entity_id``, ``label`` (required), ``kind``, ``confidence``, ``event_time``,
``features``, ``metadata`` and ``model`` (required unless ``--model`` is given). A malformed record is
reported with its line (JSON lines) or record number (msgpack) and is never written in part. With
``--on-error fail`` (the default) the whole file is validated first and nothing is written if any
record is bad; with ``--on-error skip`` bad records are reported and the rest is written.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import click
import msgpack

from cstore.cli._app import CliContext, json_option, echo_json
from cstore.errors import CstoreError, ValidationError
from cstore.feedback import FeedbackWriter, erase_entity, erasures

FIELDS = {"model", "entity_id", "label", "kind", "confidence", "event_time", "features", "metadata"}
_MAX_REPORTED = 20
EXIT_SKIPPED = 2  # exit status when the good records were written but some were skipped (--on-error skip)


def _records(path: str, fmt: str) -> Iterator[tuple[int, int, Any]]:
    """``(number, bytes consumed so far, record or exception)``."""
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        if fmt == "msgpack":
            unpacker = msgpack.Unpacker(stream, raw=False, strict_map_key=False)
            n = 0
            while True:
                n += 1
                try:
                    obj = unpacker.unpack()
                except msgpack.OutOfData:
                    return
                except Exception as exc:  # corrupt stream: nothing after it can be trusted
                    yield n, unpacker.tell(), ValidationError(f"undecodable msgpack ({exc}); stopping here")
                    return
                yield n, unpacker.tell(), obj
        else:
            consumed = 0
            for n, line in enumerate(stream, 1):
                consumed += len(line)
                if not line.strip():
                    continue
                try:
                    yield n, consumed, json.loads(line)
                except ValueError as exc:
                    yield n, consumed, ValidationError(f"not valid JSON: {exc}")
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _event(record: Any, default_model: str | None):
    """Validate one record: ``(model, Event, encoded bytes)``; raises with what to fix."""
    from cstore.feedback import encode_event, make_event
    if isinstance(record, Exception):
        raise record
    if not isinstance(record, dict):
        raise ValidationError(f"each record must be an object with {', '.join(sorted(FIELDS))}; "
                              f"got {type(record).__name__}")
    unknown = set(record) - FIELDS
    if unknown:
        raise ValidationError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                              f"allowed: {', '.join(sorted(FIELDS))}")
    missing = {"entity_id", "label"} - set(record)
    if missing:
        raise ValidationError(f"missing field(s) {', '.join(sorted(missing))}")
    model = record.get("model", default_model)
    if not isinstance(model, str):
        raise ValidationError("no model: give --model or a 'model' field")
    ev = make_event(record["entity_id"], record["label"], record.get("kind", "explicit"), record.get("confidence"),
                    record.get("event_time"), record.get("features"), record.get("metadata"))
    return model, ev, encode_event(ev)


@click.group()
def feedback() -> None:
    """Send feedback (labels, rewards) for models to learn from."""


@feedback.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--model", help="Model for records without a 'model' field.")
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "msgpack"]), default="auto", show_default=True,
              help="auto: msgpack for *.msgpack / *.mpk, JSON lines otherwise.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="fail: validate everything first, write nothing if a record is bad; skip: write the good ones.")
@click.option("--linger-ms", type=click.FloatRange(0), default=20.0, show_default=True)
@click.option("--max-batch", type=click.IntRange(1), default=500, show_default=True, help="Events per segment.")
@json_option
@click.pass_obj
def ingest(obj: CliContext, file: str, model: str | None, fmt: str, on_error: str, linger_ms: float, max_batch: int,
           as_json: bool) -> None:
    """Ingest feedback records from FILE (JSON lines or msgpack; '-' for stdin).

    Exit status: 0 everything written; 1 nothing written (a bad record with --on-error fail, or an
    error); 2 the good records written and some skipped (--on-error skip).
    """
    if file != "-" and not os.path.isfile(file):
        raise click.BadParameter(f"{file} does not exist", param_hint="FILE")
    if fmt == "auto":
        fmt = "msgpack" if file.endswith((".msgpack", ".mpk")) else "jsonl"
    if on_error == "fail" and file == "-":
        raise click.BadParameter("--on-error fail reads the input twice; save stdin to a file or use --on-error skip")
    store = obj.store()
    unit = "record" if fmt == "msgpack" else "line"
    errors: list[tuple[int, str]] = []
    if on_error == "fail":
        errors = [(n, msg) for n, msg in _validate(store, file, fmt, model)]
        if errors:
            _report(errors, unit)
            raise CstoreError(f"{len(errors)} bad {unit}(s) in {file}; nothing was written "
                              f"(fix them, or use --on-error skip to write the good ones)")
    t0 = time.monotonic()
    written, errors = _write(store, file, fmt, model, linger_ms, max_batch)
    elapsed = time.monotonic() - t0
    _report(errors, unit)
    summary = {"file": file, "written": written, "skipped": len(errors), "seconds": round(elapsed, 3),
               "events_per_s": round(written / elapsed, 1) if elapsed > 0 else None,
               "errors": [{unit: n, "error": msg} for n, msg in errors[:_MAX_REPORTED]]}
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"wrote {written} event(s) in {elapsed:.1f} s ({summary['events_per_s']}/s); "
                   f"skipped {len(errors)} bad {unit}(s)")
    if errors:  # the good records are written, but the run was not clean: say so to scripts
        sys.exit(EXIT_SKIPPED)


def _validate(store, file: str, fmt: str, model: str | None) -> Iterator[tuple[int, str]]:
    from cstore.feedback import context
    ctx, known = context(store), set()
    for n, _, rec in _records(file, fmt):
        try:
            m, _, _ = _event(rec, model)
            if m not in known:
                ctx.layout(m)
                known.add(m)
        except CstoreError as exc:
            yield n, str(exc)


def _write(store, file: str, fmt: str, model: str | None, linger_ms: float, max_batch: int):
    writers: dict[str, Any] = {}
    errors: list[tuple[int, str]] = []
    written = 0
    size = os.path.getsize(file) if file != "-" else None
    try:
        progress: Any = click.progressbar(length=size, label="ingesting", file=sys.stderr, show_pos=size is None)
        with progress as bar:
            last = 0
            for n, consumed, rec in _records(file, fmt):
                try:
                    m, ev, data = _event(rec, model)
                    if m not in writers:
                        writers[m] = FeedbackWriter(store, m, linger_ms=linger_ms, max_batch=max_batch)
                    writers[m].send_event(ev.entity_id, ev.kind, data)
                    written += 1
                except CstoreError as exc:
                    errors.append((n, str(exc)))
                bar.update(consumed - last if size is not None else 1)
                last = consumed
        for w in writers.values():
            w.flush()
    finally:
        for w in writers.values():
            w.close()
    return written, errors


def _report(errors: list[tuple[int, str]], unit: str) -> None:
    for n, msg in errors[:_MAX_REPORTED]:
        click.echo(f"{unit} {n}: {msg}", err=True)
    if len(errors) > _MAX_REPORTED:
        click.echo(f"… and {len(errors) - _MAX_REPORTED} more", err=True)


COMMANDS = [feedback]


@feedback.command()
@click.option("--model", required=True, help="The model whose data to erase.")
@click.option("--entity", "entity_id", required=True, help="The entity id (matched as text, as it was sent).")
@click.option("--reason", required=True, help="The request this honours (kept in the erasure record).")
@json_option
@click.pass_obj
def erase(obj: CliContext, model: str, entity_id: str, reason: str, as_json: bool) -> None:
    """Erase one entity's feedback events and prediction-log rows (a data subject's request).

    Segments the entity shares with others are rewritten without its events; running workers are not
    disturbed (each other event is still learned exactly once). The erasure is recorded in the
    model's audit trail (`cstore feedback erasures`, `cstore model audit`) with a hash of the id.
    Weights already learned from the entity's events are NOT unlearned.
    """
    report = erase_entity(obj.store(), model, entity_id, reason=reason)
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(f"erased entity {entity_id!r} from {model}: {report.events} feedback event(s) "
               f"({report.segments_rewritten} segment(s) rewritten, {report.segments_deleted} deleted), "
               f"{report.predictions} prediction-log row(s); learned weights are not unlearned")
    if report.unreadable_segments:
        click.echo(f"warning: {len(report.unreadable_segments)} damaged segment(s) could not be searched: "
                   f"{', '.join(report.unreadable_segments[:5])}", err=True)


@feedback.command(name="erasures")
@click.option("--model", required=True, help="The model whose erasure log to show.")
@json_option
@click.pass_obj
def erasures_cmd(obj: CliContext, model: str, as_json: bool) -> None:
    """The model's erasures from its audit trail, newest first (the entity is named by a hash, not its id)."""
    rows = erasures(obj.store(), model)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        d = r["details"] or {}
        click.echo(f"{r['at']}  {str(d.get('entity_hash'))[:16]}  events={d.get('events')} "
                   f"predictions={d.get('predictions')}  by {r['actor']}: {r['reason']}")
