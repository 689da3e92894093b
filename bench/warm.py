"""Warm figures, in one process that is set up as a Lambda container is (the handler
module imported once): end-to-end handler latency per photo, the stages, the model
variants, and then the prototype's per-request path on the same photos.
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
from emotion.faces import crop_face  # noqa: E402
from emotion.images import decode  # noqa: E402
from emotion.model import available_cpus, load_model  # noqa: E402
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


def model_variants(reps: int) -> dict:
    """One face and a batch of 3: the shipped ONNX graph through OpenCV (Winograd
    convolutions, OpenCV's default) and without Winograd, against eager fp32 torch (the
    runtime before), each with all the CPUs and with one thread."""
    import torch
    from training.network import load_network

    eager = load_network(pipeline.settings.model_dir)
    served = pipeline.model
    plain = load_model(pipeline.settings.model_dir)
    plain.net.enableWinograd(False)
    faces1 = [np.full((48, 48), 128, np.uint8)]
    faces3 = [np.random.default_rng(i).integers(0, 255, (48, 48), dtype=np.uint8) for i in range(3)]
    x1, x3 = eager.preprocess(faces1), eager.preprocess(faces3)
    threads = available_cpus()
    out = {}
    with torch.inference_mode():
        ref = eager.net(x3).numpy()
        for n in sorted({threads, 1}, reverse=True):
            cv2.setNumThreads(n)
            torch.set_num_threads(n)
            suffix = f", {n} thread{'s' * (n > 1)}"
            for label, model in (("OpenCV DNN, ONNX graph, Winograd (shipped)", served),
                                 ("OpenCV DNN, ONNX graph, no Winograd", plain)):
                out[label + suffix] = {"batch1": median(lambda: model.logits(faces1), reps),
                                       "batch3": median(lambda: model.logits(faces3), reps),
                                       "max_abs_diff": float(np.abs(model.logits(faces3) - ref).max())}
            out["torch 2.13 eager fp32, channels_last (the runtime before)" + suffix] = {
                "batch1": median(lambda: eager.net(x1), reps), "batch3": median(lambda: eager.net(x3), reps),
                "max_abs_diff": 0.0}
    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)
    return out


def network_floor(reps: int) -> dict:
    """How close one face's forward pass is to what this CPU does in fp32: the shipped
    network in GFLOP/s of its convolutions, beside a large fp32 matrix product on the
    same number of threads (torch's, on OpenBLAS-class kernels)."""
    import torch
    from training.network import load_network

    net = load_network(pipeline.settings.model_dir).net
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, args, _: shapes.__setitem__(m, args[0].shape)) for m in convs]
    with torch.inference_mode():
        net(torch.zeros(1, 1, 48, 48))
        for h in hooks:
            h.remove()
        flop = sum(2 * m.weight.numel() * shapes[m][2] * shapes[m][3] for m in convs)
        face = [np.full((48, 48), 128, np.uint8)]
        network_ms = median(lambda: pipeline.model.logits(face), reps)
        torch.set_num_threads(available_cpus())
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        matmul_ms = median(lambda: a @ b, max(5, reps // 3))
    return {"convolutions": len(convs), "gflop": round(flop / 1e9, 2), "network_ms": network_ms,
            "network_gflops": round(flop / network_ms / 1e6, 1),
            "matmul_2048_gflops": round(2 * 2048 ** 3 / matmul_ms / 1e6, 1)}


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
    result = {"threads": {"cv2": cv2.getNumThreads(), "cpus": available_cpus()},
              "end_to_end": end_to_end(images, args.reps)}
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    assert "torch" not in sys.modules, "the warm requests must run without torch, as in the image"
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
