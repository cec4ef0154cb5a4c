"""Markdown tables of the stored generation results (benchmarks/results/*.json), as README and
docs/stages.md show them: the three course UNets side by side where their results are stored.

    python benchmarks/generation_tables.py            # every table whose JSON is there

The JSON files come from (2 CPU cores; add --overwrite to replace a file that is there; NAME is
course_v1, course_ddpm or course):

    compress3d-lite evaluate diagnose --pipeline NAME --json benchmarks/results/diagnose_NAME_val.json
    compress3d-lite evaluate sweep --pipeline DIR --split val --guidance-grid 1,2,3x1,2 --intervals 0-1,0-0.8,0-0.6,0.2-1 \
        --rescales 0,0.7 --apply --json benchmarks/results/sweep_course_val.json     # DIR: the new UNet's pipeline folder
    compress3d-lite evaluate generate --pipeline NAME --split test --json benchmarks/results/generate_NAME_test.json
    compress3d-lite evaluate generate --pipeline course --split test --start regression \
        --json benchmarks/results/generate_course_start_test.json        # the row "shipped, --start regression"
    compress3d-lite evaluate diagnose --pipeline NAME --split val --bounds runs/bounds \
        --json benchmarks/results/diagnose_bounds_NAME_val.json     # 9 min, the bounds' objects included
    bash benchmarks/objective_sweep.sh                                     # objective_sweep_val.json, ~40 min
"""

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"course_v1": "first course UNet", "course_ddpm": "DDPM course UNet", "course": "shipped (rectified flow)",
          "course_start": "shipped, --start regression"}


