"""Help (`?`): keys, sources, what the colours mean, headless drills."""

from __future__ import annotations

from collections.abc import Iterator

from rich.console import Console, ConsoleOptions, RenderableType
from rich.markdown import Markdown
from rich.segment import Segment
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

HELP = """\
# x0dash

## Keys
| key | where | what |
|---|---|---|
| `enter` | overview | open the node under the cursor |
| `j` `k` `g` `G` | tables | down, up, top, bottom (k9s keys; arrows work too) |
| `N` `H` `I` `P` | overview | sort nodes by name, health, incidents, p99 (again: reverse) |
| `:` | anywhere | command palette (as `ctrl+p`) |
| `/` | overview | filter nodes and events (id, state, address); `esc` clears |
| `l` | overview | into the event log: `j` `k` `g` `G` pick an event, `enter` shows its full text and record |
| `c` | event | copy the event (text and fields) to the clipboard |
| `d` | anywhere | drills: pick kind, target, duration; confirm; watch; `a` aborts |
| `a` | drills | abort the running drill: the fault is reverted at once |
| `D` | anywhere | drill history: every drill of the mesh, its report, trends per kind over time |
| `enter` | drill history | the highlighted drill's report, full screen |
| `u` | drills (Nomad) | undo a drain: cancel it and restore the Nomad node's eligibility |
| `L` | node detail | its logs (agent.log, yggdrasil.log; Nomad: task stdout/stderr) |
| `/` `n` `tab` `r` | logs | search (every match marked), next match, next log, reload |
| `esc` | detail, drills, logs | back |
| `ctrl+p` | anywhere | command palette (jump to a node, start drills, help) |
| `?` | anywhere | this help |
| `q` | anywhere | quit (a local mesh started by `--local` is stopped) |

## States
Nodes: **up** (agent answers, healthy), **degraded** (agent answers, a check fails, e.g. Yggdrasil down),
**silent** (no answer lately; its last data is shown with its age), **down** (connection refused, or silent
for 10 s), **unknown** (not polled yet, or the source does not say how to reach it).

Links, from both ends' own peer lists: **up** (green), **silent** (yellow: one end still lists it up, the other
lost it, or MAPE-K finds the peer unreachable), **down** (red, dotted), **temporary** (cyan: a stand-in link
MAPE-K added for a lost planned peer), **unknown** (grey: neither end answered).

## Sources
`x0dash --local N` starts a local mesh for the session (network namespaces as root, loopback otherwise) and
stops it on exit. `x0dash --inventory FILE` watches a mesh described by an inventory file
(`x0-agent local-mesh --inventory FILE`). `x0dash --nomad ADDR --job JOB` (or `NOMAD_ADDR`) reads a Nomad job.

## Drills
Kinds: **blackhole** (the target silently drops its Yggdrasil traffic), **partition** (the target is cut off),
**node loss** (the source stops the node, or the agent kills its Yggdrasil daemon). The report gives time to
detect and to repair per observer from the agents' own records, the steady state before and after, and
pass/fail against the SLOs; it is saved as JSON and Markdown under the reports directory.
With a Nomad source, node loss stops the target's allocation and the drill ends once Nomad's replacement
allocation has a healthy agent and the mesh is whole; two more kinds: **restart allocation** (in place, all tasks
or one) and **drain Nomad node** (with a deadline; the confirmation lists every allocation on that node; undone
when the drill ends or is aborted, or with `u`).
Headless: `x0dash drill blackhole --target node-b --duration 10`; exit status 0 pass, 1 an SLO failed or the
mesh did not recover, 2 refused (or bad arguments), 3 the source could not start (Nomad unreachable, no
inventory).
"""


class _RenderedOnce:
    """A constant renderable drawn once per width: the screen is redrawn each time `?` opens it, and drawing Rich's
    Markdown (its key table above all) took 18-20 ms of that every time (156 columns, this 2-core machine)."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable
        self._drawn: dict[tuple[int, int], list[Segment]] = {}

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        key = (id(console), options.max_width)
        if key not in self._drawn:
            self._drawn[key] = list(console.render(self.renderable, options))
        yield from self._drawn[key]


class HelpScreen(Screen[None]):
    """A full screen, not a modal: a modal redraws and tints the 100-row overview behind it on every frame."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        # Rich's Markdown in a Static, not Textual's Markdown widget: this opens in a few ms instead of ~400 ms
        # (measured with bench/dash_poll.py), and help must come up at once.
        with VerticalScroll(id="help-box"):
            yield Static(_RenderedOnce(Markdown(HELP)), id="help-text")
        # A line, not a Footer: a Footer rebuilds and restyles its keys each time the screen is shown (a third of
        # the time `?` took), and this screen has one thing to say.
        yield Static("[b]esc[/b] [b]q[/b] [b]?[/b] close help", id="help-keys")

    def action_close(self) -> None:
        self.app.pop_screen()
