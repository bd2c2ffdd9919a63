"""Drawing a :class:`~meshext.control.graph.Graph`: a terminal table, an SVG, an HTML page.

The SVG lays workloads out in columns by call depth (callers left, the
services they call to the right) and draws each edge as a curve labelled
with its request rate (or TCP byte rate), error share, p95 latency and
mTLS; red when more than 5 % of requests fail, dashed when not mutual TLS.
Both files are self-contained (no scripts, fonts or links to fetch): a
person opens them in a browser, and ``--watch`` HTML reloads itself.
Elements carry ``data-*`` attributes naming what they draw, for tests and
for people who script against the page.
"""

from __future__ import annotations

import datetime
import html

from rich.table import Table

from meshext.control.graph import UNKNOWN, Edge, Graph

ERROR_THRESHOLD = 0.05  # Kiali's default "degraded" threshold for the error share
NODE_WIDTH, NODE_HEIGHT, COLUMN_GAP, ROW_GAP, MARGIN = 190, 48, 330, 60, 30


def _rate(edge: Edge) -> str:
    if edge.request_rate:
        return f"{edge.request_rate:.2f} req/s"
    return f"{edge.tcp_bytes_rate:.0f} B/s"


def _summary(edge: Edge) -> list[str]:
    parts = [_rate(edge)]
    if edge.request_rate:
        parts.append(f"{edge.error_fraction:.0%} err")
    if edge.p95_ms is not None:
        parts.append(f"p95 {edge.p95_ms:.0f} ms")
    parts.append(f"mTLS {edge.mtls_fraction:.0%}")
    return parts


def table(graph: Graph) -> Table:
    """The edges as a rich table that fits 80 columns."""
    when = datetime.datetime.fromtimestamp(graph.taken_at).strftime("%H:%M:%S")
    result = Table(title=f"service graph ({graph.origin}, {when})", title_justify="left", expand=False)
    for name, justify in (("from", "left"), ("to", "left"), ("via", "left"), ("rate", "right"),
                          ("err", "right"), ("p95", "right"), ("mTLS", "right")):
        result.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for edge in graph.edges:
        failing = edge.error_fraction > ERROR_THRESHOLD
        result.add_row(
            graph.nodes[edge.source].name, graph.nodes[edge.destination].name, f"{edge.service} ({edge.protocol})",
            _rate(edge), f"[red]{edge.error_fraction:.0%}[/red]" if failing else f"{edge.error_fraction:.0%}",
            f"{edge.p95_ms:.0f}ms" if edge.p95_ms is not None else "-", f"{edge.mtls_fraction:.0%}")
    if not graph.edges:
        result.add_row("(no traffic in the window)", "", "", "", "", "", "")
    return result


def _layout(graph: Graph) -> dict[str, tuple[float, float]]:
    """Top-left corner of each node: column = longest call path from a caller, bounded for cycles."""
    depth = dict.fromkeys(graph.nodes, 0)
    for _ in range(len(graph.nodes)):
        changed = False
        for edge in graph.edges:
            if edge.source != edge.destination and depth[edge.destination] < depth[edge.source] + 1 <= len(depth):
                depth[edge.destination] = depth[edge.source] + 1
                changed = True
        if not changed:
            break
    rows: dict[int, int] = {}
    positions: dict[str, tuple[float, float]] = {}
    for node_id in sorted(graph.nodes, key=lambda n: (depth[n], n)):
        row = rows.get(depth[node_id], 0)
        rows[depth[node_id]] = row + 1
        positions[node_id] = (MARGIN + depth[node_id] * (NODE_WIDTH + COLUMN_GAP),
                              MARGIN + 20 + row * (NODE_HEIGHT + ROW_GAP))
    return positions