def _load(name):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _f(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def _rows_by_model(reports: dict, head: str, cell) -> str:
    """One row per diagnosis variant, one column per model: ``cell(summary or None)``."""
    lines = ["| row | " + " | ".join(f"{MODELS[m]}: {head}" for m in reports) + " |", "|---|" + "---|" * len(reports)]
    by_model = {m: {r["name"]: r["summary"] for r in rep["rows"]} for m, rep in reports.items()}
    for name in dict.fromkeys(n for rows in by_model.values() for n in rows):
        lines.append(f"| {name} | " + " | ".join(cell(by_model[m].get(name)) for m in reports) + " |")
    return "\n".join(lines)


def diagnosis_table(reports: dict) -> str:
    """Median IoU / near-surface IoU / category accuracy per diagnosis row and model."""
    return _rows_by_model(reports, "IoU / near / category", lambda s: "-" if s is None else
                          f"{_f(s['iou_median'])} / {_f(s['iou_near_median'])} / {_f(s['category_acc'])}")


def colour_table(reports: dict) -> str:
    """Where colour is lost: the colour measures of every diagnosis row (lower is better)."""
    return _rows_by_model(reports, "render / field per part / mesh per part", lambda s: "-" if s is None or
                          s.get("colour_parts_median") is None else f"{_f(s.get('colour_view_median'))} / "
                          f"{_f(s['colour_parts_median'])} / {_f(s.get('colour_mesh_parts_median'))}")


BOUND_ROWS = ("shipped", "true shape emb.")  # beside the bound rows, the UNet's own two rows


def bounds_table(reports: dict) -> str:
    """The bounds (evaluate diagnose --bounds) beside the UNet's rows, one block per model:
    median IoU / near-surface IoU / category accuracy / worst category / colour (render, per part)."""
    lines = ["| model | row | IoU / near / category | worst category | colour render / per part |", "|---|---|---|---|---|"]
    for m, rep in reports.items():
        for r in rep["rows"]:
            if r["name"] in BOUND_ROWS or r["name"].startswith(("retrieval", "regression")):
                s = r["summary"]
                lines.append(f"| {MODELS[m]} | {r['name']} | {_f(s['iou_median'])} / {_f(s['iou_near_median'])} / "
                             f"{_f(s['category_acc'])} | {s['worst_category']} {_f(s['worst_category_iou'], '.2f')} | "
                             f"{_f(s.get('colour_view_median'))} / {_f(s.get('colour_parts_median'))} |")
    return "\n".join(lines)


def bands_table(reports: dict) -> str:
    """The UNet's loss per noise band (its own parametrisation), training | held-out latents."""
    lines = ["| t / T | " + " | ".join(f"{MODELS[m]}: train / held-out (gap)" for m in reports) + " |",
             "|---|" + "---|" * len(reports)]
    bands = {m: rep["bounds"]["bands"] for m, rep in reports.items()}
    first = next(iter(bands.values()))
    for i, b in enumerate(first["train"]):
        cells = []
        for m in reports:
            tr, ho = bands[m]["train"][i]["loss"], bands[m]["held_out"][i]["loss"]
            cells.append(f"{tr:.3f} / {ho:.3f} ({100 * (ho / tr - 1):+.0f}%)")
        lines.append(f"| {b['band'][0]:.1f}-{b['band'][1]:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(sweep: dict) -> str:
    """Every row of a sweep, with the score the sweep ranks by (the mean of the three IoU medians)."""
    lines = ["| setting (guidance image/shape, sampler steps) | median IoU | near surface | worst category | score | "
             "category acc. |", "|---|---|---|---|---|---|"]
    for r in sweep["rows"]:
        s = r["summary"]
        name = f"**{r['name']}** (chosen)" if r["name"] == sweep.get("best") else r["name"]
        score = (s["iou_median"] + s["iou_near_median"] + s["worst_category_iou"]) / 3
        lines.append(f"| {name} | {_f(s['iou_median'])} | {_f(s['iou_near_median'])} | "
                     f"{s['worst_category']} {_f(s['worst_category_iou'], '.2f')} | {_f(score)} | {_f(s['category_acc'])} |")
    return "\n".join(lines)


def objective_table(sweep: dict) -> str:
    lines = ["| objective (course UNet, 600 steps, raw weights) | median IoU | near surface | worst category | "
             "category acc. | colour (render) | colour per part | without prior |", "|---|---|---|---|---|---|---|---|"]
    for r in sweep["rows"]:
        s, n = r["with_prior"], r["without_prior"]
        lines.append(f"| {r['note']} | {_f(s['iou_median'])} | {_f(s['iou_near_median'])} | {s['worst_category']} "
                     f"{_f(s['worst_category_iou'], '.2f')} | {_f(s['category_acc'])} | {_f(s.get('colour_view_median'))} "
                     f"| {_f(s.get('colour_parts_median'))} | {_f(n['iou_median'])} |")
    return "\n".join(lines)


def test_table(reports: dict) -> str:
    """The final test-split table: overall numbers, then the median IoU of every category."""
    lines = ["| test split (56 objects, measured once) | median IoU | near surface | worst category | category acc. "
             "| image sim. | CD-L1 | colour (render) | colour per part |", "|---|---|---|---|---|---|---|---|---|"]
    for m, rep in reports.items():
        for variant, suffix in (("with_prior", ""), ("without_prior", " (no prior)")):
            if variant == "without_prior" and rep["settings"].get("start") == "regression":
                continue  # without the prior the UNet starts from noise: the row above it already
            s = rep[variant]
            lines.append(f"| {MODELS[m]}{suffix} | {_f(s['iou_median'])} | {_f(s['iou_near_median'])} | "
                         f"{s['worst_category']} {_f(s['worst_category_iou'], '.2f')} | {_f(s['category_acc'])} | "
                         f"{_f(s['image_sim_mean'])} | {_f(s['chamfer_l1_median'], '.4f')} | "
                         f"{_f(s.get('colour_view_median'))} | {_f(s.get('colour_parts_median'))} |")
    cats = list(next(iter(reports.values()))["with_prior"]["category_iou_median"])
    lines += ["", "| median IoU per category | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    for m, rep in reports.items():
        per = rep["with_prior"]["category_iou_median"]
        lines.append(f"| {MODELS[m]} | " + " | ".join(_f(per[c], ".2f") for c in cats) + " |")
    return "\n".join(lines)


def _stored(pattern: str) -> dict:
    return {m: rep for m in MODELS if (rep := _load(pattern.format(m))) is not None}


def main():
    diagnoses = _stored("diagnose_{}_val.json")
    if diagnoses:
        print("## Diagnosis (val split)\n")
        print(diagnosis_table(diagnoses), "\n")
        if any("colour_parts_median" in r["summary"] for rep in diagnoses.values() for r in rep["rows"]):
            print("## Where colour is lost (val split)\n")
            print(colour_table({m: r for m, r in diagnoses.items() if "colour_parts_median" in r["rows"][0]["summary"]}),
                  "\n")
    bounds = _stored("diagnose_bounds_{}_val.json")
    if bounds:
        print("## Bounds (val split)\n")
        print(bounds_table(bounds), "\n")
        print(bands_table(bounds), "\n")
    objective = _load("objective_sweep_val.json")
    if objective:
        print("## Objective x timestep bias (val split)\n")
        print(objective_table(objective), "\n")
    for name in ("sweep_course_val.json", "sweep_course_ddpm_val.json"):
        if (sweep := _load(name)) is not None:
            print(f"## Validation sweep ({name})\n")
            print(sweep_table(sweep), "\n")
    tests = _stored("generate_{}_test.json")
    if tests:
        print("## Test split\n")
        print(test_table(tests))


if __name__ == "__main__":
    main()
