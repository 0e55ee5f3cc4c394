"""Chaos soak: jobs submitted all the time while random faults hit the farm;
then everything is healed and the farm is checked for anything lost.

``python bench/chaos.py --hosts 8 --minutes 10`` builds a netlab bed
(network-namespace hosts on one bridge; needs root, exits 77 with the reason
where namespaces are not allowed) and starts one ``rendernode daemon`` per
host with the default timings; they find each other by multicast mDNS.

During the soak, submitter threads send jobs to random hosts (builtin frames
of ``examples/spheres.json`` at 64x36, command frames, some with ``--asset``
files), and every 2-5 s a fault picked at random hits the farm: SIGKILL of a
host's daemon and its renders (the server half the time) and a restart 1-5 s
later with the same state dir; SIGSTOP for 3 s; a host cut off for 5 s; a
partition into two halves for 10 s; 5 % packet loss on a host for 10 s.  Two
hosts (``--spared``) are never killed, so that some daemons live through the
whole soak (at a kill every 17 s few would); every other fault hits them.  At
the end every fault is healed and the bench waits for the farm to settle,
then prints (see ``tests/soak``):

- faults injected, by kind; jobs submitted and acknowledged;
- acknowledged jobs DONE on every replica (lost), every frame at its output
  on the submitting host, builtin frames byte-identical to the same frame
  rendered alone (frames checked, mismatches);
- the replicas' job books identical (digest) and the seconds from the last
  heal to identical, beside the CPU the daemons used and the machine's load;
- frames rendered more than once and their share;
- RSS and open fds of each daemon that lived through the whole soak, sampled
  every 10 s: the growth over the second half, beside the jobs every book
  gained meanwhile (the soak deletes no job, and a job's document stays in
  memory; ``--jobs-for 1`` stops submitting after a minute, leaving the
  faults alone to show a leak);
- last line: ``lost: N``.

Exit status 0 when nothing was lost, no frame is missing or wrong and the
books are identical; 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the tests package: not installed
    sys.path.append(str(ROOT))

from tests.netlab import Bed, netns_unavailable_reason  # noqa: E402
from tests.soak import Settings, Soak  # noqa: E402

EXIT_SKIPPED = 77


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=30.0, help="jobs submitted per minute, farm-wide")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    parser.add_argument("--spared", type=int, default=2, help="hosts never killed (their growth is measured)")
    parser.add_argument("--jobs-for", type=float, default=None, metavar="MINUTES",
                        help="submit jobs for the first MINUTES only (growth under faults alone)")
    parser.add_argument("--settle", type=float, default=300.0,
                        help="seconds after the last heal the farm has to settle")
    parser.add_argument("--keep", action="store_true", help="keep the bed's folder (daemon logs, frames)")
    parser.add_argument("--faults", action="store_true", help="print each fault as it happens")
    args = parser.parse_args()
    reason = netns_unavailable_reason()
    if reason is not None:
        print(f"chaos bench skipped: {reason}", file=sys.stderr)
        return EXIT_SKIPPED
    seed = args.seed if args.seed is not None else int(time.time())
    settings = Settings(hosts=args.hosts, minutes=args.minutes, rate=args.rate, seed=seed,
                        settle_timeout=args.settle, spared=args.spared, jobs_for=args.jobs_for)
    with Bed(args.hosts, keep_dir=args.keep) as bed:
        soak = Soak(bed, settings)
        if args.faults:
            soak.faults.on_event = lambda t, what: print(f"  {t - soak.t0:7.1f} s  {what}", flush=True)
        try:
            outcome = soak.run()
        finally:
            if args.keep:
                soak.dump(bed.dir / "soak.json")
                print(f"bed folder kept: {bed.dir} (soak.json: samples, faults, jobs)")
    good = (outcome.lost == 0 and outcome.missing == 0 and outcome.mismatches == 0
            and outcome.identical_after is not None)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
