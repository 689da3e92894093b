"""`make bench`: where the time and the memory go, written to bench/results.json,
docs/bench_latency.png and the figures section of BENCHMARKS.md.

    python -m bench.run                 # everything (a few minutes)
    python -m bench.run --reps 10       # quicker, noisier

Each measurement runs in a fresh process (as a Lambda container would), several times
for the cold start; nothing else should run on the machine meanwhile.  Never part of
`make test`: timings are figures to read, not assertions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.json"
CHART = ROOT / "docs" / "bench_latency.png"
DOC = ROOT / "BENCHMARKS.md"
START, END = "<!-- figures: written by `make bench` (bench/run.py); do not edit by hand -->", "<!-- end of figures -->"
FER_QUOTED_MS = 34.0  # issue #5: the `fer` package, 640x480 one face, warm, on this machine
FER_VENV_PYTHON = ROOT / ".venv-fer" / "bin" / "python"  # made by `make fer-venv`


def child_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"PYTHONPATH": f"{ROOT / 'function'}{os.pathsep}{ROOT}",
                "MODEL_DIR": env.get("MODEL_DIR", str(ROOT / "layers" / "model")),
                "AWS_DEFAULT_REGION": "ap-northeast-2", "AWS_EC2_METADATA_DISABLED": "true",
                })
    env.update(extra)
    return env


def run_child(module: str, *args: str, python: str = sys.executable, **env) -> tuple[dict, float]:
    t0 = time.perf_counter()
    done = subprocess.run([python, "-m", module, *args], env=child_env(**env), cwd=ROOT,
                          capture_output=True, text=True)
    wall = (time.perf_counter() - t0) * 1000
    if done.returncode != 0:
        sys.exit(f"{module} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def median_of(runs: list):
    """Runs of the same measurement, merged: the median of every number, the first of
    anything else (counts, flags)."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: median_of([r[k] for r in runs]) for k in first}
    if isinstance(first, float):
        value = statistics.median(runs)
        return round(value, 2) if abs(value) >= 0.1 else float(f"{value:.3g}")
    return first


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    import cv2
    import onnxruntime
    import torch
    return {"cpu": model, "cpus_usable": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "opencv": cv2.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d")}


def cold_starts(n: int) -> dict:
    runs = [run_child("bench.init") for _ in range(n)]
    return {"n": n, "process_wall_ms": median_of([wall for _, wall in runs]), **median_of([r for r, _ in runs])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=30, help="warm repetitions per figure")
    p.add_argument("--runs", type=int, default=3, help="fresh warm processes; each figure is their median")
    p.add_argument("--cold", type=int, default=5, help="fresh processes for the cold start")
    p.add_argument("--fer-python", help="an interpreter that can import `fer` (default: .venv-fer's, if made)")
    p.add_argument("--no-write", action="store_true", help="print only; leave results.json and BENCHMARKS.md")
    p.add_argument("--sizes-only", action="store_true",
                   help="measure the installed sizes only; the other figures are kept from results.json")
    p.add_argument("--fallback-only", action="store_true",
                   help="measure the share of photos that would reach Rekognition only (bench/fallback.py); "
                        "the other figures are kept from results.json")
    args = p.parse_args(argv)
    from bench.sizes import sizes
    if args.sizes_only or args.fallback_only:
        results = json.loads(RESULTS.read_text())
        if args.sizes_only:
            results["sizes"] = sizes()
        if args.fallback_only:
            results["fallback_share"] = run_child("bench.fallback")[0]
        write(results, args.no_write)
        return 0

    print("cold starts ...", file=sys.stderr)
    results = {"machine": machine(), "reps": args.reps, "runs": args.runs, "cold_start": cold_starts(args.cold)}
    # Ours and fer take turns, process by process, so that a drift in the host's speed
    # during the run touches both alike.
    fer_python = args.fer_python or (str(FER_VENV_PYTHON) if FER_VENV_PYTHON.exists() else None)
    if not fer_python:
        print("`fer` not measured: no --fer-python and no .venv-fer (make fer-venv)", file=sys.stderr)
    warm, fer = [], []
    for i in range(1, args.runs + 1):
        print(f"run {i}/{args.runs}: warm requests, stages, variants, the prototype ...", file=sys.stderr)
        warm.append(run_child("bench.warm", "--reps", str(args.reps))[0])
        if fer_python:
            print(f"run {i}/{args.runs}: the `fer` package ({fer_python}) ...", file=sys.stderr)
            fer.append(run_child("bench.fer_peer", "--reps", str(args.reps), python=fer_python,
                                 TF_CPP_MIN_LOG_LEVEL="3")[0])
    results.update(warm=median_of(warm), fer=median_of(fer) if fer else None)
    results["sizes"] = sizes()
    print("the share of development photos that would reach Rekognition ...", file=sys.stderr)
    results["fallback_share"] = run_child("bench.fallback")[0]
    results["before"] = before(json.loads(RESULTS.read_text())) if RESULTS.exists() else None
    write(results, args.no_write)
    return 0


def before(previous: dict) -> dict:
    """What the previous run (the results.json this run replaces) measured, per photo,
    for the before/after table."""
    w, c = previous["warm"], previous["cold_start"]
    return {"date": previous["machine"]["date"], "init_ms": c["init_ms"], "peak_rss_mb": w["peak_rss_mb"],
            "photos": {n: {"p50": e["p50"], "p95": e["p95"], "detect": w["stages"][n]["detect"],
                           "faces": w["stages"][n]["faces"]} for n, e in w["end_to_end"].items()}}


def write(results: dict, print_only: bool) -> None:
    """Print the figures; unless ``print_only``, write results.json, the chart and BENCHMARKS.md's figures."""
    table = report(results)
    print(table)
    if print_only:
        return
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    chart(results, CHART)
    text = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    DOC.write_text(head + START + "\n" + table + "\n" + END + rest.split(END, 1)[1])
    print(f"wrote {RESULTS.relative_to(ROOT)}, {CHART.relative_to(ROOT)}, {DOC.name}", file=sys.stderr)


MEMORY_MB = 1769  # template.yaml's MemorySize, chosen from the cost table (bench/cost.py)


def targets(r: dict) -> list[tuple[str, str, str, bool]]:
    w = r["warm"]
    e2e = w["end_to_end"]["640x480"]["p50"]
    st = w["stages"]["640x480"]
    core = st["detect"] + st["classify_batched"]
    fer = r["fer"]["photos"]["640x480"]["from_bytes"]["p50"] if r.get("fer") else None
    fer_ms, fer_how = ((fer, "measured in the same run, from the JPEG bytes") if fer
                       else (FER_QUOTED_MS, "quoted in issue #5; `fer` not measured"))
    proto = w["prototype"]["latency"]["640x480"]["p50"]
    init = r["cold_start"]["init_ms"]
    rss = w["peak_rss_mb"]
    shipped = next(v for k, v in w["model_variants"].items() if "(shipped)" in k and k.endswith("s"))
    return [
        ("the classifier, one face", f"{shipped['batch1']:.1f} ms", "<= 4 ms", shipped["batch1"] <= 4),
        ("the classifier, ten faces", f"{shipped['batch10']:.1f} ms", "<= 25 ms", shipped["batch10"] <= 25),
        ("640x480, one face, warm, default detector", f"{e2e:.1f} ms", "<= 15 ms", e2e <= 15),
        ("... faster than `fer`", f"{e2e:.1f} ms vs {fer_ms:.1f} ms ({fer_how})", "< fer", e2e < fer_ms),
        ("... at most 1.3x detection + one forward pass", f"{e2e:.1f} / ({st['detect']:.1f} + {st['classify_batched']:.1f}) = {e2e / core:.2f}x",
         "<= 1.3x", e2e / core <= 1.3),
        ("... at least 6x faster than the prototype's path", f"{proto:.0f} / {e2e:.1f} ms = {proto / e2e:.1f}x", ">= 6x", proto / e2e >= 6),
        ("init (imports + loading)", f"{init:.0f} ms", "<= 600 ms", init <= 600),
        ("peak RSS of a warm process", f"{rss:.0f} MB", "<= 400 MB", rss <= 400),
    ]


def report(r: dict) -> str:
    m, w, c, s = r["machine"], r["warm"], r["cold_start"], r["sizes"]
    names = list(w["end_to_end"])
    lines = [f"Measured {m['date']} on {m['cpu']} ({m['cpus_usable']} CPUs usable), "
             f"Python {m['python']}, OpenCV {m['opencv']} and onnxruntime {m.get('onnxruntime', '-')} (the runtime; "
             f"torch {m['torch']} only for the comparisons); the classifier's graph {w.get('precision', 'fp32')}; "
             f"threads: OpenCV {w['threads']['cv2']}, onnxruntime {w['threads'].get('onnxruntime', '-')} "
             "(from `os.sched_getaffinity`). "
             f"Warm figures: {r['reps']} timed calls after 3 unmeasured ones in each of {r['runs']} fresh processes, "
             f"the median of the {r['runs']} processes' figures; cold start: median of {c['n']} fresh processes. "
             "Timings on this shared 2-core machine vary by 10-30 % from one run to the next.",
             "", "### Targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {g} | {'yes' if ok else '**no**'} |" for a, b, g, ok in targets(r)]
    lines += ["", "### Warm requests through the handler (FALLBACK_MODE=off)", "",
              "| photo | faces | p50 ms | p95 ms | prototype's path p50 ms | ratio |",
              "|---|---|---|---|---|---|"]
    for n in names:
        e, p = w["end_to_end"][n], w["prototype"]["latency"][n]
        unanswered = " (it finds no face)" if w["stages"][n]["faces"] and not p.get("faces", 1) else ""
        lines.append(f"| {n} | {w['stages'][n]['faces']} | {e['p50']:.1f} | {e['p95']:.1f} | "
                     f"{p['p50']:.0f} | {p['p50'] / e['p50']:.1f}x{unanswered} |")
    lines += before_after(r)
    rl = w["prototype"]["reload_per_request"]
    lines += fer_section(r.get("fer"), w["end_to_end"], w["stages"])
    lines += ["", f"The prototype's path reloads the fp32 weights ({rl['load_weights']:.0f} ms) and the cascade "
              f"({rl['load_cascade']:.0f} ms) on every request and runs the cascade on the full-size image.",
              "", "### Stages (p50 ms)", "",
              "| photo | decode | decode, every pixel | BGR + grey | detect | crop | classify, one batch "
              "| classify, one face at a time | draw + JPEG (annotate) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        st = w["stages"][n]
        lines.append(f"| {n} | {st['decode']:.1f} | {st['decode_every_pixel']:.1f} | {st['colour']:.1f} | {st['detect']:.1f} | "
                     f"{st['crop']:.2f} | "
                     f"{st.get('classify_batched', 0):.1f} | {st.get('classify_one_at_a_time', 0):.1f} | "
                     f"{st['annotate']:.1f} |")
    lines += ["", "### Detection settings (p50 ms, faces found)", "", "| detector | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for label, row in w["detection_variants"].items():
        lines.append(f"| {label} | " + " | ".join(f"{row[n]['ms']:.1f} ({row[n]['faces']})" for n in names) + " |")
    lines += ["", "### The classifier by engine and precision (p50 ms; logits against eager fp32 torch on 10 random faces)", "",
              "| engine, graph, threads | one face | 3 faces | 10 faces | max abs diff | same top-1 |",
              "|---|---|---|---|---|---|"]
    for label, v in w["model_variants"].items():
        lines.append(f"| {label} | {v['batch1']:.1f} | {v['batch3']:.1f} | {v['batch10']:.1f} | "
                     f"{v['max_abs_diff']:.1e} | {v['agree_top1_10']:.0%} |")
    if w.get("session_variants"):
        lines += ["", "### onnxruntime's session options (int8 graph; p50 ms)", "",
                  "| options | one face | 10 faces | whole 640x480 request |", "|---|---|---|---|"]
        for label, v in w["session_variants"].items():
            lines.append(f"| {label} | {v['batch1']:.1f} | {v['batch10']:.1f} | {v['request_640x480']:.1f} |")
    if w.get("end_to_end_one_thread"):
        lines += ["", "### Warm requests on one thread (OpenCV and onnxruntime; what 1,769 MB or less gives)", "",
                  "| photo | p50 ms, one thread | p50 ms, every CPU | speed-up |", "|---|---|---|---|"]
        for n, e in w["end_to_end_one_thread"].items():
            both = w["end_to_end"][n]["p50"]
            lines.append(f"| {n} | {e['p50']:.1f} | {both:.1f} | {e['p50'] / both:.2f}x |")
    lines += floor_section(w["network_floor"])
    lines += cost_section(w, MEMORY_MB)
    lines += bulk_section(w, MEMORY_MB, r.get("fallback_share"))
    imp = c["imports_ms"]
    lines += ["", "### Cold start (init phase, ms)", "", "| " + " | ".join(imp) + " | handler module (settings, model, detector, Powertools) | init in all | process wall |",
              "|" + "---|" * (len(imp) + 3),
              "| " + " | ".join(f"{v:.0f}" for v in imp.values()) + f" | {c['handler_module_ms']:.0f} | {c['init_ms']:.0f} | {c['process_wall_ms']:.0f} |",
              "", f"Inside the handler module: loading the model and its first forward pass {c['load_model_ms']:.0f} ms, the face detector "
              f"{c['load_detector_ms']:.0f} ms. boto3 is not imported at init: its {c['boto3_import_deferred_ms']:.0f} ms "
              f"are paid by the first request that needs Rekognition. Resident memory after init {c['rss_after_init_mb']:.0f} MB; "
              f"peak of the warm process after all the requests above {w['peak_rss_mb']:.0f} MB.",
              "", f"### Installed size of the runtime's dependencies (Python {s['python']} here)", "",
              f"In all {s['installed_mb']:.0f} MB installed, {s['image_mb']:.0f} MB after `function/trim_site_packages.py` "
              f"(what the image holds); the model (both ONNX graphs and the manifest) {s['model_mb']:.1f} MB. No torch: "
              "the network runs through onnxruntime.", "",
              "| distribution | version | installed MB | in the image MB |", "|---|---|---|---|"]
    for d in s["distributions"]:
        if d["installed_mb"] >= 1:
            lines.append(f"| {d['name']} | {d['version']} | {d['installed_mb']:.1f} | {d['image_mb']:.1f} |")
    lines += ["", "Largest files (MB): " + ", ".join(f"`{k}` {v:.0f}" for k, v in s["largest_files_mb"].items()) + "."]
    return "\n".join(lines)


def floor_section(f: dict) -> list[str]:
    """How close the classifier is to this CPU's limit, by two measures of the limit."""
    if "precisions" not in f:  # a results.json from before this section
        return []
    p = f["precisions"]
    lines = ["", "### How close to this CPU's limit", "",
             f"One face is {f['gflop_per_face']:.2f} GFLOP (multiply-adds counted twice; direct convolution's arithmetic). "
             f"Batches of 10 on {f['threads']} threads:", "",
             "| | ms per face | GOP/s | floor GOP/s, same threads | ratio |", "|---|---|---|---|---|"]
    blas = f.get("numpy_openblas", {})
    floors = {  # precision -> (result key, how it was measured); the first is the graph's own engine
        "int8": [("onnxruntime_matmulinteger_u8s8_gops", "2048x2048 uint8 x int8 MatMulInteger, onnxruntime"),
                 ("torch_int_mm_s8s8_gops", "2048x2048 int8 x int8, oneDNN through `torch._int_mm`")],
        "fp32": [("onnxruntime_matmul_fp32_gops", "2048x2048 fp32 MatMul, onnxruntime"),
                 ("numpy_matmul_fp32_gops", f"2048x2048 fp32, numpy's OpenBLAS {blas.get('version')}, kernel "
                                            f"{blas.get('architecture')}, OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset "
                                            "for this measurement only")],
    }
    for precision, measures in floors.items():
        graph = p[precision]
        for i, (key, how) in enumerate(m for m in measures if m[0] in f):
            head = (f"{precision} graph (onnxruntime) | {graph['ms_per_face_batch10']:.2f} | {graph['gops']:.0f}" if i == 0
                    else f"{precision} graph, second measure of the floor | |")
            lines.append(f"| {head} | {f[key]:.0f} ({how}) | {graph['gops'] / f[key]:.2f} |")
    return lines


def cost_section(w: dict, chosen_mb: int) -> list[str]:
    from bench.cost import section
    return section(w, chosen_mb)


def bulk_section(w: dict, chosen_mb: int, share: dict | None) -> list[str]:
    from bench.cost import bulk_section as section
    from local.queue import queue_settings
    return section(w, chosen_mb, queue_settings()["batch_size"], share)


def before_after(r: dict) -> list[str]:
    """This run beside the previous one (the results.json it replaced)."""
    b = r.get("before")
    if not b:
        return []
    w = r["warm"]
    lines = ["", f"### Before (the previous run, {b['date']}) and after (this run)", "",
             "| photo | faces found before / after | p50 ms before / after | p95 ms before / after "
             "| detection alone ms before / after |", "|---|---|---|---|---|"]
    for n, e in w["end_to_end"].items():
        old = b["photos"].get(n)
        st = w["stages"][n]
        if old:
            lines.append(f"| {n} | {old['faces']} / {st['faces']} | {old['p50']:.1f} / {e['p50']:.1f} | "
                         f"{old['p95']:.1f} / {e['p95']:.1f} | {old['detect']:.1f} / {st['detect']:.1f} |")
        else:
            lines.append(f"| {n} | - / {st['faces']} | - / {e['p50']:.1f} | - / {e['p95']:.1f} | - / {st['detect']:.1f} |")
    return lines + ["", f"Init {b['init_ms']:.0f} ms before, {r['cold_start']['init_ms']:.0f} ms after; "
                        f"peak RSS {b['peak_rss_mb']:.0f} MB before, {w['peak_rss_mb']:.0f} MB after."]


def fer_section(fer: dict | None, ours: dict, found: dict) -> list[str]:
    if not fer:
        return ["", "The `fer` package was not measured in this run (`make fer-venv`, then `make bench`)."]
    lines = ["", f"### The peer: `fer` {fer['version']} on the same photos (p50 ms, OpenCV {fer['opencv']}, "
             f"{fer['cv2_threads']} threads)", "",
             "| photo | faces in it | found by fer | found by ours | fer, from the JPEG bytes | ours, through the handler | ours / fer |",
             "|---|---|---|---|---|---|---|"]
    for n, f in fer["photos"].items():
        mine = ours[n]["p50"]
        # fer answering nothing where there is a face is no speed to compare with
        ratio = f"{mine / f['from_bytes']['p50']:.2f}" if f["faces"] or not f["faces_in_photo"] else "fer: no answer"
        lines.append(f"| {n} | {f['faces_in_photo']} | {f['faces']} | {found[n]['faces']} | {f['from_bytes']['p50']:.1f} | {mine:.1f} | "
                     f"{ratio} |")
    f = fer["photos"]["640x480"]
    return lines + ["", f"On the 640x480 photo, fer given decoded pixels takes {f['detect_emotions']['p50']:.1f} ms, "
                        f"{f['find_faces']['p50']:.1f} ms of it its face detection (the cascade on the full-size "
                        "image, scale step 1.1, faces of 50 px or more)."]


def chart(r: dict, path: Path) -> None:
    """Horizontal stacked bars: p50 of each photo, by stage."""
    from PIL import Image, ImageDraw, ImageFont
    w = r["warm"]
    names = list(w["end_to_end"])
    parts = [("decode", (107, 174, 214)), ("detect", (49, 130, 189)), ("classify", (230, 85, 13)),
             ("the rest (handler, JSON, crops)", (189, 189, 189))]
    rows = []
    for n in names:
        st = w["stages"][n]
        d, det, cls = st["decode"] + st["colour"], st["detect"], st.get("classify_batched", 0.0)
        rows.append((n, [d, det, cls, max(0.0, w["end_to_end"][n]["p50"] - d - det - cls)], w["end_to_end"][n]["p50"]))
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:
        font = ImageFont.load_default()
    width, left, bar, gap, top = 900, 150, 34, 22, 60
    height = top + len(rows) * (bar + gap) + 110
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 15), "Warm request latency by stage, p50 ms (FALLBACK_MODE=off)", fill="black", font=font)
    scale = (width - left - 90) / max(sum(v) for _, v, _ in rows)
    for i, (name, values, total) in enumerate(rows):
        y = top + i * (bar + gap)
        draw.text((10, y + 8), name, fill="black", font=font)
        x = left
        for (label, colour), v in zip(parts, values):
            draw.rectangle([x, y, x + v * scale, y + bar], fill=colour)
            x += v * scale
        draw.text((x + 6, y + 8), f"{total:.0f} ms", fill="black", font=font)
    y = top + len(rows) * (bar + gap) + 10
    x = left
    for label, colour in parts:
        draw.rectangle([x, y, x + 14, y + 14], fill=colour)
        draw.text((x + 20, y - 1), label, fill="black", font=font)
        x += 40 + draw.textlength(label, font=font)
    proto = ", ".join(f"{n} {w['prototype']['latency'][n]['p50']:.0f}" for n in names)
    draw.text((left, y + 26), "Stages timed on their own; the number is the whole request's p50.",
              fill="black", font=font)
    draw.text((left, y + 48), "The prototype's path on the same photos, p50 ms:", fill="black", font=font)
    draw.text((left, y + 70), proto, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)


if __name__ == "__main__":
    raise SystemExit(main())
