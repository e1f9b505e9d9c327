"""Markdown tables and plots from a benchmark JSON (``kmnrt bench ... --markdown/--plot``, or ``kmnrt bench
--report JSON`` for a JSON written earlier). Only the JSON is read: a report can be rebuilt anywhere."""

from __future__ import annotations

import json
from pathlib import Path

from kmnrt.benchmarks.stats import END_TO_END, STAGES
from kmnrt.benchmarks.suite import SCHEMA
from kmnrt.columns import aligned_columns
from kmnrt.data.atomic import atomic_output
from kmnrt.errors import UserInputError

STAGE_LABELS = {"pre": "pre", "query_encode": "query enc.", "read": "read", "decode": "decode", "post": "post",
                "memorize": "memorize"}
MB = 1024 * 1024


def load_results(path: str | Path) -> dict:
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"benchmark results {path} do not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{path} is not a readable benchmark JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise UserInputError(f"{path} is not a kmnrt benchmark result (expected schema {SCHEMA!r}); "
                             f"write one with `kmnrt bench --json`")
    missing = [key for key in REQUIRED_KEYS if key not in document]
    if missing:  # an edited or truncated file: the tables would fail on their first lookup
        raise UserInputError(f"{path} is an incomplete kmnrt benchmark result (no {', '.join(missing)}); write it "
                             f"again with `kmnrt bench --json`")
    return document


