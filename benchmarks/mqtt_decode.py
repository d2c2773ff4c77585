"""CPU cost of the MQTT decoder for one large packet arriving in many small reads.

A broker (or a network) may deliver a large PUBLISH (a huge NCMD, a retained status message) in
reads of one TCP segment each. The decoder must not copy the whole partial packet at every read
(quadratic: a 16 MiB packet in 1,460-byte reads once cost seconds of CPU). Prints one JSON
object per read size: the CPU seconds of the decoding process (``time.process_time``).

    python benchmarks/mqtt_decode.py --size-mib 16 --reads 1460 65536
"""

from __future__ import annotations

import argparse
import json
import struct
import time

from plugins.mqtt import packets


def decode_cpu_s(size: int, read: int) -> float:
    topic = b"spBv1.0/pat/NCMD/node"
    body = struct.pack("!H", len(topic)) + topic + b"\x00\x01\x00" + b"x" * size  # MQTT 5
    remaining, length = len(body), bytearray()
    while True:  # the fixed header's remaining length, encoded here (the gateway encodes none)
        byte, remaining = remaining & 0x7F, remaining >> 7
        length.append(byte | 0x80 if remaining else byte)
        if not remaining:
            break
    stream = b"\x32" + bytes(length) + body
    decoder = packets.Decoder()
    found = 0
    start = time.process_time()
    for at in range(0, len(stream), read):
        for _ in decoder.feed(stream[at : at + read]):
            found += 1
    cpu = time.process_time() - start
    assert found == 1
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=float, default=16.0, help="packet size (MiB)")
    parser.add_argument(
        "--reads", type=int, nargs="+", default=[1460, 65536], help="read sizes (bytes)"
    )
    args = parser.parse_args()
    size = min(int(args.size_mib * 1024 * 1024), packets.MAX_PACKET - 64)
    for read in args.reads:
        cpu = decode_cpu_s(size, read)
        print(json.dumps({"packet_bytes": size, "read_bytes": read, "cpu_s": round(cpu, 4)}))


if __name__ == "__main__":
    main()
