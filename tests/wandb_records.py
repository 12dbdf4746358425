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
    """The run record, history rows, summary and config keys of an offline run file."""
    run, history, summary, config = None, [], {}, {}
    for payload in _payloads(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "config":
            config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
    return {"run": run, "history": history, "summary": summary, "config": config}


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)
