"""The dashboard's one HTML page: charts inlined as SVG, a small script, nothing fetched elsewhere.

The page arrives with its charts and tables already drawn from the figures
of the moment; its script (about 60 lines, no library) refreshes them from the
JSON endpoints every `REFRESH_SECONDS` and shows the live tail from
`/api/tail` (server-sent events) with the filters' values. Names reach the
page only as text (`textContent`) or escaped inside the server's SVG; the
Content-Security-Policy lets only this page's own script run.
"""

from __future__ import annotations

from html import escape
from typing import Any

from llm_es.domain.events import EVENT_TYPES

REFRESH_SECONDS = 10

_STYLE = """
body{font-family:sans-serif;margin:16px;color:#222;background:#f6f6f6}
h1{font-size:20px;margin:0 0 8px}h2{font-size:15px;margin:0 0 6px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px}
table{border-collapse:collapse;font-size:12px}td,th{padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
#tail{font-family:monospace;font-size:12px;height:260px;overflow-y:auto;width:1000px}
#tail div{white-space:nowrap;border-bottom:1px solid #eee}
.muted{color:#777;font-size:12px}
"""

_SCRIPT = """
const $ = (id) => document.getElementById(id);
function cell(row, text) { const td = document.createElement('td'); td.textContent = text;
  row.appendChild(td); }
function usersTable(id, rows) {
  const body = $(id); body.replaceChildren();
  for (const r of rows) { const tr = document.createElement('tr');
    cell(tr, r.user === undefined || r.user === null ? '(no user)' : r.user);
    cell(tr, r.tokens); cell(tr, r.requests); cell(tr, r.rejected); body.appendChild(tr); } }
function lagTable(lag) {
  const body = $('lag-rows'); body.replaceChildren();
  for (const [name, p] of Object.entries(lag.projections)) {
    const tr = document.createElement('tr');
    cell(tr, name); cell(tr, p.position); cell(tr, p.lag === null ? '?' : p.lag);
    body.appendChild(tr); }
  $('log-end').textContent = lag.log_end === null ? '?' : lag.log_end; }
async function get(path) {
  const r = await fetch(path);
  if (!r.ok) throw new Error(path + ' ' + r.status);
  return r.json(); }
async function refresh() {
  const by = $('by').value;
  const [usage, users, errors, latency, lag] = await Promise.all([get('/api/usage?by=' + by),
    get('/api/users'), get('/api/errors'), get('/api/latency'), get('/api/lag')]);
  $('usage').innerHTML = usage.svg; $('errors').innerHTML = errors.svg;
  $('latency').innerHTML = latency.svg;
  usersTable('top-today', users.top_today); usersTable('top-month', users.top_month);
  lagTable(lag);
  $('updated').textContent = new Date().toISOString() +
    (usage.loaded_up_to === null ? ' (still reading the log)' : ''); }
let source = null;
function describe(line) {
  const skip = new Set(['seq', 'type', 'at', 'channel', 'user']);
  const rest = Object.entries(line).filter(([k]) => !skip.has(k)).map(([k, v]) => k + '=' + v);
  return [line.seq, line.at, line.type, 'channel=' + line.channel, 'user=' + line.user,
    ...rest].join(' '); }
function watch() {
  if (source) source.close();
  $('tail').replaceChildren();
  const q = new URLSearchParams();
  for (const f of ['channel', 'user', 'type']) {
    if ($('f-' + f).value) q.set(f, $('f-' + f).value); }
  source = new EventSource('/api/tail?' + q.toString());
  source.onmessage = (e) => { const div = document.createElement('div');
    const line = JSON.parse(e.data); div.textContent = describe(line);
    div.dataset.turn = line.turn_id || ''; div.dataset.user = line.user || '';
    const tail = $('tail'); tail.prepend(div);
    while (tail.childElementCount > 200) tail.lastElementChild.remove(); }; }
$('by').addEventListener('change', () => refresh());
$('filters').addEventListener('submit', (e) => { e.preventDefault(); watch(); });
watch();
setInterval(() => refresh().catch((e) => { $('updated').textContent = 'refresh failed: ' + e; }),
  REFRESH_MS);
"""


def _rows(rows: list[dict[str, Any]]) -> str:
    return "".join(
        f"<tr><td>{escape(str(r.get('user') or '(no user)'))}</td><td>{r['tokens']}</td>"
        f"<td>{r['requests']}</td><td>{r['rejected']}</td></tr>"
        for r in rows
    )


def _users_table(title: str, body_id: str, rows: list[dict[str, Any]]) -> str:
    return (
        f'<div class="card"><h2>{escape(title)}</h2><table><thead><tr><th>user</th>'
        f"<th>tokens</th><th>requests</th><th>rejected</th></tr></thead>"
        f'<tbody id="{body_id}">{_rows(rows)}</tbody></table></div>'
    )


def render_page(
    *,
    nonce: str,
    usage: dict[str, Any],
    users: dict[str, Any],
    errors: dict[str, Any],
    latency: dict[str, Any],
    lag: dict[str, Any],
) -> str:
    """The whole page, its figures drawn as of now (the script takes over from there)."""
    lag_rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{p['position']}</td>"
        f"<td>{'?' if p['lag'] is None else p['lag']}</td></tr>"
        for name, p in lag["projections"].items()
    )
    types = "".join(
        f'<option value="{escape(t)}">{escape(t)}</option>' for t in sorted(EVENT_TYPES)
    )
    script = _SCRIPT.replace("REFRESH_MS", str(REFRESH_SECONDS * 1000))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llm-es dashboard</title>
<link rel="icon" href="data:,"><style>{_STYLE}</style></head><body>
<h1>llm-es</h1>
<p class="muted">Read-only; every figure is folded from the event log (UTC days), as
<code>llm-replay audit</code> counts. Updated <span id="updated">at load</span>.</p>
<div class="grid">
<div class="card"><h2>Usage, last 30 days
<select id="by"><option value="provider">by provider</option>
<option value="model">by model</option></select></h2><div id="usage">{usage["svg"]}</div></div>
<div>
{_users_table(f"Top users today ({users['today']})", "top-today", users["top_today"])}
<br>
{_users_table(f"Top users this month ({users['month']})", "top-month", users["top_month"])}
<br>
<div class="card"><h2>Projections' lag</h2><table><thead><tr><th>projection</th>
<th>position</th><th>lag (events)</th></tr></thead><tbody id="lag-rows">{lag_rows}</tbody>
</table><p class="muted">log end: <span id="log-end">{lag["log_end"]}</span></p></div>
</div>
<div class="card"><h2>Errors</h2><div id="errors">{errors["svg"]}</div></div>
<div class="card"><h2>Latency</h2><div id="latency">{latency["svg"]}</div></div>
</div>
<div class="card" style="margin-top:12px"><h2>Live tail</h2>
<form id="filters">channel <input id="f-channel" size="14"> user <input id="f-user" size="14">
type <select id="f-type"><option value="">any</option>{types}</select>
<button type="submit">apply</button></form><div id="tail"></div></div>
<script nonce="{nonce}">{script}</script>
</body></html>
"""
