"""Outputs of the Pareto benchmark: CSV, machine description, tables and the peak-vs-time plot.

The plot is a PNG drawn with matplotlib when it is importable (it is in the ``test`` extra),
otherwise an SVG drawn here.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.csv_out import write_csv

MiB = 2**20
WITHIN = 0.05  # the measured peak may exceed fxopt's budget by this fraction
TIME_TOL = 0.05  # "no slower": within this fraction of PyTorch's step time (noise)
PEAK_TOL = 0.02  # "equal peak": within this fraction

COLUMNS = ("model", "label", "method", "mode", "device", "status", "peak_mib", "step_ms",
           "step_min_ms",
           "compile_s", "solve_s", "budget_mib", "predicted_peak_mib", "baseline_peak_mib",
           "within_budget", "grad_rel_err", "grad_ok", "min_peak_mib", "graphs", "trace")


def _mib(v: int | None) -> str:
    return "" if v is None else f"{v / MiB:.2f}"


def within_budget(r: Any) -> bool | None:
    if r.method != "fxopt" or r.peak_bytes is None or not r.budget_bytes:
        return None
    return r.peak_bytes <= r.budget_bytes * (1 + WITHIN)


def row(r: Any) -> dict[str, str]:
    def num(v: float | None, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    return {"model": r.model, "label": r.label, "method": r.method, "mode": r.mode,
            "device": r.device, "status": r.status, "peak_mib": _mib(r.peak_bytes),
            "step_ms": num(None if r.step_s is None else r.step_s * 1e3, ".2f"),
            "step_min_ms": num(None if r.step_min_s is None else r.step_min_s * 1e3, ".2f"),
            "compile_s": num(r.compile_s, ".1f"), "solve_s": num(r.solve_s, ".3f"),
            "budget_mib": _mib(r.budget_bytes), "predicted_peak_mib": _mib(r.predicted_peak_bytes),
            "baseline_peak_mib": _mib(r.baseline_peak_bytes),
            "within_budget": "" if within_budget(r) is None else str(within_budget(r)),
            "grad_rel_err": num(r.grad_rel_err, ".2e"),
            "grad_ok": "" if r.grad_ok is None else str(r.grad_ok),
            "min_peak_mib": _mib(r.min_peak_bytes), "graphs": str(r.graphs),
            "trace": r.trace or ""}


def machine_text(device: str, mode: str) -> str:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "none"
    peak = ("the caching allocator's high-water mark above the bytes allocated before the step"
            if device.startswith("cuda") else
            "RSS high-water mark above the RSS before the step")
    return (f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
            f"- CPU: {cpu}, {os.cpu_count()} cores (load average at the end: {load}; the machine "
            f"was shared, so step times are noisy)\n- GPU: {gpu}\n"
            f"- torch {torch.__version__}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}\n"
            f"- benchmark mode: {mode}; one thread per child process "
            f"(torch.set_num_threads(1)), peak = {peak} (benchmarks.measure)\n")


def pareto_verdict(records: Sequence[Any], model: str, stat: str = "step_s") -> list[str]:
    """For each PyTorch point (torch.compile, activation_memory_budget): is there an exact fxopt
    point with a peak no higher and a step time (``stat``) no slower, within tolerance?"""
    ok = [r for r in records if r.model == model and r.status == "ok" and r.peak_bytes]
    torch_pts = [r for r in ok if r.method in ("compile", "pt_budget")]
    fx_pts = [r for r in ok if r.method == "fxopt" and "fp8" not in r.label]
    lines = []
    for p in sorted(torch_pts, key=lambda r: -r.peak_bytes):
        cands = [f for f in fx_pts if f.peak_bytes <= p.peak_bytes * (1 + PEAK_TOL)]
        best = min(cands, key=lambda f: getattr(f, stat), default=None)
        if best is None:
            lines.append(f"  {p.label:16s} {p.peak_bytes / MiB:7.1f} MiB "
                         f"{getattr(p, stat) * 1e3:7.1f} ms  -> no fxopt point at or below "
                         "this peak: NOT covered")
            continue
        ratio = getattr(best, stat) / getattr(p, stat)
        verdict = "on/below" if ratio <= 1 + TIME_TOL else "ABOVE (slower)"
        lines.append(f"  {p.label:16s} {p.peak_bytes / MiB:7.1f} MiB "
                     f"{getattr(p, stat) * 1e3:7.1f} ms  -> {best.label:14s} "
                     f"{best.peak_bytes / MiB:7.1f} MiB {getattr(best, stat) * 1e3:7.1f} ms "
                     f"(x{ratio:.2f}): {verdict}")
    if stat != "step_s":
        return lines
    mins = {}
    for name, pts in (("PyTorch", torch_pts), ("fxopt", fx_pts),
                      ("checkpoint", [r for r in ok if r.method == "checkpoint"])):
        if pts:
            mins[name] = min(r.peak_bytes for r in pts) / MiB
    lines.append("  minimum measured peak: " + ", ".join(f"{k} {v:.1f} MiB"
                                                        for k, v in mins.items()))
    return lines


def tables(records: Sequence[Any]) -> str:
    out = []
    hdr = (f"{'model':9s} {'configuration':24s} {'peak MiB':>9s} {'step ms':>8s} {'min ms':>7s} "
           f"{'compile s':>9s} {'solve s':>7s} {'grad err':>9s}  status")
    for model in dict.fromkeys(r.model for r in records):
        out += ["", hdr]
        for r in (r for r in records if r.model == model):
            d = row(r)
            out.append(f"{r.model:9s} {r.label:24s} {d['peak_mib']:>9s} {d['step_ms']:>8s} "
                       f"{d['step_min_ms']:>7s} "
                       f"{d['compile_s']:>9s} {d['solve_s']:>7s} {d['grad_rel_err']:>9s}  "
                       f"{r.status}")
        fx = [r for r in records if r.model == model and r.method == "fxopt"
              and r.status == "ok"]
        if fx:
            out += ["", f"{model}: fxopt budget vs measured peak (within +{WITHIN:.0%}?)",
                    f"  {'configuration':24s} {'budget B':>11s} {'measured B':>11s} "
                    f"{'predicted B':>11s} {'measured/budget':>15s}  within"]
            for r in fx:
                out.append(f"  {r.label:24s} {r.budget_bytes or 0:11d} {r.peak_bytes:11d} "
                           f"{r.predicted_peak_bytes or 0:11d} "
                           f"{r.peak_bytes / (r.budget_bytes or 1):15.3f}  {within_budget(r)}")
        for stat, name in (("step_s", "median"), ("step_min_s", "fastest")):
            out += ["", f"{model}: fxopt vs PyTorch's curve, {name} step time (peak within "
                    f"+{PEAK_TOL:.0%}, time within +{TIME_TOL:.0%})"]
            out += pareto_verdict(records, model, stat)
    return "\n".join(out)


STYLE = {"eager": ("black", "s"), "compile": ("tab:blue", "D"), "pt_budget": ("tab:blue", "o"),
         "checkpoint": ("tab:green", "^"), "fxopt": ("tab:red", "o"), "fp8": ("tab:purple", "*"),
         "offload": ("tab:orange", "v")}
NAMES = {"eager": "eager", "compile": "torch.compile", "pt_budget": "activation_memory_budget",
         "checkpoint": "per-block checkpoint", "fxopt": "fxopt (recompute)",
         "fp8": "fxopt fp8", "offload": "fxopt offload"}


def _groups(records: Sequence[Any], model: str) -> dict[str, list[Any]]:
    g: dict[str, list[Any]] = {}
    for r in records:
        if r.model != model or r.status != "ok" or not r.peak_bytes:
            continue
        key = r.method
        if r.method == "fxopt":
            key = "fp8" if "fp8" in r.label else "offload" if "offload" in r.label else "fxopt"
        g.setdefault(key, []).append(r)
    if "pt_budget" in g and "compile" in g:  # torch.compile is activation_memory_budget 1.0
        g["pt_budget"] = g["pt_budget"] + g["compile"]
    return g


def plot_png(records: Sequence[Any], models: list[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for key, pts in _groups(records, model).items():
            color, marker = STYLE[key]
            pts = sorted(pts, key=lambda r: r.peak_bytes)
            xs, ys = [r.peak_bytes / MiB for r in pts], [r.step_s * 1e3 for r in pts]
            line = "-" if key in ("pt_budget", "fxopt") else ""
            ax.plot(xs, ys, line, color=color, marker=marker, label=NAMES[key], markersize=7)
            for r, x, y in zip(pts, xs, ys):
                if r.method in ("pt_budget", "fxopt", "compile"):
                    text = "1 (compile)" if r.method == "compile" else r.label.split(" ")[1]
                    ax.annotate(text, (x, y), fontsize=7,
                                textcoords="offset points", xytext=(4, 3))
        ax.set_title(model)
        ax.set_xlabel("measured peak of one training step (MiB)")
        ax.set_ylabel("median step time (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_svg(records: Sequence[Any], models: list[str], path: str, title: str) -> None:
    w, h, pad = 460, 340, 50
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * len(models)}" '
             f'height="{h + 30}" font-family="sans-serif" font-size="11">',
             f'<text x="10" y="16">{title}</text>']
    for i, model in enumerate(models):
        groups = _groups(records, model)
        pts = [r for g in groups.values() for r in g]
        if not pts:
            continue
        x0 = i * w
        xmax = max(r.peak_bytes for r in pts) / MiB * 1.1
        ymax = max(r.step_s for r in pts) * 1e3 * 1.1

        def sx(v: float) -> float:
            return x0 + pad + v / xmax * (w - 2 * pad)

        def sy(v: float) -> float:
            return 30 + h - pad - v / ymax * (h - 2 * pad)

        parts.append(f'<rect x="{x0 + pad}" y="{30 + pad}" width="{w - 2 * pad}" '
                     f'height="{h - 2 * pad}" fill="none" stroke="#888"/>')
        parts.append(f'<text x="{x0 + w / 2 - 20}" y="{30 + pad - 8}">{model}</text>')
        parts.append(f'<text x="{x0 + pad}" y="{h + 20}">peak MiB (0..{xmax:.0f}); '
                     f'step ms (0..{ymax:.0f})</text>')
        colors = {"tab:blue": "#1f77b4", "tab:green": "#2ca02c", "tab:red": "#d62728",
                  "tab:purple": "#9467bd", "tab:orange": "#ff7f0e", "black": "#000"}
        for j, (key, g) in enumerate(groups.items()):
            col = colors[STYLE[key][0]]
            g = sorted(g, key=lambda r: r.peak_bytes)
            xy = [(sx(r.peak_bytes / MiB), sy(r.step_s * 1e3)) for r in g]
            if len(xy) > 1 and key in ("pt_budget", "fxopt"):
                parts.append('<polyline fill="none" stroke="{}" points="{}"/>'.format(
                    col, " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)))
            parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="4" fill="{col}"/>' for a, b in xy]
            parts.append(f'<text x="{x0 + w - pad - 150}" y="{30 + pad + 14 * (j + 1)}" '
                         f'fill="{col}">{NAMES[key]}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def write_outputs(records: Sequence[Any], out_dir: str, device: str, mode: str) -> None:
    csv_path = os.path.join(out_dir, f"pareto_{device}.csv")
    write_csv(csv_path, COLUMNS, (row(r) for r in records))
    machine = machine_text(device, mode)
    text = tables(records)
    with open(os.path.join(out_dir, "MACHINE.md"), "w") as f:
        f.write(f"# Machine of the latest Pareto benchmark (`pareto_{device}.csv`)\n\n{machine}"
                f"\n```\n{text.strip()}\n```\n")
    print(text)
    models = list(dict.fromkeys(r.model for r in records))
    title = f"{device.upper()} ({mode}): measured peak vs median step time, one thread"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        plot = os.path.join(out_dir, f"pareto_{device}.svg")
        plot_svg(records, models, plot, title)
    else:
        plot = os.path.join(out_dir, f"pareto_{device}.png")
        plot_png(records, models, plot, title)
    print(f"\nwrote {csv_path}, {plot}, {os.path.join(out_dir, 'MACHINE.md')}")
