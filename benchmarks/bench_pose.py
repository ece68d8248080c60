"""Pose pipeline throughput: align + draw alone, and end to end (stand-in ONNX models; MediaPipe if installed).

    .venv/bin/python benchmarks/bench_pose.py     # align + draw, DWPose path with stand-ins, and MediaPipe

Prints a table and updates benchmarks/results/bench_pose.json (entries measured by this run replace older ones, so
running it from both environments fills in every row). Target: align + draw >= 300 frames/s on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))   # the ONNX stand-ins live with the tests

import standins  # noqa: E402
from diffsynth.pose import draw_pose, run_align_pose  # noqa: E402
from diffsynth.pose.retarget import apply_retargeting, fit_retargeting  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "bench_pose.json"


def _driving_poses(n: int):
    rng = np.random.default_rng(0)
    poses = []
    for i in range(n):
        pose = standins.synthetic_pose(box=(150.0, 40.0, 360.0, 620.0), width=640, height=720)
        pose.body += rng.normal(0, 0.01, pose.body.shape) + (0.05 * np.sin(i / 10), 0)
        pose.hands += rng.normal(0, 0.003, pose.hands.shape)
        poses.append(pose)
    return poses


def bench_align_draw(frames: int, repeats: int = 3) -> dict:
    reference = standins.synthetic_pose(box=(60.0, 80.0, 330.0, 700.0))
    poses = _driving_poses(frames)
    retargeting = fit_retargeting(reference, poses[0])
    best = {}
    for _ in range(repeats):
        start = time.perf_counter()
        for pose in poses:
            draw_pose(apply_retargeting(pose, retargeting))
        align_draw = time.perf_counter() - start
        start = time.perf_counter()
        for pose in poses:
            cv2.imencode(".jpg", draw_pose(apply_retargeting(pose, retargeting)), [cv2.IMWRITE_JPEG_QUALITY, 95])
        with_jpeg = time.perf_counter() - start
        best["align+draw"] = min(best.get("align+draw", 1e9), align_draw)
        best["align+draw+jpeg"] = min(best.get("align+draw+jpeg", 1e9), with_jpeg)
    return {name: {"frames": frames, "seconds": s, "fps": frames / s, "size": "512x768"} for name, s in best.items()}


def _run(ref, source, out, **kwargs) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_align_pose(ref, source, out, progress=False, **kwargs)
    return {"frames": summary.frames, "seconds": summary.seconds, "fps": summary.frames / summary.seconds}


def bench_end_to_end_standins(frames: int, work: Path) -> dict:
    det = standins.build_detector(work / "det.onnx", [((160.0, 40.0, 400.0, 600.0), 0.9, 0, 0.95)])
    pose = standins.build_pose_model(work / "pose.onnx")
    frame = np.full((720, 480, 3), 40, np.uint8)
    frame[80:640, 220:420] = 230
    cv2.imwrite(str(work / "ref.png"), frame)
    video = work / "drive.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30, (480, 720))
    for i in range(frames):
        writer.write(np.roll(frame, i % 40, axis=1))
    writer.release()
    result = _run(work / "ref.png", video, work / "out_standins", det_model=det, pose_model=pose)
    return {**result, "size": "480x720 video", "note": "stand-in ONNX models: measures everything but the networks"}


def bench_end_to_end_mediapipe(frames: int, work: Path) -> dict | None:
    if importlib.util.find_spec("mediapipe") is None:
        return None
    from skimage import data

    bgr = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    cv2.imwrite(str(work / "astronaut.png"), bgr)
    folder = work / "mp_frames"
    folder.mkdir()
    for i in range(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), np.roll(bgr, 2 * i, axis=1))
    result = _run(work / "astronaut.png", folder, work / "out_mediapipe", backend="mediapipe")
    return {**result, "size": "512x512 images", "note": "MediaPipe Holistic, model_complexity=1, CPU"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=600, help="frames for align + draw")
    parser.add_argument("--e2e_frames", type=int, default=120, help="frames for the stand-in end-to-end run")
    parser.add_argument("--mediapipe_frames", type=int, default=30)
    args = parser.parse_args()

    entries = bench_align_draw(args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        entries["end-to-end dwpose (stand-ins)"] = bench_end_to_end_standins(args.e2e_frames, Path(tmp))
        mediapipe = bench_end_to_end_mediapipe(args.mediapipe_frames, Path(tmp))
    if mediapipe is not None:
        entries["end-to-end mediapipe"] = mediapipe
    environment = {"python": sys.executable, "numpy": np.__version__, "opencv": cv2.__version__,
                   "cpus": os.cpu_count(), "machine": platform.machine()}
    for entry in entries.values():
        entry["environment"] = environment

    print(f"{'benchmark':32s} {'frames':>7s} {'seconds':>8s} {'fps':>8s}")
    for name, entry in entries.items():
        print(f"{name:32s} {entry['frames']:7d} {entry['seconds']:8.2f} {entry['fps']:8.1f}")
    if mediapipe is None:
        print("end-to-end mediapipe: skipped (mediapipe not installed; run from .venv-mediapipe)")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    document.setdefault("entries", {}).update(entries)
    document["target"] = "align+draw >= 300 fps on 2 CPU cores at 512x768"
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
