"""`edge-agent calibrate intrinsics|mount|check`: camera intrinsics from checkerboard photos, the mount from the
lane markings of road frames, and a projected metre grid over a road image to check the mount by eye."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from edge_agent.commands import config_option

if TYPE_CHECKING:  # numpy, like OpenCV, is imported inside the commands that use it
    import numpy as np

calibrate_app = typer.Typer(help="Camera calibration: intrinsics from a checkerboard, check the mount.",
                            no_args_is_help=True)
out = Console()
err = Console(stderr=True, soft_wrap=True)  # paths in messages stay whole (copy-paste)


@calibrate_app.command("intrinsics")
def intrinsics(
    images: Path = typer.Option(..., "--images", help="Folder of checkerboard photos (jpg/png), one camera"),
    board: str = typer.Option("9x6", "--board", help="Inner corners per row x per column, e.g. 9x6"),
    square_mm: float = typer.Option(25.0, "--square-mm", min=0.1, max=1000,
                                    help="Side of one board square, mm (scales only the board's poses)"),
    output: Path = typer.Option(Path("intrinsics.toml"), "--out",
                                help="Where to write the intrinsics (.toml or .json); point "
                                     "calibration.intrinsics_file at it"),
    fit_k3: bool = typer.Option(False, "--k3", help="Fit the third radial term too (wide-angle lenses, with photos "
                                                     "covering every corner)"),
    force: bool = typer.Option(False, "--force", help="Write the file even when the RMS is above 1 px"),
) -> None:
    """Find the board in every image, run cv2.calibrateCamera, report the reprojection error and what the photos
    could not pin down, write the file."""
    from calibration.checkerboard import calibrate_images, list_images, other_files, parse_board
    from calibration.config import CalibrationError, intrinsics_text
    from calibration.intrinsics_quality import RMS_BAD_PX
    from edge_agent.durable import write_durably

    if output.suffix.lower() not in (".toml", ".json"):  # the format follows the name; cam.yaml got TOML
        raise typer.BadParameter(f"{output}: give a .toml or .json file name", param_hint="'--out'")
    try:
        paths = list_images(images)
        skipped = other_files(images)
        if skipped:
            err.print(f"[yellow]not read[/yellow] {len(skipped)} file(s) that are not .jpg, .png, .bmp or .tif: "
                      f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''} (convert phone HEIC photos to "
                      "JPEG)", highlight=False)
        result = calibrate_images(paths, parse_board(board), square_mm, fit_k3)
    except CalibrationError as exc:
        err.print(f"[red]calibration failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    intr = result.intrinsics
    table = Table(title=f"Intrinsics from {len(result.per_image_px)} of {len(paths)} images")
    table.add_column("key")
    table.add_column("value", justify="right")
    for key, value in (("size", f"{intr.width}x{intr.height}"), ("fx", f"{intr.fx:.2f}"), ("fy", f"{intr.fy:.2f}"),
                       ("cx", f"{intr.cx:.2f}"), ("cy", f"{intr.cy:.2f}"), ("hfov", f"{intr.hfov_deg:.1f} deg"),
                       ("dist", ", ".join(f"{c:.4f}" for c in intr.dist)),
                       ("RMS reprojection error", f"{result.rms_px:.3f} px")):
        table.add_row(key, value)
    out.print(table)
    worst = sorted(result.per_image_px.items(), key=lambda kv: -kv[1])[:3]
    out.print("worst images: " + ", ".join(f"{n} {e:.2f} px" for n, e in worst))
    for name in result.rejected:
        err.print(f"[yellow]skipped[/yellow] {name}", highlight=False)
    for problem in result.problems:
        err.print(f"[yellow]check:[/yellow] {problem}", highlight=False)
    if result.rms_px > RMS_BAD_PX and not force:
        err.print(f"[red]not written:[/red] the RMS is above {RMS_BAD_PX:g} px (--force writes it anyway)")
        raise typer.Exit(1)
    try:
        # In place, a power cut left an empty file: the agent then refused to start (hardening row 28).
        write_durably(output, intrinsics_text(output, intr, result.rms_px, len(result.per_image_px),
                                              result.problems))
    except OSError as exc:
        err.print(f"[red]could not write {output}:[/red] {exc}")
        raise typer.Exit(1) from None
    out.print(f"wrote {output}")


@calibrate_app.command("check")
def check(
    image: Path = typer.Option(..., "--image", help="A road image from the mounted camera"),
    output: Path = typer.Option(Path("grid.png"), "--out", help="Where to write the image with the grid"),
    config: Path | None = config_option(None, "Agent config whose [calibration] to use"),
    max_forward: float = typer.Option(30.0, "--max-forward", min=1, help="Grid reaches this far ahead, metres"),
    half_width: float = typer.Option(5.0, "--half-width", min=0.5, help="Grid reaches this far left/right, metres"),
) -> None:
    """Draw the projected metre grid (forward lines every metre, labels every 5 m) over IMAGE."""
    import cv2

    from calibration import GroundProjector
    from calibration.config import CalibrationError, intrinsics_from_config, mount_from_config
    from calibration.grid import draw_ground_grid
    from edge_agent import config as agent_config

    try:
        cfg = agent_config.load(config) if config else agent_config.AgentConfig()
    except agent_config.ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    from calibration.checkerboard import IMAGE_SUFFIXES

    if output.suffix.lower() not in IMAGE_SUFFIXES:  # OpenCV picks the format by it, and fails without one
        raise typer.BadParameter(f"{output}: give an image file name ({', '.join(sorted(IMAGE_SUFFIXES))})",
                                 param_hint="'--out'")
    frame = cv2.imread(str(image))
    if frame is None:
        err.print(f"[red]{image}: not a readable image[/red]")
        raise typer.Exit(1)
    try:
        intr = intrinsics_from_config(cfg.calibration)
        mismatch = intr.aspect_mismatch(frame.shape[1], frame.shape[0])
        projector = GroundProjector(intr.scaled(frame.shape[1], frame.shape[0]), mount_from_config(cfg.calibration))
    except CalibrationError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if mismatch:
        err.print(f"[yellow]{mismatch}; the grid is stretched[/yellow]", highlight=False)
    if not cv2.imwrite(str(output), draw_ground_grid(frame, projector, max_forward, half_width)):
        err.print(f"[red]could not write {output}[/red]")
        raise typer.Exit(1)
    m = projector.mount
    out.print(f"wrote {output} (height {m.height_m} m, pitch {m.pitch_deg} deg, roll {m.roll_deg} deg, "
              f"yaw {m.yaw_deg} deg, horizon at row {projector.horizon_v():.0f})")


VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".mjpg", ".mjpeg", ".h264"}


def read_frames(paths: list[Path], per_video: int) -> list[tuple[str, np.ndarray]]:
    """(name, image) of every image file, every image in a folder, and PER_VIDEO frames spread over a video."""
    import cv2

    from calibration.checkerboard import IMAGE_SUFFIXES

    frames: list[tuple[str, np.ndarray]] = []
    for path in paths:
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
        for file in files:
            if file.suffix.lower() in VIDEO_SUFFIXES:
                cap = cv2.VideoCapture(str(file))
                count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
                take = min(per_video, count) if count > 0 else per_video
                for k in range(take):
                    cap.set(cv2.CAP_PROP_POS_FRAMES, int((k + 0.5) * count / take))
                    ok, image = cap.read()
                    if ok:
                        frames.append((f"{file.name}#{k}", image))
                cap.release()
                continue
            still = cv2.imread(str(file))
            if still is None:
                err.print(f"[yellow]not read[/yellow] {file}: not an image or video file", highlight=False)
            else:
                frames.append((file.name, still))
    return frames


def grab_frames(source: str, count: int, every_s: float = 0.5) -> list[tuple[str, np.ndarray]]:
    """COUNT frames from a live camera SOURCE, EVERY_S apart (so a drive shows the lane along some road)."""
    import time

    from rich.progress import track

    from edge_agent.camera.capture import open_capture
    from edge_agent.config.camera import CameraConfig

    cap = open_capture(CameraConfig(source=source))
    if not cap.isOpened():
        err.print(f"[red]camera {source} did not open[/red] (no such camera or file, or the running agent "
                  "holds it: stop it first)", highlight=False)
        raise typer.Exit(1)
    frames: list[tuple[str, np.ndarray]] = []
    try:
        for k in track(range(count), description="camera frames", console=err):
            next_at = time.monotonic() + every_s
            ok, image = cap.read()
            if ok and image is not None:
                frames.append((f"camera#{k}", image))
            while time.monotonic() < next_at:
                cap.grab()  # keep the driver's queue fresh: the next read is a frame of now
    finally:
        cap.release()
    return frames


@calibrate_app.command("mount")
def mount(
    images: list[Path] = typer.Option([], "--images", help="Road frames from the mounted camera: image files, "
                                                            "folders of them, or a video; repeat for more"),
    camera: str | None = typer.Option(None, "--camera", help="Or take --frames frames, one every 0.5 s, from this "
                                                              "camera source (as camera.source; stop the agent "
                                                              "first) while driving straight in the lane"),
    config: Path | None = config_option(None, "Agent config whose [calibration] to start from"),
    lane_width: float | None = typer.Option(None, "--lane-width", min=2.0, max=6.0,
                                            help="Width of the lane driven in, metres (between the middles of its "
                                                 "lines): also fits the camera height"),
    per_video: int = typer.Option(30, "--frames", min=1, max=500, help="Frames taken from each video"),
    output: Path = typer.Option(Path("mount.png"), "--out", help="Picture of the markings used and the grid"),
) -> None:
    """Pitch and yaw (and, with --lane-width, the height) from where the lane markings meet: frames of a straight,
    flat road with painted lines, driving in the middle of the lane."""
    import cv2
    from rich.progress import track

    from calibration import GroundProjector
    from calibration.checkerboard import IMAGE_SUFFIXES
    from calibration.config import CalibrationError, intrinsics_from_config, mount_from_config
    from calibration.grid import draw_ground_grid
    from calibration.mount_fit import draw_fit, fit_frame, fit_mount, ideal_view, misplaced_m
    from edge_agent import config as agent_config

    if output.suffix.lower() not in IMAGE_SUFFIXES:
        raise typer.BadParameter(f"{output}: give an image file name", param_hint="'--out'")
    missing = [p for p in images if not p.exists()]
    if missing:
        raise typer.BadParameter(f"{missing[0]}: no such file or folder", param_hint="'--images'")
    if not images and camera is None:
        raise typer.BadParameter("give --images (frames, folders, a video) or --camera", param_hint="'--images'")
    try:
        cfg = agent_config.load(config) if config else agent_config.AgentConfig()
        intr, configured = intrinsics_from_config(cfg.calibration), mount_from_config(cfg.calibration)
    except (agent_config.ConfigError, CalibrationError) as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from None
    frames = read_frames(images, per_video) + (grab_frames(camera, per_video) if camera is not None else [])
    if not frames:
        err.print("[red]no frames to fit:[/red] give road images or a video")
        raise typer.Exit(1)
    from collections import Counter

    h, w = Counter(img.shape[:2] for _, img in frames).most_common(1)[0][0]  # one odd file must not decide
    same = [(name, img) for name, img in frames if img.shape[:2] == (h, w)]
    if len(same) < len(frames):
        err.print(f"[yellow]left out[/yellow] {len(frames) - len(same)} frame(s) of another size than {w}x{h}")
    mismatch = intr.aspect_mismatch(w, h)
    if mismatch:
        err.print(f"[yellow]{mismatch}[/yellow]", highlight=False)
    if cfg.calibration.intrinsics_file:
        from calibration.config import intrinsics_file_problems

        for problem in intrinsics_file_problems(cfg.calibration.intrinsics_file):
            err.print(f"[yellow]the intrinsics file is doubtful:[/yellow] {problem}: the pitch fitted here is only "
                      "as right as its focal length", highlight=False)
    intr = intr.scaled(w, h)
    views = [(name, *ideal_view(img, intr)) for name, img in same]  # lane lines are straight without distortion
    intr = views[0][2]
    fits = [(name, img, fit_frame(img)) for name, img, _ in track(views, description="lane markings", console=err)]
    found = [(name, img, f) for name, img, f in fits if f is not None]
    if not found:
        err.print("[red]no lane markings met in any frame:[/red] use frames of a straight road with painted lines "
                  "on both sides of the vehicle's path")
        raise typer.Exit(1)
    result = fit_mount([f for _, _, f in found], intr, configured, lane_width)
    fitted = result.mount
    table = Table(title=f"Mount from {result.frames_used} of {len(same)} frames")
    for column in ("", "config", "fitted"):
        table.add_column(column, justify="right")
    table.add_row("pitch_deg", f"{configured.pitch_deg:.2f}", f"{fitted.pitch_deg:.2f}")
    table.add_row("yaw_deg", f"{configured.yaw_deg:.2f}", f"{fitted.yaw_deg:.2f}")
    table.add_row("height_m", f"{configured.height_m:.2f}",
                  f"{fitted.height_m:.2f}" if result.height_from_lane else "(give --lane-width)")
    table.add_row("roll_deg", f"{configured.roll_deg:.2f}", "(kept)")
    out.print(table)
    out.print(f"vanishing point ({result.vp[0]:.1f}, {result.vp[1]:.1f}) px, frames within "
              f"{result.vp_spread_px:.1f} px of it (median)")
    for ahead in (8.0, 15.0):
        if (off := misplaced_m(intr, configured, fitted, ahead)) is not None:
            out.print(f"a defect {ahead:.0f} m ahead is placed {off:.2f} m off with the config's mount")
    doubts = result.doubts(w)
    # A height is fitted from the lane only when --lane-width gave one.
    if result.height_from_lane and lane_width is not None and abs(fitted.height_m / configured.height_m - 1) > 0.1:
        err.print(f"[yellow]height:[/yellow] the config's height_m {configured.height_m:.2f} m means a lane "
                  f"{lane_width * configured.height_m / fitted.height_m:.2f} m wide, not {lane_width:g}: measure "
                  "the lane at the roadside (between the middles of its lines) or the camera height with a tape; "
                  "the height fitted here is only as right as --lane-width", highlight=False)
    keys = [f"pitch_deg = {fitted.pitch_deg:.2f}", f"yaw_deg = {fitted.yaw_deg:.2f}"]
    if result.height_from_lane:
        keys.append(f"height_m = {fitted.height_m:.2f}")
    if not doubts:
        out.print("set in \\[calibration]:\n" + "\n".join(keys), highlight=False)
    if not cfg.calibration.intrinsics_file and not cfg.calibration.fx:
        err.print("[yellow]note:[/yellow] the focal length is derived from hfov_deg: pitch, and the distances "
                  "ahead, are only as right as that guess (`edge-agent calibrate intrinsics`, or check a mark at a "
                  "measured distance on the grid)", highlight=False)
    name, image, best = max(found, key=lambda item: item[2].support_px)
    picture = draw_ground_grid(draw_fit(image, best, result.vp), GroundProjector(intr, fitted))
    if not cv2.imwrite(str(output), picture):
        err.print(f"[red]could not write {output}[/red]")
        raise typer.Exit(1)
    out.print(f"wrote {output} ({name}: markings used in magenta, the grid of the fitted mount)")
    if doubts:
        for doubt in doubts:
            err.print(f"[red]not usable:[/red] {doubt}", highlight=False)
        err.print("drive a straight, flat road with painted lines on both sides, in daylight, and try again")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(calibrate_app, name="calibrate")
