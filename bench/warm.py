"""Warm figures, in one process that is set up as a Lambda container is (the handler
module imported once): end-to-end handler latency per photo (with every CPU, then one
thread), onnxruntime's session options, the stages, the classifier by engine and
precision, its floor, and then the prototype's per-request path on the same photos.
Prints one JSON object.  Run by bench.run."""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

os.environ["FALLBACK_MODE"] = "off"  # no-face photos measure the local path only

# The handler first, as in Lambda (the init phase: settings, model, detector).  torch is
# imported only after the warm requests and their peak memory, by the comparisons that
# need it (the eager network, the prototype's path): the Lambda never imports it.
from handlers import api  # noqa: E402
from handlers.runtime import pipeline  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.photos import photos  # noqa: E402
from bench.timing import median, summary, timings  # noqa: E402
from emotion.annotate import annotate  # noqa: E402
from emotion.faces import crop_face  # noqa: E402
from emotion.images import decode  # noqa: E402
from emotion.model import available_cpus, load_model, normalise  # noqa: E402
from emotion.pipeline import detector_for  # noqa: E402
from local.events import LambdaContext, http_api_event  # noqa: E402


def end_to_end(images: dict, reps: int) -> dict:
    out = {}
    for name, photo in images.items():
        event = http_api_event("POST", "/emotion", {"content-type": "image/jpeg"}, photo["data"])
        status = json.loads(api.lambda_handler(event, LambdaContext())["body"])
        found = len(status["faces"])
        assert photo.get("min_found", photo["faces"]) <= found <= photo["faces"], (name, status["faces"])
        out[name] = summary(timings(lambda: api.lambda_handler(event, LambdaContext()), reps))
    return out


def one_thread(images: dict, reps: int) -> dict:
    """The warm requests again with one thread for OpenCV and one for the classifier:
    what a Lambda function gets below 1,769 MB (one vCPU or less), for the cost table."""
    served, threads = pipeline.model, cv2.getNumThreads()
    cv2.setNumThreads(1)
    pipeline.model = load_model(pipeline.settings.model_dir, served.precision, threads=1)
    try:
        return end_to_end({n: p for n, p in images.items() if n in ("640x480", "group", "crowd")}, reps)
    finally:
        pipeline.model = served
        cv2.setNumThreads(threads)


def stages(images: dict, reps: int) -> dict:
    s = pipeline.settings
    model = pipeline.model
    detector = pipeline.detector
    out = {}
    for name, photo in images.items():
        data = photo["data"]
        image = pipeline.decode(data)
        bgr = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2BGR)
        grey = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2GRAY)
        faces = detector.detect(bgr, grey)
        crops = [crop_face(grey, f, 48, detector.framing) for f in faces]
        row = {
            "decode": median(lambda: pipeline.decode(data), reps),
            "decode_every_pixel": median(lambda: decode(data, s.max_image_bytes, s.max_image_pixels), reps),
            "colour": median(lambda: (cv2.cvtColor(image.rgb, cv2.COLOR_RGB2BGR),
                                      cv2.cvtColor(image.rgb, cv2.COLOR_RGB2GRAY)), reps),
            "detect": median(lambda: detector.detect(bgr, grey), reps),
            "crop": median(lambda: [crop_face(grey, f, 48, detector.framing) for f in faces], reps),
            "faces": len(faces),
        }
        answer = pipeline.analyse_image(image)
        row["annotate"] = median(lambda: annotate(image, answer["faces"]), reps)  # ?annotate=1, S3 ANNOTATE
        if crops:
            row["classify_batched"] = median(lambda: model.predict(crops), reps)
            row["classify_one_at_a_time"] = median(lambda: [model.predict([c]) for c in crops], reps)
        out[name] = row
    return out


