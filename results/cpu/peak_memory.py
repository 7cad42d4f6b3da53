"""Peak memory of a command: python results/cpu/peak_memory.py -- python eval.py --ckpt=... (Linux /proc).

Runs the command and samples /proc/PID/status of it and its child processes every 10 ms, then prints
one JSON line: peak_anon_mb, the largest RssAnon (heap, tensors, copies: what must not grow with the
number of images), and peak_rss_mb, the kernel's VmHWM (RssAnon + file pages mapped in; the pages of a
memory-mapped dataset read so far count here, although they are page cache the kernel drops under
memory pressure), the status and the seconds. The command's own output goes to stderr.
"""
import json
import subprocess
import sys
import time


def status(pid):
    """{field: kB} of /proc/pid/status for the memory fields, {} once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in fh)
                    if k in ("RssAnon", "VmHWM")}
    except (OSError, ValueError, IndexError):
        return {}


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit(__doc__.strip())
    t0 = time.time()
    proc = subprocess.Popen(argv, stdout=sys.stderr)
    peak_anon = peak_hwm = 0
    while proc.poll() is None:
        pids, anon = [proc.pid], 0
        while pids:
            pid = pids.pop()
            s = status(pid)
            anon += s.get("RssAnon", 0)
            peak_hwm = max(peak_hwm, s.get("VmHWM", 0))
            pids += children(pid)
        peak_anon = max(peak_anon, anon)
        time.sleep(0.01)
    print(json.dumps(dict(peak_anon_mb=round(peak_anon / 1024, 1), peak_rss_mb=round(peak_hwm / 1024, 1),
                          status=proc.returncode, seconds=round(time.time() - t0, 1), command=" ".join(argv))))
    sys.exit(proc.returncode)
