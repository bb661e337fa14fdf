"""The blind-spot report: ``report.json`` (the schema tests check), ``report.html`` (tables, the δ bar
plot with intervals, real/generated examples per concept) and ``delta.png``."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

REQUIRED_KEYS = ("format", "version", "model", "features", "n_images", "sae", "counts", "concepts", "memorisation")
CONCEPT_KEYS = ("concept", "label", "delta", "delta_low", "delta_high", "effect", "p", "q", "real_energy", "gen_energy")


def check_schema(result: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first missing or malformed field of a report."""
    for key in REQUIRED_KEYS:
        if key not in result:
            raise ValueError(f"report lacks {key!r}")
    for c in result["concepts"]:
        for key in CONCEPT_KEYS:
            if key not in c:
                raise ValueError(f"concept {c.get('concept')} lacks {key!r}")
        if c["label"] not in ("suppressed", "exaggerated", "faithful", "inactive"):
            raise ValueError(f"concept {c['concept']} has label {c['label']!r}")
        if not 0 <= c["delta_low"] <= c["delta_high"] <= 1 or not 0 <= c["q"] <= 1:
            raise ValueError(f"concept {c['concept']}: interval or q out of range")


def _thumb(image: Any, size: int = 64) -> str:
    buf = io.BytesIO()
    image.convert("RGB").resize((size, size)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _delta_plot(concepts: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = sorted((c for c in concepts if c["label"] != "inactive"), key=lambda c: c["delta"])
    colour = {"suppressed": "tab:blue", "exaggerated": "tab:red", "faithful": "0.7"}
    fig, ax = plt.subplots(figsize=(max(6, len(shown) * 0.06), 3))
    x = range(len(shown))
    d = [c["delta"] for c in shown]
    err = [[c["delta"] - c["delta_low"] for c in shown], [c["delta_high"] - c["delta"] for c in shown]]
    ax.bar(x, d, color=[colour[c["label"]] for c in shown], yerr=err, error_kw={"lw": 0.5})
    ax.axhline(0.5, color="k", lw=0.5)
    ax.set_ylim(0, 1)
    ax.set_ylabel("δ = E_gen / (E_real + E_gen)")
    ax.set_xlabel("concepts (sorted); blue suppressed, red exaggerated at the FDR")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(result: dict[str, Any], real: list[Any], generated: list[Any], out: Path) -> None:
    check_schema(result)
    (out / "report.json").write_text(json.dumps(result, indent=1))
    _delta_plot(result["concepts"], out / "delta.png")
    found = sorted((c for c in result["concepts"] if c["label"] in ("suppressed", "exaggerated")), key=lambda c: c["q"])
    rows = []
    for c in found[:40]:
        reals = "".join(f'<img src="{_thumb(real[i])}">' for i in c["top_real_images"][:4])
        gens = "".join(f'<img src="{_thumb(generated[i])}">' for i in c["top_real_images"][:4])
        name = f"{html.escape(str(c.get('name', '')))} ({c.get('name_corr', '')})" if "name" in c else ""
        rows.append(
            f"<tr><td>{c['concept']}</td><td>{c['label']}</td><td>{name}</td>"
            f"<td>{c['delta']:.3f} [{c['delta_low']:.3f}, {c['delta_high']:.3f}]</td><td>{c['effect']:.2f}</td>"
            f"<td>{c['q']:.2g}</td><td>{reals}</td><td>{gens}</td></tr>"
        )
    counts = ", ".join(f"{k}: {v}" for k, v in result["counts"].items())
    memo = result["memorisation"]
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in result.get("seconds", {}).items())
    plot = base64.b64encode((out / "delta.png").read_bytes()).decode()
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Conceptual blindspots</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{border:1px solid #ccc;padding:3px}}
table{{border-collapse:collapse}} img{{margin:1px;image-rendering:pixelated}}</style></head><body>
<h1>Conceptual blindspots</h1>
<p>Model <code>{html.escape(str(result["model"]))}</code>, features <code>{html.escape(result["features"])}</code>,
{result["n_images"]} real images and as many generated for the same captions.
SAE: {html.escape(json.dumps(result["sae"]))}.</p>
<p>Concepts: {counts} (FDR {result.get("config", {}).get("fdr")}, Benjamini–Hochberg over tested concepts).
Near copies: {len(memo["flagged"])} generated images (threshold {memo["threshold"]:.4f}). Time: {secs}.</p>
<img src="data:image/png;base64,{plot}">
<table><tr><th>concept</th><th>class</th><th>best label (r)</th><th>δ [95% CI]</th><th>d_z</th><th>q</th>
<th>top real images</th><th>generated for the same captions</th></tr>
{"".join(rows)}</table></body></html>"""
    (out / "report.html").write_text(page, encoding="utf-8")
