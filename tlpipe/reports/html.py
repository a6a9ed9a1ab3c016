"""HTML reports rendered from Jinja2 templates (tlpipe/reports/templates), images embedded as data URIs."""

from __future__ import annotations

import base64
from functools import cache
from pathlib import Path

TEMPLATES = Path(__file__).with_name("templates")


@cache
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(("html", "htm", "xml", "html.j2")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda v, digits=4: "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else v)
    return env


def data_uri(path: Path) -> str | None:
    """A PNG as a data: URI (the page stays one self-contained file), or None when it does not exist."""
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def render(template: str, **context) -> str:
    """Render `templates/<template>` with `context`."""
    return _environment().get_template(template).render(**context)
