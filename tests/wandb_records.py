"""Read back the records of an offline W&B run file (``run-<id>.wandb``), for tests.

The file is a 7-byte header (``:W&B``, 0xBEE1, version) followed by a LevelDB-style log: 32 KiB
blocks of chunks, each with a 7-byte header (crc32c, little-endian length, type: 1 full,
2 first, 3 middle, 4 last) around serialised ``wandb_internal_pb2.Record`` protobufs.
"""

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FILE_HEADER = 7
CHUNK_HEADER = 7


def _payloads(data: bytes):
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file")
    position, pending = FILE_HEADER, b""
    while position + CHUNK_HEADER <= len(data):
        room = BLOCK - position % BLOCK
        if room < CHUNK_HEADER:
            position += room
            continue
        length, kind = struct.unpack("<HB", data[position + 4 : position + 7])
        if length == 0 and kind == 0:
            position += room
            continue
        body = data[position + CHUNK_HEADER : position + CHUNK_HEADER + length]
        position += CHUNK_HEADER + length
        if kind == 1:
            yield body
        elif kind == 2:
            pending = body
        elif kind == 3:
            pending += body
        elif kind == 4:
            yield pending + body


def read_run(path: Path) -> dict:
    """The run record, history rows, summary and config of an offline run file.

    A value logged as a dict (a table, a histogram, ``_wandb.visualize``) comes back nested, as
    W&B stores it: ``summary["test/predictions"]["path"]``."""
    run, history, summary, config = None, [], {}, {}
    for payload in _payloads(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                _put(row, item)
            history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _put(summary, item)
        elif kind == "config":
            for item in record.config.update:
                _put(config, item)
    return {"run": run, "history": history, "summary": summary, "config": config}


def read_table(path: Path, value: dict) -> dict:
    """The ``{"columns", "data"}`` of a logged table: ``value`` is what the history or summary
    holds for it (a ``table-file`` reference), ``path`` the run file."""
    if value.get("_type") != "table-file":
        raise ValueError(f"not a logged table: {value}")
    return json.loads((path.parent / "files" / value["path"]).read_text())


def _put(target: dict, item) -> None:
    keys = [item.key] if item.key else list(item.nested_key)
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)