def svg(graph: Graph) -> str:
    """The graph as a standalone SVG document."""
    positions = _layout(graph)
    width = max((x for x, _ in positions.values()), default=0) + NODE_WIDTH + 2 * MARGIN
    height = max((y for _, y in positions.values()), default=0) + NODE_HEIGHT + 2 * MARGIN + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="meshext-graph" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="12">',
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='8' markerHeight='8' "
        "orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z' fill='#555'/></marker></defs>",
        f'<text x="{MARGIN}" y="{MARGIN}" font-size="14" font-weight="bold">'
        f"{html.escape(graph.origin)}</text>",
    ]
    edge_parts = []  # drawn after the nodes, so no node hides a label
    incoming: dict[str, int] = {}  # labels of edges into one node are stacked above its entry point
    for edge in graph.edges:
        stacked = incoming[edge.destination] = incoming.get(edge.destination, -1) + 1
        (x1, y1), (x2, y2) = positions[edge.source], positions[edge.destination]
        start, end = (x1 + NODE_WIDTH, y1 + NODE_HEIGHT / 2), (x2, y2 + NODE_HEIGHT / 2)
        bend = max(40.0, (end[0] - start[0]) / 2)
        colour = "#c62828" if edge.error_fraction > ERROR_THRESHOLD else "#2e7d32"
        dash = "" if edge.mtls_fraction >= 0.999 else ' stroke-dasharray="6 4"'
        label = " · ".join(_summary(edge))
        edge_parts.append(
            f'<g class="edge" data-source="{html.escape(edge.source)}"'
            f' data-destination="{html.escape(edge.destination)}"'
            f' data-service="{html.escape(edge.service)}" data-protocol="{edge.protocol}"'
            f' data-request-rate="{edge.request_rate:.4f}" data-error-fraction="{edge.error_fraction:.4f}"'
            f' data-mtls-fraction="{edge.mtls_fraction:.4f}" data-tcp-bytes-rate="{edge.tcp_bytes_rate:.1f}">'
            f'<path d="M {start[0]:.0f} {start[1]:.0f} C {start[0] + bend:.0f} {start[1]:.0f}, '
            f'{end[0] - bend:.0f} {end[1]:.0f}, {end[0]:.0f} {end[1]:.0f}" fill="none" stroke="{colour}" '
            f'stroke-width="2"{dash} marker-end="url(#arrow)"/>'
            f'<text x="{end[0] - 12:.0f}" y="{end[1] - 10 - 15 * stacked:.0f}" text-anchor="end" fill="{colour}" '
            f'stroke="white" stroke-width="4" paint-order="stroke">'
            f"{html.escape(edge.service)}: {html.escape(label)}</text></g>")
    for node_id, (x, y) in positions.items():
        node = graph.nodes[node_id]
        detail = "no sidecar" if node.id == UNKNOWN else (
            f"{node.namespace} · {' '.join(part for part in (node.app, node.version) if part)}")
        parts.append(
            f'<g class="node" data-node="{html.escape(node_id)}"><rect x="{x:.0f}" y="{y:.0f}" width="{NODE_WIDTH}" '
            f'height="{NODE_HEIGHT}" rx="8" fill="#e3f2fd" stroke="#1565c0" stroke-width="1.5"/>'
            f'<text x="{x + NODE_WIDTH / 2:.0f}" y="{y + 20:.0f}" text-anchor="middle" font-weight="bold">'
            f"{html.escape(node.name)}</text>"
            f'<text x="{x + NODE_WIDTH / 2:.0f}" y="{y + 37:.0f}" text-anchor="middle" fill="#555">'
            f"{html.escape(detail)}</text></g>")
    parts += edge_parts
    parts.append("</svg>")
    return "\n".join(parts)


def page(graph: Graph, refresh_seconds: float | None = None) -> str:
    """A standalone HTML page: the SVG and the edge table (reloading itself every ``refresh_seconds``)."""
    refresh = f'<meta http-equiv="refresh" content="{refresh_seconds:.0f}">' if refresh_seconds else ""
    when = datetime.datetime.fromtimestamp(graph.taken_at).isoformat(timespec="seconds")
    rows = "".join(
        f"<tr><td>{html.escape(graph.nodes[e.source].name)}</td><td>{html.escape(graph.nodes[e.destination].name)}"
        f"</td><td>{html.escape(e.service)} ({e.protocol})</td>"
        + "".join(f"<td>{html.escape(part)}</td>" for part in _summary(e)[:1])
        + f"<td>{e.error_fraction:.0%}</td><td>{'-' if e.p95_ms is None else f'{e.p95_ms:.0f} ms'}</td>"
        f"<td>{e.mtls_fraction:.0%}</td></tr>" for e in graph.edges)
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>{refresh}<title>meshext graph</title>"
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>Service graph</h1><p>{html.escape(graph.origin)} at <time>{when}</time></p>{svg(graph)}"
        "<table id='edges'><thead><tr><th>from</th><th>to</th><th>via</th><th>rate</th><th>errors</th>"
        f"<th>p95</th><th>mTLS</th></tr></thead><tbody>{rows}</tbody></table></body></html>")
