"""A 2 × 4 grid search over two flags (8 experiments) through the SkyDeck API.

The sweep runs at most --max-concurrent experiments at once; SkyDeck starts
the next as one finishes.

    export SKYDECK_URL=http://127.0.0.1:8000
    export SKYDECK_TOKEN=...            # manage.py create_api_token USERNAME
    python examples/grid_search.py [--name NAME] [--max-concurrent 3] [--wait]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from skydeck_client import SkyDeck, SkyDeckError  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GRID = {"nodes": [1, 2], "layers": [2, 4, 8, 16]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="grid-search")
    parser.add_argument("--backend", default="local", choices=["local", "skypilot"])
    parser.add_argument("--max-concurrent", type=int, default=3)
    parser.add_argument("--wait", action="store_true", help="Wait until every experiment has finished")
    args = parser.parse_args()
    sd = SkyDeck()

    base_name = f"{args.name}-base"
    base = {
        "name": base_name,
        "description": "Base of the grid search in examples/grid_search.py",
        "command": f"python3 {os.path.join(HERE, 'train.py')}" if args.backend == "local" else "python train.py",
        "flags": {"steps": 2, "step_seconds": 1},
        "backend": args.backend,
        "tags": ["example"],
    }
    try:
        sd.post("/api/experiments", base)
    except SkyDeckError as exc:
        if exc.status != 409:
            sys.exit(str(exc))
    try:
        sweep = sd.post(
            "/api/sweeps",
            {
                "name": args.name,
                "base": base_name,
                "kind": "grid",
                "parameters": GRID,
                "max_concurrent": args.max_concurrent,
                "desired_state": "RUNNING",
            },
        )
    except SkyDeckError as exc:
        sys.exit(str(exc))
    print(f"sweep {sweep['name']}: {len(sweep['experiments'])} experiments, at most {sweep['max_concurrent']} at once")
    for e in sweep["experiments"]:
        print(f"  {e['name']}  nodes={e['flags']['nodes']} layers={e['flags']['layers']}")

    if not args.wait:
        return 0
    while True:
        sweep = sd.get(f"/api/sweeps/{args.name}")
        counts = sweep["counts"]
        print(f"{counts['by_phase']}  active={counts['active']}", flush=True)
        done = counts["by_phase"].get("SUCCEEDED", 0) + counts["by_phase"].get("FAILED", 0)
        if done == counts["total"]:
            return 0 if counts["by_phase"].get("FAILED", 0) == 0 else 1
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
