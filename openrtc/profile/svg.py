"""A self-contained interactive flamegraph as SVG: hover for a frame's weight, click to zoom, search
(a regular expression) to highlight. Pure. Drawn root at the top (an icicle), children in alphabetical
order like flamegraph.pl; a frame narrower than `MIN_WIDTH_PX` is left out (its weight stays in its
parent). Written by hand: flamegraph.pl is Perl, and no maintained Python library draws one.

The same script serves a lone `.svg` file and the flamegraphs inlined in the HTML report: it wires up
every `svg.openrtc-flame` of the document once.
"""

from __future__ import annotations

import hashlib
from html import escape

from openrtc.profile.stacks import Profile
from openrtc.profile.tree import Node, build

WIDTH = 1200
ROW = 17
TOP = 46
MIN_WIDTH_PX = 0.3
CHAR_PX = 6.6

SCRIPT = r"""
(function () {
  function wire(svg) {
    if (svg.getAttribute("data-ready")) return;
    svg.setAttribute("data-ready", "1");
    var width = +svg.getAttribute("data-width"), frames = svg.querySelectorAll("g.frame");
    var details = svg.querySelector(".details"), matched = svg.querySelector(".matched");
    var unit = svg.getAttribute("data-unit"), total = +svg.getAttribute("data-total");
    function fit(g, w) {
      var t = g.querySelector("text"), name = g.getAttribute("data-name");
      var n = Math.floor((w - 6) / CHAR);
      t.textContent = n < 3 ? "" : (name.length <= n ? name : name.slice(0, n - 2) + "..");
    }
    function place(g, x, w) {
      var r = g.querySelector("rect"), t = g.querySelector("text");
      r.setAttribute("x", x); r.setAttribute("width", Math.max(w - 0.5, 0));
      t.setAttribute("x", x + 3); fit(g, w); g.style.display = w < MINW ? "none" : "";
    }
    function zoom(target) {
      var zx = +target.getAttribute("data-x"), zw = +target.getAttribute("data-w");
      var zd = +target.getAttribute("data-depth");
      frames.forEach(function (g) {
        var x = +g.getAttribute("data-x"), w = +g.getAttribute("data-w"), d = +g.getAttribute("data-depth");
        if (d < zd && x <= zx + 1e-12 && x + w >= zx + zw - 1e-12) {
          place(g, 0, width); g.classList.add("parent");
        } else if (d >= zd && x >= zx - 1e-12 && x + w <= zx + zw + 1e-12) {
          place(g, (x - zx) / zw * width, w / zw * width); g.classList.remove("parent");
        } else { g.style.display = "none"; }
      });
    }
    frames.forEach(function (g) {
      g.addEventListener("click", function () { zoom(g); });
      g.addEventListener("mouseover", function () {
        var w = +g.getAttribute("data-weight");
        details.textContent = g.getAttribute("data-name") + " (" + w.toLocaleString() + " " + unit + ", " +
          (100 * w / total).toFixed(2) + "%)";
      });
      g.addEventListener("mouseout", function () { details.textContent = " "; });
    });
    svg.querySelector(".reset").addEventListener("click", function () {
      frames.forEach(function (g) {
        place(g, +g.getAttribute("data-x") * width, +g.getAttribute("data-w") * width);
        g.classList.remove("parent");
      });
    });
    svg.querySelector(".search").addEventListener("click", function () {
      var term = window.prompt("Search frames (a regular expression)", "");
      var hit = 0, re = null;
      frames.forEach(function (g) { g.classList.remove("hit"); });
      if (!term) { matched.textContent = " "; return; }
      try { re = new RegExp(term); } catch (e) { matched.textContent = "bad expression"; return; }
      var spans = [];
      frames.forEach(function (g) {
        if (re.test(g.getAttribute("data-name"))) {
          g.classList.add("hit");
          spans.push([+g.getAttribute("data-x"), +g.getAttribute("data-w")]);
        }
      });
      spans.sort(function (a, b) { return a[0] - b[0]; });
      var end = -1;
      spans.forEach(function (s) {  // nested matches count once
        if (s[0] + s[1] > end) { hit += s[0] + s[1] - Math.max(s[0], end); end = s[0] + s[1]; }
      });
      matched.textContent = "Matched: " + (100 * hit).toFixed(1) + "%";
    });
  }
  var CHAR = %(char)s, MINW = %(minw)s;
  document.querySelectorAll("svg.openrtc-flame").forEach(wire);
})();
""".replace("%(char)s", str(CHAR_PX)).replace("%(minw)s", str(MIN_WIDTH_PX))

