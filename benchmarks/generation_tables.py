"""Markdown tables of the stored generation results (benchmarks/results/*.json), as README and
docs/stages.md show them.

    python benchmarks/generation_tables.py            # every table whose JSON is there

The JSON files come from (2 CPU cores; add --overwrite to replace a file that is there):

    compress3d-lite evaluate diagnose --pipeline course_v1 --samplers --json benchmarks/results/diagnose_course_v1_val.json
    compress3d-lite evaluate diagnose --pipeline course --json benchmarks/results/diagnose_course_val.json
    compress3d-lite evaluate sweep --pipeline DIR --guidance-grid 1,2,3x1,2 --samplers ddim:25,dpm:10,dpm:20 \
        --apply --json benchmarks/results/sweep_course_val.json
    compress3d-lite evaluate generate --pipeline course_v1 --split test --json benchmarks/results/generate_course_v1_test.json
    compress3d-lite evaluate generate --pipeline course --split test --json benchmarks/results/generate_course_test.json
    compress3d-lite evaluate diagnose --pipeline course --bounds runs/bounds \
        --json benchmarks/results/diagnose_bounds_course_val.json          # 7.6 min, the bounds' objects included
"""

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _f(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def diagnosis_table(old: dict, new: dict) -> str:
    """One row per diagnosis variant: median IoU / near-surface IoU / category accuracy, old and new."""
    lines = ["| row | first course UNet: IoU / near / category | shipped UNet: IoU / near / category |",
             "|---|---|---|"]
    olds = {r["name"]: r["summary"] for r in old["rows"]} if old else {}
    news = {r["name"]: r["summary"] for r in new["rows"]} if new else {}

    def cell(s):
        return "-" if s is None else f"{_f(s['iou_median'])} / {_f(s['iou_near_median'])} / {_f(s['category_acc'])}"

    for name in list(olds) + [n for n in news if n not in olds]:
        lines.append(f"| {name} | {cell(olds.get(name))} | {cell(news.get(name))} |")
    return "\n".join(lines)


def sweep_table(sweep: dict) -> str:
    lines = ["| setting (guidance image/shape, sampler steps) | median IoU | near surface | worst category | category acc. |",
             "|---|---|---|---|---|"]
    for r in sweep["rows"]:
        s = r["summary"]
        name = f"**{r['name']}** (chosen)" if r["name"] == sweep.get("best") else r["name"]
        lines.append(f"| {name} | {_f(s['iou_median'])} | {_f(s['iou_near_median'])} | "
                     f"{s['worst_category']} {_f(s['worst_category_iou'], '.2f')} | {_f(s['category_acc'])} |")
    return "\n".join(lines)


def test_table(old: dict, new: dict) -> str:
    """The final test-split table: overall numbers, then the median IoU of every category."""
    lines = ["| test split (56 objects, measured once) | median IoU | near surface | worst category | category acc. "
             "| image sim. | CD-L1 |", "|---|---|---|---|---|---|---|"]
    for label, rep in (("first course UNet, with prior", old), ("shipped UNet, with prior", new)):
        for variant, suffix in (("with_prior", ""), ("without_prior", " (no prior)")):
            if rep is None:
                continue
            s = rep[variant]
            name = label.replace(", with prior", suffix) if suffix else label
            lines.append(f"| {name} | {_f(s['iou_median'])} | {_f(s['iou_near_median'])} | {s['worst_category']} "
                         f"{_f(s['worst_category_iou'], '.2f')} | {_f(s['category_acc'])} | {_f(s['image_sim_mean'])} "
                         f"| {_f(s['chamfer_l1_median'], '.4f')} |")
    cats = list(new["with_prior"]["category_iou_median"])
    lines += ["", "| median IoU per category | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    for label, rep in (("first course UNet", old), ("shipped UNet", new)):
        if rep is not None:
            per = rep["with_prior"]["category_iou_median"]
            lines.append(f"| {label} | " + " | ".join(_f(per[c], ".2f") for c in cats) + " |")
    return "\n".join(lines)


def main():
    old_d, new_d = _load("diagnose_course_v1_val.json"), _load("diagnose_course_val.json")
    if new_d or old_d:
        print("## Diagnosis (val split)\n")
        print(diagnosis_table(old_d, new_d), "\n")
    sweep = _load("sweep_course_val.json")
    if sweep:
        print("## Validation sweep\n")
        print(sweep_table(sweep), "\n")
    old_t, new_t = _load("generate_course_v1_test.json"), _load("generate_course_test.json")
    if new_t:
        print("## Test split\n")
        print(test_table(old_t, new_t))


if __name__ == "__main__":
    main()
