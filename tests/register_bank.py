"""A bank of Modbus TCP holding registers that change at every read, as a program of its own.

For tests that need load (many instruments of many values) rather than an instrument's
behaviour: one asyncio server on ``127.0.0.1:PORT`` answers function code 3 (read holding
registers) for any unit id and address with ``count`` words, word ``i`` of read ``n`` being
``(n * 7 + address + i) % 65536``; any other function gets exception 1. The framing is written
here with ``struct`` (emulators share no framing code with the driver). Run it in a process of
its own, so that answering costs the gateway under test nothing:

    python tests/register_bank.py            # prints the port it listens on, then serves
    python tests/register_bank.py --port 15020
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys

_HEADER = struct.Struct(">HHHB")  # transaction, protocol, length, unit
_READ = struct.Struct(">BHH")  # function, address, count


class Bank:
    def __init__(self) -> None:
        self.reads = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                tid, _protocol, length, unit = _HEADER.unpack(await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                if pdu[:1] != b"\x03" or len(pdu) != 5:
                    reply = bytes((pdu[0] | 0x80 if pdu else 0x80, 1))
                else:
                    _, address, count = _READ.unpack(pdu)
                    self.reads += 1
                    base = self.reads * 7 + address
                    words = [(base + i) % 65536 for i in range(count)]
                    reply = struct.pack(f">BB{count}H", 3, 2 * count, *words)
                writer.write(_HEADER.pack(tid, 0, len(reply) + 1, unit) + reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def main(port: int) -> None:
    bank = Bank()
    server = await asyncio.start_server(bank.serve, "127.0.0.1", port)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    try:
        asyncio.run(main(parser.parse_args().port))
    except KeyboardInterrupt:
        sys.exit(0)