STYLE = """
svg.openrtc-flame { font: 12px Verdana, sans-serif; background: #f8f8f8; }
svg.openrtc-flame g.frame { cursor: pointer; }
svg.openrtc-flame g.frame:hover rect { stroke: #000; stroke-width: 0.5; }
svg.openrtc-flame g.frame.hit rect { fill: #e040e0 !important; }
svg.openrtc-flame g.frame.parent rect { opacity: 0.6; }
svg.openrtc-flame text.label { pointer-events: none; fill: #000; }
svg.openrtc-flame .title { font-size: 16px; }
svg.openrtc-flame .button { fill: #1f4e9c; cursor: pointer; }
"""


def color(name: str) -> str:
    """A stable color per frame: kinds have their own hue (idle grey, gc purple, outside blue, LLM green,
    tools orange), code frames a warm one from the name's hash."""
    h = int(hashlib.blake2b(name.encode(), digest_size=2).hexdigest(), 16)
    if name in ("idle",):
        return "rgb(200,200,200)"
    if name in ("gc", "cpu-wait"):
        return f"rgb({160 + h % 30},120,220)"
    if name in ("outside", "worker") or name.startswith(("agent:", "session:", "tag:")):
        return f"rgb({110 + h % 40},{160 + h % 40},230)"
    if name.startswith(("call:llm/", "llm/", "kind:")):
        return f"rgb({90 + h % 50},{190 + h % 40},{110 + h % 40})"
    if name.startswith(("call:tool/", "tool/", "status:")):
        return f"rgb(240,{150 + h % 50},{60 + h % 40})"
    return f"rgb({205 + h % 50},{80 + (h >> 4) % 120},{40 + (h >> 8) % 40})"


def svg(profile: Profile, width: int = WIDTH, standalone: bool = True) -> str:
    """The flamegraph; `standalone=False` leaves out the XML prolog, the style and the script (the
    HTML report has them once)."""
    root = build(profile)
    total = root.weight
    rows: list[str] = []
    depth_max = 0

    def draw(node: Node, x: float, depth: int) -> None:
        nonlocal depth_max
        if total <= 0 or node.weight / total * width < MIN_WIDTH_PX:
            return
        depth_max = max(depth_max, depth)
        fx, fw = x / total, node.weight / total
        px, pw = fx * width, fw * width
        chars = int((pw - 6) / CHAR_PX)
        label = node.name if len(node.name) <= chars else node.name[: chars - 2] + ".." if chars >= 3 else ""
        weight = round(node.weight, 3)
        y = TOP + depth * ROW
        rows.append(
            f'<g class="frame" data-name="{escape(node.name)}" data-weight="{weight:g}" data-x="{fx:.9f}" '
            f'data-w="{fw:.9f}" data-depth="{depth}"><title>{escape(node.name)} ({weight:g} {profile.unit}, '
            f'{100 * fw:.2f}%)</title><rect x="{px:.2f}" y="{y}" width="{max(pw - 0.5, 0):.2f}" '
            f'height="{ROW - 1}" fill="{color(node.name)}" rx="2"/>'
            f'<text class="label" x="{px + 3:.2f}" y="{y + 12}">{escape(label)}</text></g>'
        )
        offset = x
        for child in node.sorted_children():
            draw(child, offset, depth + 1)
            offset += child.weight

    offset = 0.0
    for child in root.sorted_children():
        draw(child, offset, 0)
        offset += child.weight
    height = TOP + (depth_max + 1) * ROW + 10
    title = f"{profile.title}: {total:g} {profile.unit}" if total else f"{profile.title}: empty"
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="openrtc-flame" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" data-width="{width}" data-unit="{escape(profile.unit)}" '
        f'data-total="{total:g}">'
    )
    parts = [head]
    if standalone:
        parts.append(f"<style>{STYLE}</style>")
    parts += [
        f'<text class="title" x="{width / 2}" y="18" text-anchor="middle">{escape(title)}</text>',
        '<text class="button reset" x="8" y="36">Reset zoom</text>',
        f'<text class="button search" x="{width - 60}" y="36">Search</text>',
        f'<text class="matched" x="{width - 200}" y="36"> </text>',
        '<text class="details" x="100" y="36"> </text>',
        *rows,
    ]
    if standalone:
        parts.append(f"<script><![CDATA[{SCRIPT}]]></script>")
    parts.append("</svg>")
    body = "\n".join(parts) + "\n"
    return ('<?xml version="1.0" standalone="no"?>\n' + body) if standalone else body
