"""Create one experiment through the SkyDeck API and ask for it to run.

export SKYDECK_URL=http://127.0.0.1:8000
export SKYDECK_TOKEN=...            # manage.py create_api_token USERNAME
python examples/simple_experiment.py [--name NAME] [--backend local|skypilot] [--wait]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from skydeck_client import SkyDeck, SkyDeckError  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="simple-experiment")
    parser.add_argument("--backend", default="local", choices=["local", "skypilot"])
    parser.add_argument("--wait", action="store_true", help="Wait until the job finishes and print its log")
    args = parser.parse_args()
    sd = SkyDeck()

    spec = {
        "name": args.name,
        "description": "Created by examples/simple_experiment.py",
        "command": f"python3 {os.path.join(HERE, 'train.py')}" if args.backend == "local" else "python train.py",
        "flags": {"steps": 3, "step_seconds": 1, "learning_rate": 0.001},
        "backend": args.backend,
        "accelerators": "" if args.backend == "local" else "T4:1",
        "desired_state": "RUNNING",
        "tags": ["example"],
    }
    try:
        experiment = sd.post("/api/experiments", spec)
        print(f"created {experiment['name']} (id {experiment['id']}): {experiment['url']}")
    except SkyDeckError as exc:
        if exc.status != 409:
            sys.exit(str(exc))
        experiment = sd.post(f"/api/experiments/{args.name}/state", {"desired_state": "RUNNING"})
        print(f"{args.name} already exists; desired state set to RUNNING")

    if not args.wait:
        status = f"{sd.url}/api/experiments/{args.name}/status"
        print(f"follow it with: curl -H 'Authorization: Bearer $SKYDECK_TOKEN' {status}")
        return
    while True:
        status = sd.get(f"/api/experiments/{args.name}/status")
        job = status["last_job"]
        print(f"phase={status['phase']} reason={status['status_reason']} job={job and job['status']}")
        if job and job["status"] not in ("LAUNCHING", "PENDING", "SETTING_UP", "RUNNING"):
            log = sd.get(f"/api/jobs/{job['id']}/logs?offset=0")
            print(log["text"])
            return 0 if job["status"] == "SUCCEEDED" else 1
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
