"""``vigil ingest deadletters list|replay``: see what ingest could not store, and send it again once fixed.

Runs with the ingest role's settings (the same store and broker as ``vigil ingest``).

- ``list`` prints the newest dead letters (time, id, code, topic, reason, payload start),
  filtered by ``--code`` and ``--topic-prefix``; ``--json`` prints one JSON object a line.
- ``replay`` republishes the selected letters to their original topics at QoS 1, waits for
  the broker to accept each, then marks them replayed in the store. They go through ingest
  again like any message: stored if the fault is fixed (a device firmware, the time
  window, the store's schema), dead-lettered again with the reason if not. Letters already
  replayed are skipped unless ``--again``; letters whose topic is not a Vigil topic cannot
  be republished and are reported, not sent. ``--dry-run`` shows what would be sent.

Invariants: a letter is marked replayed only after the broker acknowledged its publish;
nothing is deleted (the store keeps the history of what was refused).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any

from ingest.settings import IngestSettings
from ingest.store import DeadLetter, open_store
from wire import WireError, parse_topic
from wire.mqtt import make_client


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in (("list", "print the newest dead letters"),
                       ("replay", "republish dead letters to their topics, then mark them replayed")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--code", help="only this reason code (e.g. wrong_type, ts_out_of_window)")
        p.add_argument("--topic-prefix", metavar="PREFIX", help="only topics starting with this")
        p.add_argument("--limit", type=int, default=100, help="at most this many, newest first (default 100)")
        if name == "list":
            p.add_argument("--json", action="store_true", help="one JSON object a line")
        else:
            p.add_argument("--id", action="append", dest="ids", metavar="ID",
                           help="only these letters (repeatable; ids come from `list`)")
            p.add_argument("--again", action="store_true", help="also letters replayed before")
            p.add_argument("--dry-run", action="store_true", help="show what would be sent, send nothing")


def _select(letters: list[DeadLetter], args: argparse.Namespace) -> list[DeadLetter]:
    ids = set(getattr(args, "ids", None) or ())
    return [d for d in letters if not ids or d.id in ids]


def main(settings: IngestSettings, args: argparse.Namespace) -> int:
    if args.limit < 1:
        print(f"--limit must be at least 1, got {args.limit}", file=sys.stderr)
        return 2
    store = open_store(settings.store)
    try:
        found = store.dead_letters(args.limit, code=args.code, topic_prefix=args.topic_prefix)
        letters = _select(found, args)
        if args.command == "list":
            _print(letters, as_json=args.json)
            return 0
        return _replay(settings, store, letters, again=args.again, dry_run=args.dry_run)
    finally:
        store.close()


def _print(letters: list[DeadLetter], *, as_json: bool) -> None:
    for d in letters:
        text = d.payload[:200].decode("utf-8", "backslashreplace")
        if as_json:
            doc: dict[str, Any] = {
                "id": d.id, "received_ms": d.received_ms, "code": d.code, "topic": d.topic,
                "reason": d.reason,
                "payload": d.payload.decode("utf-8", "backslashreplace"), "replayed_ms": d.replayed_ms,
            }
            print(json.dumps(doc))
            continue
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d.received_ms / 1000))
        replayed = f" (replayed {d.replayed_ms})" if d.replayed_ms else ""
        print(f"{when} id={d.id} [{d.code or '-'}] {d.topic}{replayed}\n    {d.reason}\n    payload: {text}")
    if not as_json:
        print(f"{len(letters)} dead letter(s)")


def _replay(settings: IngestSettings, store: Any, letters: list[DeadLetter], *, again: bool,
            dry_run: bool) -> int:
    todo: list[DeadLetter] = []
    for d in letters:
        if d.replayed_ms is not None and not again:
            continue
        try:
            parse_topic(d.topic)
        except WireError as e:
            print(f"not replayable: id={d.id} {d.topic[:120]}: {e}", file=sys.stderr)
            continue
        todo.append(d)
    if dry_run or not todo:
        for d in todo:
            print(f"would replay id={d.id} [{d.code}] to {d.topic} ({len(d.payload)} bytes)")
        print(f"{len(todo)} dead letter(s) to replay")
        return 0
    mq = settings.mqtt
    client = make_client(mq, f"vigil-replay-{uuid.uuid4().hex[:8]}")
    client.connect(mq.host, mq.port, keepalive=mq.keepalive_s)
    client.loop_start()
    sent: list[str] = []
    try:
        for d in todo:
            info = client.publish(d.topic, d.payload, qos=1)
            info.wait_for_publish(timeout=30)
            if not info.is_published():
                print(f"broker did not accept id={d.id} within 30 s; stopping", file=sys.stderr)
                break
            sent.append(d.id)
            print(f"replayed id={d.id} [{d.code}] to {d.topic}")
    finally:
        client.disconnect()
        client.loop_stop()
        if sent:
            store.mark_replayed(sent, int(time.time() * 1000))
    print(f"{len(sent)} of {len(todo)} dead letter(s) replayed")
    return 0 if len(sent) == len(todo) else 1
