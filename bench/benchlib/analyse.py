"""Job records -> per-job stage times, throughput, the overlap of consecutive jobs' stages, and the kill
test's verdict. Times are wall-clock seconds."""

from __future__ import annotations

import statistics

from benchlib.jobs import JobRecord, KillTest
from benchlib.report import fmt
from synchuman.v1 import reconstruction_pb2

#: Bytes per voxel in the stored "voxels.bin" (x, y, z as little-endian uint16, as on the wire).
VOXEL_BYTES = 6


def analyse(records: list[JobRecord]) -> dict:
    """Per-job stage times, throughput and stage-1(k+1) / stage-2(k) overlap from the job records."""
    jobs = []
    for r in records:
        spans = {s: r.span(s) for s in ("preprocess", "stage1", "stage2")}
        final = r.final
        row = {
            "job": r.index,
            "id": r.job_id,
            "state": reconstruction_pb2.JobState.Name(final.state) if final else f"ERROR {r.error}",
            "attempts": dict(final.attempts) if final else {},
            "latency_s": (r.finished - r.submitted) if r.finished else None,
            "voxels": next(
                (a.blob.size_bytes // VOXEL_BYTES for a in final.artifacts if a.blob.name == "voxels.bin"),
                None,
            )
            if final
            else None,
        }
        previous_end = r.submitted
        for stage, span in spans.items():
            row[f"{stage}_s"] = (span[1] - span[0]) if span else None
            row[f"{stage}_wait_s"] = (span[0] - previous_end) if span else None
            row[f"{stage}_span"] = span
            previous_end = span[1] if span else previous_end
        jobs.append(row)
    overlaps = []
    for a, b in zip(jobs, jobs[1:], strict=False):
        s2, s1 = a["stage2_span"], b["stage1_span"]
        if not (s2 and s1):
            continue
        seconds = max(0.0, min(s2[1], s1[1]) - max(s2[0], s1[0]))
        overlaps.append(
            {
                "pair": f"{b['job']}/{a['job']}",
                "seconds": seconds,
                "fraction_of_stage1": seconds / max(1e-9, s1[1] - s1[0]),
            }
        )
    # Pipelining as a whole: how much of stage 1's busy time had stage 2 busy too (on any job).
    stage1_busy = [j["stage1_span"] for j in jobs if j["stage1_span"]]
    stage2_busy = [j["stage2_span"] for j in jobs if j["stage2_span"]]
    concurrent = sum(max(0.0, min(a[1], b[1]) - max(a[0], b[0])) for a in stage1_busy for b in stage2_busy)
    stage1_total = sum(b - a for a, b in stage1_busy)
    finishes = sorted(r.finished for r in records if r.finished)
    first_submit = min(r.submitted for r in records)
    summary = {
        "jobs_succeeded": sum(j["state"] == "JOB_STATE_SUCCEEDED" for j in jobs),
        "jobs": len(jobs),
        "wall_s": (finishes[-1] - first_submit) if finishes else None,
        "throughput_jobs_per_min": (60 * len(finishes) / (finishes[-1] - first_submit)) if finishes else None,
        "steady_jobs_per_min": (60 * (len(finishes) - 1) / (finishes[-1] - finishes[0]))
        if len(finishes) > 1 and finishes[-1] > finishes[0]
        else None,
        "overlap_s_total": sum(o["seconds"] for o in overlaps),
        "overlap_fraction_mean": statistics.fmean(o["fraction_of_stage1"] for o in overlaps)
        if overlaps
        else 0.0,
        "stage1_busy_s": stage1_total,
        "stage1_concurrent_with_stage2_s": concurrent,
    }
    return {"jobs": jobs, "overlaps": overlaps, "summary": summary}


def stage1_in_burst(result: dict) -> dict:
    """Stage-1 seconds in the jobs run: job 1's (stage 2 idle) and the median of those whose stage-1 run had
    stage 2 working (on any job) for at least half of it."""
    stage2_spans = [j["stage2_span"] for j in result["jobs"] if j["stage2_span"]]
    overlapped = []
    for j in result["jobs"][1:]:
        span = j["stage1_span"]
        if not span or span[1] <= span[0]:
            continue
        busy = sum(max(0.0, min(span[1], b[1]) - max(span[0], b[0])) for b in stage2_spans)
        if busy >= 0.5 * (span[1] - span[0]):
            overlapped.append(j["stage1_s"])
    return {
        "first_s": result["jobs"][0]["stage1_s"] if result["jobs"] else None,
        "overlapped_median_s": statistics.median(overlapped) if overlapped else None,
        "overlapped_jobs": len(overlapped),
    }


def kill_verdict(kill: KillTest, records: list[JobRecord]) -> dict:
    """Did the kill happen during stage 2 of the chosen job, and did every job survive without re-running
    stage 1 of the killed job?"""
    record = records[kill.job_index - 1]
    attempts = dict(record.final.attempts) if record.final else {}
    s1_again = (
        kill.killed_at is not None
        and kill.killed_at > 0
        and any(k == "progress" and s == "stage1" and t > kill.killed_at for t, k, s, _ in record.events)
    )
    all_ok = all(
        r.final is not None and r.final.state == reconstruction_pb2.JOB_STATE_SUCCEEDED for r in records
    )
    ok = (
        bool(kill.killed_pid)
        and all_ok
        and attempts.get("multiview", 0) == 1
        and not s1_again
        and (attempts.get("reconstruction", 0) >= 2)
    )
    verdict = (
        f"{'PASS' if ok else 'FAIL'}: stage2 pid {kill.killed_pid or '-'} killed in job {kill.job_index}; "
        f"SERVING again after {fmt(kill.serving_again_s)} s; job {kill.job_index} attempts "
        f"{attempts or '-'}; stage 1 re-run: {'yes' if s1_again else 'no'}; all jobs succeeded: {all_ok}"
    )
    return {"ok": ok, "verdict": verdict, "serving_again_s": kill.serving_again_s, "attempts": attempts}
