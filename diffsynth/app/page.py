"""The gradio page (`build_app`): the layout of the controls and results, wired to the `Jobs`. gradio is imported
only when the page is built."""
from __future__ import annotations

from typing import Optional

from ..animate.run import error_line
from ..animate.settings import DEFAULT_PROMPT, TINY
from .controls import CACHES, DEFAULT_THRESHOLDS, RESOLUTIONS, AppConfig, settings_from_controls
from .jobs import Jobs, find_pose_folders
from .progress import ProgressReporter


def build_app(config: AppConfig, jobs: Optional[Jobs] = None):
    """The gradio Blocks of the page (not launched). `jobs` defaults to a `Jobs(config)` holding its own models."""
    import gradio as gr  # noqa: PLC0415

    jobs = jobs or Jobs(config)

    def run(action: str, photo, driving, pose_folder, resolution, steps, cfg, cache, threshold, fast, seed, prompt,
            progress):
        bar = ProgressReporter(lambda fraction, text: progress(fraction, desc=text))
        try:
            settings = settings_from_controls(config, resolution, steps, cfg, cache, threshold, fast, seed, prompt)
            if action == "preview":
                if pose_folder:
                    raise ValueError("the preview aligns a driving video; a pose folder is already aligned")
                return jobs.preview(photo, driving, settings, bar)
            return jobs.generate(photo, driving, settings, bar, pose_folder=pose_folder or None)
        except Exception as error:  # noqa: BLE001 - every failure is one line on the page
            raise gr.Error(error_line(error), print_exception=False) from error

    def on_preview(photo, driving, pose_folder, *controls, progress=gr.Progress()):
        job = run("preview", photo, driving, pose_folder, *controls, progress)
        return str(job.preview), "\n".join(job.lines)

    def on_generate(photo, driving, pose_folder, *controls, progress=gr.Progress()):
        job = run("generate", photo, driving, pose_folder, *controls, progress)
        return str(job.video), str(job.comparison), [str(job.video), str(job.comparison)], "\n".join(job.lines)

    with gr.Blocks(title="UniAnimate-DiT") as app:
        gr.Markdown("# UniAnimate-DiT: animate a photo\nA photo of a person + a driving video -> a video of that "
                    f"person doing the motion. Models: `{config.models}`"
                    + (" (the tiny demo model, trained on synthetic mannequins: a smoke test, not an animation of "
                       "people)" if config.models == TINY else "")
                    + ". Jobs run one at a time; others wait in the queue.")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(label="Photo of the person", type="filepath", sources=["upload"],
                                 height=260, elem_id="photo")
                driving = gr.Video(label="Driving video", sources=["upload"], height=260, elem_id="driving")
                with gr.Row():
                    pose_folder = gr.Dropdown(
                        label=f"...or an existing pose folder (under {config.pose_search_root})",
                        choices=[""] + find_pose_folders(config.pose_search_root), value="", elem_id="pose_folder")
                    refresh = gr.Button("Refresh list", size="sm")
            with gr.Column():
                with gr.Row():
                    resolution = gr.Dropdown(label="Resolution (area; shape follows the photo)",
                                             choices=list(dict.fromkeys([config.resolution, *RESOLUTIONS])),
                                             value=config.resolution, allow_custom_value=True)
                    steps = gr.Number(label="Steps", value=config.steps, precision=0, minimum=1, elem_id="steps")
                    cfg = gr.Number(label="Guidance (cfg)", value=1.5, minimum=1, step=0.1)
                with gr.Row():
                    cache = gr.Radio(label="Step cache", choices=list(CACHES), value="none")
                    threshold = gr.Number(label="Cache threshold", value=0.2, minimum=0, step=0.01)
                with gr.Row():
                    fast = gr.Checkbox(label="Fast (4 steps; needs a step-distillation LoRA, --lora)")
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
                prompt = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT)
                with gr.Row():
                    preview_button = gr.Button("Preview poses", elem_id="preview")
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Row():
            preview = gr.Video(label="Aligned poses [driving + raw pose | photo + aligned pose]", height=300,
                               elem_id="preview_video")
            video = gr.Video(label="Result", height=300, elem_id="result_video")
            comparison = gr.Video(label="[reference | pose | generated]", height=300, elem_id="comparison_video")
        downloads = gr.File(label="Downloads", file_count="multiple")
        info = gr.Textbox(label="Details", lines=5, interactive=False, elem_id="info")

        controls = [photo, driving, pose_folder, resolution, steps, cfg, cache, threshold, fast, seed, prompt]
        preview_button.click(on_preview, controls, [preview, info])
        generate_button.click(on_generate, controls, [video, comparison, downloads, info])
        cache.change(lambda c: DEFAULT_THRESHOLDS.get(c, 0.2), cache, threshold)
        refresh.click(lambda: gr.Dropdown(choices=[""] + find_pose_folders(config.pose_search_root)), None,
                      pose_folder)
    app.queue(default_concurrency_limit=1)
    return app
