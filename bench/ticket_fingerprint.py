"""What a ticket's fingerprint costs: hashing the weights a ResNet18 ticket leaves to its seed
(rst_lib/models/fingerprint.py), beside saving and loading the whole ticket.

    flock /tmp/heavy.lock .venv/bin/python bench/ticket_fingerprint.py [--reps 5] [--json]

Per keep ratio: the median seconds of the fingerprint alone (what save_ticket adds; loading
computes the same hash once more), of save_ticket and of load_ticket (which includes the
check), on one thread and on torch's default threads, with the matmul yardstick line
(bench/matmul.py) and the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rst_lib from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import matmul  # noqa: E402


def median_seconds(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(keep_ratio: float, reps: int) -> dict:
    import torch
    from rst_lib import create_model, load_ticket, save_ticket
    from rst_lib.masks import masking
    from rst_lib.models.fingerprint import entry_digests
    from rst_lib.models.tickets import read_ticket
    model = create_model("resnet18", 10, 3, image_size=32, keep_ratio=keep_ratio).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = save_ticket(model, Path(tmp) / "ticket.pt")
        payload = read_ticket(path)
        keys = list(payload["fingerprint"]["entries"])
        kept = sum(int(m.sum()) for m in masking.weight_masks(model).values())
        out = {"keep_ratio": keep_ratio, "entries": len(keys), "kept_weights": kept,
               "ticket_bytes": path.stat().st_size,
               "fingerprint_bytes": len(json.dumps(payload["fingerprint"]))}
        for threads in (1, torch.get_num_threads()):
            torch.set_num_threads(threads)
            out[f"threads={threads}"] = {
                "fingerprint_s": median_seconds(lambda: entry_digests(model, keys), reps),
                "save_ticket_s": median_seconds(lambda: save_ticket(model, Path(tmp) / "t2.pt"), reps),
                "load_ticket_s": median_seconds(lambda: load_ticket(path), reps)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--keep-ratios", default="0.05,0.5")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch
    threads = torch.get_num_threads()
    yard = matmul.measure()
    rows = [measure(float(k), args.reps) for k in args.keep_ratios.split(",")]
    torch.set_num_threads(threads)
    after = matmul.measure(reps=5)
    result = {"torch": torch.__version__, "matmul_before": yard, "matmul_after": after,
              "resnet18": rows}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(matmul.line(yard))
    for r in rows:
        for t in (k for k in r if k.startswith("threads=")):
            s = r[t]
            print(f"resnet18 keep {r['keep_ratio']:g} ({r['kept_weights']} kept weights, "
                  f"{r['entries']} entries, {r['fingerprint_bytes']} B of fingerprint in a "
                  f"{r['ticket_bytes']} B ticket), {t}: fingerprint {s['fingerprint_s'] * 1e3:.1f} ms, "
                  f"save_ticket {s['save_ticket_s'] * 1e3:.0f} ms, load_ticket {s['load_ticket_s'] * 1e3:.0f} ms")
    print("after: " + matmul.line(after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
