"""`edge-agent calibrate intrinsics|check`: camera intrinsics from checkerboard photos, and a projected metre
grid over a road image to check the mount by eye."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from edge_agent.commands import config_option

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

    from calibration.config import CalibrationError, intrinsics_from_config, projector_from_config
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
        mismatch = intrinsics_from_config(cfg.calibration).aspect_mismatch(frame.shape[1], frame.shape[0])
        projector = projector_from_config(cfg.calibration, (frame.shape[1], frame.shape[0]))
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


def register(app: typer.Typer) -> None:
    app.add_typer(calibrate_app, name="calibrate")