def detection_variants(images: dict, reps: int) -> dict:
    """The detector as shipped against its faster settings and the Haar cascade (their
    recall on the development photos: `make eval-faces`, BENCHMARKS.md)."""
    def detector(**overrides):
        return detector_for(dataclasses.replace(pipeline.settings, **overrides))

    variants = {
        "yunet, 1280 px (shipped)": pipeline.detector,
        "yunet, 1024 px": detector(detect_max_side=1024),
        "yunet, 640 px": detector(detect_max_side=640),
        "haar, 1024 px (DETECTOR=haar)": detector(detector="haar"),
    }
    out = {}
    for label, det in variants.items():
        row = {}
        for name, photo in images.items():
            image = decode(photo["data"], pipeline.settings.max_image_bytes, pipeline.settings.max_image_pixels,
                           min_side=det.max_side)
            bgr = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2BGR)
            grey = cv2.cvtColor(image.rgb, cv2.COLOR_RGB2GRAY)
            row[name] = {"ms": median(lambda: det.detect(bgr, grey), max(5, reps // 3)),
                         "faces": len(det.detect(bgr, grey))}
        out[label] = row
    return out


BATCHES = (1, 3, 10)


def _faces(n: int) -> list[np.ndarray]:
    return [np.random.default_rng(i).integers(0, 255, (48, 48), dtype=np.uint8) for i in range(n)]


class OpenCVNet:
    """An ONNX graph through OpenCV's DNN module (the classifier's engine before
    onnxruntime), with the service's normalisation."""

    def __init__(self, path: Path, spec: dict):
        self.net, self.spec = cv2.dnn.readNetFromONNX(str(path)), spec

    def logits(self, faces):
        self.net.setInput(normalise(np.stack(faces), self.spec))
        return self.net.forward()


def model_variants(reps: int) -> dict:
    """The classifier by engine and precision, at batches of 1, 3 and 10 faces, with
    every available CPU and with one thread: onnxruntime int8 (shipped: one pass; and
    flip-averaged, each face with its mirror image in one batch) and fp32, the
    same two graphs through OpenCV's DNN module (fp32 was the engine before), and eager
    fp32 torch (the runtime before that)."""
    import torch
    from training.network import load_network

    model_dir = pipeline.settings.model_dir
    eager = load_network(model_dir)
    m = eager.manifest
    faces = {n: _faces(n) for n in BATCHES}
    with torch.inference_mode():
        x10 = eager.preprocess(faces[10])
        ref = eager.net(x10).numpy()
        ref_flip = ((eager.net(x10) + eager.net(torch.flip(x10, dims=[3]))) / 2).numpy()
    threads = available_cpus()
    out = {}
    for n in sorted({threads, 1}, reverse=True):
        cv2.setNumThreads(n)
        torch.set_num_threads(n)
        engines = {
            "onnxruntime, int8 (shipped)": load_model(model_dir, "int8", threads=n, flip=False),
            "onnxruntime, int8, flip-averaged (MODEL_FLIP_AVERAGE=true)": load_model(model_dir, "int8", threads=n,
                                                                                flip=True),
            "onnxruntime, fp32": load_model(model_dir, "fp32", threads=n, flip=False),
            "OpenCV DNN, fp32 (the engine before)": OpenCVNet(model_dir / m["onnx"]["file"], m["input"]),
            "OpenCV DNN, int8": OpenCVNet(model_dir / m["onnx_int8"]["file"], m["input"]),
            "torch 2.13 eager fp32 (the runtime before that)": None,
        }
        for label, engine in engines.items():
            if engine is None:
                with torch.inference_mode():
                    xs = {b: eager.preprocess(faces[b]) for b in BATCHES}
                    row = {f"batch{b}": median(lambda: eager.net(xs[b]), reps) for b in BATCHES}
                row["max_abs_diff"] = 0.0
                row["agree_top1_10"] = 1.0
            else:
                row = {f"batch{b}": median(lambda: engine.logits(faces[b]), reps) for b in BATCHES}
                got = engine.logits(faces[10])
                want = ref_flip if getattr(engine, "flip", False) else ref  # eager, the same views
                row["max_abs_diff"] = float(np.abs(got - want).max())
                row["agree_top1_10"] = float((got.argmax(1) == want.argmax(1)).mean())
            out[f"{label}, {n} thread{'s' * (n > 1)}"] = row
    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)
    return out


def session_variants(images: dict, reps: int) -> dict:
    """onnxruntime's session options (emotion.model.session_options is the shipped set):
    the classifier alone at 1 and 10 faces, and the whole 640x480 request, where the
    session's threads share the CPUs with OpenCV's detector."""
    import onnxruntime as ort
    from emotion import model as model_module

    shipped = model_module.session_options

    def variant(**changes):
        def options(threads):
            o = shipped(threads)
            for key, value in changes.items():
                if key == "spinning":
                    o.add_session_config_entry("session.intra_op.allow_spinning", value)
                else:
                    setattr(o, key, value)
            return o
        return options

    variants = {
        "shipped: all CPUs, sequential, every optimisation, no spinning": shipped,
        "threads spin between runs (onnxruntime's default)": variant(spinning="1"),
        "one thread": lambda threads: shipped(1),
        "parallel execution mode": variant(execution_mode=ort.ExecutionMode.ORT_PARALLEL),
        "no memory arena": variant(enable_cpu_mem_arena=False),
        "basic graph optimisations only": variant(graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
    }
    event = http_api_event("POST", "/emotion", {"content-type": "image/jpeg"}, images["640x480"]["data"])
    faces = {n: _faces(n) for n in (1, 10)}
    served = pipeline.model
    out = {}
    try:
        for label, options in variants.items():
            model_module.session_options = options
            model = load_model(pipeline.settings.model_dir)
            pipeline.model = model
            out[label] = {"batch1": median(lambda: model.logits(faces[1]), reps),
                          "batch10": median(lambda: model.logits(faces[10]), reps),
                          "request_640x480": median(lambda: api.lambda_handler(event, LambdaContext()), reps)}
    finally:
        model_module.session_options = shipped
        pipeline.model = served
    return out


def network_floor(reps: int) -> dict:
    """How close the classifier is to what this CPU does: the network's arithmetic
    (GFLOP of its convolutions and its one matrix product) over its time, per precision,
    beside two floors measured on the same threads: a 2048x2048 fp32 matrix product by
    onnxruntime's own kernels (MatMul) and by numpy's OpenBLAS (in a child process with
    OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset, which this machine sets and which slow
    a current OpenBLAS), and the same product in 8-bit integers by onnxruntime
    (MatMulInteger, uint8 x int8: the int8 graph's kind of kernel) and by oneDNN
    through torch (``torch._int_mm``, int8 x int8)."""
    import subprocess

    import onnxruntime as ort
    from onnx import TensorProto, helper

    from emotion.model import session_options
    from training.network import load_network

    import torch
    net = load_network(pipeline.settings.model_dir).net
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, args, _: shapes.__setitem__(m, args[0].shape)) for m in convs]
    with torch.inference_mode():
        net(torch.zeros(1, 1, 48, 48))
    for h in hooks:
        h.remove()
    flop = sum(2 * m.weight.numel() * shapes[m][2] * shapes[m][3] for m in convs) + 2 * 512 * 7
    threads = available_cpus()
    face10 = _faces(10)
    out = {"gflop_per_face": round(flop / 1e9, 3), "threads": threads, "precisions": {}}
    for precision in ("int8", "fp32"):
        model = load_model(pipeline.settings.model_dir, precision)
        ms = median(lambda: model.logits(face10), reps) / 10
        out["precisions"][precision] = {"ms_per_face_batch10": round(ms, 2), "gops": round(flop / ms / 1e6, 1)}

    size = 2048

    def matmul_gops(kind: str) -> float:
        a_type, b_type, op, out_type = {"fp32": (TensorProto.FLOAT, TensorProto.FLOAT, "MatMul", TensorProto.FLOAT),
                                        "int8": (TensorProto.UINT8, TensorProto.INT8, "MatMulInteger", TensorProto.INT32)}[kind]
        graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], "mm",
                                  [helper.make_tensor_value_info("a", a_type, [size, size]),
                                   helper.make_tensor_value_info("b", b_type, [size, size])],
                                  [helper.make_tensor_value_info("c", out_type, [size, size])])
        session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                       session_options(threads), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = ({"a": rng.standard_normal((size, size), np.float32), "b": rng.standard_normal((size, size), np.float32)}
                 if kind == "fp32" else
                 {"a": rng.integers(0, 255, (size, size), dtype=np.uint8), "b": rng.integers(-127, 127, (size, size), dtype=np.int8)})
        return 2 * size ** 3 / median(lambda: session.run(None, feeds), max(5, reps // 4)) / 1e6

    out["onnxruntime_matmul_fp32_gops"] = round(matmul_gops("fp32"), 1)
    out["onnxruntime_matmulinteger_u8s8_gops"] = round(matmul_gops("int8"), 1)
    # a second engine's int8 product (oneDNN, through torch), on the same threads
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    a8, b8 = (torch.randint(-127, 127, (size, size), dtype=torch.int8, generator=generator) for _ in range(2))
    out["torch_int_mm_s8s8_gops"] = round(2 * size ** 3 / median(lambda: torch._int_mm(a8, b8), max(5, reps // 4)) / 1e6, 1)
    code = ("import json, time, numpy as np, threadpoolctl\n"
            "a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32); b = a.T.copy()\n"
            "ts = []\n"
            "for _ in range(12):\n"
            "    t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)\n"
            "info = [i for i in threadpoolctl.threadpool_info() if i['internal_api'] == 'openblas']\n"
            "print(json.dumps({'gops': 2 * 2048 ** 3 / sorted(ts)[6] / 1e9, 'openblas': info}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode == 0:
        numpy_floor = json.loads(done.stdout)
        blas = numpy_floor["openblas"][0] if numpy_floor["openblas"] else {}
        out["numpy_matmul_fp32_gops"] = round(numpy_floor["gops"], 1)
        out["numpy_openblas"] = {k: blas.get(k) for k in ("version", "architecture", "num_threads")}
    else:
        out["numpy_matmul_fp32_error"] = done.stderr[-300:]
    return out


class Prototype:
    """The Flask prototype's request path: the fp32 weights and the cascade loaded on
    every request, detection on the full-size image, each face classified alone."""

    def __init__(self, weights: Path):
        self.weights = weights

    def __call__(self, data: bytes) -> list[str]:
        import torch
        from PIL import Image

        from training.network import ResNet
        net = ResNet()
        net.load_state_dict(torch.load(self.weights, map_location="cpu"))
        net.eval()
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        labels = []
        for (x, y, w, h) in cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24)):
            face = cv2.resize(grey[y:y + h, x:x + w], (48, 48)).astype(np.float32) / 255.0
            with torch.no_grad():
                labels.append(int(net(torch.from_numpy(face)[None, None]).argmax()))
        return labels


def prototype(images: dict, reps: int) -> dict:
    import torch
    from training.network import ResNet, load_network

    eager = load_network(pipeline.settings.model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.pth"  # the prototype's fp32 state_dict (43 MB)
        torch.save(eager.net.to(memory_format=torch.contiguous_format).state_dict(), weights)
        proto = Prototype(weights)
        out = {}
        for name, photo in images.items():
            out[name] = {**summary(timings(lambda: proto(photo["data"]), reps, warmup=1)),
                         "faces": len(proto(photo["data"]))}
        t = {"load_weights": median(lambda: ResNet().load_state_dict(torch.load(weights, map_location="cpu")), reps),
             "load_cascade": median(lambda: cv2.CascadeClassifier(
                 cv2.data.haarcascades + "haarcascade_frontalface_default.xml"), reps)}
    return {"latency": out, "reload_per_request": t}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=40)
    args = p.parse_args(argv)
    images = photos()
    result = {"threads": {"cv2": cv2.getNumThreads(), "cpus": available_cpus(),
                          "onnxruntime": pipeline.model.session.get_session_options().intra_op_num_threads},
              "precision": pipeline.model.precision,
              "end_to_end": end_to_end(images, args.reps)}
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    assert "torch" not in sys.modules, "the warm requests must run without torch, as in the image"
    result["end_to_end_one_thread"] = one_thread(images, args.reps)
    result["session_variants"] = session_variants(images, args.reps)
    result["stages"] = stages(images, args.reps)
    result["detection_variants"] = detection_variants(images, args.reps)
    result["model_variants"] = model_variants(args.reps)
    result["network_floor"] = network_floor(args.reps)
    result["prototype"] = prototype(images, max(5, args.reps // 4))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
