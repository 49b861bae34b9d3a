"""The deployment benches' markdown: the per-job table with overlap, summary, memory and kill test
(:func:`markdown`) and the stage-1 priority comparison (:func:`priority_markdown`)."""

from __future__ import annotations

import statistics

GIB = 1024**3


def fmt(value: float | None, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals, or ``-`` for None."""
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(result: dict, meta: dict) -> str:
    """The report: setup line, per-job table, overlap table, summary, memory and the kill test."""
    lines = [
        f"Setup: {meta['setup']}",
        "",
        "| job | state | latency s | preprocess s | wait s | stage 1 s | wait s | stage 2 s | voxels "
        "| attempts |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for j in result["jobs"]:
        attempts = " ".join(f"{k}={v}" for k, v in sorted(j["attempts"].items()))
        lines.append(
            f"| {j['job']} | {j['state'].removeprefix('JOB_STATE_')} | {fmt(j['latency_s'])} | "
            f"{fmt(j['preprocess_s'], 2)} | {fmt(j['stage1_wait_s'])} | {fmt(j['stage1_s'])} | "
            f"{fmt(j['stage2_wait_s'])} | {fmt(j['stage2_s'])} | {j['voxels'] or '-'} | {attempts} |"
        )
    times = [j for j in result["jobs"] if j["stage1_s"] is not None and j["stage2_s"] is not None]
    if times:
        lines.append(
            f"| median | | {fmt(statistics.median(j['latency_s'] for j in times if j['latency_s']))} | "
            f"{fmt(statistics.median(j['preprocess_s'] or 0 for j in times), 2)} | | "
            f"{fmt(statistics.median(j['stage1_s'] for j in times))} | | "
            f"{fmt(statistics.median(j['stage2_s'] for j in times))} | | |"
        )
    s = result["summary"]
    concurrent, busy = s["stage1_concurrent_with_stage2_s"], s["stage1_busy_s"]
    lines += [
        "",
        "| overlap stage 1 (job k+1) with stage 2 (job k) | seconds | fraction of that stage 1 |",
        "|---|---|---|",
    ]
    lines += [
        f"| {o['pair']} | {o['seconds']:.1f} | {o['fraction_of_stage1']:.0%} |" for o in result["overlaps"]
    ]
    lines += [
        "",
        "| metric | value |",
        "|---|---|",
        f"| jobs succeeded | {s['jobs_succeeded']} / {s['jobs']} |",
        f"| wall time, first submit -> last finish | {fmt(s['wall_s'])} s |",
        f"| throughput (all jobs) | {fmt(s['throughput_jobs_per_min'], 2)} jobs/min |",
        f"| throughput (steady state, between finishes) | {fmt(s['steady_jobs_per_min'], 2)} jobs/min |",
        f"| overlap stage1(k+1) / stage2(k), total | {s['overlap_s_total']:.1f} s "
        f"(mean {s['overlap_fraction_mean']:.0%} of stage 1) |",
        f"| stage-1 work done while stage 2 worked on any job | {concurrent:.1f} s of {busy:.1f} s "
        f"({concurrent / max(1e-9, busy):.0%}) |",
    ]
    for name, value in sorted(meta["peak_gpu"].items()):
        lines.append(f"| peak memory {name} (nvidia-smi, whole GPU) | {value / GIB:.2f} GiB |")
    for name, value in sorted(meta["peak_process"].items()):
        what = "GPU memory" if meta["gpu"] else "resident memory"
        lines.append(f"| peak {what} {name} | {value / GIB:.2f} GiB |")
    kill = meta.get("kill")
    if kill:
        lines.append(f"| kill test | {kill['verdict']} |")
    return "\n".join(lines) + "\n"


def priority_markdown(modes: dict[str, dict], steps_label: str) -> str:
    """The comparison table: stage-1 seconds and jobs/min without and with stage 2 yielding to stage 1."""
    names = list(modes)

    def row(label: str, cell: object) -> str:
        return f"| {label} | " + " | ".join(cell(modes[n]) for n in names) + " |"  # type: ignore[operator]

    def slower(value: float | None, base: float | None) -> str:
        if value is None or not base:
            return "-"
        return f"{value:.2f} s ({value / base - 1:+.0%})"

    lines = [
        "| one GPU, both stages | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        row(f"lone stage-1 request alone ({steps_label}; direct call, service seconds)",
            lambda m: fmt(m["interference"]["alone_s"], 2) + " s"),
        row("same, while stick-figure stage-2 requests run (**realistic** occupancy, service defaults)",
            lambda m: slower(m["interference"]["during_stage2_s"], m["interference"]["alone_s"])),
        row("jobs run: stage 1 of job 1 (stage 2 idle)", lambda m: fmt(m["burst"]["first_s"], 2) + " s"),
        row("jobs run: median stage 1 of jobs with stage 2 working >= half of it (**random-weight** stage 2)",
            lambda m: slower(m["burst"]["overlapped_median_s"], m["interference"]["alone_s"])
            + f" [{m['burst']['overlapped_jobs']} jobs]"),
        row("jobs run: median stage 2 (random weights)", lambda m: fmt(m["stage2_median_s"]) + " s"),
        row("jobs run: jobs succeeded", lambda m: "{jobs_succeeded} / {jobs}".format(**m["summary"])),
        row("jobs run: wall, first submit -> last finish", lambda m: fmt(m["summary"]["wall_s"]) + " s"),
        row("jobs run: throughput, all jobs / steady state", lambda m: (
            f"{fmt(m['summary']['throughput_jobs_per_min'], 2)} / "
            f"{fmt(m['summary']['steady_jobs_per_min'], 2)} jobs/min")),
        row("services SERVING after", lambda m: fmt(m["startup_s"]) + " s"),
    ]
    return "\n".join(lines) + "\n"
