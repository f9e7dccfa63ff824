"""The map-quality tables, printed with rich, and the goals of issue 15 checked against them."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

GOALS = "after 3 passes: precision and recall >= 0.95, duplicates <= 2 %, median error <= 1.0 m; " \
        ">= 90 % of repairs flagged within 3 passes by >= 2 vehicles; false likely_repaired <= 1 %"


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def goals(result: dict) -> dict[str, bool | None]:
    k3 = next((r for r in result["k_passes"] if r["k"] == 3), {})
    rep = result["repairs"]

    def ge(v: float | None, x: float) -> bool | None:
        return None if v is None else v >= x

    def le(v: float | None, x: float) -> bool | None:
        return None if v is None else v <= x

    return {"precision_k3 >= 0.95": ge(k3.get("precision"), 0.95),
            "precision_confirmed_k3 >= 0.95": ge(k3.get("precision_confirmed"), 0.95),
            "recall_k3 >= 0.95": ge(k3.get("recall"), 0.95),
            "duplicates_k3 <= 0.02": le(k3.get("duplicates"), 0.02),
            "median_error_k3 <= 1.0 m": le(k3.get("median_error_m"), 1.0),
            "repairs flagged within 3 passes by 2 vehicles >= 0.90": ge(rep.get("flagged_within"), 0.90),
            "false likely_repaired <= 0.01": le(rep.get("false_rate"), 0.01)}


def print_report(result: dict, console: Console | None = None) -> None:
    console = console or Console(width=130)
    t = Table(title="Map quality after k passes over each defect")
    for col in ("k", "defects", "recall", "recall (confirmed)", "duplicates", "median error m", "p95 error m",
                "precision", "precision (confirmed)"):
        t.add_column(col, justify="right")
    for r in result["k_passes"]:
        t.add_row(str(r["k"]), str(r["defects"]), _f(r["recall"]), _f(r["recall_confirmed"]), _f(r["duplicates"]),
                  _f(r["median_error_m"], "{:.2f}"), _f(r["p95_error_m"], "{:.2f}"), _f(r["precision"]),
                  _f(r["precision_confirmed"]))
    console.print(t)
    c, rep, lc = result["confirmation"], result["repairs"], result["long_cracks"]
    console.print(f"first detection -> confirmed: {c['confirmed']} of {c['detected']} detected defects, median "
                  f"{_f(c['median_h'], '{:.1f}')} h, p95 {_f(c['p95_h'], '{:.1f}')} h, median "
                  f"{_f(c['median_passes'], '{:.0f}')} passes")
    console.print(f"repairs: {rep['repaired_on_map']} repaired defects were on the map; {rep['flagged']} flagged "
                  f"likely_repaired after a median {_f(rep['median_passes'], '{:.0f}')} passes, "
                  f"{_f(rep['median_days'], '{:.2f}')} days (p95 {_f(rep['p95_days'], '{:.2f}')}); flagged by the time "
                  f"3 passes by >= 2 vehicles had gone by: {_f(rep['flagged_within'])} of "
                  f"{rep['eligible_3_passes_2_vehicles']}")
    console.print(f"false likely_repaired: {rep['false_likely_repaired']} of {rep['mapped']} defects on the map "
                  f"({_f(rep['false_rate'])})")
    console.print(f"long cracks (>= 6 m): {lc.get('long_cracks', 0)}; one map defect each: {lc.get('one_defect', 0)}, "
                  f"several: {lc.get('several', 0)}, missing: {lc.get('missing', 0)}; map line / true length "
                  f"median {_f(lc.get('median_line_over_true'), '{:.2f}')}")
    fn = result.get("finds_nothing")
    if fn:
        console.print(f"boxes named finds_nothing: {fn['named']} of {fn['blind']} blind ones (after "
                      f"{', '.join(f'{d:.1f}' for d in fn['days_to_name']) or '-'} simulated days), "
                      f"{len(fn['healthy_named'])} of {fn['healthy']} healthy ones")
    s = result["run"]
    console.print(f"run: {s['events']} events, {s['coverage']} coverage records, re-sent {s['resent']}, rejected "
                  f"{s['rejected']}, unacked {s['unacked']}, {s['wall_s']:.0f} s wall")
    for goal, ok in goals(result).items():
        console.print(f"  goal {goal}: {'-' if ok is None else ('met' if ok else 'MISSED')}")