# what every report reads; a run writes them all from its first save on
REQUIRED_KEYS = ("environment", "bundle", "settings", "command", "input", "results", "read_memory", "throughput",
                 "created")


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _mb(value: int | None) -> str:
    if value is None:
        return "–"
    return f"{value / MB:.0f}" if value >= 10 * MB else f"{value / MB:.2g}"  # a small bundle's A is not "0"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def latency_table(document: dict) -> str:
    stages = [s for s in STAGES if any(s in r["stages"] for r in document["results"])]
    head = ["backend", "N", "T", "median ms", "p90 ms", "p99 ms", "fps", "speed-up"]
    head += [f"{STAGE_LABELS[s]} ms" for s in stages] + ["peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in _in_order(document, document["results"]):
        e2e, speedup, peak = r[END_TO_END], r.get("speedup") or {}, _peak_bytes(r)
        row = [r["backend"], r["objects"], r["memory"], _ms(e2e["median_ms"]), _ms(e2e["p90_ms"]),
               _ms(e2e["p99_ms"]), f"{r['fps']:.2f}", _x(speedup.get(END_TO_END))]
        row += [_ms(r["stages"][s]["median_ms"]) if s in r["stages"] else "–" for s in stages] + [_mb(peak)]
        lines.append("| " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines)


def terminal_summary(document: dict) -> str:
    """The latency results as aligned columns for a terminal: end to end, the read, and memory (the report's
    15-column table wraps in any terminal; it stays in the Markdown); then the throughput of ``--sessions``."""
    rows = [("backend", "N", "T", "median ms", "p90 ms", "fps", "speed-up", "read ms", "peak MB")]
    for r in _in_order(document, document["results"]):
        e2e, read = r[END_TO_END], r["stages"].get("read")
        rows.append((r["backend"], str(r["objects"]), str(r["memory"]), _ms(e2e["median_ms"]), _ms(e2e["p90_ms"]),
                     f"{r['fps']:.1f}", _x((r.get("speedup") or {}).get(END_TO_END)),
                     _ms(read["median_ms"] if read else None), _mb(_peak_bytes(r))))
    lines = aligned_columns(rows, right_from=1)
    if document["throughput"]:
        rows = [("backend", "N", "T", "K", "batched fps", "p90 ms", "sequential fps", "p90 ms", "batched ×")]
        rows += [(r["backend"], str(r["objects"]), str(r["memory"]), str(r["sessions"]), f"{r['batched']['fps']:.1f}",
                  _ms(r["batched"]["latency"]["p90_ms"]), f"{r['sequential']['fps']:.1f}",
                  _ms(r["sequential"]["latency"]["p90_ms"]), _x(r["speedup"])) for r in document["throughput"]]
        lines += ["", "throughput, K sessions on one device:", *aligned_columns(rows, right_from=1)]
    if not document.get("complete", True):
        lines += ["", "incomplete run: it was interrupted, and only the configurations above were measured"]
    return "\n".join(lines)


def stage_speedup_table(document: dict) -> str:
    rows = [r for r in document["results"] if r.get("speedup") and r["backend"] != document["settings"]["baseline"]]
    if not rows:
        return "_No baseline in this run: speed-ups need `reference` in --backends._"
    head = ["backend", "N", "T", "end to end", *[STAGE_LABELS[s] for s in STAGES]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in _in_order(document, rows):
        lines.append("| " + " | ".join(map(str, [r["backend"], r["objects"], r["memory"],
                                                 *[_x(r["speedup"].get(k)) for k in (END_TO_END, *STAGES)]])) + " |")
    return "\n".join(lines)


def read_memory_table(document: dict) -> str:
    head = ["backend", "N", "T", "affinity A MB", "read peak MB", "peak / A", "measured by"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in _in_order(document, document["read_memory"]):
        multiple = "–" if r.get("multiple") is None else f"{r['multiple']:.2f}"
        lines.append(f"| {r['backend']} | {r['objects']} | {r['memory']} | {_mb(r['affinity_bytes'])} | "
                     f"{_mb(r.get('peak_bytes'))} | {multiple} | {r['measured_by']} |")
    return "\n".join(lines)


def throughput_table(document: dict) -> str:
    head = ["backend", "N", "T", "sessions K", "batched fps", "batched p50 / p90 / p99 ms", "sequential fps",
            "sequential p50 / p90 / p99 ms", "batched / sequential"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in document["throughput"]:
        b, s = r["batched"], r["sequential"]
        lines.append(f"| {r['backend']} | {r['objects']} | {r['memory']} | {r['sessions']} | {b['fps']:.2f} | "
                     f"{_percentiles(b['latency'])} | {s['fps']:.2f} | {_percentiles(s['latency'])} | "
                     f"{_x(r['speedup'])} |")
    return "\n".join(lines)


def video_length_table(document: dict) -> str:
    """Windows of the long video as rows, backends as columns: median ms per frame and the memory frames T read."""
    runs = sorted(document["video_length"], key=lambda r: _backend_order(document, r))
    head = ["frames"] + [f"{r['backend']} median ms (T)" for r in runs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, window in enumerate(runs[0]["windows"]):
        cells = [f"{window['first_frame']}–{window['last_frame']}"]
        cells += [f"{_ms(r['windows'][i]['median_ms'])} ({r['windows'][i]['memory_frames']})" if i < len(r["windows"])
                  else "–" for r in runs]
        lines.append("| " + " | ".join(cells) + " |")
    rss = [f"`{r['backend']}` {_mb(r['windows'][0]['rss_bytes'])} → {_mb(r['windows'][-1]['rss_bytes'])} MB"
           for r in runs]
    return "\n".join(lines) + "\n\nProcess RSS, first window → last: " + "; ".join(rss) + "."


def _percentiles(summary: dict) -> str:
    return " / ".join(_ms(summary[k]) for k in ("median_ms", "p90_ms", "p99_ms"))


def _in_order(document: dict, records: list[dict]) -> list[dict]:
    """By N, then T, then the backends' order in the command."""
    return sorted(records, key=lambda r: (r["objects"], r["memory"], _backend_order(document, r)))


def _peak_bytes(record: dict) -> int | None:
    memory = record.get("memory_bytes", {})
    return memory.get("device_peak_allocated") if record["device"].startswith("cuda") else memory.get("peak_rss")


def _backend_order(document: dict, record: dict) -> int:
    order = document["settings"]["backends"]
    return order.index(record["backend"]) if record["backend"] in order else len(order)


def render_markdown(document: dict, plot_name: str | None = None) -> str:
    env, bundle, settings = document["environment"], document["bundle"], document["settings"]
    gpu = env.get("gpu")
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    device = (f"{gpu['name']} (driver {gpu.get('driver') or '?'}, CUDA {gpu.get('cuda')}) with " if gpu else "")
    parts = [
        f"# kmnrt benchmark: {env['device_name']}, {document['created'][:10]}", "",
        f"- Device: {device}{env['cpu']}, {env['physical_cores']} physical cores "
        f"({env['logical_cpus']} usable CPUs), {_mb(env.get('memory_bytes'))} MB RAM; {env['platform']}",
        f"- Versions: {versions}",
        f"- Command: `{document['command']}`",
        f"- Bundle: `{bundle['path']}`: config {bundle['config']}, input {bundle['input_size'][0]}×"
        f"{bundle['input_size'][1]}, {bundle['precision']}, read {bundle['read'].get('kind')} "
        f"(σ={bundle['read'].get('sigma')}), weights: {(bundle.get('checkpoint') or {}).get('source', '?')}",
        f"- Frames: {document['input']['source']} ({document['input']['frames_loaded']} frames "
        f"{document['input']['frame_size'][1]}×{document['input']['frame_size'][0]}, replayed back and forth); "
        f"masks: {document['input']['masks']}",
        f"- Timed {settings['frames']} frames per configuration after {settings['warmup']} warm-up frames; "
        f"baseline `{settings['baseline']}`; torch device {settings['device']}; "
        f"{'one fresh process per backend and N' if settings['isolated_processes'] else 'one process for all'}.",
    ]
    for backend, engine in document.get("engines", {}).items():
        parts.append(f"- `{backend}`: {engine}")
    parts += ["", "## Latency per frame (end to end, and median per stage)", "", latency_table(document), "",
              "Speed-up = the baseline's median / this median, same run, same N and T (> 1 is faster).", "",
              "## Speed-up over the baseline per stage", "", stage_speedup_table(document), ""]
    if plot_name:
        parts += [f"![latency vs T and per-stage time]({plot_name})", ""]
    if document["read_memory"]:
        parts += ["## Memory read peak vs the affinity size A = N·T·(h·w)²·4 bytes", "",
                  read_memory_table(document), "",
                  "A peak measured by the RSS high-water mark has a floor of a few MB (allocator pages): for an A "
                  "well under that, as in small bundles, the multiple says nothing about the read.", ""]
    if document["throughput"]:
        parts += ["## Throughput: K concurrent sessions on one device", "", throughput_table(document), "",
                  "Batched: one `step_batch` per round (a frame's latency is the round's time). Sequential: "
                  "`step` per session.", ""]
    if document.get("video_length"):
        parts += [f"## Cost per frame along one video of {document['video_length'][0]['length']} frames", "",
                  video_length_table(document), "",
                  "Memory built as a real video builds it (every `mem_every`-th frame, plus the previous frame): "
                  "the runtime's bank stops at the bundle's max memory and is overwritten in place; the baseline's "
                  "grows with the video, as in STM's evaluation.", ""]
    if not document.get("complete", True):
        parts += ["- **Incomplete run**: the benchmark was interrupted; only the configurations above were measured."]
    parts += [f"- {note}" for note in document.get("notes", [])]
    parts += ["", "Method and how to read the numbers: `docs/benchmarks.md`.", ""]
    return "\n".join(parts)


def render_plot(document: dict, path: str | Path) -> Path:
    """Two panels: median end-to-end latency vs T per backend and N; stacked per-stage medians at the largest T.
    A third with ``--video-length``: median ms per frame along the video per backend."""
    try:
        import matplotlib
    except ImportError:
        raise UserInputError("plots need matplotlib: pip install 'kmn-rt[plots]' (or matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = document["results"]
    if not results:
        raise UserInputError("the benchmark JSON has no latency results to plot")
    backends = [b for b in document["settings"]["backends"] if any(r["backend"] == b for r in results)]
    objects = sorted({r["objects"] for r in results})
    videos = document.get("video_length") or []
    figure, axes = plt.subplots(1, 3 if videos else 2, figsize=(19 if videos else 13, 5))
    left, right = axes[0], axes[1]
    if videos:
        _plot_video_length(axes[2], document, videos)
    for backend in backends:
        for n in objects:
            points = sorted((r["memory"], r[END_TO_END]["median_ms"]) for r in results
                            if r["backend"] == backend and r["objects"] == n)
            left.plot(*zip(*points), marker="o", label=f"{backend}, N={n}")
    left.set_xticks(sorted({r["memory"] for r in results}))
    left.set(xlabel="memory frames T", ylabel="median ms per frame (end to end)", title="Latency vs memory size")
    left.set_ylim(bottom=0)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    top_t = max(r["memory"] for r in results)
    bars = [r for n in objects for b in backends for r in results
            if r["backend"] == b and r["objects"] == n and r["memory"] == top_t]
    bottoms = [0.0] * len(bars)
    for stage in STAGES:
        heights = [r["stages"].get(stage, {}).get("median_ms", 0.0) for r in bars]
        right.bar(range(len(bars)), heights, bottom=bottoms, label=STAGE_LABELS[stage])
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    right.set_xticks(range(len(bars)), [f"{r['backend']}\nN={r['objects']}" for r in bars], fontsize=8)
    right.set(ylabel="median ms per stage", title=f"Per-stage time at T={top_t}")
    right.legend(fontsize=8)
    figure.suptitle(f"{document['environment']['device_name']}: {document['bundle']['config']} "
                    f"{document['bundle']['input_size'][0]}×{document['bundle']['input_size'][1]}")
    figure.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return path


def _plot_video_length(axis, document: dict, videos: list[dict]) -> None:
    for run in sorted(videos, key=lambda r: _backend_order(document, r)):
        centres = [(w["first_frame"] + w["last_frame"]) / 2 for w in run["windows"]]
        axis.plot(centres, [w["median_ms"] for w in run["windows"]], marker="o", label=run["backend"])
    axis.set(xlabel="frame of the video", ylabel="median ms per frame (end to end)",
             title=f"Cost along one video of {videos[0]['length']} frames")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


def write_report(document: dict, markdown: Path | None, plot: Path | None) -> list[Path]:
    """Write the plot (if asked) and the markdown that embeds it; returns the files written."""
    written = []
    if plot:
        written.append(render_plot(document, plot))
    if markdown:
        plot_name = None
        if plot:
            plot_name = Path(plot).resolve().relative_to(Path(markdown).resolve().parent).as_posix() \
                if Path(plot).resolve().is_relative_to(Path(markdown).resolve().parent) else str(plot)
        with atomic_output(markdown) as tmp:
            tmp.write_text(render_markdown(document, plot_name))
        written.append(Path(markdown))
    return written
