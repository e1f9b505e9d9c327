"""``kmnrt bench``: argument errors, and the markdown/plot built from a results JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kmnrt.benchmarks.report import render_markdown, terminal_summary, write_report
from kmnrt.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_from_json_writes_markdown_and_plot(bench_document: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "results" / "cpu-test-2026-01-01.json"
    results.parent.mkdir()
    results.write_text(json.dumps(bench_document))
    assert main(["bench", "--report", str(results)]) == 0
    markdown, plot = results.with_suffix(".md"), results.with_suffix(".png")
    assert plot.read_bytes()[:8] == PNG_MAGIC and plot.stat().st_size > 10_000
    text = markdown.read_text()
    assert "![latency vs T and per-stage time](cpu-test-2026-01-01.png)" in text
    assert "kmnrt bench (test)" in text
    table = [line for line in text.splitlines() if line.startswith("| onnxruntime | 2 | 3 |")]
    assert len(table) >= 2  # the latency table, the per-stage speed-up table (and the read-memory table)
    out = capsys.readouterr().out
    assert "wrote" in out and terminal_summary(bench_document) in out  # the tables a run prints, printed again


def test_markdown_lists_every_result_and_the_tables(bench_document: dict) -> None:
    text = render_markdown(bench_document)
    latency = text.split("## Latency per frame")[1].split("##")[0]
    rows = [line for line in latency.splitlines() if line.startswith("| ") and not line.startswith("| backend")]
    assert len(rows) == len(bench_document["results"]) == 12
    assert "## Memory read peak" in text and "## Throughput" in text
    lengths = text.split("## Cost per frame along one video of 60 frames")[1].split("##")[0]
    assert len([line for line in lengths.splitlines() if line.startswith("| ") and "–" in line]) == 10
    assert bench_document["environment"]["cpu"] in text


def test_terminal_summary_is_aligned_columns_of_every_result(bench_document: dict) -> None:
    """What `kmnrt bench` prints: narrow enough not to wrap, one row per result, the JSON's numbers; then the
    throughput of --sessions, one row per measurement."""
    lines, throughput = terminal_summary(bench_document).split("\n\n")
    lines, throughput = lines.splitlines(), throughput.splitlines()
    assert lines[0].split() == ["backend", "N", "T", "median", "ms", "p90", "ms", "fps", "speed-up", "read", "ms",
                                "peak", "MB"]
    assert set(lines[1]) == {"-", " "} and len(lines) == 2 + len(bench_document["results"])
    assert max(len(line) for line in lines) <= 80 and not any("|" in line for line in lines)
    result = next(r for r in bench_document["results"] if r["backend"] == "onnxruntime" and r["objects"] == 2
                  and r["memory"] == 3)
    row = next(line.split() for line in lines[2:] if line.split()[:3] == ["onnxruntime", "2", "3"])
    median = result["end_to_end"]["median_ms"]
    assert row[3] == (f"{median:.1f}" if median >= 10 else f"{median:.2f}") and row[6].endswith("×")
    assert throughput[0] == "throughput, K sessions on one device:" and set(throughput[2]) == {"-", " "}
    assert len(throughput) == 3 + len(bench_document["throughput"]) and max(map(len, throughput)) <= 80
    first = bench_document["throughput"][0]
    assert throughput[3].split()[:5] == [first["backend"], str(first["objects"]), str(first["memory"]),
                                         str(first["sessions"]), f"{first['batched']['fps']:.1f}"]


def test_an_interrupted_run_says_so_in_the_terminal_too(bench_document: dict) -> None:
    assert "incomplete run" not in terminal_summary(bench_document)
    assert terminal_summary(dict(bench_document, complete=False)).endswith(
        "incomplete run: it was interrupted, and only the configurations above were measured")


def test_report_without_baseline_says_so(bench_document: dict, tmp_path: Path) -> None:
    document = dict(bench_document)
    document["results"] = [dict(r, speedup=None) for r in bench_document["results"] if r["backend"] != "reference"]
    assert "speed-ups need `reference`" in render_markdown(document)
    [plot] = write_report(document, None, tmp_path / "only.png")
    assert plot.read_bytes()[:8] == PNG_MAGIC


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize(("extra", "message"), [
    (["--memory", "1,x"], "--memory: 'x' is not a whole number"),
    (["--memory", "9"], "max_memory 8"),
    (["--objects", "5"], "max_objects 4"),
    (["--objects", "0"], "N must be between 1"),
    (["--backends", "reference,foo"], "unknown backend 'foo'"),
    (["--backends", "tensorrt"], "tensorrt cannot run"),
    (["--backends", "torch,torch"], "--backends names torch twice; give each backend once"),
    (["--frames", "0"], "--frames 0"),
    (["--sessions", "0"], "--sessions 0"),
    (["--throughput-at", "1", "--sessions", "1,2"], "give N,T"),
    (["--throughput-at", "1,1"], "--throughput-at sets where the throughput run of --sessions measures"),
    (["--device", "tpu"], "--device tpu"),
    (["--input", "/nonexistent/video.mp4"], "/nonexistent/video.mp4 does not exist"),
    (["--plot", "."], "--plot . is a folder; give a file name"),
    pytest.param(["--device", "cuda"], "--device cuda: no CUDA device is available to PyTorch here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")),
])
def test_bad_arguments_are_clear_errors(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                        extra: list[str], message: str) -> None:
    out = tmp_path / "out.json"
    base = ["bench", "--bundle", str(tiny_bundle), "--memory", "1", "--objects", "1", "--json", str(out)]
    err = _error(capsys, [*base, *extra])
    assert message in err
    assert not out.exists()


def test_missing_bundle_and_bad_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "--bundle is required" in _error(capsys, ["bench"])
    assert "does not exist" in _error(capsys, ["bench", "--bundle", str(tmp_path / "nope")])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something-else"}))
    assert "not a kmnrt benchmark result" in _error(capsys, ["bench", "--report", str(other)])
    assert "do not exist" in _error(capsys, ["bench", "--report", str(tmp_path / "missing.json")])
    (tmp_path / "bare.json").write_text('{"schema": "kmnrt-bench-v1"}')
    assert "is an incomplete kmnrt benchmark result (no environment, bundle" in _error(
        capsys, ["bench", "--report", str(tmp_path / "bare.json")])


def test_default_sizes_fit_the_bundle_and_the_command_spells_them_out(tiny_bundle: Path) -> None:
    from kmnrt.benchmarks.cli import options_from_args
    from kmnrt.cli import build_parser

    options = options_from_args(build_parser().parse_args(["bench", "--bundle", str(tiny_bundle)]))
    assert options.memory == (1, 5, 8) and options.objects == (1, 3)  # the tiny bundle: max_memory 8, 4 objects
    assert "--memory 1,5,8 --objects 1,3" in options.command
    given = build_parser().parse_args(["bench", "--bundle", str(tiny_bundle), "--memory", "2", "--objects", "4"])
    assert (options_from_args(given).memory, options_from_args(given).objects) == ((2,), (4,))
    twice = build_parser().parse_args(["bench", "--bundle", str(tiny_bundle), "--memory", "3,1,3", "--objects", "2,2"])
    assert (options_from_args(twice).memory, options_from_args(twice).objects) == ((1, 3), (2,))


def test_default_output_never_replaces_an_earlier_run_of_the_day(tmp_path: Path, monkeypatch) -> None:
    """Without --json the results go to benchmarks/results/<device>-<date>.json: a second run of the day (from
    the repository root: over committed results) takes the next free name instead."""
    import argparse
    from datetime import date

    from kmnrt.benchmarks.cli import default_paths

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(json=None, markdown=None, plot=None)
    stem = Path("benchmarks") / "results" / f"cpu-x-{date.today().isoformat()}"
    assert default_paths(args, "cpu-x") == tuple(stem.with_suffix(s) for s in (".json", ".md", ".png"))
    stem.parent.mkdir(parents=True)
    stem.with_suffix(".md").write_text("an earlier run")
    assert default_paths(args, "cpu-x")[0] == stem.with_name(stem.name + "-2.json")
    stem.with_name(stem.name + "-2.json").write_text("{}")
    assert default_paths(args, "cpu-x")[2] == stem.with_name(stem.name + "-3.png")


@pytest.mark.parametrize("results", sorted((Path(__file__).parents[2] / "benchmarks" / "results").glob("*.json")),
                         ids=lambda path: path.stem)
def test_committed_reports_are_what_their_json_renders(results: Path) -> None:
    """The committed markdown is regenerated from its JSON (`kmnrt bench --report`), never edited by hand and never
    left behind the report's code."""
    from kmnrt.benchmarks.report import load_results

    expected = render_markdown(load_results(results), results.with_suffix(".png").name)
    assert results.with_suffix(".md").read_text() == expected, f"run: kmnrt bench --report {results}"
