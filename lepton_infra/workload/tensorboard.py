"""A small TensorBoard event-file writer (scalars only), so `tensorboard --logdir runs/<id>` shows a
run's job and node metrics without tensorboard or tensorflow installed on the controller.

The format is TensorFlow's, written by hand because it is small and fixed:
- a file is a sequence of TFRecords: uint64 length, uint32 masked CRC-32C of the length, the
  data, uint32 masked CRC-32C of the data (all little-endian);
- each record is an `Event` protobuf: wall_time (1, double), step (2, int64), file_version
  (3, string; the first event says "brain.Event:2"), summary (5, `Summary`);
- a `Summary` holds repeated `value` (1) messages of tag (1, string) and simple_value (2, float).
tests/test_metrics_report.py reads files back with an independent protobuf decoder."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 as protobuf encodes it (negatives take ten bytes)
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def event(
    wall_time: float, step: int = 0, *, scalars: dict[str, float] | None = None, version: str = ""
) -> bytes:
    """One serialized `Event`."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if version:
        out += _bytes_field(3, version.encode())
    if scalars:
        values = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value))
            for tag, value in scalars.items()
        )
        out += _bytes_field(5, values)
    return out


def record(data: bytes) -> bytes:
    """`data` framed as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


class EventWriter:
    """Scalars into one new event file in `folder` (TensorBoard shows each folder as one run)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self.chunks = [record(event(time.time(), version="brain.Event:2"))]

    def scalars(self, step: int, wall_time: float, values: dict[str, float]) -> None:
        self.chunks.append(record(event(wall_time, step, scalars=values)))

    def close(self) -> Path:
        self.path.write_bytes(b"".join(self.chunks))
        return self.path
