"""One Home Assistant style look at a gateway on this host, for proofs that look from another namespace.

`python -m tests.proof.api_probe PORT ENTITIES` connects to 127.0.0.1:PORT, lists the entities, collects
one state each and prints {"entities": n, "values": {object_id: value or null}} as one JSON line
(exit 1 with the reason when it cannot within 30 s).
"""

from __future__ import annotations

import asyncio
import json
import sys

from tests.support.stack import api_snapshot


async def look(port: int, entities: int) -> dict[str, object]:
    snapshot = await api_snapshot(port, expect_entities=entities, timeout=30)
    return {"entities": len(snapshot.entities), "values": {o: snapshot.value(o) for o in snapshot.entities}}


def main(argv: list[str]) -> int:
    try:
        result = asyncio.run(look(int(argv[0]), int(argv[1])))
    except TimeoutError as exc:
        print(f"api_probe: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
